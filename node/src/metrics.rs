//! Process-wide counters and gauges, rendered in the Prometheus text format.
//!
//! Plain atomics: incrementing is one relaxed add on the hot path, and `/metrics`
//! reads them all without a lock.

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

/// Every metric the node exports. Names are the Prometheus names without the
/// `switchboard_` prefix.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: Gauge,
    pub connections_accepted: Counter,
    pub connections_rejected_full: Counter,
    pub connections_rejected_not_ready: Counter,
    pub auth_failures: Counter,
    pub origin_rejections: Counter,
    pub frames_too_large: Counter,
    pub client_ops: Counter,
    pub client_op_errors: Counter,
    pub messages_published: Counter,
    pub messages_delivered: Counter,
    pub bytes_delivered: Counter,
    pub messages_dropped: Counter,
    pub slow_consumer_closes: Counter,
    pub token_expiry_closes: Counter,
    pub resp_connections: Gauge,
    pub resp_commands: Counter,
    pub resp_errors: Counter,
    pub resp_protocol_errors: Counter,
    pub resp_auth_failures: Counter,
    pub presence_ops_applied: Counter,
    pub presence_batches: Counter,
    pub http_requests: Counter,
}

impl Metrics {
    /// The Prometheus text exposition of every metric, plus the broker's gauges.
    pub fn render(&self, groups: usize, presence_entries: usize, ready: bool) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            write_metric(&mut out, name, kind, help, value)
        };
        metric(
            "connections",
            "gauge",
            "Open WebSocket connections.",
            self.connections.get(),
        );
        metric(
            "connections_accepted_total",
            "counter",
            "WebSocket connections accepted and authenticated.",
            self.connections_accepted.get(),
        );
        metric(
            "connections_rejected_full_total",
            "counter",
            "WebSocket connections closed with 1013 because the node was full.",
            self.connections_rejected_full.get(),
        );
        metric(
            "connections_rejected_not_ready_total",
            "counter",
            "WebSocket connections closed with 1012/1013 because the node was not ready or draining.",
            self.connections_rejected_not_ready.get(),
        );
        metric(
            "auth_failures_total",
            "counter",
            "WebSocket connections closed with 4001.",
            self.auth_failures.get(),
        );
        metric(
            "origin_rejections_total",
            "counter",
            "WebSocket connections closed with 4003 for their Origin.",
            self.origin_rejections.get(),
        );
        metric(
            "frames_too_large_total",
            "counter",
            "WebSocket connections closed with 1009.",
            self.frames_too_large.get(),
        );
        metric(
            "client_ops_total",
            "counter",
            "JSON ops received from clients.",
            self.client_ops.get(),
        );
        metric(
            "client_op_errors_total",
            "counter",
            "JSON ops answered with an error.",
            self.client_op_errors.get(),
        );
        metric(
            "groups",
            "gauge",
            "Groups with at least one connection on this node.",
            groups as u64,
        );
        metric(
            "presence_entries",
            "gauge",
            "Connections in the presence registry, cluster-wide.",
            presence_entries as u64,
        );
        metric(
            "messages_published_total",
            "counter",
            "Messages published to this node (PUBLISH and channels_redis).",
            self.messages_published.get(),
        );
        metric(
            "messages_delivered_total",
            "counter",
            "Messages queued to local WebSocket clients.",
            self.messages_delivered.get(),
        );
        metric(
            "bytes_delivered_total",
            "counter",
            "Payload bytes queued to local WebSocket clients.",
            self.bytes_delivered.get(),
        );
        metric(
            "messages_dropped_total",
            "counter",
            "Messages not delivered because a client's queue was full.",
            self.messages_dropped.get(),
        );
        metric(
            "slow_consumer_closes_total",
            "counter",
            "Clients closed with 4008 because their queue overflowed.",
            self.slow_consumer_closes.get(),
        );
        metric(
            "token_expiry_closes_total",
            "counter",
            "Clients closed with 4001 when their token expired.",
            self.token_expiry_closes.get(),
        );
        metric(
            "resp_connections",
            "gauge",
            "Open RESP connections.",
            self.resp_connections.get(),
        );
        metric(
            "resp_commands_total",
            "counter",
            "RESP commands received.",
            self.resp_commands.get(),
        );
        metric(
            "resp_errors_total",
            "counter",
            "RESP commands answered with an error.",
            self.resp_errors.get(),
        );
        metric(
            "resp_protocol_errors_total",
            "counter",
            "RESP connections closed for a malformed stream.",
            self.resp_protocol_errors.get(),
        );
        metric(
            "resp_auth_failures_total",
            "counter",
            "RESP AUTH attempts refused, and commands refused before AUTH.",
            self.resp_auth_failures.get(),
        );
        metric(
            "presence_ops_applied_total",
            "counter",
            "Presence changes applied to the registry.",
            self.presence_ops_applied.get(),
        );
        metric(
            "presence_batches_total",
            "counter",
            "Presence batches flushed.",
            self.presence_batches.get(),
        );
        metric(
            "http_requests_total",
            "counter",
            "HTTP requests served (health, readiness, admin, metrics).",
            self.http_requests.get(),
        );
        metric(
            "ready",
            "gauge",
            "1 when /readyz answers 200.",
            u64::from(ready),
        );
        let rss = resident_memory_bytes().unwrap_or(0);
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes Resident memory size in bytes."
        );
        let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
        let _ = writeln!(out, "process_resident_memory_bytes {rss}");
        out
    }
}

/// Appends one metric, `switchboard_<name>`, with its HELP and TYPE lines.
pub fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP switchboard_{name} {help}");
    let _ = writeln!(out, "# TYPE switchboard_{name} {kind}");
    let _ = writeln!(out, "switchboard_{name} {value}");
}

/// The process's resident set size, from /proc/self/statm (Linux).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
