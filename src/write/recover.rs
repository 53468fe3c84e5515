//! Crash recovery for write-behind: the records from the last applied offset to the end
//! of the log, replayed into the origin.
//!
//! Write-behind applies names at once (create, rename, unlink... reach the origin before
//! the call returns) and defers file contents. So after a crash the origin's names are
//! already the log's final ones, and only contents need replaying: each content record is
//! followed through the renames, links and unlinks after it to the name its file has now,
//! and applied there, one file's records in log order. A file no name leads to any more is
//! skipped: no copy of the volume can see it. Content records set state (these bytes at
//! this offset, this size), so replaying ones the flusher had already applied is harmless.

use std::collections::HashMap;

use crate::log::{Log, LogPath, Op, Record};
use crate::origin::Origin;

use super::JournalError;
use crate::tree::{apply, mtimes_now};

/// Replays into `origin` the content records from offset `from` on, each file's at its
/// name now, and makes the origin durable. Two passes over the log, so that only the plan
/// (an offset and a name per record), never the records' bytes, is held in memory.
pub fn replay(log: &Log, origin: &Origin, from: u64, as_root: bool) -> Result<(), JournalError> {
    let end = log.next_offset();
    if from >= end {
        return Ok(());
    }
    let view = log.view();
    let mut failure = None;
    let Plan { names, untimed } = plan(
        view.records(from)?
            .map_while(|record| record.map_err(|error| failure = Some(error)).ok()),
    );
    if let Some(error) = failure {
        return Err(error.into());
    }
    let mut applied = 0;
    for record in view.records(from)? {
        let mut record = record?;
        if let Some(name) = names.get(&record.offset) {
            record.op.set_path(name.clone());
            times_only(&mut record.op);
            apply(origin, &record, as_root)?;
            applied += 1;
        }
    }
    origin.sync_filesystem().map_err(JournalError::Origin)?;
    // Replayed content moved these files' mtime, and no record says what it is now: the
    // copies are told, so that they end where the origin does.
    let mut last = None;
    for op in mtimes_now(origin, &untimed) {
        last = Some(log.append(&op)?);
    }
    if let Some(last) = last {
        log.sync_to(last)?;
    }
    tracing::info!(
        from,
        to = end,
        records = applied,
        "replayed what write-behind had not yet brought into the origin"
    );
    Ok(())
}

/// Leaves only the times of a SetAttr: write-behind applied modes and owners to the origin
/// before the calls returned, and an older one replayed would undo a newer change the
/// replay does not repeat (an access ACL that moved the mode). Times are replayed because
/// replayed content moves mtime.
fn times_only(op: &mut Op) {
    if let Op::SetAttr { mode, uid, gid, .. } = op {
        (*mode, *uid, *gid) = (None, None, None);
    }
}

/// What to replay.
pub struct Plan {
    /// Where to apply each content record: its file's name now, by record offset. Records
    /// of a file no name leads to any more are left out.
    pub names: HashMap<u64, LogPath>,
    /// Files (by name now) whose last record to replay changes content: nothing after it
    /// sets the mtime the replay moves.
    pub untimed: Vec<LogPath>,
}

/// The plan for replaying `records`.
pub fn plan(records: impl IntoIterator<Item = Record>) -> Plan {
    let mut files: Vec<Tracked> = Vec::new();
    let mut by_name: HashMap<LogPath, usize> = HashMap::new();
    for record in records {
        match &record.op {
            Op::Write { path, .. }
            | Op::Truncate { path, .. }
            | Op::Fallocate { path, .. }
            | Op::SetAttr { path, .. } => {
                let file = *by_name.entry(path.clone()).or_insert_with(|| {
                    files.push(Tracked {
                        names: vec![path.clone()],
                        records: Vec::new(),
                        untimed: false,
                    });
                    files.len() - 1
                });
                files[file].records.push(record.offset);
                files[file].untimed = match &record.op {
                    Op::SetAttr { mtime, .. } => files[file].untimed && mtime.is_none(),
                    _ => true,
                };
            }
            Op::Rename { from, to, .. } => {
                drop_names(&mut files, &mut by_name, to);
                move_names(&mut files, &mut by_name, from, to);
            }
            Op::Unlink { path } | Op::Rmdir { path } => {
                drop_names(&mut files, &mut by_name, path);
            }
            Op::Link { path, new_path } => {
                if let Some(&file) = by_name.get(path) {
                    files[file].names.push(new_path.clone());
                    by_name.insert(new_path.clone(), file);
                }
            }
            // A new object at a tracked name means the tracked file lost it unseen.
            Op::Create { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Mknod { path, .. }
            | Op::Symlink { path, .. } => drop_names(&mut files, &mut by_name, path),
            // Made in the origin after a barrier, before its record (as a truncate is), and
            // never replayed: the source may already hold bytes of later records.
            Op::SetXattr { .. } | Op::RemoveXattr { .. } | Op::Copy { .. } => {}
        }
    }
    let mut names = HashMap::new();
    let mut untimed = Vec::new();
    for file in files {
        if let Some(name) = file.names.into_iter().next() {
            if file.untimed {
                untimed.push(name.clone());
            }
            names.extend(
                file.records
                    .into_iter()
                    .map(|offset| (offset, name.clone())),
            );
        }
    }
    Plan { names, untimed }
}

/// A file whose content records are being replayed.
struct Tracked {
    /// Its names as of the records read so far, oldest first.
    names: Vec<LogPath>,
    /// Offsets of its content records.
    records: Vec<u64>,
    /// Its last record changes content (no mtime follows).
    untimed: bool,
}

/// Whether `path` is `prefix` or lies beneath it.
fn under(path: &LogPath, prefix: &LogPath) -> bool {
    let (path, prefix) = (path.as_bytes(), prefix.as_bytes());
    path == prefix
        || prefix.is_empty()
        || (path.len() > prefix.len() && path.starts_with(prefix) && path[prefix.len()] == b'/')
}

/// Every tracked name at or beneath `path` is gone.
fn drop_names(files: &mut [Tracked], by_name: &mut HashMap<LogPath, usize>, path: &LogPath) {
    let gone: Vec<LogPath> = by_name
        .keys()
        .filter(|name| under(name, path))
        .cloned()
        .collect();
    for name in gone {
        let file = by_name.remove(&name).expect("listed above");
        files[file].names.retain(|kept| *kept != name);
    }
}

/// Every tracked name at or beneath `from` moves to the same place beneath `to`.
fn move_names(
    files: &mut [Tracked],
    by_name: &mut HashMap<LogPath, usize>,
    from: &LogPath,
    to: &LogPath,
) {
    let moved: Vec<LogPath> = by_name
        .keys()
        .filter(|name| under(name, from))
        .cloned()
        .collect();
    for name in moved {
        let file = by_name.remove(&name).expect("listed above");
        let rest = &name.as_bytes()[from.as_bytes().len()..];
        let mut bytes = to.as_bytes().to_vec();
        bytes.extend_from_slice(rest);
        let Ok(renamed) = LogPath::try_from(bytes) else {
            // Longer than PATH_MAX after the move: the origin refused that rename too.
            files[file].names.retain(|kept| *kept != name);
            continue;
        };
        for kept in &mut files[file].names {
            if *kept == name {
                *kept = renamed.clone();
            }
        }
        by_name.insert(renamed, file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> LogPath {
        LogPath::try_from(text.as_bytes().to_vec()).unwrap()
    }

    fn records(ops: Vec<Op>) -> Vec<Record> {
        ops.into_iter()
            .enumerate()
            .map(|(offset, op)| Record {
                offset: offset as u64,
                epoch: 1,
                op,
            })
            .collect()
    }

    fn write(at: &str, byte: u8) -> Op {
        Op::Write {
            path: path(at),
            offset: 0,
            data: vec![byte],
        }
    }

    fn rename(from: &str, to: &str) -> Op {
        Op::Rename {
            from: path(from),
            to: path(to),
            flags: 0,
        }
    }

    /// (name, data bytes written) per planned file, files in the order their first
    /// record comes.
    fn summary(ops: Vec<Op>) -> Vec<(String, Vec<u8>)> {
        let records = records(ops);
        let names = plan(records.clone()).names;
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for record in &records {
            let (Some(name), Op::Write { data, .. }) = (names.get(&record.offset), &record.op)
            else {
                continue;
            };
            let name = name.as_bytes().escape_ascii().to_string();
            match files.iter_mut().find(|(known, _)| *known == name) {
                Some((_, bytes)) => bytes.push(data[0]),
                None => files.push((name, vec![data[0]])),
            }
        }
        files
    }

    #[test]
    fn writes_follow_their_file_through_renames() {
        let plan = summary(vec![
            write("a", 1),
            rename("a", "b"),
            write("b", 2),
            Op::Mkdir {
                path: path("d"),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            rename("b", "d/c"),
            rename("d", "e"),
        ]);
        assert_eq!(plan, vec![("e/c".to_string(), vec![1, 2])]);
    }

    #[test]
    fn a_name_reused_after_a_rename_is_another_file() {
        let plan = summary(vec![
            write("a", 1),
            rename("a", "b"),
            Op::Create {
                path: path("a"),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
            write("a", 2),
        ]);
        assert_eq!(
            plan,
            vec![("b".to_string(), vec![1]), ("a".to_string(), vec![2])]
        );
    }

    #[test]
    fn unlinked_and_replaced_files_are_skipped_but_hard_links_keep_them() {
        let plan = summary(vec![
            write("gone", 1),
            Op::Unlink { path: path("gone") },
            write("replaced", 2),
            write("other", 3),
            rename("other", "replaced"),
            write("linked", 4),
            Op::Link {
                path: path("linked"),
                new_path: path("alias"),
            },
            Op::Unlink {
                path: path("linked"),
            },
        ]);
        assert_eq!(
            plan,
            vec![
                ("replaced".to_string(), vec![3]),
                ("alias".to_string(), vec![4])
            ]
        );
    }

    #[test]
    fn prefixes_match_whole_components_only() {
        let plan = summary(vec![
            write("dir/x", 1),
            write("dirt", 2),
            rename("dir", "moved"),
        ]);
        assert_eq!(
            plan,
            vec![
                ("moved/x".to_string(), vec![1]),
                ("dirt".to_string(), vec![2])
            ]
        );
    }
}
