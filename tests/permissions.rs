//! Permissions and ownership for other users through an allow_other mount, judged against
//! the same actions on the native filesystem (ext4) in the same run.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::Path;

use common::{Mount, scratch, sh_as};

const NOBODY: u32 = 65534;

/// The same tree in any root: private, public, sticky-shared and setgid directories.
fn build_tree(root: &Path) {
    let mode = |path: &Path, mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap()
    };
    fs::create_dir(root.join("private")).unwrap();
    fs::write(root.join("private/secret"), b"s").unwrap();
    mode(&root.join("private"), 0o700);
    mode(&root.join("private/secret"), 0o600);
    fs::create_dir(root.join("public")).unwrap();
    mode(&root.join("public"), 0o755);
    fs::write(root.join("public/readable"), b"r").unwrap();
    mode(&root.join("public/readable"), 0o644);
    fs::create_dir(root.join("shared")).unwrap();
    mode(&root.join("shared"), 0o1777);
    fs::write(root.join("shared/rootfile"), b"r").unwrap();
    mode(&root.join("shared/rootfile"), 0o666);
    fs::create_dir(root.join("setgid")).unwrap();
    chown(root.join("setgid"), Some(0), Some(4242)).unwrap();
    mode(&root.join("setgid"), 0o2777);
    mode(root, 0o755);
}

/// What `nobody` tries; each line reports ok or fail, then ownership of what it made.
const SCRIPT: &str = r#"
try() { name=$1; shift; if "$@" 2>/dev/null; then echo "$name ok"; else echo "$name fail"; fi; }
try read-private cat private/secret
try list-private ls private
try read-public cat public/readable
try append-public sh -c 'echo x >> public/readable'
try create-in-public sh -c 'echo x > public/new'
try remove-public rm -f public/readable
try chmod-not-owned chmod 777 public/readable
try touch-not-owned touch public/readable
try create-in-shared sh -c 'echo x > shared/mine'
try remove-others-in-sticky rm -f shared/rootfile
try write-others-in-sticky sh -c 'echo y >> shared/rootfile'
try mkdir-in-shared mkdir shared/dir
try symlink-in-shared ln -s mine shared/link
try rename-own mv shared/mine shared/renamed
try chmod-own chmod 640 shared/renamed
try chown-own-to-root chown 0 shared/renamed
try create-in-setgid sh -c 'echo x > setgid/file'
try mkdir-in-setgid mkdir setgid/sub
stat -c '%n %u:%g %a' shared/renamed shared/dir setgid/file setgid/sub
stat -c '%n %u:%g' shared/link
"#;

#[test]
fn another_user_is_allowed_and_refused_exactly_where_ext4_would() {
    let native_dir = scratch();
    fs::set_permissions(native_dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let native = native_dir.path().join("native");
    fs::create_dir(&native).unwrap();
    build_tree(&native);

    let dir = scratch();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let origin = dir.path().join("origin");
    fs::create_dir(&origin).unwrap();
    build_tree(&origin);
    let mount = Mount::over(dir, origin, &["--allow-other"]);

    let expected = sh_as(NOBODY, NOBODY, &native, SCRIPT);
    let seen = sh_as(NOBODY, NOBODY, &mount.mountpoint, SCRIPT);
    let expected = String::from_utf8_lossy(&expected.stdout).into_owned();
    let seen = String::from_utf8_lossy(&seen.stdout).into_owned();
    assert!(expected.contains("read-private fail") && expected.contains("create-in-shared ok"));
    assert_eq!(
        seen, expected,
        "mount differs from ext4\n--- ext4\n{expected}--- mirrorfs\n{seen}"
    );

    // What nobody created belongs to nobody in the origin too, with the setgid group.
    let owner = |relative: &str| {
        let meta = fs::symlink_metadata(mount.origin_path(relative)).unwrap();
        (meta.uid(), meta.gid())
    };
    assert_eq!(owner("shared/renamed"), (NOBODY, NOBODY));
    assert_eq!(owner("shared/dir"), (NOBODY, NOBODY));
    assert_eq!(owner("shared/link"), (NOBODY, NOBODY));
    assert_eq!(owner("setgid/file"), (NOBODY, 4242));
    assert_eq!(owner("setgid/sub"), (NOBODY, 4242));
    let sub = fs::metadata(mount.origin_path("setgid/sub")).unwrap();
    assert_ne!(
        sub.mode() & libc::S_ISGID,
        0,
        "a directory made in a setgid one is setgid"
    );
}

#[test]
fn without_allow_other_other_users_are_kept_out() {
    let dir = scratch();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let origin = dir.path().join("origin");
    fs::create_dir(&origin).unwrap();
    fs::write(origin.join("open"), b"x").unwrap();
    fs::set_permissions(origin.join("open"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&origin, fs::Permissions::from_mode(0o755)).unwrap();
    let mount = Mount::over(dir, origin, &[]);
    let output = sh_as(NOBODY, NOBODY, mount.dir.path(), "cat mnt/open");
    assert!(
        !output.status.success(),
        "another user read through a private mount"
    );
    assert_eq!(
        fs::read(mount.path("open")).unwrap(),
        b"x",
        "the owner still can"
    );
}
