//! Prometheus metrics of a mount daemon or a replica node, served over HTTP on the
//! address `[metrics] listen` names (GET /metrics, text format 0.0.4).
//!
//! Nearly every figure is read at scrape time from the same status document `mirrorfs
//! status --json` prints (`Status` or `NodeStatus`), so the two never disagree; only the
//! latency of each FUSE request is counted as requests are served ([`RequestTimes`]).
//! Names follow Prometheus's conventions: base units, `_bytes`, `_seconds`, `_total`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::status::Status;

/// One label (name, value).
type Labels = [(&'static str, String); 1];

/// A request's label: its operation.
type OpLabel = [(&'static str, &'static str); 1];

/// The latency of each kind of FUSE request, by operation.
#[derive(Clone, Debug)]
pub struct RequestTimes {
    family: Family<OpLabel, Histogram, fn() -> Histogram>,
}

impl Default for RequestTimes {
    fn default() -> RequestTimes {
        // 10 µs to about 5 s, doubling.
        fn buckets() -> Histogram {
            Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
        }
        RequestTimes {
            family: Family::new_with_constructor(buckets),
        }
    }
}

impl RequestTimes {
    /// Counts one `operation` that took `elapsed`.
    pub fn observe(&self, operation: &'static str, elapsed: Duration) {
        self.family
            .get_or_create(&[("op", operation)])
            .observe(elapsed.as_secs_f64());
    }
}

/// The metrics of a mount daemon: its status, read at each scrape by `status`, and its
/// requests' latencies.
pub fn mount_registry(
    status: impl Fn() -> Option<Status> + Send + Sync + 'static,
    times: &RequestTimes,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_with_unit(
        "mirrorfs_fuse_request_duration",
        "Time the daemon took to answer a FUSE request, by operation",
        Unit::Seconds,
        times.family.clone(),
    );
    registry.register_collector(Box::new(FromStatus(Box::new(status))));
    registry
}

/// Metrics computed from the status document at each scrape.
struct FromStatus(Box<dyn Fn() -> Option<Status> + Send + Sync>);

impl std::fmt::Debug for FromStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FromStatus")
    }
}

/// Writes metric families into one scrape.
struct Families<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl Families<'_> {
    fn gauge(&mut self, name: &str, help: &str, unit: Option<Unit>, value: f64) -> Fmt {
        let metric = ConstGauge::new(value);
        let encoder =
            self.encoder
                .encode_descriptor(name, help, unit.as_ref(), metric.metric_type())?;
        metric.encode(encoder)
    }

    fn counter(&mut self, name: &str, help: &str, unit: Option<Unit>, value: u64) -> Fmt {
        let metric = ConstCounter::new(value);
        let encoder =
            self.encoder
                .encode_descriptor(name, help, unit.as_ref(), metric.metric_type())?;
        metric.encode(encoder)
    }

    /// One gauge family with a sample per label value.
    fn gauges(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: &[(Labels, f64)],
    ) -> Fmt {
        if samples.is_empty() {
            return Ok(());
        }
        let kind = ConstGauge::new(0.0).metric_type();
        let mut encoder = self
            .encoder
            .encode_descriptor(name, help, unit.as_ref(), kind)?;
        for (labels, value) in samples {
            ConstGauge::new(*value).encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    /// One counter family with a sample per label value.
    fn counters(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: &[(Labels, u64)],
    ) -> Fmt {
        if samples.is_empty() {
            return Ok(());
        }
        let kind = ConstCounter::new(0u64).metric_type();
        let mut encoder = self
            .encoder
            .encode_descriptor(name, help, unit.as_ref(), kind)?;
        for (labels, value) in samples {
            ConstCounter::new(*value).encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }
}

type Fmt = Result<(), std::fmt::Error>;

impl Collector for FromStatus {
    fn encode(&self, encoder: DescriptorEncoder) -> Fmt {
        let mut out = Families { encoder };
        let Some(status) = (self.0)() else {
            return out.gauge(
                "mirrorfs_up",
                "Whether the daemon answered for its status",
                None,
                0.0,
            );
        };
        out.gauge(
            "mirrorfs_up",
            "Whether the daemon answered for its status",
            None,
            1.0,
        )?;
        let log = &status.log;
        out.gauge(
            "mirrorfs_log_first_offset",
            "The oldest record the log keeps",
            None,
            log.stats.first_offset as f64,
        )?;
        out.gauge(
            "mirrorfs_log_next_offset",
            "The offset the next record gets (the log's end)",
            None,
            log.stats.next_offset as f64,
        )?;
        out.gauge(
            "mirrorfs_log_durable_offset",
            "Every record below this offset is fsynced in the log",
            None,
            log.durable_offset as f64,
        )?;
        out.gauge(
            "mirrorfs_log_segments",
            "Segment files of the log",
            None,
            log.stats.segments as f64,
        )?;
        out.gauge(
            "mirrorfs_log_size",
            "Bytes of the log's segments",
            Some(Unit::Bytes),
            log.stats.bytes as f64,
        )?;
        out.gauge(
            "mirrorfs_log_epoch",
            "The newest leader epoch in the log",
            None,
            log.epochs.last().map_or(0.0, |e| f64::from(e.epoch)),
        )?;
        out.gauge(
            "mirrorfs_fenced",
            "1 when a newer primary has fenced this one",
            None,
            f64::from(u8::from(log.fence.is_some())),
        )?;
        out.counter(
            "mirrorfs_handler_panics",
            "Requests whose handler panicked (answered EIO)",
            None,
            status.handler_panics,
        )?;
        out.counter(
            "mirrorfs_passthrough_opens",
            "Opens the kernel serves by FUSE passthrough",
            None,
            status.passthrough_opens,
        )?;
        if let Some(behind) = &status.write_behind {
            out.gauge(
                "mirrorfs_write_behind_dirty",
                "Bytes written but not yet in the origin",
                Some(Unit::Bytes),
                behind.dirty_bytes as f64,
            )?;
            out.gauge(
                "mirrorfs_write_behind_dirty_files",
                "Files with bytes not yet in the origin",
                None,
                behind.dirty_files as f64,
            )?;
            out.counter(
                "mirrorfs_write_behind_flushed",
                "Bytes written to the origin by the flusher",
                Some(Unit::Bytes),
                behind.flushed_bytes,
            )?;
            out.gauge(
                "mirrorfs_write_behind_flush_failing",
                "1 while flushing to the origin fails (it is retried)",
                None,
                f64::from(u8::from(behind.flush_error.is_some())),
            )?;
            out.gauge(
                "mirrorfs_write_behind_applied_offset",
                "The origin holds every record below this offset",
                None,
                behind.applied_offset as f64,
            )?;
        }
        if let Some(cache) = &status.cache {
            let tiers: Vec<(&'static str, &crate::cache::TierStats)> =
                std::iter::once(("memory", &cache.memory))
                    .chain(cache.disk.as_ref().map(|disk| ("disk", disk)))
                    .collect();
            let per_tier = |pick: fn(&crate::cache::TierStats) -> u64| -> Vec<(Labels, u64)> {
                tiers
                    .iter()
                    .map(|(tier, stats)| ([("tier", tier.to_string())], pick(stats)))
                    .collect()
            };
            let as_gauges = |samples: Vec<(Labels, u64)>| -> Vec<(Labels, f64)> {
                samples
                    .into_iter()
                    .map(|(labels, value)| (labels, value as f64))
                    .collect()
            };
            out.gauges(
                "mirrorfs_cache",
                "Bytes a cache tier holds",
                Some(Unit::Bytes),
                &as_gauges(per_tier(|t| t.bytes)),
            )?;
            out.gauges(
                "mirrorfs_cache_budget",
                "A cache tier's budget",
                Some(Unit::Bytes),
                &as_gauges(per_tier(|t| t.budget)),
            )?;
            out.counters(
                "mirrorfs_cache_hits",
                "Block reads a cache tier answered",
                None,
                &per_tier(|t| t.hits),
            )?;
            out.counters(
                "mirrorfs_cache_misses",
                "Block reads a cache tier could not answer",
                None,
                &per_tier(|t| t.misses),
            )?;
            out.counters(
                "mirrorfs_cache_evictions",
                "Blocks a cache tier dropped for room",
                None,
                &per_tier(|t| t.evictions),
            )?;
            out.counter(
                "mirrorfs_cache_origin_reads",
                "Reads the cache made of the origin",
                None,
                cache.origin_reads,
            )?;
            out.counter(
                "mirrorfs_cache_origin_read",
                "Bytes the cache read from the origin",
                Some(Unit::Bytes),
                cache.origin_bytes,
            )?;
            out.counter(
                "mirrorfs_cache_readahead",
                "Bytes read ahead of readers",
                Some(Unit::Bytes),
                cache.prefetched_bytes,
            )?;
            out.counter(
                "mirrorfs_cache_readahead_used",
                "Bytes read ahead that a reader then used",
                Some(Unit::Bytes),
                cache.prefetch_used_bytes,
            )?;
            out.counter(
                "mirrorfs_cache_readahead_unused",
                "Bytes read ahead and dropped unused",
                Some(Unit::Bytes),
                cache.prefetch_unused_bytes,
            )?;
        }
        if let Some(replication) = &status.replication {
            let in_sync = replication
                .replicas
                .iter()
                .filter(|r| r.state == "in sync")
                .count();
            out.gauge(
                "mirrorfs_replication_epoch",
                "The primary's epoch",
                None,
                f64::from(replication.epoch),
            )?;
            out.gauge(
                "mirrorfs_replication_high_watermark",
                "Every in-sync replica holds every record below this offset",
                None,
                replication.high_watermark as f64,
            )?;
            out.gauge(
                "mirrorfs_replication_replicas_in_sync",
                "Replicas in the in-sync set",
                None,
                in_sync as f64,
            )?;
            out.gauge(
                "mirrorfs_replication_fsyncs_waiting",
                "fsync calls waiting for replicas to acknowledge",
                None,
                replication.waiting_fsyncs as f64,
            )?;
            let per_replica = |value: &dyn Fn(
                &crate::replication::ReplicaStatus,
            ) -> Option<f64>|
             -> Vec<(Labels, f64)> {
                replication
                    .replicas
                    .iter()
                    .filter_map(|r| Some(([("replica", r.name.clone())], value(r)?)))
                    .collect()
            };
            out.gauges(
                "mirrorfs_replica_acknowledged_offset",
                "The offset a replica acknowledged holding every record below",
                None,
                &per_replica(&|r| Some(r.acknowledged as f64)),
            )?;
            out.gauges(
                "mirrorfs_replica_lag_records",
                "Records a replica has yet to acknowledge",
                None,
                &per_replica(&|r| Some(r.lag_records as f64)),
            )?;
            out.gauges(
                "mirrorfs_replica_lag",
                "Bytes of records a replica has yet to acknowledge",
                Some(Unit::Bytes),
                &per_replica(&|r| Some(r.lag_bytes as f64)),
            )?;
            out.gauges(
                "mirrorfs_replica_lag",
                "How long a replica has been behind the log's end",
                Some(Unit::Seconds),
                &per_replica(&|r| r.lag_seconds),
            )?;
            out.gauges(
                "mirrorfs_replica_in_sync",
                "1 while a replica is in the in-sync set",
                None,
                &per_replica(&|r| Some(f64::from(u8::from(r.state == "in sync")))),
            )?;
        }
        if let Some(stored) = status.verify.stored_files {
            out.gauge(
                "mirrorfs_verify_stored_files",
                "Files with stored hashes",
                None,
                stored as f64,
            )?;
        }
        out.gauge(
            "mirrorfs_verify_pending_files",
            "Files whose stored hashes wait for a rehash",
            None,
            status.verify.pending_files as f64,
        )?;
        if let Some(last) = &status.verify.last_run {
            out.gauge(
                "mirrorfs_verify_last_run_end",
                "When the last verify run ended (Unix time)",
                Some(Unit::Seconds),
                last.ended as f64,
            )?;
            out.gauge(
                "mirrorfs_verify_last_run_findings",
                "Differences the last verify run found",
                None,
                last.findings as f64,
            )?;
            out.gauge(
                "mirrorfs_verify_last_run_exit_code",
                "The last verify run's exit code (0 clean; fsck's codes)",
                None,
                f64::from(last.exit_code),
            )?;
        }
        Ok(())
    }
}

/// The metrics of a replica node: each volume's copy, read at each scrape by `status`.
pub fn node_registry(
    status: impl Fn() -> Option<crate::replication::NodeStatus> + Send + Sync + 'static,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(FromNodeStatus(Box::new(status))));
    registry
}

/// A node's metrics, computed from its status document at each scrape.
struct FromNodeStatus(Box<dyn Fn() -> Option<crate::replication::NodeStatus> + Send + Sync>);

impl std::fmt::Debug for FromNodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FromNodeStatus")
    }
}

impl Collector for FromNodeStatus {
    fn encode(&self, encoder: DescriptorEncoder) -> Fmt {
        let mut out = Families { encoder };
        let Some(node) = (self.0)() else {
            return out.gauge(
                "mirrorfs_up",
                "Whether the node answered for its status",
                None,
                0.0,
            );
        };
        out.gauge(
            "mirrorfs_up",
            "Whether the node answered for its status",
            None,
            1.0,
        )?;
        let per_volume =
            |value: &dyn Fn(&crate::replication::HostedStatus) -> f64| -> Vec<(Labels, f64)> {
                node.volumes
                    .iter()
                    .map(|v| ([("volume", v.id.clone())], value(v)))
                    .collect()
            };
        out.gauges(
            "mirrorfs_copy_next_offset",
            "The offset of the next record the copy will take",
            None,
            &per_volume(&|v| v.copy.next as f64),
        )?;
        out.gauges(
            "mirrorfs_copy_applied_offset",
            "The copy's tree holds every record below this offset",
            None,
            &per_volume(&|v| v.copy.applied as f64),
        )?;
        out.gauges(
            "mirrorfs_copy_high_watermark",
            "The high watermark the primary last told the copy",
            None,
            &per_volume(&|v| v.copy.high_watermark as f64),
        )?;
        out.gauges(
            "mirrorfs_copy_epoch",
            "The newest epoch the copy holds records of",
            None,
            &per_volume(&|v| f64::from(v.copy.epoch)),
        )?;
        out.gauges(
            "mirrorfs_copy_connected",
            "1 while a primary is connected",
            None,
            &per_volume(&|v| f64::from(u8::from(v.connected))),
        )?;
        out.gauges(
            "mirrorfs_copy_stuck",
            "1 while the copy cannot apply a record it holds",
            None,
            &per_volume(&|v| f64::from(u8::from(v.copy.stuck.is_some()))),
        )?;
        out.gauges(
            "mirrorfs_copy_last_contact",
            "When a primary last sent something (Unix time)",
            Some(Unit::Seconds),
            &per_volume(&|v| v.last_contact.unwrap_or(0.0)),
        )?;
        out.gauges(
            "mirrorfs_verify_stored_files",
            "Files of the copy with stored hashes",
            None,
            &per_volume(&|v| v.stored_files as f64),
        )?;
        out.gauges(
            "mirrorfs_verify_pending_files",
            "Files whose stored hashes wait for a rehash",
            None,
            &per_volume(&|v| v.hashes_pending as f64),
        )?;
        Ok(())
    }
}

/// A running metrics endpoint; it stops with the process.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens (the port the system chose, for port 0).
    pub address: SocketAddr,
}

/// Serves `registry` at `address` (GET /metrics) on a thread of its own.
pub fn serve(address: SocketAddr, registry: Registry) -> std::io::Result<Endpoint> {
    let listener = TcpListener::bind(address)?;
    let address = listener.local_addr()?;
    let registry = Arc::new(registry);
    std::thread::Builder::new()
        .name("metrics".to_string())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(error) = answer(stream, &registry) {
                    tracing::debug!(%error, "a metrics scrape failed");
                }
            }
        })?;
    tracing::info!(%address, "serving metrics at /metrics");
    Ok(Endpoint { address })
}

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers one HTTP request: GET /metrics with the metrics, anything else 404 or 405.
fn answer(stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers are read and ignored.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") | ("HEAD", "/metrics") => {
            let mut body = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut body, registry)
                .map_err(std::io::Error::other)?;
            (
                "200 OK",
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                body,
            )
        }
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", String::new()),
    };
    let mut writer = &stream;
    write!(
        writer,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        writer.write_all(body.as_bytes())?;
    }
    writer.flush()
}
