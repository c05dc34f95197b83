//! From [`ServeArgs`] to a [`Config`]: the file read and merged under the flags, each
//! setting checked, the settings built from several (a secret and its file, TLS pairs,
//! limits derived from the descriptor limit) put together.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::args::Settings;
use super::*;

impl ServeArgs {
    /// Reads the `--config` file, if any, and resolves every setting; `open_files` is the
    /// process's descriptor limit, which the connection limits not given are derived from.
    pub fn resolve(self, open_files: usize) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        finish(self.merge(file).settings(), open_files)
    }
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

fn positive(name: &str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        Err(ConfigError::Invalid(format!("--{name} must be at least 1")))
    } else {
        Ok(value)
    }
}

fn seconds(name: &str, value: u64) -> Result<Duration, ConfigError> {
    positive(name, value as usize).map(|_| Duration::from_secs(value))
}

/// A comma list without its blank items.
fn non_empty(list: Vec<String>) -> Vec<String> {
    list.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn tls_pair(
    name: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        _ => Err(ConfigError::Invalid(format!(
            "--{name}-cert and --{name}-key go together: give both"
        ))),
    }
}

fn finish(s: Settings, open_files: usize) -> Result<Config, ConfigError> {
    let jwt = match (
        Secret::from_pair("jwt-secret", s.jwt_secret, s.jwt_secret_file)?,
        s.jwt_public_key,
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
    let max_payload = positive("max-payload", s.max_payload)?;
    let (derived_ws, max_resp_connections) = derive_capacity(open_files);
    let mut paths = non_empty(s.ws_path);
    if paths.is_empty() {
        paths.push(DEFAULT_WS_PATH.into());
    }
    if let Some(bad) = paths.iter().find(|p| !p.starts_with('/')) {
        return Err(ConfigError::Invalid(format!(
            "--ws-path '{bad}' must start with '/'"
        )));
    }
    if !s.user_group.contains("{user_id}") {
        return Err(ConfigError::Invalid(format!(
            "--user-group '{}' must contain {{user_id}}",
            s.user_group
        )));
    }
    let backend_secret =
        Secret::from_pair("backend-secret", s.backend_secret, s.backend_secret_file)?;
    let backend = match s
        .backend_url
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
    {
        None => None,
        Some(url) => {
            if backend_secret.is_none() {
                return Err(ConfigError::Invalid(
                    "--backend-url needs --backend-secret (or --backend-secret-file): the \
                     bridge refuses unsigned calls"
                        .into(),
                ));
            }
            Some(BackendSettings {
                url,
                timeout: Duration::from_millis(positive(
                    "backend-timeout-ms",
                    s.backend_timeout_ms as usize,
                )? as u64),
                unavailable: s.backend_unavailable,
                max_inflight: positive("backend-max-inflight", s.backend_max_inflight)?,
                frames_per_sec: positive(
                    "backend-frames-per-sec",
                    s.backend_frames_per_sec as usize,
                )? as u32,
                bytes_per_sec: positive("backend-bytes-per-sec", s.backend_bytes_per_sec as usize)?
                    as u64,
                max_pending: positive("backend-max-pending", s.backend_max_pending)?,
                headers: non_empty(s.backend_headers)
                    .into_iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            })
        }
    };
    let node_id = s.node_id;
    Ok(Config {
        node_id,
        data_dir: s
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("./switchboard-data/node-{node_id}"))),
        log_format: s.log_format,
        shutdown_grace: Duration::from_secs(s.shutdown_grace),
        listen: Listen {
            ws: s.ws_listen,
            resp: s.resp_listen,
            peer: s.peer_listen,
            admin: s.admin_listen,
            advertise: s
                .advertise
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty()),
        },
        credentials: Credentials {
            jwt,
            jwt_audience: non_empty(s.jwt_audience),
            jwt_issuer: non_empty(s.jwt_issuer),
            cluster_secret: Secret::from_pair(
                "cluster-secret",
                s.cluster_secret,
                s.cluster_secret_file,
            )?,
            resp_password: Secret::from_pair(
                "resp-password",
                s.resp_password,
                s.resp_password_file,
            )?,
            admin_tokens: Secret::from_pair("admin-token", s.admin_token, s.admin_token_file)?,
            backend_secret,
        },
        tls: TlsSettings {
            ws: tls_pair("tls", s.tls_cert, s.tls_key)?,
            admin: tls_pair("admin-tls", s.admin_tls_cert, s.admin_tls_key)?,
            cluster_ca: match (s.cluster_ca, s.cluster_cert, s.cluster_key) {
                (None, None, None) => None,
                (Some(ca), Some(cert), Some(key)) => Some(ClusterCa { ca, cert, key }),
                _ => {
                    return Err(ConfigError::Invalid(
                        "--cluster-ca, --cluster-cert and --cluster-key go together: give all three"
                            .into(),
                    ));
                }
            },
        },
        cluster: ClusterSettings {
            seeds: non_empty(s.seeds),
            node_timeout: Duration::from_millis(positive(
                "node-timeout-ms",
                s.node_timeout_ms as usize,
            )? as u64),
            max_voters: positive("max-voters", s.max_voters)?,
            presence_shards: match s.presence_shards {
                n if n > MAX_PRESENCE_SHARDS => {
                    return Err(ConfigError::Invalid(format!(
                        "--presence-shards {n}: at most {MAX_PRESENCE_SHARDS}"
                    )));
                }
                n => n,
            },
        },
        ws: WsSettings {
            paths,
            allowed_origins: non_empty(s.allowed_origins),
            user_group: s.user_group,
            max_connections: positive("max-connections", s.max_connections.unwrap_or(derived_ws))?,
            max_connections_given: s.max_connections.is_some(),
            max_connections_per_ip: s.max_connections_per_ip,
            max_connections_per_user: s.max_connections_per_user,
            max_frame_size: positive("max-frame-size", s.max_frame_size)?,
            client_queue: positive("client-queue", s.client_queue)?,
            client_queue_bytes: positive("client-queue-bytes", s.client_queue_bytes)?
                .max(max_payload),
            max_groups_per_connection: positive(
                "max-groups-per-connection",
                s.max_groups_per_connection,
            )?,
            token_expiry: s.token_expiry,
            ops: OpLimits {
                per_sec: positive("client-ops-per-sec", s.client_ops_per_sec as usize)? as u32,
                burst: positive("client-ops-burst", s.client_ops_burst as usize)? as u32,
                node_per_sec: positive("node-ops-per-sec", s.node_ops_per_sec as usize)? as u32,
            },
        },
        resp: RespSettings {
            max_connections: max_resp_connections,
            max_command_bytes: positive(
                "max-command-bytes",
                s.max_command_bytes.unwrap_or(max_payload + 1024 * 1024),
            )?,
            auth_timeout: seconds("resp-auth-timeout", s.resp_auth_timeout)?,
            idle_timeout: (s.resp_idle_timeout > 0)
                .then(|| Duration::from_secs(s.resp_idle_timeout)),
            channels_unwrap: s.channels_unwrap.filter(|s| !s.is_empty()),
            channels_prefix: s.channels_prefix,
        },
        history: HistorySettings {
            rules: parse_history(&s.history).map_err(ConfigError::Invalid)?,
            max_bytes: positive("history-max-bytes", s.history_max_bytes)?,
        },
        max_payload,
        admin_hosts: non_empty(s.admin_hosts),
        presence_events: s.presence_events,
        backend,
        revocation_ttl: seconds("revocation-ttl", s.revocation_ttl)?,
    })
}

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
