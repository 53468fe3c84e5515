//! `mirrorfs promote`: a replica's copy becomes the volume's primary, and the mount config
//! that serves it is written. Everything the config needs is gathered first, so a refusal
//! leaves the copy as it was.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::{ByteSize, Compression, Replica, Span};
use crate::control;
use crate::hooks::Moment;
use crate::replication::{
    AutoFailover, ELECTED_CONFIG, Elected, Peers, Promotion, Reach, VolumeKey, inspect_copy,
    load_key_file, load_peers, peer_positions, promote_volume,
};
use crate::status::Status;
use crate::types::Name;

use super::{CliError, PromoteArgs, RejoinArgs};

/// Runs `mirrorfs promote`.
pub fn run(args: PromoteArgs) -> Result<(), CliError> {
    Name::new(std::ffi::OsStr::new(&args.volume))
        .map_err(|error| CliError::Usage(format!("--volume {:?}: {error}", args.volume)))?;
    if args.write_config.exists() {
        return Err(CliError::Usage(format!(
            "--write-config {}: the file exists (a config is never overwritten)",
            args.write_config.display()
        )));
    }
    let dir = std::path::absolute(&args.dir)
        .map_err(|error| CliError::Usage(format!("--dir {}: {error}", args.dir.display())))?;
    let root = dir.join(&args.volume);
    let failed = |error: &dyn std::fmt::Display| CliError::Failure(error.to_string());
    let peers = load_peers(&root).map_err(|e| failed(&e))?;
    let replicas = match args.replicas.is_empty() {
        false => parse_replicas(&args.replicas)?,
        // The old primary's other replicas follow the new one.
        true => peers.as_ref().map_or_else(Vec::new, |peers| {
            peers
                .replicas
                .iter()
                .filter(|replica| replica.name != peers.this)
                .cloned()
                .collect()
        }),
    };
    let key_file = match args.key_file {
        Some(key_file) => Some(key_file),
        None => load_key_file(&root).map_err(|e| failed(&e))?,
    };
    if !replicas.is_empty() && key_file.is_none() {
        return Err(CliError::Usage(
            "the volume's key file is not known here: give --key-file".to_string(),
        ));
    }
    // The name the volume's replication knows this copy by: the epoch is granted to it.
    let candidate = peers.as_ref().map(|peers| peers.this.clone());
    if let Some(key_file) = key_file.as_deref().filter(|_| !replicas.is_empty()) {
        let own = peers.as_ref().and_then(|peers| {
            peers
                .replicas
                .iter()
                .find(|replica| replica.name == peers.this)
                .cloned()
        });
        let plaintext = peers.as_ref().is_some_and(|peers| peers.plaintext);
        compare_with_peers(
            &Asking {
                root: &root,
                volume: &args.volume,
                own: own.as_ref(),
                candidate: candidate.as_deref(),
                replicas: &replicas,
                key_file,
                plaintext,
            },
            args.unclean,
        )?;
    }
    // A standby mount of the copy is promoted in place, at its own mount point.
    let standby_dir = root.join(STANDBY_DIR);
    let standby = running_standby(&root);
    let mountpoint = args
        .mountpoint
        .as_deref()
        .or(standby.as_ref().map(|status| status.mountpoint.as_path()));
    let write_config = std::path::absolute(&args.write_config).map_err(|error| {
        CliError::Usage(format!(
            "--write-config {}: {error}",
            args.write_config.display()
        ))
    })?;
    let promotion = promote_volume(&dir, &args.volume, args.unclean, candidate.as_deref())
        .map_err(|e| failed(&e))?;
    let config = render_config(&Config {
        volume: &args.volume,
        root: &root,
        mountpoint,
        promotion: &promotion,
        peers: peers.as_ref(),
        replicas: &replicas,
        key_file: key_file.as_deref(),
    });
    crate::durable::replace(&args.write_config, config).map_err(|error| {
        CliError::Failure(format!(
            "promoted at epoch {}, but the config could not be written to {}: {error}",
            promotion.epoch,
            args.write_config.display()
        ))
    })?;
    println!(
        "volume {} promoted to primary at epoch {}: its log continues at offset {}",
        args.volume, promotion.epoch, promotion.next
    );
    if let Some(unvouched) = &promotion.unvouched {
        println!(
            "unclean: offsets {} to {} ({} records) were held by the old primary's in-sync replicas but not by this copy: they may be lost",
            unvouched.start,
            unvouched.end,
            unvouched.end - unvouched.start
        );
    }
    let in_place = match standby {
        None => None,
        Some(status) => Some((
            status.mountpoint,
            super::standby::hand_over(&standby_dir, &write_config),
        )),
    };
    match in_place {
        Some((mountpoint, Ok(Some(epoch)))) => println!(
            "config written to {}; the standby mounted at {} serves the volume read-write now (promoted in place at epoch {epoch})",
            write_config.display(),
            mountpoint.display()
        ),
        Some((mountpoint, Err(error))) => {
            return Err(CliError::Failure(format!(
                "promoted, but the standby mounted at {} could not take over in place: {}; unmount it and serve the config with: mirrorfs mount --config {}",
                mountpoint.display(),
                error.message(),
                write_config.display()
            )));
        }
        _ => println!(
            "config written to {}; serve it with: mirrorfs mount --config {}",
            write_config.display(),
            write_config.display()
        ),
    }
    if let Some(hook) = peers.as_ref().and_then(|peers| peers.on_promote.as_deref()) {
        on_promote(hook, &args.volume, promotion.epoch, &write_config)
            .map_err(|error| CliError::Failure(format!("promoted, but {error}")))?;
        println!("on_promote ran: {hook}");
    }
    Ok(())
}

/// Where a standby mount of a copy keeps its state, in the copy's directory.
const STANDBY_DIR: &str = "standby";

/// The status of the standby mount of the copy in `root`, if one runs.
fn running_standby(root: &Path) -> Option<Status> {
    control::query::<Status>(&root.join(STANDBY_DIR))
        .ok()
        .filter(|status| status.standby.is_some())
}

/// Runs the `on_promote` hook `hook` for volume `volume`, promoted at `epoch` and served by
/// the config at `config`; why it failed, if it did.
fn on_promote(hook: &str, volume: &str, epoch: u32, config: &Path) -> Result<(), String> {
    let moment = Moment {
        volume,
        epoch,
        role: "primary",
        config: Some(config),
    };
    match crate::hooks::run(hook, moment) {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("on_promote ({hook}) failed: {status}")),
        Err(error) => Err(format!("on_promote ({hook}) could not run: {error}")),
    }
}

/// Serves a copy a replica node promoted after winning an election: writes the new
/// primary's config beside it, promotes a standby mount of the copy in place if one runs
/// (else the config mounts where the old primary did), and runs `on_promote`, which is
/// told the config (`MIRRORFS_CONFIG`). The old primary is listed as a replica where its
/// config said its node would serve once it rejoins. Every step is logged.
pub fn serve_elected(elected: Elected) {
    let Elected {
        volume,
        root,
        promotion,
        peers,
    } = elected;
    let Some(auto) = peers.failover.as_ref() else {
        return;
    };
    let epoch = promotion.epoch;
    let mut replicas: Vec<Replica> = peers
        .replicas
        .iter()
        .filter(|replica| replica.name != peers.this)
        .cloned()
        .collect();
    if let Some(address) = &auto.primary_address {
        replicas.push(Replica {
            name: auto.primary.clone(),
            address: address.clone(),
        });
    }
    let key_file = match load_key_file(&root) {
        Ok(key_file) => key_file,
        Err(error) => {
            tracing::error!(%volume, epoch, %error, "elected, but the volume's key file is not known here: the config lists no replicas");
            None
        }
    };
    let standby = running_standby(&root);
    let mountpoint = standby
        .as_ref()
        .map_or(auto.mountpoint.as_path(), |status| {
            status.mountpoint.as_path()
        });
    let path = root.join(ELECTED_CONFIG);
    let text = render_config(&Config {
        volume: &volume,
        root: &root,
        mountpoint: Some(mountpoint),
        promotion: &promotion,
        peers: Some(&peers),
        replicas: &replicas,
        key_file: key_file.as_deref(),
    });
    if let Err(error) = crate::durable::replace(&path, text) {
        tracing::error!(%volume, epoch, config = %path.display(), %error, "elected, but the config could not be written: nothing serves the volume");
        return;
    }
    let in_place = standby
        .is_some()
        .then(|| super::standby::hand_over(&root.join(STANDBY_DIR), &path));
    match in_place {
        Some(Ok(Some(_))) => {
            tracing::warn!(%volume, epoch, mountpoint = %mountpoint.display(), "the standby serves the volume read-write now: promoted in place")
        }
        Some(Ok(None)) | None => {
            tracing::warn!(%volume, epoch, config = %path.display(), "elected: serve the copy with mirrorfs mount --config (on_promote is told it in MIRRORFS_CONFIG)")
        }
        Some(Err(error)) => {
            tracing::error!(%volume, epoch, config = %path.display(), error = %error.message(), "elected, but the standby could not take over in place: unmount it and serve the config with mirrorfs mount --config")
        }
    }
    if let Some(hook) = &peers.on_promote {
        match on_promote(hook, &volume, epoch, &path) {
            Ok(()) => tracing::info!(%volume, epoch, %hook, "on_promote ran"),
            Err(error) => tracing::error!(%volume, epoch, %error, "on_promote"),
        }
    }
}

/// Whom a promotion asks, and as whom.
struct Asking<'a> {
    /// The copy being promoted.
    root: &'a Path,
    volume: &'a str,
    /// This copy's own node, as the volume's replication knows it.
    own: Option<&'a Replica>,
    /// This copy's replica name, the epoch's candidate.
    candidate: Option<&'a str>,
    /// The other replicas.
    replicas: &'a [Replica],
    key_file: &'a Path,
    plaintext: bool,
}

/// Refuses (unless `unclean`) to promote the copy when another replica's copy reaches
/// further: that one may hold acknowledged records this one lacks; and refuses when
/// another replica was promoted already. Replicas that cannot be asked are named, and do
/// not stop the promotion. Then asks this copy's own node, and every other replica's, to
/// grant the next epoch to this promotion (each grants an epoch once, so of two
/// promotions racing one goes on).
fn compare_with_peers(asking: &Asking<'_>, unclean: bool) -> Result<(), CliError> {
    let key =
        VolumeKey::read(asking.key_file).map_err(|error| CliError::Usage(error.to_string()))?;
    let copy = inspect_copy(asking.root).map_err(|error| CliError::Failure(error.to_string()))?;
    let ours = copy.next;
    for peer in peer_positions(asking.volume, asking.replicas, &key, asking.plaintext, None) {
        match peer.reach {
            Reach::Promoted(epoch) => {
                return Err(CliError::Failure(format!(
                    "replica {} was promoted to primary already, at epoch {epoch}: the volume has a primary",
                    peer.name
                )));
            }
            Reach::Next(next) if next > ours && !unclean => {
                return Err(CliError::Failure(format!(
                    "replica {} holds records up to {next}, past this copy's {ours}: promote it instead (--unclean promotes this one, losing what it lacks)",
                    peer.name
                )));
            }
            Reach::Next(next) if next > ours => println!(
                "unclean: replica {} holds records up to {next}, past this copy's {ours}: they may be lost",
                peer.name
            ),
            Reach::Next(_) | Reach::Refused(_) => {}
            Reach::Unknown(why) => println!(
                "replica {} could not be asked where its copy reaches ({why}): not compared",
                peer.name
            ),
        }
    }
    let Some(candidate) = asking.candidate else {
        return Ok(());
    };
    let grant = Some((copy.epoch + 1, candidate.to_string()));
    // Its own node first: a promotion of another copy that reached it first holds the
    // epoch there, or yields it to this one (see `replication::grant`). A node not
    // running grants nothing to anyone: nothing to settle there.
    let own: Vec<Replica> = asking.own.cloned().into_iter().collect();
    let granting = peer_positions(asking.volume, &own, &key, asking.plaintext, grant.clone())
        .into_iter()
        .chain(peer_positions(
            asking.volume,
            asking.replicas,
            &key,
            asking.plaintext,
            grant,
        ));
    for peer in granting {
        let why = match peer.reach {
            Reach::Refused(why) => why,
            Reach::Promoted(epoch) => format!("it was promoted to primary at epoch {epoch}"),
            Reach::Next(_) | Reach::Unknown(_) => continue,
        };
        return Err(CliError::Failure(format!(
            "replica {} did not grant epoch {} to this promotion: {why}",
            peer.name,
            copy.epoch + 1
        )));
    }
    Ok(())
}

/// Runs `mirrorfs rejoin`.
pub fn rejoin(args: RejoinArgs) -> Result<(), CliError> {
    let usage = |error: &dyn std::fmt::Display| CliError::Usage(error.to_string());
    let raw = crate::config::Config::read(&args.config).map_err(|e| usage(&e))?;
    let absolute = |path: PathBuf| std::path::absolute(&path).map_err(|e| usage(&e));
    let named = |given: Option<PathBuf>, in_file: Option<PathBuf>, what: &str| {
        given
            .or(in_file)
            .ok_or_else(|| CliError::Usage(format!("give --{what} (the config names none)")))
            .and_then(absolute)
    };
    let id = raw
        .volume
        .id
        .clone()
        .ok_or_else(|| CliError::Usage("the config names no volume id".to_string()))?;
    let source = named(args.source, raw.volume.source.clone(), "source")?;
    let state_dir = named(args.state_dir, raw.volume.state_dir.clone(), "state-dir")?;
    let dir = absolute(args.dir)?;
    let rejoined = crate::replication::rejoin(&id, &source, &state_dir, &dir)
        .map_err(|error| CliError::Failure(error.to_string()))?;
    println!(
        "volume {id} ({}) is a copy in {} now, its log ending at offset {}; start a node there \
         (mirrorfs replica serve --dir {} --volume {id}=KEY_FILE) and make it a replica of the \
         new primary: its records past the divergence point are kept aside when it first connects \
         (mirrorfs replica status --dir {} then shows how many, their bytes and paths)",
        rejoined.fence,
        rejoined.root.display(),
        rejoined.next,
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// `NAME=HOST:PORT` arguments as replicas.
fn parse_replicas(args: &[String]) -> Result<Vec<Replica>, CliError> {
    args.iter()
        .map(|arg| match arg.split_once('=') {
            Some((name, address)) if !name.is_empty() && !address.is_empty() => Ok(Replica {
                name: name.to_string(),
                address: address.to_string(),
            }),
            _ => Err(CliError::Usage(format!(
                "--replica {arg:?}: expected NAME=HOST:PORT"
            ))),
        })
        .collect()
}

/// What the new primary's config says.
struct Config<'a> {
    volume: &'a str,
    root: &'a Path,
    mountpoint: Option<&'a Path>,
    promotion: &'a Promotion,
    peers: Option<&'a Peers>,
    replicas: &'a [Replica],
    key_file: Option<&'a Path>,
}

/// The new primary's mount config: the copy's tree as its source, the copy's directory
/// as its state (the log continues there), and its replicas, with what fsync waited for
/// on the old primary; with automatic failover, the same `[failover]` under the copy's
/// replica name.
fn render_config(config: &Config<'_>) -> String {
    let quote = |path: &Path| toml_string(&path.display().to_string());
    let mut text = format!(
        "# Written by `mirrorfs promote`: volume {} promoted to primary at epoch {}.\n\
         # The source is the copy's tree; the state is the copy's directory, whose log\n\
         # continues at offset {}.\n\n[volume]\nid = {}\nsource = {}\nstate_dir = {}\n",
        config.volume,
        config.promotion.epoch,
        config.promotion.next,
        toml_string(config.volume),
        quote(&config.root.join("data")),
        quote(config.root),
    );
    if let Some(mountpoint) = config.mountpoint {
        let _ = writeln!(text, "mountpoint = {}", quote(mountpoint));
    }
    let (Some(key_file), false) = (config.key_file, config.replicas.is_empty()) else {
        return text;
    };
    let _ = write!(text, "\n[replication]\nkey_file = {}\n", quote(key_file));
    if let Some(peers) = config.peers {
        let acks = serde_json::to_value(peers.acks).unwrap_or_default();
        let on_insufficient = serde_json::to_value(peers.on_insufficient).unwrap_or_default();
        // No more in sync than there are replicas left.
        let min_insync = peers.min_insync.min(config.replicas.len() as u32).max(1);
        let _ = write!(
            text,
            "acks = {acks}\nmin_insync = {min_insync}\non_insufficient = {on_insufficient}\n"
        );
        if peers.plaintext {
            text.push_str("plaintext = true\n");
        }
        if peers.compression == Compression::Zstd {
            text.push_str("compression = \"zstd\"\n");
        }
        if let Some(rate) = peers.rate_bytes_max {
            let _ = writeln!(
                text,
                "rate_bytes_max = {}",
                toml_string(&ByteSize(rate).to_string())
            );
        }
        for (key, ms) in [
            ("ack_timeout", peers.ack_timeout_ms),
            ("lag_max", peers.lag_max_ms),
        ] {
            if let Some(ms) = ms {
                let span = Span(std::time::Duration::from_millis(ms)).to_string();
                let _ = writeln!(text, "{key} = {}", toml_string(&span));
            }
        }
        for (key, hook) in [
            ("on_promote", &peers.on_promote),
            ("on_fenced", &peers.on_fenced),
        ] {
            if let Some(hook) = hook {
                let _ = writeln!(text, "{key} = {}", toml_string(hook));
            }
        }
    }
    for replica in config.replicas {
        let _ = write!(
            text,
            "\n[[replication.replicas]]\nname = {}\naddress = {}\n",
            toml_string(&replica.name),
            toml_string(&replica.address)
        );
    }
    if let Some(peers) = config.peers
        && let Some(auto) = &peers.failover
    {
        render_failover(&mut text, peers, auto);
    }
    text
}

/// The `[failover]` of a copy promoted from a primary that had `auto`: the same voters'
/// timings and witnesses, under the copy's replica name, its node's address as where it
/// serves once it rejoins.
fn render_failover(text: &mut String, peers: &Peers, auto: &AutoFailover) {
    let failover = auto.config(peers.replicas.len());
    let _ = write!(
        text,
        "\n[failover]\nmode = \"auto\"\nname = {}\nlease = {}\nclock_rate_bound = {}\nunclean = {}\n",
        toml_string(&peers.this),
        toml_string(&Span(failover.lease).to_string()),
        failover.clock_rate_bound,
        failover.unclean,
    );
    if let Some(own) = peers
        .replicas
        .iter()
        .find(|replica| replica.name == peers.this)
    {
        let _ = writeln!(text, "address = {}", toml_string(&own.address));
    }
    for witness in &auto.witnesses {
        let _ = write!(
            text,
            "\n[[failover.witnesses]]\nname = {}\naddress = {}\n",
            toml_string(&witness.name),
            toml_string(&witness.address)
        );
    }
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Acks, OnInsufficient};

    fn replica(name: &str, address: &str) -> Replica {
        Replica {
            name: name.to_string(),
            address: address.to_string(),
        }
    }

    /// The config of volume "vol" promoted in `root`, mounted at /mnt/vol, its key in
    /// /etc/vol.key.
    fn render(root: &Path, promotion: &Promotion, peers: &Peers, replicas: &[Replica]) -> String {
        render_config(&Config {
            volume: "vol",
            root,
            mountpoint: Some(Path::new("/mnt/vol")),
            promotion,
            peers: Some(peers),
            replicas,
            key_file: Some(Path::new("/etc/vol.key")),
        })
    }

    /// What the old primary told replica `this`: acks "all" with one in sync, nothing else.
    fn peers(this: &str, replicas: Vec<Replica>) -> Peers {
        Peers {
            this: this.to_string(),
            replicas,
            acks: Acks::All,
            min_insync: 1,
            on_insufficient: OnInsufficient::Fail,
            plaintext: false,
            on_promote: None,
            on_fenced: None,
            failover: None,
            ack_timeout_ms: None,
            lag_max_ms: None,
            compression: Compression::None,
            rate_bytes_max: None,
        }
    }

    #[test]
    fn the_config_names_the_copy_and_the_other_replicas() {
        let promotion = Promotion {
            epoch: 3,
            next: 120,
            unvouched: None,
            whole: false,
        };
        let peers = Peers {
            acks: Acks::Quorum,
            min_insync: 2,
            on_insufficient: OnInsufficient::Wait,
            on_promote: Some("echo \"$MIRRORFS_ROLE\" > /run/role".to_string()),
            ack_timeout_ms: Some(4000),
            ..peers("r1", Vec::new())
        };
        let replicas = [replica("r2", "10.0.0.3:7000")];
        let root = std::path::PathBuf::from("/srv/node/vol \"x\"");
        let text = render(&root, &promotion, &peers, &replicas);
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            parsed["volume"]["source"].as_str(),
            Some("/srv/node/vol \"x\"/data")
        );
        assert_eq!(
            parsed["volume"]["state_dir"].as_str(),
            Some("/srv/node/vol \"x\"")
        );
        assert_eq!(parsed["replication"]["acks"].as_str(), Some("quorum"));
        assert_eq!(parsed["replication"]["min_insync"].as_integer(), Some(1));
        assert_eq!(
            parsed["replication"]["on_insufficient"].as_str(),
            Some("wait")
        );
        assert_eq!(parsed["replication"]["ack_timeout"].as_str(), Some("4s"));
        assert_eq!(
            parsed["replication"]["on_promote"].as_str(),
            Some("echo \"$MIRRORFS_ROLE\" > /run/role")
        );
        assert_eq!(
            parsed["replication"]["replicas"][0]["address"].as_str(),
            Some("10.0.0.3:7000")
        );
        let alone = render(&root, &promotion, &peers, &[]);
        assert!(!alone.contains("[replication]"), "{alone}");
    }

    /// A copy elected under automatic failover is configured for it too: the same
    /// timings and witnesses, under its own name, and the config resolves.
    #[test]
    fn an_elected_copy_keeps_automatic_failover_under_its_own_name() {
        let promotion = Promotion {
            epoch: 4,
            next: 9,
            unvouched: None,
            whole: true,
        };
        let peers = Peers {
            lag_max_ms: Some(2500),
            failover: Some(AutoFailover {
                primary: "p".to_string(),
                primary_address: Some("10.0.0.1:7071".to_string()),
                mountpoint: "/mnt/vol".into(),
                lease_ms: 3000,
                clock_rate_bound_ppm: 1_200_000,
                unclean: false,
                witnesses: vec![replica("w", "10.0.0.9:7080")],
            }),
            ..peers(
                "r1",
                vec![
                    replica("r1", "10.0.0.2:7071"),
                    replica("r2", "10.0.0.3:7071"),
                ],
            )
        };
        let replicas = [
            replica("r2", "10.0.0.3:7071"),
            replica("p", "10.0.0.1:7071"),
        ];
        let root = std::path::PathBuf::from("/srv/node/vol");
        let text = render(&root, &promotion, &peers, &replicas);
        let raw = crate::config::Config::parse(Path::new("primary.toml"), &text).unwrap();
        let config =
            crate::config::Config::resolve(raw, Default::default(), Path::new("/")).unwrap();
        let failover = &config.failover;
        assert!(failover.is_auto(), "{text}");
        assert_eq!(failover.name.as_deref(), Some("r1"));
        assert_eq!(failover.address.as_deref(), Some("10.0.0.2:7071"));
        assert_eq!(failover.lease, std::time::Duration::from_secs(3));
        assert_eq!(failover.clock_rate_bound, 1.2);
        assert_eq!(failover.witnesses[0].name, "w");
        // The new primary, its replicas r2 and the old primary p, and w.
        assert_eq!(failover.voters, 4);
        let replication = config.replication.as_ref().unwrap();
        assert_eq!(replication.lag_max, std::time::Duration::from_millis(2500));
    }
}
