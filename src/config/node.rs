//! A replica node's settings: `mirrorfs replica serve --config FILE`, or the same given as
//! `--listen`, `--dir` and `--volume ID=KEY_FILE` on the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::units::Span;
use super::{ConfigError, VolumeId, invalid, normalize, parse_error, within};

/// A node config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNodeConfig {
    /// Address to listen on, `ip:port`.
    pub listen: Option<String>,
    /// The directory holding one subdirectory per volume.
    pub dir: Option<PathBuf>,
    /// Connections served at once; more are closed as they arrive.
    pub connections_max: Option<u32>,
    /// A connection that has not opened a session within this is closed.
    pub handshake_timeout: Option<Span>,
    /// A streaming session that hears nothing for this long is closed (a primary sends a
    /// heartbeat every second).
    pub idle_timeout: Option<Span>,
    /// Where the node serves Prometheus metrics (`ip:port`), if anywhere.
    pub metrics_listen: Option<String>,
    /// The volumes this node keeps.
    #[serde(default)]
    pub volumes: Vec<RawNodeVolume>,
}

/// One `[[volumes]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNodeVolume {
    /// The volume's id, as its primary names it.
    pub id: String,
    /// The volume's pre-shared key.
    pub key_file: PathBuf,
    /// Accept this volume's records unencrypted (still authenticated).
    pub plaintext: Option<bool>,
}

/// A validated node config.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The node's directory (absolute).
    pub dir: PathBuf,
    /// The volumes, each with its own key.
    pub volumes: Vec<NodeVolume>,
    /// See [`RawNodeConfig::connections_max`].
    pub connections_max: u32,
    /// See [`RawNodeConfig::handshake_timeout`].
    pub handshake_timeout: Duration,
    /// See [`RawNodeConfig::idle_timeout`].
    pub idle_timeout: Duration,
    /// See [`RawNodeConfig::metrics_listen`].
    pub metrics_listen: Option<SocketAddr>,
    /// A witness (`mirrorfs witness serve`): it keeps no copies, only votes.
    pub witness: bool,
}

const CONNECTIONS_MAX_DEFAULT: u32 = 64;
const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Longer than a primary's heartbeat (1 s) many times over; shorter than a day.
const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(500), Duration::from_secs(86_400));

/// One volume a node keeps.
#[derive(Clone, Debug)]
pub struct NodeVolume {
    /// Its id.
    pub id: VolumeId,
    /// Its key file (absolute).
    pub key_file: PathBuf,
    /// Records may arrive unencrypted.
    pub plaintext: bool,
}

impl NodeConfig {
    /// Parses a node config file's text; `path` is only for messages.
    pub fn parse(path: &Path, text: &str) -> Result<RawNodeConfig, ConfigError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|error| parse_error(path, text, &error, String::new()))?;
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            let key = if key == "." {
                String::new()
            } else {
                format!("{key}: ")
            };
            parse_error(path, text, error.inner(), key)
        })
    }

    /// Validates a parsed file, or command-line values in the same shape. Relative paths
    /// are taken from `cwd` (the command line's); a file's must be absolute.
    pub fn resolve(raw: RawNodeConfig, cwd: Option<&Path>) -> Result<NodeConfig, ConfigError> {
        let absolute = |key: &'static str, path: PathBuf| match cwd {
            _ if path.is_absolute() => Ok(normalize(&path)),
            Some(cwd) => Ok(normalize(&cwd.join(path))),
            None => Err(invalid(
                key,
                format!("{:?} must be an absolute path", path.display().to_string()),
            )),
        };
        let listen = raw.listen.ok_or(ConfigError::Missing {
            key: "listen",
            hint: "give --listen ADDR or `listen` in the node config",
        })?;
        let listen: SocketAddr = listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{listen:?} is not ip:port (e.g. 0.0.0.0:7071)"),
            )
        })?;
        let dir = raw.dir.ok_or(ConfigError::Missing {
            key: "dir",
            hint: "give --dir DIR or `dir` in the node config",
        })?;
        let dir = absolute("dir", dir)?;
        if raw.volumes.is_empty() {
            return Err(ConfigError::Missing {
                key: "volumes",
                hint: "give --volume ID=KEY_FILE or [[volumes]] entries",
            });
        }
        let mut volumes: Vec<NodeVolume> = Vec::new();
        for volume in raw.volumes {
            let id = VolumeId::new(&volume.id).map_err(|reason| invalid("volumes.id", reason))?;
            if volumes.iter().any(|other| other.id == id) {
                return Err(invalid("volumes.id", format!("{id} is listed twice")));
            }
            volumes.push(NodeVolume {
                id,
                key_file: absolute("volumes.key_file", volume.key_file)?,
                plaintext: volume.plaintext.unwrap_or(false),
            });
        }
        let show_span = |span: Duration| Span(span).to_string();
        Ok(NodeConfig {
            witness: false,
            listen,
            dir,
            volumes,
            connections_max: within(
                "connections_max",
                raw.connections_max,
                CONNECTIONS_MAX_DEFAULT,
                (1, 65_536),
                |count| count.to_string(),
            )?,
            handshake_timeout: within(
                "handshake_timeout",
                raw.handshake_timeout.map(|span| span.0),
                HANDSHAKE_TIMEOUT_DEFAULT,
                TIMEOUT_RANGE,
                show_span,
            )?,
            idle_timeout: within(
                "idle_timeout",
                raw.idle_timeout.map(|span| span.0),
                IDLE_TIMEOUT_DEFAULT,
                TIMEOUT_RANGE,
                show_span,
            )?,
            metrics_listen: super::metrics_listen(raw.metrics_listen.as_deref())?,
        })
    }
}

/// `ID=KEY_FILE`, as `--volume` takes it.
pub fn parse_volume_arg(text: &str) -> Result<RawNodeVolume, String> {
    let (id, key_file) = text
        .split_once('=')
        .filter(|(id, key)| !id.is_empty() && !key.is_empty())
        .ok_or_else(|| format!("--volume {text:?} is not ID=KEY_FILE"))?;
    Ok(RawNodeVolume {
        id: id.to_string(),
        key_file: PathBuf::from(key_file),
        plaintext: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::resolve(NodeConfig::parse(Path::new("node.toml"), text)?, None)
    }

    #[test]
    fn a_node_config_resolves_and_nonsense_is_named() {
        let config = resolve(
            "listen = \"0.0.0.0:7071\"\ndir = \"/srv/replicas\"\n\
             [[volumes]]\nid = \"demo\"\nkey_file = \"/etc/mirrorfs/demo.key\"\n\
             [[volumes]]\nid = \"media\"\nkey_file = \"/etc/mirrorfs/media.key\"\nplaintext = true\n",
        )
        .unwrap();
        assert_eq!(config.listen.port(), 7071);
        assert_eq!(config.volumes.len(), 2);
        assert!(config.volumes[1].plaintext && !config.volumes[0].plaintext);
        let volume = "[[volumes]]\nid = \"demo\"\nkey_file = \"/k\"\n";
        for (text, key) in [
            (format!("dir = \"/d\"\n{volume}"), "listen"),
            (format!("listen = \"nowhere\"\ndir = \"/d\"\n{volume}"), "listen"),
            (format!("listen = \"1.2.3.4:5\"\n{volume}"), "dir"),
            (format!("listen = \"1.2.3.4:5\"\ndir = \"rel\"\n{volume}"), "absolute"),
            ("listen = \"1.2.3.4:5\"\ndir = \"/d\"\n".to_string(), "volumes"),
            (format!("listen = \"1.2.3.4:5\"\ndir = \"/d\"\n{volume}{volume}"), "twice"),
            (
                "listen = \"1.2.3.4:5\"\ndir = \"/d\"\n[[volumes]]\nid = \"../x\"\nkey_file = \"/k\"\n"
                    .to_string(),
                "volumes.id",
            ),
            (format!("listen = \"1.2.3.4:5\"\ndir = \"/d\"\nport = 1\n{volume}"), "port"),
        ] {
            let message = resolve(&text).unwrap_err().to_string();
            assert!(message.contains(key), "{text}: {message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
        assert!(parse_volume_arg("demo=/k").is_ok());
        for bad in ["demo", "=k", "demo="] {
            assert!(parse_volume_arg(bad).is_err(), "{bad}");
        }
    }
}
