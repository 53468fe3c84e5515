//! `[cache] revalidate_after`: how late a change made directly in the origin (by another
//! program, not through the mount) is seen. Both sides are tested: it is seen after the
//! interval, and before it the kernel really serves its cached view.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::{Mount, scratch};

/// A mount whose config sets only `revalidate_after`.
fn mount_with(revalidate_after: &str) -> Mount {
    let dir = scratch();
    let origin = dir.path().join("origin");
    fs::create_dir(&origin).unwrap();
    let config: PathBuf = dir.path().join("cache.toml");
    fs::write(
        &config,
        format!("[cache]\nrevalidate_after = \"{revalidate_after}\"\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    Mount::over(dir, origin, &["--config", &config])
}

#[test]
fn origin_changes_show_after_revalidate_after() {
    let mount = mount_with("200ms");
    fs::write(mount.path("file"), b"one").unwrap();
    assert_eq!(fs::read(mount.path("file")).unwrap(), b"one");
    assert!(fs::metadata(mount.path("later")).is_err(), "not there yet");

    fs::write(mount.origin_path("file"), b"twenty-two").unwrap();
    fs::write(mount.origin_path("later"), b"new").unwrap();
    std::thread::sleep(Duration::from_millis(500));

    assert_eq!(fs::metadata(mount.path("file")).unwrap().len(), 10);
    assert_eq!(fs::read(mount.path("file")).unwrap(), b"twenty-two");
    assert_eq!(fs::read(mount.path("later")).unwrap(), b"new");
}

#[test]
fn within_revalidate_after_the_kernel_serves_its_cached_view() {
    let mount = mount_with("1h");
    fs::write(mount.path("file"), b"one").unwrap();
    assert_eq!(fs::metadata(mount.path("file")).unwrap().len(), 3);
    assert!(fs::metadata(mount.path("later")).is_err());

    fs::write(mount.origin_path("file"), b"twenty-two").unwrap();
    fs::write(mount.origin_path("later"), b"new").unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Cached attributes and a cached absence: neither round-trips to the daemon.
    assert_eq!(fs::metadata(mount.path("file")).unwrap().len(), 3);
    assert!(fs::metadata(mount.path("later")).is_err());
    // A change through the mount is seen at once, whatever the interval.
    fs::write(mount.path("file"), b"through the mount").unwrap();
    assert_eq!(fs::metadata(mount.path("file")).unwrap().len(), 17);
}
