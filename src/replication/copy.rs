//! A replica node's copy of one volume, in `DIR/<volume id>/`:
//!
//! ```text
//! data/      the volume as a plain directory tree: restoring is a copy
//! log/       the records received, with the primary's offsets and epochs
//! applied    every record below this offset is durably in data/
//! base       where the copy's log begins, if a snapshot began it
//! staging/   a snapshot being received (base.new once it is complete)
//! high-watermark   the last high watermark the primary told
//! peers.json the volume's replication as the primary last said it (for a promotion)
//! key-file   where the node was told the volume's key is (for a promotion)
//! gate       the lock a standby mount's readers share with the applier, and the offset
//!            data/ holds (see origin::TreeGate)
//! ```
//!
//! Records are appended to the copy's log and fsynced before they are acknowledged, then
//! applied to `data/` by the same code that applies write-behind's records to an origin.
//! After a crash, opening the copy applies again what the log holds past `applied`;
//! applying a record twice leaves what applying it once does.
//!
//! Every change to `data/` (a batch of records, the replay at open, a whole resync, the
//! switch to a snapshot) is made holding the gate, so a standby mount's reader sees the
//! tree as of one applied offset, never a record half applied.
//!
//! A snapshot is built in `staging/` while `data/` stays as it was. Once it is complete
//! and synced, `base.new` says so, and the switch (staging becomes data, the log starts
//! over at the snapshot's offset, base.new becomes base) is finished by whoever finds
//! base.new: this session or the next start after a crash. A snapshot cut short leaves
//! only a staging directory, removed at the next start.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::durable;
use crate::log::{Epochs, Log, LogError, LogOptions, LogPath, Op, Record};
use crate::manifest::{Entry, HashStore, list};
use crate::origin::{At, Changing, Origin, TreeGate};
use crate::tree::{ApplyError, apply, apply_op, mtimes_now, place};
use crate::types::{Change, FileId, FileKind, Stamp};
use crate::write::{load_applied, store_applied};

use super::protocol::{Peers, Stuck, ToPrimary, record_hash};
use super::untimed::{self, Untimed};

/// Segment size of a copy's log.
const SEGMENT_BYTES: u64 = 64 << 20;

/// `applied` is stored at most this often (it costs a syncfs of the copy).
const APPLIED_EVERY: Duration = Duration::from_secs(1);

/// Why a copy could not take records.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The copy's files could not be read or written.
    #[error("replica copy {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The copy's log refused (a gap, damage).
    #[error("replica log: {0}")]
    Log(#[from] LogError),
    /// A record could not be applied to the tree.
    #[error("{0}")]
    Apply(#[from] ApplyError),
    /// The `base` file does not say what it must.
    #[error("replica copy {path}: not a base: {text:?}")]
    Base {
        /// The file.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
    /// Snapshot operations without a snapshot begun.
    #[error("no snapshot is being received")]
    NoSnapshot,
    /// Records for a copy whose tree holds records its log no longer does.
    #[error("the copy was cut back at a divergence point and takes only a snapshot")]
    NeedsSnapshot,
    /// Records from an epoch older than one already seen: a deposed primary.
    #[error("record {offset} is of epoch {epoch}, older than epoch {seen} already seen")]
    StaleEpoch {
        /// The record.
        offset: u64,
        /// Its epoch.
        epoch: u32,
        /// The highest epoch seen.
        seen: u32,
    },
}

/// Where a copy's log begins when a snapshot began it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Base {
    /// The snapshot's offset: the copy's first record.
    pub offset: u64,
    /// The primary's epoch at the snapshot.
    pub epoch: u32,
    /// The primary's record `offset - 1`, as [`record_hash`].
    pub last: Option<[u8; 32]>,
}

impl Base {
    fn load(path: &Path) -> Result<Option<Base>, CopyError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CopyError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let bad = || CopyError::Base {
            path: path.to_path_buf(),
            text: text.clone(),
        };
        let mut words = text.split_whitespace();
        let (Some(offset), Some(epoch), Some(last), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(bad());
        };
        let last = match last {
            "-" => None,
            hex => Some(blake3::Hash::from_hex(hex).map_err(|_| bad())?.into()),
        };
        Ok(Some(Base {
            offset: offset.parse().map_err(|_| bad())?,
            epoch: epoch.parse().map_err(|_| bad())?,
            last,
        }))
    }

    fn store(&self, path: &Path) -> Result<(), CopyError> {
        let last = match self.last {
            Some(hash) => blake3::Hash::from(hash).to_hex().to_string(),
            None => "-".to_string(),
        };
        let text = format!("{} {} {last}\n", self.offset, self.epoch);
        durable::replace(path, &text).map_err(|source| CopyError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Where a copy stands, as `mirrorfs replica status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStatus {
    /// The first record the copy's log holds (where a snapshot began it, or 0).
    pub log_start: u64,
    /// Every record below this is durable in the copy's log: what it acknowledges.
    pub next: u64,
    /// Every record below this is durably in `data/` (as last stored).
    pub applied: u64,
    /// The last high watermark the primary told (as last stored).
    #[serde(default)]
    pub high_watermark: u64,
    /// The highest epoch seen.
    pub epoch: u32,
    /// A snapshot is being received.
    pub receiving_snapshot: bool,
    /// The record the copy is stuck on, if it is.
    #[serde(default)]
    pub stuck: Option<Stuck>,
    /// The tree is out of step with the log (cut back, or a resync not finished).
    #[serde(default)]
    pub out_of_step: bool,
    /// Records cut off at divergence points and kept aside (read from their logs for
    /// `mirrorfs replica status`; [`VolumeCopy::status`] leaves it empty).
    #[serde(default)]
    pub kept_aside: Vec<KeptAside>,
}

/// The status of the copy in `root`, read from its files without changing them (for a
/// node that is not running).
pub fn inspect(root: &Path) -> Result<CopyStatus, CopyError> {
    let base = Base::load(&root.join("base"))?;
    let stats = crate::log::inspect(&root.join("log"))?.stats();
    let (log_start, next) = match stats.segments {
        0 => (base.map_or(0, |b| b.offset), base.map_or(0, |b| b.offset)),
        _ => (stats.first_offset, stats.next_offset),
    };
    let applied_path = root.join("applied");
    let applied = load_applied(&applied_path)
        .map_err(io_error(&applied_path))?
        .unwrap_or(log_start);
    Ok(CopyStatus {
        log_start,
        next,
        applied,
        high_watermark: load_high_watermark(root)?,
        epoch: match Epochs::load(&root.join("log"))
            .map_err(LogError::from)?
            .and_then(|epochs| epochs.latest())
        {
            Some(latest) => latest.epoch,
            None => base.map_or(0, |b| b.epoch),
        }
        .max(load_accepted(root)?),
        receiving_snapshot: root.join("staging").exists(),
        // Known only to a running node, which has tried.
        stuck: None,
        out_of_step: root.join(RESYNC_FILE).exists(),
        kept_aside: kept_aside(root)?,
    })
}

/// A snapshot being received.
#[derive(Debug)]
struct Staging {
    tree: Origin,
    base: Base,
}

/// One volume's copy on a replica node.
#[derive(Debug)]
pub struct VolumeCopy {
    root: PathBuf,
    tree: Origin,
    log: Log,
    base: Option<Base>,
    staging: Option<Staging>,
    applied: u64,
    applied_stored: Instant,
    as_root: bool,
    /// The tree's stored hashes, kept current as records are applied, when kept.
    hashes: Option<Arc<HashStore>>,
    /// The record the tree is stuck before, if any.
    stuck: Option<Stuck>,
    /// An incremental resync under way, from this base.
    resyncing: Option<Base>,
    /// The lock a standby mount's readers share, and the offset they see.
    gate: TreeGate,
    /// The gate held through a resync, while its session lasts (the tree is between
    /// offsets until it ends).
    resync_changing: Option<Changing>,
    /// The last high watermark the primary told, and whether a newer one than the file
    /// holds waits to be stored.
    high_watermark: u64,
    high_watermark_unstored: bool,
    /// The newest leader epoch a primary opened a session with (durable in
    /// [`ACCEPTED_FILE`]): primaries of older epochs are refused. Kept apart from the log's
    /// epoch history, which records only the epochs of the records it holds: a copy behind
    /// a new primary still takes the older epochs' records it lacks.
    accepted: u32,
    /// What records moved and no record timed since, as of `applied`.
    untimed: Untimed,
    /// What the primary last said of the volume's replication (as `peers.json` holds it).
    peers: Option<Peers>,
}

/// The file in a copy's directory holding the newest leader epoch it accepted.
const ACCEPTED_FILE: &str = "accepted-epoch";

fn load_accepted(root: &Path) -> Result<u32, CopyError> {
    let path = root.join(ACCEPTED_FILE);
    let accepted = load_applied(&path).map_err(io_error(&path))?.unwrap_or(0);
    Ok(u32::try_from(accepted).unwrap_or(u32::MAX))
}

fn stuck_on(error: &ApplyError) -> Stuck {
    Stuck {
        offset: error.offset,
        error: error.to_string(),
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Removes the directory tree at `path` if there is one.
fn remove_tree(path: &Path) -> Result<(), CopyError> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(io_error(path)(error)),
        _ => Ok(()),
    }
}

/// Finishes switching the copy in `root` to the complete snapshot `base.new` describes
/// (each step is harmless to repeat after a crash).
fn switch_to_snapshot(root: &Path, gate: &TreeGate) -> Result<(), CopyError> {
    let ready = root.join("base.new");
    let Some(base) = Base::load(&ready)? else {
        return Ok(());
    };
    let changing = gate.change().map_err(io_error(gate.path()))?;
    let (staging, data, trash) = (root.join("staging"), root.join("data"), root.join("trash"));
    if staging.exists() {
        if data.exists() {
            std::fs::rename(&data, &trash).map_err(io_error(&data))?;
        }
        std::fs::rename(&staging, &data).map_err(io_error(&staging))?;
    }
    remove_tree(&root.join("log"))?;
    let applied_path = root.join("applied");
    store_applied(&applied_path, base.offset).map_err(io_error(&applied_path))?;
    let base_path = root.join("base");
    std::fs::rename(&ready, &base_path).map_err(io_error(&ready))?;
    durable::sync_parent(&base_path).map_err(io_error(root))?;
    changing
        .set_offset(base.offset)
        .map_err(io_error(gate.path()))?;
    discard(root, &trash)
}

/// Removes the old tree at `trash` in the background (a large one takes long, and its
/// primary waits for the snapshot's acknowledgement): renamed aside first, so a new
/// snapshot can use the name; what a crash leaves is removed at the next open.
fn discard(root: &Path, trash: &Path) -> Result<(), CopyError> {
    if !trash.exists() {
        return Ok(());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let aside = root.join(format!("trash.{nanos}"));
    std::fs::rename(trash, &aside).map_err(io_error(trash))?;
    let spawned = std::thread::Builder::new()
        .name("trash".to_string())
        .spawn(move || {
            if let Err(error) = std::fs::remove_dir_all(&aside) {
                tracing::warn!(path = %aside.display(), %error, "cannot remove an old tree");
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start removing an old tree; it goes at the next start");
    }
    Ok(())
}

impl VolumeCopy {
    /// Opens (or makes) the copy in `root`, bringing `data/` up to what the log holds.
    pub fn open(root: &Path) -> Result<VolumeCopy, CopyError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CopyError::Io { path, source }
        };
        std::fs::create_dir_all(root).map_err(io(root))?;
        let gate_path = root.join(GATE_FILE);
        let gate = TreeGate::open(&gate_path).map_err(io(&gate_path))?;
        switch_to_snapshot(root, &gate)?;
        // A snapshot cut short.
        remove_tree(&root.join("staging"))?;
        remove_tree(&root.join("trash"))?;
        for entry in std::fs::read_dir(root).map_err(io(root))? {
            let entry = entry.map_err(io(root))?;
            if entry.file_name().to_string_lossy().starts_with("trash.") {
                remove_tree(&entry.path())?;
            }
        }
        let base = Base::load(&root.join("base"))?;
        let data = root.join("data");
        std::fs::create_dir_all(&data).map_err(io(&data))?;
        let tree = Origin::open(&data).map_err(io(&data))?;
        let log = Log::open_at(
            &root.join("log"),
            LogOptions {
                segment_bytes: SEGMENT_BYTES,
                // A log the snapshot began starts in the snapshot's epoch.
                epoch: base.map_or(0, |base| base.epoch),
            },
            base.map_or(0, |base| base.offset),
        )?;
        let applied_path = root.join("applied");
        let view = log.view();
        let first = view.stats().first_offset;
        let applied = load_applied(&applied_path)
            .map_err(io(&applied_path))?
            .unwrap_or(first)
            .max(first);
        // SAFETY: geteuid cannot fail.
        let as_root = unsafe { libc::geteuid() } == 0;
        let mut copy_applied = applied;
        let mut stuck = None;
        let untimed_path = untimed::file(root);
        let mut untimed = Untimed::load(root).map_err(io(&untimed_path))?;
        let changing = gate.change().map_err(io(&gate_path))?;
        for record in view.records(applied)? {
            let record = record?;
            if stuck.is_some() {
                continue;
            }
            // A record the tree cannot take leaves the node serving, and saying so,
            // rather than refusing to start.
            match apply(&tree, &record, as_root) {
                Ok(()) => {
                    untimed.note(&record.op);
                    copy_applied = record.offset + 1;
                }
                Err(error) => stuck = Some(stuck_on(&error)),
            }
        }
        changing.set_offset(copy_applied).map_err(io(&gate_path))?;
        drop(changing);
        let mut copy = VolumeCopy {
            root: root.to_path_buf(),
            tree,
            log,
            base,
            staging: None,
            applied: copy_applied,
            applied_stored: Instant::now(),
            as_root,
            hashes: None,
            stuck,
            high_watermark: load_high_watermark(root)?,
            high_watermark_unstored: false,
            accepted: load_accepted(root)?,
            untimed,
            peers: load_peers(root)?,
            resyncing: None,
            gate,
            resync_changing: None,
        };
        copy.store_applied()?;
        Ok(copy)
    }

    /// Accepts leader epoch `epoch` from a primary that opened a session with it: durably,
    /// so every primary of an older epoch is refused from now on, even after a restart.
    /// The log's history takes the epoch with the first record of it.
    pub fn accept_epoch(&mut self, epoch: u32) -> Result<(), CopyError> {
        if epoch > self.accepted {
            let path = self.root.join(ACCEPTED_FILE);
            store_applied(&path, u64::from(epoch)).map_err(io_error(&path))?;
            self.accepted = epoch;
        }
        Ok(())
    }

    /// Begins leader epoch `epoch` in the copy's log at its end: the copy is promoted, and
    /// its next records are the new primary's. Their first ones record the times the tree
    /// has for what the old primary's records left untimed (see [`super::untimed`]), so
    /// the other copies end where this one does. Returns how many it recorded.
    pub fn begin_epoch(&mut self, epoch: u32) -> Result<usize, CopyError> {
        self.accept_epoch(epoch)?;
        self.log.begin_epoch(epoch)?;
        self.apply_received(&[])?;
        let records = mtimes_now(&self.tree, self.untimed.paths());
        let mut last = None;
        for op in &records {
            last = Some(self.log.append(op)?);
        }
        if let Some(last) = last {
            self.log.sync_to(last)?;
        }
        // The tree has these times already.
        self.applied = self.next();
        self.untimed.clear();
        Ok(records.len())
    }

    /// The epoch of the last record the copy holds, if it holds any.
    pub fn last_epoch(&self) -> Option<u32> {
        let held = self.next().checked_sub(1)?;
        match self.base {
            Some(base) if held < base.offset => Some(base.epoch),
            _ => self.log.epochs().epoch_at(held),
        }
    }

    /// Whether the tree holds records the log no longer does (it was cut back at a
    /// divergence point), so only a snapshot makes it the volume again.
    pub fn needs_snapshot(&self) -> bool {
        self.root.join(RESYNC_FILE).exists()
    }

    /// Cuts the copy's log back so that its next record is `to`, removing records a newer
    /// primary never had. Its tree cannot un-apply them: the copy is marked (durably,
    /// first) as needing a snapshot, which the primary sends at once.
    /// The records cut off are not lost: they are kept first, with their offsets and
    /// epochs, in a log of their own (`diverged-TO/log`, which `mirrorfs log --state-dir
    /// DIR/ID/diverged-TO` reads); what they were is returned.
    pub fn truncate_to(&mut self, to: u64) -> Result<KeptAside, CopyError> {
        let kept = self.keep_aside(to)?;
        let marker = self.root.join(RESYNC_FILE);
        durable::replace(&marker, format!("{to}\n")).map_err(io_error(&marker))?;
        self.log.truncate_to(to)?;
        self.applied = self.applied.min(to);
        self.store_applied()?;
        Ok(kept)
    }

    /// Copies the records from `to` on into `diverged-TO/log`, durably.
    fn keep_aside(&self, to: u64) -> Result<KeptAside, CopyError> {
        let dir = self.root.join(format!("diverged-{to}"));
        let aside = Log::open_at(
            &dir.join("log"),
            LogOptions {
                segment_bytes: SEGMENT_BYTES,
                epoch: 0,
            },
            to,
        )?;
        for record in self.log.view().records(to)? {
            let record = record?;
            // A cut made twice at one place (a session lost midway) keeps each once.
            if record.offset >= aside.next_offset() {
                aside.append_record(&record)?;
            }
        }
        aside.sync_to(aside.next_offset())?;
        describe_kept(&dir)
    }

    /// Where the copy stands, as `Position` tells a primary of `epoch`.
    pub fn position(&mut self, epoch: u32) -> Result<ToPrimary, CopyError> {
        Ok(ToPrimary::Position {
            next: self.next(),
            epoch,
            last: self.last_hash()?,
            snapshot: self.has_snapshot(),
            stuck: self.stuck().cloned(),
            last_epoch: self.last_epoch(),
            needs_snapshot: self.needs_snapshot(),
        })
    }

    /// Keeps what the primary said of the volume's replication (in `peers.json`, durably,
    /// when it changed): a promotion of this copy writes the new primary's config from it.
    pub fn keep_peers(&mut self, peers: &Peers) -> Result<(), CopyError> {
        let path = self.root.join(PEERS_FILE);
        if self.peers.as_ref() == Some(peers) {
            return Ok(());
        }
        let text = serde_json::to_vec_pretty(peers).map_err(|error| CopyError::Io {
            path: path.clone(),
            source: io::Error::other(error),
        })?;
        durable::replace(&path, text).map_err(io_error(&path))?;
        self.peers = Some(peers.clone());
        Ok(())
    }

    /// What the primary last said of the volume's replication, if it said anything yet.
    pub fn peers(&self) -> Option<&Peers> {
        self.peers.as_ref()
    }

    /// Keeps `high_watermark`, told by the primary with a batch, if it is the highest
    /// yet: durably at once when it is past what the copy holds (the copy is behind what
    /// the primary counts as held by every in-sync replica, and must never be promoted
    /// as if it were not), otherwise with the applied offset, at most a second later.
    pub fn told_high_watermark(&mut self, high_watermark: u64) -> Result<(), CopyError> {
        if high_watermark <= self.high_watermark {
            return Ok(());
        }
        self.high_watermark = high_watermark;
        self.high_watermark_unstored = true;
        if high_watermark > self.next() {
            self.store_high_watermark()?;
        }
        Ok(())
    }

    /// The last high watermark the primary told.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    fn store_high_watermark(&mut self) -> Result<(), CopyError> {
        if self.high_watermark_unstored {
            let path = self.root.join(HIGH_WATERMARK_FILE);
            store_applied(&path, self.high_watermark).map_err(io_error(&path))?;
            self.high_watermark_unstored = false;
        }
        Ok(())
    }

    /// The offset of the first record the copy lacks.
    pub fn next(&self) -> u64 {
        self.log.next_offset()
    }

    /// [`record_hash`] of the last record held, if any.
    pub fn last_hash(&self) -> Result<Option<[u8; 32]>, CopyError> {
        let Some(last) = self.next().checked_sub(1) else {
            return Ok(None);
        };
        let view = self.log.view();
        if last < view.stats().first_offset {
            // The log is empty since a snapshot began it.
            return Ok(self
                .base
                .filter(|base| base.offset == self.next())
                .and_then(|base| base.last));
        }
        match view.records(last)?.next() {
            Some(record) => Ok(Some(record_hash(&record?))),
            None => Ok(None),
        }
    }

    /// Where the copy stands.
    pub fn status(&self) -> CopyStatus {
        CopyStatus {
            log_start: self.log.view().stats().first_offset,
            next: self.next(),
            applied: self.applied,
            high_watermark: self.high_watermark,
            epoch: self.epoch(),
            receiving_snapshot: self.staging.is_some(),
            stuck: self.stuck.clone(),
            out_of_step: self.needs_snapshot(),
            // Read from their logs only where status is shown (`Hosted::status`).
            kept_aside: Vec::new(),
        }
    }

    /// The record the tree is stuck before, if it is.
    pub fn stuck(&self) -> Option<&Stuck> {
        self.stuck.as_ref()
    }

    /// Whether the copy began with a complete snapshot.
    pub fn has_snapshot(&self) -> bool {
        self.base.is_some()
    }

    /// The highest epoch the copy has accepted: from a primary, or in its log's records.
    pub fn epoch(&self) -> u32 {
        self.accepted.max(self.log.epoch())
    }

    /// Takes `records` (the next ones, in order): durable in the copy's log when this
    /// returns, which is what an acknowledgement promises; [`VolumeCopy::apply_received`]
    /// brings them into the tree. Returns the offset of the first record it lacks.
    /// Nothing from a record that is refused on is kept.
    pub fn receive(&mut self, records: &[Record]) -> Result<u64, CopyError> {
        self.abandon_snapshot()?;
        if self.needs_snapshot() && !records.is_empty() {
            return Err(CopyError::NeedsSnapshot);
        }
        for record in records {
            let seen = self.log.epoch();
            if record.epoch < seen {
                return Err(CopyError::StaleEpoch {
                    offset: record.offset,
                    epoch: record.epoch,
                    seen,
                });
            }
            self.log.append_record(record)?;
        }
        let Some(last) = records.last() else {
            return Ok(self.next());
        };
        self.log.sync_to(last.offset)?;
        Ok(self.next())
    }

    /// Applies to the tree every record the log holds past it: `received` (the records
    /// [`VolumeCopy::receive`] took last) from memory when they are the next ones, the
    /// rest read back from the log.
    pub fn apply_received(&mut self, received: &[Record]) -> Result<(), CopyError> {
        let applied = self.apply_held(received);
        if let Err(CopyError::Apply(error)) = &applied {
            self.stuck = Some(stuck_on(error));
        } else if applied.is_ok() {
            self.stuck = None;
        }
        applied
    }

    fn apply_held(&mut self, received: &[Record]) -> Result<(), CopyError> {
        // A resync under way holds the gate already.
        let changing = match self.resync_changing {
            Some(_) => None,
            None => Some(self.gate.change().map_err(io_error(self.gate.path()))?),
        };
        let applied = self.apply_next(received);
        if let Some(changing) = changing {
            // What was applied stands even when a record after it failed.
            changing
                .set_offset(self.applied)
                .map_err(io_error(self.gate.path()))?;
        }
        applied?;
        if self.applied_stored.elapsed() >= APPLIED_EVERY {
            self.store_applied()?;
        }
        Ok(())
    }

    fn apply_next(&mut self, received: &[Record]) -> Result<(), CopyError> {
        if received
            .first()
            .is_some_and(|first| first.offset == self.applied)
        {
            for record in received {
                self.apply_one(record)?;
            }
        }
        if self.applied < self.next() {
            for record in self.log.view().records(self.applied)? {
                self.apply_one(&record?)?;
            }
        }
        Ok(())
    }

    fn apply_one(&mut self, record: &Record) -> Result<(), CopyError> {
        self.apply(record)?;
        self.untimed.note(&record.op);
        self.applied = record.offset + 1;
        // A copy record reads its source: applied again after later records changed the
        // source (a restart from an older stored offset), it would copy the wrong bytes.
        if matches!(record.op, Op::Copy { .. }) {
            self.store_applied()?;
        }
        Ok(())
    }

    /// Keeps `hashes` current as records are applied from now on.
    pub fn keep_hashes(&mut self, hashes: Arc<HashStore>) {
        self.hashes = Some(hashes);
    }

    /// The copy's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the tree lives (it is replaced whole when a snapshot is switched in).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Whether the copy sets owners (its node runs as root).
    pub fn sets_owners(&self) -> bool {
        self.as_root
    }

    /// Applies one record to the tree, marking what it changes in the stored hashes: a
    /// content change before it is made, a change of attributes after; each with the
    /// file's stamp just before, so a file changed behind the copy's back is rehashed whole.
    fn apply(&self, record: &Record) -> Result<(), CopyError> {
        let Some(hashes) = &self.hashes else {
            return Ok(apply(&self.tree, record, self.as_root)?);
        };
        let path = record.op.path();
        let content = match &record.op {
            Op::Write { offset, data, .. } => {
                Some(Change::Written(*offset..*offset + data.len() as u64))
            }
            Op::Truncate { size, .. } => Some(Change::Truncated(*size)),
            Op::Fallocate { .. } => Some(Change::Content),
            Op::Copy { offset, length, .. } => Some(Change::Written(*offset..*offset + *length)),
            _ => None,
        };
        // Where the object an attribute change acts on is named once it is made.
        let moved = match &record.op {
            Op::SetAttr { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::Link { path, .. } => Some(path),
            Op::Rename { to, .. } => Some(to),
            _ => None,
        };
        let before = (content.is_some() || moved.is_some())
            .then(|| file_stat(&self.tree, path))
            .flatten();
        let changing = content.zip(before).map(|(change, (key, stamp))| {
            let guard = hashes.changing(key, Some(path), &change, || 0);
            hashes.seen_before(key, &stamp);
            guard
        });
        apply(&self.tree, record, self.as_root)?;
        drop(changing);
        if let (Some(after), Some((key, stamp))) = (moved, before) {
            drop(hashes.changing(key, Some(after), &Change::Attributes, || 0));
            hashes.seen_before(key, &stamp);
        }
        Ok(())
    }

    /// Starts receiving a snapshot (dropping one begun before): `data/` stays as it is
    /// until [`VolumeCopy::end_snapshot`].
    pub fn begin_snapshot(&mut self, base: Base) -> Result<(), CopyError> {
        self.abandon_snapshot()?;
        let staging = self.root.join("staging");
        std::fs::create_dir(&staging).map_err(io_error(&staging))?;
        let tree = Origin::open(&staging).map_err(io_error(&staging))?;
        self.staging = Some(Staging { tree, base });
        Ok(())
    }

    /// An incremental resync from `base` begins: the tree is marked (durably) as not
    /// matching the log until it ends, so a resync cut short is done again.
    pub fn begin_resync(&mut self, base: Base) -> Result<(), CopyError> {
        self.abandon_snapshot()?;
        if self.resync_changing.is_none() {
            let changing = self.gate.change().map_err(io_error(self.gate.path()))?;
            self.resync_changing = Some(changing);
        }
        let marker = self.root.join(RESYNC_FILE);
        durable::replace(&marker, format!("{}\n", base.offset)).map_err(io_error(&marker))?;
        self.resyncing = Some(base);
        Ok(())
    }

    /// The session a resync was part of ended: standby readers may read the tree again,
    /// which stays marked as between offsets until a resync completes.
    pub fn session_ended(&mut self) {
        self.resync_changing = None;
    }

    /// The tree's entries, in path order, with stored roots where current: what the
    /// primary compares its own with.
    pub fn list_tree(&self) -> Result<Vec<Entry>, CopyError> {
        let mut entries = Vec::new();
        let store = self.hashes.as_deref();
        list(&self.tree, &LogPath::root(), store, &mut |entry| {
            entries.push(entry);
            true
        })
        .map_err(|error| CopyError::Io {
            path: self.root.join("data"),
            source: std::io::Error::other(error.to_string()),
        })?;
        Ok(entries)
    }

    /// Applies a part of the resync under way to the tree, in place.
    pub fn resync_ops(&mut self, ops: &[Op]) -> Result<(), CopyError> {
        let base = self.resyncing.ok_or(CopyError::NoSnapshot)?;
        for op in ops {
            // As a record, so the stored hashes hear of it like of any other.
            let record = Record {
                offset: base.offset,
                epoch: base.epoch,
                op: op.clone(),
            };
            self.apply(&record)?;
        }
        Ok(())
    }

    /// The resync is complete: the tree is synced, and the log starts over at its offset
    /// (as after a snapshot, the switch repeatable after a crash). Returns that offset.
    pub fn end_resync(&mut self) -> Result<u64, CopyError> {
        let base = self.resyncing.take().ok_or(CopyError::NoSnapshot)?;
        let root = self.root.clone();
        self.tree
            .sync_filesystem()
            .map_err(io_error(&root.join("data")))?;
        // The tree is whole again, as of the resync's offset: the switch says so under the
        // gate (taken afresh).
        self.resync_changing = None;
        self.start_over(base, false)?;
        self.stuck = None;
        Ok(base.offset)
    }

    /// Makes `base` the copy's beginning once its tree is synced (`new_tree`: the one a
    /// snapshot built in `staging/`): the switch (repeatable after a crash), the log
    /// started over at its offset, the applied offset there, and the mark of a tree out
    /// of step gone.
    fn start_over(&mut self, base: Base, new_tree: bool) -> Result<(), CopyError> {
        let root = self.root.clone();
        base.store(&root.join("base.new"))?;
        switch_to_snapshot(&root, &self.gate)?;
        if new_tree {
            let data = root.join("data");
            self.tree = Origin::open(&data).map_err(io_error(&data))?;
            if let Some(hashes) = &self.hashes {
                // A new tree: nothing stored describes its files.
                hashes.retain(&HashSet::new());
            }
        }
        self.log = Log::open_at(
            &root.join("log"),
            LogOptions {
                segment_bytes: SEGMENT_BYTES,
                epoch: base.epoch,
            },
            base.offset,
        )?;
        self.base = Some(base);
        self.applied = base.offset;
        self.applied_stored = Instant::now();
        // The tree is the primary's, times included.
        self.untimed.clear();
        self.untimed
            .save(&root)
            .map_err(io_error(&untimed::file(&root)))?;
        let marker = root.join(RESYNC_FILE);
        durable::remove(&marker).map_err(io_error(&marker))
    }

    /// Applies a part of the snapshot being received.
    pub fn snapshot_ops(&mut self, ops: &[Op]) -> Result<(), CopyError> {
        let staging = self.staging.as_ref().ok_or(CopyError::NoSnapshot)?;
        for op in ops {
            apply_op(&staging.tree, staging.base.offset, op, self.as_root)?;
        }
        Ok(())
    }

    /// The snapshot is complete: it becomes the copy, whose log continues from the
    /// snapshot's offset. Returns that offset.
    pub fn end_snapshot(&mut self) -> Result<u64, CopyError> {
        let staging = self.staging.take().ok_or(CopyError::NoSnapshot)?;
        let base = staging.base;
        let root = self.root.clone();
        staging
            .tree
            .sync_filesystem()
            .map_err(io_error(&root.join("staging")))?;
        drop(staging);
        self.start_over(base, true)?;
        Ok(base.offset)
    }

    /// Drops a snapshot being received, if there is one.
    fn abandon_snapshot(&mut self) -> Result<(), CopyError> {
        if self.staging.take().is_some() {
            remove_tree(&self.root.join("staging"))?;
        }
        Ok(())
    }

    /// Makes the tree durable and records how far it is applied.
    pub fn store_applied(&mut self) -> Result<(), CopyError> {
        let path = self.root.join("applied");
        let io = |source| CopyError::Io {
            path: path.clone(),
            source,
        };
        self.tree.sync_filesystem().map_err(io)?;
        // The set first: one newer than the offset only holds more than it must.
        let untimed_path = untimed::file(&self.root);
        self.untimed
            .save(&self.root)
            .map_err(io_error(&untimed_path))?;
        store_applied(&path, self.applied).map_err(io)?;
        self.applied_stored = Instant::now();
        self.store_high_watermark()
    }
}

/// The gate file in a copy's directory.
pub const GATE_FILE: &str = "gate";

/// The file in a copy's directory holding what the primary said of the volume's
/// replication.
const PEERS_FILE: &str = "peers.json";

/// What the primary last said of the volume's replication to the copy at `root`, if it
/// said anything yet.
pub fn load_peers(root: &Path) -> Result<Option<Peers>, CopyError> {
    let path = root.join(PEERS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CopyError::Io { path, source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| CopyError::Io {
            path,
            source: io::Error::new(io::ErrorKind::InvalidData, error),
        })
}

/// Records a copy held past a divergence point, kept aside when its log was cut back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptAside {
    /// Where they are kept (a state directory `mirrorfs log --state-dir` reads).
    pub dir: PathBuf,
    /// How many.
    pub records: u64,
    /// The bytes of data their writes carried.
    pub data_bytes: u64,
    /// The paths they name, in the order first named.
    pub paths: Vec<String>,
}

/// What the records kept aside in `dir` (a `diverged-TO` directory) are.
fn describe_kept(dir: &Path) -> Result<KeptAside, CopyError> {
    let mut kept = KeptAside {
        dir: dir.to_path_buf(),
        records: 0,
        data_bytes: 0,
        paths: Vec::new(),
    };
    let view = crate::log::inspect(&dir.join("log"))?;
    for record in view.records(view.stats().first_offset)? {
        let record = record?;
        kept.records += 1;
        if let Op::Write { data, .. } = &record.op {
            kept.data_bytes += data.len() as u64;
        }
        for path in [Some(record.op.path()), record.op.new_path()]
            .into_iter()
            .flatten()
        {
            let path = path.to_string();
            if !kept.paths.contains(&path) {
                kept.paths.push(path);
            }
        }
    }
    Ok(kept)
}

/// Every set of records kept aside in the copy at `root`, oldest cut first.
pub fn kept_aside(root: &Path) -> Result<Vec<KeptAside>, CopyError> {
    let mut dirs: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io_error(root))? {
        let entry = entry.map_err(io_error(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(to) = name
            .strip_prefix("diverged-")
            .and_then(|to| to.parse().ok())
        {
            dirs.push((to, entry.path()));
        }
    }
    dirs.sort();
    dirs.iter().map(|(_, dir)| describe_kept(dir)).collect()
}

/// The marker of a copy whose log was cut back under its tree: it needs a snapshot.
const RESYNC_FILE: &str = "needs-snapshot";

/// Marks the copy in `root`, whose log ends at `next`, as a tree its log does not vouch
/// for: its next primary resyncs it (sends only what differs) before it streams records.
pub(super) fn mark_out_of_step(root: &Path, next: u64) -> Result<(), CopyError> {
    let marker = root.join(RESYNC_FILE);
    durable::replace(&marker, format!("{next}\n")).map_err(io_error(&marker))
}

/// The file in a copy's directory naming the volume's key file, as the node was given it.
const KEY_FILE_FILE: &str = "key-file";

/// Notes in the copy at `root` that the volume's key is in `key_file` (a promotion writes
/// it into the new primary's config), if it did not say so already.
pub fn keep_key_file(root: &Path, key_file: &Path) -> Result<(), CopyError> {
    if load_key_file(root)?.as_deref() == Some(key_file) {
        return Ok(());
    }
    let path = root.join(KEY_FILE_FILE);
    let text = format!("{}\n", key_file.display());
    durable::replace(&path, text).map_err(io_error(&path))
}

/// The volume's key file, as the node keeping the copy at `root` was last given it.
pub fn load_key_file(root: &Path) -> Result<Option<PathBuf>, CopyError> {
    let path = root.join(KEY_FILE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(PathBuf::from(text.trim_end_matches('\n')))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CopyError::Io { path, source }),
    }
}

/// The file in a copy's directory holding the last high watermark the primary told.
const HIGH_WATERMARK_FILE: &str = "high-watermark";

/// The high watermark stored in the copy at `root` (0 when none was told yet).
fn load_high_watermark(root: &Path) -> Result<u64, CopyError> {
    let path = root.join(HIGH_WATERMARK_FILE);
    Ok(load_applied(&path).map_err(io_error(&path))?.unwrap_or(0))
}

/// The identity and stamp of the regular file at `path` in `tree`, if there is one.
fn file_stat(tree: &Origin, path: &LogPath) -> Option<(FileId, Stamp)> {
    let (dir, name) = place(tree, path).ok()?;
    let stat = tree.stat(At::Entry(&dir, &name)).ok()?;
    (stat.kind() == Some(FileKind::Regular)).then(|| (stat.id(), stat.stamp()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogPath, Op};

    fn path(text: &str) -> LogPath {
        LogPath::try_from(text.as_bytes().to_vec()).unwrap()
    }

    fn records(from: u64, epoch: u32) -> Vec<Record> {
        let ops = [
            Op::Mkdir {
                path: path("d"),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            Op::Create {
                path: path("d/f"),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
            Op::Write {
                path: path("d/f"),
                offset: 0,
                data: b"hello".to_vec(),
            },
        ];
        ops.into_iter()
            .enumerate()
            .map(|(n, op)| Record {
                offset: from + n as u64,
                epoch,
                op,
            })
            .collect()
    }

    #[test]
    fn records_land_in_the_tree_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut copy = VolumeCopy::open(dir.path()).unwrap();
        assert_eq!((copy.next(), copy.epoch()), (0, 0));
        assert_eq!(copy.receive(&records(0, 1)).unwrap(), 3);
        // Durable in the log first; in the tree once applied (from the log if need be).
        assert!(!dir.path().join("data/d").exists());
        copy.apply_received(&[]).unwrap();
        assert_eq!(copy.status().applied, 3);
        assert_eq!(
            std::fs::read(dir.path().join("data/d/f")).unwrap(),
            b"hello"
        );
        // Out of order: refused, nothing kept.
        let error = copy.receive(&records(5, 1)).unwrap_err();
        assert!(
            matches!(error, CopyError::Log(LogError::OutOfOrder { .. })),
            "{error}"
        );
        drop(copy);
        // The tree lost (as if the node crashed before syncing it): reopening applies the log.
        std::fs::remove_dir_all(dir.path().join("data")).unwrap();
        std::fs::remove_file(dir.path().join("applied")).unwrap();
        let copy = VolumeCopy::open(dir.path()).unwrap();
        assert_eq!((copy.next(), copy.epoch()), (3, 1));
        assert_eq!(
            std::fs::read(dir.path().join("data/d/f")).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn a_lower_epoch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut copy = VolumeCopy::open(dir.path()).unwrap();
        copy.receive(&records(0, 4)).unwrap();
        let error = copy.receive(&records(3, 3)).unwrap_err();
        assert!(
            matches!(
                error,
                CopyError::StaleEpoch {
                    epoch: 3,
                    seen: 4,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(copy.next(), 3);
    }

    /// A copy behind a newly elected primary accepts its epoch at once (older primaries
    /// are refused from then on, across a restart) and still takes the records of older
    /// epochs it lacks, which the new primary's log holds before its own.
    #[test]
    fn a_copy_behind_a_new_primary_takes_the_older_epochs_records_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let mut copy = VolumeCopy::open(dir.path()).unwrap();
        copy.receive(&records(0, 1)).unwrap();
        copy.accept_epoch(3).unwrap();
        let older = records(3, 2);
        copy.receive(&older).unwrap();
        copy.apply_received(&older).unwrap();
        assert_eq!(
            (copy.next(), copy.epoch(), copy.last_epoch()),
            (6, 3, Some(2))
        );
        drop(copy);
        let copy = VolumeCopy::open(dir.path()).unwrap();
        assert_eq!(copy.epoch(), 3, "the accepted epoch is durable");
        assert_eq!(inspect(dir.path()).unwrap().epoch, 3);
    }

    #[test]
    fn a_snapshot_replaces_the_copy_and_the_log_continues_from_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut copy = VolumeCopy::open(dir.path()).unwrap();
        let received = records(0, 1);
        copy.receive(&received).unwrap();
        copy.apply_received(&received).unwrap();
        let base = Base {
            offset: 10,
            epoch: 2,
            last: Some([1; 32]),
        };
        copy.begin_snapshot(base).unwrap();
        let ops: Vec<Op> = records(0, 2).into_iter().map(|r| r.op).collect();
        copy.snapshot_ops(&ops[..1]).unwrap();
        // Until the end, the copy is what it was.
        assert!(data.join("d/f").exists());
        assert!(dir.path().join("staging/d").is_dir());
        copy.snapshot_ops(&ops[1..]).unwrap();
        assert_eq!(copy.end_snapshot().unwrap(), 10);
        assert!(!dir.path().join("staging").exists());
        assert_eq!(std::fs::read(data.join("d/f")).unwrap(), b"hello");
        assert_eq!(copy.next(), 10);
        assert_eq!(copy.epoch(), 2);
        assert_eq!(copy.last_hash().unwrap(), Some([1; 32]));
        assert_eq!(copy.receive(&records(10, 2)).unwrap(), 13);
        drop(copy);
        let copy = VolumeCopy::open(dir.path()).unwrap();
        assert_eq!((copy.next(), copy.epoch()), (13, 2));
        // Snapshot operations with no snapshot begun are refused.
        let mut copy = copy;
        assert!(matches!(
            copy.snapshot_ops(&ops).unwrap_err(),
            CopyError::NoSnapshot
        ));
    }

    #[test]
    fn a_snapshot_cut_short_is_dropped_and_a_complete_one_is_finished_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut copy = VolumeCopy::open(dir.path()).unwrap();
        let received = records(0, 1);
        copy.receive(&received).unwrap();
        copy.apply_received(&received).unwrap();
        copy.begin_snapshot(Base {
            offset: 50,
            epoch: 1,
            last: None,
        })
        .unwrap();
        drop(copy);
        // Cut short (the node died mid-snapshot): the copy is as it was.
        let copy = VolumeCopy::open(dir.path()).unwrap();
        assert!(!dir.path().join("staging").exists());
        assert_eq!(copy.next(), 3);
        drop(copy);
        // Complete, and the node died during the switch: the next start finishes it.
        std::fs::create_dir(dir.path().join("staging")).unwrap();
        std::fs::write(dir.path().join("staging/new"), b"snapshot").unwrap();
        std::fs::write(dir.path().join("base.new"), "7 3 -\n").unwrap();
        let copy = VolumeCopy::open(dir.path()).unwrap();
        assert_eq!((copy.next(), copy.epoch()), (7, 3));
        assert_eq!(
            std::fs::read(dir.path().join("data/new")).unwrap(),
            b"snapshot"
        );
        assert!(!dir.path().join("data/d").exists());
        assert!(!dir.path().join("base.new").exists());
        drop(copy);
        // A base that says nothing sensible is an error, not a guess.
        std::fs::write(dir.path().join("base"), "seven\n").unwrap();
        let error = VolumeCopy::open(dir.path()).unwrap_err();
        assert!(matches!(error, CopyError::Base { .. }), "{error}");
    }
}
