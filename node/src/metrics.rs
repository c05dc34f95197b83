//! Counters and gauges, and the one way they are rendered in the Prometheus text format.
//!
//! - [`Counter`] and [`Gauge`]: plain atomics. Incrementing is one relaxed add on the hot
//!   path, and `/metrics` reads them without a lock. Every layer keeps its own counters
//!   in these types.
//! - [`Row`]: one metric as rendered; each layer lists its rows (`rows()`), the admin API
//!   concatenates them and [`render`] writes them out.
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
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
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
        }
    }

    fn single(name: &'static str, kind: Kind, help: &'static str, value: u64) -> Row {
        Row {
            name,
            kind,
            help,
            label: None,
            values: vec![(String::new(), value)],
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
    pub http_requests: Counter,
    pub admin_refusals: Counter,
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
                "Clients closed with 4008 because their queue overflowed.",
                self.slow_consumer_closes.get(),
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
            Row::gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                resident_memory_bytes().unwrap_or(0),
            ),
        ]
    }
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
}
