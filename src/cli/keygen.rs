//! `mirrorfs keygen`: a new volume key on standard output, for `> FILE`.

use std::io::Write;
use std::os::fd::AsRawFd;

use crate::replication::VolumeKey;

use super::CliError;

/// Writes a new key. When standard output is a file, it is made private (0600) before the
/// key goes in, whatever mode the shell created it with.
pub fn run() -> Result<(), CliError> {
    let failure = |what: &str, error: std::io::Error| CliError::Failure(format!("{what}: {error}"));
    let key = VolumeKey::generate().map_err(|error| failure("no randomness", error))?;
    let stdout = std::io::stdout();
    let fd = stdout.as_raw_fd();
    // SAFETY: fstat and fchmod on our own standard output, with a zeroed stat to fill.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut stat) == 0
            && stat.st_mode & libc::S_IFMT == libc::S_IFREG
            && libc::fchmod(fd, 0o600) != 0
        {
            return Err(failure(
                "cannot make the key file private",
                std::io::Error::last_os_error(),
            ));
        }
    }
    let mut out = stdout.lock();
    writeln!(out, "{}", key.to_hex())
        .and_then(|()| out.flush())
        .map_err(|error| failure("cannot write the key", error))
}
