//! Reading /proc/self/mountinfo: which paths are mount points, and of what type.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Its type, e.g. "fuse.mirrorfs" or "ext4".
    pub fs_type: String,
    /// Its source, e.g. the origin path for mirrorfs.
    pub source: String,
}

/// All mounts visible to this process, in mount order.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    Ok(parse(&text))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    // id parent major:minor root mount_point options [optional...] - type source super_options
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let separator = fields.iter().position(|field| *field == b"-")?;
    let mount_point = fields.get(4)?;
    let fs_type = fields.get(separator + 1)?;
    let source = fields.get(separator + 2)?;
    Some(MountEntry {
        mount_point: PathBuf::from(OsString::from_vec(unescape(mount_point))),
        fs_type: String::from_utf8_lossy(&unescape(fs_type)).into_owned(),
        source: String::from_utf8_lossy(&unescape(source)).into_owned(),
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, and so on).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut index = 0;
    while index < field.len() {
        let octal = field.get(index + 1..index + 4).filter(|digits| {
            field[index] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        });
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                index += 4;
            }
            None => {
                out.push(field[index]);
                index += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_escapes() {
        let text =
            b"36 35 98:0 / /mnt/my\\040data rw,relatime shared:1 - fuse.mirrorfs /srv/a\\040b rw\n\
                     20 1 0:5 / /proc rw - proc proc rw\n";
        let mounts = parse(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].mount_point, PathBuf::from("/mnt/my data"));
        assert_eq!(mounts[0].fs_type, "fuse.mirrorfs");
        assert_eq!(mounts[0].source, "/srv/a b");
        assert_eq!(mounts[1].fs_type, "proc");
    }

    #[test]
    fn skips_malformed_lines() {
        assert!(parse(b"garbage\n1 2 3\n").is_empty());
    }
}
