//! `popbridge diagnose`: what each POP3 server offers and allows, and what the transport
//! advertises, as a readable report with an exit code.
//!
//! Responsible for: per account, connecting as the pass would (same TLS mode, certificate
//! checks and timeouts), the capabilities before and after login, the login result (the
//! server's reply on a refusal), the message count, total size and largest sizes from LIST,
//! UIDL support; then the transport's greeting, EHLO extensions, SIZE and STARTTLS. For
//! every TLS connection, the server's certificate (subject, issuer, names, validity,
//! fingerprint), whether it verified and why not, and the line that would pin it.
//! Must never: change a mailbox (no RETR, TOP or DELE; the POP3 session ends with a QUIT
//! that has nothing to apply), start an SMTP transaction (no MAIL), or put a password in
//! the report: every field is scrubbed of every secret resolved, whatever a server echoes.

use std::fmt;
use std::path::Path;

use crate::certinfo::CertificateInfo;
use crate::config::{Account, Config, SmtpTransport, TlsMode, Transport};
use crate::exit::Exit;
use crate::limits::human_size;
use crate::net::{self, host_port, CertificateWatch, Dialer};
use crate::pop3::{self, Pop3Error, Transaction};
use crate::secret::Secret;
use crate::smtp::{self, SmtpClient};

/// How many of the largest message sizes are reported.
const LARGEST: usize = 5;
/// The login result of an account whose connection failed before the login.
const NOT_ATTEMPTED: &str = "not attempted";
/// What replaces a secret found in a report field.
const REDACTED: &str = "***";

/// What `diagnose` found: every account, then the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// One entry per configured account, in configuration order.
    pub accounts: Vec<AccountDiagnosis>,
    /// The delivery target.
    pub transport: TransportDiagnosis,
}

/// What one POP3 account looks like from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDiagnosis {
    /// The account's name.
    pub account: String,
    /// `host:port` of the POP3 server.
    pub server: String,
    /// How the connection is protected, e.g. `TLS implicit, certificate verified for NAME`.
    pub tls: String,
    /// The certificate the server presented, when a TLS handshake got that far.
    pub certificate: Option<CertificateReport>,
    /// The configured login method (`user`, `apop`, `plain`, ...).
    pub auth_method: String,
    /// CAPA before login (after STLS when used); empty when the server has no CAPA.
    pub capabilities_before: Vec<String>,
    /// CAPA after login; empty when the login failed or the server has no CAPA.
    pub capabilities_after: Vec<String>,
    /// `Ok` when logged in; otherwise the server's reply (or why it was not tried).
    pub auth: Result<(), String>,
    /// Messages in the mailbox (LIST).
    pub messages: Option<u64>,
    /// Their total size in octets (LIST).
    pub total_size: Option<u64>,
    /// The largest sizes, largest first (at most five).
    pub largest: Vec<u64>,
    /// Whether UIDL works (`None` when not reached).
    pub uidl: Option<bool>,
    /// A failure other than a refused login (password source, connection, TLS, LIST).
    pub error: Option<String>,
}

/// What the delivery target looks like from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportDiagnosis {
    /// `host:port` of the SMTP server, or `pickup folder PATH`.
    pub server: String,
    /// `Ok` when the greeting and EHLO (and STARTTLS when configured) worked.
    pub ok: Result<(), String>,
    /// The EHLO extension lines as sent (empty after a HELO fallback).
    pub extensions: Vec<String>,
    /// The server's fixed maximum message size (EHLO `SIZE n`, n > 0).
    pub size: Option<u64>,
    /// True when the session was encrypted with STARTTLS.
    pub tls: bool,
    /// The certificate the server presented, when a STARTTLS handshake got that far.
    pub certificate: Option<CertificateReport>,
}

/// A server certificate as `diagnose` saw it, and whether it was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateReport {
    /// What the certificate says about itself.
    pub info: CertificateInfo,
    /// `Ok` when it verified under the configured trust; otherwise why not, in plain words.
    pub verified: Result<(), String>,
}

impl CertificateReport {
    fn from_watch(watch: &CertificateWatch) -> Option<Self> {
        watch.take().map(|seen| Self {
            info: CertificateInfo::from_der(&seen.der),
            verified: seen.verdict,
        })
    }

    fn scrub(&mut self, secrets: &[Secret]) {
        scrub(&mut self.info.subject, secrets);
        scrub(&mut self.info.issuer, secrets);
        self.info.names.iter_mut().for_each(|s| scrub(s, secrets));
        if let Err(s) = &mut self.verified {
            scrub(s, secrets);
        }
    }
}

/// The certificate block of an account or the transport; `section` is where the pin goes.
fn render_certificate(
    f: &mut fmt::Formatter<'_>,
    c: &CertificateReport,
    section: &str,
) -> fmt::Result {
    writeln!(f, "  certificate:")?;
    write!(f, "{}", c.info)?;
    match &c.verified {
        Ok(()) => writeln!(f, "    verified: yes")?,
        Err(why) => writeln!(f, "    verified: NO: {why}")?,
    }
    writeln!(f, "    to pin it, in {section}: {}", c.info.pin_line())
}

impl AccountDiagnosis {
    /// True when the connection got as far as a login attempt.
    fn login_attempted(&self) -> bool {
        !matches!(&self.auth, Err(e) if e == NOT_ATTEMPTED)
    }

    /// True when nothing went wrong for this account.
    fn ok(&self) -> bool {
        self.error.is_none() && self.auth.is_ok()
    }

    fn scrub(&mut self, secrets: &[Secret]) {
        for s in [
            &mut self.account,
            &mut self.server,
            &mut self.tls,
            &mut self.auth_method,
        ] {
            scrub(s, secrets);
        }
        self.capabilities_before
            .iter_mut()
            .chain(self.capabilities_after.iter_mut())
            .for_each(|s| scrub(s, secrets));
        if let Err(s) = &mut self.auth {
            scrub(s, secrets);
        }
        if let Some(s) = &mut self.error {
            scrub(s, secrets);
        }
        if let Some(c) = &mut self.certificate {
            c.scrub(secrets);
        }
    }
}

impl TransportDiagnosis {
    fn scrub(&mut self, secrets: &[Secret]) {
        scrub(&mut self.server, secrets);
        if let Some(c) = &mut self.certificate {
            c.scrub(secrets);
        }
        if let Err(s) = &mut self.ok {
            scrub(s, secrets);
        }
        self.extensions.iter_mut().for_each(|s| scrub(s, secrets));
    }
}

impl Report {
    /// The report as readable text, one section per account and one for the transport.
    pub fn render(&self) -> String {
        self.to_string()
    }

    /// True when every account connected and logged in and the transport answered.
    pub fn ok(&self) -> bool {
        self.accounts.iter().all(AccountDiagnosis::ok) && self.transport.ok.is_ok()
    }

    /// The process exit code: 0 when all is fine, 3 on any failure (connect, TLS, login,
    /// transport).
    pub fn exit_code(&self) -> u8 {
        if self.ok() {
            Exit::Delivered.code()
        } else {
            Exit::Connect.code()
        }
    }

    /// Short names of what failed, for the last line.
    fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        for a in &self.accounts {
            if a.error.is_some() && !a.login_attempted() {
                v.push(format!("account {}: connection", a.account));
            } else if a.auth.is_err() {
                v.push(format!("account {}: login", a.account));
            } else if a.error.is_some() {
                v.push(format!("account {}: mailbox", a.account));
            }
        }
        if self.transport.ok.is_err() {
            v.push("transport".into());
        }
        v
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.accounts {
            render_account(f, a)?;
        }
        render_transport(f, &self.transport, &self.accounts)?;
        let problems = self.problems();
        if problems.is_empty() {
            writeln!(f, "result: ok")
        } else {
            writeln!(f, "result: FAILED ({})", problems.join(", "))
        }
    }
}

fn render_capabilities(f: &mut fmt::Formatter<'_>, when: &str, caps: &[String]) -> fmt::Result {
    if caps.is_empty() {
        writeln!(f, "  capabilities {when}: none listed (no CAPA)")
    } else {
        writeln!(f, "  capabilities {when}: {}", caps.join(", "))
    }
}

fn render_account(f: &mut fmt::Formatter<'_>, a: &AccountDiagnosis) -> fmt::Result {
    writeln!(f, "account {} ({}, {})", a.account, a.server, a.tls)?;
    if let Some(c) = &a.certificate {
        render_certificate(f, c, &format!("the [[account]] named {:?}", a.account))?;
    }
    if !a.login_attempted() {
        if let Some(e) = &a.error {
            writeln!(f, "  error: {e}")?;
        }
        return writeln!(f, "  login: {NOT_ATTEMPTED}");
    }
    render_capabilities(f, "before login", &a.capabilities_before)?;
    match &a.auth {
        Ok(()) => writeln!(f, "  login: ok ({})", a.auth_method)?,
        Err(reply) => {
            writeln!(f, "  login: REFUSED ({}): {reply}", a.auth_method)?;
            if let Some(e) = &a.error {
                writeln!(f, "  error: {e}")?;
            }
            return Ok(());
        }
    }
    render_capabilities(f, "after login", &a.capabilities_after)?;
    if let (Some(n), Some(total)) = (a.messages, a.total_size) {
        write!(f, "  messages: {n}, {} in all", human_size(total))?;
        if !a.largest.is_empty() {
            let sizes: Vec<String> = a.largest.iter().map(|&s| human_size(s)).collect();
            write!(f, "; largest {}", sizes.join(", "))?;
        }
        writeln!(f)?;
    }
    match a.uidl {
        Some(true) => writeln!(f, "  UIDL: yes")?,
        Some(false) => writeln!(
            f,
            "  UIDL: no (messages are recognised by a digest of their headers)"
        )?,
        None => {}
    }
    if let Some(e) = &a.error {
        writeln!(f, "  error: {e}")?;
    }
    Ok(())
}

/// An EHLO line with SIZE made readable.
fn extension(line: &str) -> String {
    let mut words = line.split_whitespace();
    if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("SIZE")) {
        return line.to_string();
    }
    match words.next().and_then(|v| v.parse::<u64>().ok()) {
        Some(n) if n > 0 => format!("{line} ({})", human_size(n)),
        _ => format!("{line} (no fixed limit)"),
    }
}

fn render_transport(
    f: &mut fmt::Formatter<'_>,
    t: &TransportDiagnosis,
    accounts: &[AccountDiagnosis],
) -> fmt::Result {
    let offered = t
        .extensions
        .iter()
        .any(|l| l.trim().eq_ignore_ascii_case("STARTTLS"));
    let tls = if t.tls {
        "STARTTLS used"
    } else if offered {
        "STARTTLS offered, not used (transport.starttls = false)"
    } else {
        "none (STARTTLS not offered)"
    };
    if t.server.starts_with("pickup folder") {
        writeln!(f, "transport {}", t.server)?;
        return match &t.ok {
            Ok(()) => writeln!(f, "  folder: ok"),
            Err(e) => writeln!(f, "  error: {e}"),
        };
    }
    writeln!(f, "transport {} (SMTP)", t.server)?;
    if let Some(c) = &t.certificate {
        render_certificate(f, c, "[transport]")?;
    }
    if let Err(e) = &t.ok {
        return writeln!(f, "  error: {e}");
    }
    if t.extensions.is_empty() {
        writeln!(f, "  EHLO: no extensions (or HELO only)")?;
    } else {
        let ext: Vec<String> = t
            .extensions
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| extension(l))
            .collect();
        writeln!(f, "  EHLO: {}", ext.join(", "))?;
    }
    writeln!(f, "  TLS: {tls}")?;
    match t.size {
        Some(limit) => {
            writeln!(f, "  message size limit: {}", human_size(limit))?;
            for a in accounts {
                if let Some(&big) = a.largest.first().filter(|&&s| s > limit) {
                    writeln!(
                        f,
                        "  note: account {} has a {} message, over this limit: it would stay on the POP3 server",
                        a.account,
                        human_size(big)
                    )?;
                }
            }
            Ok(())
        }
        None => writeln!(f, "  message size limit: none advertised"),
    }
}

/// Replaces every occurrence of every secret in `s`.
fn scrub(s: &mut String, secrets: &[Secret]) {
    for secret in secrets {
        let value = secret.expose();
        if !value.is_empty() && s.contains(value) {
            *s = s.replace(value, REDACTED);
        }
    }
}

/// The account's TLS mode; once `established`, also what the certificate was checked for.
fn tls_description(a: &Account, server_name: &str, established: bool) -> String {
    let mode = match a.tls {
        TlsMode::None => return "no TLS".into(),
        TlsMode::Implicit => "TLS implicit",
        TlsMode::StartTls => "TLS via STLS",
    };
    if !established {
        format!("{mode}, not established")
    } else if a.tls_accept_invalid_certs {
        format!("{mode}, certificate NOT verified (tls_accept_invalid_certs)")
    } else {
        format!("{mode}, certificate verified for {server_name}")
    }
}

/// Diagnoses every account, then the transport; bounded by the configured timeouts.
pub async fn diagnose(config: &Config, dialer: &dyn Dialer) -> Report {
    let mut secrets = Vec::new();
    let mut accounts = Vec::with_capacity(config.accounts.len());
    for a in &config.accounts {
        accounts.push(diagnose_account(config, a, dialer, &mut secrets).await);
    }
    let mut transport = diagnose_transport(config, dialer).await;
    accounts.iter_mut().for_each(|a| a.scrub(&secrets));
    transport.scrub(&secrets);
    Report {
        accounts,
        transport,
    }
}

async fn diagnose_account(
    config: &Config,
    a: &Account,
    dialer: &dyn Dialer,
    secrets: &mut Vec<Secret>,
) -> AccountDiagnosis {
    let server_name = a.tls_server_name.clone().unwrap_or_else(|| a.host.clone());
    let mut d = AccountDiagnosis {
        account: a.name.clone(),
        server: host_port(&a.host, a.port),
        tls: tls_description(a, &server_name, false),
        certificate: None,
        auth_method: match &a.oauth2 {
            Some(o) => format!("{} (OAuth2 access token from {})", a.auth, o.token_url),
            None => a.auth.to_string(),
        },
        capabilities_before: Vec::new(),
        capabilities_after: Vec::new(),
        auth: Err(NOT_ATTEMPTED.into()),
        messages: None,
        total_size: None,
        largest: Vec::new(),
        uidl: None,
        error: None,
    };
    if let Err(e) = probe_account(config, a, dialer, &server_name, secrets, &mut d).await {
        d.error = Some(e);
    }
    d
}

/// Fills `d` step by step; an `Err` is a failure other than a refused login.
async fn probe_account(
    config: &Config,
    a: &Account,
    dialer: &dyn Dialer,
    server_name: &str,
    secrets: &mut Vec<Secret>,
    d: &mut AccountDiagnosis,
) -> Result<(), String> {
    let secret = match crate::oauth2::Tokens::for_account(config, a, dialer) {
        // The token endpoint first: a refused refresh token is this account's login result.
        Some(tokens) => {
            let access = tokens.access_token().await;
            secrets.extend(tokens.secrets());
            match access {
                Ok(access) => access.token,
                Err(e) if e.is_refusal() => {
                    d.auth = Err(e.to_string());
                    return Ok(());
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        None => a
            .secret
            .resolve(config.timeouts.command)
            .await
            .map_err(|e| format!("password source: {e}"))?,
    };
    secrets.push(secret.clone());
    let mut settings = pop3::Settings::for_account(config, a).map_err(|e| e.to_string())?;
    let mut watch = None;
    if settings.tls_config.is_some() {
        let (cfg, w) = net::watched_client_config(
            a.ca_file.as_deref(),
            a.tls_accept_invalid_certs,
            a.tls_fingerprint,
        )
        .map_err(|e| e.to_string())?;
        settings.tls_config = Some(cfg);
        watch = Some(w);
    }
    let connected = pop3::connect(dialer, &settings).await;
    d.certificate = watch.as_ref().and_then(CertificateReport::from_watch);
    let authorization = connected.map_err(|e| e.to_string())?;
    d.tls = tls_description(a, server_name, authorization.is_tls());
    d.capabilities_before = authorization.capabilities.lines.clone();
    let mut txn = match authorization
        .authenticate(a.auth, &a.username, &secret)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            // Dropping the connection in the AUTHORIZATION state changes nothing.
            d.auth = Err(match e.reply() {
                Some(r) => r.to_string().trim_end().to_string(),
                None => e.to_string(),
            });
            return Ok(());
        }
    };
    d.auth = Ok(());
    d.capabilities_after = txn.capabilities.lines.clone();
    let listing = match txn.list().await {
        Ok(l) => l,
        Err(e) => return Err(close(txn, e).await),
    };
    d.messages = Some(listing.len() as u64);
    d.total_size = Some(
        listing
            .iter()
            .fold(0u64, |sum, &(_, size)| sum.saturating_add(size)),
    );
    let mut sizes: Vec<u64> = listing.iter().map(|&(_, size)| size).collect();
    sizes.sort_unstable_by(|x, y| y.cmp(x));
    sizes.truncate(LARGEST);
    d.largest = sizes;
    match txn.uidl().await {
        Ok(uids) => d.uidl = Some(uids.is_some()),
        Err(e) => return Err(close(txn, e).await),
    }
    // No DELE was sent: the UPDATE state has nothing to apply.
    txn.quit()
        .await
        .map(|_| ())
        .map_err(|e| format!("QUIT: {e}"))
}

/// Ends a session after `e`: QUIT when the server merely refused (the session is fine),
/// otherwise drop it (without QUIT nothing is applied either). Returns the error text.
async fn close(txn: Transaction, e: Pop3Error) -> String {
    if matches!(e, Pop3Error::Refused { .. }) {
        let _ = txn.quit().await;
    }
    e.to_string()
}

async fn diagnose_transport(config: &Config, dialer: &dyn Dialer) -> TransportDiagnosis {
    match &config.transport {
        Transport::Pickup(t) => diagnose_pickup(config, &t.dir).await,
        Transport::Smtp(t) => diagnose_smtp(config, t, dialer).await,
    }
}

/// A pickup folder: present and writable by its permissions (nothing is written).
async fn diagnose_pickup(config: &Config, dir: &Path) -> TransportDiagnosis {
    let ok = match tokio::time::timeout(config.timeouts.command, tokio::fs::metadata(dir)).await {
        Err(_) => Err(format!("{} did not answer in time", dir.display())),
        Ok(Err(e)) => Err(format!("{}: {e}", dir.display())),
        Ok(Ok(m)) if !m.is_dir() => Err(format!("{} is not a folder", dir.display())),
        Ok(Ok(m)) if m.permissions().readonly() => Err(format!("{} is read-only", dir.display())),
        Ok(Ok(_)) => Ok(()),
    };
    TransportDiagnosis {
        server: format!("pickup folder {}", dir.display()),
        ok,
        extensions: Vec::new(),
        size: None,
        tls: false,
        certificate: None,
    }
}

/// The SMTP server: greeting, EHLO, STARTTLS when configured, then QUIT (no MAIL).
async fn diagnose_smtp(
    config: &Config,
    t: &SmtpTransport,
    dialer: &dyn Dialer,
) -> TransportDiagnosis {
    let mut d = TransportDiagnosis {
        server: host_port(&t.host, t.port),
        ok: Ok(()),
        extensions: Vec::new(),
        size: None,
        tls: false,
        certificate: None,
    };
    let mut settings = match smtp::Settings::for_transport(config, t, config.policy().pipelining) {
        Ok(s) => s,
        Err(e) => {
            d.ok = Err(e.to_string());
            return d;
        }
    };
    let mut watch = None;
    if settings.starttls.is_some() {
        match net::watched_client_config(
            t.ca_file.as_deref(),
            t.tls_accept_invalid_certs,
            t.tls_fingerprint,
        ) {
            Ok((cfg, w)) => {
                settings.starttls = Some(cfg);
                watch = Some(w);
            }
            Err(e) => {
                d.ok = Err(e.to_string());
                return d;
            }
        }
    }
    let connected = SmtpClient::connect(dialer, &settings).await;
    d.certificate = watch.as_ref().and_then(CertificateReport::from_watch);
    match connected {
        Ok(client) => {
            d.extensions = client.ext.lines.clone();
            d.size = client.ext.max_size();
            d.tls = client.is_tls();
            client.quit().await;
        }
        Err(e) => d.ok = Err(e.to_string()),
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::TcpDialer;
    use mock_pop3::pki::TestPki;
    use mock_pop3::{Maildrop, Message, MockPop3, MockPop3Handle};
    use mock_smtp::{MockSmtp, MockSmtpHandle};
    use tempfile::TempDir;
    use tokio::net::TcpListener;

    const PASSWORD: &str = "Sw0rdfish-s3cret!";
    const SIZES: [usize; 7] = [500, 3000, 1200, 20_000, 800, 700, 600];

    async fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    /// A message of exactly `size` octets, in lines of at most 72, ending in CRLF.
    fn message(i: usize, size: usize) -> Message {
        let mut m = format!("From: a@example.net\r\nSubject: message {i}\r\n\r\n").into_bytes();
        let body = size - m.len() - 2;
        for k in 0..body {
            m.push(match k % 72 {
                70 if k + 1 < body => b'\r',
                71 => b'\n',
                _ => b'a',
            });
        }
        m.extend_from_slice(b"\r\n");
        Message::new(m)
    }

    fn mailbox() -> Maildrop {
        SIZES
            .iter()
            .enumerate()
            .fold(Maildrop::new("info", PASSWORD), |mb, (i, &s)| {
                mb.with_message(message(i, s))
            })
    }

    async fn pop3(builder: mock_pop3::Builder) -> MockPop3Handle {
        builder.spawn(listener().await)
    }

    async fn smtp(builder: mock_smtp::Builder) -> MockSmtpHandle {
        builder.spawn(listener().await)
    }

    /// A configuration for account `info` on `pop3_port` delivering through `smtp_port`.
    fn config(
        dir: &TempDir,
        pop3_port: u16,
        smtp_port: u16,
        password: &str,
        account: &str,
        transport: &str,
    ) -> Config {
        let text = format!(
            r#"
state_dir = "{state}"
[transport]
host = "127.0.0.1"
port = {smtp_port}
helo = "popbridge.test"
{transport}
[timeouts]
connect = "10s"
command = "10s"
data = "60s"
[[account]]
name = "info"
host = "127.0.0.1"
port = {pop3_port}
auth = "user"
username = "info"
password = "{password}"
deliver_to = "info@contoso.local"
{account}
"#,
            state = dir.path().join("state").display(),
        );
        Config::from_str(&text, &dir.path().join("popbridge.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// A POP3 mock serving [`mailbox`] over `tls`, an SMTP mock from `smtp_builder`, and a
    /// folder for the configuration's state.
    async fn served(
        tls: mock_pop3::ServerTls,
        smtp_builder: mock_smtp::Builder,
    ) -> (MockPop3Handle, MockSmtpHandle, TempDir) {
        let pop = pop3(MockPop3::builder().maildrop(mailbox()).tls(tls)).await;
        let sm = smtp(smtp_builder).await;
        (pop, sm, tempfile::tempdir().unwrap())
    }

    /// [`config`] for the mocks `pop` and `sm`.
    fn config_for(
        dir: &TempDir,
        pop: &MockPop3Handle,
        sm: &MockSmtpHandle,
        password: &str,
        account: &str,
        transport: &str,
    ) -> Config {
        let (pop3_port, smtp_port) = (pop.addr().unwrap().port(), sm.addr().unwrap().port());
        config(dir, pop3_port, smtp_port, password, account, transport)
    }

    const PLAIN: &str = "tls = \"none\"\nallow_plaintext = true";

    fn sizes_desc() -> Vec<u64> {
        let mut v: Vec<u64> = SIZES.iter().map(|&s| s as u64).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.truncate(LARGEST);
        v
    }

    #[test]
    fn the_test_messages_have_their_exact_sizes() {
        for (i, &s) in SIZES.iter().enumerate() {
            assert_eq!(message(i, s).data.len(), s);
        }
    }

    #[test]
    fn sizes_read_as_the_configuration_writes_them() {
        // The sizes themselves: `limits::human_size`, tested there.
        assert_eq!(extension("SIZE 10485760"), "SIZE 10485760 (10 MB)");
        assert_eq!(extension("SIZE"), "SIZE (no fixed limit)");
        assert_eq!(extension("PIPELINING"), "PIPELINING");
        assert_eq!(host_port("::1", 25), "[::1]:25");
    }

    #[tokio::test]
    async fn a_healthy_setup_is_reported_and_left_untouched() {
        let (pop, sm, dir) = served(mock_pop3::ServerTls::None, MockSmtp::builder()).await;
        let cfg = config_for(&dir, &pop, &sm, PASSWORD, PLAIN, "");
        let before = pop.maildrop("info").unwrap().remaining;

        let report = diagnose(&cfg, &TcpDialer).await;
        pop.wait_idle().await;
        sm.wait_idle().await;
        let text = report.render();

        assert_eq!(report.exit_code(), 0, "{text}");
        assert!(report.ok());
        let a = &report.accounts[0];
        assert_eq!(a.auth, Ok(()));
        assert_eq!(a.error, None);
        assert_eq!(a.tls, "no TLS");
        assert!(a.capabilities_before.iter().any(|c| c == "USER"), "{a:?}");
        assert!(a.capabilities_before.iter().any(|c| c.starts_with("SASL ")));
        assert!(!a.capabilities_after.iter().any(|c| c == "USER"), "{a:?}");
        assert!(a.capabilities_after.iter().any(|c| c == "UIDL"));
        assert_eq!(a.messages, Some(SIZES.len() as u64));
        assert_eq!(a.total_size, Some(SIZES.iter().sum::<usize>() as u64));
        assert_eq!(a.largest, sizes_desc());
        assert_eq!(a.uidl, Some(true));
        let t = &report.transport;
        assert_eq!(t.ok, Ok(()));
        assert_eq!(t.size, Some(10 * 1024 * 1024));
        assert!(!t.tls);

        let before_line = format!(
            "  capabilities before login: {}",
            a.capabilities_before.join(", ")
        );
        let after_line = format!(
            "  capabilities after login: {}",
            a.capabilities_after.join(", ")
        );
        assert!(text.contains(&before_line), "{text}");
        assert!(text.contains(&after_line), "{text}");
        assert!(text.contains("  login: ok (user)"), "{text}");
        assert!(
            text.contains(
                "  messages: 7, 26.2 KB in all; largest 19.5 KB, 2.9 KB, 1.2 KB, 800 B, 700 B"
            ),
            "{text}"
        );
        assert!(text.contains("  UIDL: yes"), "{text}");
        assert!(text.contains("SIZE 10485760 (10 MB)"), "{text}");
        assert!(text.contains("  message size limit: 10 MB"), "{text}");
        assert!(text.ends_with("result: ok\n"), "{text}");
        assert!(!text.contains(PASSWORD), "{text}");

        // Nothing changed: no RETR, no DELE, QUIT; no SMTP transaction.
        let mb = pop.maildrop("info").unwrap();
        assert_eq!(mb.remaining, before);
        assert_eq!(mb.retrievals, 0);
        assert!(mb.deleted.is_empty());
        let sessions = pop.sessions();
        assert_eq!(sessions.len(), 1);
        let cmds = &sessions[0].commands;
        assert!(
            !cmds
                .iter()
                .any(|c| c.starts_with("DELE") || c.starts_with("RETR") || c.starts_with("TOP")),
            "{cmds:?}"
        );
        assert_eq!(cmds.last().map(String::as_str), Some("QUIT"), "{cmds:?}");
        assert!(sm.captured().is_empty());
        assert!(sm.sessions().iter().all(|s| s.transactions == 0));
    }

    #[tokio::test]
    async fn a_wrong_password_shows_the_reply_and_never_the_password() {
        let (pop, sm, dir) = served(mock_pop3::ServerTls::None, MockSmtp::builder()).await;
        let wrong = "Wr0ng-passw0rd-42";
        let cfg = config_for(&dir, &pop, &sm, wrong, PLAIN, "");

        let report = diagnose(&cfg, &TcpDialer).await;
        pop.wait_idle().await;
        let text = report.render();

        assert_eq!(report.exit_code(), 3, "{text}");
        let a = &report.accounts[0];
        let reply = a.auth.clone().unwrap_err();
        assert!(reply.starts_with("-ERR"), "{reply}");
        assert!(reply.contains("Authentication failed"), "{reply}");
        assert!(
            text.contains(&format!("  login: REFUSED (user): {reply}")),
            "{text}"
        );
        assert_eq!(a.messages, None);
        assert!(
            text.contains("result: FAILED (account info: login)"),
            "{text}"
        );
        assert!(!text.contains(wrong), "{text}");
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(!format!("{report:?}").contains(wrong));
        let mb = pop.maildrop("info").unwrap();
        assert_eq!((mb.remaining.len(), mb.retrievals), (SIZES.len(), 0));
        // The transport is still checked.
        assert_eq!(report.transport.ok, Ok(()));
    }

    #[tokio::test]
    async fn an_unreachable_transport_fails() {
        let pop = pop3(MockPop3::builder().maildrop(mailbox())).await;
        let gone = listener().await;
        let port = gone.local_addr().unwrap().port();
        drop(gone);
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir, pop.addr().unwrap().port(), port, PASSWORD, PLAIN, "");

        let report = diagnose(&cfg, &TcpDialer).await;
        pop.wait_idle().await;
        let text = report.render();

        assert_eq!(report.exit_code(), 3, "{text}");
        assert!(report.accounts[0].ok(), "{text}");
        let e = report.transport.ok.clone().unwrap_err();
        assert!(e.contains("cannot connect to SMTP server"), "{e}");
        assert!(
            text.contains(&format!("transport 127.0.0.1:{port} (SMTP)\n  error: {e}")),
            "{text}"
        );
        assert!(text.contains("result: FAILED (transport)"), "{text}");
        assert!(!text.contains(PASSWORD), "{text}");
    }

    #[tokio::test]
    async fn an_unreachable_pop3_server_is_a_connection_failure() {
        let gone = listener().await;
        let port = gone.local_addr().unwrap().port();
        drop(gone);
        let sm = smtp(MockSmtp::builder()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir, port, sm.addr().unwrap().port(), PASSWORD, PLAIN, "");

        let report = diagnose(&cfg, &TcpDialer).await;
        let text = report.render();

        assert_eq!(report.exit_code(), 3, "{text}");
        let a = &report.accounts[0];
        assert!(
            a.error.as_deref().unwrap_or("").contains("cannot connect"),
            "{a:?}"
        );
        assert!(text.contains("  login: not attempted"), "{text}");
        assert!(
            text.contains("result: FAILED (account info: connection)"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn tls_on_both_sides_is_reported() {
        let pki = TestPki::localhost().unwrap();
        let (pop, sm, dir) = served(
            mock_pop3::ServerTls::Implicit(pki.server_config().unwrap()),
            MockSmtp::builder().tls(pki.server_config().unwrap()),
        )
        .await;
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let ca = ca.display().to_string();
        let cfg = config_for(
            &dir,
            &pop,
            &sm,
            PASSWORD,
            &format!("tls = \"implicit\"\ntls_server_name = \"localhost\"\nca_file = \"{ca}\""),
            &format!("starttls = true\nca_file = \"{ca}\""),
        );

        let report = diagnose(&cfg, &TcpDialer).await;
        pop.wait_idle().await;
        sm.wait_idle().await;
        let text = report.render();

        assert_eq!(report.exit_code(), 0, "{text}");
        let port = pop.addr().unwrap().port();
        assert!(
            text.contains(&format!(
                "account info (127.0.0.1:{port}, TLS implicit, certificate verified for localhost)"
            )),
            "{text}"
        );
        assert!(report.transport.tls);
        assert!(text.contains("  TLS: STARTTLS used"), "{text}");
        assert!(pop.sessions()[0].tls);
        assert!(sm.sessions()[0].tls);
        assert!(!text.contains(PASSWORD), "{text}");
        // Both certificates are shown, verified, each with the line that would pin it.
        let leaf = rustls_pemfile::certs(&mut pki.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let pin = crate::pin::Fingerprint::of(&leaf);
        for c in [
            &report.accounts[0].certificate,
            &report.transport.certificate,
        ] {
            let c = c.as_ref().expect("a certificate block");
            assert_eq!(c.verified, Ok(()), "{text}");
            assert_eq!(c.info.fingerprint, pin, "{text}");
            assert!(
                c.info.names.contains(&"DNS:localhost".to_string()),
                "{text}"
            );
        }
        assert!(
            text.contains(&format!(
                "to pin it, in the [[account]] named \"info\": tls_fingerprint = \"{pin}\""
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "to pin it, in [transport]: tls_fingerprint = \"{pin}\""
            )),
            "{text}"
        );
        assert_eq!(text.matches("    verified: yes").count(), 2, "{text}");
    }

    #[tokio::test]
    async fn a_tls_failure_is_a_connection_failure() {
        // The certificate is signed by a CA nobody trusts.
        let pki = TestPki::localhost().unwrap();
        let (pop, sm, dir) = served(
            mock_pop3::ServerTls::Implicit(pki.server_config().unwrap()),
            MockSmtp::builder(),
        )
        .await;
        let cfg = config_for(
            &dir,
            &pop,
            &sm,
            PASSWORD,
            "tls = \"implicit\"\ntls_server_name = \"localhost\"",
            "",
        );

        let report = diagnose(&cfg, &TcpDialer).await;
        let text = report.render();

        assert_eq!(report.exit_code(), 3, "{text}");
        let a = &report.accounts[0];
        assert!(a.tls.ends_with("not established"), "{a:?}");
        let e = a.error.as_deref().unwrap_or("");
        let port = pop.addr().unwrap().port();
        assert!(
            e.contains(&format!("TLS handshake with 127.0.0.1:{port} failed")),
            "{e}"
        );
        // The certificate that failed is still shown, with why and how to trust it.
        let c = a.certificate.as_ref().expect("the refused certificate");
        let why = c.verified.as_ref().unwrap_err();
        assert!(
            why.contains("not signed by an authority this machine trusts"),
            "{why}"
        );
        assert!(
            why.contains(&format!("tls_fingerprint = \"{}\"", c.info.fingerprint)),
            "{why}"
        );
        assert!(text.contains("    verified: NO: "), "{text}");
        assert_eq!(a.auth, Err(NOT_ATTEMPTED.to_string()));
    }

    #[tokio::test]
    async fn stls_and_a_transport_limit_below_the_largest_message_are_reported() {
        let pki = TestPki::localhost().unwrap();
        let limits = mock_smtp::Limits {
            max_message_size: Some(16 * 1024),
            ..mock_smtp::Limits::default()
        };
        let (pop, sm, dir) = served(
            mock_pop3::ServerTls::Stls(pki.server_config().unwrap()),
            MockSmtp::builder().limits(limits),
        )
        .await;
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let cfg = config_for(
            &dir,
            &pop,
            &sm,
            PASSWORD,
            &format!(
                "tls = \"starttls\"\ntls_server_name = \"localhost\"\nca_file = \"{}\"",
                ca.display()
            ),
            "",
        );

        let report = diagnose(&cfg, &TcpDialer).await;
        pop.wait_idle().await;
        sm.wait_idle().await;
        let text = report.render();

        assert_eq!(report.exit_code(), 0, "{text}");
        let a = &report.accounts[0];
        assert_eq!(a.tls, "TLS via STLS, certificate verified for localhost");
        assert!(
            !a.capabilities_before.iter().any(|c| c == "STLS"),
            "asked again after the handshake: {a:?}"
        );
        assert!(pop.sessions()[0].tls);
        assert_eq!(report.transport.size, Some(16 * 1024));
        assert!(
            text.contains("  note: account info has a 19.5 KB message, over this limit"),
            "{text}"
        );
        assert!(
            text.contains("  TLS: none (STARTTLS not offered)"),
            "{text}"
        );
    }

    #[test]
    fn secrets_are_scrubbed_from_every_field() {
        let secret = Secret::new(PASSWORD.into());
        let mut a = AccountDiagnosis {
            account: "info".into(),
            server: "pop.example:110".into(),
            tls: "no TLS".into(),
            certificate: Some(CertificateReport {
                info: crate::certinfo::CertificateInfo {
                    subject: format!("CN={PASSWORD}"),
                    issuer: format!("O={PASSWORD}"),
                    self_signed: false,
                    ca: false,
                    names: vec![format!("DNS:{PASSWORD}")],
                    not_before: String::new(),
                    not_after: String::new(),
                    fingerprint: crate::pin::Fingerprint([0; 32]),
                },
                verified: Err(format!("no: {PASSWORD}")),
            }),
            auth_method: "user".into(),
            capabilities_before: vec![format!("IMPLEMENTATION {PASSWORD}")],
            capabilities_after: Vec::new(),
            auth: Err(format!("-ERR bad password {PASSWORD}")),
            messages: None,
            total_size: None,
            largest: Vec::new(),
            uidl: None,
            error: Some(format!("echo {PASSWORD}{PASSWORD}")),
        };
        a.scrub(std::slice::from_ref(&secret));
        let text = format!("{a:?}");
        assert!(!text.contains(PASSWORD), "{text}");
        assert_eq!(a.error.as_deref(), Some("echo ******"));
        assert_eq!(a.auth, Err("-ERR bad password ***".into()));
    }
}
