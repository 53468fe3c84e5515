//! Which mirrorfs volumes are mounted on this machine, and where each keeps its state: a
//! small file per mount in the runtime directory (`/run/mirrorfs/mounts` for root), written
//! once the mount is up and removed at unmount. `mirrorfs list` reads them all, and
//! `status`, `log` and `verify` find a volume by its mount point through them. A daemon
//! killed with -9 leaves its file: an entry counts only while its process lives and its
//! mount point is a mirrorfs mount.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mountinfo;
use crate::fuse::FS_TYPE;

/// One mounted volume, as its daemon registered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The volume's id.
    pub volume: String,
    /// Its origin.
    pub source: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// The config it was mounted with, if any (absolute).
    pub config: Option<PathBuf>,
    /// The daemon's pid.
    pub pid: u32,
}

/// The directory of registered mounts for this user.
fn dir() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/mirrorfs/mounts");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(runtime) => PathBuf::from(runtime).join("mirrorfs/mounts"),
        None => std::env::temp_dir().join(format!("mirrorfs-{uid}/mounts")),
    }
}

/// The file of the mount at `mountpoint`.
fn file_of(mountpoint: &Path) -> PathBuf {
    let key = blake3::hash(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
    dir().join(format!("{}.json", &key[..32]))
}

/// Records that `entry`'s volume is mounted (best effort: a mount is no less a mount for
/// not being listed).
pub fn register(entry: &Registered) {
    let path = file_of(&entry.mountpoint);
    let written = std::fs::create_dir_all(dir()).and_then(|()| {
        let temporary = path.with_extension(format!("tmp.{}", entry.pid));
        let text = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, &path)
    });
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "cannot register the mount; mirrorfs list will not show it");
    }
}

/// Removes the entry of the mount at `mountpoint`, if this process (`pid`) made it.
pub fn unregister(mountpoint: &Path, pid: u32) {
    let path = file_of(mountpoint);
    if read(&path).is_some_and(|entry| entry.pid == pid) {
        let _ = std::fs::remove_file(path);
    }
}

fn read(path: &Path) -> Option<Registered> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Every volume mounted now, in mount point order; also mirrorfs mounts no entry names
/// (their daemon did not register), as `(mountpoint, None)`.
pub fn list() -> Vec<(PathBuf, Option<Registered>)> {
    let mounted = mirrorfs_mounts();
    let mut listed: Vec<(PathBuf, Option<Registered>)> = mounted
        .iter()
        .map(|point| (point.clone(), live(point, &mounted)))
        .collect();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    listed.dedup_by(|a, b| a.0 == b.0);
    listed
}

/// The entry of the volume mounted at `mountpoint`, if it is a live mirrorfs mount.
pub fn find(mountpoint: &Path) -> Result<Registered, String> {
    let point = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let mounted = mirrorfs_mounts();
    if !mounted.contains(&point) {
        return Err(format!(
            "no mirrorfs volume is mounted at {} (mirrorfs list shows those that are)",
            point.display()
        ));
    }
    live(&point, &mounted).ok_or_else(|| {
        format!(
            "{} is a mirrorfs mount whose daemon did not register it; name the volume with \
             --config or --state-dir",
            point.display()
        )
    })
}

/// The mount points of every mirrorfs mount visible here.
fn mirrorfs_mounts() -> Vec<PathBuf> {
    mountinfo::read()
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| entry.fs_type == FS_TYPE)
        .map(|entry| entry.mount_point)
        .collect()
}

/// The entry for `point` if its daemon lives and it is mounted.
fn live(point: &Path, mounted: &[PathBuf]) -> Option<Registered> {
    let entry = read(&file_of(point))?;
    let alive = Path::new(&format!("/proc/{}", entry.pid)).exists();
    (alive && entry.mountpoint == point && mounted.iter().any(|m| m == point)).then_some(entry)
}

/// Runs `mirrorfs list`.
pub fn run_list(json: bool) -> Result<(), super::CliError> {
    let listed = list();
    if json {
        let entries: Vec<serde_json::Value> = listed
            .iter()
            .map(|(point, entry)| match entry {
                Some(entry) => serde_json::to_value(entry).unwrap_or_default(),
                None => serde_json::json!({ "mountpoint": point, "registered": false }),
            })
            .collect();
        println!("{}", serde_json::Value::Array(entries));
        return Ok(());
    }
    if listed.is_empty() {
        println!("no mirrorfs volume is mounted here");
        return Ok(());
    }
    for (point, entry) in &listed {
        match entry {
            Some(entry) => println!(
                "{}  volume {}  from {}  state {}  config {}  pid {}",
                point.display(),
                entry.volume,
                entry.source.display(),
                entry.state_dir.display(),
                entry
                    .config
                    .as_ref()
                    .map_or_else(|| "none".to_string(), |c| c.display().to_string()),
                entry.pid
            ),
            None => println!("{}  (its daemon did not register it)", point.display()),
        }
    }
    Ok(())
}
