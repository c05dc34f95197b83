//! Every setting of `switchboard serve`, declared once: its flag, its environment
//! variable, its TOML key (the flag with underscores), its type and its default.
//!
//! [`settings!`] turns the list into [`ServeArgs`] (what clap and the file give: every
//! setting an `Option`, with no clap default, so an unset one is `None`),
//! [`ServeArgs::merge`] (flag and environment over the file) and [`Settings`] (the
//! defaults filled in). Checks and the settings that are built from several
//! (secrets, TLS pairs, derived limits) are [`super::resolve`]'s.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{BackendUnavailable, LogFormat, TokenExpiry};

/// The type a setting has once resolved: its own with a default, else an `Option`.
macro_rules! resolved {
    ($ty:ty) => { Option<$ty> };
    ($ty:ty, $default:expr) => { $ty };
}

/// A setting's value once resolved: given, else its default (if it has one).
macro_rules! or_default {
    ($value:expr) => {
        $value
    };
    ($value:expr, $default:expr) => {
        $value.unwrap_or_else(|| $default)
    };
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        #[arg($($arg:tt)*)]
        $name:ident : $ty:ty $(= $default:expr)?;
    )*) => {
        /// Flags of `switchboard serve`. Each also reads `SWITCHBOARD_<FLAG>` and the TOML
        /// key of the same name with underscores (`jwt_secret = "..."`).
        #[derive(Debug, Default, Clone, clap::Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct ServeArgs {
            /// TOML file with any of these settings (keys in snake_case).
            #[arg(long, env = "SWITCHBOARD_CONFIG")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])*
                #[arg(long, $($arg)*)]
                pub $name: Option<$ty>,
            )*
        }

        impl ServeArgs {
            /// Every setting from `self` (flags and environment) where set, else from
            /// `file`.
            pub(super) fn merge(self, file: ServeArgs) -> ServeArgs {
                ServeArgs {
                    config: self.config,
                    $($name: self.$name.or(file.$name),)*
                }
            }

            /// Each setting's name and its default as `Debug` shows it (`None` without
            /// one), for the test that keeps the help's `[default: ...]` true.
            #[cfg(test)]
            pub(super) fn defaults() -> Vec<(&'static str, String)> {
                vec![$((
                    stringify!($name),
                    format!("{:?}", or_default!(None::<$ty> $(, $default)?)),
                ),)*]
            }

            /// Every setting, its default filled in where it has one.
            pub(super) fn settings(self) -> Settings {
                Settings {
                    $($name: or_default!(self.$name $(, $default)?),)*
                }
            }
        }

        /// Every setting with its default filled in, before the checks of
        /// [`super::resolve`].
        #[derive(Debug, Clone)]
        pub(super) struct Settings {
            $(pub $name: resolved!($ty $(, $default)?),)*
        }
    };
}

settings! {
    /// Unique id of this node in the cluster [default: 1].
    #[arg(env = "SWITCHBOARD_NODE_ID")]
    node_id: u64 = 1;
    /// WebSocket endpoint, plus /healthz and /readyz [default: 127.0.0.1:8001].
    #[arg(env = "SWITCHBOARD_WS_LISTEN")]
    ws_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8001));
    /// Redis-protocol ingest shim [default: 127.0.0.1:6379].
    #[arg(env = "SWITCHBOARD_RESP_LISTEN")]
    resp_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 6379));
    /// QUIC (UDP) for node-to-node traffic [default: 127.0.0.1:7001].
    #[arg(env = "SWITCHBOARD_PEER_LISTEN")]
    peer_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7001));
    /// Admin HTTP API used by the CLI, and /metrics [default: 127.0.0.1:8002].
    #[arg(env = "SWITCHBOARD_ADMIN_LISTEN")]
    admin_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8002));
    /// The host name or address other nodes (and the members list) use for this node,
    /// with the ports of the --*-listen flags; needed when those bind 0.0.0.0 (a
    /// container, a Kubernetes pod: `$(POD_NAME).switchboard-peers`) [default: the
    /// listen addresses as bound].
    #[arg(env = "SWITCHBOARD_ADVERTISE")]
    advertise: String;
    /// Comma-separated peer addresses of existing members; empty = bootstrap a new cluster.
    #[arg(env = "SWITCHBOARD_SEEDS", value_delimiter = ',')]
    seeds: Vec<String> = Vec::new();
    /// Raft log, vote and snapshots [default: ./switchboard-data/node-<id>].
    #[arg(env = "SWITCHBOARD_DATA_DIR")]
    data_dir: PathBuf;
    /// HMAC secret for HS256/384/512 tokens (Django's SECRET_KEY works as-is for SimpleJWT).
    #[arg(env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String;
    /// File holding the JWT secret (read at start and on SIGHUP), instead of --jwt-secret.
    #[arg(env = "SWITCHBOARD_JWT_SECRET_FILE")]
    jwt_secret_file: PathBuf;
    /// PEM file for RS*/PS*/ES*/EdDSA tokens.
    #[arg(env = "SWITCHBOARD_JWT_PUBLIC_KEY")]
    jwt_public_key: PathBuf;
    /// Comma-separated accepted `aud` values; unset = `aud` not checked.
    #[arg(env = "SWITCHBOARD_JWT_AUDIENCE", value_delimiter = ',')]
    jwt_audience: Vec<String> = Vec::new();
    /// Comma-separated accepted `iss` values; unset = `iss` not checked.
    #[arg(env = "SWITCHBOARD_JWT_ISSUER", value_delimiter = ',')]
    jwt_issuer: Vec<String> = Vec::new();
    /// Secret every peer must prove before it can join or send anything.
    #[arg(env = "SWITCHBOARD_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: String;
    /// File holding the cluster secret (read at start and on SIGHUP).
    #[arg(env = "SWITCHBOARD_CLUSTER_SECRET_FILE")]
    cluster_secret_file: PathBuf;
    /// PEM file of the cluster CA: peers must present a certificate it signed (mutual
    /// TLS). Needs --cluster-cert and --cluster-key.
    #[arg(env = "SWITCHBOARD_CLUSTER_CA")]
    cluster_ca: PathBuf;
    /// PEM file of this node's certificate (chain), signed by the cluster CA.
    #[arg(env = "SWITCHBOARD_CLUSTER_CERT")]
    cluster_cert: PathBuf;
    /// PEM file of this node's private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(env = "SWITCHBOARD_CLUSTER_KEY")]
    cluster_key: PathBuf;
    /// When set, RESP clients must AUTH first.
    #[arg(env = "SWITCHBOARD_RESP_PASSWORD", hide_env_values = true)]
    resp_password: String;
    /// File holding the RESP password (read at start and on SIGHUP).
    #[arg(env = "SWITCHBOARD_RESP_PASSWORD_FILE")]
    resp_password_file: PathBuf;
    /// Bearer token the admin API requires (all scopes). Health checks stay open.
    #[arg(env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String;
    /// File of admin tokens, one a line, each optionally followed by a space and its
    /// scopes (read, write, publish; comma-separated; none = all). Re-read on SIGHUP.
    #[arg(env = "SWITCHBOARD_ADMIN_TOKEN_FILE")]
    admin_token_file: PathBuf;
    /// Comma-separated host names the admin API answers to, besides IP literals and
    /// localhost (the Host header is checked, so DNS rebinding cannot reach it).
    #[arg(env = "SWITCHBOARD_ADMIN_HOSTS", value_delimiter = ',')]
    admin_hosts: Vec<String> = Vec::new();
    /// PEM certificate chain: the WebSocket port serves wss:// (and HTTPS health checks).
    #[arg(env = "SWITCHBOARD_TLS_CERT")]
    tls_cert: PathBuf;
    /// PEM private key for --tls-cert.
    #[arg(env = "SWITCHBOARD_TLS_KEY")]
    tls_key: PathBuf;
    /// PEM certificate chain for the admin port (HTTPS).
    #[arg(env = "SWITCHBOARD_ADMIN_TLS_CERT")]
    admin_tls_cert: PathBuf;
    /// PEM private key for --admin-tls-cert.
    #[arg(env = "SWITCHBOARD_ADMIN_TLS_KEY")]
    admin_tls_key: PathBuf;
    /// Comma-separated Origin allow-list for browser clients; empty = any.
    #[arg(env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String> = Vec::new();
    /// Template of the group every connection joins at connect [default: user_{user_id}].
    #[arg(env = "SWITCHBOARD_USER_GROUP")]
    user_group: String = "user_{user_id}".into();
    /// Comma-separated WebSocket paths [default: /ws/notifications/].
    #[arg(env = "SWITCHBOARD_WS_PATH", value_delimiter = ',')]
    ws_path: Vec<String> = vec![super::DEFAULT_WS_PATH.into()];
    /// Log format: text or json [default: text]. The level comes from RUST_LOG (default info).
    #[arg(env = "SWITCHBOARD_LOG_FORMAT", value_enum)]
    log_format: LogFormat = LogFormat::Text;
    /// Most WebSocket connections this node holds; more are closed with 1013 [default:
    /// derived from the open-file limit, keeping a reserve for RESP, admin, peers and files].
    #[arg(env = "SWITCHBOARD_MAX_CONNECTIONS")]
    max_connections: usize;
    /// Most WebSocket connections from one IP address; 0 = no limit [default: 0].
    #[arg(env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: usize = 0;
    /// Most WebSocket connections of one user on this node; 0 = no limit [default: 0].
    #[arg(env = "SWITCHBOARD_MAX_CONNECTIONS_PER_USER")]
    max_connections_per_user: usize = 0;
    /// Largest WebSocket frame or message a client may send, in bytes; larger closes with
    /// 1009 [default: 65536].
    #[arg(env = "SWITCHBOARD_MAX_FRAME_SIZE")]
    max_frame_size: usize = 64 * 1024;
    /// Messages queued per client before it counts as a slow consumer and is closed with
    /// 4008 [default: 1024].
    #[arg(env = "SWITCHBOARD_CLIENT_QUEUE")]
    client_queue: usize = 1024;
    /// Payload bytes queued per client before it counts as a slow consumer (4008); at
    /// least --max-payload [default: 4194304].
    #[arg(env = "SWITCHBOARD_CLIENT_QUEUE_BYTES")]
    client_queue_bytes: usize = 4 * 1024 * 1024;
    /// Most groups one connection may be in [default: 256].
    #[arg(env = "SWITCHBOARD_MAX_GROUPS_PER_CONNECTION")]
    max_groups_per_connection: usize = 256;
    /// Op budget units a second one WebSocket connection may spend (ping, subscribe: 1;
    /// presence: 2; refresh, a recovery: 5; presence_subscribe from an event id: 10);
    /// past it ops get `rate_limited`, and 50 refusals in a row close with 1008
    /// [default: 50].
    #[arg(env = "SWITCHBOARD_CLIENT_OPS_PER_SEC")]
    client_ops_per_sec: u32 = 50;
    /// Op budget units one WebSocket connection may spend at once [default: 300].
    #[arg(env = "SWITCHBOARD_CLIENT_OPS_BURST")]
    client_ops_burst: u32 = 300;
    /// Op budget units a second all WebSocket connections of this node may spend
    /// together; past it ops get `rate_limited` (the client is not blamed)
    /// [default: 100000].
    #[arg(env = "SWITCHBOARD_NODE_OPS_PER_SEC")]
    node_ops_per_sec: u32 = 100_000;
    /// Largest PUBLISH payload (and RESP bulk string) accepted, in bytes [default: 1048576].
    #[arg(env = "SWITCHBOARD_MAX_PAYLOAD")]
    max_payload: usize = 1024 * 1024;
    /// Largest RESP command (all its arguments), in bytes; refused on its headers, before
    /// the bytes arrive [default: --max-payload + 1048576].
    #[arg(env = "SWITCHBOARD_MAX_COMMAND_BYTES")]
    max_command_bytes: usize;
    /// Seconds a RESP connection may stay unauthenticated on a --resp-password node
    /// [default: 10].
    #[arg(env = "SWITCHBOARD_RESP_AUTH_TIMEOUT")]
    resp_auth_timeout: u64 = 10;
    /// Seconds of silence after which a RESP connection is closed; 0 = never, as Redis's
    /// `timeout 0` [default: 0].
    #[arg(env = "SWITCHBOARD_RESP_IDLE_TIMEOUT")]
    resp_idle_timeout: u64 = 0;
    /// Seconds to wait for clients to go during drain and shutdown [default: 10].
    #[arg(env = "SWITCHBOARD_SHUTDOWN_GRACE")]
    shutdown_grace: u64 = 10;
    /// When an open connection's token expires: connect-only (checked at connect and
    /// refresh, as Django Channels does) or close (4001 at `exp` unless refreshed)
    /// [default: connect-only].
    #[arg(env = "SWITCHBOARD_TOKEN_EXPIRY", value_enum)]
    token_expiry: TokenExpiry = TokenExpiry::ConnectOnly;
    /// For channels_redis events: send only this key of the event dict (e.g. `message`)
    /// instead of the whole event as JSON.
    #[arg(env = "SWITCHBOARD_CHANNELS_UNWRAP")]
    channels_unwrap: String;
    /// Key prefix channels_redis uses (its `prefix` option) [default: asgi].
    #[arg(env = "SWITCHBOARD_CHANNELS_PREFIX")]
    channels_prefix: String = "asgi".into();
    /// Milliseconds of silence after which a peer counts as down [default: 5000].
    #[arg(env = "SWITCHBOARD_NODE_TIMEOUT_MS")]
    node_timeout_ms: u64 = 5000;
    /// Most Raft voters; further members replicate as learners [default: 5].
    #[arg(env = "SWITCHBOARD_MAX_VOTERS")]
    max_voters: usize = 5;
    /// Presence registries: 0 keeps one in the control Raft group, which every member
    /// replicates; S > 0 splits it by user over S Raft groups of 3 voters each, so a node
    /// holds only the shards it votes in. Every node of a cluster must give the same
    /// value [default: 0].
    #[arg(env = "SWITCHBOARD_PRESENCE_SHARDS")]
    presence_shards: u16 = 0;
    /// Groups that keep history: PATTERN=SIZE[,TTL] rules, comma-separated
    /// (`user_*=100,10m,room_*=50`); clients recover what they missed from it.
    #[arg(env = "SWITCHBOARD_HISTORY")]
    history: String = String::new();
    /// Bytes of history one node holds, as owner and replica, over all groups; beyond,
    /// the least recently used groups lose their messages [default: 268435456].
    #[arg(env = "SWITCHBOARD_HISTORY_MAX_BYTES")]
    history_max_bytes: usize = 256 * 1024 * 1024;
    /// Presence events this node keeps for readers that resume (`Last-Event-ID`,
    /// `since`); one resuming from further back gets a `reset` with the current state.
    /// 0 keeps none [default: 65536; at most 64 MiB of events whatever the count].
    #[arg(env = "SWITCHBOARD_PRESENCE_EVENTS")]
    presence_events: usize = super::DEFAULT_PRESENCE_EVENTS;
    /// Where the Django project mounted the backend bridge (`switchboard_channels`), for
    /// example http://127.0.0.1:8000/switchboard/: the node calls it for each
    /// connection's connect (after the token check), each client frame that is not a
    /// Switchboard op, and its disconnect. Unset: no calls.
    #[arg(env = "SWITCHBOARD_BACKEND_URL")]
    backend_url: String;
    /// The key every call to the backend is signed with (the bridge's Django setting
    /// SWITCHBOARD_BACKEND_SECRET); needed with --backend-url.
    #[arg(env = "SWITCHBOARD_BACKEND_SECRET", hide_env_values = true)]
    backend_secret: String;
    /// File holding the backend secret (read at start and on SIGHUP).
    #[arg(env = "SWITCHBOARD_BACKEND_SECRET_FILE")]
    backend_secret_file: PathBuf;
    /// Milliseconds a backend call may take, waiting for a slot included [default: 5000].
    #[arg(env = "SWITCHBOARD_BACKEND_TIMEOUT_MS")]
    backend_timeout_ms: u64 = 5000;
    /// A connect the backend does not answer: refuse (close 1013, try again later) or
    /// accept (the connection opens without the consumer's connect) [default: refuse].
    #[arg(env = "SWITCHBOARD_BACKEND_UNAVAILABLE", value_enum)]
    backend_unavailable: BackendUnavailable = BackendUnavailable::Refuse;
    /// Backend calls this node makes at once; more wait (within their timeout)
    /// [default: 256].
    #[arg(env = "SWITCHBOARD_BACKEND_MAX_INFLIGHT")]
    backend_max_inflight: usize = 256;
    /// Frames a second one connection may send to the backend (one second's worth at
    /// once); more get a `rate_limited` error [default: 20].
    #[arg(env = "SWITCHBOARD_BACKEND_FRAMES_PER_SEC")]
    backend_frames_per_sec: u32 = 20;
    /// Bytes a second one connection may send to the backend [default: 65536].
    #[arg(env = "SWITCHBOARD_BACKEND_BYTES_PER_SEC")]
    backend_bytes_per_sec: u64 = 64 * 1024;
    /// Connections whose disconnect call may wait for a backend that fails it (retried
    /// with backoff); past it the oldest is given up, and counted [default: 100000].
    #[arg(env = "SWITCHBOARD_BACKEND_MAX_PENDING")]
    backend_max_pending: usize = 100_000;
    /// Seconds a revocation (`switchboard revoke`) is kept after its time: give at least
    /// the longest lifetime of the tokens you issue [default: 86400].
    #[arg(env = "SWITCHBOARD_REVOCATION_TTL")]
    revocation_ttl: u64 = 86_400;
    /// Request headers a connection's scope carries to the backend, comma-separated
    /// [default: host, origin, cookie, user-agent, authorization, x-forwarded-for,
    /// x-forwarded-proto, x-real-ip, accept-language].
    #[arg(env = "SWITCHBOARD_BACKEND_HEADERS", value_delimiter = ',')]
    backend_headers: Vec<String> = super::DEFAULT_BACKEND_HEADERS.iter().map(|h| (*h).to_owned()).collect();
}
