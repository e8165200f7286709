//! The interop matrix: popbridge (in process, the same `pass::Runner` as
//! `popbridge fetch`) fetches a mixed mailbox from real POP3 servers and delivers into real
//! MTAs, each in its own container built by `containers/build.sh`.
//!
//! Per cell: every message arrives in the MTA's mailbox with its body byte for byte
//! (the part after the header; the MTA adds trace headers), the POP3 server holds nothing
//! afterwards, and a second pass finds nothing to do and delivers nothing twice. The
//! login methods and TLS modes are spread over the cells.
//!
//! The error-limit tests: an MTA refuses poison senders (Postfix
//! `smtpd_reject_unlisted_sender`, an Exim MAIL ACL) until its own limit ends the session
//! (Postfix `smtpd_hard_error_limit`, an Exim `drop` after N refusals); popbridge
//! reconnects and delivers every good message in the same pass.
//!
//! Without a Docker engine or the images, each test prints why and passes, unless
//! `POPBRIDGE_REQUIRE_DOCKER=1`, when it fails.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use popbridge::config::Config;
use popbridge::events::EventSink;
use popbridge::ledger::Ledger;
use popbridge::net::TcpDialer;
use popbridge::pass::{Runner, Summary};
use popbridge_containers::{
    body_of, Delivered, Mail, MailServer, Running, Server, TestPki, SERVER_NAME,
};

const USER: &str = "info";
/// Has no character that needs quoting in any server's user file.
const PASSWORD: &str = "Sw0rdfish-s3cret";
/// The 12 MB message: one per cell.
const BIG: usize = 12 * 1024 * 1024;

/// Messages with the header line that names each (`Message-ID: <...>`).
type Mailbox = Vec<(String, Mail)>;

/// How popbridge logs in.
#[derive(Debug, Clone, Copy)]
enum Auth {
    User,
    Apop,
    Plain,
    Login,
    CramMd5,
}

impl Auth {
    fn config(self) -> &'static str {
        match self {
            Auth::User => "user",
            Auth::Apop => "apop",
            Auth::Plain => "plain",
            Auth::Login => "login",
            Auth::CramMd5 => "cram-md5",
        }
    }
}

/// How popbridge reaches the POP3 server.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tls {
    None,
    Stls,
    Implicit,
}

/// The mixed mailbox: ordinary mail, 8-bit, a long line, dot-leading lines, malformed
/// senders, and one 12 MB message. Each has a unique Message-ID under `nonce`.
fn mailbox(nonce: &str) -> Mailbox {
    let mut out = Vec::new();
    let mut add = |n: usize, head: &str, body: Vec<u8>| {
        let id = format!("<matrix-{n}.{nonce}@isp.example>");
        let mut m = format!(
            "{head}To: info@isp.example\nSubject: matrix message {n}\nMessage-ID: {id}\n\
             Date: Mon, 02 Mar 2026 10:00:00 +0000\nMIME-Version: 1.0\n\n"
        )
        .into_bytes();
        m.extend_from_slice(&body);
        out.push((format!("Message-ID: {id}"), Mail(m)));
    };
    let from = |n: usize| {
        format!("Return-Path: <s{n}@example.net>\nFrom: Sender {n} <s{n}@example.net>\n")
    };
    add(1, &from(1), b"An ordinary message.\nTwo lines.\n".to_vec());
    add(
        2,
        &format!(
            "{}Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n",
            from(2)
        ),
        b"Caf\xe9 na\xefve \xa4, not UTF-8: \xff\xfe\x80\x81\nD\xc3\xa9j\xc3\xa0 vu in UTF-8\n"
            .to_vec(),
    );
    let mut long = b"A line longer than RFC 5322's 998 octets: ".to_vec();
    long.resize(1500, b'x');
    long.extend_from_slice(b"\nand a short one\n");
    add(3, &from(3), long);
    add(
        4,
        &from(4),
        b".a line that starts with a dot\n.\n..two dots\n...\nafter the lone dot\n".to_vec(),
    );
    // Malformed senders: an address with no domain, and no sender header at all.
    add(
        5,
        "Return-Path: <broken@>\nFrom: \"Broken\" <@@nowhere>\n",
        b"Malformed sender.\n".to_vec(),
    );
    add(6, "", b"No sender header at all.\n".to_vec());
    let mut big = Vec::with_capacity(BIG + 100);
    let mut i = 0usize;
    while big.len() < BIG {
        let _ = writeln!(
            LineSink(&mut big),
            "{i:08} big message line, filler to 76 octets: abcdefghijklmnopqrstuvwxyz"
        );
        i += 1;
    }
    add(7, &from(7), big);
    out
}

/// `write!` into a byte vector.
struct LineSink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for LineSink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A file only the owner reads (popbridge refuses secrets others can read).
fn write_private(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// One popbridge pass over the account, in process: its summary and its events (as
/// debug text, for a failure message).
async fn pass(config: &Path) -> (Summary, String) {
    let config = Config::load(config).unwrap_or_else(|e| panic!("{e}"));
    let ledger = Ledger::open(&config.state_dir).unwrap();
    let accounts = config.accounts.clone();
    let events = Arc::new(EventSink::memory());
    let mut summaries = Runner::new(
        Arc::new(config),
        Arc::new(TcpDialer),
        events.clone(),
        Arc::new(Mutex::new(ledger)),
    )
    .run(accounts)
    .await;
    assert_eq!(summaries.len(), 1);
    let mut log = String::new();
    for e in events.collected() {
        let _ = writeln!(log, "{e:?}");
    }
    (summaries.remove(0), log)
}

/// popbridge's configuration for `pop` → `mta`.
fn config(
    dir: &Path,
    pop: &Running,
    mta: &Running,
    login: Auth,
    tls: Tls,
    ca: &Path,
    limits: &str,
) -> std::path::PathBuf {
    let secret = dir.join("pop3.pass");
    write_private(&secret, &format!("{PASSWORD}\n"));
    let (mode, port, trust) = match tls {
        Tls::None => ("none", 110, "allow_plaintext = true".to_string()),
        Tls::Stls => ("starttls", 110, String::new()),
        Tls::Implicit => ("implicit", 995, String::new()),
    };
    let pop3 = pop.addr(port);
    let smtp = mta.addr(25);
    let trust = if tls == Tls::None {
        trust
    } else {
        format!(
            "tls_server_name = \"{SERVER_NAME}\"\nca_file = \"{}\"",
            ca.display()
        )
    };
    let text = format!(
        r#"state_dir = "{state}"

[transport]
host = "{smtp_ip}"
port = {smtp_port}
helo = "popbridge.test"

[limits]
fallback_sender = "postmaster@contoso.local"
{limits}

[timeouts]
connect = "10s"
command = "60s"
data = "120s"

[[account]]
name = "matrix"
host = "{pop_ip}"
port = {pop_port}
tls = "{mode}"
{trust}
auth = "{auth}"
username = "{USER}"
password_file = "{secret}"
deliver_to = "{USER}@contoso.local"
"#,
        state = dir.join("state").display(),
        smtp_ip = smtp.ip(),
        smtp_port = smtp.port(),
        pop_ip = pop3.ip(),
        pop_port = pop3.port(),
        auth = login.config(),
        secret = secret.display(),
    );
    let path = dir.join("popbridge.toml");
    write_private(&path, &text);
    path
}

/// How many passes `pop` needs to hand over a fresh mailbox. GNU Mailutils pop3d (3.15)
/// adds an `X-UIDL:` header to each message of an mbox once a session asks UIDL, after
/// LIST counted them without it: in the first session every message but the last
/// arrives 55 octets larger than listed. popbridge leaves such messages on the server
/// (`message.size_mismatch`); the mbox rewritten at QUIT then lists true sizes.
fn passes_needed(pop: Server) -> u32 {
    match pop {
        Server::Mailutils => 2,
        _ => 1,
    }
}

/// Each of `mails` not found exactly once in `delivered` with its body byte for byte,
/// one line each; empty when all are.
fn mismatches(delivered: &[Delivered], mails: &[(String, Mail)]) -> String {
    let mut wrong = String::new();
    for (id, mail) in mails {
        let found: Vec<_> = delivered.iter().filter(|d| d.has_header_line(id)).collect();
        match found.as_slice() {
            [one] if one.body() == body_of(&mail.0) => {}
            [one] => {
                let _ = writeln!(
                    wrong,
                    "{id}: body differs ({} octets delivered, {} sent; delivered file {})",
                    one.body().len(),
                    body_of(&mail.0).len(),
                    one.file
                );
            }
            other => {
                let _ = writeln!(wrong, "{id}: delivered {} times", other.len());
            }
        }
    }
    wrong
}

/// Starts both servers at once.
async fn start(source: MailServer, sink: MailServer) -> (Running, Running) {
    let (source, sink) = tokio::join!(source.start(), sink.start());
    (source.unwrap(), sink.unwrap())
}

/// Fails the test with `what` and both servers' logs.
async fn fail(what: String, source: &Running, sink: &Running) -> ! {
    panic!("{what}\n{}\n{}", source.logs().await, sink.logs().await)
}

/// Waits until `sink` delivered as many messages as `mails` and checks each arrived once,
/// body byte for byte; fails the test otherwise.
async fn check_delivered(mails: &[(String, Mail)], source: &Running, sink: &Running) {
    let delivered = match sink.wait_delivered(USER, mails.len()).await {
        Ok(d) => d,
        Err(e) => fail(e.to_string(), source, sink).await,
    };
    let wrong = mismatches(&delivered, mails);
    if !wrong.is_empty() {
        fail(wrong, source, sink).await;
    }
}

/// One cell of the matrix: `pop` → `mta`, logging in with `login` over `tls`.
async fn cell(pop: Server, mta: Server, login: Auth, tls: Tls) {
    if !popbridge_containers::ready_or_skip(&[pop.name(), mta.name()]) {
        return;
    }
    let started = std::time::Instant::now();
    let nonce = format!("{}.{}", std::process::id(), pop.name());
    let mails = mailbox(&nonce);
    let pki = TestPki::generate("Popbridge matrix CA", &[SERVER_NAME]).unwrap();
    let mut source = MailServer::new(pop)
        .user(USER, PASSWORD)
        .mail(USER, mails.iter().map(|(_, m)| m.clone()).collect());
    if tls != Tls::None {
        source = source.tls(&pki);
    }
    let (source, sink) = start(source, MailServer::new(mta).user(USER, PASSWORD)).await;

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, &pki.ca_pem).unwrap();
    let config = config(dir.path(), &source, &sink, login, tls, &ca, "");

    // Passes until everything is delivered: one, except on a server whose first session
    // changes its messages' sizes (see `passes_needed`); a message whose size did not
    // match is left on the server, never deleted, and taken by the next pass.
    let n = mails.len() as u32;
    let mut delivered = 0;
    for round in 1..=passes_needed(pop) {
        let (p, events) = pass(&config).await;
        let clean = p.failure.is_none()
            && (p.rejected, p.deferred, p.skipped, p.quarantined, p.postponed) == (0, 0, 0, 0, 0)
            && p.listed == n - delivered
            // A retried session's summary counts only some of its deletions; the idle
            // pass below shows that nothing is left.
            && (p.deleted == p.delivered || passes_needed(pop) > 1)
            && p.delivered + p.mismatched == p.listed;
        delivered += p.delivered;
        if !clean || (round == passes_needed(pop) && delivered != n) {
            fail(format!("pass {round}: {p:#?}\n{events}"), &source, &sink).await;
        }
        if delivered == n {
            break;
        }
    }
    check_delivered(&mails, &source, &sink).await;
    let (second, events) = pass(&config).await;
    if (second.listed, second.delivered, second.deleted) != (0, 0, 0) || second.failure.is_some() {
        fail(
            format!("second pass: {second:#?}\n{events}"),
            &source,
            &sink,
        )
        .await;
    }
    let after = sink.delivered(USER).await.unwrap();
    assert_eq!(after.len(), mails.len(), "the second pass delivered again");
    eprintln!(
        "{} -> {} ({login:?}, {tls:?}): {} messages in {:.1} s",
        pop.name(),
        mta.name(),
        mails.len(),
        started.elapsed().as_secs_f64()
    );
}

/// One test per matrix cell, grouped by server pair:
/// `POP3 server, MTA: test_name(login, TLS), ...;`.
macro_rules! cells {
    ($($pop:ident, $mta:ident: $($name:ident($login:ident, $tls:ident)),+;)*) => {$($(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            cell(Server::$pop, Server::$mta, Auth::$login, Tls::$tls).await;
        }
    )+)*};
}

cells! {
    Dovecot, Postfix: dovecot_to_postfix_user_plaintext(User, None),
        dovecot_to_postfix_apop_starttls(Apop, Stls),
        dovecot_to_postfix_cram_md5_implicit_tls(CramMd5, Implicit);
    Mailutils, Postfix: mailutils_to_postfix_user_starttls(User, Stls);
    Courier, Postfix: courier_to_postfix_cram_md5_starttls(CramMd5, Stls),
        courier_to_postfix_login_implicit_tls(Login, Implicit),
        courier_to_postfix_user_plaintext(User, None);
    Popa3d, Postfix: popa3d_to_postfix_user_plaintext(User, None);
    Dovecot, Exim: dovecot_to_exim_login_starttls(Login, Stls);
    Cyrus, Postfix: cyrus_to_postfix_plain_implicit_tls(Plain, Implicit),
        cyrus_to_postfix_apop_starttls(Apop, Stls),
        cyrus_to_postfix_cram_md5_plaintext(CramMd5, None);
    Dovecot, OpenSmtpd: dovecot_to_opensmtpd_user_plaintext(User, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_to_postfix_plain_starttls_and_login_implicit_tls() {
    cell(Server::Dovecot, Server::Postfix, Auth::Plain, Tls::Stls).await;
    cell(Server::Dovecot, Server::Postfix, Auth::Login, Tls::Implicit).await;
}

/// The poison-sender mailbox: four poison messages in a row between good ones (Postfix
/// forgives its error count after a delivered message), each from
/// `ghost-N@contoso.local`, a local address that is no user.
fn poison_mailbox(nonce: &str) -> (Mailbox, Mailbox) {
    let (mut good, mut poison) = (Vec::new(), Vec::new());
    for n in 1..=10 {
        let bad = (3..=6).contains(&n);
        let sender = if bad {
            format!("ghost-{n}@contoso.local")
        } else {
            format!("s{n}@example.net")
        };
        let id = format!("<poison-{n}.{nonce}@isp.example>");
        let m = format!(
            "Return-Path: <{sender}>\nFrom: <{sender}>\nTo: info@isp.example\nSubject: poison \
             test {n}\nMessage-ID: {id}\n\nMessage {n}, {}.\n",
            if bad { "refused" } else { "good" }
        );
        let entry = (format!("Message-ID: {id}"), Mail(m.into_bytes()));
        if bad {
            poison.push(entry);
        } else {
            good.push(entry);
        }
    }
    (good, poison)
}

/// An MTA's log, where its error limit shows.
async fn mta_log(mta: &Running) -> String {
    match mta.server() {
        Server::Exim => {
            let log = mta.exec(&["cat", "/var/log/exim4/mainlog"]).await;
            String::from_utf8_lossy(&log.unwrap_or_default()).into_owned()
        }
        _ => mta.logs().await,
    }
}

/// `mta` refuses the poison senders and ends sessions at its own error limit (its log
/// shows `limit_seen`; `None` for an MTA that has none); popbridge still delivers every
/// good message in one pass, leaves the refused ones on the POP3 server, and a second
/// pass delivers nothing new.
async fn poison_cell(mta: Server, settings: &[(&str, &str)], limit_seen: Option<&str>) {
    if !popbridge_containers::ready_or_skip(&["dovecot", mta.name()]) {
        return;
    }
    let nonce = format!("{}.{}", std::process::id(), mta.name());
    let (good, poison) = poison_mailbox(&nonce);
    let mut order: Vec<_> = good.iter().chain(&poison).cloned().collect();
    order.sort_by_key(|(id, _)| id.clone());
    let source = MailServer::new(Server::Dovecot)
        .user(USER, PASSWORD)
        .mail(USER, order.into_iter().map(|(_, m)| m).collect());
    let mut sink = MailServer::new(mta).user(USER, PASSWORD);
    for (k, v) in settings {
        sink = sink.setting(k, v);
    }
    let (source, sink) = start(source, sink).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    // popbridge's own session replacement stays out of the way: the MTA's limit acts.
    let limits = "smtp_max_protocol_errors = 100\nsmtp_reconnects = 20";
    let config = config(
        dir.path(),
        &source,
        &sink,
        Auth::User,
        Tls::None,
        &ca,
        limits,
    );
    let (first, events) = pass(&config).await;
    let (g, p) = (good.len() as u32, poison.len() as u32);
    if (
        first.delivered,
        first.deleted,
        first.rejected,
        first.deferred,
    ) != (g, g, p, 0)
        || first.failure.is_some()
    {
        fail(format!("first pass: {first:#?}\n{events}"), &source, &sink).await;
    }
    check_delivered(&good, &source, &sink).await;
    if let Some(limit_seen) = limit_seen {
        let log = mta_log(&sink).await;
        assert!(
            log.contains(limit_seen),
            "{} never reached its error limit ({limit_seen:?} not in its log):\n{log}",
            mta.name()
        );
    }
    let (second, events) = pass(&config).await;
    if (second.listed, second.delivered, second.rejected) != (p, 0, p) {
        fail(
            format!("second pass: {second:#?}\n{events}"),
            &source,
            &sink,
        )
        .await;
    }
    assert_eq!(sink.delivered(USER).await.unwrap().len(), good.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_refuses_unlisted_senders_and_ends_sessions_at_its_error_limit() {
    let settings = [
        ("REJECT_UNLISTED_SENDER", "yes"),
        ("SOFT_ERROR_LIMIT", "1"),
        ("HARD_ERROR_LIMIT", "2"),
    ];
    poison_cell(Server::Postfix, &settings, Some("too many errors")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exim_acl_refuses_poison_senders_and_drops_sessions_at_its_limit() {
    let settings = [("POISON_SENDERS", "^ghost-"), ("ERROR_LIMIT", "2")];
    poison_cell(Server::Exim, &settings, Some("too many refused senders")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensmtpd_refuses_poison_senders_and_popbridge_delivers_the_rest() {
    // OpenSMTPD has no per-session error limit to reach: refusals only.
    let settings = [("POISON_SENDERS", "^ghost-")];
    poison_cell(Server::OpenSmtpd, &settings, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_message_size_limit_keeps_the_12_mb_message_on_the_server() {
    if !popbridge_containers::ready_or_skip(&["dovecot", "postfix"]) {
        return;
    }
    let nonce = format!("{}.size", std::process::id());
    let mails = mailbox(&nonce);
    let limit = 10 * 1024 * 1024;
    let (fits, big): (Mailbox, Mailbox) =
        mails.iter().cloned().partition(|(_, m)| m.0.len() < limit);
    assert_eq!(big.len(), 1);
    let source = MailServer::new(Server::Dovecot)
        .user(USER, PASSWORD)
        .mail(USER, mails.iter().map(|(_, m)| m.clone()).collect());
    let sink = MailServer::new(Server::Postfix)
        .user(USER, PASSWORD)
        .setting("SIZE_LIMIT", limit);
    let (source, sink) = start(source, sink).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let config = config(dir.path(), &source, &sink, Auth::User, Tls::None, &ca, "");
    // Postfix announces its limit in EHLO SIZE: the big message is not even downloaded.
    let (first, events) = pass(&config).await;
    let n = fits.len() as u32;
    if (first.listed, first.delivered, first.deleted, first.skipped) != (n + 1, n, n, 1)
        || first.failure.is_some()
    {
        fail(format!("first pass: {first:#?}\n{events}"), &source, &sink).await;
    }
    check_delivered(&fits, &source, &sink).await;
    let (second, events) = pass(&config).await;
    if (second.listed, second.delivered, second.skipped) != (1, 0, 1) {
        fail(
            format!("second pass: {second:#?}\n{events}"),
            &source,
            &sink,
        )
        .await;
    }
}
