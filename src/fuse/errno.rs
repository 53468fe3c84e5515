//! The one place a volume error becomes an errno.

use fuser::Errno;

use crate::log::LogError;
use crate::types::NameError;
use crate::vfs::VfsError;
use crate::write::FollowError;

/// The errno an application sees for `error`. An origin error keeps its own errno, so
/// ENOSPC stays ENOSPC and EACCES stays EACCES.
pub(crate) fn errno(error: &VfsError) -> Errno {
    match error {
        VfsError::Origin(io) => io.raw_os_error().map_or(Errno::EIO, Errno::from_i32),
        VfsError::UnknownInode(_) => Errno::ESTALE,
        VfsError::Stale(_) => Errno::ESTALE,
        VfsError::UnknownHandle(_) => Errno::EBADF,
        VfsError::Name(NameError::TooLong) => Errno::ENAMETOOLONG,
        VfsError::Name(NameError::Empty | NameError::Dot | NameError::Separator) => Errno::EINVAL,
        VfsError::NotDirectory => Errno::ENOTDIR,
        VfsError::IsDirectory => Errno::EISDIR,
        VfsError::PassedThrough => Errno::ETXTBSY,
        // The kernel copies through reads and writes instead.
        VfsError::CopyFromUnnamed => Errno::EOPNOTSUPP,
        VfsError::UnsupportedKind => Errno::EIO,
        // A full or failing state disk is reported as itself, like a full origin.
        VfsError::Log(LogError::Io { source, .. }) => {
            source.raw_os_error().map_or(Errno::EIO, Errno::from_i32)
        }
        VfsError::Log(_) => Errno::EIO,
        VfsError::Path(_) => Errno::ENAMETOOLONG,
        // The caller has a signal to take, as a local wait would let it.
        VfsError::Follow(FollowError::Interrupted) => Errno::EINTR,
        // The data is safe locally, but not where the volume's config says it must be.
        VfsError::Follow(FollowError::Unheld(_)) => Errno::EIO,
        // Only verify's repairs meet it; no kernel request does.
        VfsError::Replaced(_) => Errno::ESTALE,
        // The volume takes no more changes (its state dir is gone): as a filesystem that
        // remounted itself read-only after an error.
        VfsError::Refused(_) => Errno::EROFS,
        VfsError::Unrecorded(_) => Errno::EIO,
    }
}

/// Whether `error` is worth a log line: it means something unexpected happened, not that
/// an application asked for something that does not exist or is not allowed.
pub(crate) fn is_notable(error: &VfsError) -> bool {
    match error {
        VfsError::Origin(io) => matches!(
            io.raw_os_error(),
            Some(libc::EIO) | Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EROFS) | None
        ),
        VfsError::UnknownInode(_)
        | VfsError::Stale(_)
        | VfsError::UnknownHandle(_)
        | VfsError::UnsupportedKind
        | VfsError::Log(_)
        | VfsError::Follow(_)
        | VfsError::Unrecorded(_)
        | VfsError::Replaced(_) => !matches!(error, VfsError::Follow(FollowError::Interrupted)),
        // Said once, when changes began to be refused.
        VfsError::Name(_)
        | VfsError::NotDirectory
        | VfsError::IsDirectory
        | VfsError::PassedThrough
        | VfsError::CopyFromUnnamed
        | VfsError::Path(_)
        | VfsError::Refused(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_errors_keep_their_errno() {
        for code in [
            libc::ENOSPC,
            libc::EACCES,
            libc::EROFS,
            libc::EDQUOT,
            libc::ENOTEMPTY,
        ] {
            let error = VfsError::Origin(std::io::Error::from_raw_os_error(code));
            assert_eq!(errno(&error).code(), code);
        }
    }

    #[test]
    fn volume_errors_map_to_what_a_local_filesystem_says() {
        assert_eq!(
            errno(&VfsError::Name(NameError::TooLong)),
            Errno::ENAMETOOLONG
        );
        assert_eq!(errno(&VfsError::Stale(5)), Errno::ESTALE);
        assert_eq!(errno(&VfsError::UnknownHandle(5)), Errno::EBADF);
        let kindless = VfsError::Origin(std::io::Error::other("no errno"));
        assert_eq!(errno(&kindless), Errno::EIO);
    }
}
