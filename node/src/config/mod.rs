//! `switchboard serve` configuration: flags, `SWITCHBOARD_*` environment variables and a
//! TOML file, resolved with the precedence flag > environment > file > default.
//!
//! Each setting is declared once, in [`args`] (flag, variable, key, type, default);
//! [`resolve`] checks them and builds the [`Config`] a node runs with, in narrow parts
//! ([`Listen`], [`WsSettings`], [`RespSettings`], ...) that each part of the node takes
//! instead of the whole.

mod args;
mod resolve;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use args::ServeArgs;
pub use resolve::{
    FD_RESERVE, HEALTH_SOCKETS, MAX_RESP_CONNECTIONS, derive_capacity, open_file_limit,
    parse_history,
};

/// The WebSocket path served when `--ws-path` names none (the old deployment's).
pub const DEFAULT_WS_PATH: &str = "/ws/notifications/";

/// Presence events a node keeps by default (`--presence-events`).
pub const DEFAULT_PRESENCE_EVENTS: usize = 65_536;

/// The request headers a connection's scope carries to the backend by default
/// (`--backend-headers`): what Django middleware and consumers read.
pub const DEFAULT_BACKEND_HEADERS: &[&str] = &[
    "host",
    "origin",
    "cookie",
    "user-agent",
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
    "accept-language",
];

/// What a connect does when the backend does not answer it (`--backend-unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendUnavailable {
    /// Close with 1013 (try again later).
    #[default]
    Refuse,
    /// Open the connection without the consumer's connect.
    Accept,
}

/// The backend bridge (`--backend-*`).
#[derive(Debug, Clone)]
pub struct BackendSettings {
    pub url: String,
    pub timeout: Duration,
    pub unavailable: BackendUnavailable,
    pub max_inflight: usize,
    pub frames_per_sec: u32,
    pub bytes_per_sec: u64,
    pub max_pending: usize,
    /// Header names, lower case.
    pub headers: Vec<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What an open WebSocket connection does when its token's `exp` passes
/// (`--token-expiry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TokenExpiry {
    /// The token is checked when the connection opens (and on `refresh`), as Django
    /// Channels' JWT middleware does: an open connection outlives its token.
    #[default]
    ConnectOnly,
    /// The connection is closed with 4001 when its token expires, unless the client sent
    /// a fresh one with the `refresh` op first.
    Close,
}

/// The resolved configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// How long drain and shutdown wait for clients to go.
    pub shutdown_grace: Duration,
    pub listen: Listen,
    pub credentials: Credentials,
    pub tls: TlsSettings,
    pub cluster: ClusterSettings,
    pub ws: WsSettings,
    pub resp: RespSettings,
    pub history: HistorySettings,
    /// Largest payload a publish may carry (RESP, HTTP).
    pub max_payload: usize,
    /// Host names the admin API answers to besides IP literals and `localhost`.
    pub admin_hosts: Vec<String>,
    /// `--presence-events`: events kept in the ring.
    pub presence_events: usize,
    /// `--backend-url` and its settings; `None` without one.
    pub backend: Option<BackendSettings>,
    /// `--revocation-ttl`: how long a revocation is kept after its time.
    pub revocation_ttl: Duration,
}

/// Where the node listens, and how others name it.
#[derive(Debug, Clone)]
pub struct Listen {
    pub ws: SocketAddr,
    pub resp: SocketAddr,
    pub peer: SocketAddr,
    pub admin: SocketAddr,
    /// `--advertise`: the host others reach this node at (else its listen addresses).
    pub advertise: Option<String>,
}

/// What tokens, peers, RESP clients and admins prove themselves with.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub jwt: JwtKey,
    pub jwt_audience: Vec<String>,
    pub jwt_issuer: Vec<String>,
    pub cluster_secret: Option<Secret>,
    pub resp_password: Option<Secret>,
    /// `--admin-token` (one token, every scope) or `--admin-token-file` (see
    /// `secrets::AdminTokens`).
    pub admin_tokens: Option<Secret>,
    /// `--backend-secret[-file]`: what calls to the backend are signed with.
    pub backend_secret: Option<Secret>,
}

/// Certificates of the node's TLS endpoints.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// `--tls-cert`/`--tls-key`: wss:// on the WebSocket port.
    pub ws: Option<TlsFiles>,
    /// `--admin-tls-cert`/`--admin-tls-key`: HTTPS on the admin port.
    pub admin: Option<TlsFiles>,
    /// The cluster CA mode: (CA, certificate, key) PEM files.
    pub cluster_ca: Option<ClusterCa>,
}

/// The cluster's membership settings.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub seeds: Vec<String>,
    /// Silence after which a peer counts as down.
    pub node_timeout: Duration,
    pub max_voters: usize,
    /// `--presence-shards`: 0, or the number of presence shards (one Raft group each).
    pub presence_shards: u16,
}

/// What the WebSocket port accepts and how its clients are served.
#[derive(Debug, Clone)]
pub struct WsSettings {
    pub paths: Vec<String>,
    pub allowed_origins: Vec<String>,
    /// The template of the group every connection joins (`user_{user_id}`).
    pub user_group: String,
    pub max_connections: usize,
    /// Whether `max_connections` was given (else it was derived from the open-file limit).
    pub max_connections_given: bool,
    /// 0 = no limit.
    pub max_connections_per_ip: usize,
    /// 0 = no limit.
    pub max_connections_per_user: usize,
    pub max_frame_size: usize,
    pub client_queue: usize,
    pub client_queue_bytes: usize,
    pub max_groups_per_connection: usize,
    pub token_expiry: TokenExpiry,
    pub ops: OpLimits,
}

/// The op budget of WebSocket clients, in units (an op costs 1 to 10; docs/security.md
/// "Op budgets").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpLimits {
    /// Units a second one connection may spend.
    pub per_sec: u32,
    /// Units one connection may spend at once.
    pub burst: u32,
    /// Units a second the node's connections may spend together.
    pub node_per_sec: u32,
}

impl WsSettings {
    /// The user group of `user` (`user_42` for the default template).
    pub fn user_group_of(&self, user: &str) -> String {
        self.user_group.replace("{user_id}", user)
    }
}

/// The RESP ingest shim's limits and channels_redis compatibility.
#[derive(Debug, Clone)]
pub struct RespSettings {
    /// Most RESP connections at once (derived from the open-file limit, at most 10 000).
    pub max_connections: usize,
    pub max_command_bytes: usize,
    pub auth_timeout: Duration,
    /// `None` = never.
    pub idle_timeout: Option<Duration>,
    pub channels_unwrap: Option<String>,
    pub channels_prefix: String,
}

/// Which groups keep history, and how much one node holds.
#[derive(Debug, Clone, Default)]
pub struct HistorySettings {
    /// `--history` rules, in order.
    pub rules: Vec<HistoryRule>,
    pub max_bytes: usize,
}

/// One `--history` rule: groups matching the glob `pattern` keep their last `size`
/// messages, for at most `ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRule {
    pub pattern: String,
    pub size: usize,
    pub ttl: Option<Duration>,
}

/// The most presence shards `--presence-shards` may ask for (each is a Raft group of 3
/// voters; a node hosts about 3·S/N of them).
pub const MAX_PRESENCE_SHARDS: u16 = 256;

/// The most messages one group may keep.
pub const MAX_HISTORY_SIZE: usize = 100_000;

/// A secret: given inline (a flag, the environment, the file's key), or a file read at
/// start and again on SIGHUP. Its value is never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Value(String),
    File(PathBuf),
}

impl Secret {
    /// The secret's value; a file's content without its trailing newline.
    pub fn load(&self) -> Result<String, ConfigError> {
        let value = match self {
            Secret::Value(v) => v.clone(),
            Secret::File(path) => std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        };
        if value.is_empty() {
            return Err(ConfigError::Invalid(format!("{self:?} is empty")));
        }
        Ok(value)
    }

    /// From a value flag and a file flag: at most one may be given.
    pub(super) fn from_pair(
        name: &str,
        value: Option<String>,
        file: Option<PathBuf>,
    ) -> Result<Option<Secret>, ConfigError> {
        match (value.filter(|v| !v.is_empty()), file) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
                "give either --{name} or --{name}-file, not both"
            ))),
            (Some(v), None) => Ok(Some(Secret::Value(v))),
            (None, Some(path)) => Ok(Some(Secret::File(path))),
            (None, None) => Ok(None),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("Secret(<redacted>)"),
            Secret::File(path) => write!(f, "the secret file {}", path.display()),
        }
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::Value(value.to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::Value(value)
    }
}

/// A certificate chain and its key, PEM files (re-read on SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// PEM files of the cluster CA mode (`--cluster-ca`, `--cluster-cert`, `--cluster-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where tokens are verified from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// `--jwt-secret` or `--jwt-secret-file`.
    Secret(Secret),
    /// `--jwt-public-key`.
    PublicKey(PathBuf),
    /// Neither: development mode, with a secret generated into the data dir.
    Development,
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Listen {
    /// How other nodes (and `members`) name this node's listener at `addr`: `--advertise`
    /// with its port, else the address as bound.
    pub fn advertised(&self, addr: SocketAddr) -> String {
        match &self.advertise {
            Some(host) => format!("{host}:{}", addr.port()),
            None => addr.to_string(),
        }
    }
}

impl Config {
    /// Checks the safety rules of the contract: without a JWT key the WebSocket and RESP
    /// ports stay on loopback; without a cluster secret the peer port does; without an
    /// admin token the admin port does.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        let (listen, credentials) = (&self.listen, &self.credentials);
        if credentials.jwt == JwtKey::Development {
            for (flag, addr) in [("--ws-listen", listen.ws), ("--resp-listen", listen.resp)] {
                if !addr.ip().is_loopback() {
                    return Err(ConfigError::Invalid(format!(
                        "refusing to bind {flag} {addr} beyond loopback without a JWT key: \
                         set --jwt-secret or --jwt-public-key (development mode is loopback only)"
                    )));
                }
            }
        }
        if credentials.admin_tokens.is_none() && !listen.admin.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "refusing to bind --admin-listen {} beyond loopback without an admin token: \
                 set --admin-token-file (or --admin-token)",
                listen.admin
            )));
        }
        if credentials.cluster_secret.is_none()
            && self.tls.cluster_ca.is_none()
            && !listen.peer.ip().is_loopback()
        {
            return Err(ConfigError::Invalid(format!(
                "refusing to bind --peer-listen {} beyond loopback without --cluster-secret \
                 (or --cluster-ca, --cluster-cert and --cluster-key)",
                listen.peer
            )));
        }
        Ok(())
    }

    /// A configuration for tests: every port on 127.0.0.1:0, a temporary data dir, the
    /// connection limits of a 65 536-descriptor process.
    pub fn for_tests(data_dir: PathBuf) -> Config {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = ServeArgs::default()
            .resolve(65_536)
            .expect("the defaults are a valid configuration");
        config.listen.ws = any;
        config.listen.resp = any;
        config.listen.peer = any;
        config.listen.admin = any;
        config.data_dir = data_dir;
        config.shutdown_grace = Duration::from_secs(2);
        config
    }
}
