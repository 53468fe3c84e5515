//! The quick check's comparison: two copies' entry lists (each in [`path_order`]) merged in
//! one pass into the differences between them. Pure logic.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::log::LogPath;

use super::tree::{Entry, Kind, path_order};

/// What differs about one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aspect {
    /// The primary has it, the other copy does not.
    Missing,
    /// The other copy has it, the primary does not.
    Extra,
    /// A different type of object.
    Kind,
    /// A regular file's size.
    Size,
    /// Permission bits.
    Mode,
    /// Owner or group.
    Owner,
    /// Modification time.
    Mtime,
    /// A symlink's target.
    Target,
    /// A device node's number.
    Device,
    /// Extended attributes.
    Xattrs,
    /// Which names are hard links of one file.
    Links,
    /// The stored root hashes of the content differ.
    Content,
}

impl Aspect {
    /// The aspect's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Aspect::Missing => "missing",
            Aspect::Extra => "extra",
            Aspect::Kind => "type",
            Aspect::Size => "size",
            Aspect::Mode => "mode",
            Aspect::Owner => "owner",
            Aspect::Mtime => "mtime",
            Aspect::Target => "symlink target",
            Aspect::Device => "device number",
            Aspect::Xattrs => "xattrs",
            Aspect::Links => "hard links",
            Aspect::Content => "content",
        }
    }
}

/// One difference between the primary's entry for a path and another copy's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// The path.
    pub path: LogPath,
    /// What differs.
    pub aspect: Aspect,
    /// The primary's value, as a report shows it.
    pub primary: String,
    /// The other copy's value.
    pub copy: String,
}

/// What to leave out of the comparison.
#[derive(Clone, Copy, Debug, Default)]
pub struct Compare {
    /// Owners are not compared (the other copy cannot set them: its node is not root).
    pub skip_owner: bool,
}

impl Compare {
    /// The differences between `primary` and `copy`, in path order. A missing or extra
    /// directory is one difference: what it holds is not listed again.
    pub fn entries(&self, primary: &[Entry], copy: &[Entry]) -> Vec<Difference> {
        let mut found = Vec::new();
        let (mut p, mut c) = (0, 0);
        while p < primary.len() || c < copy.len() {
            let order = match (primary.get(p), copy.get(c)) {
                (Some(ours), Some(theirs)) => path_order(&ours.path, &theirs.path),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match order {
                Ordering::Less => {
                    let entry = &primary[p];
                    found.push(one_side(entry, Aspect::Missing));
                    p = past_subtree(primary, p);
                }
                Ordering::Greater => {
                    let entry = &copy[c];
                    found.push(one_side(entry, Aspect::Extra));
                    c = past_subtree(copy, c);
                }
                Ordering::Equal => {
                    let (ours, theirs) = (&primary[p], &copy[c]);
                    self.pair(ours, theirs, &mut found);
                    p += 1;
                    c += 1;
                    if ours.kind != theirs.kind {
                        // A directory on one side only: what it holds is missing or extra
                        // as a whole, named by the directory itself.
                        if ours.kind == Kind::Dir {
                            p = past_subtree(primary, p - 1);
                        }
                        if theirs.kind == Kind::Dir {
                            c = past_subtree(copy, c - 1);
                        }
                    }
                }
            }
        }
        found
    }

    /// The differences between two entries for one path.
    fn pair(&self, ours: &Entry, theirs: &Entry, found: &mut Vec<Difference>) {
        let mut differ = |aspect, primary: String, copy: String| {
            found.push(Difference {
                path: ours.path.clone(),
                aspect,
                primary,
                copy,
            });
        };
        if ours.kind != theirs.kind {
            differ(
                Aspect::Kind,
                ours.kind.name().to_string(),
                theirs.kind.name().to_string(),
            );
            return;
        }
        if ours.size != theirs.size {
            differ(Aspect::Size, ours.size.to_string(), theirs.size.to_string());
        }
        if ours.mode != theirs.mode {
            differ(
                Aspect::Mode,
                format!("{:o}", ours.mode),
                format!("{:o}", theirs.mode),
            );
        }
        if !self.skip_owner && (ours.uid, ours.gid) != (theirs.uid, theirs.gid) {
            differ(
                Aspect::Owner,
                format!("{}:{}", ours.uid, ours.gid),
                format!("{}:{}", theirs.uid, theirs.gid),
            );
        }
        // Directories too: every change of a directory's entries records its new mtime.
        if ours.mtime != theirs.mtime {
            let show =
                |time: crate::types::Timestamp| format!("{}.{:09}", time.seconds, time.nanos);
            differ(Aspect::Mtime, show(ours.mtime), show(theirs.mtime));
        }
        if ours.target != theirs.target {
            differ(
                Aspect::Target,
                ours.target.escape_ascii().to_string(),
                theirs.target.escape_ascii().to_string(),
            );
        }
        if ours.rdev != theirs.rdev {
            differ(
                Aspect::Device,
                ours.rdev.to_string(),
                theirs.rdev.to_string(),
            );
        }
        if ours.xattrs != theirs.xattrs {
            let names = |entry: &Entry| {
                entry
                    .xattrs
                    .iter()
                    .map(|xattr| {
                        let value = blake3::Hash::from_bytes(xattr.value).to_hex();
                        format!("{}={}", xattr.name.escape_ascii(), &value[..16])
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            differ(Aspect::Xattrs, names(ours), names(theirs));
        }
        if ours.link_of != theirs.link_of {
            let show = |link: &Option<LogPath>| match link {
                Some(first) => format!("a link of {first}"),
                None => "its own file".to_string(),
            };
            differ(Aspect::Links, show(&ours.link_of), show(&theirs.link_of));
        }
        // A size difference already says the content differs.
        if ours.size == theirs.size
            && let (Some(a), Some(b)) = (ours.root, theirs.root)
            && a != b
        {
            let hex = |hash: [u8; 32]| blake3::Hash::from_bytes(hash).to_hex().to_string();
            differ(Aspect::Content, hex(a), hex(b));
        }
    }
}

/// A difference for an entry only one side has.
fn one_side(entry: &Entry, aspect: Aspect) -> Difference {
    let shown = entry.kind.name().to_string();
    let (primary, copy) = match aspect {
        Aspect::Missing => (shown, "nothing".to_string()),
        _ => ("nothing".to_string(), shown),
    };
    Difference {
        path: entry.path.clone(),
        aspect,
        primary,
        copy,
    }
}

/// The index after entry `at` and everything under it.
fn past_subtree(entries: &[Entry], at: usize) -> usize {
    let top = &entries[at].path;
    let depth = top.components().count();
    let mut next = at + 1;
    while next < entries.len() && {
        let path = &entries[next].path;
        path.components().count() > depth && path.components().take(depth).eq(top.components())
    } {
        next += 1;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Xattr;
    use crate::types::Timestamp;

    fn path(text: &str) -> LogPath {
        LogPath::try_from(text.as_bytes().to_vec()).unwrap()
    }

    fn entry(at: &str, kind: Kind) -> Entry {
        Entry {
            path: path(at),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: Timestamp {
                seconds: 1,
                nanos: 0,
            },
            rdev: 0,
            target: Vec::new(),
            xattrs: Vec::new(),
            link_of: None,
            root: None,
            local: None,
        }
    }

    fn tree() -> Vec<Entry> {
        vec![
            entry("", Kind::Dir),
            entry("a", Kind::Dir),
            entry("a/x", Kind::File),
            entry("a/y", Kind::File),
            entry("b", Kind::File),
            entry("c", Kind::Symlink),
        ]
    }

    fn aspects(found: &[Difference]) -> Vec<(String, Aspect)> {
        found
            .iter()
            .map(|difference| {
                let path = String::from_utf8(difference.path.as_bytes().to_vec()).unwrap();
                (path, difference.aspect)
            })
            .collect()
    }

    #[test]
    fn equal_trees_have_no_differences() {
        assert!(Compare::default().entries(&tree(), &tree()).is_empty());
    }

    #[test]
    fn a_missing_directory_is_one_difference() {
        let mut copy = tree();
        copy.retain(|entry| !entry.path.as_bytes().starts_with(b"a"));
        let found = Compare::default().entries(&tree(), &copy);
        assert_eq!(aspects(&found), vec![("a".to_string(), Aspect::Missing)]);
        let found = Compare::default().entries(&copy, &tree());
        assert_eq!(aspects(&found), vec![("a".to_string(), Aspect::Extra)]);
    }

    #[test]
    fn path_order_is_by_component() {
        // "a/z" sorts before "a.b" although "/" is after "." bytewise.
        let primary = vec![
            entry("a", Kind::Dir),
            entry("a/z", Kind::File),
            entry("a.b", Kind::File),
        ];
        assert!(
            Compare::default()
                .entries(&primary, &primary.clone())
                .is_empty()
        );
        let copy = vec![entry("a", Kind::Dir), entry("a.b", Kind::File)];
        let found = Compare::default().entries(&primary, &copy);
        assert_eq!(aspects(&found), vec![("a/z".to_string(), Aspect::Missing)]);
    }

    #[test]
    fn each_attribute_is_named() {
        let mut copy = tree();
        copy[2].mode = 0o600;
        copy[2].uid = 7;
        copy[3].size = 5;
        copy[3].mtime.nanos = 9;
        copy[3].xattrs.push(Xattr {
            name: b"user.k".to_vec(),
            value: [1; 32],
        });
        copy[4].link_of = Some(path("a/x"));
        copy[5].target = b"elsewhere".to_vec();
        let found = Compare::default().entries(&tree(), &copy);
        assert_eq!(
            aspects(&found),
            vec![
                ("a/x".to_string(), Aspect::Mode),
                ("a/x".to_string(), Aspect::Owner),
                ("a/y".to_string(), Aspect::Size),
                ("a/y".to_string(), Aspect::Mtime),
                ("a/y".to_string(), Aspect::Xattrs),
                ("b".to_string(), Aspect::Links),
                ("c".to_string(), Aspect::Target),
            ]
        );
        let skipping = Compare { skip_owner: true };
        assert_eq!(skipping.entries(&tree(), &copy).len(), found.len() - 1);
    }

    #[test]
    fn directory_times_and_roots_are_compared() {
        let mut copy = tree();
        copy[1].mtime.seconds = 99;
        let found = Compare::default().entries(&tree(), &copy);
        assert_eq!(aspects(&found), vec![("a".to_string(), Aspect::Mtime)]);
        copy[1].mtime = tree()[1].mtime;
        let mut primary = tree();
        primary[4].root = Some([1; 32]);
        copy[4].root = Some([2; 32]);
        let found = Compare::default().entries(&primary, &copy);
        assert_eq!(aspects(&found), vec![("b".to_string(), Aspect::Content)]);
        // Unknown on one side: nothing to compare (the content check reads it).
        copy[4].root = None;
        assert!(Compare::default().entries(&primary, &copy).is_empty());
    }

    #[test]
    fn a_type_change_hides_the_subtree_under_it() {
        let mut copy = tree();
        copy.retain(|entry| !entry.path.as_bytes().starts_with(b"a/"));
        copy[1].kind = Kind::File;
        let found = Compare::default().entries(&tree(), &copy);
        assert_eq!(aspects(&found), vec![("a".to_string(), Aspect::Kind)]);
    }
}
