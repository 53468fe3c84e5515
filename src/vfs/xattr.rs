//! Extended attributes: get, set, list, remove.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::log::Op;
use crate::types::Change;
use crate::types::InodeId;

use super::{Result, Target, Volume};

impl Volume {
    /// The value of extended attribute `key` of `id`.
    pub fn getxattr(&self, id: InodeId, key: &OsStr) -> Result<Vec<u8>> {
        Ok(match self.target(id, None)? {
            Target::Place(located, _) => self.origin.get_xattr(located.at(), key)?,
            Target::Open(open) => open.file.get_xattr(key)?,
        })
    }

    /// Sets extended attribute `key` of `id`; `flags` are XATTR_CREATE / XATTR_REPLACE.
    pub fn setxattr(&self, id: InodeId, key: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let _naming = self.naming();
        let path = self.inode_path(id)?;
        match self.target(id, None)? {
            Target::Place(located, _) => self.origin.set_xattr(located.at(), key, value, flags)?,
            Target::Open(open) => open.file.set_xattr(key, value, flags)?,
        }
        self.cache_changed(id, Change::Attributes);
        match path {
            Some(path) => self.record(Op::SetXattr {
                path,
                name: key.as_bytes().to_vec(),
                value: value.to_vec(),
            }),
            None => Ok(()),
        }
    }

    /// The NUL-separated names of the extended attributes of `id`.
    pub fn listxattr(&self, id: InodeId) -> Result<Vec<u8>> {
        Ok(match self.target(id, None)? {
            Target::Place(located, _) => self.origin.list_xattr(located.at())?,
            Target::Open(open) => open.file.list_xattr()?,
        })
    }

    /// Removes extended attribute `key` of `id`.
    pub fn removexattr(&self, id: InodeId, key: &OsStr) -> Result<()> {
        let _naming = self.naming();
        let path = self.inode_path(id)?;
        match self.target(id, None)? {
            Target::Place(located, _) => self.origin.remove_xattr(located.at(), key)?,
            Target::Open(open) => open.file.remove_xattr(key)?,
        }
        self.cache_changed(id, Change::Attributes);
        match path {
            Some(path) => self.record(Op::RemoveXattr {
                path,
                name: key.as_bytes().to_vec(),
            }),
            None => Ok(()),
        }
    }
}
