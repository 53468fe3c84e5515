//! The command line: parsing, dispatch to one module per command, and exit codes
//! (0 success, 2 usage or config error, 1 any other failure; one line on stderr).

mod keygen;
mod log;
mod mount;
mod mountinfo;
mod options;
mod promote;
mod ready;
mod registry;
mod replica;
mod standby;
mod status;
mod unmount;
mod verify;
mod volume;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

/// mirrorfs: a directory mirrored through a FUSE mount.
#[derive(Debug, Parser)]
#[command(name = "mirrorfs", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount SOURCE at MOUNTPOINT and serve it until unmounted (SIGINT/SIGTERM unmount).
    Mount(MountArgs),
    /// Unmount a mirrorfs mount (also one whose daemon has died).
    Unmount(UnmountArgs),
    /// Print a volume's change log, or its sizes with --stats (works while mounted).
    Log(LogArgs),
    /// Show a mounted volume's state: write policy, dirty data, flushing, the log.
    Status(StatusArgs),
    /// List the mirrorfs volumes mounted on this machine: mount point, volume, state
    /// directory, config, daemon.
    List(ListArgs),
    /// Write a new random volume key to standard output (`mirrorfs keygen > FILE`; the file
    /// is made mode 0600).
    Keygen,
    /// Run a replica node, which keeps copies of volumes for their primaries.
    #[command(subcommand)]
    Replica(ReplicaCommand),
    /// Run a witness: a voter for automatic failover that keeps no copy, only, per volume,
    /// the epoch it granted and the lease it holds to (the third vote of two machines).
    #[command(subcommand)]
    Witness(WitnessCommand),
    /// Check that the replicas hold what the primary holds and that nothing rotted, and
    /// repair from the copy to trust (exit 0 clean, 1 all repaired, 4 differences left,
    /// 8 something could not be checked, 16 usage; added up as fsck's).
    Verify(VerifyArgs),
    /// Make a replica's copy of a volume its new primary at the next epoch, and write the
    /// mount config that serves it (`mirrorfs mount --config FILE`); the node may be
    /// running or not. The old primary is fenced once it reaches a replica.
    Promote(PromoteArgs),
    /// Make a fenced old primary a replica of the new one: its origin and state move into
    /// a node's directory as the volume's copy (by rename), for a node started there.
    Rejoin(RejoinArgs),
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell):
    /// `mirrorfs completions bash > /etc/bash_completion.d/mirrorfs`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `mirrorfs manpage > /usr/local/share/man/man8/mirrorfs.8`.
    Manpage,
}

/// Arguments of `mirrorfs rejoin`.
#[derive(Debug, Args)]
pub struct RejoinArgs {
    /// The old primary's mount config (its [volume] id, source and state_dir).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The origin, if the config does not name it.
    #[arg(long, value_name = "DIR")]
    source: Option<PathBuf>,
    /// The state directory, if the config does not name it.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The node directory the copy moves into (on the same filesystem).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

/// Arguments of `mirrorfs promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The replica node's directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The volume whose copy becomes the primary.
    #[arg(long, value_name = "ID")]
    volume: String,
    /// Where to write the new primary's mount config (refused if the file exists).
    #[arg(long, value_name = "FILE")]
    write_config: PathBuf,
    /// Promote even a copy that was behind what every in-sync replica held (Kafka's
    /// unclean leader election), printing the offsets it cannot vouch for.
    #[arg(long)]
    unclean: bool,
    /// A replica the new primary streams to, as NAME=HOST:PORT (repeatable); by default
    /// the volume's other replicas, as its old primary last named them.
    #[arg(long = "replica", value_name = "NAME=ADDR")]
    replicas: Vec<String>,
    /// The volume's key file, for the config's [replication] (by default, the one the
    /// node was given).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// The mount point to put in the config.
    #[arg(long, value_name = "DIR")]
    mountpoint: Option<PathBuf>,
}

/// Arguments of `mirrorfs verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Where the volume is mounted (instead of --config).
    #[arg(
        value_name = "MOUNTPOINT",
        conflicts_with = "config",
        required_unless_present = "config"
    )]
    mountpoint: Option<PathBuf>,
    /// The volume's mount config.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Compare metadata and stored hashes only; no file content is read (the default).
    #[arg(long, conflicts_with = "content")]
    quick: bool,
    /// Also read and hash every file's content on each copy.
    #[arg(long)]
    content: bool,
    /// Repair what is found from the copy to trust, then check it again.
    #[arg(long)]
    repair: bool,
    /// One JSON object with every finding.
    #[arg(long)]
    json: bool,
    /// Read only this percentage of the files, those verified longest ago first.
    #[arg(long, value_name = "PERCENT")]
    sample: Option<f64>,
    /// Read at most this much content (e.g. 10GiB), oldest verified first.
    #[arg(long, value_name = "SIZE")]
    max_bytes: Option<String>,
    /// Stop reading content after this long (e.g. 10m); the next run goes on from there.
    #[arg(long, value_name = "TIME")]
    max_duration: Option<String>,
    /// Read content at most this fast, per second (e.g. 200MiB).
    #[arg(long, value_name = "SIZE")]
    max_rate: Option<String>,
    /// Cancel the run under way on the mounted volume (a client's or a scheduled one);
    /// what it read counts, and the next run goes on from there.
    #[arg(long, conflicts_with_all = ["content", "repair", "quick"])]
    cancel: bool,
    /// Check only this replica (repeatable; default: all).
    #[arg(long = "replica", value_name = "NAME")]
    replicas: Vec<String>,
    /// Check only this subtree of the volume (e.g. /photos/2026).
    #[arg(long, value_name = "SUBTREE")]
    path: Option<String>,
    /// Check the primary alone: its content against its own stored hashes (rot).
    #[arg(long, conflicts_with = "replicas")]
    primary_only: bool,
}

/// `mirrorfs witness ...`.
#[derive(Debug, Subcommand)]
enum WitnessCommand {
    /// Serve volumes' votes until SIGINT/SIGTERM: `--config FILE`, or `--listen`, `--dir`
    /// and `--volume ID=KEY_FILE` (repeatable), as `replica serve` takes them.
    Serve(ServeArgs),
}

/// `mirrorfs replica ...`.
#[derive(Debug, Subcommand)]
enum ReplicaCommand {
    /// Serve volumes' copies until SIGINT/SIGTERM: `--config FILE`, or `--listen`, `--dir`
    /// and `--volume ID=KEY_FILE` (repeatable); command-line values win over the file.
    Serve(ServeArgs),
    /// How the node's copies stand: each volume's offsets and last contact (from the running
    /// node, or from its files when it is not running).
    Status(ReplicaStatusArgs),
}

/// Arguments of `mirrorfs replica status`.
#[derive(Debug, Args)]
pub struct ReplicaStatusArgs {
    /// The node's directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

/// Arguments of `mirrorfs replica serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A node config (TOML: listen, dir, [[volumes]] id and key_file).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, ip:port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// The directory holding one copy per volume.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// A volume to keep, and its key file.
    #[arg(long = "volume", value_name = "ID=KEY_FILE")]
    volumes: Vec<String>,
    /// Serve Prometheus metrics at ADDR (ip:port), GET /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

/// Arguments of `mirrorfs mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// The directory to serve (the origin).
    source: Option<PathBuf>,
    /// Where to mount it.
    mountpoint: Option<PathBuf>,
    /// A mount config (TOML); command-line values win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// mirrorfs's own files for this volume (default: /var/lib/mirrorfs/ID for root).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The volume's id (default: SOURCE's name and a hash of its path).
    #[arg(long)]
    id: Option<String>,
    /// Let other users use the mount; permissions are checked as on a local filesystem.
    #[arg(long)]
    allow_other: bool,
    /// Mount a replica's copy read-only, while its node keeps applying the stream:
    /// `mirrorfs mount --standby --dir DIR --volume ID MOUNTPOINT`.
    #[arg(long, requires_all = ["dir", "volume"])]
    standby: bool,
    /// With --standby: the replica node's directory.
    #[arg(long, value_name = "DIR", requires = "standby")]
    dir: Option<PathBuf>,
    /// With --standby: the volume whose copy is mounted.
    #[arg(long, value_name = "ID", requires = "standby")]
    volume: Option<String>,
    /// Serve in this process until unmounted (for supervisors; under systemd's
    /// Type=notify it says READY=1 once mounted). Without it, the daemon runs in the
    /// background and this command returns once the mount is up, or with its error.
    #[arg(short, long)]
    foreground: bool,
    /// Where a background daemon logs (default: daemon.log in the state directory).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// mount(8) options, as an fstab line gives them: config=FILE, state_dir=DIR, id=ID,
    /// log_file=FILE, allow_other, ro, rw, [no]suid, [no]dev, [no]exec, noatime,
    /// relatime, strictatime (nosuid and nodev unless said otherwise).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Ignore mount options mirrorfs does not know (mount's -s).
    #[arg(long, hide = true)]
    sloppy: bool,
}

/// Arguments of `mirrorfs unmount`.
#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// The mount point.
    mountpoint: PathBuf,
    /// Detach now even if files are open; it goes away when they are closed.
    #[arg(long)]
    lazy: bool,
}

/// Which volume a command is about: where it is mounted, its mount config, or its state
/// directory.
#[derive(Debug, Args)]
pub struct VolumeArgs {
    /// Where the volume is mounted (instead of --config or --state-dir).
    #[arg(value_name = "MOUNTPOINT", conflicts_with_all = ["config", "state_dir"],
          required_unless_present_any = ["config", "state_dir"])]
    mountpoint: Option<PathBuf>,
    /// The volume's mount config.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The volume's state directory (instead of --config).
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    state_dir: Option<PathBuf>,
}

/// Arguments of `mirrorfs list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// One JSON array.
    #[arg(long)]
    json: bool,
}

impl VolumeArgs {
    /// The state directory of the volume mounted at MOUNTPOINT, named by `--state-dir`, or
    /// by the config's `[volume]`.
    fn state_dir(&self) -> Result<PathBuf, CliError> {
        if let Some(point) = &self.mountpoint {
            return registry::find(point)
                .map(|entry| entry.state_dir)
                .map_err(CliError::Failure);
        }
        if let Some(dir) = &self.state_dir {
            return Ok(dir.clone());
        }
        let path = self.config.as_ref().ok_or_else(|| {
            CliError::Usage("give --config FILE or --state-dir DIR to name the volume".to_string())
        })?;
        let usage = |error: crate::config::ConfigError| CliError::Usage(error.to_string());
        let raw = crate::config::Config::read(path).map_err(usage)?;
        let cwd = std::env::current_dir().map_err(|error| {
            CliError::Failure(format!("cannot read the current directory: {error}"))
        })?;
        let config =
            crate::config::Config::resolve(raw, Default::default(), &cwd).map_err(usage)?;
        Ok(config.volume.state_dir)
    }
}

/// Arguments of `mirrorfs status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    volume: VolumeArgs,
    /// One JSON object.
    #[arg(long, conflicts_with = "check")]
    json: bool,
    /// Exit 0, printing nothing, only if this volume is mounted here as an unfenced
    /// primary (for keepalived's vrrp_script); otherwise say why in one line, exit 1.
    #[arg(long)]
    check: bool,
}

/// Arguments of `mirrorfs log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(flatten)]
    volume: VolumeArgs,
    /// The first offset to print (default: the oldest kept).
    #[arg(long, value_name = "OFFSET", conflicts_with = "stats")]
    from: Option<u64>,
    /// Print first and next offset, segment count and bytes instead of records.
    #[arg(long)]
    stats: bool,
    /// Keep printing records as they are appended, until interrupted.
    #[arg(long, short = 'f', conflicts_with = "stats")]
    follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

/// A failed command: usage errors exit 2, everything else 1.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments, config or environment for the command (exit 2).
    Usage(String),
    /// The command was right but could not be done (exit 1).
    Failure(String),
    /// A command with exit codes of its own (verify's, as fsck's), and its line (if any).
    Exit(i32, String),
}

impl CliError {
    /// The error's line.
    pub fn message(&self) -> String {
        match self {
            CliError::Usage(message) | CliError::Failure(message) | CliError::Exit(_, message) => {
                message.clone()
            }
        }
    }
}

/// Runs the command line `args` and returns the process's exit code.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().collect();
    // Called by mount(8) (as mount.fuse.mirrorfs) or by mount.fuse3.
    let args = match options::from_helper(&args) {
        None => args,
        Some(Ok(rewritten)) => rewritten,
        Some(Err(())) => return ExitCode::SUCCESS,
    };
    // verify's usage errors exit as fsck's do.
    let usage_code = match args.get(1).and_then(|arg| arg.to_str()) {
        Some("verify") => crate::verify::exit::USAGE as u8,
        _ => 2,
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) => return clap_exit(error, usage_code),
    };
    // verify's output is its report; the parts it starts (replica senders) keep quiet.
    init_logging(match cli.command {
        Command::Verify(_) => "warn",
        _ => "info",
    });
    let result = match cli.command {
        Command::Mount(mount) if !mount.foreground => ready::start_in_background(&args),
        Command::Mount(args) => mount::run(args),
        Command::Unmount(args) => unmount::run(args),
        Command::Log(args) => log::run(args),
        Command::Status(args) => status::run(args),
        Command::List(args) => registry::run_list(args.json),
        Command::Keygen => keygen::run(),
        Command::Replica(ReplicaCommand::Serve(args)) => replica::serve(args),
        Command::Replica(ReplicaCommand::Status(args)) => replica::status(args),
        Command::Witness(WitnessCommand::Serve(args)) => replica::serve_witness(args),
        Command::Verify(args) => verify::run(args),
        Command::Promote(args) => promote::run(args),
        Command::Rejoin(args) => promote::rejoin(args),
        Command::Completions { shell } => {
            // Made in memory: clap_complete panics on a write error (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mirrorfs", &mut script);
            print_all(&script)
        }
        Command::Manpage => {
            let mut page = Vec::new();
            match clap_mangen::Man::new(Cli::command())
                .section("8")
                .render(&mut page)
            {
                Ok(()) => print_all(&page),
                Err(error) => Err(CliError::Failure(format!(
                    "cannot render the man page: {error}"
                ))),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(message)) => {
            eprintln!("mirrorfs: {message}");
            ExitCode::from(2)
        }
        Err(CliError::Failure(message)) => {
            eprintln!("mirrorfs: {message}");
            ExitCode::from(1)
        }
        Err(CliError::Exit(code, message)) => {
            if !message.is_empty() {
                eprintln!("mirrorfs: {message}");
            }
            ExitCode::from(code.clamp(0, 255) as u8)
        }
    }
}

/// Help and version print as clap renders them; a usage error becomes one line.
fn clap_exit(error: clap::Error, usage_code: u8) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            ExitCode::from(error.exit_code() as u8)
        }
        _ => {
            eprintln!(
                "mirrorfs: {} (see 'mirrorfs --help')",
                one_line(&error.to_string())
            );
            ExitCode::from(usage_code)
        }
    }
}

/// Writes `bytes` to stdout; a reader that stopped early (`| head`) is no error.
fn print_all(bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::Failure(format!("cannot write output: {error}")))
        }
        _ => Ok(()),
    }
}

/// clap's rendering of a usage error in one line: its first, with what a list it
/// announces holds ("the following required arguments were not provided: --config <FILE>").
fn one_line(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or("invalid arguments");
    let mut message = first.strip_prefix("error: ").unwrap_or(first).to_string();
    if message.ends_with(':') {
        let listed: Vec<&str> = lines
            .take_while(|line| !line.trim().is_empty())
            .map(str::trim)
            .collect();
        message = format!("{} {}", message, listed.join(", "));
    }
    message
}

/// Log lines go to stderr (a background daemon's, to its log file once mounted);
/// MIRRORFS_LOG sets the filter (e.g. "debug"), else `default` and the kernel boundary's
/// own quieting (`fuse::QUIET_LOG_FILTER`).
fn init_logging(default: &str) {
    let default = format!("{default},{}", crate::fuse::QUIET_LOG_FILTER);
    let colour =
        std::io::IsTerminal::is_terminal(&std::io::stderr()) && !ready::is_background_child();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIRRORFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&default));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(colour)
        .try_init();
}
