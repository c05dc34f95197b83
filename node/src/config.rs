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
    /// Comma-separated peer addresses of existing members; empty = bootstrap a new cluster.
    #[arg(long, env = "SWITCHBOARD_SEEDS", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Raft log, vote and snapshots [default: ./switchboard-data/node-<id>].
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HMAC secret for HS256/384/512 tokens (Django's SECRET_KEY works as-is for SimpleJWT).
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
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
    /// Most WebSocket connections this node holds; more are closed with 1013 [default: 200000].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest WebSocket frame or message a client may send, in bytes; larger closes with
    /// 1009 [default: 65536].
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_SIZE")]
    pub max_frame_size: Option<usize>,
    /// Messages queued per client before it counts as a slow consumer and is closed with
    /// 4008 [default: 1024].
    #[arg(long, env = "SWITCHBOARD_CLIENT_QUEUE")]
    pub client_queue: Option<usize>,
    /// Most groups one connection may be in [default: 256].
    #[arg(long, env = "SWITCHBOARD_MAX_GROUPS_PER_CONNECTION")]
    pub max_groups_per_connection: Option<usize>,
    /// Largest PUBLISH payload (and RESP bulk string) accepted, in bytes [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_MAX_PAYLOAD")]
    pub max_payload: Option<usize>,
    /// Seconds to wait for clients to go during drain and shutdown [default: 10].
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<u64>,
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
}

/// The resolved configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: u64,
    pub ws_listen: SocketAddr,
    pub resp_listen: SocketAddr,
    pub peer_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub seeds: Vec<String>,
    pub data_dir: PathBuf,
    pub jwt: JwtKey,
    pub jwt_audience: Vec<String>,
    pub jwt_issuer: Vec<String>,
    pub cluster_secret: Option<String>,
    /// The cluster CA mode: (CA, certificate, key) PEM files.
    pub cluster_ca: Option<ClusterCa>,
    pub resp_password: Option<String>,
    pub allowed_origins: Vec<String>,
    pub user_group: String,
    pub ws_paths: Vec<String>,
    pub log_format: LogFormat,
    pub max_connections: usize,
    pub max_frame_size: usize,
    pub client_queue: usize,
    pub max_groups_per_connection: usize,
    pub max_payload: usize,
    pub shutdown_grace: Duration,
    pub channels_unwrap: Option<String>,
    pub channels_prefix: String,
    pub node_timeout: Duration,
    pub max_voters: usize,
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
    /// `--jwt-secret`.
    Secret(String),
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
            seeds,
            data_dir,
            jwt_secret,
            jwt_public_key,
            jwt_audience,
            jwt_issuer,
            cluster_secret,
            cluster_ca,
            cluster_cert,
            cluster_key,
            resp_password,
            allowed_origins,
            user_group,
            ws_path,
            log_format,
            max_connections,
            max_frame_size,
            client_queue,
            max_groups_per_connection,
            max_payload,
            shutdown_grace,
            channels_unwrap,
            channels_prefix,
            node_timeout_ms,
            max_voters
        )
    }

    fn finish(self) -> Result<Config, ConfigError> {
        let node_id = self.node_id.unwrap_or(1);
        let parse = |s: &str| s.parse::<SocketAddr>().expect("built-in address parses");
        let jwt = match (
            self.jwt_secret.filter(|s| !s.is_empty()),
            self.jwt_public_key,
        ) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give either --jwt-secret or --jwt-public-key, not both".into(),
                ));
            }
            (Some(secret), None) => JwtKey::Secret(secret),
            (None, Some(path)) => JwtKey::PublicKey(path),
            (None, None) => JwtKey::Development,
        };
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
        let positive = |name: &str, value: usize| {
            if value == 0 {
                Err(ConfigError::Invalid(format!("{name} must be at least 1")))
            } else {
                Ok(value)
            }
        };
        Ok(Config {
            node_id,
            ws_listen: self.ws_listen.unwrap_or_else(|| parse("127.0.0.1:8001")),
            resp_listen: self.resp_listen.unwrap_or_else(|| parse("127.0.0.1:6379")),
            peer_listen: self.peer_listen.unwrap_or_else(|| parse("127.0.0.1:7001")),
            admin_listen: self.admin_listen.unwrap_or_else(|| parse("127.0.0.1:8002")),
            seeds: non_empty(self.seeds),
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(format!("./switchboard-data/node-{node_id}"))),
            jwt,
            jwt_audience: non_empty(self.jwt_audience),
            jwt_issuer: non_empty(self.jwt_issuer),
            cluster_secret: self.cluster_secret.filter(|s| !s.is_empty()),
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
            resp_password: self.resp_password.filter(|s| !s.is_empty()),
            allowed_origins: non_empty(self.allowed_origins),
            user_group,
            ws_paths,
            log_format: self.log_format.unwrap_or_default(),
            max_connections: positive(
                "--max-connections",
                self.max_connections.unwrap_or(200_000),
            )?,
            max_frame_size: positive("--max-frame-size", self.max_frame_size.unwrap_or(64 * 1024))?,
            client_queue: positive("--client-queue", self.client_queue.unwrap_or(1024))?,
            max_groups_per_connection: positive(
                "--max-groups-per-connection",
                self.max_groups_per_connection.unwrap_or(256),
            )?,
            max_payload: positive("--max-payload", self.max_payload.unwrap_or(1024 * 1024))?,
            shutdown_grace: Duration::from_secs(self.shutdown_grace.unwrap_or(10)),
            channels_unwrap: self.channels_unwrap.filter(|s| !s.is_empty()),
            channels_prefix: self.channels_prefix.unwrap_or_else(|| "asgi".into()),
            node_timeout: Duration::from_millis(positive(
                "--node-timeout-ms",
                self.node_timeout_ms.unwrap_or(5000) as usize,
            )? as u64),
            max_voters: positive("--max-voters", self.max_voters.unwrap_or(5))?,
        })
    }
}

impl Config {
    /// Checks the safety rules of the contract: without a JWT key the WebSocket and RESP
    /// ports stay on loopback; without a cluster secret the peer port does.
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
        c.cluster_secret = None;
        c.cluster_ca = Some(ClusterCa {
            ca: "ca.pem".into(),
            cert: "node.pem".into(),
            key: "node.key".into(),
        });
        assert!(c.check_exposure().is_ok(), "a cluster CA is enough too");
    }
}
