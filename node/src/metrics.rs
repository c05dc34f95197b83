//! Counters and gauges, and the one way they are rendered in the Prometheus text format.
//!
//! - [`Counter`] and [`Gauge`]: plain atomics. Incrementing is one relaxed add on the hot
//!   path, and `/metrics` reads them without a lock. Every layer keeps its own counters
//!   in these types.
//! - [`Row`]: one metric as rendered; each layer lists its rows (`rows()`), the admin API
//!   concatenates them and [`render`] writes them out.
//! - [`Histogram`]: durations in fixed buckets (atomics too), for the stages of the
//!   publish path.
//! - [`Metrics`]: the node-wide counters of the client-facing paths (WebSocket, RESP,
//!   HTTP, the publish path).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of [`Histogram`]'s buckets, in microseconds (a last, unbounded bucket
/// follows): from 10 µs, a fan-out round's own scale, to a second.
pub const HISTOGRAM_BOUNDS_MICROS: [u64; 14] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000,
];

/// A distribution of durations: one relaxed add on the bucket, the sum and the count per
/// observation, read by `/metrics` without a lock.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; HISTOGRAM_BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = HISTOGRAM_BOUNDS_MICROS
            .iter()
            .position(|&b| micros <= b)
            .unwrap_or(HISTOGRAM_BOUNDS_MICROS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Observations per bucket (not cumulative), the last one unbounded.
    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    pub fn sum_micros(&self) -> u64 {
        self.sum_micros.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whether a row is a counter or a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Values are per-bucket counts (not cumulative), in [`HISTOGRAM_BOUNDS_MICROS`]
    /// order with the unbounded bucket last; `sum_micros` is on the row.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric as exported: `switchboard_<name>`, its help text, and its values, one per
/// label value (or a single unlabelled value).
#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// The label's name, when the row has one value per label value.
    pub label: Option<&'static str>,
    pub values: Vec<(String, u64)>,
    /// A histogram's sum of observations, in microseconds.
    pub sum_micros: u64,
}

impl Row {
    /// A counter with one value.
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Row {
        Row::single(name, Kind::Counter, help, value)
    }

    /// A gauge with one value.
    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Row {
        Row::single(name, Kind::Gauge, help, value)
    }

    /// A gauge with one value per value of `label` (per peer, say).
    pub fn gauge_by(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: Vec<(String, u64)>,
    ) -> Row {
        Row {
            name,
            kind: Kind::Gauge,
            help,
            label: Some(label),
            values,
            sum_micros: 0,
        }
    }

    /// A counter with one value per value of `label`.
    pub fn counter_by(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: Vec<(String, u64)>,
    ) -> Row {
        Row {
            kind: Kind::Counter,
            ..Row::gauge_by(name, help, label, values)
        }
    }

    /// A histogram of durations, exported in seconds.
    pub fn histogram(name: &'static str, help: &'static str, h: &Histogram) -> Row {
        Row {
            name,
            kind: Kind::Histogram,
            help,
            label: None,
            values: h.counts().into_iter().map(|c| (String::new(), c)).collect(),
            sum_micros: h.sum_micros(),
        }
    }

    fn single(name: &'static str, kind: Kind, help: &'static str, value: u64) -> Row {
        Row {
            name,
            kind,
            help,
            label: None,
            values: vec![(String::new(), value)],
            sum_micros: 0,
        }
    }
}

/// Appends `rows` in the Prometheus text format. Names get the `switchboard_` prefix,
/// except `process_*` names, which are Prometheus's standard ones.
pub fn render(out: &mut String, rows: &[Row]) {
    for row in rows {
        let name = if row.name.starts_with("process_") {
            row.name.to_string()
        } else {
            format!("switchboard_{}", row.name)
        };
        let _ = writeln!(out, "# HELP {name} {}", row.help);
        let _ = writeln!(out, "# TYPE {name} {}", row.kind.as_str());
        if row.kind == Kind::Histogram {
            let mut cumulative = 0;
            for (i, (_, count)) in row.values.iter().enumerate() {
                cumulative += count;
                match HISTOGRAM_BOUNDS_MICROS.get(i) {
                    Some(&micros) => {
                        let le = micros as f64 / 1e6;
                        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                    }
                    None => {
                        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                    }
                }
            }
            let _ = writeln!(out, "{name}_sum {}", row.sum_micros as f64 / 1e6);
            let _ = writeln!(out, "{name}_count {cumulative}");
            continue;
        }
        for (label, value) in &row.values {
            match row.label {
                Some(key) => {
                    let _ = writeln!(out, "{name}{{{key}=\"{label}\"}} {value}");
                }
                None => {
                    let _ = writeln!(out, "{name} {value}");
                }
            }
        }
    }
}

/// The node-wide counters of the client-facing paths. Names are the Prometheus names
/// without the `switchboard_` prefix.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: Gauge,
    pub connections_accepted: Counter,
    pub connections_rejected_full: Counter,
    pub connections_rejected_not_ready: Counter,
    pub auth_failures: Counter,
    pub origin_rejections: Counter,
    pub frames_too_large: Counter,
    pub protocol_violations: Counter,
    pub connections_rejected_caps: Counter,
    pub client_ops: Counter,
    pub client_op_errors: Counter,
    pub client_ops_refused: Counter,
    pub client_ops_refused_node: Counter,
    pub client_op_budget_closes: Counter,
    pub connections_rejected_cool_down: Counter,
    pub messages_published: Counter,
    pub messages_delivered: Counter,
    pub bytes_delivered: Counter,
    pub messages_dropped: Counter,
    pub slow_consumer_closes: Counter,
    pub paced_publishes: Counter,
    pub token_expiry_closes: Counter,
    pub resp_connections: Gauge,
    pub resp_commands: Counter,
    pub resp_errors: Counter,
    pub resp_protocol_errors: Counter,
    pub resp_auth_failures: Counter,
    pub http_requests: Counter,
    pub admin_refusals: Counter,
    /// One local publish's offers to every recipient's queue.
    pub fanout_seconds: Histogram,
    /// A connection's queue waiting for its task: from the first message into an empty
    /// queue to the task taking the batch (hand-off, wake-up, scheduling).
    pub delivery_wait_seconds: Histogram,
    /// A connection's task writing a batch: from taking it to the flush returning.
    pub delivery_write_seconds: Histogram,
}

impl Metrics {
    /// Every counter of this struct as a row.
    pub fn rows(&self) -> Vec<Row> {
        vec![
            Row::gauge(
                "connections",
                "Open WebSocket connections.",
                self.connections.get(),
            ),
            Row::counter(
                "connections_accepted_total",
                "WebSocket connections accepted and authenticated.",
                self.connections_accepted.get(),
            ),
            Row::counter(
                "connections_rejected_full_total",
                "WebSocket connections closed with 1013 because the node was full.",
                self.connections_rejected_full.get(),
            ),
            Row::counter(
                "connections_rejected_not_ready_total",
                "WebSocket connections closed with 1012/1013 because the node was not ready or draining.",
                self.connections_rejected_not_ready.get(),
            ),
            Row::counter(
                "auth_failures_total",
                "WebSocket connections closed with 4001.",
                self.auth_failures.get(),
            ),
            Row::counter(
                "origin_rejections_total",
                "WebSocket connections closed with 4003 for their Origin.",
                self.origin_rejections.get(),
            ),
            Row::counter(
                "frames_too_large_total",
                "WebSocket connections closed with 1009.",
                self.frames_too_large.get(),
            ),
            Row::counter(
                "protocol_violations_total",
                "WebSocket connections closed with 1002 or 1007 for breaking the protocol.",
                self.protocol_violations.get(),
            ),
            Row::counter(
                "connections_rejected_caps_total",
                "WebSocket connections closed with 1013 over a per-IP or per-user cap.",
                self.connections_rejected_caps.get(),
            ),
            Row::counter(
                "client_ops_total",
                "JSON ops received from clients.",
                self.client_ops.get(),
            ),
            Row::counter(
                "client_op_errors_total",
                "JSON ops answered with an error.",
                self.client_op_errors.get(),
            ),
            Row::counter(
                "client_ops_refused_total",
                "WebSocket frames refused with rate_limited over their connection's op budget (--client-ops-per-sec).",
                self.client_ops_refused.get(),
            ),
            Row::counter(
                "client_ops_refused_node_total",
                "WebSocket frames refused with rate_limited over the node's op budget (--node-ops-per-sec).",
                self.client_ops_refused_node.get(),
            ),
            Row::counter(
                "client_op_budget_closes_total",
                "WebSocket connections closed with 1008 for ignoring rate_limited on ops.",
                self.client_op_budget_closes.get(),
            ),
            Row::counter(
                "connections_rejected_cool_down_total",
                "WebSocket connections closed with 1008 at connect: their user was closed for its ops and cools down.",
                self.connections_rejected_cool_down.get(),
            ),
            Row::counter(
                "messages_published_total",
                "Messages published to this node (PUBLISH and channels_redis).",
                self.messages_published.get(),
            ),
            Row::counter(
                "messages_delivered_total",
                "Messages queued to local WebSocket clients.",
                self.messages_delivered.get(),
            ),
            Row::counter(
                "bytes_delivered_total",
                "Payload bytes queued to local WebSocket clients.",
                self.bytes_delivered.get(),
            ),
            Row::counter(
                "messages_dropped_total",
                "Messages not delivered because a client's queue was full.",
                self.messages_dropped.get(),
            ),
            Row::counter(
                "slow_consumer_closes_total",
                "Clients closed with 4008 because their queue stayed full (history groups: overflowed).",
                self.slow_consumer_closes.get(),
            ),
            Row::counter(
                "paced_publishes_total",
                "Publishes (local or forwarded) that waited for a full client queue to make room.",
                self.paced_publishes.get(),
            ),
            Row::counter(
                "token_expiry_closes_total",
                "Clients closed with 4001 when their token expired.",
                self.token_expiry_closes.get(),
            ),
            Row::gauge(
                "resp_connections",
                "Open RESP connections.",
                self.resp_connections.get(),
            ),
            Row::counter(
                "resp_commands_total",
                "RESP commands received.",
                self.resp_commands.get(),
            ),
            Row::counter(
                "resp_errors_total",
                "RESP commands answered with an error.",
                self.resp_errors.get(),
            ),
            Row::counter(
                "resp_protocol_errors_total",
                "RESP connections closed for a malformed stream.",
                self.resp_protocol_errors.get(),
            ),
            Row::counter(
                "resp_auth_failures_total",
                "RESP AUTH attempts refused, and commands refused before AUTH.",
                self.resp_auth_failures.get(),
            ),
            Row::counter(
                "http_requests_total",
                "HTTP requests served (health, readiness, admin, metrics).",
                self.http_requests.get(),
            ),
            Row::counter(
                "admin_refusals_total",
                "Admin API requests refused: 401 (no valid token) or 403 (scope, Host or Origin).",
                self.admin_refusals.get(),
            ),
            Row::histogram(
                "fanout_seconds",
                "One local publish offered to every recipient's queue.",
                &self.fanout_seconds,
            ),
            Row::histogram(
                "delivery_wait_seconds",
                "A connection's first queued message waiting for its task to take the batch.",
                &self.delivery_wait_seconds,
            ),
            Row::histogram(
                "delivery_write_seconds",
                "A connection's task writing one batch, up to the flush.",
                &self.delivery_write_seconds,
            ),
            Row::gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                resident_memory_bytes().unwrap_or(0),
            ),
            Row::gauge(
                "process_open_fds",
                "Open file descriptors (sockets included).",
                open_fds().unwrap_or(0),
            ),
            Row::gauge(
                "process_max_fds",
                "The open-file limit (RLIMIT_NOFILE, soft).",
                crate::config::open_file_limit().unwrap_or(0) as u64,
            ),
        ]
    }
}

/// The process's open file descriptors, counted in /proc/self/fd (Linux).
pub fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// The process's resident set size, from /proc/self/statm (Linux).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_render_in_the_text_format() {
        let mut out = String::new();
        render(
            &mut out,
            &[
                Row::counter("x_total", "An x.", 3),
                Row::gauge_by("rtt", "Per peer.", "peer", vec![("2".into(), 7)]),
                Row::gauge("process_resident_memory_bytes", "RSS.", 9),
            ],
        );
        assert_eq!(
            out,
            "# HELP switchboard_x_total An x.\n# TYPE switchboard_x_total counter\nswitchboard_x_total 3\n\
             # HELP switchboard_rtt Per peer.\n# TYPE switchboard_rtt gauge\nswitchboard_rtt{peer=\"2\"} 7\n\
             # HELP process_resident_memory_bytes RSS.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 9\n"
        );
    }

    #[test]
    fn a_histogram_renders_cumulative_buckets_in_seconds() {
        let h = Histogram::default();
        h.observe(std::time::Duration::from_micros(7));
        h.observe(std::time::Duration::from_micros(10));
        h.observe(std::time::Duration::from_micros(30));
        h.observe(std::time::Duration::from_secs(5));
        let mut out = String::new();
        render(&mut out, &[Row::histogram("t_seconds", "A t.", &h)]);
        assert!(out.contains("# TYPE switchboard_t_seconds histogram\n"));
        assert!(
            out.contains("switchboard_t_seconds_bucket{le=\"0.00001\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("switchboard_t_seconds_bucket{le=\"0.000025\"} 2\n"));
        assert!(out.contains("switchboard_t_seconds_bucket{le=\"0.00005\"} 3\n"));
        assert!(out.contains("switchboard_t_seconds_bucket{le=\"1\"} 3\n"));
        assert!(out.contains("switchboard_t_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(out.contains("switchboard_t_seconds_sum 5.000047\n"));
        assert!(out.contains("switchboard_t_seconds_count 4\n"));
    }
}
