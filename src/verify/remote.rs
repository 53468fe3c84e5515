//! The primary's end of a verify session with one replica node: connect, walk the node's
//! copy, have it hash files, read bytes from it. Blocking calls over the node's async
//! channel, on a runtime of the session's own.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use crate::config::Replica;
use crate::log::LogPath;
use crate::manifest::Entry;
use crate::manifest::FileHashes;
use crate::replication::Stuck;
use crate::replication::VolumeKey;
use crate::replication::{Channel, ChannelError};
use crate::replication::{ProtocolError, ToNode, ToPrimary, decode_message, encode_message};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one answer may take (hashing a large file on a slow disk included).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// Paths asked to be hashed ahead of the answers read, so the node hashes while the
/// primary does.
const HASHES_AHEAD: usize = 512;

/// Paths asked for in one message (small files cost more in messages than in reading)...
const HASHES_PER_MESSAGE: usize = 64;

/// ... unless their files hold this much (the node answers a message when all its files
/// are read).
const HASH_BYTES_PER_MESSAGE: u64 = 32 << 20;

/// Why talking to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Connecting or the channel failed.
    #[error("{0}")]
    Channel(#[from] ChannelError),
    /// The node sent something that does not decode.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The node answered out of turn.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// The node refused the session.
    #[error("refused: {0}")]
    Refused(String),
    /// The node could not do what it was asked.
    #[error("{0}")]
    Failed(String),
    /// The node did not answer in time.
    #[error("no answer within {0:?}")]
    Silent(Duration),
    /// The TCP connection could not be made.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
}

/// A node's answer about one file.
#[derive(Clone, Debug)]
pub struct RemoteHashes {
    /// Its content's hashes now; `None` when the copy has no regular file there.
    pub fresh: Option<FileHashes>,
    /// The copy's applied offset when the file was read.
    pub applied: u64,
}

/// A walk of a node's copy.
#[derive(Debug)]
pub struct RemoteWalk {
    /// Its entries, in path order.
    pub entries: Vec<Entry>,
    /// The copy's applied offset when the walk began.
    pub before: u64,
    /// And when it ended.
    pub after: u64,
    /// The record the copy is stuck on, if it is.
    pub stuck: Option<Stuck>,
}

/// An open verify session with one node.
pub struct Remote {
    runtime: Runtime,
    channel: Channel<TcpStream>,
    /// The node's copy sets owners, so they are compared.
    pub owners: bool,
    /// The copy's applied offset when the session opened.
    pub applied: u64,
    /// Its log's end then, and the hash of the record before it: whether the copy follows
    /// the primary's log.
    pub held: (u64, Option<[u8; 32]>),
    /// Paths to ask for in the next message, and their files' sizes.
    outgoing: Vec<LogPath>,
    outgoing_bytes: u64,
    /// Paths asked for whose answers have not been taken, in order.
    asked: VecDeque<LogPath>,
    /// Answers received and not taken yet, in the order asked.
    answered: VecDeque<Result<RemoteHashes, RemoteError>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// Opens a verify session with `replica` for `volume`.
    pub fn connect(
        replica: &Replica,
        volume: &str,
        key: &VolumeKey,
        plaintext: bool,
    ) -> Result<Remote, RemoteError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RemoteError::Connect)?;
        let channel = runtime.block_on(async {
            let stream =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&replica.address))
                    .await
                    .map_err(|_| RemoteError::Connect(io::ErrorKind::TimedOut.into()))?
                    .map_err(RemoteError::Connect)?;
            stream.set_nodelay(true).map_err(RemoteError::Connect)?;
            Ok::<_, RemoteError>(Channel::connect(stream, volume, key, plaintext).await?)
        })?;
        let mut remote = Remote {
            runtime,
            channel,
            owners: false,
            applied: 0,
            held: (0, None),
            outgoing: Vec::new(),
            outgoing_bytes: 0,
            asked: VecDeque::new(),
            answered: VecDeque::new(),
        };
        match remote.ask(&ToNode::Inspect)? {
            ToPrimary::Inspecting {
                applied,
                next,
                last,
                owners,
            } => {
                remote.owners = owners;
                remote.applied = applied;
                remote.held = (next, last);
                Ok(remote)
            }
            other => Err(RemoteError::Unexpected(format!("{other:?}"))),
        }
    }

    fn send(&mut self, message: &ToNode) -> Result<(), RemoteError> {
        let bytes = encode_message(message);
        Ok(self.runtime.block_on(self.channel.send(&bytes))?)
    }

    fn receive(&mut self) -> Result<ToPrimary, RemoteError> {
        let answer = self
            .runtime
            .block_on(async { tokio::time::timeout(ANSWER_TIMEOUT, self.channel.receive()).await })
            .map_err(|_| RemoteError::Silent(ANSWER_TIMEOUT))??;
        match decode_message(&answer)? {
            ToPrimary::Refuse { reason } => Err(RemoteError::Refused(reason)),
            ToPrimary::Failed { reason } => Err(RemoteError::Failed(reason)),
            answer => Ok(answer),
        }
    }

    fn ask(&mut self, message: &ToNode) -> Result<ToPrimary, RemoteError> {
        self.send(message)?;
        self.receive()
    }

    /// Walks the copy from `under` once it holds every record below `wait_for` (or after
    /// `wait`).
    pub fn walk(
        &mut self,
        under: &LogPath,
        wait_for: u64,
        wait: Duration,
    ) -> Result<RemoteWalk, RemoteError> {
        self.send(&ToNode::Walk {
            under: under.clone(),
            wait_for,
            wait_ms: wait.as_millis() as u64,
        })?;
        let mut entries = Vec::new();
        loop {
            match self.receive()? {
                ToPrimary::Entries(batch) => entries.extend(batch),
                ToPrimary::Walked {
                    before,
                    after,
                    stuck,
                } => {
                    return Ok(RemoteWalk {
                        entries,
                        before,
                        after,
                        stuck,
                    });
                }
                other => return Err(RemoteError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// Asks for `path` (a file of about `size` bytes) to be hashed; answers come back in
    /// order from [`Remote::hashed`]. Asks are sent in groups: [`Remote::send_asked`]
    /// sends what is left.
    pub fn ask_hash(&mut self, path: LogPath, size: u64) -> Result<(), RemoteError> {
        self.asked.push_back(path.clone());
        self.outgoing.push(path);
        self.outgoing_bytes += size;
        if self.outgoing.len() >= HASHES_PER_MESSAGE
            || self.outgoing_bytes >= HASH_BYTES_PER_MESSAGE
        {
            self.send_asked()?;
        }
        Ok(())
    }

    /// Sends the asks not sent yet.
    pub fn send_asked(&mut self) -> Result<(), RemoteError> {
        if self.outgoing.is_empty() {
            return Ok(());
        }
        let paths = std::mem::take(&mut self.outgoing);
        self.outgoing_bytes = 0;
        self.send(&ToNode::Hash(paths))
    }

    /// Paths asked for and not answered yet.
    pub fn waiting(&self) -> usize {
        self.asked.len()
    }

    /// Whether more hashes can be asked for before reading answers.
    pub fn can_ask(&self) -> bool {
        self.asked.len() < HASHES_AHEAD
    }

    /// Whether few enough asks wait that it is time to ask more (in a group).
    pub fn wants_more(&self) -> bool {
        self.asked.len() <= HASHES_AHEAD / 2
    }

    /// The answer to the oldest hash asked for, with its path. A file the node could not
    /// read is an error for that file alone ([`RemoteError::Failed`]): the session goes on.
    pub fn hashed(&mut self) -> Option<(LogPath, Result<RemoteHashes, RemoteError>)> {
        let path = self.asked.pop_front()?;
        if self.answered.is_empty() {
            let received = self.send_asked().and_then(|()| self.receive());
            match received {
                Ok(ToPrimary::Hashed { files, applied }) => {
                    self.answered
                        .extend(files.into_iter().map(|file| match file.error {
                            Some(reason) => Err(RemoteError::Failed(reason)),
                            None => Ok(RemoteHashes {
                                fresh: file.fresh,
                                applied,
                            }),
                        }));
                }
                Ok(other) => {
                    return Some((path, Err(RemoteError::Unexpected(format!("{other:?}")))));
                }
                // A whole request failed: the session is out of step, and ends.
                Err(RemoteError::Failed(reason)) => {
                    let error = RemoteError::Unexpected(format!("the node failed: {reason}"));
                    return Some((path, Err(error)));
                }
                Err(error) => return Some((path, Err(error))),
            }
        }
        let answer = self
            .answered
            .pop_front()
            .unwrap_or_else(|| Err(RemoteError::Unexpected("an empty answer".to_string())));
        Some((path, answer))
    }

    /// Reads `len` bytes of `path` at `offset` from the copy.
    pub fn read(&mut self, path: &LogPath, offset: u64, len: u32) -> Result<Vec<u8>, RemoteError> {
        match self.ask(&ToNode::Read {
            path: path.clone(),
            offset,
            len,
        })? {
            ToPrimary::Data(data) => Ok(data),
            other => Err(RemoteError::Unexpected(format!("{other:?}"))),
        }
    }
}
