//! Extended attributes: get, set, list, remove.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::log::Op;
use crate::types::Change;
use crate::types::InodeId;

use super::change::{Wait, set_mode};
use super::{Result, Target, Volume, Writer};

/// The extended attribute that holds a file's access ACL.
const ACCESS_ACL: &[u8] = b"system.posix_acl_access";

impl Volume {
    /// The value of extended attribute `key` of `id`.
    pub fn getxattr(&self, id: InodeId, key: &OsStr) -> Result<Vec<u8>> {
        Ok(match self.target(id, None)? {
            Target::Place(located, _) => self.origin.get_xattr(located.at(), key)?,
            Target::Open(open) => open.file.get_xattr(key)?,
        })
    }

    /// Sets extended attribute `key` of `id`; `flags` are XATTR_CREATE / XATTR_REPLACE.
    /// An access ACL also sets the mode's permission bits (the origin's filesystem derives
    /// them), and one set by a `writer` who is neither root nor in the file's group drops
    /// setgid, as the kernel's `posix_acl_update_mode` would for the writer itself; the
    /// copies are told the resulting mode.
    pub fn setxattr(
        &self,
        writer: &Writer<'_>,
        id: InodeId,
        key: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        let naming = self.naming()?;
        let path = self.inode_path(id)?;
        let change = naming.inode(id, path, Wait::Nothing, Some(Change::Attributes))?;
        let access_acl = key.as_bytes() == ACCESS_ACL;
        let mode =
            match self.target(id, None)? {
                Target::Place(located, _) => {
                    self.origin.set_xattr(located.at(), key, value, flags)?;
                    match access_acl {
                        true => Some(self.drop_setgid(
                            writer,
                            &self.origin.stat(located.at())?,
                            |mode| self.origin.chmod(located.at(), mode),
                        )?),
                        false => None,
                    }
                }
                Target::Open(open) => {
                    open.file.set_xattr(key, value, flags)?;
                    match access_acl {
                        true => Some(self.drop_setgid(writer, &open.file.stat()?, |mode| {
                            open.file.chmod(mode)
                        })?),
                        false => None,
                    }
                }
            };
        change.made(|path| {
            let mut records = vec![Op::SetXattr {
                path: path.clone(),
                name: key.as_bytes().to_vec(),
                value: value.to_vec(),
            }];
            records.extend(mode.map(|mode| set_mode(path, mode)));
            records
        })
    }

    /// The permission bits of a file whose access ACL `writer` just set (`stat` after
    /// it), with setgid dropped through `chmod` where the writer may not keep it.
    fn drop_setgid(
        &self,
        writer: &Writer<'_>,
        stat: &crate::origin::Stat,
        chmod: impl FnOnce(u32) -> std::io::Result<()>,
    ) -> Result<u32> {
        let mode = stat.mode & 0o7777;
        if mode & libc::S_ISGID == 0 || writer.in_group(stat.gid) {
            return Ok(mode);
        }
        chmod(mode & !libc::S_ISGID)?;
        Ok(mode & !libc::S_ISGID)
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
        let naming = self.naming()?;
        let path = self.inode_path(id)?;
        let change = naming.inode(id, path, Wait::Nothing, Some(Change::Attributes))?;
        match self.target(id, None)? {
            Target::Place(located, _) => self.origin.remove_xattr(located.at(), key)?,
            Target::Open(open) => open.file.remove_xattr(key)?,
        }
        change.made(|path| {
            vec![Op::RemoveXattr {
                path,
                name: key.as_bytes().to_vec(),
            }]
        })
    }
}
