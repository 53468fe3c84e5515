//! Repairs verify makes through the volume: records that bring copies into line, and, for
//! a primary file that rotted, the good bytes written back into the origin. They are made
//! while every change through the mount waits, so no record of theirs can overtake or be
//! overtaken by an application's change to the same file.

use std::time::SystemTime;

use crate::log::{LogPath, Op};
use crate::origin::{Origin, TimeSet, TimesUpdate};
use crate::tree::open_regular;
use crate::types::Change;
use crate::types::FileId;

use super::change::Naming;
use super::{Result, VfsError, Volume};

/// Repairs in progress: the mount's changes wait until [`Repairing::finish`].
pub struct Repairing<'a> {
    volume: &'a Volume,
    _moving: Naming<'a>,
}

impl Volume {
    /// Holds every change through the mount and brings the origin up to date with the
    /// log, so repairs read and write what the volume holds.
    pub fn repairing(&self) -> Result<Repairing<'_>> {
        let moving = self.moving()?;
        self.journal().flush_all()?;
        Ok(Repairing {
            volume: self,
            _moving: moving,
        })
    }
}

impl Repairing<'_> {
    /// The origin, as it is while the repairs are made.
    pub fn origin(&self) -> &Origin {
        &self.volume.origin
    }

    /// Appends a record for the copies; the origin already has its effect.
    pub fn record(&self, op: Op) -> Result<()> {
        self.volume.record(op)
    }

    /// Writes `data` at `offset` of the origin file at `path`, which must still be the file
    /// `key`, keeping its modification time `mtime`; and records both for the copies.
    pub fn write(
        &self,
        path: &LogPath,
        key: FileId,
        offset: u64,
        data: &[u8],
        mtime: SystemTime,
    ) -> Result<()> {
        let origin = &self.volume.origin;
        let file = open_regular(origin, path, libc::O_WRONLY)?;
        let stat = file.stat()?;
        if stat.id() != key {
            return Err(VfsError::Replaced(path.clone()));
        }
        let range = offset..offset + data.len() as u64;
        {
            let log = self.volume.journal().log();
            let _hashing = self.volume.hashes.as_ref().map(|hashes| {
                hashes.changing(key, Some(path), &Change::Written(range.clone()), || {
                    log.next_offset()
                })
            });
            file.write_at(data, offset)?;
            file.set_times(TimesUpdate {
                atime: None,
                mtime: Some(TimeSet::At(mtime)),
            })?;
            file.sync(true)?;
            self.record(Op::Write {
                path: path.clone(),
                offset,
                data: data.to_vec(),
            })?;
            self.record(Op::SetAttr {
                path: path.clone(),
                mode: None,
                uid: None,
                gid: None,
                atime: None,
                mtime: Some(mtime.into()),
            })?;
        }
        if let Some(cache) = &self.volume.cache {
            cache.changed(key, Change::Written(range));
        }
        Ok(())
    }

    /// Ends the repairs: with write-behind, the origin is marked as holding their records,
    /// so crash recovery never replays them onto it.
    pub fn finish(self) -> Result<()> {
        self.volume.journal().barrier()?;
        Ok(())
    }
}
