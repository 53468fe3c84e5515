//! `mirrorfs verify`: runs the check in the mount daemon when the volume is mounted (asked
//! over the control socket, progress coming back line by line), or in this process on
//! the volume opened headless when it is not; and the daemon's own scheduled runs.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{ByteSize, human};
use crate::config::{Config, Overrides, RawConfig, VerifyConfig};
use crate::control::{self, Handler};
use crate::log::LogPath;
use crate::replication::VolumeKey;
use crate::state::{StateDir, StateError};
use crate::status::LastRun;
use crate::verify::{Options, Progress, Subject};
use crate::verify::{Report, exit};
use crate::vfs::Volume;

use super::{CliError, VerifyArgs, registry};

/// One line of a daemon's answer to `verify`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Line {
    /// Where the run stands.
    Progress(Progress),
    /// The run's report: the last line.
    Report(Report),
    /// The run could not start.
    Error(String),
    /// The answer to a cancel: whether a run was under way.
    Cancelled(bool),
}

/// The request that cancels the run under way.
const CANCEL: &str = "verify-cancel";

/// The stop flag of the run under way, a client's or a scheduled one (for `verify
/// --cancel`).
static CURRENT: Mutex<Option<Arc<AtomicBool>>> = Mutex::new(None);

/// A run's stop flag made the one `verify --cancel` sets, until dropped.
struct UnderWay;

impl UnderWay {
    fn register(stop: &Arc<AtomicBool>) -> UnderWay {
        *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(stop));
        UnderWay
    }
}

impl Drop for UnderWay {
    fn drop(&mut self) {
        *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Runs `mirrorfs verify`.
pub fn run(args: VerifyArgs) -> Result<(), CliError> {
    let usage = |error: crate::config::ConfigError| CliError::Exit(exit::USAGE, error.to_string());
    // By mount point: the config and command line the daemon was started with.
    let (config_path, overrides) = match &args.mountpoint {
        Some(point) => {
            let entry =
                registry::find(point).map_err(|error| CliError::Exit(exit::USAGE, error))?;
            let overrides = Overrides {
                source: Some(entry.source),
                mountpoint: Some(entry.mountpoint),
                state_dir: Some(entry.state_dir),
                id: Some(entry.volume),
                allow_other: None,
            };
            (entry.config, overrides)
        }
        None => (args.config.clone(), Overrides::default()),
    };
    let raw = match &config_path {
        Some(path) => Config::read(path).map_err(usage)?,
        None => RawConfig::default(),
    };
    let cwd = std::env::current_dir().map_err(|error| {
        CliError::Exit(
            exit::OPERATIONAL,
            format!("cannot read the current directory: {error}"),
        )
    })?;
    let config = Config::resolve(raw, overrides, &cwd).map_err(usage)?;
    if args.cancel {
        return cancel(&config);
    }
    let options = options(&args)?;
    let listed: Vec<&str> = config
        .replication
        .iter()
        .flat_map(|replication| replication.replicas.iter().map(|r| r.name.as_str()))
        .collect();
    if let Some(unknown) = options
        .replicas
        .iter()
        .find(|name| !listed.contains(&name.as_str()))
    {
        return Err(CliError::Exit(
            exit::USAGE,
            format!("--replica {unknown:?}: the config lists no such replica"),
        ));
    }
    let mut bar = Bar::new(!args.json && std::io::stderr().is_terminal());
    let report = match StateDir::open(&config.volume.state_dir) {
        Ok(state) => {
            // Not mounted: this process holds the volume while it checks.
            let served = super::volume::open(&config, state.path(), false)
                .map_err(|error| CliError::Exit(exit::OPERATIONAL, error.message()))?;
            let stop = AtomicBool::new(false);
            let report = check(&config, &served.volume, &options, &stop, &mut |p| {
                bar.show(p)
            });
            served.shutdown();
            report
        }
        Err(StateError::Locked { .. }) => ask_daemon(&config, &options, &mut |p| bar.show(p))?,
        Err(error) => return Err(CliError::Exit(exit::OPERATIONAL, error.to_string())),
    };
    bar.clear();
    if args.json {
        let text = serde_json::to_string(&report).map_err(|error| {
            CliError::Exit(
                exit::OPERATIONAL,
                format!("cannot encode the report: {error}"),
            )
        })?;
        println!("{text}");
    } else {
        print!("{}", report.human());
    }
    match report.exit_code {
        exit::CLEAN => Ok(()),
        code => Err(CliError::Exit(code, String::new())),
    }
}

/// The run the arguments ask for.
fn options(args: &VerifyArgs) -> Result<Options, CliError> {
    let usage = |message: String| CliError::Exit(exit::USAGE, message);
    let under = match &args.path {
        None => LogPath::root(),
        Some(path) => {
            let trimmed = path.trim_matches('/');
            LogPath::try_from(trimmed.as_bytes().to_vec())
                .map_err(|error| usage(format!("--path {path:?}: {error}")))?
        }
    };
    if let Some(percent) = args.sample
        && !(percent > 0.0 && percent <= 100.0)
    {
        return Err(usage(format!(
            "--sample {percent}: give a percentage above 0, at most 100"
        )));
    }
    let size = |flag: &str, text: &Option<String>| -> Result<Option<u64>, CliError> {
        text.as_ref()
            .map(|text| {
                text.parse::<ByteSize>()
                    .map(|size| size.0)
                    .map_err(|error| usage(format!("{flag} {text:?}: {error}")))
            })
            .transpose()
    };
    let max_duration = args
        .max_duration
        .as_ref()
        .map(|text| {
            text.parse::<crate::config::Span>()
                .map(|span| span.0)
                .map_err(|error| usage(format!("--max-duration {text:?}: {error}")))
        })
        .transpose()?;
    Ok(Options {
        content: args.content,
        repair: args.repair,
        replicas: args.replicas.clone(),
        under,
        primary_only: args.primary_only,
        sample: args.sample,
        max_bytes: size("--max-bytes", &args.max_bytes)?,
        max_duration,
        rate: size("--max-rate", &args.max_rate)?,
    })
}

/// Runs a check of `volume` in this process.
fn check(
    config: &Config,
    volume: &Volume,
    options: &Options,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Report {
    let key = match &config.replication {
        Some(replication) => match VolumeKey::read(&replication.key_file) {
            Ok(key) => Some(key),
            Err(error) => {
                let mut report = Report {
                    errors: vec![error.to_string()],
                    ..Report::default()
                };
                report.settle();
                return report;
            }
        },
        None => None,
    };
    let journal = volume.journal();
    let applied = journal.applied_source();
    let writing = || volume.files_being_written();
    let settle = || volume.settle_records();
    let subject = Subject {
        volume: config.volume.id.as_str(),
        origin: volume.origin(),
        store: volume.hashes().map(|store| &**store),
        log: journal.log(),
        applied: &applied,
        writing: &writing,
        settle: &settle,
        replication: config.replication.as_ref().zip(key.as_ref()),
        stop,
    };
    crate::verify::verify(&subject, volume, options, progress)
}

/// Asks the mount daemon to run the check, showing its progress as it comes.
fn ask_daemon(
    config: &Config,
    options: &Options,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report, CliError> {
    let failed = |reason: String| CliError::Exit(exit::OPERATIONAL, reason);
    let request = serde_json::to_string(options).map_err(|error| failed(error.to_string()))?;
    let answers = control::request(&config.volume.state_dir, &format!("verify {request}"))
        .map_err(|error| failed(format!("the volume is mounted, but {error}")))?;
    for line in answers.lines() {
        let line = line.map_err(|error| failed(format!("the daemon went away: {error}")))?;
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Progress(shown)) => progress(&shown),
            Ok(Line::Report(report)) => return Ok(report),
            Ok(Line::Error(reason)) => return Err(failed(reason)),
            Ok(Line::Cancelled(_)) => return Err(failed(format!("the daemon answered {line:?}"))),
            Err(error) => return Err(failed(format!("the daemon answered {line:?}: {error}"))),
        }
    }
    Err(failed(
        "the daemon ended the run without a report".to_string(),
    ))
}

/// `verify --cancel`: asks the daemon to stop the run a client started.
fn cancel(config: &Config) -> Result<(), CliError> {
    let failed = |reason: String| CliError::Exit(exit::OPERATIONAL, reason);
    let answer = control::request(&config.volume.state_dir, CANCEL)
        .map_err(|error| failed(format!("cannot reach the volume's daemon: {error}")))?;
    let line = answer
        .lines()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    match serde_json::from_str::<Line>(&line) {
        Ok(Line::Cancelled(true)) => {
            println!(
                "cancelled the verify run under way; the next run goes on from where it stopped"
            );
            Ok(())
        }
        Ok(Line::Cancelled(false)) => Err(failed("no verify run is under way".to_string())),
        _ => Err(failed(format!("the daemon answered {line:?}"))),
    }
}

/// One verify run at a time per volume, whoever starts it.
static RUNNING: Mutex<()> = Mutex::new(());

/// The daemon's last verify run, for `mirrorfs status`.
pub type LastRunCell = Arc<Mutex<Option<LastRun>>>;

/// Keeps `report` as the last run.
fn remember(last: &LastRunCell, report: &Report, scheduled: bool) {
    let summary = report.human();
    let run = LastRun {
        ended: crate::manifest::unix_now(),
        scheduled,
        exit_code: report.exit_code,
        findings: report.findings.len() as u64,
        summary: summary.lines().last().unwrap_or_default().to_string(),
    };
    *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(run);
}

/// What the mount daemon answers `verify {...}` requests with.
pub fn handler(config: &Config, volume: &Arc<Volume>, last: &LastRunCell) -> Handler {
    let (config, volume, last) = (config.clone(), Arc::clone(volume), Arc::clone(last));
    Arc::new(move |request: &str, stream: UnixStream| {
        let mut stream = stream;
        if request == CANCEL {
            let current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(stop) = current.as_ref() {
                stop.store(true, Ordering::Relaxed);
            }
            let _ = send(&mut stream, &Line::Cancelled(current.is_some()));
            return;
        }
        let Some(options) = request.strip_prefix("verify ") else {
            let _ = send(
                &mut stream,
                &Line::Error(format!("unknown request {request:?}")),
            );
            return;
        };
        let options: Options = match serde_json::from_str(options) {
            Ok(options) => options,
            Err(error) => {
                let _ = send(
                    &mut stream,
                    &Line::Error(format!("bad verify request: {error}")),
                );
                return;
            }
        };
        let Ok(running) = RUNNING.try_lock() else {
            let busy = "a verify run is already under way on this volume".to_string();
            let _ = send(&mut stream, &Line::Error(busy));
            return;
        };
        // A client that goes away (Ctrl-C) stops the run at once, as `verify --cancel`
        // does; the files it read count.
        let stop = Arc::new(AtomicBool::new(false));
        watch_client(&stream, &stop);
        let under_way = UnderWay::register(&stop);
        let mut shown = Instant::now();
        let report = check(&config, &volume, &options, &stop, &mut |progress| {
            if shown.elapsed() < Duration::from_millis(200) && progress.phase != "repair" {
                return;
            }
            shown = Instant::now();
            if send(&mut stream, &Line::Progress(progress.clone())).is_err() {
                stop.store(true, Ordering::Relaxed);
            }
        });
        // The run is over before its client hears so: a client that asks again at once
        // must not find it under way.
        drop(under_way);
        drop(running);
        tracing::info!(
            findings = report.findings.len(),
            exit_code = report.exit_code,
            "verify run (asked by a client) ended"
        );
        remember(&last, &report, false);
        let _ = send(&mut stream, &Line::Report(report));
    })
}

/// Sets `stop` once the client of `stream` hangs up (it sends nothing after its request,
/// so the end of its stream is its going away).
fn watch_client(stream: &UnixStream, stop: &Arc<AtomicBool>) {
    let Ok(mut reader) = stream.try_clone() else {
        return;
    };
    let stop = Arc::clone(stop);
    let watching = std::thread::Builder::new()
        .name("verify-client".to_string())
        .spawn(move || {
            let mut byte = [0; 1];
            while let Ok(1..) = std::io::Read::read(&mut reader, &mut byte) {}
            stop.store(true, Ordering::Relaxed);
        });
    if let Err(error) = watching {
        tracing::debug!(%error, "a verify client's hang-up is noticed at its next progress line");
    }
}

fn send(stream: &mut UnixStream, line: &Line) -> std::io::Result<()> {
    let text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    writeln!(stream, "{text}")
}

/// The daemon's scheduled runs (`[verify] quick_every`, `content_every`); they stop with
/// the returned guard.
pub struct Schedule {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    /// Ends a run under way (what it read so far counts).
    halt: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Schedule {
    fn drop(&mut self) {
        self.halt.store(true, Ordering::SeqCst);
        // A scheduled run under way checks its own flag (which `verify --cancel` also
        // sets), not `halt`.
        if let Some(current) = CURRENT.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            current.store(true, Ordering::SeqCst);
        }
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the scheduled runs `config` asks for, if any.
pub fn schedule(config: &Config, volume: &Arc<Volume>, last: &LastRunCell) -> Option<Schedule> {
    let plan = Plan::of(&config.verify)?;
    let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let halt = Arc::new(AtomicBool::new(false));
    let (config, volume, stopping) = (config.clone(), Arc::clone(volume), Arc::clone(&stop));
    let (last, halting) = (Arc::clone(last), Arc::clone(&halt));
    let thread = std::thread::Builder::new()
        .name("verify-schedule".to_string())
        .spawn(move || plan.run(&config, &volume, &stopping, &halting, &last))
        .map_err(|error| tracing::warn!(%error, "scheduled verify runs cannot start"))
        .ok()?;
    Some(Schedule {
        stop,
        halt,
        thread: Some(thread),
    })
}

/// How often the check after an unclean stop is tried again while a replica cannot be
/// checked (it is down, or still catching up).
const AFTER_CRASH_RETRY: Duration = Duration::from_secs(10);

/// Checks the replicas against the origin and repairs them, in a thread of its own, until
/// one run checks every replica: after the daemon died, a change the origin had taken may
/// have no record (the origin changes first, then the record is appended).
pub fn repair_after_crash(
    config: &Config,
    volume: &Arc<Volume>,
    last: &LastRunCell,
) -> Option<Schedule> {
    let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let halt = Arc::new(AtomicBool::new(false));
    let (config, volume, stopping) = (config.clone(), Arc::clone(volume), Arc::clone(&stop));
    let (last, halting) = (Arc::clone(last), Arc::clone(&halt));
    let thread = std::thread::Builder::new()
        .name("verify-after-crash".to_string())
        .spawn(move || {
            tracing::info!("the last daemon stopped uncleanly: checking the replicas against the origin");
            loop {
                let report = {
                    let _running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
                    let options = Options {
                        repair: true,
                        ..Options::default()
                    };
                    check(&config, &volume, &options, &halting, &mut |_| {})
                };
                if halting.load(Ordering::SeqCst) {
                    return;
                }
                remember(&last, &report, true);
                let summary = report.human();
                let summary = summary.lines().last().unwrap_or_default().to_string();
                let unchecked = report.replicas.iter().any(|replica| !replica.checked)
                    || report.findings.iter().any(|finding| finding.is_position());
                if !unchecked {
                    match report.exit_code {
                        exit::CLEAN => tracing::info!(%summary, "replicas checked after the unclean stop: nothing was lost"),
                        code => tracing::warn!(exit_code = code, findings = report.findings.len(), %summary, "replicas checked and repaired after the unclean stop"),
                    }
                    return;
                }
                let (stopped, wake) = &*stopping;
                let stopped = stopped.lock().unwrap_or_else(|p| p.into_inner());
                let (stopped, _) = wake
                    .wait_timeout_while(stopped, AFTER_CRASH_RETRY, |stopped| !*stopped)
                    .unwrap_or_else(|p| p.into_inner());
                if *stopped {
                    return;
                }
            }
        })
        .map_err(|error| tracing::warn!(%error, "the check after an unclean stop cannot start"))
        .ok()?;
    Some(Schedule {
        stop,
        halt,
        thread: Some(thread),
    })
}

/// When scheduled runs are due, and how much content each reads.
#[derive(Clone, Copy, Debug)]
struct Plan {
    quick_every: Option<Duration>,
    /// A partial content run this often ...
    content_step: Option<Duration>,
    /// ... reading this share of the files, so all are read once per `content_every`.
    content_share: f64,
    rate: u64,
}

impl Plan {
    fn of(verify: &VerifyConfig) -> Option<Plan> {
        if verify.quick_every.is_none() && verify.content_every.is_none() {
            return None;
        }
        // Spread over the period in at least 24 runs, and at most one an hour... unless
        // the period itself is short.
        let step = verify.content_every.map(|every| {
            (every / 24).clamp(
                Duration::from_secs(60).min(every),
                Duration::from_secs(3600),
            )
        });
        let share = match (verify.content_every, step) {
            (Some(every), Some(step)) => {
                (step.as_secs_f64() / every.as_secs_f64() * 100.0).min(100.0)
            }
            _ => 100.0,
        };
        Some(Plan {
            quick_every: verify.quick_every,
            content_step: step,
            content_share: share,
            rate: verify.content_rate_bytes_max,
        })
    }

    fn run(
        &self,
        config: &Config,
        volume: &Volume,
        stop: &(Mutex<bool>, std::sync::Condvar),
        halt: &AtomicBool,
        last: &LastRunCell,
    ) {
        let started = Instant::now();
        let mut quick_due = self.quick_every.map(|every| started + every);
        let mut content_due = self.content_step.map(|step| started + step);
        loop {
            let next = [quick_due, content_due].into_iter().flatten().min();
            let Some(next) = next else { return };
            {
                let (stopped, wake) = stop;
                let mut stopped = stopped.lock().unwrap_or_else(|p| p.into_inner());
                while !*stopped && Instant::now() < next {
                    let wait = next.saturating_duration_since(Instant::now());
                    stopped = wake
                        .wait_timeout(stopped, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if *stopped {
                    return;
                }
            }
            let now = Instant::now();
            let content = content_due.is_some_and(|due| due <= now);
            let options = Options {
                content,
                sample: content.then_some(self.content_share),
                rate: Some(self.rate),
                ..Options::default()
            };
            if content {
                content_due = self.content_step.map(|step| now + step);
            }
            if quick_due.is_some_and(|due| due <= now) || content {
                quick_due = self.quick_every.map(|every| now + every);
            }
            let Ok(_running) = RUNNING.try_lock() else {
                continue;
            };
            // Its own stop, which `verify --cancel` sets as well as the daemon stopping:
            // registered before `halt` is looked at, so a stop between the two is seen.
            let stop = Arc::new(AtomicBool::new(false));
            let under_way = UnderWay::register(&stop);
            if halt.load(Ordering::SeqCst) {
                stop.store(true, Ordering::SeqCst);
            }
            let report = check(config, volume, &options, &stop, &mut |_| {});
            drop(under_way);
            remember(last, &report, true);
            let summary = report.human();
            let summary = summary.lines().last().unwrap_or_default();
            match report.exit_code {
                exit::CLEAN => tracing::info!(%summary, "scheduled verify run"),
                code => {
                    tracing::warn!(exit_code = code, findings = report.findings.len(), %summary, "scheduled verify run found differences; run 'mirrorfs verify --repair'")
                }
            }
        }
    }
}

/// A progress line on a terminal.
struct Bar {
    on: bool,
    started: Instant,
    shown: bool,
}

impl Bar {
    fn new(on: bool) -> Bar {
        Bar {
            on,
            started: Instant::now(),
            shown: false,
        }
    }

    fn show(&mut self, progress: &Progress) {
        if !self.on {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let line = match progress.phase.as_str() {
            "content" => {
                let (done, total) = progress.bytes;
                let rate = done as f64 / seconds;
                let eta = match rate > 0.0 {
                    true => format!("{:.0} s", (total.saturating_sub(done)) as f64 / rate),
                    false => "?".to_string(),
                };
                format!(
                    "content: {}/{} files, {}/{}, {}/s, ETA {eta}",
                    progress.files.0,
                    progress.files.1,
                    human(done),
                    human(total),
                    human(rate as u64),
                )
            }
            "repair" => "repairing ...".to_string(),
            _ => format!("walking: {} entries", progress.entries),
        };
        eprint!("\r\x1b[2K{line}");
        let _ = std::io::stderr().flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[2K");
            self.shown = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_runs_spread_over_the_period() {
        let week = VerifyConfig {
            content_every: Some(Duration::from_secs(7 * 86_400)),
            ..VerifyConfig::default()
        };
        let plan = Plan::of(&week).unwrap();
        // At most one an hour, each reading its share: 168 runs a week.
        assert_eq!(plan.content_step, Some(Duration::from_secs(3600)));
        assert!((plan.content_share * 168.0 - 100.0).abs() < 1e-9);
        let hour = VerifyConfig {
            content_every: Some(Duration::from_secs(3600)),
            ..VerifyConfig::default()
        };
        let plan = Plan::of(&hour).unwrap();
        assert_eq!(plan.content_step, Some(Duration::from_secs(150)));
        assert!((plan.content_share - 100.0 / 24.0).abs() < 1e-9);
        assert!(Plan::of(&VerifyConfig::default()).is_none());
    }
}
