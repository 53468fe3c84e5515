//! The control socket: a mounted volume's daemon answers questions on
//! `state_dir/control.sock`, and a replica node on `DIR/.node/control.sock` (mode 0600, so
//! only the owner of the directory asks). One request line in, one JSON line out;
//! `mirrorfs status` and `mirrorfs replica status` are the clients.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The socket's name inside the state directory.
pub const SOCKET_NAME: &str = "control.sock";

/// How long a client waits for an answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest request line read.
const REQUEST_MAX: u64 = 64 << 10;

/// Why a daemon could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens: the daemon is not running (or died).
    #[error("no daemon answers at {path} ({source})")]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// What connecting said.
        source: io::Error,
    },
    /// The daemon answered something unexpected or not at all.
    #[error("the daemon at {path} did not answer properly: {reason}")]
    Answer {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// A listening control socket; removed when dropped.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
}

/// Answers requests other than `status` (e.g. `verify {...}`): given the request line and
/// the connection, on a thread of its own, writing as many lines as it likes.
pub type Handler = Arc<dyn Fn(&str, UnixStream) + Send + Sync>;

impl ControlSocket {
    /// Listens in `state_dir` and answers from a thread with what `status` returns. A
    /// socket left by a daemon that died is replaced (the state lock says it is ours).
    pub fn serve<T: Serialize>(
        state_dir: &Path,
        status: impl Fn() -> T + Send + 'static,
    ) -> io::Result<ControlSocket> {
        ControlSocket::serve_with(state_dir, status, None)
    }

    /// As [`ControlSocket::serve`], with `other` answering every other request.
    pub fn serve_with<T: Serialize>(
        state_dir: &Path,
        status: impl Fn() -> T + Send + 'static,
        other: Option<Handler>,
    ) -> io::Result<ControlSocket> {
        let path = state_dir.join(SOCKET_NAME);
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        std::thread::Builder::new()
            .name("control".to_string())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => {
                            if let Err(error) = answer(stream, &status, other.as_ref()) {
                                tracing::debug!(%error, "control client went away");
                            }
                        }
                        Err(error) => tracing::warn!(%error, "control socket accept failed"),
                    }
                }
            })?;
        Ok(ControlSocket { path })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn answer<T: Serialize>(
    stream: UnixStream,
    status: &impl Fn() -> T,
    other: Option<&Handler>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut request = String::new();
    // Bounded, so a client cannot make the daemon buffer without end.
    io::Read::take(BufReader::new(&stream), REQUEST_MAX).read_line(&mut request)?;
    let request = request.trim();
    let reply = match (request, other) {
        ("status", _) => serde_json::to_string(&status()).map_err(io::Error::other)?,
        (_, Some(handler)) => {
            let (handler, request) = (Arc::clone(handler), request.to_string());
            stream.set_read_timeout(None)?;
            std::thread::Builder::new()
                .name("control-request".to_string())
                .spawn(move || handler(&request, stream))?;
            return Ok(());
        }
        (other, None) => {
            serde_json::json!({ "error": format!("unknown request {other:?}") }).to_string()
        }
    };
    let mut stream = stream;
    writeln!(stream, "{reply}")
}

/// Sends `request` to the daemon whose state directory is `state_dir` and returns the
/// connection its answer lines arrive on (as many as it sends, with no time limit: a
/// long request reports its progress in lines of its own).
pub fn request(state_dir: &Path, request: &str) -> Result<BufReader<UnixStream>, ControlError> {
    let path = state_dir.join(SOCKET_NAME);
    let mut stream = UnixStream::connect(&path).map_err(|source| ControlError::NotRunning {
        path: path.clone(),
        source,
    })?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(|error| ControlError::Answer {
            path: path.clone(),
            reason: error.to_string(),
        })?;
    Ok(BufReader::new(stream))
}

/// Asks the daemon whose state directory is `state_dir` for its status.
pub fn query<T: DeserializeOwned>(state_dir: &Path) -> Result<T, ControlError> {
    let path = state_dir.join(SOCKET_NAME);
    let answer_error = |reason: String| ControlError::Answer {
        path: path.clone(),
        reason,
    };
    let mut stream = UnixStream::connect(&path).map_err(|source| ControlError::NotRunning {
        path: path.clone(),
        source,
    })?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .and_then(|()| stream.write_all(b"status\n"))
        .map_err(|error| answer_error(error.to_string()))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|error| answer_error(error.to_string()))?;
    serde_json::from_str(&line).map_err(|error| answer_error(error.to_string()))
}
