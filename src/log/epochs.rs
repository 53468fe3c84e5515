//! The log's leader-epoch history: for each epoch, the offset of its first record, as
//! Kafka's leader-epoch checkpoint keeps it. It is what lets two logs find where their
//! histories part after a failover (the end offset of an epoch is the start of the next),
//! and its latest epoch is the highest one the log has accepted: what fences an older
//! primary.
//!
//! Kept in `epochs` beside the segments, as text: a header line, then one `EPOCH START`
//! line per epoch, epochs rising and starts never falling. Replaced whole and durably at
//! every change (there is one per failover, not per record).

use std::io;
use std::path::{Path, PathBuf};

use crate::durable;

/// The file's name in the log's directory.
pub const FILE_NAME: &str = "epochs";

/// Its first line: the format and its version.
const HEADER: &str = "mirrorfs-epochs 1";

/// Where one epoch begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochStart {
    /// The leader epoch.
    pub epoch: u32,
    /// The offset of its first record (the log's end when it began).
    pub start: u64,
}

impl std::fmt::Display for EpochStart {
    /// "2 from 1500": epoch 2's records begin at offset 1500.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} from {}", self.epoch, self.start)
    }
}

/// Why an epoch history cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EpochsError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file does not say what a history can.
    #[error("{path}: line {line}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An epoch older than the latest one, or one starting before it.
    #[error(
        "epoch {epoch} at offset {start} cannot follow epoch {latest} at offset {latest_start}"
    )]
    Backwards {
        /// The epoch offered.
        epoch: u32,
        /// Its start.
        start: u64,
        /// The latest epoch held.
        latest: u32,
        /// Its start.
        latest_start: u64,
    },
}

/// A log's epoch history, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Epochs {
    entries: Vec<EpochStart>,
}

impl Epochs {
    /// A history of one epoch beginning at `start`.
    pub fn starting(epoch: u32, start: u64) -> Epochs {
        Epochs {
            entries: vec![EpochStart { epoch, start }],
        }
    }

    /// Every epoch, oldest first.
    pub fn entries(&self) -> &[EpochStart] {
        &self.entries
    }

    /// The latest epoch: the highest this log has accepted.
    pub fn latest(&self) -> Option<EpochStart> {
        self.entries.last().copied()
    }

    /// Records that `epoch` begins at `start`. An epoch already the latest changes
    /// nothing; one that begins where the latest began replaces it (that epoch has no
    /// record, so nothing can end in it). Returns whether the history changed.
    pub fn begin(&mut self, epoch: u32, start: u64) -> Result<bool, EpochsError> {
        if let Some(latest) = self.latest() {
            if epoch == latest.epoch {
                return Ok(false);
            }
            if epoch < latest.epoch || start < latest.start {
                return Err(EpochsError::Backwards {
                    epoch,
                    start,
                    latest: latest.epoch,
                    latest_start: latest.start,
                });
            }
            if start == latest.start {
                self.entries.pop();
            }
        }
        self.entries.push(EpochStart { epoch, start });
        Ok(true)
    }

    /// Kafka's OffsetsForLeaderEpoch on a log whose next offset is `log_end`: the
    /// latest epoch at most `epoch` this history holds, and the offset its records end
    /// before (the next epoch's start, or `log_end` for the latest). A follower whose
    /// last record is of `epoch` holds nothing this log has from that offset on. `None`
    /// when every epoch here is newer than `epoch`.
    pub fn end_of(&self, epoch: u32, log_end: u64) -> Option<(u32, u64)> {
        let at = self
            .entries
            .iter()
            .rposition(|entry| entry.epoch <= epoch)?;
        let end = self.entries.get(at + 1).map_or(log_end, |next| next.start);
        Some((self.entries[at].epoch, end))
    }

    /// The epoch the record at `offset` was written in, by this history.
    pub fn epoch_at(&self, offset: u64) -> Option<u32> {
        self.entries
            .iter()
            .rev()
            .find(|entry| entry.start <= offset)
            .map(|entry| entry.epoch)
    }

    /// Forgets the epochs that begin at or past `end` (the log was cut there), keeping
    /// the latest epoch's number: a log cut back still refuses the epochs it has seen
    /// pass, so its latest becomes that epoch beginning at `end`.
    pub fn cut_at(&mut self, end: u64) {
        let Some(latest) = self.latest() else {
            return;
        };
        self.entries.retain(|entry| entry.start < end);
        if self.latest() != Some(latest) {
            self.entries.push(EpochStart {
                epoch: latest.epoch,
                start: end,
            });
        }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut text = format!("{HEADER}\n");
        for entry in &self.entries {
            text.push_str(&format!("{} {}\n", entry.epoch, entry.start));
        }
        text
    }

    /// Reads a history from the text of the file at `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Epochs, EpochsError> {
        let malformed = |line: usize, reason: String| EpochsError::Malformed {
            path: path.to_path_buf(),
            line,
            reason,
        };
        if !text.ends_with('\n') {
            return Err(malformed(
                text.lines().count().max(1),
                "the file ends mid-line (cut short?)".to_string(),
            ));
        }
        let mut lines = text.lines();
        match lines.next() {
            Some(HEADER) => {}
            other => {
                let found = other.unwrap_or_default();
                return Err(malformed(
                    1,
                    format!("expected {HEADER:?}, found {found:?}"),
                ));
            }
        }
        let mut epochs = Epochs::default();
        for (index, line) in lines.enumerate() {
            let number = index + 2;
            let mut fields = line.split(' ');
            let (Some(epoch), Some(start), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(malformed(
                    number,
                    format!("expected EPOCH START, found {line:?}"),
                ));
            };
            let (Ok(epoch), Ok(start)) = (epoch.parse::<u32>(), start.parse::<u64>()) else {
                return Err(malformed(number, format!("not two numbers: {line:?}")));
            };
            if let Some(latest) = epochs.latest()
                && (epoch <= latest.epoch || start < latest.start)
            {
                return Err(malformed(
                    number,
                    format!(
                        "epoch {epoch} at {start} after epoch {} at {}",
                        latest.epoch, latest.start
                    ),
                ));
            }
            epochs.entries.push(EpochStart { epoch, start });
        }
        Ok(epochs)
    }

    /// The history kept in log directory `dir`, or `None` when it has none.
    pub fn load(dir: &Path) -> Result<Option<Epochs>, EpochsError> {
        let path = dir.join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => Epochs::parse(&path, &text).map(Some),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(EpochsError::Io { path, source }),
        }
    }

    /// Keeps this history in log directory `dir`, replacing what was there durably.
    pub fn store(&self, dir: &Path) -> Result<(), EpochsError> {
        let path = dir.join(FILE_NAME);
        durable::replace(&path, self.render()).map_err(|source| EpochsError::Io { path, source })
    }
}

/// The file in a log's directory that says the log is fenced.
pub const FENCE_FILE: &str = "fenced";

/// What fenced a primary's log: a replica had accepted a newer epoch, so another primary
/// was promoted. A fenced log takes no new record, across restarts, until the volume
/// rejoins as a replica.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fence {
    /// The newer epoch.
    pub epoch: u32,
    /// Who told: the replica's name.
    pub by: String,
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fenced by epoch {} (node {})", self.epoch, self.by)
    }
}

impl Fence {
    /// The fence kept in log directory `dir`, if the log is fenced.
    pub fn load(dir: &Path) -> Result<Option<Fence>, EpochsError> {
        let path = dir.join(FENCE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(EpochsError::Io { path, source }),
        };
        let malformed = |reason: &str| EpochsError::Malformed {
            path: path.clone(),
            line: 1,
            reason: reason.to_string(),
        };
        let (epoch, by) = text
            .strip_suffix('\n')
            .and_then(|line| line.split_once(' '))
            .ok_or_else(|| malformed("expected EPOCH NODE"))?;
        let epoch = epoch.parse().map_err(|_| malformed("not an epoch"))?;
        Ok(Some(Fence {
            epoch,
            by: by.to_string(),
        }))
    }

    /// Keeps this fence in log directory `dir`, durably.
    pub fn store(&self, dir: &Path) -> Result<(), EpochsError> {
        let path = dir.join(FENCE_FILE);
        let text = format!("{} {}\n", self.epoch, self.by.replace('\n', " "));
        durable::replace(&path, text).map_err(|source| EpochsError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[(u32, u64)]) -> Epochs {
        let mut epochs = Epochs::default();
        for &(epoch, start) in entries {
            epochs.begin(epoch, start).unwrap();
        }
        epochs
    }

    #[test]
    fn an_epoch_ends_where_the_next_begins() {
        let epochs = history(&[(1, 0), (2, 100), (4, 250)]);
        assert_eq!(epochs.end_of(1, 400), Some((1, 100)));
        assert_eq!(epochs.end_of(2, 400), Some((2, 250)));
        // Epoch 3 never wrote here: a follower whose last record is of epoch 3 (from a
        // primary this log never followed) shares this log's history up to epoch 2's end.
        assert_eq!(epochs.end_of(3, 400), Some((2, 250)));
        assert_eq!(epochs.end_of(4, 400), Some((4, 400)));
        assert_eq!(epochs.end_of(9, 400), Some((4, 400)));
        assert_eq!(history(&[(3, 10)]).end_of(2, 50), None);
        assert_eq!(epochs.epoch_at(0), Some(1));
        assert_eq!(epochs.epoch_at(249), Some(2));
        assert_eq!(epochs.epoch_at(250), Some(4));
        assert_eq!(history(&[(2, 10)]).epoch_at(9), None);
    }

    #[test]
    fn epochs_only_move_forward() {
        let mut epochs = history(&[(1, 0), (2, 100)]);
        assert!(
            !epochs.begin(2, 150).unwrap(),
            "the latest again changes nothing"
        );
        assert!(matches!(
            epochs.begin(1, 200),
            Err(EpochsError::Backwards { .. })
        ));
        assert!(matches!(
            epochs.begin(3, 50),
            Err(EpochsError::Backwards { .. })
        ));
        // An epoch that wrote nothing is replaced by the next beginning at the same place.
        assert!(epochs.begin(3, 100).unwrap());
        assert_eq!(epochs.entries(), history(&[(1, 0), (3, 100)]).entries());
    }

    #[test]
    fn a_cut_log_keeps_its_latest_epoch() {
        let mut epochs = history(&[(1, 0), (2, 100), (3, 250)]);
        epochs.cut_at(300);
        assert_eq!(epochs, history(&[(1, 0), (2, 100), (3, 250)]));
        epochs.cut_at(120);
        assert_eq!(epochs, history(&[(1, 0), (2, 100), (3, 120)]));
        epochs.cut_at(0);
        assert_eq!(epochs, history(&[(3, 0)]));
    }

    #[test]
    fn the_file_reads_back_and_damage_is_named() {
        let path = Path::new("/state/log/epochs");
        let epochs = history(&[(1, 0), (2, 100)]);
        assert_eq!(Epochs::parse(path, &epochs.render()).unwrap(), epochs);
        let cases = [
            ("", "line 1"),
            ("mirrorfs-epochs 1\n1 0\n2 10", "mid-line"),
            ("mirrorfs-epochs 9\n", "expected"),
            ("mirrorfs-epochs 1\n1\n", "EPOCH START"),
            ("mirrorfs-epochs 1\n1 x\n", "not two numbers"),
            ("mirrorfs-epochs 1\n2 10\n1 20\n", "after epoch 2"),
            ("mirrorfs-epochs 1\n1 10\n2 5\n", "after epoch 1"),
        ];
        for (text, expected) in cases {
            let error = Epochs::parse(path, text).unwrap_err().to_string();
            assert!(error.starts_with("/state/log/epochs: line"), "{error}");
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
