//! Any bytes as a log segment file: recovery's scan must classify them (clean, torn tail,
//! or corrupt at a named offset) without panicking, and never claim more bytes intact
//! than the file has.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile_dir();
    let path = dir.join("00000000000000000000.log");
    let mut bytes = mirrorfs::log::segment_header(0).to_vec();
    bytes.extend_from_slice(data);
    std::fs::write(&path, &bytes).unwrap();
    if let Ok(snapshot) = mirrorfs::log::inspect(&dir) {
        let stats = snapshot.stats();
        assert!(stats.bytes <= bytes.len() as u64);
        for record in snapshot.records(0).unwrap() {
            record.expect("records within the intact part read back");
        }
    }
    std::fs::remove_file(&path).unwrap();
});

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mirrorfs-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
