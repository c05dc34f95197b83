//! The node's secrets at run time: loaded from the configuration at start and again on
//! SIGHUP, each behind a [`Reloadable`] so a reload never drops a connection (those in
//! flight keep the value they started with).
//!
//! - the JWT verifier (`--jwt-secret[-file]`, `--jwt-public-key`, or development mode);
//! - the RESP password (`--resp-password[-file]`);
//! - the admin tokens (`--admin-token`, `--admin-token-file`), with their scopes;
//! - the cluster secret (`--cluster-secret[-file]`), for new peer sessions;
//! - the backend secret (`--backend-secret[-file]`), for the next call to the bridge.
//!
//! Files the node writes itself (the development secret) are mode 0600, in a data dir
//! of mode 0700.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::auth::Verifier;
use crate::config::{Config, ConfigError, JwtKey, Secret};
use crate::sync::Reloadable;

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Status, members, presence, groups, metrics, presence events.
    Read,
    /// Drain, remove.
    Write,
    /// HTTP publish.
    Publish,
}

impl Scope {
    fn parse(word: &str) -> Option<Scope> {
        match word {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "publish" => Some(Scope::Publish),
            _ => None,
        }
    }
}

/// The admin tokens and what each may do.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminTokens {
    tokens: Vec<(String, Vec<Scope>)>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminTokens({} token(s))", self.tokens.len())
    }
}

/// Why an admin request's credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No valid token: 401.
    Unauthenticated,
    /// A valid token whose scopes do not cover the route: 403.
    Forbidden,
}

impl AdminTokens {
    /// Parses `--admin-token-file`'s content: one token a line, optionally followed by
    /// whitespace and scopes (`read`, `write`, `publish`, comma-separated; none = all).
    /// Blank lines and lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<AdminTokens, String> {
        let mut tokens = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let token = words.next().unwrap_or_default().to_owned();
            let scopes = match words.next() {
                None => vec![Scope::Read, Scope::Write, Scope::Publish],
                Some(list) => list
                    .split(',')
                    .map(|w| {
                        Scope::parse(w.trim()).ok_or_else(|| {
                            format!(
                                "admin token line {}: unknown scope '{w}' (read, write, publish)",
                                n + 1
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            };
            if words.next().is_some() {
                return Err(format!(
                    "admin token line {}: expected a token and its scopes",
                    n + 1
                ));
            }
            tokens.push((token, scopes));
        }
        if tokens.is_empty() {
            return Err("no admin token given".into());
        }
        Ok(AdminTokens { tokens })
    }

    /// One token with every scope (`--admin-token`).
    pub fn single(token: String) -> AdminTokens {
        AdminTokens {
            tokens: vec![(token, vec![Scope::Read, Scope::Write, Scope::Publish])],
        }
    }

    /// Whether `presented` (a bearer token, if any) may use a route needing `scope`.
    /// Every token is compared in full, in constant time.
    pub fn check(&self, presented: Option<&str>, scope: Scope) -> Result<(), Denied> {
        let presented = presented.ok_or(Denied::Unauthenticated)?;
        let mut scopes: Option<&[Scope]> = None;
        for (token, granted) in &self.tokens {
            if constant_time_eq(token.as_bytes(), presented.as_bytes()) {
                scopes = Some(granted);
            }
        }
        match scopes {
            None => Err(Denied::Unauthenticated),
            Some(granted) if granted.contains(&scope) => Ok(()),
            Some(_) => Err(Denied::Forbidden),
        }
    }
}

/// Compares secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// See the module header.
#[derive(Debug)]
pub struct Secrets {
    pub verifier: Reloadable<Verifier>,
    pub resp_password: Reloadable<Option<String>>,
    /// `None`: the admin API is open (a loopback-only admin port).
    pub admin: Reloadable<Option<AdminTokens>>,
    pub cluster: Reloadable<Vec<u8>>,
    /// The key calls to the backend bridge are signed with (`--backend-secret`).
    pub backend: Reloadable<Option<Vec<u8>>>,
    /// In development mode, the generated JWT secret.
    pub dev_jwt_secret: Option<String>,
}

/// Shortest secret not called weak, in bytes: an HMAC-SHA256 key should be at least as
/// long as the hash (RFC 7518 3.2 for HS256; RFC 2104); SimpleJWT's default key,
/// Django's `SECRET_KEY`, is 50 characters.
pub const MIN_SECRET_BYTES: usize = 32;

/// The warning a secret of `len` bytes given as `flag` deserves, if any.
pub fn weakness(flag: &str, len: usize) -> Option<String> {
    (len > 0 && len < MIN_SECRET_BYTES).then(|| {
        format!(
            "{flag} is {len} bytes: HMAC keys under {MIN_SECRET_BYTES} bytes (256 bits) can be \
             brute-forced offline from one token or handshake; use a random value of \
             {MIN_SECRET_BYTES} bytes or more (Django's SECRET_KEY works)"
        )
    })
}

impl Secrets {
    /// Loads every secret the configuration names; creates the data dir (0700) and, in
    /// development mode, the JWT secret (0600). A weak HMAC secret is warned about.
    pub fn load(config: &Config) -> Result<Secrets, ConfigError> {
        private_dir(&config.data_dir)?;
        let (verifier, dev) = verifier(config)?;
        if let JwtKey::Secret(secret) = &config.credentials.jwt
            && let Some(warning) = weakness("--jwt-secret", secret.load()?.len())
        {
            tracing::warn!("{warning}");
        }
        let cluster = load_opt(&config.credentials.cluster_secret)?.unwrap_or_default();
        if let Some(warning) = weakness("--cluster-secret", cluster.len()) {
            tracing::warn!("{warning}");
        }
        let backend = load_opt(&config.credentials.backend_secret)?;
        if let Some(warning) = weakness("--backend-secret", backend.as_ref().map_or(0, String::len))
        {
            tracing::warn!("{warning}");
        }
        Ok(Secrets {
            verifier: Reloadable::new(verifier),
            resp_password: Reloadable::new(load_opt(&config.credentials.resp_password)?),
            admin: Reloadable::new(admin_tokens(config)?),
            cluster: Reloadable::new(cluster.into_bytes()),
            backend: Reloadable::new(backend.map(String::into_bytes)),
            dev_jwt_secret: dev,
        })
    }

    /// Re-reads every secret (SIGHUP). A secret that fails to load keeps its old value;
    /// the errors are returned.
    pub fn reload(&self, config: &Config) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        match verifier(config) {
            Ok((v, _)) => self.verifier.set(v),
            Err(e) => errors.push(e),
        }
        match load_opt(&config.credentials.resp_password) {
            Ok(v) => self.resp_password.set(v),
            Err(e) => errors.push(e),
        }
        match admin_tokens(config) {
            Ok(v) => self.admin.set(v),
            Err(e) => errors.push(e),
        }
        match load_opt(&config.credentials.cluster_secret) {
            Ok(v) => self.cluster.set(v.unwrap_or_default().into_bytes()),
            Err(e) => errors.push(e),
        }
        match load_opt(&config.credentials.backend_secret) {
            Ok(v) => self.backend.set(v.map(String::into_bytes)),
            Err(e) => errors.push(e),
        }
        errors
    }
}

fn load_opt(secret: &Option<Secret>) -> Result<Option<String>, ConfigError> {
    secret.as_ref().map(Secret::load).transpose()
}

fn admin_tokens(config: &Config) -> Result<Option<AdminTokens>, ConfigError> {
    match &config.credentials.admin_tokens {
        None => Ok(None),
        Some(Secret::Value(token)) => Ok(Some(AdminTokens::single(token.clone()))),
        Some(file @ Secret::File(_)) => AdminTokens::parse(&file.load()?)
            .map(Some)
            .map_err(ConfigError::Invalid),
    }
}

/// The token verifier, and in development mode the generated secret.
fn verifier(config: &Config) -> Result<(Verifier, Option<String>), ConfigError> {
    let invalid = |e: &dyn std::fmt::Display| ConfigError::Invalid(e.to_string());
    let (mut verifier, dev) = match &config.credentials.jwt {
        JwtKey::Secret(secret) => (
            Verifier::hmac(secret.load()?.as_bytes()).map_err(|e| invalid(&e))?,
            None,
        ),
        JwtKey::PublicKey(path) => (
            Verifier::public_key_file(path).map_err(|e| invalid(&e))?,
            None,
        ),
        JwtKey::Development => {
            let secret = dev_secret(&config.data_dir)?;
            (
                Verifier::hmac(secret.as_bytes()).map_err(|e| invalid(&e))?,
                Some(secret),
            )
        }
    };
    if !config.credentials.jwt_audience.is_empty() {
        verifier.require_audience(&config.credentials.jwt_audience);
    }
    if !config.credentials.jwt_issuer.is_empty() {
        verifier.require_issuer(&config.credentials.jwt_issuer);
    }
    Ok((verifier, dev))
}

/// Creates `dir` (mode 0700) if missing; an existing dir readable by others is made
/// private. A shared dir (world-writable or sticky, such as `/tmp`) is refused: the data
/// dir must be the node's own.
pub fn private_dir(dir: &Path) -> Result<(), ConfigError> {
    let io = |what: &'static str| {
        move |source: std::io::Error| {
            // A volume mounted for another user (a container's named volume is root's)
            // ends here: say whose it must be.
            let hint = if source.kind() == std::io::ErrorKind::PermissionDenied {
                let uid = rustix::process::getuid().as_raw();
                format!(
                    " (this node runs as uid {uid}: the directory must be its own, e.g. `chown {uid}` it or mount the volume for that user)"
                )
            } else {
                String::new()
            };
            ConfigError::Invalid(format!(
                "--data-dir {}: cannot {what}: {source}{hint}",
                dir.display()
            ))
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create it"))?;
    let mode = std::fs::metadata(dir)
        .map_err(io("read it"))?
        .permissions()
        .mode();
    if mode & 0o1002 != 0 {
        return Err(ConfigError::Invalid(format!(
            "--data-dir {} is a shared directory (world-writable or sticky): give the node a directory of its own",
            dir.display()
        )));
    }
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("make it private (mode 0700)"))?;
    }
    // Writable by this process: said here, not as a failure to read the first file.
    // (A name of its own per call: tests load secrets from one dir on many threads.)
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!(".write-check-{}-{n}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(io("write in it"))?;
    Ok(())
}

/// Writes `contents` to a new file `path` of mode 0600 (replacing any).
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its old mode through `open`: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The development-mode secret: generated once, kept in the data dir (mode 0600).
fn dev_secret(data_dir: &Path) -> Result<String, ConfigError> {
    let path = data_dir.join("dev-jwt-secret");
    let io = |source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    };
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if !existing.is_empty() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
            return Ok(existing.to_owned());
        }
    }
    let secret: String = random_bytes::<32>()
        .map_err(io)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    write_private(&path, secret.as_bytes()).map_err(io)?;
    Ok(secret)
}

/// This node's incarnation: a random id created with its data dir (`incarnation`, mode
/// 0600), the same for every start with that data dir. Peers refuse a process that
/// claims a member's node id with another one.
pub fn incarnation(data_dir: &Path) -> Result<u64, ConfigError> {
    let path = data_dir.join("incarnation");
    let io = |source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim(), 16).map_err(|_| {
            ConfigError::Invalid(format!(
                "{} is not an incarnation id (16 hex digits); a data dir's identity cannot be repaired: start with a new data dir and node id",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = u64::from_be_bytes(random_bytes::<8>().map_err(io)?);
            write_private(&path, format!("{id:016x}\n").as_bytes()).map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

/// Bytes from the OS's CSPRNG, read directly: a few reads at start do not need a crate.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_under_32_bytes_are_called_weak() {
        assert!(weakness("--jwt-secret", 5).is_some_and(|w| w.contains("5 bytes")));
        assert!(weakness("--jwt-secret", 31).is_some());
        assert_eq!(weakness("--jwt-secret", 32), None);
        assert_eq!(weakness("--jwt-secret", 50), None, "Django's SECRET_KEY");
        assert_eq!(
            weakness("--cluster-secret", 0),
            None,
            "not set: nothing to say"
        );
    }

    #[test]
    fn admin_token_files_parse_with_scopes() {
        let tokens = AdminTokens::parse("# ops\nroot-token\nreader read\n\nbackend publish,read\n")
            .expect("parses");
        assert_eq!(tokens.check(Some("root-token"), Scope::Write), Ok(()));
        assert_eq!(tokens.check(Some("reader"), Scope::Read), Ok(()));
        assert_eq!(
            tokens.check(Some("reader"), Scope::Write),
            Err(Denied::Forbidden)
        );
        assert_eq!(tokens.check(Some("backend"), Scope::Publish), Ok(()));
        assert_eq!(
            tokens.check(Some("backend"), Scope::Write),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            tokens.check(Some("nope"), Scope::Read),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            tokens.check(None, Scope::Read),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            tokens.check(Some("reade"), Scope::Read),
            Err(Denied::Unauthenticated)
        );
        assert!(AdminTokens::parse("t admin\n").is_err(), "unknown scope");
        assert!(AdminTokens::parse("t read extra\n").is_err());
        assert!(AdminTokens::parse("\n# only comments\n").is_err());
    }

    #[test]
    fn the_node_writes_its_secret_0600_in_a_0700_dir() {
        let dir = std::env::temp_dir().join(format!("sb-secrets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&dir).expect("private");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let secret = dev_secret(&dir).expect("generated");
        assert_eq!(secret.len(), 64);
        assert_eq!(mode(&dir.join("dev-jwt-secret")), 0o600);
        assert_eq!(
            dev_secret(&dir).expect("kept"),
            secret,
            "the same secret next start"
        );
        let id = incarnation(&dir).expect("created");
        assert_eq!(incarnation(&dir).expect("read"), id, "the same every start");
        assert_eq!(mode(&dir.join("incarnation")), 0o600);
        assert!(
            private_dir(&std::env::temp_dir()).is_err(),
            "a shared dir is not made private, it is refused"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
