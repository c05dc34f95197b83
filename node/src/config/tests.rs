use super::*;
use clap::Parser;

/// A descriptor limit large enough that no derived limit is at its floor.
const OPEN_FILES: usize = 1 << 20;

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

#[test]
fn defaults_match_the_contract() {
    let c = ServeArgs::default().resolve(OPEN_FILES).expect("valid");
    assert_eq!(c.node_id, 1);
    assert_eq!(c.listen.ws.to_string(), "127.0.0.1:8001");
    assert_eq!(c.listen.resp.to_string(), "127.0.0.1:6379");
    assert_eq!(c.listen.peer.to_string(), "127.0.0.1:7001");
    assert_eq!(c.listen.admin.to_string(), "127.0.0.1:8002");
    assert_eq!(c.data_dir, PathBuf::from("./switchboard-data/node-1"));
    assert_eq!(c.ws.user_group_of("42"), "user_42");
    assert_eq!(c.ws.paths, vec!["/ws/notifications/"]);
    assert_eq!(c.credentials.jwt, JwtKey::Development);
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
    let c = cli.serve.resolve(OPEN_FILES).expect("valid");
    assert_eq!(c.listen.ws.to_string(), "127.0.0.1:9999", "flag beats file");
    assert_eq!(c.node_id, 7, "file beats default");
    assert_eq!(c.cluster.seeds, vec!["a:1", "b:2"]);
    assert_eq!(c.credentials.jwt, JwtKey::Secret("s".into()));
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
        .resolve(OPEN_FILES)
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
    let err = args.resolve(OPEN_FILES).expect_err("unknown key");
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
    let c = cli.serve.resolve(OPEN_FILES).expect("valid");
    assert_eq!(
        c.ws.allowed_origins,
        vec!["https://a.example", "https://b.example"]
    );
    assert_eq!(c.ws.paths.len(), 2);
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
    let c = ServeArgs::default().resolve(OPEN_FILES).expect("valid");
    assert!(!c.ws.max_connections_given);
    let given = ServeArgs {
        max_connections: Some(10),
        ..ServeArgs::default()
    };
    let c = given.resolve(OPEN_FILES).expect("valid");
    assert_eq!(
        (c.ws.max_connections, c.ws.max_connections_given),
        (10, true)
    );
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
    let err = both.resolve(OPEN_FILES).expect_err("both");
    assert!(err.to_string().contains("--resp-password-file"), "{err}");
    let from_file = ServeArgs {
        resp_password_file: Some(file.clone()),
        ..ServeArgs::default()
    };
    let c = from_file.resolve(OPEN_FILES).expect("valid");
    let secret = c.credentials.resp_password.expect("set");
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
    assert!(half_tls.resolve(OPEN_FILES).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn exposure_rules_hold() {
    let mut c = ServeArgs::default().resolve(OPEN_FILES).expect("valid");
    c.listen.ws = "0.0.0.0:8001".parse().expect("addr");
    assert!(c.check_exposure().is_err(), "public ws without a JWT key");
    c.credentials.jwt = JwtKey::Secret("s".into());
    assert!(c.check_exposure().is_ok());
    c.listen.peer = "0.0.0.0:7001".parse().expect("addr");
    assert!(
        c.check_exposure().is_err(),
        "public peer port without a secret"
    );
    c.credentials.cluster_secret = Some("c".into());
    assert!(c.check_exposure().is_ok());
    c.listen.admin = "0.0.0.0:8002".parse().expect("addr");
    assert!(
        c.check_exposure().is_err(),
        "public admin port without a token"
    );
    c.credentials.admin_tokens = Some("t".into());
    assert!(c.check_exposure().is_ok());
    c.credentials.cluster_secret = None;
    c.tls.cluster_ca = Some(ClusterCa {
        ca: "ca.pem".into(),
        cert: "node.pem".into(),
        key: "node.key".into(),
    });
    assert!(c.check_exposure().is_ok(), "a cluster CA is enough too");
}

#[test]
fn the_help_shows_each_declared_default() {
    use clap::CommandFactory;
    let command = Cli::command();
    let normal = |s: &str| {
        s.to_lowercase()
            .chars()
            .filter(|c| !"[]\"-_".contains(*c))
            .collect::<String>()
    };
    let mut checked = 0;
    for (name, default) in ServeArgs::defaults() {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == name)
            .expect("every setting is a flag");
        let help = arg.get_help().expect("every flag has help").to_string();
        let shown = help
            .split_once("[default: ")
            .map(|(_, rest)| rest.split([']', ';']).next().unwrap_or_default());
        match shown {
            Some(shown) if default != "None" => {
                assert_eq!(normal(shown), normal(&default), "--{name}: {help}");
                checked += 1;
            }
            Some(_) => {} // derived at resolve time, the help says from what
            None => assert!(
                default == "None" || default == "[]" || default == "\"\"",
                "--{name} has a default ({default}) its help does not show"
            ),
        }
    }
    assert!(checked >= 20, "{checked} defaults checked");
}
