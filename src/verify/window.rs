//! What changed while a check ran: the paths the log's records name between the earliest
//! and the latest offset either copy was seen at. A difference on such a path may be a
//! change still travelling, not a finding; it is looked at again.

use std::collections::HashSet;

use crate::log::{Log, LogPath, Op};

/// The paths records of one window of the log name.
#[derive(Debug, Default)]
pub struct Touched {
    paths: HashSet<Vec<u8>>,
    /// The log no longer holds all of the window: anything may have changed.
    unknown: bool,
}

impl Touched {
    /// The paths the records `from..to` of `log` name.
    pub fn read(log: &Log, from: u64, to: u64) -> Touched {
        let mut touched = Touched::default();
        if from >= to {
            return touched;
        }
        let records = match log.view().records(from) {
            Ok(records) => records,
            Err(_) => {
                touched.unknown = true;
                return touched;
            }
        };
        for record in records {
            match record {
                Ok(record) if record.offset < to => touched.add(&record.op),
                Ok(_) => break,
                Err(_) => {
                    touched.unknown = true;
                    break;
                }
            }
        }
        touched
    }

    /// Adds what `op` names.
    pub fn add(&mut self, op: &Op) {
        self.paths.insert(op.path().as_bytes().to_vec());
        if let Some(other) = op.new_path() {
            self.paths.insert(other.as_bytes().to_vec());
        }
    }

    /// Whether a record may have changed `path`: it names the path or a directory above
    /// it (a rename or removal of a directory moves everything in it).
    pub fn touches(&self, path: &LogPath) -> bool {
        if self.unknown {
            return true;
        }
        if self.paths.is_empty() {
            return false;
        }
        let bytes = path.as_bytes();
        if self.paths.contains(bytes) {
            return true;
        }
        bytes
            .iter()
            .enumerate()
            .filter(|(_, byte)| **byte == b'/')
            .any(|(at, _)| self.paths.contains(&bytes[..at]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> LogPath {
        LogPath::try_from(text.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn a_path_is_touched_by_itself_and_by_what_moves_its_directories() {
        let mut touched = Touched::default();
        assert!(!touched.touches(&path("a/b")));
        touched.add(&Op::Rename {
            from: path("d"),
            to: path("e/f"),
            flags: 0,
        });
        touched.add(&Op::Unlink { path: path("x") });
        assert!(touched.touches(&path("d")));
        assert!(touched.touches(&path("d/g/h")));
        assert!(touched.touches(&path("e/f/g")));
        assert!(touched.touches(&path("x")));
        assert!(!touched.touches(&path("e")));
        assert!(!touched.touches(&path("dd")));
        assert!(!touched.touches(&path("x2")));
        let unknown = Touched {
            unknown: true,
            ..Touched::default()
        };
        assert!(unknown.touches(&path("anything")));
    }
}
