//! mount(8)'s side of `mirrorfs mount`: `-o` option lists (as an fstab line's fourth field
//! gives them), and the calling convention mount(8) and mount.fuse3 use for a helper, so
//! that `mount -t fuse.mirrorfs SOURCE DIR -o config=FILE` and an fstab line work.
//! Pure logic.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::fuse::{Atime, MountFlags};

/// What an option list says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountOptionList {
    /// `config=FILE`.
    pub config: Option<PathBuf>,
    /// `state_dir=DIR`.
    pub state_dir: Option<PathBuf>,
    /// `id=ID`.
    pub id: Option<String>,
    /// `log_file=FILE`.
    pub log_file: Option<PathBuf>,
    /// `allow_other`.
    pub allow_other: bool,
    /// The mount's flags.
    pub flags: MountFlags,
}

/// Options that concern mount(8), systemd or fstab's readers, not the filesystem: taken
/// and ignored, as every FUSE filesystem does.
const FOR_OTHERS: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "async",
    "default_permissions",
    "noexec_helper",
];

/// Parses option lists (each `a,b=c,...`), later options winning. `sloppy` (mount's `-s`)
/// ignores unknown options instead of refusing them.
pub fn parse(lists: &[String], sloppy: bool) -> Result<MountOptionList, String> {
    let mut parsed = MountOptionList::default();
    for option in lists.iter().flat_map(|list| list.split(',')) {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option, None),
        };
        let path = |what: &str| -> Result<PathBuf, String> {
            match value {
                Some(value) if !value.is_empty() => Ok(PathBuf::from(value)),
                _ => Err(format!(
                    "mount option '{name}' needs a value: {name}={what}"
                )),
            }
        };
        let flags = &mut parsed.flags;
        match (name, value) {
            ("", None) => {}
            ("config", _) => parsed.config = Some(path("FILE")?),
            ("state_dir", _) => parsed.state_dir = Some(path("DIR")?),
            ("log_file", _) => parsed.log_file = Some(path("FILE")?),
            ("id", _) => parsed.id = Some(path("ID")?.display().to_string()),
            ("allow_other", None) => parsed.allow_other = true,
            ("ro", None) => flags.read_only = true,
            ("rw", None) => flags.read_only = false,
            ("suid", None) => flags.nosuid = false,
            ("nosuid", None) => flags.nosuid = true,
            ("dev", None) => flags.nodev = false,
            ("nodev", None) => flags.nodev = true,
            ("exec", None) => flags.noexec = false,
            ("noexec", None) => flags.noexec = true,
            ("relatime", None) | ("atime", None) => flags.atime = Atime::Relative,
            ("noatime", None) => flags.atime = Atime::Never,
            ("strictatime", None) => flags.atime = Atime::Always,
            (name, _) if FOR_OTHERS.contains(&name) => {}
            (name, _) if name.starts_with("x-") || name == "comment" => {}
            _ if sloppy => {}
            _ => {
                return Err(format!(
                    "unknown mount option '{option}' (mirrorfs takes config=, state_dir=, id=, \
                     log_file=, allow_other, ro, rw, [no]suid, [no]dev, [no]exec, noatime, \
                     relatime, strictatime)"
                ));
            }
        }
    }
    Ok(parsed)
}

/// The command line of mount(8)'s calling convention for a helper (`mount.fuse.mirrorfs
/// SOURCE DIR [-sfnv] [-o OPTIONS]`, or the same as `mirrorfs SOURCE DIR ...` from
/// mount.fuse3), rewritten as `mirrorfs mount SOURCE DIR -o suid,dev -o OPTIONS
/// [--sloppy]`; `None` when `args` is an ordinary mirrorfs command line. Err for a fake
/// mount (`-f`: mount(8) asks to do everything but the mount), which succeeds at once.
///
/// mount(8) passes a helper only the flags that differ from its defaults (an fstab
/// line's `suid` or `dev` never reaches us; `nosuid` does), so a mount through it starts
/// from mount(8)'s defaults, suid and dev, as every filesystem in fstab does; `mirrorfs
/// mount` itself starts from nosuid and nodev.
pub fn from_helper(args: &[OsString]) -> Option<Result<Vec<OsString>, ()>> {
    let program = args.first().map(|arg| {
        PathBuf::from(arg)
            .file_name()
            .map(OsStr::to_os_string)
            .unwrap_or_default()
    })?;
    let as_helper = program.as_bytes().starts_with(b"mount.");
    // mount.fuse3 runs the filesystem's own program with the source first; no mirrorfs
    // command starts with a path or a `mirrorfs#` source.
    let first = args.get(1)?.as_bytes();
    let source_first = first.starts_with(b"/") || first.starts_with(b"mirrorfs#");
    if !as_helper && !source_first {
        return None;
    }
    let mut rewritten: Vec<OsString> = vec![
        args[0].clone(),
        "mount".into(),
        "-o".into(),
        "suid,dev".into(),
    ];
    let mut positional = Vec::new();
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_bytes() {
            b"-o" => {
                if let Some(list) = rest.next() {
                    rewritten.extend(["-o".into(), list.clone()]);
                }
            }
            // The type is ours; mount.fuse3 and mount(8) may pass it.
            b"-t" => {
                rest.next();
            }
            flags if flags.starts_with(b"-") && flags.len() > 1 && !flags.starts_with(b"--") => {
                for flag in &flags[1..] {
                    match flag {
                        b'f' => return Some(Err(())),
                        b's' => rewritten.push("--sloppy".into()),
                        // No mtab to write; verbosity is the log's.
                        _ => {}
                    }
                }
            }
            _ => positional.push(arg.clone()),
        }
    }
    if let Some(source) = positional.first_mut()
        && let Some(path) = source.as_bytes().strip_prefix(b"mirrorfs#")
    {
        *source = OsStr::from_bytes(path).to_os_string();
    }
    rewritten.splice(2..2, positional);
    Some(Ok(rewritten))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn an_fstab_option_list_sets_the_config_and_the_mount_flags() {
        let parsed = parse(
            &[
                "rw,config=/etc/mirrorfs/data.toml,_netdev,nofail,x-systemd.automount".into(),
                "suid,dev,noexec,noatime,ro".into(),
            ],
            false,
        )
        .unwrap();
        assert_eq!(
            parsed.config,
            Some(PathBuf::from("/etc/mirrorfs/data.toml"))
        );
        assert_eq!(
            parsed.flags,
            MountFlags {
                read_only: true,
                nosuid: false,
                nodev: false,
                noexec: true,
                atime: Atime::Never,
            }
        );
        assert_eq!(
            parse(&["defaults".into()], false).unwrap().flags,
            MountFlags::default()
        );
    }

    #[test]
    fn an_unknown_or_empty_option_is_refused_unless_sloppy() {
        let error = parse(&["rw,frobnicate".into()], false).unwrap_err();
        assert!(error.contains("'frobnicate'"), "{error}");
        assert!(parse(&["rw,frobnicate".into()], true).is_ok());
        let error = parse(&["config=".into()], false).unwrap_err();
        assert!(error.contains("config=FILE"), "{error}");
        assert!(parse(&["ro=1".into()], false).is_err());
    }

    #[test]
    fn mount_s_helper_convention_becomes_a_mount_command() {
        let args = os(&[
            "/sbin/mount.fuse.mirrorfs",
            "/srv/data",
            "/mnt/data",
            "-o",
            "rw,config=/c.toml",
        ]);
        assert_eq!(
            from_helper(&args).unwrap().unwrap(),
            os(&[
                "/sbin/mount.fuse.mirrorfs",
                "mount",
                "/srv/data",
                "/mnt/data",
                "-o",
                "suid,dev",
                "-o",
                "rw,config=/c.toml"
            ])
        );
        // From mount.fuse3, with the old `type#source` form and a sloppy flag.
        let args = os(&[
            "mirrorfs",
            "mirrorfs#/srv/data",
            "/mnt/data",
            "-sn",
            "-o",
            "ro",
        ]);
        assert_eq!(
            from_helper(&args).unwrap().unwrap(),
            os(&[
                "mirrorfs",
                "mount",
                "/srv/data",
                "/mnt/data",
                "-o",
                "suid,dev",
                "--sloppy",
                "-o",
                "ro"
            ])
        );
        assert_eq!(
            from_helper(&os(&["mount.mirrorfs", "/a", "/b", "-f"])),
            Some(Err(()))
        );
        // Ordinary command lines are left alone.
        assert_eq!(from_helper(&os(&["mirrorfs", "mount", "/a", "/b"])), None);
        assert_eq!(from_helper(&os(&["mirrorfs", "status", "--json"])), None);
        assert_eq!(from_helper(&os(&["mirrorfs"])), None);
    }
}
