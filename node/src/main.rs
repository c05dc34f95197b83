//! The `switchboard` binary: CLI parsing, tracing and signals; everything else is in the
//! library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard_node::config::{LogFormat, ServeArgs};
use switchboard_node::{Node, auth, cli};

/// Switchboard: a clustered WebSocket message broker that speaks Redis to publishers.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// Admin API address of the node to ask (`https://host:port` for an admin port with
    /// TLS).
    #[arg(long, env = "SWITCHBOARD_ADMIN", default_value = "127.0.0.1:8002")]
    admin: String,
    /// File holding the admin token (its first token is sent); SWITCHBOARD_ADMIN_TOKEN
    /// takes precedence.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<std::path::PathBuf>,
    /// PEM file of the CA that signed the admin port's certificate (https:// only).
    #[arg(long, env = "SWITCHBOARD_ADMIN_CA")]
    admin_ca: Option<std::path::PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

impl AdminArgs {
    fn target(&self) -> anyhow::Result<cli::Target> {
        cli::Target::new(
            &self.admin,
            self.admin_token_file.clone(),
            self.admin_ca.clone(),
        )
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// This node: id, role, term, leader, members, connections, groups, readiness.
    Status(AdminArgs),
    /// Every member: id, addresses, voter/learner, up/down, last seen.
    Members(AdminArgs),
    /// Every live connection of a user, cluster-wide.
    Presence {
        user_id: String,
        /// Answer only after the leader has confirmed a read index, so that every
        /// presence change committed before the call is seen (costs one round trip).
        #[arg(long)]
        linearizable: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Presence events (join, leave, online, offline) as the cluster committed them: what
    /// the node keeps after --since (or all it keeps), then, with --follow, every new one.
    PresenceEvents {
        /// Resume after this event id (`<log index>-<n>`, as printed).
        #[arg(long)]
        since: Option<String>,
        /// Keep printing events as they are committed.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Number of connections in a group, cluster-wide, per node.
    Group {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Close a user's sockets (or one connection's) on every node, with a close code.
    Disconnect {
        /// The user whose sockets to close.
        #[arg(required_unless_present = "connection")]
        user_id: Option<String>,
        /// One connection instead (its id, or its channel name switchboard.conn!ID).
        #[arg(long, conflicts_with = "user_id")]
        connection: Option<String>,
        /// The close code the clients see: 4000-4999 [default: 4000].
        #[arg(long)]
        code: Option<u16>,
        /// The close reason the clients see.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Have a user's live sockets (or one connection) join a group, cluster-wide.
    Subscribe {
        /// USER GROUP, or GROUP alone with --connection.
        #[arg(num_args = 1..=2, required = true, value_names = ["USER", "GROUP"])]
        args: Vec<String>,
        /// One connection instead of a user's (its id, or its channel name).
        #[arg(long)]
        connection: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Have a user's live sockets (or one connection) leave a group, cluster-wide.
    Unsubscribe {
        /// USER GROUP, or GROUP alone with --connection.
        #[arg(num_args = 1..=2, required = true, value_names = ["USER", "GROUP"])]
        args: Vec<String>,
        /// One connection instead of a user's (its id, or its channel name).
        #[arg(long)]
        connection: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Refuse a user's tokens issued before a time, on every node (at connect and
    /// refresh), and close its open sockets with 4001.
    Revoke {
        user_id: String,
        /// Unix seconds: tokens issued (`iat`) before it are refused [default: now].
        #[arg(long)]
        before: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop accepting, close clients with 1012 so they reconnect elsewhere, and leave.
    Drain(AdminArgs),
    /// Remove a member for good.
    Remove {
        node_id: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Exit 0 when a node's `/readyz` (or `--path`) answers 200, 1 otherwise: a health
    /// check for containers and process managers, with nothing else installed.
    Probe {
        /// The WebSocket or admin port to ask (`host:port`); by default the node's own
        /// WebSocket port as `SWITCHBOARD_WS_LISTEN` sets it (on loopback when it binds
        /// every address: a container's health check follows its configuration), else
        /// 127.0.0.1:8001.
        #[arg(long)]
        addr: Option<String>,
        /// `/readyz` (ready for clients) or `/healthz` (the process serves).
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// Print a signed HS256 access token (for testing).
    Token {
        /// The HMAC secret (the node's --jwt-secret).
        #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
        secret: String,
        /// The user id (`user_id` claim).
        #[arg(long)]
        user: String,
        /// Lifetime: 3600, 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Comma-separated groups to join at connect (`room_*` permits subscribing).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Print {"token": ...} instead of the bare token.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Status(a) => a.target().and_then(|t| cli::status(&t, a.json)),
        Command::Members(a) => a.target().and_then(|t| cli::members(&t, a.json)),
        Command::Presence {
            user_id,
            linearizable,
            admin,
        } => admin
            .target()
            .and_then(|t| cli::presence(&t, &user_id, linearizable, admin.json)),
        Command::PresenceEvents {
            since,
            follow,
            admin,
        } => admin
            .target()
            .and_then(|t| cli::presence_events(&t, since.as_deref(), follow, admin.json)),
        Command::Group { name, admin } => admin
            .target()
            .and_then(|t| cli::group(&t, &name, admin.json)),
        Command::Disconnect {
            user_id,
            connection,
            code,
            reason,
            admin,
        } => admin.target().and_then(|t| {
            cli::disconnect(
                &t,
                user_id.as_deref(),
                connection.as_deref(),
                code,
                reason.as_deref(),
                admin.json,
            )
        }),
        Command::Subscribe {
            args,
            connection,
            admin,
        } => admin
            .target()
            .and_then(|t| subscription(&t, true, &args, connection, admin.json)),
        Command::Unsubscribe {
            args,
            connection,
            admin,
        } => admin
            .target()
            .and_then(|t| subscription(&t, false, &args, connection, admin.json)),
        Command::Revoke {
            user_id,
            before,
            admin,
        } => admin
            .target()
            .and_then(|t| cli::revoke(&t, &user_id, before, admin.json)),
        Command::Drain(a) => a.target().and_then(|t| cli::drain(&t, a.json)),
        Command::Probe { addr, path } => {
            let ws_listen = std::env::var("SWITCHBOARD_WS_LISTEN").ok();
            let addr = addr.unwrap_or_else(|| cli::probe_addr(ws_listen.as_deref()));
            cli::probe(&addr, &path)
        }
        Command::Remove { node_id, admin } => admin
            .target()
            .and_then(|t| cli::remove(&t, node_id, admin.json)),
        Command::Token {
            secret,
            user,
            ttl,
            groups,
            json,
        } => token(&secret, &user, &ttl, &groups, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `subscribe`/`unsubscribe`: USER GROUP, or GROUP with --connection.
fn subscription(
    target: &cli::Target,
    subscribe: bool,
    args: &[String],
    connection: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let (user, group) = match (args, &connection) {
        ([user, group], None) => (Some(user.as_str()), group),
        ([group], Some(_)) => (None, group),
        (_, None) => anyhow::bail!("give USER GROUP (or GROUP with --connection ID)"),
        (_, Some(_)) => anyhow::bail!("with --connection, give only the GROUP"),
    };
    cli::subscription(target, subscribe, user, connection.as_deref(), group, json)
}

fn token(secret: &str, user: &str, ttl: &str, groups: &[String], json: bool) -> anyhow::Result<()> {
    let ttl = cli::parse_ttl(ttl)?;
    let token = auth::mint_hs256(secret.as_bytes(), user, ttl, groups)?;
    if json {
        cli::out(&format!("{}\n", serde_json::json!({ "token": token })));
    } else {
        cli::out(&format!("{token}\n"));
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Before the limits are derived from it: as many descriptors as the hard limit allows.
    let raised = raise_open_file_limit();
    // Unknown (not Linux): as if plenty, so the derived limits are the largest.
    let open_files = switchboard_node::config::open_file_limit().unwrap_or(1 << 20);
    let config = args.resolve(open_files)?;
    init_tracing(config.log_format);
    if let Err(e) = raised {
        tracing::warn!(error = %e, "could not raise the open-file limit to its hard limit");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("switchboard")
        .build()?;
    runtime.block_on(async move {
        // Handlers first: a signal that arrives while the node starts must drain it, not
        // kill the process with the default action.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let node = Node::start(config).await?;
        if let Some(token) = node.dev_token() {
            cli::out(&format!(
                "\nSwitchboard is running in development mode (no --jwt-secret): loopback only.\n\
                 Connect a client as user 1 (group user_1):\n\n  {}?token={}\n\n\
                 Then publish:  redis-cli -p {} PUBLISH user_1 hello\n\
                 More tokens:   switchboard token --secret $(cat {}/dev-jwt-secret) --user 42\n",
                node.ws_url(),
                token,
                node.addrs().resp.port(),
                node.config().data_dir.display(),
            ));
        }
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => node.reload(),
            }
        }
        tracing::info!("signal received: draining, then exiting");
        node.shutdown().await;
        anyhow::Ok(())
    })
}

/// Raises the soft limit on open files to the hard limit (what nginx's
/// `worker_rlimit_nofile` does), so that `--max-connections` can be derived from it.
fn raise_open_file_limit() -> std::io::Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit)?;
    }
    Ok(())
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().finish().with(QuietUnreachable).init(),
        LogFormat::Text => builder.finish().with(QuietUnreachable).init(),
    }
}

/// Drops openraft's ERROR and WARN lines about a member it cannot reach (or that did not
/// answer within the RPC timeout, or whose connection broke under a call): it logs one
/// per retry (every 500 ms per RPC kind, and
/// `update progress error ... node 3 is not connected` and `backoff mode: drain events`
/// about twice a second) for as long as a member is stopped, hundreds over a planned
/// restart. The mesh says it instead, once when it starts (`peer disconnected`, `peer
/// silent for --node-timeout: marked down`), a minute in and ever less often with a
/// count (`peer address still unreachable attempts=32`) and when it ends (`peer address
/// answers again`, `peer connected`). Also dropped: `membership_log_id changed ...
/// ignore`, which openraft logs when a learner's promotion races a replication reply
/// and which asks nothing of anyone. Every other Raft error and warning is logged.
struct QuietUnreachable;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for QuietUnreachable {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN || !meta.target().starts_with("openraft") {
            return true;
        }
        struct Finds(bool);
        impl tracing::field::Visit for Finds {
            fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                let text = format!("{value:?}");
                self.0 |= text.contains("Unreachable node")
                    || text.contains("timeout after")
                    || text.contains("is not connected")
                    || text.contains("peer stream ended")
                    || text.contains("backoff mode")
                    || text.contains("membership_log_id changed");
            }
        }
        let mut finds = Finds(false);
        event.record(&mut finds);
        !finds.0
    }
}
