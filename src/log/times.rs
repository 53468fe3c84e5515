//! When records entered the log: a side file (`times`) of (offset, Unix time in ms) pairs,
//! 16 bytes each, one at most every second an append happens, so `mirrorfs log` can say
//! when each record was taken, to about a second: the time of the latest entry at or
//! before its offset. Informational only: never fsynced, never read by recovery or
//! replication; a lost or torn tail loses times, nothing else. A log cut back (a replica
//! truncated to a new primary's) appends entries with smaller offsets than those before
//! them; a reader drops the entries such an entry follows from.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The file's name in the log's directory.
pub const FILE_NAME: &str = "times";

/// At most one entry this often.
const EVERY: Duration = Duration::from_secs(1);

/// One entry's bytes: the first offset of an append, and the time.
const ENTRY: usize = 16;

/// Appends entries as records are appended.
#[derive(Debug)]
pub(super) struct Stamper {
    path: PathBuf,
    /// None once the file cannot be written (times are not kept then).
    file: Option<File>,
    last: Option<Instant>,
}

impl Stamper {
    /// Opens (or makes) `dir/times` for appending.
    pub(super) fn open(dir: &Path) -> Stamper {
        let path = dir.join(FILE_NAME);
        let file = open_appending(&path);
        Stamper {
            path,
            file,
            last: None,
        }
    }

    /// Records that an append of records from `first` on happened now, unless one was
    /// recorded less than a second ago.
    pub(super) fn appended(&mut self, first: u64) {
        if self.last.is_some_and(|last| last.elapsed() < EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut entry = [0; ENTRY];
        entry[..8].copy_from_slice(&first.to_le_bytes());
        entry[8..].copy_from_slice(&unix_millis().to_le_bytes());
        if let Err(error) = file.write_all(&entry) {
            tracing::warn!(path = %self.path.display(), %error, "cannot keep the records' times; they are not kept from now on");
            self.file = None;
        }
    }

    /// Drops the entries no kept record needs: all before the last one at or below
    /// `first` (the oldest record the log keeps).
    pub(super) fn trim(&mut self, first: u64) {
        let entries = read_entries(&self.path);
        let keep_from = entries.partition_point(|(offset, _)| *offset <= first);
        if keep_from <= 1 {
            return;
        }
        let mut bytes = Vec::with_capacity((entries.len() - keep_from + 1) * ENTRY);
        for (offset, millis) in &entries[keep_from - 1..] {
            bytes.extend_from_slice(&offset.to_le_bytes());
            bytes.extend_from_slice(&millis.to_le_bytes());
        }
        let temporary = self.path.with_extension("tmp");
        let replaced = std::fs::write(&temporary, bytes)
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(error) = replaced {
            tracing::debug!(path = %self.path.display(), %error, "cannot trim the records' times");
        }
        self.file = open_appending(&self.path);
    }
}

fn open_appending(path: &Path) -> Option<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .inspect_err(|error| {
            tracing::warn!(path = %path.display(), %error, "cannot keep the records' times");
        })
        .ok()
}

/// Milliseconds since the Unix epoch.
fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The entries of a times file, in order of offset, as the log now stands (see the
/// module's note on cut logs).
fn read_entries(path: &Path) -> Vec<(u64, u64)> {
    let bytes = std::fs::read(path).unwrap_or_default();
    parse(&bytes)
}

/// Entries from a times file's bytes (a torn last entry is left out).
fn parse(bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut entries: Vec<(u64, u64)> = Vec::with_capacity(bytes.len() / ENTRY);
    for entry in bytes.chunks_exact(ENTRY) {
        let offset = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
        let millis = u64::from_le_bytes(entry[8..].try_into().expect("8 bytes"));
        while entries.last().is_some_and(|(last, _)| *last >= offset) {
            entries.pop();
        }
        entries.push((offset, millis));
    }
    entries
}

/// When each record of a log was taken, as far as its times file says.
#[derive(Clone, Debug, Default)]
pub struct Times(Vec<(u64, u64)>);

impl Times {
    /// The times of the log in `dir`.
    pub fn load(dir: &Path) -> Times {
        Times(read_entries(&dir.join(FILE_NAME)))
    }

    /// When record `offset` was taken (Unix ms), if the file says.
    pub fn of(&self, offset: u64) -> Option<u64> {
        let at = self.0.partition_point(|(first, _)| *first <= offset);
        at.checked_sub(1).map(|index| self.0[index].1)
    }
}

/// A Unix time in ms as UTC, to the second: "2026-12-08T01:20:31Z".
pub fn utc(millis: u64) -> String {
    let seconds = millis / 1000;
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(entries: &[(u64, u64)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|(offset, millis)| {
                offset.to_le_bytes().into_iter().chain(millis.to_le_bytes())
            })
            .collect()
    }

    #[test]
    fn a_record_takes_the_time_of_the_latest_entry_at_or_before_it() {
        let times = Times(parse(&bytes(&[(0, 1000), (10, 2000), (25, 3000)])));
        assert_eq!(times.of(0), Some(1000));
        assert_eq!(times.of(9), Some(1000));
        assert_eq!(times.of(10), Some(2000));
        assert_eq!(times.of(1_000), Some(3000));
        assert_eq!(Times(parse(&bytes(&[(5, 1)]))).of(4), None);
    }

    #[test]
    fn a_cut_log_s_later_entries_replace_the_cut_ones_and_a_torn_entry_is_left_out() {
        // Cut back to 12 after 25 was stamped: 10's entry stays, 25's goes.
        let mut raw = bytes(&[(0, 1000), (10, 2000), (25, 3000), (12, 4000)]);
        raw.extend_from_slice(&[7, 7, 7]);
        let times = Times(parse(&raw));
        assert_eq!(times.of(11), Some(2000));
        assert_eq!(times.of(30), Some(4000));
    }

    #[test]
    fn utc_is_the_civil_date() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_692_831_999), "2026-12-08T01:20:31Z");
    }

    #[test]
    fn trimming_keeps_what_the_kept_records_need() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, bytes(&[(0, 1), (10, 2), (20, 3), (30, 4)])).unwrap();
        let mut stamper = Stamper::open(dir.path());
        stamper.trim(25);
        assert_eq!(read_entries(&path), [(20, 3), (30, 4)]);
        stamper.appended(40);
        assert_eq!(read_entries(&path).len(), 3);
    }
}
