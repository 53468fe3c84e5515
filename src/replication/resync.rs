//! The primary's side of an incremental resync: a copy that still has a tree (a rejoined
//! old primary, a replica cut back at a divergence point, one let go by retention) is
//! brought to the volume's state by sending only what differs, instead of a snapshot.
//!
//! With names frozen at offset S (as for a snapshot, `SnapshotSource::freeze`), the node
//! lists its tree; the primary lists its origin and compares the two (`manifest::Compare`);
//! each difference becomes the records that make the copy's object the origin's
//! (`manifest::metadata_ops`); files both have whose content may differ (a stored root
//! differs or is missing on a side, or the sizes differ) are compared by their chunk
//! hashes (the node hashes its own; the primary takes its stored ones where current), and
//! only differing chunks are sent (`manifest::content_ops`). A file whose current stored
//! root is the same on both sides is read on neither. The node applies them in place; its log then continues at S.
//! Records from S on are replayed over what was read after S, as after a snapshot.
//!
//! This side runs on a blocking thread that holds the freeze, and talks to the connection
//! through [`Step`]s and [`Heard`]s.

use std::collections::HashSet;

use tokio::sync::mpsc;

use crate::log::{LogPath, Op};
use crate::manifest::{
    Aspect, CHUNK_BYTES, Compare, Entry, FileHashes, Files, HashStore, Kind, Seen, content_ops,
    find, hash_afresh, list, metadata_ops, parent_of, path_order, removes, set_times, stat_at,
    subtree,
};
use crate::origin::Origin;
use crate::write::SnapshotSource;

use super::protocol::{HashedFile, record_hash_at};

/// Operations are handed on in batches of about this many bytes.
const BATCH_BYTES: u64 = 4 << 20;

/// Files whose chunk hashes are asked for at once, at most...
const HASHED_PER_ASK: usize = 64;

/// ...and bytes of them at most (beyond the first), so that the node answers well within
/// the primary's answer timeout, however large the files.
const HASHED_BYTES_PER_ASK: u64 = 256 << 20;

/// What the resync's thread asks the connection to do.
#[derive(Debug)]
pub enum Step {
    /// Send `ResyncBegin`, and hand back the node's entries.
    Begin {
        /// The offset the resync is consistent from.
        offset: u64,
        /// The hash of the record before it.
        last: Option<[u8; 32]>,
    },
    /// Ask the node for these files' chunk hashes, and hand them back.
    Hash(Vec<LogPath>),
    /// Send these operations (carrying this many bytes of data).
    Ops(Vec<Op>, u64),
    /// Send `ResyncEnd`.
    End,
}

/// What the connection hands back.
#[derive(Debug)]
pub enum Heard {
    /// The node's tree, and whether owners in it are the volume's.
    Listed(Vec<Entry>, bool),
    /// The chunk hashes asked for, in order.
    Hashed(Vec<HashedFile>),
}

/// Why the resync's thread stopped.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// Reading the origin.
    #[error("resync: {0}")]
    Origin(#[from] std::io::Error),
    /// Listing the origin.
    #[error("resync: {0}")]
    Walk(#[from] crate::tree::WalkError),
    /// Reading the origin for a fix.
    #[error("resync: {0}")]
    Fix(#[from] crate::manifest::FixError),
}

/// Runs a resync's reading side: freezes names on `source`, then sends `steps` and reads
/// `heard` until it is done or the connection is gone (then it returns early, quietly).
pub fn run(
    source: &SnapshotSource,
    store: Option<&HashStore>,
    steps: &mpsc::Sender<Step>,
    heard: &std::sync::mpsc::Receiver<Heard>,
) -> Result<(), ResyncError> {
    let frozen = source.freeze()?;
    let offset = frozen.offset;
    let last = match offset.checked_sub(1) {
        Some(held) => record_hash_at(source.log(), held).unwrap_or(None),
        None => None,
    };
    if steps.blocking_send(Step::Begin { offset, last }).is_err() {
        return Ok(());
    }
    let Ok(Heard::Listed(theirs, owners)) = heard.recv() else {
        return Ok(());
    };
    let origin = frozen.origin;
    let mut ours = Vec::new();
    // With the stored hashes, a file's current root stands for its content.
    list(origin, &LogPath::root(), store, &mut |entry| {
        ours.push(entry);
        true
    })?;
    let mut batch = Batch::new(steps);
    let mut times: HashSet<LogPath> = HashSet::new();
    let mut compared: Vec<LogPath> = Vec::new();
    for difference in (Compare {
        skip_owner: !owners,
    })
    .entries(&ours, &theirs)
    {
        let path = difference.path;
        let mine = find(&ours, &path);
        let copy = find(&theirs, &path);
        if matches!(difference.aspect, Aspect::Content | Aspect::Size) {
            compared.push(path.clone());
        }
        if difference.aspect == Aspect::Content {
            continue;
        }
        let xattrs: Vec<Vec<u8>> = copy
            .iter()
            .flat_map(|entry| entry.xattrs.iter().map(|xattr| xattr.name.clone()))
            .collect();
        let subtree = subtree(&theirs, &path);
        let seen = Seen {
            size: copy.map_or(0, |entry| entry.size),
            xattrs: &xattrs,
            subtree: &subtree,
            link_of: mine.and_then(|entry| entry.link_of.as_ref()),
        };
        let changes_names = removes(difference.aspect) || difference.aspect == Aspect::Missing;
        batch.push(metadata_ops(origin, difference.aspect, &path, &seen)?)?;
        // Names added or removed move the directory's mtime on the copy: the origin's
        // follows, as every change of names does.
        if changes_names {
            times.insert(parent_of(&path));
        }
    }
    // Files both hold as files whose content no stored root vouches for are compared too.
    for mine in ours.iter().filter(|entry| entry.kind == Kind::File) {
        let Some(copy) = find(&theirs, &mine.path).filter(|copy| copy.kind == Kind::File) else {
            continue;
        };
        let vouched = mine.root.is_some() && mine.root == copy.root && mine.size == copy.size;
        if !vouched && !compared.contains(&mine.path) {
            compared.push(mine.path.clone());
        }
    }
    let mut files = Files::new(origin);
    for asked in asks(&compared, &ours) {
        if steps.blocking_send(Step::Hash(asked.to_vec())).is_err() {
            return Ok(());
        }
        let Ok(Heard::Hashed(answers)) = heard.recv() else {
            return Ok(());
        };
        for (path, answer) in asked.iter().zip(answers) {
            let Some(ours) = our_hashes(origin, &mut files, path, store)? else {
                continue;
            };
            let theirs = answer.fresh.unwrap_or(FileHashes {
                size: 0,
                chunks: Vec::new(),
            });
            let ranges = differing(&ours, &theirs);
            for range in &ranges {
                batch.push(content_ops(origin, path, range.clone())?)?;
            }
            if !ranges.is_empty() {
                times.insert(path.clone());
            }
        }
    }
    // Times last: every change above moved them on the copy.
    let mut times: Vec<LogPath> = times.into_iter().collect();
    times.sort_by(|a, b| path_order(b, a));
    for path in times {
        if let Ok(stat) = stat_at(origin, &path) {
            batch.push(vec![set_times(&path, &stat)])?;
        }
    }
    batch.flush()?;
    drop(frozen);
    let _ = steps.blocking_send(Step::End);
    Ok(())
}

/// The chunk hashes of the origin's file at `path`: the stored ones where current, else
/// read (and stored). `None` when no regular file is there.
fn our_hashes(
    origin: &Origin,
    files: &mut Files<'_>,
    path: &LogPath,
    store: Option<&HashStore>,
) -> Result<Option<FileHashes>, ResyncError> {
    if let (Some(store), Ok(stat)) = (store, stat_at(origin, path))
        && let Some(stored) = store.current(stat.id(), &stat.stamp())
    {
        return Ok(Some(stored.hashes));
    }
    Ok(hash_afresh(files, path, store, &mut |_| {}, &|| false)?.map(|fresh| fresh.hashes))
}

/// `paths` in groups of at most [`HASHED_PER_ASK`] files and [`HASHED_BYTES_PER_ASK`]
/// bytes (by their sizes in `ours`; a larger file alone).
fn asks<'p>(paths: &'p [LogPath], ours: &[Entry]) -> Vec<&'p [LogPath]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (at, path) in paths.iter().enumerate() {
        let size = find(ours, path).map_or(0, |entry| entry.size);
        let full = at - start == HASHED_PER_ASK || bytes + size > HASHED_BYTES_PER_ASK;
        if at > start && full {
            groups.push(&paths[start..at]);
            (start, bytes) = (at, 0);
        }
        bytes += size;
    }
    if start < paths.len() {
        groups.push(&paths[start..]);
    }
    groups
}

/// The byte ranges of the trusted content `ours` that the copy's `theirs` lacks, up to
/// the chunk where the shorter ends (the size's own fix sends the rest).
fn differing(ours: &FileHashes, theirs: &FileHashes) -> Vec<std::ops::Range<u64>> {
    let compared = match ours.size == theirs.size {
        true => ours.size,
        false => ours.size.min(theirs.size) / CHUNK_BYTES * CHUNK_BYTES,
    };
    ours.differences(theirs)
        .into_iter()
        .map(|range| range.start..range.end.min(compared))
        .filter(|range| !range.is_empty())
        .collect()
}

/// Operations gathered into batches of about [`BATCH_BYTES`].
struct Batch<'a> {
    steps: &'a mpsc::Sender<Step>,
    ops: Vec<Op>,
    bytes: u64,
}

impl<'a> Batch<'a> {
    fn new(steps: &'a mpsc::Sender<Step>) -> Batch<'a> {
        Batch {
            steps,
            ops: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, ops: Vec<Op>) -> Result<(), ResyncError> {
        for op in ops {
            if let Op::Write { data, .. } = &op {
                self.bytes += data.len() as u64;
            }
            self.ops.push(op);
        }
        if self.bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ResyncError> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.ops);
        let bytes = std::mem::take(&mut self.bytes);
        // A connection gone ends the resync from the other side; nothing to say here.
        let _ = self.steps.blocking_send(Step::Ops(ops, bytes));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: LogPath::try_from(path.as_bytes().to_vec()).unwrap(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime: std::time::UNIX_EPOCH.into(),
            rdev: 0,
            target: Vec::new(),
            xattrs: Vec::new(),
            link_of: None,
            root: None,
            local: None,
        }
    }

    #[test]
    fn hashes_are_asked_for_in_bounded_groups() {
        let path = |text: &str| LogPath::try_from(text.as_bytes().to_vec()).unwrap();
        let ours = vec![
            file("a", 200 << 20),
            file("b", 100 << 20),
            file("c", 1 << 30),
            file("d", 1),
        ];
        let paths: Vec<LogPath> = ["a", "b", "c", "d"].into_iter().map(path).collect();
        let groups: Vec<usize> = asks(&paths, &ours)
            .iter()
            .map(|group| group.len())
            .collect();
        // a alone (a with b passes 256 MiB), b alone (the 1 GiB c follows), c alone, d.
        assert_eq!(groups, [1, 1, 1, 1]);
        let small: Vec<LogPath> = (0..130).map(|n| path(&format!("s{n:03}"))).collect();
        let groups: Vec<usize> = asks(&small, &[]).iter().map(|group| group.len()).collect();
        assert_eq!(groups, [64, 64, 2]);
    }
}
