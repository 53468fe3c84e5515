//! The connection between a primary and a replica node: a handshake that proves both hold
//! the volume's key, then messages, encrypted unless a config explicitly says plaintext.
//!
//! On the wire, everything is frames: a u16 length (little endian) and up to 65,535 bytes.
//!
//! 1. The primary sends a hello frame in the clear: `MFSREP1\0`, the protocol version
//!    (u16), the mode (0 encrypted, 1 plaintext), and the volume id (a length byte, then
//!    the id). The node answers one status frame: 0 to go on, or 1 and a reason (an
//!    unknown volume, a mode the node does not allow), and then closes.
//! 2. Encrypted: a Noise `NNpsk0_25519_ChaChaPoly_BLAKE2s` handshake, the hello as its
//!    prologue and a key derived from the volume key as its pre-shared key. A primary
//!    without the key fails the node's first read; a node without it, the primary's.
//!    Both sides have then authenticated each other, and every later frame is sealed.
//!    Plaintext: a challenge and response, keyed blake3 MACs over the hello and both
//!    nonces, so both sides are still authenticated, but frames after it are not sealed.
//! 3. Messages: the first frame of a message starts with its length (u32, whose top bit
//!    says the message is zstd-compressed); the message then continues over as many frames
//!    as it needs, up to [`MESSAGE_MAX`] bytes, compressed or not.
//!
//! Each direction counts its own frames, and a frame is sealed with its count as the
//! nonce, so a frame replayed, dropped or moved fails to open. That lets a channel be
//! split into a half that sends and a half that receives, each going at its own pace
//! (a primary keeps several batches in flight).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use super::key::VolumeKey;

/// First bytes of a hello.
const MAGIC: &[u8; 8] = b"MFSREP1\0";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 4;

/// The Noise pattern: both sides know a pre-shared key, neither has a static key pair.
const NOISE_PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";

/// Purposes the volume key is derived for (never used raw).
const NOISE_PSK: &str = "mirrorfs 2026-11 replication noise pre-shared key";
const MAC_KEY: &str = "mirrorfs 2026-11 replication plaintext authentication key";

/// The largest frame.
const FRAME_MAX: usize = u16::MAX as usize;

/// What a sealed frame adds to its plaintext.
const TAG_LEN: usize = 16;

/// The largest message (a batch of records, a piece of a snapshot).
pub const MESSAGE_MAX: usize = 16 << 20;

/// The length's bit that says a message is compressed.
const COMPRESSED: u32 = 1 << 31;

/// Messages shorter than this go as they are: compressing them saves nothing worth a
/// frame's cost.
const COMPRESS_MIN: usize = 512;

/// How far ahead of its rate a paced sender may run (one burst).
const PACE_BURST: Duration = Duration::from_millis(20);

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The connection broke or closed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The other side does not speak this protocol.
    #[error("not a mirrorfs replication peer: {0}")]
    Protocol(String),
    /// The other side does not hold the volume's key.
    #[error("authentication failed: the other side does not hold volume {0}'s key")]
    Authentication(String),
    /// The node refused the volume.
    #[error("refused by the replica node: {0}")]
    Refused(String),
    /// A frame failed its seal after the handshake.
    #[error("a frame failed its integrity check")]
    Integrity,
    /// A message longer than [`MESSAGE_MAX`].
    #[error("message of {0} bytes is over the {MESSAGE_MAX}-byte limit")]
    TooLarge(usize),
}

/// How a volume may be reached, as a node knows it.
#[derive(Clone, Debug)]
pub struct Admission {
    /// The volume's key.
    pub key: VolumeKey,
    /// Whether plaintext connections are allowed for it.
    pub plaintext: bool,
}

/// An authenticated connection, ready for messages.
#[derive(Debug)]
pub struct Channel<S> {
    sending: Sending<WriteHalf<S>>,
    receiving: Receiving<ReadHalf<S>>,
}

/// The session's keys and one direction's count of frames.
struct Seal {
    noise: Arc<snow::StatelessTransportState>,
    count: u64,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Seal {{ count: {} }}", self.count)
    }
}

/// The half of a channel that sends.
#[derive(Debug)]
pub struct Sending<W> {
    stream: W,
    seal: Option<Seal>,
    sealed: Vec<u8>,
    /// Messages are zstd-compressed at this level when that shrinks them.
    compress: Option<i32>,
    pace: Option<Pace>,
}

/// A cap on the bytes a sender puts on the wire per second.
#[derive(Debug)]
struct Pace {
    bytes_per_second: u64,
    /// When the bytes sent so far would have gone out at the rate.
    due: tokio::time::Instant,
}

impl Pace {
    /// Counts `bytes` sent, and waits while the sender is more than a burst ahead.
    async fn sent(&mut self, bytes: usize) {
        let now = tokio::time::Instant::now();
        self.due = self.due.max(now)
            + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        if self.due > now + PACE_BURST {
            tokio::time::sleep_until(self.due - PACE_BURST).await;
        }
    }
}

/// The half of a channel that receives.
#[derive(Debug)]
pub struct Receiving<R> {
    stream: R,
    seal: Option<Seal>,
}

/// The Noise handshake for `hello`, keyed by `key`, on the initiating side or not.
fn handshake(
    key: &VolumeKey,
    hello: &[u8],
    initiator: bool,
) -> Result<snow::HandshakeState, ChannelError> {
    let params = NOISE_PATTERN.parse().expect("a valid Noise pattern");
    let psk = key.derive(NOISE_PSK);
    snow::Builder::new(params)
        .prologue(hello)
        .and_then(|builder| builder.psk(0, &psk))
        .and_then(|builder| {
            if initiator {
                builder.build_initiator()
            } else {
                builder.build_responder()
            }
        })
        .map_err(|error| ChannelError::Protocol(error.to_string()))
}

fn hello(volume: &str, plaintext: bool) -> Vec<u8> {
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    hello.push(u8::from(plaintext));
    hello.push(volume.len() as u8);
    hello.extend_from_slice(volume.as_bytes());
    hello
}

/// A parsed hello: (volume id, plaintext).
fn parse_hello(frame: &[u8]) -> Result<(String, bool), ChannelError> {
    let bad = |what: &str| ChannelError::Protocol(what.to_string());
    if frame.len() < 12 || &frame[..8] != MAGIC {
        return Err(bad("no hello"));
    }
    let version = u16::from_le_bytes([frame[8], frame[9]]);
    if version != PROTOCOL_VERSION {
        return Err(ChannelError::Protocol(format!(
            "protocol version {version}, this node speaks {PROTOCOL_VERSION}"
        )));
    }
    let plaintext = match frame[10] {
        0 => false,
        1 => true,
        _ => return Err(bad("unknown mode")),
    };
    let len = frame[11] as usize;
    let id = frame
        .get(12..12 + len)
        .filter(|_| frame.len() == 12 + len)
        .and_then(|id| std::str::from_utf8(id).ok())
        .ok_or_else(|| bad("malformed volume id"))?;
    Ok((id.to_string(), plaintext))
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, frame: &[u8]) -> io::Result<()> {
    debug_assert!(frame.len() <= FRAME_MAX);
    let mut bytes = Vec::with_capacity(2 + frame.len());
    bytes.extend_from_slice(&(frame.len() as u16).to_le_bytes());
    bytes.extend_from_slice(frame);
    stream.write_all(&bytes).await
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut frame = vec![0u8; u16::from_le_bytes(len) as usize];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

fn mac(key: &VolumeKey, role: &[u8], hello: &[u8], nonces: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(&key.derive(MAC_KEY));
    hasher.update(role);
    hasher.update(&(hello.len() as u32).to_le_bytes());
    hasher.update(hello);
    hasher.update(nonces);
    *hasher.finalize().as_bytes()
}

fn nonce() -> Result<[u8; 32], ChannelError> {
    let key = VolumeKey::generate()?;
    Ok(key.derive("mirrorfs nonce"))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Channel<S> {
    /// The primary's side: opens `volume` on the node at the other end of `stream`.
    pub async fn connect(
        mut stream: S,
        volume: &str,
        key: &VolumeKey,
        plaintext: bool,
    ) -> Result<Channel<S>, ChannelError> {
        let hello = hello(volume, plaintext);
        write_frame(&mut stream, &hello).await?;
        let status = read_frame(&mut stream).await?;
        match status.split_first() {
            Some((0, [])) => {}
            Some((1, reason)) => {
                return Err(ChannelError::Refused(
                    String::from_utf8_lossy(reason).into_owned(),
                ));
            }
            _ => return Err(ChannelError::Protocol("malformed status".to_string())),
        }
        let mut buffer = vec![0u8; FRAME_MAX];
        if plaintext {
            let challenge = read_frame(&mut stream).await?;
            let their: [u8; 32] = challenge
                .as_slice()
                .try_into()
                .map_err(|_| ChannelError::Protocol("malformed challenge".to_string()))?;
            let ours = nonce()?;
            let nonces = [their, ours].concat();
            let mut answer = ours.to_vec();
            answer.extend_from_slice(&mac(key, b"primary", &hello, &nonces));
            write_frame(&mut stream, &answer).await?;
            let proof = read_frame(&mut stream).await?;
            if proof != mac(key, b"node", &hello, &nonces) {
                return Err(ChannelError::Authentication(volume.to_string()));
            }
            return Ok(Channel::new(stream, None));
        }
        let mut handshake = handshake(key, &hello, true)?;
        let len = handshake
            .write_message(&[], &mut buffer)
            .map_err(|error| ChannelError::Protocol(error.to_string()))?;
        write_frame(&mut stream, &buffer[..len]).await?;
        let reply = read_frame(&mut stream).await?;
        if reply.first() == Some(&0xff) && reply.len() == 1 {
            return Err(ChannelError::Authentication(volume.to_string()));
        }
        handshake
            .read_message(&reply, &mut buffer)
            .map_err(|_| ChannelError::Authentication(volume.to_string()))?;
        let noise = handshake
            .into_stateless_transport_mode()
            .map_err(|error| ChannelError::Protocol(error.to_string()))?;
        Ok(Channel::new(stream, Some(noise)))
    }

    /// The node's side: reads the hello, asks `admit` how `volume` may be reached (or why
    /// not, as one line for the primary), and completes the handshake.
    pub async fn accept(
        mut stream: S,
        admit: impl FnOnce(&str) -> Result<Admission, String>,
    ) -> Result<(String, Channel<S>), ChannelError> {
        let hello = read_frame(&mut stream).await?;
        let (volume, plaintext) = parse_hello(&hello)?;
        let admission = admit(&volume).and_then(|admission| {
            if plaintext && !admission.plaintext {
                Err(format!("volume {volume} is not served in plaintext here"))
            } else {
                Ok(admission)
            }
        });
        let admission = match admission {
            Ok(admission) => admission,
            Err(reason) => {
                let mut refusal = vec![1u8];
                refusal.extend_from_slice(reason.as_bytes());
                refusal.truncate(FRAME_MAX);
                write_frame(&mut stream, &refusal).await?;
                return Err(ChannelError::Refused(reason));
            }
        };
        write_frame(&mut stream, &[0]).await?;
        let key = &admission.key;
        let mut buffer = vec![0u8; FRAME_MAX];
        if plaintext {
            let ours = nonce()?;
            write_frame(&mut stream, &ours).await?;
            let answer = read_frame(&mut stream).await?;
            if answer.len() != 64 {
                return Err(ChannelError::Protocol("malformed answer".to_string()));
            }
            let nonces = [&ours[..], &answer[..32]].concat();
            if answer[32..] != mac(key, b"primary", &hello, &nonces) {
                write_frame(&mut stream, &[0xff]).await?;
                return Err(ChannelError::Authentication(volume));
            }
            write_frame(&mut stream, &mac(key, b"node", &hello, &nonces)).await?;
            return Ok((volume, Channel::new(stream, None)));
        }
        let mut handshake = handshake(key, &hello, false)?;
        let first = read_frame(&mut stream).await?;
        if handshake.read_message(&first, &mut buffer).is_err() {
            // One byte that says only "no": the primary learns nothing else.
            write_frame(&mut stream, &[0xff]).await?;
            return Err(ChannelError::Authentication(volume));
        }
        let len = handshake
            .write_message(&[], &mut buffer)
            .map_err(|error| ChannelError::Protocol(error.to_string()))?;
        write_frame(&mut stream, &buffer[..len]).await?;
        let noise = handshake
            .into_stateless_transport_mode()
            .map_err(|error| ChannelError::Protocol(error.to_string()))?;
        Ok((volume, Channel::new(stream, Some(noise))))
    }

    /// A channel over `stream`, sealing frames with `noise` unless it is plaintext.
    fn new(stream: S, noise: Option<snow::StatelessTransportState>) -> Channel<S> {
        let noise = noise.map(Arc::new);
        let seal = |noise: &Option<Arc<_>>| {
            noise.as_ref().map(|noise| Seal {
                noise: Arc::clone(noise),
                count: 0,
            })
        };
        let (reading, writing) = tokio::io::split(stream);
        Channel {
            sending: Sending {
                stream: writing,
                seal: seal(&noise),
                sealed: vec![0u8; FRAME_MAX],
                compress: None,
                pace: None,
            },
            receiving: Receiving {
                stream: reading,
                seal: seal(&noise),
            },
        }
    }

    /// Sends one message (at most [`MESSAGE_MAX`] bytes).
    pub async fn send(&mut self, message: &[u8]) -> Result<(), ChannelError> {
        self.sending.send(message).await
    }

    /// Receives one message.
    pub async fn receive(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.receiving.receive().await
    }

    /// Compresses what this side sends with zstd (its fastest level) from now on.
    pub fn compress(&mut self) {
        self.sending.compress = Some(1);
    }

    /// Sends at most `bytes_per_second` from now on.
    pub fn pace(&mut self, bytes_per_second: u64) {
        self.sending.pace = Some(Pace {
            bytes_per_second: bytes_per_second.max(1),
            due: tokio::time::Instant::now(),
        });
    }

    /// The two halves, to send and receive independently.
    pub fn split(self) -> (Sending<WriteHalf<S>>, Receiving<ReadHalf<S>>) {
        (self.sending, self.receiving)
    }
}

impl<W: AsyncWrite + Unpin> Sending<W> {
    /// Sends one message (at most [`MESSAGE_MAX`] bytes).
    pub async fn send(&mut self, message: &[u8]) -> Result<(), ChannelError> {
        if message.len() > MESSAGE_MAX {
            return Err(ChannelError::TooLarge(message.len()));
        }
        let room = if self.seal.is_some() {
            FRAME_MAX - TAG_LEN
        } else {
            FRAME_MAX
        };
        let compressed = match self.compress {
            Some(level) if message.len() >= COMPRESS_MIN => zstd::bulk::compress(message, level)
                .ok()
                .filter(|smaller| smaller.len() < message.len()),
            _ => None,
        };
        let (body, flag) = match &compressed {
            Some(smaller) => (smaller.as_slice(), COMPRESSED),
            None => (message, 0),
        };
        let mut whole = Vec::with_capacity(4 + body.len());
        whole.extend_from_slice(&(body.len() as u32 | flag).to_le_bytes());
        whole.extend_from_slice(body);
        for piece in whole.chunks(room) {
            let frame = match &mut self.seal {
                Some(seal) => {
                    let len = seal
                        .noise
                        .write_message(seal.count, piece, &mut self.sealed)
                        .map_err(|_| ChannelError::Integrity)?;
                    seal.count += 1;
                    &self.sealed[..len]
                }
                None => piece,
            };
            write_frame(&mut self.stream, frame).await?;
            if let Some(pace) = &mut self.pace {
                pace.sent(2 + frame.len()).await;
            }
        }
        self.stream.flush().await?;
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> Receiving<R> {
    /// The receiving half of a plaintext channel whose handshake is done, reading `stream`
    /// (what the fuzz target for frames reads bytes through).
    pub fn plaintext(stream: R) -> Receiving<R> {
        Receiving { stream, seal: None }
    }

    /// Receives one message.
    pub async fn receive(&mut self) -> Result<Vec<u8>, ChannelError> {
        let mut message = self.receive_frame().await?;
        if message.len() < 4 {
            return Err(ChannelError::Protocol("short message".to_string()));
        }
        let word = u32::from_le_bytes(message[..4].try_into().expect("4 bytes"));
        let len = (word & !COMPRESSED) as usize;
        if len > MESSAGE_MAX {
            return Err(ChannelError::TooLarge(len));
        }
        message.drain(..4);
        while message.len() < len {
            let frame = self.receive_frame().await?;
            if frame.is_empty() {
                return Err(ChannelError::Protocol("empty frame".to_string()));
            }
            message.extend_from_slice(&frame);
        }
        if message.len() != len {
            return Err(ChannelError::Protocol(
                "message longer than announced".to_string(),
            ));
        }
        if word & COMPRESSED == 0 {
            return Ok(message);
        }
        // The frame states its size: one that would inflate past the limit is refused
        // before anything is allocated, and decompressing stops at the stated size.
        let bad = |why: String| ChannelError::Protocol(format!("compressed message: {why}"));
        let size = zstd::zstd_safe::get_frame_content_size(&message)
            .ok()
            .flatten()
            .ok_or_else(|| bad("no size stated".to_string()))?;
        if size > MESSAGE_MAX as u64 {
            return Err(ChannelError::TooLarge(size as usize));
        }
        zstd::bulk::decompress(&message, size as usize).map_err(|error| bad(error.to_string()))
    }

    async fn receive_frame(&mut self) -> Result<Vec<u8>, ChannelError> {
        let frame = read_frame(&mut self.stream).await?;
        match &mut self.seal {
            None => Ok(frame),
            Some(seal) => {
                let mut plain = vec![0u8; frame.len()];
                let len = seal
                    .noise
                    .read_message(seal.count, &frame, &mut plain)
                    .map_err(|_| ChannelError::Integrity)?;
                seal.count += 1;
                plain.truncate(len);
                Ok(plain)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair(
        primary_key: VolumeKey,
        node_key: VolumeKey,
        plaintext: (bool, bool),
        volume: &'static str,
    ) -> (
        Result<Channel<TcpStream>, ChannelError>,
        Result<(String, Channel<TcpStream>), ChannelError>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let node = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            Channel::accept(stream, |id| {
                if id == "demo" {
                    Ok(Admission {
                        key: node_key,
                        plaintext: plaintext.1,
                    })
                } else {
                    Err(format!("volume {id} is not kept here"))
                }
            })
            .await
        });
        let stream = TcpStream::connect(address).await.unwrap();
        let primary = Channel::connect(stream, volume, &primary_key, plaintext.0).await;
        (primary, node.await.unwrap())
    }

    /// A plaintext sender into memory, compressing and paced as asked.
    fn sender(compress: bool, rate: Option<u64>) -> Sending<Vec<u8>> {
        Sending {
            stream: Vec::new(),
            seal: None,
            sealed: vec![0u8; FRAME_MAX],
            compress: compress.then_some(1),
            pace: rate.map(|bytes_per_second| Pace {
                bytes_per_second,
                due: tokio::time::Instant::now(),
            }),
        }
    }

    async fn received(wire: &[u8]) -> Result<Vec<u8>, ChannelError> {
        Receiving::plaintext(wire).receive().await
    }

    #[tokio::test]
    async fn compressed_messages_shrink_on_the_wire_and_arrive_whole() {
        let text: Vec<u8> = (0..200_000)
            .flat_map(|i: u32| {
                format!("line {} of a text file that repeats\n", i % 50).into_bytes()
            })
            .collect();
        let noise: Vec<u8> = (0..65_536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for message in [&text, &noise, &b"short".to_vec()] {
            let mut plain = sender(false, None);
            plain.send(message).await.unwrap();
            let mut zstd = sender(true, None);
            zstd.send(message).await.unwrap();
            assert_eq!(&received(&zstd.stream).await.unwrap(), message);
            assert_eq!(&received(&plain.stream).await.unwrap(), message);
            // What zstd cannot shrink goes as it is.
            assert!(zstd.stream.len() <= plain.stream.len());
        }
        let mut zstd = sender(true, None);
        zstd.send(&text).await.unwrap();
        assert!(
            zstd.stream.len() * 20 < text.len(),
            "{} bytes",
            zstd.stream.len()
        );
    }

    #[tokio::test]
    async fn a_compressed_message_inflating_past_the_limit_or_garbled_is_refused() {
        let huge = zstd::bulk::compress(&vec![0u8; MESSAGE_MAX + 1], 1).unwrap();
        let garbled = vec![0x5a; 4096];
        for (body, too_large) in [(huge, true), (garbled, false)] {
            let mut wire = Vec::new();
            write_frame(
                &mut wire,
                &[
                    (body.len() as u32 | COMPRESSED).to_le_bytes().as_slice(),
                    &body,
                ]
                .concat(),
            )
            .await
            .unwrap();
            match received(&wire).await {
                Err(ChannelError::TooLarge(_)) => assert!(too_large),
                Err(ChannelError::Protocol(why)) => assert!(!too_large, "{why}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_paced_sender_keeps_to_its_rate() {
        let message = vec![7u8; 100 << 10];
        let mut paced = sender(false, Some(1 << 20));
        let started = std::time::Instant::now();
        for _ in 0..5 {
            paced.send(&message).await.unwrap();
        }
        // 500 KiB at 1 MiB/s, less one burst ahead.
        let least = Duration::from_secs_f64(0.5 * 500.0 / 512.0) - PACE_BURST;
        assert!(started.elapsed() >= least, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn messages_cross_both_ways_encrypted_and_in_plaintext() {
        for plaintext in [false, true] {
            let key = VolumeKey::generate().unwrap();
            let (primary, node) = pair(key.clone(), key, (plaintext, plaintext), "demo").await;
            let (mut primary, (volume, mut node)) = (primary.unwrap(), node.unwrap());
            assert_eq!(volume, "demo");
            let big: Vec<u8> = (0..3_000_000u32).map(|n| n as u8).collect();
            for message in [&b""[..], b"hello", &big] {
                primary.send(message).await.unwrap();
                assert_eq!(node.receive().await.unwrap(), message);
                node.send(message).await.unwrap();
                assert_eq!(primary.receive().await.unwrap(), message);
            }
            let too_big = vec![0u8; MESSAGE_MAX + 1];
            assert!(matches!(
                primary.send(&too_big).await,
                Err(ChannelError::TooLarge(_))
            ));
        }
    }

    #[tokio::test]
    async fn a_wrong_key_an_unknown_volume_or_a_refused_mode_is_refused() {
        for plaintext in [false, true] {
            let (primary, node) = pair(
                VolumeKey::generate().unwrap(),
                VolumeKey::generate().unwrap(),
                (plaintext, plaintext),
                "demo",
            )
            .await;
            assert!(
                matches!(primary, Err(ChannelError::Authentication(_))),
                "{primary:?}"
            );
            assert!(
                matches!(node, Err(ChannelError::Authentication(_))),
                "{node:?}"
            );
        }
        let key = VolumeKey::generate().unwrap();
        let (primary, node) = pair(key.clone(), key.clone(), (false, false), "other").await;
        let message = primary.unwrap_err().to_string();
        assert!(
            message.contains("volume other is not kept here"),
            "{message}"
        );
        assert!(node.is_err());
        let (primary, _) = pair(key.clone(), key, (true, false), "demo").await;
        assert!(primary.unwrap_err().to_string().contains("plaintext"));
    }

    #[tokio::test]
    async fn garbage_is_not_a_hello_and_a_tampered_frame_is_caught() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let node = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            Channel::accept(stream, |_| Err("unused".to_string())).await
        });
        let mut stream = TcpStream::connect(address).await.unwrap();
        write_frame(&mut stream, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        assert!(matches!(
            node.await.unwrap(),
            Err(ChannelError::Protocol(_))
        ));

        let key = VolumeKey::generate().unwrap();
        let (primary, node) = pair(key.clone(), key, (false, false), "demo").await;
        let (mut primary, (_, mut node)) = (primary.unwrap(), node.unwrap());
        // A message announcing more than the limit is refused before anything is read.
        let key = VolumeKey::generate().unwrap();
        let (primary_plain, node_plain) = pair(key.clone(), key, (true, true), "demo").await;
        let (mut primary_plain, (_, mut node_plain)) =
            (primary_plain.unwrap(), node_plain.unwrap());
        let announced = ((MESSAGE_MAX + 1) as u32).to_le_bytes();
        write_frame(&mut primary_plain.sending.stream, &announced)
            .await
            .unwrap();
        assert!(matches!(
            node_plain.receive().await,
            Err(ChannelError::TooLarge(_))
        ));

        // A frame sealed for another position in the stream does not open.
        let mut sealed = vec![0u8; FRAME_MAX];
        let seal = primary.sending.seal.as_ref().unwrap();
        let len = seal
            .noise
            .write_message(seal.count + 1, b"\x06\0\0\0second", &mut sealed)
            .unwrap();
        write_frame(&mut primary.sending.stream, &sealed[..len])
            .await
            .unwrap();
        assert!(matches!(node.receive().await, Err(ChannelError::Integrity)));
    }
}
