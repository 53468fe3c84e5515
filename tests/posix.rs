//! File semantics through a real mount: every operation is checked in the mounted view and
//! in the origin underneath.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use common::{Mount, c_path, errno, rename2, xattr_get, xattr_set};

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

#[test]
fn writes_land_in_the_origin_and_origin_files_are_readable() {
    let mount = Mount::new();
    fs::write(mount.origin_path("before.txt"), b"from the origin").unwrap();
    assert_eq!(read(&mount.path("before.txt")), b"from the origin");

    fs::write(mount.path("new.txt"), b"hello").unwrap();
    assert_eq!(read(&mount.origin_path("new.txt")), b"hello");

    let mut file = OpenOptions::new()
        .write(true)
        .open(mount.path("new.txt"))
        .unwrap();
    file.seek(SeekFrom::Start(3)).unwrap();
    file.write_all(b"p!").unwrap();
    drop(file);
    assert_eq!(read(&mount.path("new.txt")), b"help!");
    assert_eq!(read(&mount.origin_path("new.txt")), b"help!");
}

#[test]
fn open_flags_append_trunc_and_excl_behave_as_on_ext4() {
    let mount = Mount::new();
    let path = mount.path("f");
    fs::write(&path, b"abc").unwrap();

    let mut append = OpenOptions::new().append(true).open(&path).unwrap();
    append.write_all(b"def").unwrap();
    append.write_all(b"g").unwrap();
    drop(append);
    assert_eq!(read(&mount.origin_path("f")), b"abcdefg");

    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    assert_eq!(fs::metadata(mount.origin_path("f")).unwrap().len(), 0);

    let exclusive = OpenOptions::new().write(true).create_new(true).open(&path);
    assert_eq!(exclusive.unwrap_err().raw_os_error(), Some(libc::EEXIST));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(mount.path("g"))
        .unwrap();
    assert!(mount.origin_path("g").exists());
}

#[test]
fn directories_are_made_listed_and_removed() {
    let mount = Mount::new();
    fs::create_dir_all(mount.path("a/b/c")).unwrap();
    assert!(mount.origin_path("a/b/c").is_dir());
    for name in ["x", "y", "z"] {
        fs::write(mount.path(&format!("a/b/{name}")), name).unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(mount.path("a/b"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["c", "x", "y", "z"]);

    let not_empty = fs::remove_dir(mount.path("a/b")).unwrap_err();
    assert_eq!(not_empty.raw_os_error(), Some(libc::ENOTEMPTY));
    fs::remove_dir(mount.path("a/b/c")).unwrap();
    assert!(!mount.origin_path("a/b/c").exists());
    // The number of a removed directory may be reused at once by the origin.
    fs::create_dir(mount.path("a/b/c")).unwrap();
    fs::write(mount.path("a/b/c/inside"), b"1").unwrap();
    assert_eq!(read(&mount.origin_path("a/b/c/inside")), b"1");
}

#[test]
fn rename_moves_replaces_refuses_and_exchanges() {
    let mount = Mount::new();
    fs::create_dir(mount.path("dir")).unwrap();
    fs::write(mount.path("one"), b"1").unwrap();
    fs::write(mount.path("two"), b"2").unwrap();

    fs::rename(mount.path("one"), mount.path("dir/uno")).unwrap();
    assert_eq!(read(&mount.origin_path("dir/uno")), b"1");
    assert!(!mount.origin_path("one").exists());

    assert_eq!(
        rename2(
            &mount.path("two"),
            &mount.path("dir/uno"),
            libc::RENAME_NOREPLACE
        ),
        Err(libc::EEXIST)
    );
    rename2(
        &mount.path("two"),
        &mount.path("dir/uno"),
        libc::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(read(&mount.path("two")), b"1");
    assert_eq!(read(&mount.path("dir/uno")), b"2");
    assert_eq!(read(&mount.origin_path("two")), b"1");

    fs::rename(mount.path("two"), mount.path("dir/uno")).unwrap();
    assert_eq!(read(&mount.path("dir/uno")), b"1");
    assert!(!mount.path("two").exists());

    // A renamed directory keeps working under its new name, including what is inside.
    fs::rename(mount.path("dir"), mount.path("moved")).unwrap();
    fs::write(mount.path("moved/new"), b"n").unwrap();
    assert_eq!(read(&mount.origin_path("moved/new")), b"n");
    assert_eq!(read(&mount.path("moved/uno")), b"1");
}

#[test]
fn symlinks_and_hard_links() {
    let mount = Mount::new();
    fs::write(mount.path("target"), b"data").unwrap();
    symlink("target", mount.path("link")).unwrap();
    symlink("/etc/passwd", mount.path("outside")).unwrap();
    assert_eq!(
        fs::read_link(mount.path("link")).unwrap(),
        Path::new("target")
    );
    assert_eq!(
        fs::read_link(mount.origin_path("outside")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(read(&mount.path("link")), b"data");
    assert!(
        fs::symlink_metadata(mount.path("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    fs::hard_link(mount.path("target"), mount.path("second")).unwrap();
    let first = fs::metadata(mount.path("target")).unwrap();
    let second = fs::metadata(mount.path("second")).unwrap();
    assert_eq!(first.ino(), second.ino(), "hard links share one inode");
    assert_eq!(second.nlink(), 2);
    assert_eq!(
        fs::metadata(mount.origin_path("second")).unwrap().nlink(),
        2
    );

    fs::remove_file(mount.path("target")).unwrap();
    assert_eq!(read(&mount.path("second")), b"data");
    assert_eq!(fs::metadata(mount.path("second")).unwrap().nlink(), 1);
    fs::write(mount.path("second"), b"changed").unwrap();
    assert_eq!(read(&mount.origin_path("second")), b"changed");
}

fn mknod(path: &Path, mode: u32) -> Result<(), i32> {
    let path = c_path(path);
    // SAFETY: NUL-terminated path.
    let result = unsafe { libc::mknod(path.as_ptr(), mode, 0) };
    if result == 0 { Ok(()) } else { Err(errno()) }
}

#[test]
fn fifos_and_sockets_are_made_with_mknod() {
    let mount = Mount::new();
    mknod(&mount.path("fifo"), libc::S_IFIFO | 0o640).unwrap();
    mknod(&mount.path("socket"), libc::S_IFSOCK | 0o600).unwrap();
    assert!(
        fs::metadata(mount.origin_path("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        fs::metadata(mount.origin_path("socket"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    let fifo = fs::metadata(mount.path("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o777, 0o640);
    assert!(
        fs::metadata(mount.path("socket"))
            .unwrap()
            .file_type()
            .is_socket()
    );
}

#[test]
fn chmod_chown_utimens_and_truncate() {
    let mount = Mount::new();
    let path = mount.path("f");
    fs::write(&path, b"0123456789").unwrap();

    fs::set_permissions(&path, fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(
        fs::metadata(mount.origin_path("f")).unwrap().mode() & 0o7777,
        0o4751
    );

    std::os::unix::fs::chown(&path, Some(1234), Some(5678)).unwrap();
    let origin = fs::metadata(mount.origin_path("f")).unwrap();
    assert_eq!((origin.uid(), origin.gid()), (1234, 5678));
    let seen = fs::metadata(&path).unwrap();
    assert_eq!((seen.uid(), seen.gid()), (1234, 5678));

    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 987_654_321,
        },
    ];
    let c = c_path(&path);
    // SAFETY: NUL-terminated path and two timespecs.
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
        0
    );
    for meta in [
        fs::metadata(&path).unwrap(),
        fs::metadata(mount.origin_path("f")).unwrap(),
    ] {
        assert_eq!(
            (meta.atime(), meta.atime_nsec()),
            (1_000_000_000, 123_456_789)
        );
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec()),
            (1_500_000_000, 987_654_321)
        );
    }

    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4)
        .unwrap();
    assert_eq!(read(&mount.origin_path("f")), b"0123");
    let c = c_path(&path);
    // SAFETY: NUL-terminated path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 6) }, 0);
    assert_eq!(read(&path), b"0123\0\0");
    assert_eq!(read(&mount.origin_path("f")), b"0123\0\0");
}

#[test]
fn extended_attributes_round_trip_to_the_origin() {
    let mount = Mount::new();
    fs::write(mount.path("f"), b"").unwrap();
    fs::create_dir(mount.path("d")).unwrap();
    for target in ["f", "d"] {
        let path = mount.path(target);
        xattr_set(&path, "user.colour", b"blue", 0).unwrap();
        assert_eq!(xattr_get(&path, "user.colour").unwrap(), b"blue");
        assert_eq!(
            xattr_get(&mount.origin_path(target), "user.colour").unwrap(),
            b"blue"
        );
        assert_eq!(
            xattr_set(&path, "user.colour", b"x", libc::XATTR_CREATE),
            Err(libc::EEXIST)
        );
        assert_eq!(
            xattr_set(&path, "user.none", b"x", libc::XATTR_REPLACE),
            Err(libc::ENODATA)
        );
        assert_eq!(xattr_get(&path, "user.none"), Err(libc::ENODATA));

        let c = c_path(&path);
        let mut list = vec![0u8; 256];
        // SAFETY: NUL-terminated path and a buffer of its length.
        let size = unsafe { libc::listxattr(c.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
        assert!(size > 0);
        assert!(
            list[..size as usize]
                .split(|&b| b == 0)
                .any(|name| name == b"user.colour")
        );
        // A buffer too small is ERANGE, as on ext4.
        // SAFETY: as above, with a 1-byte buffer.
        let small = unsafe { libc::listxattr(c.as_ptr(), list.as_mut_ptr().cast(), 1) };
        assert_eq!((small, errno()), (-1, libc::ERANGE));

        let key = c_path(Path::new("user.colour"));
        // SAFETY: NUL-terminated strings.
        assert_eq!(unsafe { libc::removexattr(c.as_ptr(), key.as_ptr()) }, 0);
        assert_eq!(
            xattr_get(&mount.origin_path(target), "user.colour"),
            Err(libc::ENODATA)
        );
    }
}

#[test]
fn sparse_files_seek_data_and_hole_and_fallocate() {
    let mount = Mount::new();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(mount.path("sparse"))
        .unwrap();
    let data_at = 4 << 20;
    file.set_len(16 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"island", data_at).unwrap();
    let fd = file.as_raw_fd();
    // SAFETY: valid fd.
    let data = unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) };
    assert_eq!(data as u64, data_at - data_at % 4096);
    // SAFETY: valid fd.
    let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
    assert!(
        hole as u64 > data_at && (hole as u64) < (16 << 20),
        "hole at {hole}"
    );
    assert!(fs::metadata(mount.origin_path("sparse")).unwrap().blocks() < 1024);

    // SAFETY: valid fd.
    assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 1 << 20) }, 0);
    assert!(fs::metadata(mount.origin_path("sparse")).unwrap().blocks() >= 2048);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: valid fd.
    assert_eq!(
        unsafe { libc::fallocate(fd, punch, data_at as i64, 4096) },
        0
    );
    let mut buffer = [1u8; 6];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut buffer, data_at).unwrap();
    assert_eq!(buffer, [0; 6]);
}

#[test]
fn files_larger_than_four_gib() {
    let mount = Mount::new();
    let far = 5u64 << 30;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(mount.path("big"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"past 4GiB", far).unwrap();
    drop(file);
    assert_eq!(fs::metadata(mount.path("big")).unwrap().len(), far + 9);
    assert_eq!(
        fs::metadata(mount.origin_path("big")).unwrap().len(),
        far + 9
    );
    let mut file = File::open(mount.path("big")).unwrap();
    file.seek(SeekFrom::Start(far)).unwrap();
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    assert_eq!(text, "past 4GiB");
}

#[test]
fn statfs_reports_the_origin_filesystem() {
    let mount = Mount::new();
    let stat = |path: &Path| {
        let c = c_path(path);
        let mut out = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: NUL-terminated path and a buffer of the right type.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), out.as_mut_ptr()) }, 0);
        // SAFETY: statvfs succeeded.
        unsafe { out.assume_init() }
    };
    let (mounted, origin) = (stat(&mount.mountpoint), stat(&mount.origin));
    assert_eq!(mounted.f_blocks, origin.f_blocks);
    assert_eq!(mounted.f_files, origin.f_files);
    assert_eq!(mounted.f_namemax, 255);
}

#[test]
fn inode_numbers_are_the_origins_and_survive_the_kernel_forgetting() {
    let mount = Mount::new();
    fs::create_dir(mount.path("d")).unwrap();
    fs::write(mount.path("d/f"), b"x").unwrap();
    let before = fs::metadata(mount.path("d/f")).unwrap().ino();
    assert_eq!(
        before,
        fs::metadata(mount.origin_path("d/f")).unwrap().ino()
    );
    // Make the kernel drop its dentries and inodes, so it forgets and looks up again.
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    assert_eq!(fs::metadata(mount.path("d/f")).unwrap().ino(), before);
    assert_eq!(fs::metadata(&mount.mountpoint).unwrap().ino(), 1);
}

#[test]
fn an_open_file_keeps_working_after_its_name_is_removed() {
    let mount = Mount::new();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(mount.path("doomed"))
        .unwrap();
    file.write_all(b"still here").unwrap();
    fs::remove_file(mount.path("doomed")).unwrap();
    assert!(!mount.origin_path("doomed").exists());
    file.seek(SeekFrom::Start(0)).unwrap();
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    assert_eq!(text, "still here");
    assert_eq!(file.metadata().unwrap().nlink(), 0);
    file.set_len(5).unwrap();
    assert_eq!(file.metadata().unwrap().len(), 5);
}

#[test]
fn names_the_kernel_would_pass_are_checked_like_a_local_filesystem() {
    let mount = Mount::new();
    let long = "x".repeat(256);
    let error = fs::write(mount.path(&long), b"").unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::ENAMETOOLONG));
    let ok = "y".repeat(255);
    fs::write(mount.path(&ok), b"").unwrap();
    assert!(mount.origin_path(&ok).exists());
}

#[test]
fn a_directory_of_one_hundred_thousand_entries() {
    let mount = Mount::new();
    let count = 100_000;
    fs::create_dir(mount.origin_path("big")).unwrap();
    for index in 0..count {
        File::create(mount.origin_path(&format!("big/f{index:06}"))).unwrap();
    }
    let mut seen = 0;
    let mut last = String::new();
    for entry in fs::read_dir(mount.path("big")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(name.starts_with('f'));
        seen += 1;
        last = name;
    }
    assert_eq!(
        seen, count,
        "every entry listed exactly once (last: {last})"
    );
    assert!(fs::metadata(mount.path("big/f099999")).unwrap().is_file());
    fs::write(mount.path("big/new"), b"1").unwrap();
    fs::remove_file(mount.path("big/f000000")).unwrap();
    assert_eq!(fs::read_dir(mount.path("big")).unwrap().count(), count);
    assert!(mount.origin_path("big/new").exists());
    assert!(!mount.origin_path("big/f000000").exists());
}
