//! An old primary, fenced after a replica was promoted, becoming a replica of the new
//! primary: its origin and log are moved into a node's directory as that volume's copy
//! (renames: nothing is copied), so a node started there follows the new primary. Its
//! records past the divergence point are cut off and kept aside at the first session
//! (`Truncate`), and its tree is brought to the new primary's state.

use std::path::{Path, PathBuf};

use super::copy::mark_out_of_step;
use super::elector::{ELECTED_CONFIG, ELECTION_FILE};
use crate::durable;
use crate::log::{Fence, inspect};
use crate::manifest::{STORE_FILE_NAME, STORE_JOURNAL_NAME};
use crate::state::StateDir;
use crate::write::{load_applied, log_dir, store_applied};

/// What a rejoin did.
#[derive(Clone, Debug)]
pub struct Rejoined {
    /// The copy's directory now.
    pub root: PathBuf,
    /// What fenced the old primary.
    pub fence: Fence,
    /// The first offset its log lacks.
    pub next: u64,
}

/// Why an old primary could not rejoin.
#[derive(Debug, thiserror::Error)]
pub enum RejoinError {
    /// The state directory is in use (the volume is mounted) or unusable.
    #[error("{0}")]
    State(String),
    /// Not fenced: no newer primary is known to exist.
    #[error(
        "volume {0} is not fenced: no replica is known to have been promoted, so this may still be its primary"
    )]
    NotFenced(String),
    /// The node already keeps a copy of the volume.
    #[error("{0} exists: the node keeps a copy of the volume already")]
    CopyExists(PathBuf),
    /// A move failed (another filesystem: a rename cannot move it).
    #[error("moving {from} to {to}: {source}")]
    Move {
        /// From.
        from: PathBuf,
        /// To.
        to: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The old primary's log.
    #[error("{0}")]
    Log(String),
}

/// Moves volume `volume`'s origin `source` and its `state_dir` (log, applied offset,
/// stored hashes) into node directory `dir` as the volume's copy. Refused unless the
/// volume is fenced, its state is not in use, and the node has no copy of it. A copy that
/// was promoted in `dir` (its state `dir/<volume>`, its source the copy's `data/`) becomes
/// a copy again where it is.
pub fn rejoin(
    volume: &str,
    source: &Path,
    state_dir: &Path,
    dir: &Path,
) -> Result<Rejoined, RejoinError> {
    let _lock = StateDir::open(state_dir).map_err(|error| RejoinError::State(error.to_string()))?;
    let log = log_dir(state_dir);
    let fence = Fence::load(&log)
        .map_err(|error| RejoinError::Log(error.to_string()))?
        .ok_or_else(|| RejoinError::NotFenced(volume.to_string()))?;
    let next = inspect(&log)
        .map_err(|error| RejoinError::Log(error.to_string()))?
        .stats()
        .next_offset;
    let root = dir.join(volume);
    if same_file(state_dir, &root) && same_file(source, &root.join("data")) {
        return back_in_place(root, fence, next);
    }
    if root.exists() {
        return Err(RejoinError::CopyExists(root));
    }
    let moved = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|source| RejoinError::Move {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            source,
        })
    };
    let io = io_error;
    // Everything moves by rename, so all of it must be on the node directory's filesystem:
    // checked first, so nothing is half moved.
    let device = |path: &Path| {
        std::fs::metadata(path)
            .map(|meta| std::os::unix::fs::MetadataExt::dev(&meta))
            .map_err(io(path))
    };
    if !dir.is_dir() {
        return Err(RejoinError::State(format!(
            "{} is not a directory: make the node's directory first, on the origin's filesystem",
            dir.display()
        )));
    }
    let node_device = device(dir)?;
    for path in [source, state_dir] {
        if device(path)? != node_device {
            return Err(RejoinError::Move {
                from: path.to_path_buf(),
                to: dir.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::CrossesDevices),
            });
        }
    }
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    // The applied offset first: the origin holds every record below it (write-through:
    // all of them, and the file is absent).
    let applied_path = state_dir.join("applied");
    let applied = load_applied(&applied_path)
        .map_err(io(&applied_path))?
        .unwrap_or(next);
    store_applied(&root.join("applied"), applied).map_err(io(&root))?;
    // The stored hashes describe the origin's files, which keep their inodes.
    for name in [STORE_FILE_NAME, STORE_JOURNAL_NAME] {
        let hashes = state_dir.join(name);
        if hashes.exists() {
            moved(&hashes, &root.join(name))?;
        }
    }
    moved(&log, &root.join("log"))?;
    // A copy's log takes records of the newer epoch; the fence was the primary's.
    durable::remove(&root.join("log").join(crate::log::FENCE_FILE)).map_err(io(&root))?;
    moved(source, &root.join("data"))?;
    durable::sync_parent(&root.join("data")).map_err(io(&root))?;
    out_of_step(&root, next)?;
    Ok(Rejoined { root, fence, next })
}

/// Marks the rejoined copy at `root` for a resync at its first session. A primary's
/// origin is changed before its record is appended, so one killed in between holds a
/// change no record names: its log alone does not vouch for its tree, even where it
/// matches the new primary's.
fn out_of_step(root: &Path, next: u64) -> Result<(), RejoinError> {
    mark_out_of_step(root, next).map_err(|error| RejoinError::Log(error.to_string()))
}

/// The error of a file operation on `path` in a rejoin.
fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RejoinError + use<> {
    let path = path.to_path_buf();
    move |source| RejoinError::Move {
        from: path.clone(),
        to: path,
        source,
    }
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Makes the promoted copy at `root`, fenced by `fence`, a copy again in place: its log,
/// tree, applied offset and stored hashes are already where a copy keeps them. The fence
/// goes first, then the marker that made the node leave the directory alone: a crash in
/// between leaves a promoted copy no longer fenced, which a mount would find deposed again
/// at its first contact, never a copy whose log refuses the new primary.
fn back_in_place(root: PathBuf, fence: Fence, next: u64) -> Result<Rejoined, RejoinError> {
    let gone = |name: &str| {
        let path = root.join(name);
        durable::remove(&path).map_err(io_error(&path))
    };
    // The tree was the primary's origin: with write-through it holds every record (and
    // the journal keeps no applied offset); with write-behind, what the offset says.
    let applied_path = root.join("applied");
    if load_applied(&applied_path)
        .map_err(io_error(&applied_path))?
        .is_none()
    {
        store_applied(&applied_path, next).map_err(io_error(&applied_path))?;
    }
    out_of_step(&root, next)?;
    gone(&format!("log/{}", crate::log::FENCE_FILE))?;
    gone(super::promote::PROMOTED_FILE)?;
    // What the promotion and the election left: no longer true of a copy.
    for name in [
        "log-base",
        super::promote::GRANTED_FILE,
        ELECTED_CONFIG,
        ELECTION_FILE,
    ] {
        gone(name)?;
    }
    Ok(Rejoined { root, fence, next })
}
