//! The inode table: which kernel node ids are alive, how to reach each on the origin, and
//! how many lookups the kernel holds on it.
//!
//! A node id is the origin's own inode number wherever that is unambiguous, so `st_ino`
//! stays the same across the kernel forgetting and re-learning a file for as long as the
//! origin keeps it. An inode stores no file descriptor, only *link hints*: (parent, name)
//! pairs by which it was last seen. Hints are verified against the origin's (dev, ino) on
//! every use and dropped when stale. A reverse index from (parent, name) to the inode
//! holding that hint keeps one name on one inode only: unlinking or reusing a name takes
//! it off the inode it led to at once, so the newest hint is the path the log records.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use crate::log::{LogPath, PathError};
use crate::origin::Stat;
use crate::types::{FileId, FileKind, InodeId, Name};

/// At most this many names are remembered per hard-linked inode (newest first).
const LINK_HINTS_MAX: usize = 8;

/// Deeper paths than this are not followed up to the root (PATH_MAX allows at most 2048
/// components; a longer chain of hints can only be a cycle).
const DEPTH_MAX: usize = 2048;

/// Node ids at or above this are allocated here, never taken from the origin.
const SYNTHETIC_BASE: u64 = 1 << 63;

/// Tables at least this large give memory back once mostly empty.
const SHRINK_FROM: usize = 4096;

/// Gives back most of `map`'s memory once it holds under a quarter of what it has room
/// for: the kernel may let go of a million inodes at once (memory pressure, drop_caches),
/// and a hash map never shrinks by itself. Halving at a quarter keeps the rehashing
/// amortized constant per entry.
fn shrink<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() >= SHRINK_FROM && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// One (parent, name) by which an inode can be reached on the origin.
pub(crate) type LinkHint = (InodeId, Name);

/// The (mtime, size) an inode had when the kernel was last allowed to cache its pages.
pub(crate) type ContentVersion = (std::time::SystemTime, u64);

/// One live inode.
#[derive(Debug)]
pub(crate) struct Inode {
    /// What the origin object is.
    pub(crate) kind: FileKind,
    /// The origin object's identity, to check hints against.
    pub(crate) key: FileId,
    /// Names it was reached by, newest first; possibly stale.
    pub(crate) links: Vec<LinkHint>,
    /// Lookups the kernel holds (each reply with an entry is one; FORGET returns them).
    lookups: u64,
    /// The content version the kernel's page cache holds, if it may keep it.
    pub(crate) cached_version: Option<ContentVersion>,
}

/// All live inodes of a volume. Guarded by one lock in `Volume`; never does I/O.
#[derive(Debug)]
pub(crate) struct InodeTable {
    inodes: HashMap<InodeId, Inode>,
    /// Which inode each hint belongs to.
    names: HashMap<LinkHint, InodeId>,
    synthetic: HashMap<FileId, InodeId>,
    synthetic_next: u64,
    root_key: FileId,
}

impl InodeTable {
    /// A table holding only the root, whose origin identity is `root`.
    pub(crate) fn new(root: &Stat) -> InodeTable {
        let root_key = root.id();
        let mut inodes = HashMap::new();
        inodes.insert(
            InodeId::ROOT,
            Inode {
                kind: FileKind::Directory,
                key: root_key,
                links: Vec::new(),
                // The kernel holds the root without ever looking it up or forgetting it.
                lookups: 1,
                cached_version: None,
            },
        );
        InodeTable {
            inodes,
            names: HashMap::new(),
            synthetic: HashMap::new(),
            synthetic_next: SYNTHETIC_BASE,
            root_key,
        }
    }

    /// The node id the kernel sees for an origin object, if one can be given without
    /// allocating: the origin inode number itself on the origin's device.
    pub(crate) fn plain_id(&self, key: FileId) -> Option<InodeId> {
        if key == self.root_key {
            return Some(InodeId::ROOT);
        }
        let FileId { dev, ino } = key;
        let reserved = ino == InodeId::ROOT.0 || ino >= SYNTHETIC_BASE || ino == 0;
        (dev == self.root_key.dev && !reserved).then_some(InodeId(ino))
    }

    /// The node id for an origin object; objects on other devices (submounts) or whose
    /// number collides with a reserved id get an id allocated here.
    pub(crate) fn id_for(&mut self, key: FileId) -> InodeId {
        if let Some(id) = self.plain_id(key) {
            return id;
        }
        if let Some(&id) = self.synthetic.get(&key) {
            return id;
        }
        let id = InodeId(self.synthetic_next);
        self.synthetic_next += 1;
        self.synthetic.insert(key, id);
        id
    }

    /// The node id an origin object has or would have, without allocating one.
    pub(crate) fn id_of(&self, key: FileId) -> Option<InodeId> {
        self.plain_id(key)
            .or_else(|| self.synthetic.get(&key).copied())
    }

    /// Every live inode.
    pub(crate) fn all(&self) -> impl Iterator<Item = (InodeId, &Inode)> {
        self.inodes.iter().map(|(id, inode)| (*id, inode))
    }

    /// The number an entry is listed with in a plain readdir (informational only).
    pub(crate) fn listing_ino(&self, dev_ino: FileId) -> u64 {
        self.plain_id(dev_ino)
            .or_else(|| self.synthetic.get(&dev_ino).copied())
            .map_or(dev_ino.ino, |id| id.0)
    }

    /// Records that the kernel learned `stat`'s object under (parent, name) and now holds
    /// one more lookup on it. Returns its node id.
    pub(crate) fn remember(&mut self, parent: InodeId, name: &Name, stat: &Stat) -> InodeId {
        let id = self.register(stat);
        self.inodes
            .get_mut(&id)
            .expect("register inserts the inode")
            .lookups += 1;
        self.add_hint(id, parent, name);
        id
    }

    /// Makes sure `stat`'s object has an entry (without counting a lookup) and returns its id.
    /// An entry whose id now belongs to a different object (the origin reused the inode
    /// number, or the type changed) starts afresh.
    pub(crate) fn register(&mut self, stat: &Stat) -> InodeId {
        let key = stat.id();
        let id = self.id_for(key);
        let kind = stat.kind().unwrap_or(FileKind::Regular);
        match self.inodes.entry(id) {
            Entry::Occupied(mut occupied) => {
                let inode = occupied.get_mut();
                if inode.kind != kind || inode.key != key {
                    inode.kind = kind;
                    inode.key = key;
                    inode.cached_version = None;
                    let stale = std::mem::take(&mut inode.links);
                    self.unindex(id, stale);
                }
            }
            Entry::Vacant(vacant) => {
                vacant.insert(Inode {
                    kind,
                    key,
                    links: Vec::new(),
                    lookups: 0,
                    cached_version: None,
                });
            }
        }
        id
    }

    /// Returns `count` lookups; the inode is dropped when none remain. Returns the kind of
    /// a dropped inode (`None` if it stays).
    pub(crate) fn forget(&mut self, id: InodeId, count: u64) -> Option<FileKind> {
        if id == InodeId::ROOT {
            return None;
        }
        let inode = self.inodes.get_mut(&id)?;
        inode.lookups = inode.lookups.saturating_sub(count);
        if inode.lookups > 0 {
            return None;
        }
        let (key, kind) = (inode.key, inode.kind);
        if let Some(gone) = self.inodes.remove(&id) {
            self.unindex(id, gone.links);
        }
        if self.synthetic.get(&key) == Some(&id) {
            self.synthetic.remove(&key);
        }
        shrink(&mut self.inodes);
        shrink(&mut self.names);
        Some(kind)
    }

    /// The inode `id`, if the kernel holds it.
    pub(crate) fn get(&self, id: InodeId) -> Option<&Inode> {
        self.inodes.get(&id)
    }

    /// The inode `id`, mutably.
    pub(crate) fn get_mut(&mut self, id: InodeId) -> Option<&mut Inode> {
        self.inodes.get_mut(&id)
    }

    /// Drops the hint (parent, name) of `id`: it no longer leads there.
    pub(crate) fn drop_hint(&mut self, id: InodeId, parent: InodeId, name: &Name) {
        if let Some(inode) = self.inodes.get_mut(&id) {
            inode.links.retain(|(p, n)| !(*p == parent && n == name));
        }
        let hint = (parent, name.clone());
        if self.names.get(&hint) == Some(&id) {
            self.names.remove(&hint);
        }
    }

    /// Drops the hint (parent, name) from whichever inode holds it (the name was removed)
    /// and returns that inode.
    pub(crate) fn drop_name(&mut self, parent: InodeId, name: &Name) -> Option<InodeId> {
        let id = self.names.remove(&(parent, name.clone()))?;
        if let Some(inode) = self.inodes.get_mut(&id) {
            inode.links.retain(|(p, n)| !(*p == parent && n == name));
        }
        Some(id)
    }

    /// Adds the hint (parent, name) to `id`, newest first, taking it from any other inode.
    pub(crate) fn add_hint(&mut self, id: InodeId, parent: InodeId, name: &Name) {
        let Some(inode) = self.inodes.get_mut(&id) else {
            return;
        };
        if let Some(position) = inode
            .links
            .iter()
            .position(|(p, n)| *p == parent && n == name)
        {
            inode.links.remove(position);
        }
        inode.links.insert(0, (parent, name.clone()));
        let dropped = inode.links.split_off(inode.links.len().min(LINK_HINTS_MAX));
        self.unindex(id, dropped);
        if let Some(previous) = self.names.insert((parent, name.clone()), id)
            && previous != id
            && let Some(other) = self.inodes.get_mut(&previous)
        {
            other.links.retain(|(p, n)| !(*p == parent && n == name));
        }
    }

    /// Removes `id`'s `hints` from the reverse index.
    fn unindex(&mut self, id: InodeId, hints: Vec<LinkHint>) {
        for hint in hints {
            if self.names.get(&hint) == Some(&id) {
                self.names.remove(&hint);
            }
        }
    }

    /// The volume-relative path of `id` by its newest hints, or `None` when some inode on
    /// the way up has no name known (unlinked, or only reachable by an older name).
    pub(crate) fn path_of(&self, id: InodeId) -> Option<Result<LogPath, PathError>> {
        let mut parts: Vec<&Name> = Vec::new();
        let mut at = id;
        while at != InodeId::ROOT {
            if parts.len() >= DEPTH_MAX {
                return None;
            }
            let (parent, name) = self.inodes.get(&at)?.links.first()?;
            parts.push(name);
            at = *parent;
        }
        let mut bytes = Vec::with_capacity(parts.iter().map(|n| n.as_bytes().len() + 1).sum());
        for part in parts.iter().rev() {
            if !bytes.is_empty() {
                bytes.push(b'/');
            }
            bytes.extend_from_slice(part.as_bytes());
        }
        Some(LogPath::try_from(bytes))
    }

    /// How many inodes are live (the root included).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(dev: u64, ino: u64) -> FileId {
        FileId { dev, ino }
    }
    use std::ffi::OsStr;
    use std::time::UNIX_EPOCH;

    fn stat(dev: u64, ino: u64, mode: u32) -> Stat {
        Stat {
            dev,
            ino,
            mode,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            blocks: 0,
            blksize: 4096,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
        }
    }

    fn name(text: &str) -> Name {
        Name::new(OsStr::new(text)).unwrap()
    }

    const DIR: u32 = libc::S_IFDIR | 0o755;
    const FILE: u32 = libc::S_IFREG | 0o644;

    #[test]
    fn origin_inode_numbers_are_node_ids_and_root_is_one() {
        let mut table = InodeTable::new(&stat(7, 2, DIR));
        assert_eq!(table.id_for(id(7, 2)), InodeId::ROOT);
        assert_eq!(
            table.remember(InodeId::ROOT, &name("a"), &stat(7, 12, FILE)),
            InodeId(12)
        );
    }

    #[test]
    fn reserved_numbers_and_other_devices_get_distinct_synthetic_ids() {
        let mut table = InodeTable::new(&stat(7, 2, DIR));
        let one = table.id_for(id(7, 1));
        let foreign = table.id_for(id(8, 12));
        assert!(one.0 >= SYNTHETIC_BASE && foreign.0 >= SYNTHETIC_BASE);
        assert_ne!(one, foreign);
        assert_eq!(table.id_for(id(8, 12)), foreign, "stable while remembered");
    }

    #[test]
    fn forget_drops_only_after_every_lookup_is_returned() {
        let mut table = InodeTable::new(&stat(7, 2, DIR));
        let id = table.remember(InodeId::ROOT, &name("a"), &stat(7, 12, FILE));
        table.remember(InodeId::ROOT, &name("b"), &stat(7, 12, FILE));
        assert_eq!(table.forget(id, 1), None);
        assert!(table.get(id).is_some());
        assert_eq!(table.forget(id, 1), Some(FileKind::Regular));
        assert!(table.get(id).is_none());
        assert_eq!(
            table.forget(InodeId::ROOT, 1),
            None,
            "the root is never dropped"
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_table_the_kernel_let_go_of_gives_its_memory_back() {
        let mut table = InodeTable::new(&stat(7, 2, DIR));
        let ids: Vec<InodeId> = (0..50_000)
            .map(|n| {
                table.remember(
                    InodeId::ROOT,
                    &name(&format!("f{n}")),
                    &stat(7, 10 + n, FILE),
                )
            })
            .collect();
        let full = (table.inodes.capacity(), table.names.capacity());
        for id in &ids[..49_000] {
            assert_eq!(table.forget(*id, 1), Some(FileKind::Regular));
        }
        assert_eq!(table.len(), 1_001);
        assert!(table.inodes.capacity() * 8 < full.0, "{full:?}");
        assert!(table.names.capacity() * 8 < full.1, "{full:?}");
        // What is left is still found by number and by name.
        assert!(table.get(ids[49_999]).is_some());
        assert_eq!(table.names[&(InodeId::ROOT, name("f49999"))], ids[49_999]);
    }

    #[test]
    fn hard_links_keep_newest_hint_first_and_a_reused_number_starts_afresh() {
        let mut table = InodeTable::new(&stat(7, 2, DIR));
        let id = table.remember(InodeId::ROOT, &name("a"), &stat(7, 12, FILE));
        table.remember(InodeId::ROOT, &name("b"), &stat(7, 12, FILE));
        let links: Vec<_> = table
            .get(id)
            .unwrap()
            .links
            .iter()
            .map(|l| l.1.clone())
            .collect();
        assert_eq!(links, vec![name("b"), name("a")]);
        table.drop_hint(id, InodeId::ROOT, &name("b"));
        assert_eq!(table.get(id).unwrap().links.len(), 1);
        // The number is reused for a directory: the old hints must not survive.
        table.remember(InodeId::ROOT, &name("d"), &stat(7, 12, DIR));
        let inode = table.get(id).unwrap();
        assert_eq!(inode.kind, FileKind::Directory);
        assert_eq!(inode.links, vec![(InodeId::ROOT, name("d"))]);
    }
}
