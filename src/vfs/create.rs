//! Making new names: mknod, mkdir, symlink, create, link; and the ownership they get.

use crate::log::Op;
use crate::origin::{At, DirFd, OriginFile, Stat};
use crate::types::Change;
use crate::types::{FileKind, InodeId, Name};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;

use super::change::Wait;
use super::io::Opened;
use super::{Attr, Caller, Result, VfsError, Volume, name};

impl Volume {
    /// `mknod(2)`: a FIFO, socket, device node or empty regular file.
    pub fn mknod(
        &self,
        caller: Caller,
        parent: InodeId,
        entry: &OsStr,
        mode: u32,
        rdev: u64,
    ) -> Result<Attr> {
        let naming = self.naming()?;
        let entry = name(entry)?;
        let path = self.entry_path(parent, &entry)?;
        let parent_fd = self.dir_fd(parent)?;
        let mode = self.new_mode(&parent_fd, mode, caller.umask);
        self.origin
            .mknod(At::Entry(&parent_fd, &entry), mode, rdev)?;
        let (attr, _) = self.finish_new(caller, parent, &parent_fd, &entry, mode, None)?;
        let (perm, uid, gid) = (u32::from(attr.perm), attr.uid, attr.gid);
        let regular = attr.kind == FileKind::Regular;
        let made = if regular {
            Op::Create {
                path: path.clone(),
                mode: perm,
                uid,
                gid,
            }
        } else {
            Op::Mknod {
                path: path.clone(),
                mode: (mode & libc::S_IFMT) | perm,
                rdev,
                uid,
                gid,
            }
        };
        // A copy creates the object later than the origin did: it gets the origin's time.
        let records = [made, Op::set_mtime(path, attr.mtime)];
        naming.entries_changed(&[(parent, &parent_fd)], &[], records)?;
        Ok(attr)
    }

    /// `mkdir(2)`.
    pub fn mkdir(&self, caller: Caller, parent: InodeId, entry: &OsStr, mode: u32) -> Result<Attr> {
        let naming = self.naming()?;
        let entry = name(entry)?;
        let path = self.entry_path(parent, &entry)?;
        let parent_fd = self.dir_fd(parent)?;
        let mode = self.new_mode(&parent_fd, mode, caller.umask);
        self.origin
            .mkdir(At::Entry(&parent_fd, &entry), mode & 0o7777)?;
        let (attr, _) = self.finish_new(
            caller,
            parent,
            &parent_fd,
            &entry,
            libc::S_IFDIR | (mode & 0o7777),
            None,
        )?;
        let made = Op::Mkdir {
            path: path.clone(),
            mode: attr.perm.into(),
            uid: attr.uid,
            gid: attr.gid,
        };
        let records = [made, Op::set_mtime(path, attr.mtime)];
        naming.entries_changed(&[(parent, &parent_fd)], &[], records)?;
        Ok(attr)
    }

    /// `symlink(2)`: `entry` in `parent` pointing to `target`, stored verbatim.
    pub fn symlink(
        &self,
        caller: Caller,
        parent: InodeId,
        entry: &OsStr,
        target: &OsStr,
    ) -> Result<Attr> {
        let naming = self.naming()?;
        let entry = name(entry)?;
        let path = self.entry_path(parent, &entry)?;
        let parent_fd = self.dir_fd(parent)?;
        self.origin.symlink(At::Entry(&parent_fd, &entry), target)?;
        let (attr, _) = self.finish_new(caller, parent, &parent_fd, &entry, libc::S_IFLNK, None)?;
        let made = Op::Symlink {
            path: path.clone(),
            target: target.as_bytes().to_vec(),
            uid: attr.uid,
            gid: attr.gid,
        };
        // As for any new object: the copies get the origin's time.
        let records = [made, Op::set_mtime(path, attr.mtime)];
        naming.entries_changed(&[(parent, &parent_fd)], &[], records)?;
        Ok(attr)
    }

    /// `open(O_CREAT)`: creates (or, without O_EXCL, opens an existing) regular file.
    pub fn create(
        &self,
        caller: Caller,
        parent: InodeId,
        entry: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(Attr, Opened)> {
        let naming = self.naming()?;
        let entry = name(entry)?;
        let path = self.entry_path(parent, &entry)?;
        let parent_fd = self.dir_fd(parent)?;
        let mode = self.new_mode(&parent_fd, mode, caller.umask);
        let at = At::Entry(&parent_fd, &entry);
        let access = self.origin_access(flags);
        // Always O_EXCL on the origin, so a file created by someone else in the meantime is
        // never mistaken for ours and given the caller's ownership.
        let (file, attr, stat, opening, created) =
            match self.origin.create_file(at, access | libc::O_EXCL, mode) {
                Ok(file) => {
                    let (attr, stat) = self.finish_new(
                        caller,
                        parent,
                        &parent_fd,
                        &entry,
                        libc::S_IFREG | mode,
                        Some(&file),
                    )?;
                    let made = Op::Create {
                        path,
                        mode: attr.perm.into(),
                        uid: attr.uid,
                        gid: attr.gid,
                    };
                    naming.entries_changed(&[(parent, &parent_fd)], &[], [made])?;
                    let opening = self.open_mode(attr.id, access)?;
                    (file, attr, stat, opening, true)
                }
                Err(error)
                    if error.kind() == std::io::ErrorKind::AlreadyExists
                        && flags & libc::O_EXCL == 0 =>
                {
                    let file = self.origin.open_file(at, access)?;
                    let mut stat = file.stat()?;
                    let id = self.table().remember(parent, &entry, &stat);
                    // Refused before anything changes (a writer of a passed-through file).
                    let opening = self.open_mode(id, access)?;
                    let truncate = || -> Result<Stat> {
                        // As for any truncate: see `setattr`.
                        let emptied = Some(Change::Truncated(0));
                        let change = naming.inode(id, Some(path), Wait::Barrier, emptied)?;
                        file.set_len(0)?;
                        let stat = file.stat()?;
                        change.made(|path| vec![Op::Truncate { path, size: 0 }])?;
                        Ok(stat)
                    };
                    if flags & libc::O_TRUNC != 0 {
                        stat = truncate().inspect_err(|_| self.count_closed(id, &opening))?;
                    }
                    (file, self.attr(id, &stat)?, stat, opening, false)
                }
                Err(error) => return Err(error.into()),
            };
        let keep_cache = self.keep_cache(attr.id, attr.mtime, attr.size);
        let opened = super::io::opened(keep_cache, &opening);
        let opened_file = self.file_handle_for(attr.id, file, Some(&stat), opening)?;
        // Like a write, a creation gives the file an mtime that copies must get too; release
        // records it (once, with any writes' mtime).
        opened_file.wrote.store(created, Ordering::Relaxed);
        let handle = self.files.insert(opened_file);
        Ok((attr, Opened { handle, ..opened }))
    }

    /// `link(2)`: `new_entry` in `new_parent` becomes another name of `id`.
    pub fn link(&self, id: InodeId, new_parent: InodeId, new_entry: &OsStr) -> Result<Attr> {
        let naming = self.naming()?;
        let new_entry = name(new_entry)?;
        let new_path = self.entry_path(new_parent, &new_entry)?;
        let (located, _) = self.locate(id)?;
        // Located just now, so the newest hint is the name that leads to it.
        let path = self.inode_path(id)?.ok_or(VfsError::Stale(id.0))?;
        let new_parent_fd = self.dir_fd(new_parent)?;
        let to = At::Entry(&new_parent_fd, &new_entry);
        self.origin.link(located.at(), to)?;
        let stat = self.origin.stat(to)?;
        let linked = self.table().remember(new_parent, &new_entry, &stat);
        naming.entries_changed(
            &[(new_parent, &new_parent_fd)],
            &[(linked, Change::Attributes)],
            [Op::Link { path, new_path }],
        )?;
        self.attr(linked, &stat)
    }

    /// Gives a just-created object its owner, records it, and returns its attributes.
    /// If the owner cannot be set, the object is removed again: a create either fully
    /// happens or leaves nothing behind.
    fn finish_new(
        &self,
        caller: Caller,
        parent: InodeId,
        parent_fd: &DirFd,
        entry: &Name,
        mode: u32,
        file: Option<&OriginFile>,
    ) -> Result<(Attr, Stat)> {
        let at = At::Entry(parent_fd, entry);
        let stat = match file {
            Some(file) => file.stat()?,
            None => self.origin.stat(at)?,
        };
        let stat = match self.settle_owner(caller, parent_fd, at, &stat, mode, file) {
            Ok(settled) => settled,
            Err(error) => {
                let cleanup = if stat.kind() == Some(FileKind::Directory) {
                    self.origin.rmdir(at)
                } else {
                    self.origin.unlink(at)
                };
                if let Err(cleanup) = cleanup {
                    tracing::warn!(?entry, %cleanup, "could not remove a half-created entry");
                }
                return Err(error);
            }
        };
        let id = self.table().remember(parent, entry, &stat);
        Ok((self.attr(id, &stat)?, stat))
    }

    /// The mode to make a new object with in the directory `parent_fd`: as asked, less the
    /// caller's `umask` unless the directory has a default ACL, which then decides (the
    /// origin's filesystem applies it; the daemon's own umask is 0). As ext4 does.
    fn new_mode(&self, parent_fd: &DirFd, mode: u32, umask: u32) -> u32 {
        if umask == 0 {
            return mode;
        }
        let default_acl = OsStr::new("system.posix_acl_default");
        match self.origin.get_xattr(At::Dir(parent_fd), default_acl) {
            Ok(_) => mode,
            Err(_) => mode & !(umask & 0o777),
        }
    }

    /// Changes the owner of a new object from the daemon's to the caller's, as a local
    /// filesystem would have made it: the caller's uid, and the caller's gid unless the
    /// parent directory is setgid (then the origin already gave it the parent's gid).
    fn settle_owner(
        &self,
        caller: Caller,
        parent_fd: &DirFd,
        at: At<'_>,
        created: &Stat,
        mode: u32,
        file: Option<&OriginFile>,
    ) -> Result<Stat> {
        // Only root may give files away; a daemon run by a user owns what it creates.
        if self.daemon.uid != 0 {
            return Ok(*created);
        }
        let uid = (caller.uid != created.uid).then_some(caller.uid);
        let inherited_gid = created.gid != self.daemon.gid;
        let keep_gid = inherited_gid
            || caller.gid == created.gid
            || self.origin.stat_dir(parent_fd)?.mode & libc::S_ISGID != 0;
        let gid = (!keep_gid).then_some(caller.gid);
        if uid.is_none() && gid.is_none() {
            return Ok(*created);
        }
        match file {
            Some(file) => file.chown(uid, gid)?,
            None => self.origin.chown(at, uid, gid)?,
        }
        // chown clears setuid/setgid on non-directories; the caller asked for them. The
        // mode is the one the origin made (with a default ACL, not the one asked for).
        let kind = FileKind::from_mode(mode);
        let special_bits = created.mode & (libc::S_ISUID | libc::S_ISGID);
        if special_bits != 0 && !matches!(kind, Some(FileKind::Directory | FileKind::Symlink)) {
            match file {
                Some(file) => file.chmod(created.mode & 0o7777)?,
                None => self.origin.chmod(at, created.mode & 0o7777)?,
            }
        }
        let settled = match file {
            Some(file) => file.stat()?,
            None => self.origin.stat(at)?,
        };
        if settled.id() != created.id() {
            return Err(VfsError::Stale(settled.ino));
        }
        Ok(settled)
    }
}
