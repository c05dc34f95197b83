//! `switchboard-bench`: the load generator every Switchboard benchmark uses. This file is
//! the CLI and the dispatch to one module per scenario:
//!
//! - `idle` ([`idle`]): open N WebSocket connections, report the connect rate and the
//!   server's RSS per connection (from the admin `/metrics`, or `/proc/PID/status`).
//! - `fanout` ([`fanout`]): N connections spread over G groups, P RESP publishers at a
//!   total rate R; report deliveries expected (the sum of PUBLISH replies) and received,
//!   lost, delivered msgs/s, publish-to-receipt latency percentiles, and per-publisher
//!   order violations seen on each connection.
//! - `churn` ([`churn`]): presence changes committed through Raft per second, cluster-wide.
//! - `failover` ([`failover`]): how long until presence writes resume after `kill -9` of
//!   the leader.
//! - `publish` ([`publish`]): RESP `PUBLISH` throughput only; it speaks nothing but
//!   standard RESP2, so it runs against redis-server too, for a side-by-side comparison.
//! - `http` ([`http`]): `POST /v1/publish` throughput on the admin port, keep-alive,
//!   one request at a time per connection (beside `publish --pipeline 1`).
//! - `rolling` ([`rolling`]): positioned clients that reconnect and recover, a steady
//!   publisher, while something restarts the nodes; reports acknowledged messages lost,
//!   duplicated or out of order (all must be 0 in history groups).
//!
//! - `bridge` ([`bridge`]): what the backend bridge costs a node: connects per second
//!   through a backend, frame-to-reply time beside the backend's own, and (with a hang)
//!   whether a backend that stops answering slows publishes or grows the node.
//!
//! What they share is in [`common`] (flags, connecting, the admin endpoint, publishers'
//! replies, the payload), and every one prints its results through [`report::print`]: a
//! table, or with `--json` the table on stderr and one JSON object on stdout. Every phase
//! is bounded in time, and the bench exits by itself.
#![forbid(unsafe_code)]

#[path = "bench/bridge.rs"]
mod bridge;
#[path = "bench/churn.rs"]
mod churn;
#[path = "bench/common.rs"]
mod common;
#[path = "bench/failover.rs"]
mod failover;
#[path = "bench/fanout.rs"]
mod fanout;
#[path = "bench/http.rs"]
mod http;
#[path = "bench/idle.rs"]
mod idle;
#[path = "bench/publish.rs"]
mod publish;
#[path = "bench/raw.rs"]
mod raw;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/rolling.rs"]
mod rolling;

use std::time::Duration;

use clap::{Parser, Subcommand};

use bridge::BridgePlan;
use common::{Common, parse_duration};
use fanout::FanoutPlan;
use http::HttpPlan;
use publish::PublishPlan;
use rolling::RollingPlan;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard-bench",
    about = "Load generator for Switchboard (and, for `publish`, any Redis server)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open idle connections; report the connect rate and the server's RSS per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Connections to open, each its own user.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// How long to hold them before measuring and closing (5s, 500ms, 2m; a bare
        /// number is seconds).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        hold: Duration,
    },
    /// The limit fan-out is measured against: a bare server in this process writes one
    /// pre-encoded frame to every connection in turn (no broker, no queues).
    Raw {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Rounds per second (0: as fast as the writes go).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Frames per write (per connection per round).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 64)]
        payload_size: usize,
    },
    /// Fan-out: N connections over G groups, P publishers at a total rate R.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Connections, each in group <prefix><i % groups> (through its token).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 1)]
        groups: usize,
        /// The groups' name prefix (one a --history rule matches measures history groups).
        #[arg(long, default_value = "bench_")]
        group_prefix: String,
        /// Messages per second over all publishers; 0 = as fast as replies allow.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// How long to publish.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Payload bytes (at least the ~30 of the timestamp and sequence header).
        #[arg(long, default_value_t = 64)]
        payload_size: usize,
        /// RESP publisher connections.
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// PUBLISH commands written at once per publisher (replies awaited per batch).
        #[arg(long, default_value_t = 16)]
        pipeline: usize,
        /// After publishing, how long to wait at most for the deliveries still due.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        drain: Duration,
        /// RESP password, if the node wants AUTH.
        #[arg(long)]
        password: Option<String>,
    },
    /// Presence churn: workers connect, hold, close and reconnect; reports the presence
    /// changes committed through Raft per second, cluster-wide.
    Churn {
        #[command(flatten)]
        common: Common,
        /// Concurrent connect/hold/close loops, spread over the --ws URLs.
        #[arg(long, default_value_t = 200)]
        workers: usize,
        /// How long each connection stays open (longer than the 20 ms presence batch, so
        /// that connect and close both commit).
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        hold: Duration,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Admin addresses of every node, to sum their committed presence changes.
        #[arg(long, value_delimiter = ',')]
        admins: Vec<String>,
        /// Follow the first admin address's presence events (SSE) during the run.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        events_reader: bool,
    },
    /// Leader fail-over: churn against a surviving node (--ws, --admin), kill -9 the
    /// leader's process, report when the survivor's presence writes resume.
    Failover {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 32)]
        workers: usize,
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        hold: Duration,
        /// PID of the current leader's process.
        #[arg(long)]
        leader_pid: u32,
    },
    /// Exactly-once delivery in history groups while the nodes restart (the restarts are
    /// up to the caller: client/scripts/bench-history.sh).
    Rolling {
        #[command(flatten)]
        common: Common,
        /// Clients, user i following user_i, spread over the --ws URLs.
        #[arg(long, default_value_t = 300)]
        clients: usize,
        /// Publishes per second (one publisher, to the clients' groups in turn).
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// After publishing, how long clients may take to receive what is due.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        drain: Duration,
    },
    /// RESP PUBLISH throughput only (works against redis-server).
    Publish {
        #[command(flatten)]
        common: Common,
        /// RESP connections.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// PUBLISH commands in flight per connection.
        #[arg(long, default_value_t = 32)]
        pipeline: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 64)]
        payload_size: usize,
        /// The channel (group) to publish to.
        #[arg(long, default_value = "bench_nobody")]
        group: String,
        /// Sent with AUTH first.
        #[arg(long)]
        password: Option<String>,
    },
    /// The backend bridge: serves a minimal backend on --backend-listen (start the node
    /// with --backend-url pointing at it), opens N connections through it, sends frames
    /// at a total rate, and reports frame-to-reply time beside the backend's own.
    Bridge {
        #[command(flatten)]
        common: Common,
        /// Where to serve the backend (the node's --backend-url).
        #[arg(long, default_value = "127.0.0.1:9090")]
        backend_listen: String,
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Frames per second over all connections (each one at a time).
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// The backend stops answering at this time into the run...
        #[arg(long, value_parser = parse_duration)]
        hang_at: Option<Duration>,
        /// ...for this long.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        hang_for: Duration,
        /// Messages a second published (RESP, --resp) to a group every connection is in.
        #[arg(long, default_value_t = 0)]
        publish_rate: u64,
    },
    /// HTTP publish throughput (POST /v1/publish on --admin, keep-alive).
    Http {
        #[command(flatten)]
        common: Common,
        /// Keep-alive connections, one request in flight each.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 64)]
        payload_size: usize,
        /// The group to publish to.
        #[arg(long, default_value = "bench_nobody")]
        group: String,
        /// Admin token with the publish scope.
        #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A fresh idempotency key on every request.
        #[arg(long)]
        keyed: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Idle {
            common,
            connections,
            hold,
        } => idle::idle(&common, connections, hold).await,
        Command::Raw {
            common,
            connections,
            rate,
            batch,
            duration,
            payload_size,
        } => {
            raw::raw(
                &common,
                connections.max(1),
                rate,
                batch.max(1),
                duration,
                payload_size,
            )
            .await
        }
        Command::Fanout {
            common,
            connections,
            groups,
            group_prefix,
            rate,
            duration,
            payload_size,
            publishers,
            pipeline,
            drain,
            password,
        } => {
            let plan = FanoutPlan {
                group_prefix,
                connections,
                groups: groups.max(1),
                rate,
                duration,
                payload_size,
                publishers: publishers.max(1),
                pipeline: pipeline.max(1),
                drain,
                password,
            };
            fanout::fanout(&common, plan).await
        }
        Command::Churn {
            common,
            workers,
            hold,
            duration,
            admins,
            events_reader,
        } => {
            churn::churn(
                &common,
                workers.max(1),
                hold,
                duration,
                &admins,
                events_reader,
            )
            .await
        }
        Command::Failover {
            common,
            workers,
            hold,
            leader_pid,
        } => failover::failover(&common, workers.max(1), hold, leader_pid).await,
        Command::Rolling {
            common,
            clients,
            rate,
            duration,
            drain,
        } => {
            let plan = RollingPlan {
                clients,
                rate,
                duration,
                drain,
            };
            rolling::rolling(&common, plan).await
        }
        Command::Publish {
            common,
            clients,
            pipeline,
            duration,
            payload_size,
            group,
            password,
        } => {
            let plan = PublishPlan {
                clients: clients.max(1),
                pipeline: pipeline.max(1),
                duration,
                payload_size,
                group,
                password,
            };
            publish::publish(&common, plan).await
        }
        Command::Bridge {
            common,
            backend_listen,
            connections,
            rate,
            duration,
            hang_at,
            hang_for,
            publish_rate,
        } => {
            let plan = BridgePlan {
                backend_listen,
                connections: connections.max(1),
                rate,
                duration,
                hang_at,
                hang_for,
                publish_rate,
            };
            bridge::bridge(&common, plan).await
        }
        Command::Http {
            common,
            clients,
            duration,
            payload_size,
            group,
            token,
            keyed,
        } => {
            let plan = HttpPlan {
                clients: clients.max(1),
                duration,
                payload_size,
                group,
                token,
                keyed,
            };
            http::http(&common, plan).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_quantile_is_read_from_the_buckets_observed_between_two_readings() {
        let body = |a: u64, b: u64, inf: u64| {
            format!(
                "x_bucket{{le=\"0.001\"}} {a}\nx_bucket{{le=\"0.002\"}} {b}\nx_bucket{{le=\"+Inf\"}} {inf}\nx_sum 1\n"
            )
        };
        let before = common::histogram(&body(10, 10, 10), "x");
        assert_eq!(before, vec![(0.001, 10), (0.002, 10), (f64::INFINITY, 10)]);
        // Since then: 10 more at or under 1 ms, 10 in (1 ms, 2 ms].
        let after = common::histogram(&body(20, 30, 30), "x");
        let p50 = common::histogram_quantile(&before, &after, 0.5).expect("observed");
        assert!((p50 - 0.001).abs() < 1e-9, "{p50}");
        let p75 = common::histogram_quantile(&before, &after, 0.75).expect("observed");
        assert!((p75 - 0.0015).abs() < 1e-9, "{p75}");
        assert_eq!(common::histogram_quantile(&before, &before, 0.5), None);
        // Past the last bound: its lower bound.
        let slow = common::histogram(&body(10, 10, 20), "x");
        assert_eq!(
            common::histogram_quantile(&before, &slow, 0.99),
            Some(0.002)
        );
    }

    #[test]
    fn the_cli_parses_each_subcommand() {
        let cli = Cli::try_parse_from([
            "switchboard-bench",
            "fanout",
            "--jwt-secret",
            "s",
            "--connections",
            "100",
            "--groups",
            "4",
            "--rate",
            "1000",
            "--duration",
            "3s",
            "--resp",
            "127.0.0.1:6380,127.0.0.1:6381",
        ])
        .expect("parses");
        match cli.command {
            Command::Fanout {
                common, duration, ..
            } => {
                assert_eq!(duration, Duration::from_secs(3));
                assert_eq!(common.resp.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        let cli =
            Cli::try_parse_from(["switchboard-bench", "idle", "--hold", "2"]).expect("parses");
        assert!(
            matches!(cli.command, Command::Idle { hold, .. } if hold == Duration::from_secs(2))
        );
        Cli::try_parse_from([
            "switchboard-bench",
            "publish",
            "--clients",
            "8",
            "--pipeline",
            "1",
        ])
        .expect("parses");
    }
}
