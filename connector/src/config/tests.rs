//! Unit tests of the configuration: loading, defaults, every error's line and key.

use super::error::key_path_at;
use super::resolve::DEFAULT_MAX_DOWNLOAD_SIZE;
use super::*;
use crate::secret::Secret;

const FILE: &str = "popbridge.toml";

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_str(text, Path::new(FILE))
}

fn err(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts, for each `(from, to, want)`, that `MINIMAL` with `from` replaced by `to` is
/// refused with exactly `want`.
fn assert_minimal_errs(cases: &[(&str, &str, &str)]) {
    for (from, to, want) in cases {
        assert!(MINIMAL.contains(from), "{from:?} is not in MINIMAL");
        assert_eq!(err(&MINIMAL.replace(from, to)), *want, "{from:?} -> {to:?}");
    }
}

/// A minimal valid file: the transport and one account, `info`.
pub(crate) const MINIMAL: &str = r#"state_dir = "/var/lib/popbridge"

[transport]
host = "127.0.0.1"

[[account]]
name = "info"
host = "pop.isp.example"
username = "info@isp.example"
password = "hunter2-secret"
deliver_to = "info@contoso.local"
"#;

const FULL: &str = r#"# everything
state_dir = "/var/lib/popbridge"
profile = "sbs2008"
parallel_accounts = 8
received_header = false
interval = "30m"
jitter = "10s"

[exchange]
organization_receive_limit = "50MB"

[transport]
host = "mail.contoso.local"
port = 2525
helo = "popbridge.contoso.local"
starttls = true
ca_file = "/etc/popbridge/ca.pem"
tls_accept_invalid_certs = true

[limits]
max_message_size = "10MB"
max_messages_per_session = 200
poison_after = 5
default_domain = "contoso.local"
fallback_sender = "postmaster@contoso.local"
quarantine_delete = true
smtp_max_protocol_errors = 10
smtp_reconnects = 0
memory_threshold = "512 KB"

[timeouts]
connect = "5s"
command = 90
data = "1h"

[[account]]
name = "info"
host = "pop.isp.example"
port = 1995
tls = "starttls"
auth = "cram-md5"
username = "info@isp.example"
password = "hunter2-secret"
deliver_to = "info@contoso.local"
leave_on_server = true
ca_file = "/etc/popbridge/isp.pem"
tls_accept_invalid_certs = true
allow_plaintext = true
tls_server_name = "pop.isp.example"
mailbox_receive_limit = "10MB"

[[account]]
name = "sales"
host = "pop2.isp.example"
tls = "none"
auth = "xoauth2"
username = "sales"
password_command = "pass show isp/sales"
deliver_to = "sales@contoso.local"
catch_all = { local_domains = ["Contoso.local"], local_addresses = ["boss@other.example"] }
"#;

#[test]
fn a_full_example_loads_with_the_exact_values() {
    let c = load(FULL).unwrap();
    let want = Config {
        path: PathBuf::from(FILE),
        state_dir: PathBuf::from("/var/lib/popbridge"),
        profile: Profile::Sbs2008,
        parallel_accounts: 8,
        received_header: false,
        transport: Transport::Smtp(SmtpTransport {
            host: "mail.contoso.local".into(),
            port: 2525,
            helo: "popbridge.contoso.local".into(),
            starttls: true,
            ca_file: Some(PathBuf::from("/etc/popbridge/ca.pem")),
            tls_accept_invalid_certs: true,
            tls_fingerprint: None,
        }),
        limits: Limits {
            max_message_size: Some(10 * 1024 * 1024),
            max_messages_per_session: 200,
            poison_after: 5,
            default_domain: Some("contoso.local".into()),
            fallback_sender: "postmaster@contoso.local".into(),
            quarantine_delete: true,
            smtp_max_protocol_errors: 10,
            smtp_reconnects: 0,
            memory_threshold: 512 * 1024,
            max_download_size: DEFAULT_MAX_DOWNLOAD_SIZE,
        },
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            command: Duration::from_secs(90),
            data: Duration::from_secs(3600),
        },
        accounts: vec![
            Account {
                name: "info".into(),
                host: "pop.isp.example".into(),
                port: 1995,
                tls: TlsMode::StartTls,
                auth: AuthMethod::CramMd5,
                username: "info@isp.example".into(),
                secret: SecretSource::Value(Secret::new("hunter2-secret".into())),
                deliver_to: "info@contoso.local".into(),
                mailbox_receive_limit: ReceiveLimit::Octets(10 * 1024 * 1024),
                catch_all: None,
                leave_on_server: true,
                ca_file: Some(PathBuf::from("/etc/popbridge/isp.pem")),
                tls_accept_invalid_certs: true,
                tls_fingerprint: None,
                allow_plaintext: true,
                tls_server_name: Some("pop.isp.example".into()),
                verify_list_size: true,
                oauth2: None,
                interval: None,
            },
            Account {
                name: "sales".into(),
                host: "pop2.isp.example".into(),
                port: 110,
                tls: TlsMode::None,
                auth: AuthMethod::Xoauth2,
                username: "sales".into(),
                secret: SecretSource::Command("pass show isp/sales".into()),
                deliver_to: "sales@contoso.local".into(),
                mailbox_receive_limit: ReceiveLimit::Undeclared,
                catch_all: Some(CatchAll {
                    local_domains: vec!["contoso.local".into()],
                    local_addresses: vec!["boss@other.example".into()],
                }),
                leave_on_server: false,
                ca_file: None,
                tls_accept_invalid_certs: false,
                tls_fingerprint: None,
                allow_plaintext: false,
                tls_server_name: None,
                verify_list_size: true,
                oauth2: None,
                interval: None,
            },
        ],
        interval: Duration::from_secs(30 * 60),
        jitter: Duration::from_secs(10),
        exchange: Exchange {
            organization_receive_limit: ReceiveLimit::Octets(50 * 1024 * 1024),
        },
        metrics_listen: None,
        ledger_retention: DEFAULT_LEDGER_RETENTION,
        cluster: None,
    };
    assert_eq!(c, want);
    assert_eq!(c.account("sales").unwrap().port, 110);
    assert!(c.account("nobody").is_none());
}

#[test]
fn defaults() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.profile, Profile::Default);
    assert_eq!(c.parallel_accounts, 4);
    assert!(c.received_header);
    assert_eq!(
        c.transport,
        Transport::Smtp(SmtpTransport {
            host: "127.0.0.1".into(),
            port: 25,
            helo: "popbridge.localdomain".into(),
            starttls: false,
            ca_file: None,
            tls_accept_invalid_certs: false,
            tls_fingerprint: None,
        })
    );
    assert_eq!(
        (c.interval, c.jitter),
        (Duration::from_secs(900), Duration::from_secs(30))
    );
    assert_eq!(c.exchange, Exchange::default());
    assert_eq!(
        c.limits,
        Limits {
            max_message_size: None,
            max_messages_per_session: 500,
            poison_after: 3,
            default_domain: None,
            fallback_sender: String::new(),
            quarantine_delete: false,
            smtp_max_protocol_errors: 5,
            smtp_reconnects: 3,
            memory_threshold: 1024 * 1024,
            max_download_size: DEFAULT_MAX_DOWNLOAD_SIZE,
        }
    );
    assert_eq!(
        c.timeouts,
        Timeouts {
            connect: Duration::from_secs(30),
            command: Duration::from_secs(60),
            data: Duration::from_secs(600),
        }
    );
    let a = &c.accounts[0];
    assert_eq!(
        (a.port, a.tls, a.auth, a.leave_on_server, a.allow_plaintext),
        (995, TlsMode::Implicit, AuthMethod::User, false, false)
    );
    assert_eq!(
        (a.ca_file.as_ref(), a.tls_server_name.as_ref()),
        (None, None)
    );
    assert!(!a.tls_accept_invalid_certs);
}

#[test]
fn explicit_auto_and_integer_sizes() {
    let text = MINIMAL.replace(
        "[[account]]",
        "[limits]\nmax_message_size = \"Auto\"\nmemory_threshold = 4096\n\n[[account]]",
    );
    let c = load(&text).unwrap();
    assert_eq!(c.limits.max_message_size, None);
    assert_eq!(c.limits.memory_threshold, 4096);
    let text = MINIMAL.replace(
        "[[account]]",
        "[limits]\nmax_message_size = 1048576\n\n[[account]]",
    );
    assert_eq!(load(&text).unwrap().limits.max_message_size, Some(1 << 20));
}

#[test]
fn receive_limits_are_undeclared_unlimited_or_a_size() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(
        c.exchange.organization_receive_limit,
        ReceiveLimit::Undeclared
    );
    assert_eq!(
        c.accounts[0].mailbox_receive_limit,
        ReceiveLimit::Undeclared
    );
    assert!(!c.accounts[0].mailbox_receive_limit.is_declared());
    let text = MINIMAL.replace(
        "[[account]]",
        "[exchange]\norganization_receive_limit = \" Unlimited \"\n\n[[account]]",
    ) + "mailbox_receive_limit = \"25MB\"\n";
    let c = load(&text).unwrap();
    assert_eq!(
        c.exchange.organization_receive_limit,
        ReceiveLimit::Unlimited
    );
    assert!(c.exchange.organization_receive_limit.is_declared());
    assert_eq!(c.exchange.organization_receive_limit.octets(), None);
    assert_eq!(
        c.accounts[0].mailbox_receive_limit,
        ReceiveLimit::Octets(25 << 20)
    );
    assert_eq!(c.accounts[0].mailbox_receive_limit.octets(), Some(25 << 20));
    let text = MINIMAL.to_string() + "mailbox_receive_limit = 0\n";
    assert_eq!(
        err(&text),
        "popbridge.toml:12: account[0].mailbox_receive_limit: must be greater than 0 (or \"unlimited\")"
    );
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let text = MINIMAL.replace("/var/lib/popbridge", "state").replace(
        "password = \"hunter2-secret\"",
        "password_file = \"secrets/info.pass\"\nca_file = \"ca.pem\"",
    );
    let c = Config::from_str(&text, Path::new("/etc/popbridge/popbridge.toml")).unwrap();
    assert_eq!(c.state_dir, PathBuf::from("/etc/popbridge/state"));
    assert_eq!(
        c.accounts[0].secret,
        SecretSource::File(PathBuf::from("/etc/popbridge/secrets/info.pass"))
    );
    assert_eq!(
        c.accounts[0].ca_file,
        Some(PathBuf::from("/etc/popbridge/ca.pem"))
    );
    let abs = text.replace("\"secrets/info.pass\"", "\"/run/info.pass\"");
    let c = Config::from_str(&abs, Path::new("/etc/popbridge/popbridge.toml")).unwrap();
    assert_eq!(
        c.accounts[0].secret,
        SecretSource::File(PathBuf::from("/run/info.pass"))
    );
}

#[test]
fn other_password_sources() {
    let env = MINIMAL.replace(
        "password = \"hunter2-secret\"",
        "password_env = \"INFO_PASS\"",
    );
    assert_eq!(
        load(&env).unwrap().accounts[0].secret,
        SecretSource::Env("INFO_PASS".into())
    );
}

#[test]
fn the_password_never_appears_in_debug_output() {
    for text in [MINIMAL, FULL] {
        let c = load(text).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("***"));
        let alt = format!("{c:#?}");
        assert!(!alt.contains("hunter2"));
    }
}

#[test]
fn a_bad_password_value_is_not_quoted() {
    for bad in [
        "password = 987654321",
        "password = 98765.4321",
        "password = [\"hunter2-secret\"]",
        "password = \"hunter2-secret",
        "password = \"hunter2\\q-secret\"",
        "password = hunter2-secret",
    ] {
        let text = MINIMAL.replace("password = \"hunter2-secret\"", bad);
        let e = err(&text);
        assert!(!e.contains("hunter2") && !e.contains("98765"), "{bad}: {e}");
        assert!(e.starts_with("popbridge.toml:10:"), "{bad}: {e}");
    }
}

#[test]
fn tls_fingerprint_is_parsed_for_accounts_and_the_transport_and_refused_when_malformed() {
    let pin = format!("sha256:{}", "ab:".repeat(31) + "ab");
    let text = MINIMAL
        .replace(
            "host = \"127.0.0.1\"",
            &format!("host = \"127.0.0.1\"\ntls_fingerprint = \"{pin}\""),
        )
        .replace(
            "[[account]]",
            &format!("[[account]]\ntls_fingerprint = \"{}\"", "CD".repeat(32)),
        );
    let cfg = Config::from_str(&text, Path::new("popbridge.toml")).unwrap();
    assert_eq!(
        cfg.transport.smtp().unwrap().tls_fingerprint,
        Some(Fingerprint([0xab; 32]))
    );
    assert_eq!(
        cfg.accounts[0].tls_fingerprint,
        Some(Fingerprint([0xcd; 32]))
    );
    let bad = MINIMAL.replace(
        "[[account]]",
        "[[account]]\ntls_fingerprint = \"sha256:12:34\"",
    );
    let e = err(&bad);
    assert!(
        e.contains("tls_fingerprint") && e.contains("64 hexadecimal digits"),
        "{e}"
    );
}

#[test]
fn unknown_key() {
    assert_minimal_errs(&[
        ("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nbogus = 1", "popbridge.toml:5: transport.bogus: unknown key \"bogus\", expected one of \"kind\", \"host\", \
         \"pickup_dir\", \"failed_dir\", \"pickup_mode\", \"port\", \"helo\", \"starttls\", \"ca_file\", \
         \"tls_accept_invalid_certs\", \"tls_fingerprint\""),
    ]);
    let text = format!("statedir = 1\n{MINIMAL}");
    assert!(
        err(&text)
            .starts_with("popbridge.toml:1: statedir: unknown key \"statedir\", expected one of"),
        "{}",
        err(&text)
    );
    let text = format!("{MINIMAL}leave_on_sever = true\n");
    assert!(err(&text).starts_with(
        "popbridge.toml:12: account[0].leave_on_sever: unknown key \"leave_on_sever\""
    ));
}

#[test]
fn unknown_key_in_a_dotted_table_is_located() {
    let text = MINIMAL.replace(
        "[transport]\nhost = \"127.0.0.1\"",
        "transport.host = \"h\"\ntransport.prot = 1",
    );
    assert!(
        err(&text).starts_with("popbridge.toml:4: transport.prot: unknown key \"prot\""),
        "{}",
        err(&text)
    );
}

#[test]
fn bad_enum_value() {
    let text = format!("{MINIMAL}tls = \"ssl\"\n");
    assert_eq!(
        err(&text),
        "popbridge.toml:12: account[0].tls: unknown variant \"ssl\", expected one of \"none\", \"starttls\", \"implicit\""
    );
    let text = format!("{MINIMAL}\n[[account]]\nname = \"b\"\nauth = \"md5\"\n");
    assert_eq!(
        err(&text),
        "popbridge.toml:15: account[1].auth: unknown variant \"md5\", expected one of \"user\", \"apop\", \"plain\", \"login\", \"cram-md5\", \"xoauth2\", \"ntlm\", \"spa\""
    );
}

#[test]
fn ntlm_is_also_called_spa() {
    for name in ["ntlm", "spa"] {
        let c = load(&format!("{MINIMAL}auth = \"{name}\"\n")).unwrap();
        assert_eq!(c.accounts[0].auth, AuthMethod::Ntlm, "{name}");
        assert_eq!(c.accounts[0].auth.to_string(), "ntlm");
    }
}

#[test]
fn bad_size() {
    assert_minimal_errs(&[
        ("[[account]]", "[limits]\nmax_message_size = \"10XB\"\n\n[[account]]", "popbridge.toml:7: limits.max_message_size: invalid size \"10XB\": unknown unit \"XB\" (use B, KB, MB or GB)"),
        ("[[account]]", "[limits]\nmemory_threshold = -1\n\n[[account]]", "popbridge.toml:7: limits.memory_threshold: must not be negative"),
        ("[[account]]", "[limits]\nmemory_threshold = 1.5\n\n[[account]]", "popbridge.toml:7: limits.memory_threshold: invalid type: floating point \"1.5\", expected a size such as \"10MB\" or a number of octets"),
        ("[[account]]", "[limits]\nmax_message_size = 0\n\n[[account]]", "popbridge.toml:7: limits.max_message_size: must be greater than 0 (or \"auto\")"),
    ]);
}

#[test]
fn bad_duration() {
    assert_minimal_errs(&[
        ("[[account]]", "[timeouts]\ncommand = \"1m\"\nconnect = \"30x\"\n\n[[account]]", "popbridge.toml:8: timeouts.connect: invalid duration \"30x\": unknown unit \"x\" (use ms, s, m, h or d)"),
        ("[[account]]", "[timeouts]\ndata = \"0s\"\n\n[[account]]", "popbridge.toml:7: timeouts.data: must be greater than 0"),
    ]);
}

#[test]
fn two_password_sources() {
    let text = format!("{MINIMAL}password_env = \"X\"\n");
    assert_eq!(
        err(&text),
        "popbridge.toml:12: account[0].password_env: conflicts with password; set exactly one of password, password_env, password_file, password_command"
    );
    // The later one in the file is blamed, whatever the order of the keys.
    assert_minimal_errs(&[
        ("username = ", "password_command = \"pass x\"\nusername = ", "popbridge.toml:11: account[0].password: conflicts with password_command; set exactly one of password, password_env, password_file, password_command"),
    ]);
}

#[test]
fn no_password_source() {
    assert_minimal_errs(&[
        ("password = \"hunter2-secret\"\n", "", "popbridge.toml:6: account[0]: no password source; set exactly one of password, password_env, password_file, password_command"),
    ]);
}

#[test]
fn duplicate_account_name() {
    let second = "\n[[account]]\nname = \"Info\"\nhost = \"h\"\nusername = \"u\"\npassword_env = \"P\"\ndeliver_to = \"a@b.c\"\n";
    let text = format!("{MINIMAL}{second}");
    assert_eq!(
        err(&text),
        "popbridge.toml:14: account[1].name: duplicate account name \"Info\" (first defined at line 7)"
    );
}

#[test]
fn invalid_deliver_to() {
    assert_minimal_errs(&[
        ("\"info@contoso.local\"", "\"info\"", "popbridge.toml:11: account[0].deliver_to: address \"info\" has no domain; a full address local@domain is required"),
        ("\"info@contoso.local\"", "\"info@contoso..local\"", "popbridge.toml:11: account[0].deliver_to: invalid address \"info@contoso..local\": empty or over-long domain label; a full address local@domain is required"),
    ]);
}

#[test]
fn missing_transport() {
    assert_minimal_errs(&[(
        "[transport]\nhost = \"127.0.0.1\"\n",
        "",
        "popbridge.toml: missing [transport] section",
    )]);
}

#[test]
fn missing_keys() {
    assert_minimal_errs(&[
        (
            "username = \"info@isp.example\"\n",
            "",
            "popbridge.toml:6: account[0].username: missing required key",
        ),
        (
            "host = \"127.0.0.1\"\n",
            "port = 25\n",
            "popbridge.toml:3: transport.host: missing required key",
        ),
        (
            "state_dir = \"/var/lib/popbridge\"\n",
            "",
            "popbridge.toml: state_dir: missing required key",
        ),
    ]);
    let text = MINIMAL.split("[[account]]").next().unwrap().to_string();
    assert_eq!(
        err(&text),
        "popbridge.toml: account: at least one [[account]] is required"
    );
    assert_minimal_errs(&[(
        "[[account]]",
        "[account]",
        "popbridge.toml:6: account: accounts are written as [[account]] (an array of tables)",
    )]);
}

#[test]
fn other_validation_errors() {
    let cases = [
        ("parallel_accounts = 0\n", "popbridge.toml:1: parallel_accounts: must be between 1 and 64 (got 0)"),
        ("parallel_accounts = \"4\"\n", "popbridge.toml:1: parallel_accounts: invalid type: string \"4\", expected an integer"),
        ("profile = \"sbs2003\"\n", "popbridge.toml:1: profile: unknown variant \"sbs2003\", expected \"default\" or \"sbs2008\""),
    ];
    for (prefix, want) in cases {
        assert_eq!(err(&format!("{prefix}{MINIMAL}")), want);
    }
    let in_limits = [
        ("poison_after = 101", "popbridge.toml:7: limits.poison_after: must be between 1 and 100 (got 101)"),
        ("smtp_max_protocol_errors = 1", "popbridge.toml:7: limits.smtp_max_protocol_errors: must be between 2 and 1000 (got 1)"),
        ("smtp_reconnects = -1", "popbridge.toml:7: limits.smtp_reconnects: must be between 0 and 100 (got -1)"),
        ("max_messages_per_session = 100001", "popbridge.toml:7: limits.max_messages_per_session: must be between 1 and 100000 (got 100001)"),
        ("default_domain = \"contoso..local\"", "popbridge.toml:7: limits.default_domain: invalid domain \"contoso..local\": empty or over-long domain label"),
        ("fallback_sender = \"postmaster\"", "popbridge.toml:7: limits.fallback_sender: address \"postmaster\" has no domain; a full address local@domain is required"),
    ];
    for (line, want) in in_limits {
        let text = MINIMAL.replace("[[account]]", &format!("[limits]\n{line}\n\n[[account]]"));
        assert_eq!(err(&text), want);
    }
    let in_account = [
        ("port = 0", "popbridge.toml:12: account[0].port: must be between 1 and 65535 (got 0)"),
        ("tls_server_name = \"bad name\"", "popbridge.toml:12: account[0].tls_server_name: invalid server name \"bad name\": expected a DNS name or IP address"),
    ];
    for (line, want) in in_account {
        assert_eq!(err(&format!("{MINIMAL}{line}\n")), want);
    }
    assert_minimal_errs(&[
        ("name = \"info\"", "name = \"in fo\"", "popbridge.toml:7: account[0].name: invalid account name \"in fo\": use 1 to 64 of A-Z a-z 0-9 . _ -"),
        ("\"hunter2-secret\"", "\"\"", "popbridge.toml:10: account[0].password: must not be empty"),
    ]);
}

#[test]
fn type_errors_are_readable() {
    assert_eq!(
        err(&format!("limits = 5\n{MINIMAL}")),
        "popbridge.toml:1: limits: invalid type: integer \"5\", expected a [limits] table"
    );
    assert_eq!(
        err(&format!("timeouts = []\n{MINIMAL}")),
        "popbridge.toml:1: timeouts: invalid type: array, expected a [timeouts] table"
    );
    assert_eq!(
        err(&format!("{MINIMAL}tls = 5\n")),
        "popbridge.toml:12: account[0].tls: invalid type, expected a string"
    );
    assert_eq!(
        err(&format!("{MINIMAL}leave_on_server = \"yes\"\n")),
        "popbridge.toml:12: account[0].leave_on_server: invalid type: string \"yes\", expected a boolean"
    );
    assert_minimal_errs(&[(
        "password = \"hunter2-secret\"",
        "password_file = \"\"",
        "popbridge.toml:10: account[0].password_file: must not be empty",
    )]);
}

#[test]
fn plaintext_password_without_tls_still_loads() {
    let text = format!("{MINIMAL}tls = \"none\"\nauth = \"login\"\n");
    let c = load(&text).unwrap();
    assert_eq!(
        (c.accounts[0].tls, c.accounts[0].port),
        (TlsMode::None, 110)
    );
    assert!(!c.accounts[0].allow_plaintext);
}

#[test]
fn syntax_errors_name_the_line() {
    let text = MINIMAL.replace("host = \"127.0.0.1\"", "host = ");
    let e = load(&text).unwrap_err();
    assert_eq!(e.line(), Some(4));
    assert!(e.to_string().starts_with("popbridge.toml:4: "), "{e}");
}

#[test]
fn read_errors_name_the_file() {
    let e = Config::load(Path::new("/nonexistent/popbridge.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/popbridge.toml: cannot read: "),
        "{e}"
    );
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("popbridge.toml");
    std::fs::write(&path, MINIMAL.replace("/var/lib/popbridge", "state")).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.path, path);
    assert_eq!(c.state_dir, dir.path().join("state"));
}

#[test]
fn the_example_file_loads() {
    let text = include_str!("../../popbridge.example.toml");
    let c = Config::from_str(text, Path::new("/etc/popbridge/popbridge.toml")).unwrap();
    assert!(!c.accounts.is_empty());
    for name in ["gmail", "office365"] {
        let a = c.account(name).unwrap();
        assert_eq!(a.auth, AuthMethod::Xoauth2);
        assert!(a.oauth2.is_some(), "{name}");
    }
    let sales = c.account("sales").unwrap();
    assert_eq!(c.interval_of(sales), Duration::from_secs(300));
}

#[test]
fn sizes() {
    for (s, want) in [
        ("10MB", 10 << 20),
        ("512KB", 512 << 10),
        ("512 kb", 512 << 10),
        ("1GB", 1 << 30),
        ("1gib", 1 << 30),
        ("123B", 123),
        ("123", 123),
        ("0", 0),
        ("2K", 2048),
        (" 3 MiB ", 3 << 20),
    ] {
        assert_eq!(parse_size(s), Ok(want), "{s}");
    }
    for bad in [
        "",
        "MB",
        "1.5MB",
        "-1",
        "10 XB",
        "99999999999999999999",
        "17179869184GB",
    ] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_size("1.5MB"),
        Err("invalid size \"1.5MB\": fractions are not supported, use a smaller unit".into())
    );
}

#[test]
fn durations() {
    for (s, want) in [
        ("30s", Duration::from_secs(30)),
        ("15m", Duration::from_secs(900)),
        ("2h", Duration::from_secs(7200)),
        ("1d", Duration::from_secs(86_400)),
        ("500ms", Duration::from_millis(500)),
        ("500 MS", Duration::from_millis(500)),
        ("45", Duration::from_secs(45)),
        ("0s", Duration::ZERO),
    ] {
        assert_eq!(parse_duration(s), Ok(want), "{s}");
    }
    for bad in [
        "",
        "s",
        "1.5s",
        "-3s",
        "10x",
        "1 week",
        "99999999999999999999d",
        "999999999999999999d",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn no_input_panics() {
    // Every prefix of a full file, and every prefix with one byte changed to a quote.
    for (i, _) in FULL.char_indices() {
        let _ = load(&FULL[..i]);
        let mut broken = FULL.to_string();
        broken.replace_range(
            i..i + FULL[i..].chars().next().map_or(0, char::len_utf8),
            "\"",
        );
        let _ = load(&broken);
    }
    let _ = load("");
    let _ = load("\u{0}");
    let _ = load("[[account]]\n[[account.x]]\n");
}

#[test]
fn key_paths() {
    let text = "a = 1\n[b]\nc = [1, {d = 2}]\n[[e]]\nf = 1\n[[e]]\ng = 'x'\n";
    let at = |needle: &str| key_path_at(text, text.find(needle).unwrap());
    assert_eq!(at("a =").as_deref(), Some("a"));
    assert_eq!(at("d =").as_deref(), Some("b.c[1].d"));
    assert_eq!(at("g =").as_deref(), Some("e[1].g"));
    assert_eq!(at("'x'").as_deref(), Some("e[1].g"));
    assert_eq!(key_path_at("x = \"unterminated\n", 4), None);
}

#[test]
fn ledger_retention_defaults_to_90_days_and_is_at_least_a_day() {
    assert_eq!(
        load(MINIMAL).unwrap().ledger_retention,
        Duration::from_secs(90 * 86_400)
    );
    let with = |v: &str| format!("ledger_retention = {v}\n{MINIMAL}");
    assert_eq!(
        load(&with("\"30d\"")).unwrap().ledger_retention,
        Duration::from_secs(30 * 86_400)
    );
    for (bad, why) in [
        ("\"12h\"", "must be at least 1 day"),
        ("\"0\"", "must be greater than 0"),
        ("\"soon\"", "invalid duration"),
    ] {
        let e = load(&with(bad)).unwrap_err().to_string();
        assert!(
            e.starts_with("popbridge.toml:1: ledger_retention: ") && e.contains(why),
            "{bad}: {e}"
        );
    }
}

#[test]
fn interval_is_bounded_like_the_sbs_connector() {
    let with = |v: &str| format!("interval = {v}\n{MINIMAL}");
    assert_eq!(
        load(&with("\"5m\"")).unwrap().interval,
        Duration::from_secs(300)
    );
    assert_eq!(
        load(&with("\"24h\"")).unwrap().interval,
        Duration::from_secs(86_400)
    );
    for bad in ["\"4m\"", "\"25h\"", "60"] {
        let e = load(&with(bad)).unwrap_err().to_string();
        assert_eq!(e, "popbridge.toml:1: interval: must be between 5 minutes and 24 hours (as the SBS connector allowed)", "{bad}");
    }
    assert_eq!(
        load(&format!("jitter = 0\n{MINIMAL}")).unwrap().jitter,
        Duration::ZERO
    );
    assert!(load(&format!("interval = \"5m\"\njitter = \"3m\"\n{MINIMAL}")).is_err());
}

#[test]
fn an_account_may_have_its_own_interval_with_the_same_bounds() {
    let c = load(&format!(
        "interval = \"30m\"\n{MINIMAL}interval = \"10m\"\n"
    ))
    .unwrap();
    assert_eq!(c.accounts[0].interval, Some(Duration::from_secs(600)));
    assert_eq!(c.interval_of(&c.accounts[0]), Duration::from_secs(600));
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.accounts[0].interval, None);
    assert_eq!(c.interval_of(&c.accounts[0]), Duration::from_secs(900));
    for bad in ["\"4m\"", "\"25h\"", "60"] {
        let e = err(&format!("{MINIMAL}interval = {bad}\n"));
        assert_eq!(
            e,
            "popbridge.toml:12: account[0].interval: must be between 5 minutes and 24 \
             hours (as the SBS connector allowed)",
            "{bad}"
        );
    }
    let e = err(&format!(
        "jitter = \"200s\"\ninterval = \"1h\"\n{MINIMAL}interval = \"6m\"\n"
    ));
    assert!(
        e.contains("account[0].interval: must be at least twice the jitter"),
        "{e}"
    );
}

#[test]
fn metrics_listen_is_loopback_unless_explicitly_allowed() {
    let c = load(&format!("metrics_listen = \"127.0.0.1:9725\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9725".parse().unwrap()));
    let c = load(&format!("metrics_listen = \"[::1]:9725\"\n{MINIMAL}")).unwrap();
    assert!(c.metrics_listen.unwrap().ip().is_loopback());
    assert_eq!(load(MINIMAL).unwrap().metrics_listen, None);
    let e = err(&format!("metrics_listen = \"0.0.0.0:9725\"\n{MINIMAL}"));
    assert!(
        e.starts_with("popbridge.toml:1: metrics_listen: 0.0.0.0:9725 is not a loopback address")
            && e.contains("metrics_allow_non_loopback = true"),
        "{e}"
    );
    let c = load(&format!(
        "metrics_listen = \"0.0.0.0:9725\"\nmetrics_allow_non_loopback = true\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.metrics_listen, Some("0.0.0.0:9725".parse().unwrap()));
    let e = err(&format!("metrics_listen = \"localhost\"\n{MINIMAL}"));
    assert!(
        e.starts_with("popbridge.toml:1: metrics_listen: invalid address"),
        "{e}"
    );
}

#[test]
fn pickup_transport_needs_its_folder_and_no_host() {
    let text = MINIMAL.replace(
        "host = \"127.0.0.1\"\n",
        "kind = \"pickup\"\npickup_dir = \"pickup\"\n",
    );
    let c = load(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    match &c.transport {
        Transport::Pickup(PickupTransport {
            dir,
            failed_dir,
            mode,
            ..
        }) => {
            assert!(dir.ends_with("pickup"), "{dir:?}");
            assert_eq!(failed_dir, &c.state_dir.join("failed"));
            assert_eq!(*mode, DEFAULT_PICKUP_MODE);
        }
        other => panic!("{other:?}"),
    }
    for (given, want) in [("\"0640\"", Some(0o640)), ("\"600\"", Some(0o600))] {
        let c = load(&text.replace("pickup_dir", &format!("pickup_mode = {given}\npickup_dir")))
            .unwrap();
        assert!(
            matches!(c.transport, Transport::Pickup(PickupTransport { mode, .. }) if Some(mode) == want),
            "{given}"
        );
    }
    for bad in ["\"0400\"", "\"rw-r--r--\"", "\"4755\"", "\"0888\""] {
        let e = load(&text.replace("pickup_dir", &format!("pickup_mode = {bad}\npickup_dir")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("transport.pickup_mode: ") && e.contains("is not a file mode"),
            "{e}"
        );
    }
    let text = MINIMAL.replace("host = \"127.0.0.1\"\n", "kind = \"pickup\"\n");
    assert!(load(&text)
        .unwrap_err()
        .to_string()
        .contains("transport.pickup_dir: missing required key"));
}

const OAUTH: &str = r#"state_dir = "/var/lib/popbridge"

[transport]
host = "127.0.0.1"

[[account]]
name = "gmail"
host = "pop.gmail.com"
username = "info@example.com"
deliver_to = "info@contoso.local"
oauth2 = { token_url = "https://oauth2.googleapis.com/token", client_id = "123.apps", client_secret_env = "GMAIL_SECRET", refresh_token_file = "gmail.refresh", scope = "https://mail.google.com/" }
"#;

#[test]
fn an_oauth2_account_needs_no_password_and_implies_xoauth2() {
    let c = Config::from_str(OAUTH, Path::new("/etc/popbridge/popbridge.toml")).unwrap();
    let a = &c.accounts[0];
    assert_eq!(a.auth, AuthMethod::Xoauth2);
    assert_eq!(a.secret, SecretSource::Value(Secret::default()));
    let o = a.oauth2.as_ref().unwrap();
    assert_eq!(
        o.token_url.to_string(),
        "https://oauth2.googleapis.com/token"
    );
    assert_eq!(o.client_id, "123.apps");
    assert_eq!(
        o.client_secret,
        Some(SecretSource::Env("GMAIL_SECRET".into()))
    );
    assert_eq!(
        o.refresh_token,
        SecretSource::File(PathBuf::from("/etc/popbridge/gmail.refresh"))
    );
    assert_eq!(o.scope.as_deref(), Some("https://mail.google.com/"));
    // Explicit xoauth2, a public client (no secret), a table of its own.
    let text = OAUTH.replace(
        "oauth2 = { token_url = \"https://oauth2.googleapis.com/token\", client_id = \"123.apps\", client_secret_env = \"GMAIL_SECRET\", refresh_token_file = \"gmail.refresh\", scope = \"https://mail.google.com/\" }",
        "auth = \"xoauth2\"\n[account.oauth2]\ntoken_url = \"https://login.microsoftonline.com/t/oauth2/v2.0/token\"\nclient_id = \"c\"\nrefresh_token = \"0.AAA-refresh\"",
    );
    let c = load(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let o = c.accounts[0].oauth2.as_ref().unwrap();
    assert_eq!((o.client_secret.as_ref(), o.scope.as_ref()), (None, None));
    assert!(!format!("{c:?}").contains("0.AAA-refresh"));
}

#[cfg(unix)]
#[test]
fn a_readable_file_with_an_inline_refresh_token_or_client_secret_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("popbridge.toml");
    let inline = OAUTH.replace(
        "client_secret_env = \"GMAIL_SECRET\", refresh_token_file = \"gmail.refresh\"",
        "client_secret = \"GOCSPX-secret\", refresh_token = \"1//0g-refresh\"",
    );
    assert_ne!(inline, OAUTH);
    std::fs::write(&path, &inline).unwrap();
    let set =
        |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    set(0o644);
    let c = Config::load(&path).unwrap();
    let e = c.check_private().unwrap_err().to_string();
    assert!(
        e.contains("holds the OAuth2 refresh token of account") && e.contains("mode 0644"),
        "{e}"
    );
    assert!(!e.contains("1//0g-refresh") && !e.contains("GOCSPX"), "{e}");
    set(0o600);
    Config::load(&path).unwrap().check_private().unwrap();
    // A refresh_token_file others can read is refused too.
    let token = dir.path().join("gmail.refresh");
    std::fs::write(&token, "1//0g-refresh\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o604)).unwrap();
    std::fs::write(&path, OAUTH).unwrap();
    let e = Config::load(&path).unwrap().check_private().unwrap_err();
    assert!(matches!(e, ConfigError::Exposed { mode: 0o604, .. }), "{e}");
}

#[test]
fn oauth2_errors_name_the_line_and_key() {
    let line = |needle: &str, with: &str| OAUTH.replace(needle, with);
    let cases = [
        (
            line("deliver_to", "auth = \"plain\"\ndeliver_to"),
            "popbridge.toml:12: account[0].oauth2: needs auth = \"xoauth2\" (the account has auth = \"plain\"); set it, or leave auth out",
        ),
        (
            line("deliver_to", "password = \"hunter2\"\ndeliver_to"),
            "popbridge.toml:10: account[0].password: not used with oauth2 (the access token comes from the token endpoint); remove it",
        ),
        (
            line("https://oauth2", "http://oauth2"),
            "popbridge.toml:11: account[0].oauth2.token_url: must be an https:// URL (the refresh token and the client secret are sent to it)",
        ),
        (
            line("refresh_token_file = \"gmail.refresh\", ", ""),
            "popbridge.toml:11: account[0].oauth2: no refresh token source; set exactly one of refresh_token, refresh_token_env, refresh_token_file, refresh_token_command",
        ),
        (
            line("client_secret_env = \"GMAIL_SECRET\"", "client_secret_env = \"GMAIL_SECRET\", client_secret = \"s3cr3t\""),
            "popbridge.toml:11: account[0].oauth2.client_secret: conflicts with client_secret_env; set exactly one of client_secret, client_secret_env, client_secret_file, client_secret_command",
        ),
        (
            line("client_id = \"123.apps\"", "client_id = \"\""),
            "popbridge.toml:11: account[0].oauth2.client_id: must not be empty",
        ),
        (
            line("scope =", "scopes ="),
            "popbridge.toml:11: account[0].oauth2.scopes: unknown key \"scopes\", expected one of \"token_url\", \"client_id\", \"client_secret\", \"client_secret_env\", \"client_secret_file\", \"client_secret_command\", \"refresh_token\", \"refresh_token_env\", \"refresh_token_file\", \"refresh_token_command\", \"scope\"",
        ),
        (
            line("token_url = \"https://oauth2.googleapis.com/token\", ", ""),
            "popbridge.toml:11: account[0].oauth2.token_url: missing required key",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(err(&text), want, "{text}");
    }
}

#[test]
fn a_bad_refresh_token_or_client_secret_value_is_not_quoted() {
    for bad in [
        "refresh_token = 987654321",
        "refresh_token = [\"1//hunter2\"]",
        "client_secret = 98765.4321",
        "client_secret = hunter2",
    ] {
        let text = format!(
            "{}\n[account.oauth2]\ntoken_url = \"https://h/t\"\nclient_id = \"c\"\n{bad}\n",
            MINIMAL.replace("password = \"hunter2-secret\"\n", "")
        );
        let e = err(&text);
        assert!(!e.contains("hunter2") && !e.contains("98765"), "{bad}: {e}");
        assert!(e.contains("not shown"), "{bad}: {e}");
    }
}

#[test]
fn catch_all_needs_something_local_and_valid_domains() {
    let bad = format!("{MINIMAL}catch_all = {{ local_domains = [] }}\n");
    assert!(load(&bad)
        .unwrap_err()
        .to_string()
        .contains("catch_all: needs local_domains or local_addresses"));
    let bad = format!("{MINIMAL}catch_all = {{ local_domains = [\"bad..domain\"] }}\n");
    assert!(load(&bad)
        .unwrap_err()
        .to_string()
        .contains("invalid domain"));
}

#[test]
fn the_profile_decides_the_policy() {
    let limits = "[limits]\nmax_messages_per_session = 20\npoison_after = 7\nsmtp_reconnects = 9\n";
    let p = load(&format!("{MINIMAL}{limits}")).unwrap().policy();
    assert_eq!(
        p,
        Policy {
            repair_senders: true,
            pipelining: true,
            reconnect_before_error_limit: true,
            smtp_reconnects: 9,
            max_per_session: 20,
            size_rule: SizeRule::SmallestKnown,
            stop_at_oversize: false,
            quarantine_after: Some(7),
        }
    );
    let sbs = format!("profile = \"sbs2008\"\n{MINIMAL}{limits}");
    let p = load(&sbs).unwrap().policy();
    assert_eq!(
        p,
        Policy {
            repair_senders: false,
            pipelining: false,
            reconnect_before_error_limit: false,
            smtp_reconnects: 0,
            max_per_session: 500,
            size_rule: SizeRule::ReceiveConnector {
                unadvertised: 10 * 1024 * 1024
            },
            stop_at_oversize: true,
            quarantine_after: None,
        }
    );
}

#[test]
fn a_cluster_section_names_a_local_database_and_keeps_its_password_elsewhere() {
    let with = |section: &str| format!("{MINIMAL}\n[cluster]\n{section}");
    assert_eq!(load(MINIMAL).unwrap().cluster, None);
    let c = load(&with(
        "database = \"host=/run/postgresql user=popbridge dbname=mail\"\n\
         password_file = \"/etc/popbridge/db-password\"\ninstance = \"mail-1\"\n\
         lease_ttl = \"2m\"\nserver_sessions = 2",
    ))
    .unwrap();
    assert_eq!(
        c.cluster,
        Some(ClusterSettings {
            database: "host=/run/postgresql user=popbridge dbname=mail".into(),
            password: Some(SecretSource::File(PathBuf::from(
                "/etc/popbridge/db-password"
            ))),
            instance: Some("mail-1".into()),
            lease_ttl: Duration::from_secs(120),
            server_sessions: 2,
        })
    );
    let defaults = load(&with("database = \"postgres://popbridge@localhost/mail\"")).unwrap();
    let defaults = defaults.cluster.unwrap();
    assert_eq!((defaults.password, defaults.instance), (None, None));
    assert_eq!(defaults.lease_ttl, Duration::from_secs(60));
    assert_eq!(defaults.server_sessions, 4);
    for (section, key, why) in [
        (
            "lease_ttl = \"1m\"",
            "cluster",
            "cluster.database: missing required key",
        ),
        (
            "database = \"postgres://popbridge:s3cr3t-pw@localhost/mail\"",
            "cluster.database",
            "holds a password",
        ),
        (
            "database = \"postgres://popbridge@db.example.net/mail\"",
            "cluster.database",
            "is not on this machine",
        ),
        (
            "database = \"host=/run/postgresql sslmode=require\"",
            "cluster.database",
            "TLS to the cluster database is not supported yet",
        ),
        (
            "database = \"host=/run/postgresql\"\nlease_ttl = \"5s\"",
            "cluster.lease_ttl",
            "between 10 seconds and 1 hour",
        ),
        (
            "database = \"host=/run/postgresql\"\ninstance = \"two words\"",
            "cluster.instance",
            "without spaces",
        ),
        (
            "database = \"host=/run/postgresql\"\npassword = \"x\"\npassword_env = \"PGPW\"",
            "cluster.password_env",
            "conflicts with password",
        ),
        (
            "database = \"host=/run/postgresql\"\nport = 5432",
            "cluster.port",
            "unknown key",
        ),
        (
            "database = \"host=/run/postgresql\"\nserver_sessions = 0",
            "cluster.server_sessions",
            "between 1 and 64",
        ),
    ] {
        let e = err(&with(section));
        assert!(e.contains(key) && e.contains(why), "{section}: {e}");
        assert!(!e.contains("s3cr3t-pw"), "{e}");
    }
}
