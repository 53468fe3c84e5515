//! One verify run: the quick check (both copies' metadata walked and compared as of one
//! log offset), the content check (each copy rehashes its own files; only hashes cross the
//! network), the choice of the copy to trust, and what `--repair` is handed.
//!
//! Consistency under writes: a difference on a path that a record between the earliest
//! and the latest offset the copies were seen at names may be a change still travelling;
//! such paths are compared again in a new round, and those changing in every round are
//! counted as busy, never reported as findings.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::ReplicationConfig;
use crate::log::{Log, LogPath};
use crate::manifest::HashStore;
use crate::manifest::{CHUNK_BYTES, ChunkHash, FileHashes};
use crate::manifest::{Entry, Kind, list, path_order, subtree};
use crate::manifest::{Files, hash_afresh};
use crate::origin::Origin;
use crate::replication::VolumeKey;
use crate::replication::record_hash_at;
use crate::types::FileId;

use super::remote::{Remote, RemoteError, RemoteHashes, RemoteWalk};
use super::report::{Action, Finding, PRIMARY, ReplicaReport, Report, position};
use super::window::Touched;
use crate::manifest::{Aspect, Compare, Difference};

/// A replica's walk, or why it failed.
type WalkResult = Result<RemoteWalk, RemoteError>;

/// Rounds a changing path is compared in before it counts as busy.
const ROUNDS: usize = 3;

/// How long a replica's walk waits for it to reach the primary's offset.
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// What to check, and how much.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Options {
    /// Read and hash content, not only metadata.
    pub content: bool,
    /// Repair what is found.
    pub repair: bool,
    /// The replicas to check by name (empty: all).
    pub replicas: Vec<String>,
    /// The subtree to check (the empty path: all).
    pub under: LogPath,
    /// Check the primary alone (its content against its stored hashes).
    pub primary_only: bool,
    /// Read only this percentage of the files (oldest verified first).
    pub sample: Option<f64>,
    /// Read at most this many bytes of content.
    pub max_bytes: Option<u64>,
    /// Stop reading content after this long.
    pub max_duration: Option<Duration>,
    /// Read content at most this fast (bytes per second).
    pub rate: Option<u64>,
}

/// Where a run stands, for a progress bar.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    /// "walk", "content" or "repair".
    pub phase: String,
    /// Entries walked on the primary.
    pub entries: u64,
    /// Files read so far, and to read.
    pub files: (u64, u64),
    /// Bytes read so far, and to read.
    pub bytes: (u64, u64),
}

/// The volume a run checks: the primary's side of it.
pub struct Subject<'a> {
    /// The volume id.
    pub volume: &'a str,
    /// The origin.
    pub origin: &'a Origin,
    /// Its stored hashes, when kept.
    pub store: Option<&'a HashStore>,
    /// The change log.
    pub log: &'a Log,
    /// Below this offset the origin holds every record.
    pub applied: &'a (dyn Fn() -> u64 + Sync),
    /// Files being written through the mount now (by origin dev and inode): their
    /// modification time reaches the log only when they are closed.
    pub writing: &'a (dyn Fn() -> HashSet<FileId> + Sync),
    /// Waits until every change already made to the origin has its record in the log
    /// (write-through makes the change, then appends): called before a difference is
    /// judged, so a change whose record was still on its way is never taken for one.
    pub settle: &'a (dyn Fn() + Sync),
    /// The replicas, with the volume key to reach them.
    pub replication: Option<(&'a ReplicationConfig, &'a VolumeKey)>,
    /// Set to end the run early (its client went away, the daemon stops): what was read
    /// so far counts, the rest is left for the next run.
    pub stop: &'a AtomicBool,
}

impl Subject<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One finding, with what a repair of it would do.
#[derive(Clone, Debug)]
pub struct Found {
    /// What was found (and, once repairs are made, what was done).
    pub finding: Finding,
    /// What a repair is to make right.
    pub fix: Fix,
}

/// What a repair is to make right. Repairs to replicas are records in the log, so every
/// replica gets them: no fix names one, but rot's names the replica to read from.
#[derive(Clone, Debug)]
pub enum Fix {
    /// A replica's metadata differs: make it the primary's.
    Metadata {
        /// What differs.
        aspect: Aspect,
        /// The path.
        path: LogPath,
        /// On the primary, the first name of the file this path is a second name of.
        link_of: Option<LogPath>,
        /// The replica's entry, if it has one.
        copy: Option<Box<Entry>>,
        /// The replica's object at the path and everything under it, in path order.
        copy_subtree: Vec<(LogPath, Kind)>,
    },
    /// A replica's content differs in `ranges`: send the primary's bytes there.
    Content {
        /// The file.
        path: LogPath,
        /// The byte ranges.
        ranges: Vec<Range<u64>>,
    },
    /// A chunk of the primary's file rotted: bring it back from a replica whose chunk
    /// matches the primary's stored hash.
    Rot {
        /// The file.
        path: LogPath,
        /// Its identity on the primary.
        key: FileId,
        /// Which chunk.
        chunk: u64,
        /// The hash it must have.
        expected: ChunkHash,
        /// The replica to read it from.
        from: usize,
    },
    /// Nothing can be done (no copy to trust).
    Nothing,
}

/// A replica a run checks: its session, and whether it is still asked anything.
pub struct Replica {
    /// Its name in the config.
    pub name: String,
    /// The session with its node.
    pub remote: Remote,
    /// False once its session failed, or its copy proved not comparable as of the run's
    /// offset (behind, stuck, diverged): a finding of its own, and nothing more is asked.
    live: bool,
}

impl Fix {
    /// The path a repair changes, if any.
    pub fn path(&self) -> Option<&LogPath> {
        match self {
            Fix::Metadata { path, .. } | Fix::Content { path, .. } | Fix::Rot { path, .. } => {
                Some(path)
            }
            Fix::Nothing => None,
        }
    }
}

/// A finished check: the report without its findings, and what was found.
pub struct Checked {
    /// The report's figures, replicas and errors; its findings are [`Checked::found`]'s.
    pub report: Report,
    /// What was found (actions all `Reported` or `Unrecoverable`).
    pub found: Vec<Found>,
    /// The replicas checked (a rot fix's `from` is an index here).
    pub replicas: Vec<Replica>,
}

/// Runs the check `options` describe on `subject`.
pub fn check(
    subject: &Subject<'_>,
    options: &Options,
    progress: &mut dyn FnMut(&Progress),
) -> Checked {
    run(subject, options, None, progress)
}

/// Checks again after repairs: the metadata, and the content of `files` (paths).
pub fn recheck(
    subject: &Subject<'_>,
    options: &Options,
    files: &HashSet<Vec<u8>>,
    progress: &mut dyn FnMut(&Progress),
) -> Checked {
    let options = Options {
        content: false,
        repair: false,
        ..options.clone()
    };
    run(subject, &options, Some(files), progress)
}

fn run(
    subject: &Subject<'_>,
    options: &Options,
    files: Option<&HashSet<Vec<u8>>>,
    progress: &mut dyn FnMut(&Progress),
) -> Checked {
    let started = Instant::now();
    let mut run = Run {
        subject,
        options,
        progress,
        report: Report {
            mode: if options.content { "content" } else { "quick" }.to_string(),
            path: options.under.to_string(),
            as_of: subject.log.next_offset(),
            ..Report::default()
        },
        found: Vec::new(),
        replicas: Vec::new(),
        follow_up: Vec::new(),
        files: Files::new(subject.origin),
        state: Progress::default(),
    };
    run.connect();
    let primary = run.metadata();
    if options.content {
        run.content(&primary);
    } else {
        // Stored roots or sizes that differ say the content does; reading just those
        // files names where, and which copy to trust.
        let mut follow_up = std::mem::take(&mut run.follow_up);
        if let Some(files) = files {
            follow_up.extend(
                primary
                    .iter()
                    .filter(|entry| entry.kind == Kind::File)
                    .filter(|entry| files.contains(entry.path.as_bytes()))
                    .filter(|entry| !follow_up.iter().any(|seen| seen.path == entry.path))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
        run.compare_files(follow_up.iter().collect());
    }
    run.report.figures.seconds = started.elapsed().as_secs_f64();
    Checked {
        report: run.report,
        found: run.found,
        replicas: run.replicas,
    }
}

struct Run<'a, 'p> {
    subject: &'a Subject<'a>,
    options: &'a Options,
    progress: &'p mut dyn FnMut(&Progress),
    /// The report's figures, replicas and errors.
    report: Report,
    found: Vec<Found>,
    /// The replicas with a session; a rot fix names one by its index here.
    replicas: Vec<Replica>,
    /// Files whose stored roots differ: the quick check reads just these.
    follow_up: Vec<Entry>,
    /// The primary's files, opened for reading.
    files: Files<'a>,
    state: Progress,
}

/// A file whose content is to be compared.
struct Candidate<'e> {
    entry: &'e Entry,
    verified: u64,
}

impl Run<'_, '_> {
    fn show(&mut self) {
        (self.progress)(&self.state);
    }

    fn found(&mut self, finding: Finding, fix: Fix) {
        self.found.push(Found { finding, fix });
    }

    /// Opens a session with each replica to check.
    fn connect(&mut self) {
        let Some((config, key)) = self.subject.replication else {
            if !self.options.replicas.is_empty() {
                self.report
                    .errors
                    .push("the volume has no replicas to check".to_string());
            }
            return;
        };
        for name in &self.options.replicas {
            if !config.replicas.iter().any(|replica| &replica.name == name) {
                self.report
                    .errors
                    .push(format!("no replica named {name:?} in the config"));
            }
        }
        if self.options.primary_only {
            return;
        }
        for replica in &config.replicas {
            let wanted =
                self.options.replicas.is_empty() || self.options.replicas.contains(&replica.name);
            if !wanted {
                continue;
            }
            let mut shown = ReplicaReport {
                name: replica.name.clone(),
                ..ReplicaReport::default()
            };
            match Remote::connect(replica, self.subject.volume, key, config.plaintext) {
                Ok(remote) => {
                    shown.checked = true;
                    shown.applied = remote.applied;
                    let diverged = self.diverged(&remote);
                    if let Some(why) = &diverged {
                        // Compared with nothing: its tree is another volume's state.
                        self.position_finding(&replica.name, position::DIVERGED, why.clone());
                    }
                    self.replicas.push(Replica {
                        name: replica.name.clone(),
                        remote,
                        live: diverged.is_none(),
                    });
                }
                Err(error) => shown.error = Some(error.to_string()),
            }
            self.report.replicas.push(shown);
        }
    }

    /// Why the copy behind `remote` follows another history of the volume than this log,
    /// if it does: its last record is not this log's record there, or this log has no
    /// record that far. (A copy whose last record this log no longer keeps cannot tell.)
    fn diverged(&self, remote: &Remote) -> Option<String> {
        let log = self.subject.log;
        let (next, last) = remote.held;
        let end = log.next_offset();
        if next > end {
            return Some(format!(
                "it holds records up to {next}, past the primary's log end {end}: another history of the volume"
            ));
        }
        let held = next.checked_sub(1)?;
        let ours = record_hash_at(log, held).ok().flatten()?;
        (last.is_some_and(|theirs| theirs != ours)).then(|| {
            format!("its record {held} differs from the primary's: another history of the volume")
        })
    }

    /// A finding about where replica `name` stands: it was not compared as of the run's
    /// offset.
    fn position_finding(&mut self, name: &str, kind: &str, actual: String) {
        let finding = Finding {
            kind: kind.to_string(),
            path: "/".to_string(),
            copy: name.to_string(),
            range: None,
            expected: self.report.as_of.to_string(),
            actual,
            trusted: match kind {
                position::DIVERGED => "move the copy aside: the primary sends a snapshot",
                position::STUCK => "it holds the records; remove the cause and it applies them",
                _ => "replication brings it up to date; verify does not repair it",
            }
            .to_string(),
            action: Action::Reported,
        };
        self.found(finding, Fix::Nothing);
    }

    /// The quick check: walks both sides in rounds until every difference is settled (or
    /// busy). Returns the primary's entries from the last round.
    fn metadata(&mut self) -> Vec<Entry> {
        let log = self.subject.log;
        let mut unsettled: Option<HashSet<(usize, Vec<u8>)>> = None;
        let mut primary = Vec::new();
        // Files a side has no current stored root for, in the last round.
        let mut unhashed: HashSet<Vec<u8>> = HashSet::new();
        for round in 0..ROUNDS {
            let start = log.next_offset();
            let applied = (self.subject.applied)();
            let mut writing = (self.subject.writing)();
            self.state.phase = "walk".to_string();
            let (walked_primary, walks) = self.walk_all(start);
            primary = match walked_primary {
                Some(entries) => entries,
                None => return Vec::new(),
            };
            let mut still = HashSet::new();
            unhashed = primary
                .iter()
                .filter(|entry| entry.kind == Kind::File && entry.root.is_none())
                .map(|entry| entry.path.as_bytes().to_vec())
                .collect();
            let replicas = std::mem::take(&mut self.replicas);
            let mut kept = Vec::new();
            for (index, (mut replica, walked)) in replicas.into_iter().zip(walks).enumerate() {
                let name = replica.name.clone();
                let walked = match walked {
                    None => {
                        kept.push(replica);
                        continue;
                    }
                    Some(Ok(walked)) => walked,
                    Some(Err(error)) => {
                        replica.live = false;
                        self.replica_failed(&name, error.to_string());
                        kept.push(replica);
                        continue;
                    }
                };
                if let Some(shown) = self.report.replicas.iter_mut().find(|r| r.name == name) {
                    shown.applied = walked.after;
                }
                (self.subject.settle)();
                let end = log.next_offset().max(walked.after);
                writing.extend((self.subject.writing)());
                // What the primary itself was changing while the sides were walked...
                let touched = Touched::read(log, start.min(applied), end);
                // ...and what a copy that did not reach `start` lacks: explained by its
                // position, which is the finding, never by a change under way.
                let behind = walked.before < start;
                let lacking = Touched::read(log, walked.before, start);
                if behind {
                    let (kind, actual) = match &walked.stuck {
                        Some(stuck) => (
                            position::STUCK,
                            format!(
                                "it applied records below {}, and is stuck on {}",
                                walked.after, stuck.error
                            ),
                        ),
                        None => (
                            position::BEHIND,
                            format!(
                                "it applied records below {} and did not reach {start} within {} s",
                                walked.after,
                                CATCH_UP_WAIT.as_secs()
                            ),
                        ),
                    };
                    self.position_finding(&name, kind, actual);
                    replica.live = false;
                }
                let compare = Compare {
                    skip_owner: !replica.remote.owners,
                };
                let differences = compare.entries(&primary, &walked.entries);
                // Both lists are in path order: an entry is found by binary search.
                let find = |entries: &[Entry], path: &LogPath| {
                    entries
                        .binary_search_by(|entry| path_order(&entry.path, path))
                        .ok()
                };
                unhashed.extend(
                    walked
                        .entries
                        .iter()
                        .filter(|entry| {
                            entry.kind == Kind::File
                                && entry.root.is_none()
                                && find(&primary, &entry.path).is_some()
                        })
                        .map(|entry| entry.path.as_bytes().to_vec()),
                );
                for difference in differences {
                    let path = difference.path.as_bytes().to_vec();
                    if unsettled
                        .as_ref()
                        .is_some_and(|open| !open.contains(&(index, path.clone())))
                    {
                        continue;
                    }
                    let mine = find(&primary, &difference.path).map(|at| primary[at].clone());
                    let copy = find(&walked.entries, &difference.path)
                        .map(|at| walked.entries[at].clone());
                    let linked = [&mine, &copy]
                        .into_iter()
                        .flatten()
                        .filter_map(|entry| entry.link_of.as_ref())
                        .any(|first| touched.touches(first));
                    let open = mine
                        .as_ref()
                        .and_then(|entry| entry.local)
                        .is_some_and(|local| writing.contains(&local.key));
                    if linked || open || touched.touches(&difference.path) {
                        still.insert((index, path));
                        continue;
                    }
                    let unreached = [&mine, &copy]
                        .into_iter()
                        .flatten()
                        .filter_map(|entry| entry.link_of.as_ref())
                        .any(|first| lacking.touches(first));
                    if behind && (unreached || lacking.touches(&difference.path)) {
                        continue;
                    }
                    let copy_subtree = subtree(&walked.entries, &difference.path);
                    self.metadata_finding(&name, difference, mine, copy, copy_subtree);
                }
                kept.push(replica);
            }
            self.replicas = kept;
            if still.is_empty() || round + 1 == ROUNDS {
                self.busy(still.into_iter().map(|(_, path)| path));
                break;
            }
            unsettled = Some(still);
        }
        self.report.figures.unhashed = unhashed.len() as u64;
        primary
    }

    fn replica_failed(&mut self, name: &str, error: String) {
        if let Some(shown) = self.report.replicas.iter_mut().find(|r| r.name == name) {
            shown.checked = false;
            shown.error.get_or_insert(error);
        }
    }

    /// Walks the primary and every live replica at once (each node walks its own copy);
    /// `None` for a replica not asked.
    fn walk_all(&mut self, start: u64) -> (Option<Vec<Entry>>, Vec<Option<WalkResult>>) {
        let mut replicas = std::mem::take(&mut self.replicas);
        let under = self.options.under.clone();
        let walked = std::thread::scope(|scope| {
            let walking: Vec<_> = replicas
                .iter_mut()
                .map(|replica| {
                    let under = &under;
                    let remote = &mut replica.remote;
                    replica
                        .live
                        .then(|| scope.spawn(move || remote.walk(under, start, CATCH_UP_WAIT)))
                })
                .collect();
            let primary = self.walk_primary();
            let walks = walking
                .into_iter()
                .map(|walk| {
                    walk.map(|walk| {
                        walk.join().unwrap_or_else(|_| {
                            Err(RemoteError::Unexpected(
                                "the walk's thread panicked".to_string(),
                            ))
                        })
                    })
                })
                .collect();
            (primary, walks)
        });
        self.replicas = replicas;
        walked
    }

    /// The primary's entries, or `None` when the walk failed (recorded as an error).
    fn walk_primary(&mut self) -> Option<Vec<Entry>> {
        let mut entries = Vec::new();
        let mut shown = Instant::now();
        let walked = list(
            self.subject.origin,
            &self.options.under,
            self.subject.store,
            &mut |entry| {
                if self.subject.stopped() {
                    return false;
                }
                entries.push(entry);
                if shown.elapsed() >= Duration::from_millis(200) {
                    shown = Instant::now();
                    self.state.entries = entries.len() as u64;
                    (self.progress)(&self.state);
                }
                true
            },
        );
        self.state.entries = entries.len() as u64;
        self.report.figures.entries = entries.len() as u64;
        self.show();
        match walked {
            Ok(()) => Some(entries),
            Err(error) => {
                self.report.errors.push(format!("primary: {error}"));
                None
            }
        }
    }

    fn metadata_finding(
        &mut self,
        name: &str,
        difference: Difference,
        primary: Option<Entry>,
        copy: Option<Entry>,
        copy_subtree: Vec<(LogPath, Kind)>,
    ) {
        // Stored roots that differ, or sizes, say the content differs: reading the file
        // names where (the content check reads it anyway).
        if matches!(difference.aspect, Aspect::Content | Aspect::Size)
            && let Some(entry) = primary.as_ref().filter(|_| !self.options.content)
            && !self.follow_up.iter().any(|seen| seen.path == entry.path)
        {
            self.follow_up.push(entry.clone());
        }
        if difference.aspect == Aspect::Content {
            return;
        }
        let finding = Finding {
            kind: difference.aspect.name().to_string(),
            path: difference.path.to_string(),
            copy: name.to_string(),
            range: None,
            expected: difference.primary,
            actual: difference.copy,
            trusted: format!("{PRIMARY} (every change is made there first)"),
            action: Action::Reported,
        };
        let fix = Fix::Metadata {
            aspect: difference.aspect,
            path: difference.path,
            link_of: primary.and_then(|entry| entry.link_of),
            copy: copy.map(Box::new),
            copy_subtree,
        };
        self.found(finding, fix);
    }

    /// The content check over the files the walk found, oldest verified first, as much as
    /// the options allow.
    fn content(&mut self, primary: &[Entry]) {
        let store = self.subject.store;
        let mut candidates: Vec<Candidate<'_>> = primary
            .iter()
            .filter(|entry| entry.kind == Kind::File)
            .map(|entry| Candidate {
                entry,
                verified: match (store, &entry.local) {
                    (Some(store), Some(local)) => {
                        store.stored(local.key).map_or(0, |stored| stored.verified)
                    }
                    _ => 0,
                },
            })
            .collect();
        // Stable: equal times keep path order.
        candidates.sort_by_key(|candidate| candidate.verified);
        let total = candidates.len();
        let mut take = total;
        if let Some(percent) = self.options.sample {
            take = ((total as f64 * percent / 100.0).ceil() as usize).min(total);
        }
        if let Some(most) = self.options.max_bytes {
            let mut bytes = 0;
            let within = candidates
                .iter()
                .take(take)
                .take_while(|candidate| {
                    bytes += candidate.entry.size;
                    bytes <= most
                })
                .count();
            // At least one file, so a limit below the first file still makes progress.
            take = within.max(take.min(1));
        }
        candidates.truncate(take);
        self.report.figures.files_left = (total - take) as u64;
        self.state.phase = "content".to_string();
        self.state.files = (0, take as u64);
        self.state.bytes = (0, candidates.iter().map(|c| c.entry.size).sum());
        self.show();

        self.compare_files(candidates.iter().map(|candidate| candidate.entry).collect());
    }

    /// Compares the content of `entries` on every side, asking the replicas ahead so they
    /// hash while the primary does; files that changed meanwhile get more rounds.
    fn compare_files(&mut self, entries: Vec<&Entry>) {
        let started = Instant::now();
        let mut pace = Pace::new(self.options.rate);
        let mut retry: Vec<&Entry> = Vec::new();
        let mut asked = 0;
        for (done, entry) in entries.iter().enumerate() {
            if self.subject.stopped()
                || self
                    .options
                    .max_duration
                    .is_some_and(|most| started.elapsed() >= most)
            {
                self.report.figures.files_left += (entries.len() - done) as u64;
                // What was asked ahead is read and dropped: the sessions stay in step.
                self.drain_asked();
                break;
            }
            if self.wants_more() {
                while asked < entries.len() && self.can_ask() {
                    self.ask_all(entries[asked]);
                    asked += 1;
                }
                self.send_asked();
            }
            if !self.compare_file(entry, &mut pace) {
                retry.push(entry);
            }
            self.state.files.0 += 1;
            self.state.bytes.0 += entry.size;
            self.show();
        }
        for _ in 1..ROUNDS {
            if retry.is_empty() || self.subject.stopped() {
                break;
            }
            for entry in std::mem::take(&mut retry) {
                self.ask_all(entry);
                self.send_asked();
                if !self.compare_file(entry, &mut pace) {
                    retry.push(entry);
                }
            }
        }
        self.busy(
            retry
                .into_iter()
                .map(|entry| entry.path.as_bytes().to_vec()),
        );
    }

    /// Counts and names paths the primary changed throughout the run.
    fn busy(&mut self, paths: impl Iterator<Item = Vec<u8>>) {
        let shown = &mut self.report.busy_paths;
        for path in paths {
            let path = LogPath::try_from(path).map_or_else(|_| "?".to_string(), |p| p.to_string());
            if !shown.contains(&path) {
                shown.push(path);
            }
        }
        shown.sort();
        self.report.figures.busy = shown.len() as u64;
    }

    /// Whether every live session can take another path ahead.
    fn can_ask(&self) -> bool {
        self.replicas
            .iter()
            .all(|replica| !replica.live || replica.remote.can_ask())
    }

    /// Runs `ask` on every live replica's session; a session it fails is killed.
    fn each_live(&mut self, ask: impl Fn(&mut Remote) -> Result<(), RemoteError>) {
        for index in 0..self.replicas.len() {
            if !self.replicas[index].live {
                continue;
            }
            if let Err(error) = ask(&mut self.replicas[index].remote) {
                self.kill(index, error.to_string());
            }
        }
    }

    fn ask_all(&mut self, entry: &Entry) {
        self.each_live(|remote| remote.ask_hash(entry.path.clone(), entry.size));
    }

    fn send_asked(&mut self) {
        self.each_live(Remote::send_asked);
    }

    /// Whether every live session is ready for a new group of asks.
    fn wants_more(&self) -> bool {
        self.replicas
            .iter()
            .all(|replica| !replica.live || replica.remote.wants_more())
    }

    fn drain_asked(&mut self) {
        for replica in self.replicas.iter_mut().filter(|replica| replica.live) {
            while replica.remote.waiting() > 0 {
                if let Some((_, Err(_))) = replica.remote.hashed() {
                    break;
                }
            }
        }
    }

    /// A session that failed mid-run: reported, and asked nothing more.
    fn kill(&mut self, index: usize, error: String) {
        self.replicas[index].live = false;
        let name = self.replicas[index].name.clone();
        self.replica_failed(&name, error);
    }

    /// Compares one file's content on every side. Returns false when a change to it during
    /// the comparison may explain a difference (it is compared again later).
    fn compare_file(&mut self, entry: &Entry, pace: &mut Pace) -> bool {
        let log = self.subject.log;
        let start = log.next_offset();
        let applied = (self.subject.applied)();
        let stop = self.subject.stop;
        let ours = hash_afresh(
            &mut self.files,
            &entry.path,
            self.subject.store,
            &mut |len| pace.take(len),
            &|| stop.load(std::sync::atomic::Ordering::Relaxed),
        );
        let answers = self.answers(entry);
        let ours = match ours {
            Ok(Some(ours)) => ours,
            // Gone since the walk: a change did it; the next run sees the new state.
            Ok(None) => return log.next_offset() != start,
            // Stopped partway: the file is left for the next run, as the rest are (the
            // replicas' answers for it are drained with theirs).
            Err(error)
                if error.kind() == std::io::ErrorKind::Interrupted && self.subject.stopped() =>
            {
                self.report.figures.files_left += 1;
                return true;
            }
            Err(error) => {
                self.report
                    .errors
                    .push(format!("primary: reading {}: {error}", entry.path));
                return true;
            }
        };
        self.report.figures.files_hashed += 1;
        self.report.figures.bytes_hashed += ours.stamp.size;
        let window = Window::new(start.min(applied), log.next_offset(), &answers);
        let stored = ours.stored.as_ref().map(|stored| &stored.hashes);
        let rotted: Vec<u64> = match stored {
            Some(stored) if *stored != ours.hashes && stored.size == ours.hashes.size => {
                differing_chunks(stored, &ours.hashes)
            }
            _ => Vec::new(),
        };
        // Where the primary rotted, a replica whose chunk matches the stored hash is the
        // copy to trust; without one, the chunk is unrecoverable.
        let mut lost = Vec::new();
        let trusted = match stored.filter(|_| !rotted.is_empty()) {
            Some(stored) => {
                if !self.settled(entry, ours.key, window) {
                    return false;
                }
                lost = self.rot_findings(entry, &ours.hashes, stored, ours.key, &rotted, &answers);
                Trusted {
                    hashes: stored,
                    why: "the primary's stored hashes (the primary is repaired first)",
                }
            }
            None => Trusted {
                hashes: &ours.hashes,
                why: match stored {
                    Some(_) => "its content matches its stored hashes",
                    None => {
                        "no stored hashes on either side: the volume's content is the primary's"
                    }
                },
            },
        };
        let mut clean = rotted.is_empty();
        for (index, answer) in answers.iter().enumerate() {
            let Some(theirs) = answer.as_ref().and_then(|answer| answer.fresh.as_ref()) else {
                continue;
            };
            let ranges = differing_ranges(trusted.hashes, theirs, &lost);
            if ranges.is_empty() {
                continue;
            }
            if !self.settled(entry, ours.key, window) {
                return false;
            }
            clean = false;
            self.content_findings(index, entry, &trusted, theirs, ranges);
        }
        if clean && let (Some(store), true) = (self.subject.store, ours.stored.is_some()) {
            store.verified(ours.key);
        }
        true
    }

    /// Each live replica's answer for `entry`'s path, read in order from its session;
    /// `None` for a replica not asked or whose answer failed.
    fn answers(&mut self, entry: &Entry) -> Vec<Option<RemoteHashes>> {
        let mut answers = Vec::new();
        for index in 0..self.replicas.len() {
            if !self.replicas[index].live {
                answers.push(None);
                continue;
            }
            let name = self.replicas[index].name.clone();
            match self.replicas[index].remote.hashed() {
                Some((path, Ok(answer))) if path == entry.path => answers.push(Some(answer)),
                Some((_, Ok(_))) | None => {
                    self.kill(index, "answers out of step".to_string());
                    answers.push(None);
                }
                // The node could not read this one file: the session goes on.
                Some((_, Err(RemoteError::Failed(error)))) => {
                    self.report
                        .errors
                        .push(format!("replica {name}: reading {}: {error}", entry.path));
                    answers.push(None);
                }
                Some((_, Err(error))) => {
                    self.kill(index, error.to_string());
                    answers.push(None);
                }
            }
        }
        answers
    }

    /// Whether no change to `entry` (the primary's file `key`) fell in `window` or is
    /// under way: only then is a difference a finding. Asked only when something
    /// differs, so a clean file reads no log.
    fn settled(&self, entry: &Entry, key: FileId, window: Window) -> bool {
        let log = self.subject.log;
        (self.subject.settle)();
        let high = window.high.max(log.next_offset());
        !Touched::read(log, window.low, high).touches(&entry.path)
            && !(self.subject.writing)().contains(&key)
    }

    /// Findings that replica `index`'s content of `entry` differs from the trusted
    /// content in `ranges`, one per range.
    fn content_findings(
        &mut self,
        index: usize,
        entry: &Entry,
        trusted: &Trusted<'_>,
        theirs: &FileHashes,
        ranges: Vec<Range<u64>>,
    ) {
        let name = self.replicas[index].name.clone();
        for range in ranges {
            let chunk = range.start / CHUNK_BYTES;
            let finding = Finding {
                kind: "content".to_string(),
                path: entry.path.to_string(),
                copy: name.clone(),
                range: Some((range.start, range.end)),
                expected: chunk_hex(trusted.hashes, chunk),
                actual: chunk_hex(theirs, chunk),
                trusted: format!("{PRIMARY} ({})", trusted.why),
                action: Action::Reported,
            };
            let fix = Fix::Content {
                path: entry.path.clone(),
                ranges: vec![range],
            };
            self.found(finding, fix);
        }
    }

    /// Findings for chunks of the primary that no longer match its stored hashes.
    /// Returns the chunks no copy holds rightly.
    fn rot_findings(
        &mut self,
        entry: &Entry,
        fresh: &FileHashes,
        stored: &FileHashes,
        key: FileId,
        rotted: &[u64],
        answers: &[Option<RemoteHashes>],
    ) -> Vec<u64> {
        let mut lost = Vec::new();
        for &chunk in rotted {
            let expected = stored.chunks[chunk as usize];
            let good = answers.iter().position(|answer| {
                answer
                    .as_ref()
                    .and_then(|answer| answer.fresh.as_ref())
                    .and_then(|theirs| theirs.chunks.get(chunk as usize))
                    == Some(&expected)
            });
            let begins = chunk * CHUNK_BYTES;
            let range = (begins, (begins + CHUNK_BYTES).min(fresh.size));
            let (kind, trusted, action) = match good {
                Some(index) => (
                    "rot",
                    format!(
                        "{} (its chunk matches the primary's stored hash)",
                        self.replicas[index].name
                    ),
                    Action::Reported,
                ),
                None => (
                    "unrecoverable",
                    "none: no copy matches the primary's stored hash".to_string(),
                    Action::Unrecoverable,
                ),
            };
            let others: Vec<String> = answers
                .iter()
                .enumerate()
                .filter_map(|(index, answer)| {
                    let theirs = answer.as_ref()?.fresh.as_ref()?;
                    Some(format!(
                        "{}: {}",
                        self.replicas[index].name,
                        chunk_hex(theirs, chunk)
                    ))
                })
                .collect();
            let mut actual = chunk_hex(fresh, chunk);
            if good.is_none() && !others.is_empty() {
                actual = format!("{actual} ({})", others.join(", "));
            }
            let finding = Finding {
                kind: kind.to_string(),
                path: entry.path.to_string(),
                copy: PRIMARY.to_string(),
                range: Some(range),
                expected: chunk_hex(stored, chunk),
                actual,
                trusted,
                action,
            };
            let fix = match good {
                Some(from) => Fix::Rot {
                    path: entry.path.clone(),
                    key,
                    chunk,
                    expected,
                    from,
                },
                None => {
                    lost.push(chunk);
                    Fix::Nothing
                }
            };
            self.found(finding, fix);
        }
        lost
    }
}

/// The offsets a file's comparison saw the copies between: the earliest the primary or a
/// replica was at, and the latest.
#[derive(Clone, Copy)]
struct Window {
    low: u64,
    high: u64,
}

impl Window {
    /// From the primary's `low` and `high` and each replica's applied offset.
    fn new(low: u64, high: u64, answers: &[Option<RemoteHashes>]) -> Window {
        let applied = || answers.iter().flatten().map(|answer| answer.applied);
        Window {
            low: applied().fold(low, u64::min),
            high: applied().fold(high, u64::max),
        }
    }
}

/// The content the replicas are held to, and why it is trusted.
struct Trusted<'a> {
    hashes: &'a FileHashes,
    why: &'static str,
}

/// Where a replica's content `theirs` differs from the `trusted` content, without the
/// chunks in `lost` (no copy holds them rightly: the primary's bytes there are not sent
/// anywhere). With sizes that differ, the size finding covers everything from the chunk
/// the shorter copy ends in (its hash cannot say where in it the copies part).
fn differing_ranges(trusted: &FileHashes, theirs: &FileHashes, lost: &[u64]) -> Vec<Range<u64>> {
    let compared = match trusted.size == theirs.size {
        true => trusted.size,
        false => trusted.size.min(theirs.size) / CHUNK_BYTES * CHUNK_BYTES,
    };
    without_chunks(
        trusted
            .differences(theirs)
            .into_iter()
            .map(|range| range.start..range.end.min(compared))
            .filter(|range| !range.is_empty()),
        lost,
    )
}

/// `ranges` (ascending) without the chunks in `chunks`.
fn without_chunks(ranges: impl Iterator<Item = Range<u64>>, chunks: &[u64]) -> Vec<Range<u64>> {
    let mut kept: Vec<Range<u64>> = Vec::new();
    for range in ranges {
        let mut at = range.start;
        while at < range.end {
            let chunk = at / CHUNK_BYTES;
            let end = ((chunk + 1) * CHUNK_BYTES).min(range.end);
            if !chunks.contains(&chunk) {
                match kept.last_mut() {
                    Some(last) if last.end == at => last.end = end,
                    _ => kept.push(at..end),
                }
            }
            at = end;
        }
    }
    kept
}

/// The chunks two hashings of the same size differ in.
fn differing_chunks(a: &FileHashes, b: &FileHashes) -> Vec<u64> {
    a.chunks
        .iter()
        .zip(&b.chunks)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(n, _)| n as u64)
        .collect()
}

/// A chunk's hash in hex, or "none" past the content's end.
fn chunk_hex(hashes: &FileHashes, chunk: u64) -> String {
    hashes
        .chunks
        .get(chunk as usize)
        .map_or("none".to_string(), |hash| {
            blake3::Hash::from_bytes(*hash).to_hex().to_string()
        })
}

/// Keeps reading to a rate.
struct Pace {
    rate: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Pace {
    fn new(rate: Option<u64>) -> Pace {
        Pace {
            rate,
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// Waits until `len` more bytes are within the rate.
    fn take(&mut self, len: u64) {
        let Some(rate) = self.rate else {
            return;
        };
        self.bytes += len;
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}
