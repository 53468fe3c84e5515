//! Extended attributes: get, set, list, remove.

use std::ffi::OsStr;

use crate::types::InodeId;

use super::{Result, Volume};

impl Volume {
    /// The value of extended attribute `key` of `id`.
    pub fn getxattr(&self, id: InodeId, key: &OsStr) -> Result<Vec<u8>> {
        let (located, _) = self.locate(id)?;
        Ok(self.origin.get_xattr(located.at(), key)?)
    }

    /// Sets extended attribute `key` of `id`; `flags` are XATTR_CREATE / XATTR_REPLACE.
    pub fn setxattr(&self, id: InodeId, key: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let (located, _) = self.locate(id)?;
        Ok(self.origin.set_xattr(located.at(), key, value, flags)?)
    }

    /// The NUL-separated names of the extended attributes of `id`.
    pub fn listxattr(&self, id: InodeId) -> Result<Vec<u8>> {
        let (located, _) = self.locate(id)?;
        Ok(self.origin.list_xattr(located.at())?)
    }

    /// Removes extended attribute `key` of `id`.
    pub fn removexattr(&self, id: InodeId, key: &OsStr) -> Result<()> {
        let (located, _) = self.locate(id)?;
        Ok(self.origin.remove_xattr(located.at(), key)?)
    }
}
