//! Any bytes as a stored-hashes file: both raw, as the payload behind a valid header and
//! checksum (so the decoder itself is reached), and as the records of a journal that
//! follows no snapshot. Opening must never panic: a file that does not decode starts an
//! empty store, a journal is read up to its first damaged record, and what decodes holds
//! only entries whose paths are inside the volume.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mirrorfs::manifest::{
    HashStore, STORE_FILE_NAME as FILE_NAME, STORE_JOURNAL_MAGIC, STORE_JOURNAL_NAME,
    STORE_MAGIC as MAGIC,
};

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
    check(&HashStore::open(dir()));
    std::fs::remove_file(&file).unwrap();
    // A journal following no snapshot: its records are read over an empty store.
    let mut journal = STORE_JOURNAL_MAGIC.to_vec();
    journal.extend_from_slice(&[0; 32]);
    journal.extend_from_slice(data);
    let journal_file = dir().join(STORE_JOURNAL_NAME);
    std::fs::write(&journal_file, &journal).unwrap();
    check(&HashStore::open(dir()));
    std::fs::remove_file(&journal_file).unwrap();
});

/// Whatever decoded takes from the hasher's queue without panicking, and names paths
/// inside the volume.
fn check(store: &HashStore) {
    for job in store.take(u64::MAX, 64) {
        if let Some(path) = &job.pending.path {
            assert!(!path.as_bytes().starts_with(b"/"));
            assert!(!path.components().any(|part| part == b".." || part == b"."));
        }
    }
}
