//! Any bytes as a stored-hashes file: both raw, and as the payload behind a valid header
//! and checksum (so the decoder itself is reached). Opening must never panic: a file that
//! does not decode starts an empty store, and one that does holds only entries whose paths
//! are inside the volume.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mirrorfs::manifest::{HashStore, STORE_FILE_NAME as FILE_NAME, STORE_MAGIC as MAGIC};

fn dir() -> &'static std::path::PathBuf {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mirrorfs-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let file = dir().join(FILE_NAME);
    std::fs::write(&file, data).unwrap();
    let _ = HashStore::open(dir()).stored_files();
    let mut sealed = MAGIC.to_vec();
    sealed.extend_from_slice(blake3::hash(data).as_bytes());
    sealed.extend_from_slice(data);
    std::fs::write(&file, &sealed).unwrap();
    let store = HashStore::open(dir());
    // Whatever decoded takes from the hasher's queue without panicking.
    for job in store.take(u64::MAX, 64) {
        if let Some(path) = &job.pending.path {
            assert!(!path.as_bytes().starts_with(b"/"));
            assert!(!path.components().any(|part| part == b".." || part == b"."));
        }
    }
});
