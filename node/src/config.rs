//! `switchboard serve` configuration: flags, `SWITCHBOARD_*` environment variables and a
//! TOML file, resolved with the precedence flag > environment > file > default.
//!
//! clap reads flags and environment variables into [`ServeArgs`], where every setting is
//! an `Option` with no clap default, so an unset setting is `None` and the file (then the
//! built-in default) fills it in [`ServeArgs::resolve`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Presence events a node keeps by default (`--presence-events`).
pub const DEFAULT_PRESENCE_EVENTS: usize = 65_536;

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

/// Flags of `switchboard serve`. Each also reads `SWITCHBOARD_<FLAG>` and the TOML key of
/// the same name with underscores (`jwt_secret = "..."`).
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys in snake_case).
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Unique id of this node in the cluster [default: 1].
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<u64>,
    /// WebSocket endpoint, plus /healthz and /readyz [default: 127.0.0.1:8001].
    #[arg(long, env = "SWITCHBOARD_WS_LISTEN")]
    pub ws_listen: Option<SocketAddr>,
    /// Redis-protocol ingest shim [default: 127.0.0.1:6379].
    #[arg(long, env = "SWITCHBOARD_RESP_LISTEN")]
    pub resp_listen: Option<SocketAddr>,
    /// QUIC (UDP) for node-to-node traffic [default: 127.0.0.1:7001].
    #[arg(long, env = "SWITCHBOARD_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// Admin HTTP API used by the CLI, and /metrics [default: 127.0.0.1:8002].
    #[arg(long, env = "SWITCHBOARD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// The host name or address other nodes (and the members list) use for this node,
    /// with the ports of the --*-listen flags; needed when those bind 0.0.0.0 (a
    /// container, a Kubernetes pod: `$(POD_NAME).switchboard-peers`) [default: the
    /// listen addresses as bound].
    #[arg(long, env = "SWITCHBOARD_ADVERTISE")]
    pub advertise: Option<String>,
    /// Comma-separated peer addresses of existing members; empty = bootstrap a new cluster.
    #[arg(long, env = "SWITCHBOARD_SEEDS", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Raft log, vote and snapshots [default: ./switchboard-data/node-<id>].
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HMAC secret for HS256/384/512 tokens (Django's SECRET_KEY works as-is for SimpleJWT).
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// File holding the JWT secret (read at start and on SIGHUP), instead of --jwt-secret.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM file for RS*/PS*/ES*/EdDSA tokens.
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Comma-separated accepted `aud` values; unset = `aud` not checked.
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Option<Vec<String>>,
    /// Comma-separated accepted `iss` values; unset = `iss` not checked.
    #[arg(long, env = "SWITCHBOARD_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Option<Vec<String>>,
    /// Secret every peer must prove before it can join or send anything.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// File holding the cluster secret (read at start and on SIGHUP).
    #[arg(long, env = "SWITCHBOARD_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// PEM file of the cluster CA: peers must present a certificate it signed (mutual
    /// TLS). Needs --cluster-cert and --cluster-key.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_CA")]
    pub cluster_ca: Option<PathBuf>,
    /// PEM file of this node's certificate (chain), signed by the cluster CA.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_CERT")]
    pub cluster_cert: Option<PathBuf>,
    /// PEM file of this node's private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SWITCHBOARD_CLUSTER_KEY")]
    pub cluster_key: Option<PathBuf>,
    /// When set, RESP clients must AUTH first.
    #[arg(long, env = "SWITCHBOARD_RESP_PASSWORD", hide_env_values = true)]
    pub resp_password: Option<String>,
    /// File holding the RESP password (read at start and on SIGHUP).
    #[arg(long, env = "SWITCHBOARD_RESP_PASSWORD_FILE")]
    pub resp_password_file: Option<PathBuf>,
    /// Bearer token the admin API requires (all scopes). Health checks stay open.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File of admin tokens, one a line, each optionally followed by a space and its
    /// scopes (read, write, publish; comma-separated; none = all). Re-read on SIGHUP.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Comma-separated host names the admin API answers to, besides IP literals and
    /// localhost (the Host header is checked, so DNS rebinding cannot reach it).
    #[arg(long, env = "SWITCHBOARD_ADMIN_HOSTS", value_delimiter = ',')]
    pub admin_hosts: Option<Vec<String>>,
    /// PEM certificate chain: the WebSocket port serves wss:// (and HTTPS health checks).
    #[arg(long, env = "SWITCHBOARD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate chain for the admin port (HTTPS).
    #[arg(long, env = "SWITCHBOARD_ADMIN_TLS_CERT")]
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key for --admin-tls-cert.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TLS_KEY")]
    pub admin_tls_key: Option<PathBuf>,
    /// Comma-separated Origin allow-list for browser clients; empty = any.
    #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Template of the group every connection joins at connect [default: user_{user_id}].
    #[arg(long, env = "SWITCHBOARD_USER_GROUP")]
    pub user_group: Option<String>,
    /// Comma-separated WebSocket paths [default: /ws/notifications/].
    #[arg(long, env = "SWITCHBOARD_WS_PATH", value_delimiter = ',')]
    pub ws_path: Option<Vec<String>>,
    /// Log format: text or json [default: text]. The level comes from RUST_LOG (default info).
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Most WebSocket connections this node holds; more are closed with 1013 [default:
    /// derived from the open-file limit, keeping a reserve for RESP, admin, peers and files].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most WebSocket connections from one IP address; 0 = no limit [default: 0].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Most WebSocket connections of one user on this node; 0 = no limit [default: 0].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_USER")]
    pub max_connections_per_user: Option<usize>,
    /// Largest WebSocket frame or message a client may send, in bytes; larger closes with
    /// 1009 [default: 65536].
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_SIZE")]
    pub max_frame_size: Option<usize>,
    /// Messages queued per client before it counts as a slow consumer and is closed with
    /// 4008 [default: 1024].
    #[arg(long, env = "SWITCHBOARD_CLIENT_QUEUE")]
    pub client_queue: Option<usize>,
    /// Payload bytes queued per client before it counts as a slow consumer (4008); at
    /// least --max-payload [default: 4194304].
    #[arg(long, env = "SWITCHBOARD_CLIENT_QUEUE_BYTES")]
    pub client_queue_bytes: Option<usize>,
    /// Most groups one connection may be in [default: 256].
    #[arg(long, env = "SWITCHBOARD_MAX_GROUPS_PER_CONNECTION")]
    pub max_groups_per_connection: Option<usize>,
    /// Largest PUBLISH payload (and RESP bulk string) accepted, in bytes [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_MAX_PAYLOAD")]
    pub max_payload: Option<usize>,
    /// Largest RESP command (all its arguments), in bytes; refused on its headers, before
    /// the bytes arrive [default: --max-payload + 1048576].
    #[arg(long, env = "SWITCHBOARD_MAX_COMMAND_BYTES")]
    pub max_command_bytes: Option<usize>,
    /// Seconds a RESP connection may stay unauthenticated on a --resp-password node
    /// [default: 10].
    #[arg(long, env = "SWITCHBOARD_RESP_AUTH_TIMEOUT")]
    pub resp_auth_timeout: Option<u64>,
    /// Seconds of silence after which a RESP connection is closed; 0 = never, as Redis's
    /// `timeout 0` [default: 0].
    #[arg(long, env = "SWITCHBOARD_RESP_IDLE_TIMEOUT")]
    pub resp_idle_timeout: Option<u64>,
    /// Seconds to wait for clients to go during drain and shutdown [default: 10].
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<u64>,
    /// When an open connection's token expires: connect-only (checked at connect and
    /// refresh, as Django Channels does) or close (4001 at `exp` unless refreshed)
    /// [default: connect-only].
    #[arg(long, env = "SWITCHBOARD_TOKEN_EXPIRY", value_enum)]
    pub token_expiry: Option<TokenExpiry>,
    /// For channels_redis events: send only this key of the event dict (e.g. `message`)
    /// instead of the whole event as JSON.
    #[arg(long, env = "SWITCHBOARD_CHANNELS_UNWRAP")]
    pub channels_unwrap: Option<String>,
    /// Key prefix channels_redis uses (its `prefix` option) [default: asgi].
    #[arg(long, env = "SWITCHBOARD_CHANNELS_PREFIX")]
    pub channels_prefix: Option<String>,
    /// Milliseconds of silence after which a peer counts as down [default: 5000].
    #[arg(long, env = "SWITCHBOARD_NODE_TIMEOUT_MS")]
    pub node_timeout_ms: Option<u64>,
    /// Most Raft voters; further members replicate as learners [default: 5].
    #[arg(long, env = "SWITCHBOARD_MAX_VOTERS")]
    pub max_voters: Option<usize>,
    /// Groups that keep history: PATTERN=SIZE[,TTL] rules, comma-separated
    /// (`user_*=100,10m,room_*=50`); clients recover what they missed from it.
    #[arg(long, env = "SWITCHBOARD_HISTORY")]
    pub history: Option<String>,
    /// Bytes of history one node holds, as owner and replica, over all groups; beyond,
    /// the least recently used groups lose their messages [default: 268435456].
    #[arg(long, env = "SWITCHBOARD_HISTORY_MAX_BYTES")]
    pub history_max_bytes: Option<usize>,
    /// Presence events this node keeps for readers that resume (`Last-Event-ID`,
    /// `since`); one resuming from further back gets a `reset` with the current state.
    /// 0 keeps none [default: 65536; at most 64 MiB of events whatever the count].
    #[arg(long, env = "SWITCHBOARD_PRESENCE_EVENTS")]
    pub presence_events: Option<usize>,
}

/// The resolved configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: u64,
    pub ws_listen: SocketAddr,
    pub resp_listen: SocketAddr,
    pub peer_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `--advertise`: the host others reach this node at (else its listen addresses).
    pub advertise: Option<String>,
    pub seeds: Vec<String>,
    pub data_dir: PathBuf,
    pub jwt: JwtKey,
    pub jwt_audience: Vec<String>,
    pub jwt_issuer: Vec<String>,
    pub cluster_secret: Option<Secret>,
    /// The cluster CA mode: (CA, certificate, key) PEM files.
    pub cluster_ca: Option<ClusterCa>,
    pub resp_password: Option<Secret>,
    /// `--admin-token` (one token, every scope) or `--admin-token-file` (see
    /// `secrets::AdminTokens`).
    pub admin_tokens: Option<Secret>,
    /// Host names the admin API answers to besides IP literals and `localhost`.
    pub admin_hosts: Vec<String>,
    /// `--tls-cert`/`--tls-key`: wss:// on the WebSocket port.
    pub tls: Option<TlsFiles>,
    /// `--admin-tls-cert`/`--admin-tls-key`: HTTPS on the admin port.
    pub admin_tls: Option<TlsFiles>,
    pub allowed_origins: Vec<String>,
    pub user_group: String,
    pub ws_paths: Vec<String>,
    pub log_format: LogFormat,
    pub max_connections: usize,
    /// Whether `max_connections` was given (else it was derived from the open-file limit).
    pub max_connections_given: bool,
    /// Most RESP connections at once (derived from the open-file limit, at most 10 000).
    pub max_resp_connections: usize,
    /// 0 = no limit.
    pub max_connections_per_ip: usize,
    /// 0 = no limit.
    pub max_connections_per_user: usize,
    pub max_frame_size: usize,
    pub client_queue: usize,
    pub client_queue_bytes: usize,
    pub max_groups_per_connection: usize,
    pub max_payload: usize,
    pub max_command_bytes: usize,
    pub resp_auth_timeout: Duration,
    /// `None` = never.
    pub resp_idle_timeout: Option<Duration>,
    pub shutdown_grace: Duration,
    pub token_expiry: TokenExpiry,
    pub channels_unwrap: Option<String>,
    pub channels_prefix: String,
    pub node_timeout: Duration,
    pub max_voters: usize,
    /// `--history` rules, in order.
    pub history: Vec<HistoryRule>,
    pub history_max_bytes: usize,
    /// `--presence-events`: events kept in the ring.
    pub presence_events: usize,
}

/// One `--history` rule: groups matching the glob `pattern` keep their last `size`
/// messages, for at most `ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRule {
    pub pattern: String,
    pub size: usize,
    pub ttl: Option<Duration>,
}

/// The most messages one group may keep.
pub const MAX_HISTORY_SIZE: usize = 100_000;

/// Parses `--history`: `PATTERN=SIZE[,TTL]` rules, comma-separated; a TTL (`90s`, `10m`,
/// `2h`, `1d`) follows its rule's size after a comma.
pub fn parse_history(text: &str) -> Result<Vec<HistoryRule>, String> {
    let mut rules: Vec<HistoryRule> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('=') {
            Some((pattern, size)) => {
                let size: usize = size.trim().parse().map_err(|_| {
                    format!("--history '{item}': the size after '=' must be a number of messages")
                })?;
                if size == 0 || size > MAX_HISTORY_SIZE {
                    return Err(format!(
                        "--history '{item}': the size must be between 1 and {MAX_HISTORY_SIZE}"
                    ));
                }
                let pattern = pattern.trim();
                if pattern.is_empty() {
                    return Err(format!("--history '{item}': no group pattern before '='"));
                }
                rules.push(HistoryRule {
                    pattern: pattern.to_owned(),
                    size,
                    ttl: None,
                });
            }
            None => {
                let ttl = ttl(item).ok_or_else(|| {
                    format!("--history '{item}': not PATTERN=SIZE nor a TTL like 90s, 10m, 2h")
                })?;
                match rules.last_mut() {
                    Some(rule) if rule.ttl.is_none() => rule.ttl = Some(ttl),
                    _ => {
                        return Err(format!(
                            "--history '{item}': a TTL follows its PATTERN=SIZE, once"
                        ));
                    }
                }
            }
        }
    }
    Ok(rules)
}

fn ttl(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

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
    fn from_pair(
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

/// Descriptors kept for everything but client sockets: listeners, the Raft store, log
/// files, admin requests and peer connections.
pub const FD_RESERVE: usize = 512;
/// Sockets the WebSocket port may hold beyond `--max-connections`: health checks, and
/// connections being answered 1013 because the node is full.
pub const HEALTH_SOCKETS: usize = 1024;
/// The most RESP connections a node takes, whatever the descriptor limit.
pub const MAX_RESP_CONNECTIONS: usize = 10_000;
/// The least `--max-connections` derived from a small descriptor limit.
const MIN_DERIVED_CONNECTIONS: usize = 64;

/// What a node can hold with `open_files` descriptors: (WebSocket clients, RESP
/// connections). RESP gets an eighth (at most [`MAX_RESP_CONNECTIONS`]); the rest, less
/// [`FD_RESERVE`] and [`HEALTH_SOCKETS`], is for WebSocket clients.
pub fn derive_capacity(open_files: usize) -> (usize, usize) {
    let resp = (open_files / 8).clamp(16, MAX_RESP_CONNECTIONS);
    let ws = open_files
        .saturating_sub(FD_RESERVE + HEALTH_SOCKETS + resp)
        .max(MIN_DERIVED_CONNECTIONS);
    (ws, resp)
}

/// The process's soft limit on open files (Linux: `/proc/self/limits`).
pub fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
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

impl ServeArgs {
    /// Reads the `--config` file, if any, and resolves every setting.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => Self::read_file(path)?,
            None => ServeArgs::default(),
        };
        self.merge(file).finish()
    }

    fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })
    }

    /// Every setting from `self` (flags and environment) where set, else from `file`.
    fn merge(self, file: ServeArgs) -> ServeArgs {
        macro_rules! pick {
            ($($field:ident),*) => { ServeArgs { config: self.config, $($field: self.$field.or(file.$field)),* } };
        }
        pick!(
            node_id,
            ws_listen,
            resp_listen,
            peer_listen,
            admin_listen,
            advertise,
            seeds,
            data_dir,
            jwt_secret,
            jwt_secret_file,
            jwt_public_key,
            jwt_audience,
            jwt_issuer,
            cluster_secret,
            cluster_secret_file,
            cluster_ca,
            cluster_cert,
            cluster_key,
            resp_password,
            resp_password_file,
            admin_token,
            admin_token_file,
            admin_hosts,
            tls_cert,
            tls_key,
            admin_tls_cert,
            admin_tls_key,
            allowed_origins,
            user_group,
            ws_path,
            log_format,
            max_connections,
            max_connections_per_ip,
            max_connections_per_user,
            max_frame_size,
            client_queue,
            client_queue_bytes,
            max_groups_per_connection,
            max_payload,
            max_command_bytes,
            resp_auth_timeout,
            resp_idle_timeout,
            shutdown_grace,
            token_expiry,
            channels_unwrap,
            channels_prefix,
            node_timeout_ms,
            max_voters,
            history,
            history_max_bytes,
            presence_events
        )
    }

    fn finish(self) -> Result<Config, ConfigError> {
        let node_id = self.node_id.unwrap_or(1);
        let positive = |name: &str, value: usize| {
            if value == 0 {
                Err(ConfigError::Invalid(format!("{name} must be at least 1")))
            } else {
                Ok(value)
            }
        };

        let parse = |s: &str| s.parse::<SocketAddr>().expect("built-in address parses");
        let jwt = match (
            Secret::from_pair("jwt-secret", self.jwt_secret, self.jwt_secret_file)?,
            self.jwt_public_key,
        ) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give either --jwt-secret (or --jwt-secret-file) or --jwt-public-key, not both"
                        .into(),
                ));
            }
            (Some(secret), None) => JwtKey::Secret(secret),
            (None, Some(path)) => JwtKey::PublicKey(path),
            (None, None) => JwtKey::Development,
        };
        let tls_pair = |name: &str, cert: Option<PathBuf>, key: Option<PathBuf>| match (cert, key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
            _ => Err(ConfigError::Invalid(format!(
                "--{name}-cert and --{name}-key go together: give both"
            ))),
        };
        let max_payload = positive("--max-payload", self.max_payload.unwrap_or(1024 * 1024))?;
        let (derived_ws, max_resp_connections) =
            derive_capacity(open_file_limit().unwrap_or(1 << 20));
        let non_empty = |list: Option<Vec<String>>| -> Vec<String> {
            list.unwrap_or_default()
                .into_iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let mut ws_paths = non_empty(self.ws_path);
        if ws_paths.is_empty() {
            ws_paths.push("/ws/notifications/".into());
        }
        if let Some(bad) = ws_paths.iter().find(|p| !p.starts_with('/')) {
            return Err(ConfigError::Invalid(format!(
                "--ws-path '{bad}' must start with '/'"
            )));
        }
        let user_group = self.user_group.unwrap_or_else(|| "user_{user_id}".into());
        if !user_group.contains("{user_id}") {
            return Err(ConfigError::Invalid(format!(
                "--user-group '{user_group}' must contain {{user_id}}"
            )));
        }
        Ok(Config {
            node_id,
            ws_listen: self.ws_listen.unwrap_or_else(|| parse("127.0.0.1:8001")),
            resp_listen: self.resp_listen.unwrap_or_else(|| parse("127.0.0.1:6379")),
            peer_listen: self.peer_listen.unwrap_or_else(|| parse("127.0.0.1:7001")),
            admin_listen: self.admin_listen.unwrap_or_else(|| parse("127.0.0.1:8002")),
            advertise: self
                .advertise
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty()),
            seeds: non_empty(self.seeds),
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(format!("./switchboard-data/node-{node_id}"))),
            jwt,
            jwt_audience: non_empty(self.jwt_audience),
            jwt_issuer: non_empty(self.jwt_issuer),
            cluster_secret: Secret::from_pair(
                "cluster-secret",
                self.cluster_secret,
                self.cluster_secret_file,
            )?,
            cluster_ca: match (self.cluster_ca, self.cluster_cert, self.cluster_key) {
                (None, None, None) => None,
                (Some(ca), Some(cert), Some(key)) => Some(ClusterCa { ca, cert, key }),
                _ => {
                    return Err(ConfigError::Invalid(
                        "--cluster-ca, --cluster-cert and --cluster-key go together: give all three"
                            .into(),
                    ));
                }
            },
            resp_password: Secret::from_pair(
                "resp-password",
                self.resp_password,
                self.resp_password_file,
            )?,
            admin_tokens: Secret::from_pair(
                "admin-token",
                self.admin_token,
                self.admin_token_file,
            )?,
            admin_hosts: non_empty(self.admin_hosts),
            tls: tls_pair("tls", self.tls_cert, self.tls_key)?,
            admin_tls: tls_pair("admin-tls", self.admin_tls_cert, self.admin_tls_key)?,
            allowed_origins: non_empty(self.allowed_origins),
            user_group,
            ws_paths,
            log_format: self.log_format.unwrap_or_default(),
            max_connections: positive(
                "--max-connections",
                self.max_connections.unwrap_or(derived_ws),
            )?,
            max_connections_given: self.max_connections.is_some(),
            max_resp_connections,
            max_connections_per_ip: self.max_connections_per_ip.unwrap_or(0),
            max_connections_per_user: self.max_connections_per_user.unwrap_or(0),
            max_frame_size: positive("--max-frame-size", self.max_frame_size.unwrap_or(64 * 1024))?,
            client_queue: positive("--client-queue", self.client_queue.unwrap_or(1024))?,
            client_queue_bytes: positive(
                "--client-queue-bytes",
                self.client_queue_bytes.unwrap_or(4 * 1024 * 1024),
            )?
            .max(max_payload),
            max_groups_per_connection: positive(
                "--max-groups-per-connection",
                self.max_groups_per_connection.unwrap_or(256),
            )?,
            max_payload,
            max_command_bytes: positive(
                "--max-command-bytes",
                self.max_command_bytes.unwrap_or(max_payload + 1024 * 1024),
            )?,
            resp_auth_timeout: Duration::from_secs(positive(
                "--resp-auth-timeout",
                self.resp_auth_timeout.unwrap_or(10) as usize,
            )? as u64),
            resp_idle_timeout: self
                .resp_idle_timeout
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace.unwrap_or(10)),
            token_expiry: self.token_expiry.unwrap_or_default(),
            channels_unwrap: self.channels_unwrap.filter(|s| !s.is_empty()),
            channels_prefix: self.channels_prefix.unwrap_or_else(|| "asgi".into()),
            node_timeout: Duration::from_millis(positive(
                "--node-timeout-ms",
                self.node_timeout_ms.unwrap_or(5000) as usize,
            )? as u64),
            max_voters: positive("--max-voters", self.max_voters.unwrap_or(5))?,
            history: parse_history(self.history.as_deref().unwrap_or_default())
                .map_err(ConfigError::Invalid)?,
            history_max_bytes: positive(
                "--history-max-bytes",
                self.history_max_bytes.unwrap_or(256 * 1024 * 1024),
            )?,
            presence_events: self.presence_events.unwrap_or(DEFAULT_PRESENCE_EVENTS),
        })
    }
}

impl Config {
    /// How other nodes (and `members`) name this node's listener at `addr`: `--advertise`
    /// with its port, else the address as bound.
    pub fn advertised(&self, addr: SocketAddr) -> String {
        match &self.advertise {
            Some(host) => format!("{host}:{}", addr.port()),
            None => addr.to_string(),
        }
    }

    /// Checks the safety rules of the contract: without a JWT key the WebSocket and RESP
    /// ports stay on loopback; without a cluster secret the peer port does; without an
    /// admin token the admin port does.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.jwt == JwtKey::Development {
            for (flag, addr) in [
                ("--ws-listen", self.ws_listen),
                ("--resp-listen", self.resp_listen),
            ] {
                if !addr.ip().is_loopback() {
                    return Err(ConfigError::Invalid(format!(
                        "refusing to bind {flag} {addr} beyond loopback without a JWT key: \
                         set --jwt-secret or --jwt-public-key (development mode is loopback only)"
                    )));
                }
            }
        }
        if self.admin_tokens.is_none() && !self.admin_listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "refusing to bind --admin-listen {} beyond loopback without an admin token: \
                 set --admin-token-file (or --admin-token)",
                self.admin_listen
            )));
        }
        if self.cluster_secret.is_none()
            && self.cluster_ca.is_none()
            && !self.peer_listen.ip().is_loopback()
        {
            return Err(ConfigError::Invalid(format!(
                "refusing to bind --peer-listen {} beyond loopback without --cluster-secret \
                 (or --cluster-ca, --cluster-cert and --cluster-key)",
                self.peer_listen
            )));
        }
        Ok(())
    }

    /// The user group of `user` (`user_42` for the default template).
    pub fn user_group_of(&self, user: &str) -> String {
        self.user_group.replace("{user_id}", user)
    }

    /// A configuration for tests: every port on 127.0.0.1:0, a temporary data dir.
    pub fn for_tests(data_dir: PathBuf) -> Config {
        let any = "127.0.0.1:0".parse::<SocketAddr>().expect("parses");
        let mut config = ServeArgs::default()
            .finish()
            .expect("the defaults are a valid configuration");
        config.ws_listen = any;
        config.resp_listen = any;
        config.peer_listen = any;
        config.admin_listen = any;
        config.data_dir = data_dir;
        config.shutdown_grace = Duration::from_secs(2);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = ServeArgs::default().resolve().expect("valid");
        assert_eq!(c.node_id, 1);
        assert_eq!(c.ws_listen.to_string(), "127.0.0.1:8001");
        assert_eq!(c.resp_listen.to_string(), "127.0.0.1:6379");
        assert_eq!(c.peer_listen.to_string(), "127.0.0.1:7001");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:8002");
        assert_eq!(c.data_dir, PathBuf::from("./switchboard-data/node-1"));
        assert_eq!(c.user_group_of("42"), "user_42");
        assert_eq!(c.ws_paths, vec!["/ws/notifications/"]);
        assert_eq!(c.jwt, JwtKey::Development);
        assert!(c.check_exposure().is_ok());
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("node.toml");
        std::fs::write(
            &file,
            "node_id = 7\nws_listen = \"127.0.0.1:9001\"\nseeds = [\"a:1\", \"b:2\"]\njwt_secret = \"s\"\n",
        )
        .expect("write");
        let cli = Cli::try_parse_from([
            "x",
            "--config",
            file.to_str().expect("utf-8 path"),
            "--ws-listen",
            "127.0.0.1:9999",
        ])
        .expect("parses");
        let c = cli.serve.resolve().expect("valid");
        assert_eq!(c.ws_listen.to_string(), "127.0.0.1:9999", "flag beats file");
        assert_eq!(c.node_id, 7, "file beats default");
        assert_eq!(c.seeds, vec!["a:1", "b:2"]);
        assert_eq!(c.jwt, JwtKey::Secret("s".into()));
        assert_eq!(c.data_dir, PathBuf::from("./switchboard-data/node-7"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_cluster_ca_flags_go_together() {
        let args = ServeArgs {
            cluster_ca: Some("ca.pem".into()),
            ..ServeArgs::default()
        };
        let err = args
            .finish()
            .expect_err("a CA without a certificate and key");
        assert!(err.to_string().contains("go together"), "{err}");
    }

    #[test]
    fn an_unknown_file_key_is_an_error() {
        let dir = std::env::temp_dir().join(format!("sb-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("node.toml");
        std::fs::write(&file, "node_idd = 7\n").expect("write");
        let args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        let err = args.resolve().expect_err("unknown key");
        assert!(err.to_string().contains("node_idd"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn comma_lists_parse_from_flags() {
        let cli = Cli::try_parse_from([
            "x",
            "--allowed-origins",
            "https://a.example,https://b.example",
            "--ws-path",
            "/ws/notifications/,/ws/other/",
        ])
        .expect("parses");
        let c = cli.serve.resolve().expect("valid");
        assert_eq!(
            c.allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
        assert_eq!(c.ws_paths.len(), 2);
    }

    #[test]
    fn capacity_is_derived_from_the_descriptor_limit() {
        // 2 400 descriptors: an eighth for RESP, 512 + 1 024 in reserve, the rest for
        // WebSocket clients.
        assert_eq!(derive_capacity(2_400), (564, 300));
        assert_eq!(
            derive_capacity(1 << 20),
            ((1 << 20) - 512 - 1_024 - 10_000, 10_000)
        );
        assert_eq!(derive_capacity(1_024), (64, 128), "a floor, never zero");
        let c = ServeArgs::default().resolve().expect("valid");
        assert!(!c.max_connections_given);
        let given = ServeArgs {
            max_connections: Some(10),
            ..ServeArgs::default()
        };
        let c = given.resolve().expect("valid");
        assert_eq!((c.max_connections, c.max_connections_given), (10, true));
    }

    #[test]
    fn a_secret_comes_from_a_flag_or_its_file_not_both() {
        let dir = std::env::temp_dir().join(format!("sb-config-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("resp-password");
        std::fs::write(&file, "s3cret\n").expect("write");
        let both = ServeArgs {
            resp_password: Some("x".into()),
            resp_password_file: Some(file.clone()),
            ..ServeArgs::default()
        };
        let err = both.resolve().expect_err("both");
        assert!(err.to_string().contains("--resp-password-file"), "{err}");
        let from_file = ServeArgs {
            resp_password_file: Some(file.clone()),
            ..ServeArgs::default()
        };
        let c = from_file.resolve().expect("valid");
        let secret = c.resp_password.expect("set");
        assert_eq!(
            secret.load().expect("reads"),
            "s3cret",
            "without the newline"
        );
        assert!(!format!("{secret:?}").contains("s3cret"));
        assert!(!format!("{:?}", Secret::from("s3cret")).contains("s3cret"));
        std::fs::write(&file, "\n").expect("write");
        assert!(secret.load().is_err(), "an empty secret file is an error");
        let half_tls = ServeArgs {
            tls_cert: Some("c.pem".into()),
            ..ServeArgs::default()
        };
        assert!(half_tls.resolve().is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn exposure_rules_hold() {
        let mut c = ServeArgs::default().resolve().expect("valid");
        c.ws_listen = "0.0.0.0:8001".parse().expect("addr");
        assert!(c.check_exposure().is_err(), "public ws without a JWT key");
        c.jwt = JwtKey::Secret("s".into());
        assert!(c.check_exposure().is_ok());
        c.peer_listen = "0.0.0.0:7001".parse().expect("addr");
        assert!(
            c.check_exposure().is_err(),
            "public peer port without a secret"
        );
        c.cluster_secret = Some("c".into());
        assert!(c.check_exposure().is_ok());
        c.admin_listen = "0.0.0.0:8002".parse().expect("addr");
        assert!(
            c.check_exposure().is_err(),
            "public admin port without a token"
        );
        c.admin_tokens = Some("t".into());
        assert!(c.check_exposure().is_ok());
        c.cluster_secret = None;
        c.cluster_ca = Some(ClusterCa {
            ca: "ca.pem".into(),
            cert: "node.pem".into(),
            key: "node.key".into(),
        });
        assert!(c.check_exposure().is_ok(), "a cluster CA is enough too");
    }
}
