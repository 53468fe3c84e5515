//! Any bytes as a block file of the disk tier: reading any range back must either return
//! pages that pass their hashes, say the pages are missing, or call the block corrupt,
//! without panicking; and storing new pages over such a file must keep only pages that
//! pass, so the next read of them returns exactly what was stored.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mirrorfs::cache::{DiskTier, Found};
use mirrorfs::types::FileId;

const BLOCK: u64 = 64 * 1024;

fn tier() -> &'static (DiskTier, std::path::PathBuf) {
    static TIER: OnceLock<(DiskTier, std::path::PathBuf)> = OnceLock::new();
    TIER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mirrorfs-fuzz-{}", std::process::id()));
        let (tier, _) = DiskTier::open(&dir, BLOCK).unwrap();
        (tier, dir)
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (tier, dir) = tier();
    let key = (FileId { dev: 1, ino: 2 }, 0);
    let file = dir.join("blocks/1-2/0");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &data[4..]).unwrap();
    let start = u32::from(u16::from_le_bytes([data[0], data[1]])) % BLOCK as u32;
    let len = 1 + u32::from(u16::from_le_bytes([data[2], data[3]])) % 8192;
    let end = (start + len).min(BLOCK as u32);
    match tier.read(key, start..end).unwrap() {
        Found::Pages { start: first, data: pages, .. } => {
            assert!(first <= start && first % 4096 == 0);
            assert!(pages.len() as u64 <= BLOCK);
        }
        Found::Missing | Found::Corrupt => {}
    }
    let page = vec![0x5a; 4096];
    let at = start / 4096 * 4096;
    if std::fs::write(&file, &data[4..]).is_ok() && tier.store(key, &[(at, &page)], None).is_ok() {
        match tier.read(key, at..at + 4096).unwrap() {
            Found::Pages { data: read, .. } => assert_eq!(read, page),
            other => panic!("a page just stored reads back as {other:?}"),
        }
    }
});
