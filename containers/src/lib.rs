//! testcontainers modules for real POP3 and SMTP servers, in images built locally from
//! Debian packages by `containers/build.sh` (no registry).
//!
//! Responsible for: each server's image, ports, readiness (the line its start script
//! prints once the server greets on every port), the inputs copied in before start
//! (users and passwords, a test CA's certificate, the mailbox, limits), the container's
//! bridge address, and reading back what an MTA delivered (its users' Maildirs, through
//! `docker exec`).
//!
//! Must never: pull an image (a missing one is reported as [`Unavailable`]), publish a
//! port on the host (servers are reached on the container's own bridge address only), or
//! be a dependency of the connector (this crate is for tests).
//!
//! ```no_run
//! use popbridge_containers::{Mail, MailServer, Server};
//!
//! # async fn example() -> Result<(), popbridge_containers::ContainerError> {
//! // Skip (or fail, with POPBRIDGE_REQUIRE_DOCKER=1) when Docker or an image is missing.
//! if !popbridge_containers::ready_or_skip(&["dovecot", "postfix"]) {
//!     return Ok(());
//! }
//! let pop = MailServer::new(Server::Dovecot)
//!     .user("info", "s3cret")
//!     .mail("info", vec![Mail::from(&b"From: a@example.net\n\nhello\n"[..])])
//!     .start()
//!     .await?;
//! let mta = MailServer::new(Server::Postfix).user("info", "x").start().await?;
//! let (pop3, smtp) = (pop.addr(110), mta.addr(25));
//! // ... run the connector from pop3 to smtp, then:
//! let delivered = mta.wait_delivered("info", 1).await?;
//! assert_eq!(delivered[0].body(), b"hello\n");
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use testcontainers::core::{CopyToContainer, ExecCommand, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, Image, ImageExt};

pub use mock_pop3::pki::TestPki;

/// How long a server may take from container start to its readiness line.
const STARTUP: Duration = Duration::from_secs(90);
/// How long an MTA may take to deliver what it accepted (its queue runs after the 250).
const DELIVERY: Duration = Duration::from_secs(60);
/// Between two looks at an MTA's mailbox while waiting for its queue.
const DELIVERY_POLL: Duration = Duration::from_millis(200);
/// The environment variable that turns a missing engine or image into a failure.
pub const REQUIRE_ENV: &str = "POPBRIDGE_REQUIRE_DOCKER";
/// The DNS name the servers' test certificates carry (connect with it as the TLS name).
pub const SERVER_NAME: &str = "mail.popbridge.test";

/// The mail servers there is an image for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Server {
    /// Dovecot POP3 (Maildir; USER, APOP, PLAIN, LOGIN, CRAM-MD5; STLS and 995 with TLS).
    Dovecot,
    /// Courier pop3d (Maildir, userdb; USER, PLAIN, LOGIN, CRAM-MD5; STLS and 995).
    Courier,
    /// Cyrus pop3d (its own spool, filled over LMTP; sasldb: USER, APOP, PLAIN, LOGIN,
    /// CRAM-MD5; STLS and 995).
    Cyrus,
    /// GNU Mailutils pop3d (mbox in /var/mail, system users; USER; STLS).
    Mailutils,
    /// popa3d (mbox in /var/mail, system users; USER only, no TLS).
    Popa3d,
    /// Postfix smtpd with its queue, delivering into `~/Maildir/` (settings: SIZE_LIMIT,
    /// HARD_ERROR_LIMIT, SOFT_ERROR_LIMIT, REJECT_UNLISTED_SENDER).
    Postfix,
    /// Exim (exim4-daemon-light) with its queue, delivering into `~/Maildir/` (settings:
    /// SIZE_LIMIT, POISON_SENDERS, ERROR_LIMIT).
    Exim,
    /// OpenSMTPD with its queue, delivering into `~/Maildir/` (setting: SIZE_LIMIT).
    OpenSmtpd,
}

impl Server {
    /// The POP3 servers.
    pub const POP3: &'static [Server] = &[
        Server::Dovecot,
        Server::Courier,
        Server::Cyrus,
        Server::Mailutils,
        Server::Popa3d,
    ];
    /// The MTAs.
    pub const SMTP: &'static [Server] = &[Server::Postfix, Server::Exim, Server::OpenSmtpd];

    /// The image's name (`containers/build.sh` tags it `popbridge/<name>:test`).
    pub fn name(self) -> &'static str {
        match self {
            Server::Dovecot => "dovecot",
            Server::Courier => "courier",
            Server::Cyrus => "cyrus",
            Server::Mailutils => "mailutils",
            Server::Popa3d => "popa3d",
            Server::Postfix => "postfix",
            Server::Exim => "exim",
            Server::OpenSmtpd => "opensmtpd",
        }
    }

    /// The ports its start script waits on (and [`Running::addr`] reaches): POP3 110
    /// (STLS there with TLS) and, with TLS where the server has it, implicit TLS on 995;
    /// SMTP 25.
    pub fn ports(self, tls: bool) -> &'static [u16] {
        match self {
            Server::Dovecot | Server::Courier | Server::Cyrus if tls => &[110, 995],
            Server::Dovecot | Server::Courier | Server::Cyrus => &[110],
            Server::Mailutils | Server::Popa3d => &[110],
            Server::Postfix | Server::Exim | Server::OpenSmtpd => &[25],
        }
    }

    fn image(self) -> String {
        format!("popbridge/{}", self.name())
    }
}

/// Why the container tests cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// No Docker engine answered.
    #[error("no Docker engine reachable (`docker version` failed: {0})")]
    NoEngine(String),
    /// An image has not been built.
    #[error("image {0}:test is missing: run containers/build.sh")]
    NoImage(String),
}

/// What went wrong with a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The engine refused or failed a request (start, exec, inspect).
    #[error("{server}: {source}")]
    Engine {
        /// Which server.
        server: &'static str,
        /// The engine's error.
        #[source]
        source: testcontainers::TestcontainersError,
    },
    /// A command inside the container failed.
    #[error("{server}: `{command}` exited with {code:?}: {stderr}")]
    Exec {
        /// Which server.
        server: &'static str,
        /// The command.
        command: String,
        /// Its exit code.
        code: Option<i64>,
        /// The end of what it wrote on stderr.
        stderr: String,
    },
    /// A mailbox listing did not parse.
    #[error("{server}: the delivered listing is malformed at octet {at}")]
    Listing {
        /// Which server.
        server: &'static str,
        /// Where.
        at: usize,
    },
    /// The MTA did not deliver as many messages in time.
    #[error("{server}: {got} of {want} messages delivered after {waited:?}")]
    NotDelivered {
        /// Which server.
        server: &'static str,
        /// Found in the mailbox.
        got: usize,
        /// Expected.
        want: usize,
        /// How long the test waited.
        waited: Duration,
    },
}

/// Whether an engine answers and every image of `servers` exists locally.
pub fn available(servers: &[Server]) -> Result<(), Unavailable> {
    let names: Vec<&str> = servers.iter().map(|s| s.name()).collect();
    images_available(&names)
}

/// Whether an engine answers and `popbridge/<name>:test` exists for every name (the
/// servers' names, or `poplab`).
pub fn images_available(names: &[&str]) -> Result<(), Unavailable> {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map_err(|e| Unavailable::NoEngine(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Unavailable::NoEngine(
            err.trim().chars().take(300).collect(),
        ));
    }
    for name in names {
        let image = format!("popbridge/{name}");
        let ok = Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}"])
            .arg(format!("{image}:test"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Err(Unavailable::NoImage(image));
        }
    }
    Ok(())
}

/// For a test: true when the engine and the images of `names` are there; otherwise
/// prints why and returns false (the test skips), or, with `POPBRIDGE_REQUIRE_DOCKER=1`,
/// panics (the test fails).
pub fn ready_or_skip(names: &[&str]) -> bool {
    match images_available(names) {
        Ok(()) => true,
        Err(why) if required() => panic!("{why} ({REQUIRE_ENV}=1)"),
        Err(why) => {
            eprintln!("skipping: {why}");
            false
        }
    }
}

/// True when `POPBRIDGE_REQUIRE_DOCKER=1`: a missing engine or image must fail the test.
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// One message to put in a mailbox: its bytes with LF line ends, as a store holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail(pub Vec<u8>);

impl From<&[u8]> for Mail {
    fn from(b: &[u8]) -> Self {
        Mail(b.to_vec())
    }
}

/// The part of a message after its header (after the first empty line); all of it when
/// there is none.
pub fn body_of(message: &[u8]) -> &[u8] {
    match message.windows(2).position(|w| w == b"\n\n") {
        Some(i) => &message[i + 2..],
        None => message,
    }
}

/// A server to start: the image and what is copied into it.
pub struct MailServer {
    server: Server,
    image: String,
    users: Vec<(String, String)>,
    tls: bool,
    copies: Vec<CopyToContainer>,
    settings: Vec<(String, String)>,
    mails: usize,
}

impl MailServer {
    /// A server with no users, no mail, no TLS.
    pub fn new(server: Server) -> Self {
        MailServer {
            server,
            image: server.image(),
            users: Vec::new(),
            tls: false,
            copies: Vec::new(),
            settings: Vec::new(),
            mails: 0,
        }
    }

    /// A mail user (a system user on servers that authenticate through PAM).
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.into(), password.into()));
        self
    }

    /// TLS with `pki`'s leaf certificate (make it for [`SERVER_NAME`]).
    pub fn tls(mut self, pki: &TestPki) -> Self {
        self.tls = true;
        let chain = format!("{}{}", pki.cert_pem, pki.ca_pem);
        self.copy("tls/cert.pem", chain.into_bytes());
        self.copy("tls/key.pem", pki.key_pem.clone().into_bytes());
        self
    }

    /// Messages for `user`'s mailbox, in this order after any given before.
    pub fn mail(mut self, user: &str, mails: Vec<Mail>) -> Self {
        for m in mails {
            self.mails += 1;
            let name = format!("mail/{user}/{:06}", self.mails);
            self.copy(&name, m.0);
        }
        self
    }

    /// A server setting (`NAME=value`; each image's start script says which it reads).
    pub fn setting(mut self, name: &str, value: impl ToString) -> Self {
        self.settings.push((name.into(), value.to_string()));
        self
    }

    fn copy(&mut self, path: &str, data: Vec<u8>) {
        self.copies.push(CopyToContainer::new(
            data,
            format!("/popbridge/in/{path}").as_str(),
        ));
    }

    /// Starts the container and waits for its readiness line.
    pub async fn start(mut self) -> Result<Running, ContainerError> {
        let kind = self.server;
        let server = kind.name();
        let engine = |source| ContainerError::Engine { server, source };
        self.copy("users", pair_lines(&self.users, " "));
        self.copy("settings", pair_lines(&self.settings, "="));
        let ports = self.server.ports(self.tls);
        let container = self
            .with_startup_timeout(STARTUP)
            .with_network("bridge")
            // Nothing published on the host: the bridge address is the way in.
            .with_host_config_modifier(|hc| {
                hc.publish_all_ports = Some(false);
                hc.port_bindings = None;
            })
            .start()
            .await
            .map_err(engine)?;
        let ip = container.get_bridge_ip_address().await.map_err(engine)?;
        Ok(Running {
            server: kind,
            ports,
            ip,
            container,
        })
    }
}

impl Image for MailServer {
    fn name(&self) -> &str {
        &self.image
    }

    fn tag(&self) -> &str {
        "test"
    }

    fn ready_conditions(&self) -> Vec<WaitFor> {
        vec![WaitFor::message_on_stdout("popbridge: ready")]
    }

    fn copy_to_sources(&self) -> impl IntoIterator<Item = &CopyToContainer> {
        &self.copies
    }

    fn cmd(&self) -> impl IntoIterator<Item = impl Into<Cow<'_, str>>> {
        ["/popbridge/start"]
    }
}

/// A started server; the container is removed when this is dropped.
pub struct Running {
    server: Server,
    ports: &'static [u16],
    ip: IpAddr,
    container: ContainerAsync<MailServer>,
}

/// One message found in an MTA's mailbox.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Its file name in the Maildir.
    pub file: String,
    /// The file's bytes (the MTA's trace headers, then the message).
    pub bytes: Vec<u8>,
}

impl Delivered {
    /// The part after the header.
    pub fn body(&self) -> &[u8] {
        body_of(&self.bytes)
    }

    /// Whether its header holds this exact line (`Message-ID: <...>`).
    pub fn has_header_line(&self, line: &str) -> bool {
        let head = &self.bytes[..self.bytes.len() - self.body().len()];
        head.split(|&b| b == b'\n')
            .any(|l| l.strip_suffix(b"\r").unwrap_or(l) == line.as_bytes())
    }
}

impl Running {
    /// Which server this is.
    pub fn server(&self) -> Server {
        self.server
    }

    /// The container's bridge address and `port` (one of [`Server::ports`]).
    pub fn addr(&self, port: u16) -> SocketAddr {
        debug_assert!(self.ports.contains(&port), "{port} is not served");
        SocketAddr::new(self.ip, port)
    }

    /// Runs `command` in the container; its stdout.
    pub async fn exec(&self, command: &[&str]) -> Result<Vec<u8>, ContainerError> {
        let server = self.server.name();
        let engine = |source| ContainerError::Engine { server, source };
        let mut res = self
            .container
            .exec(ExecCommand::new(command.iter().copied()))
            .await
            .map_err(engine)?;
        let out = res.stdout_to_vec().await.map_err(engine)?;
        let err = res.stderr_to_vec().await.map_err(engine)?;
        let code = res.exit_code().await.map_err(engine)?;
        if code != Some(0) {
            return Err(ContainerError::Exec {
                server,
                command: command.join(" "),
                code,
                stderr: tail(&String::from_utf8_lossy(&err), 2000),
            });
        }
        Ok(out)
    }

    /// The messages in `user`'s Maildir now.
    pub async fn delivered(&self, user: &str) -> Result<Vec<Delivered>, ContainerError> {
        let md = format!("/home/{user}/Maildir");
        let out = self.exec(&["/popbridge/delivered", &md]).await?;
        parse_listing(&out).map_err(|at| ContainerError::Listing {
            server: self.server.name(),
            at,
        })
    }

    /// The messages in `user`'s Maildir once there are `n` (the MTA's queue delivers
    /// after it answered), or an error after a minute.
    pub async fn wait_delivered(
        &self,
        user: &str,
        n: usize,
    ) -> Result<Vec<Delivered>, ContainerError> {
        let started = tokio::time::Instant::now();
        loop {
            let got = self.delivered(user).await?;
            if got.len() >= n || started.elapsed() > DELIVERY {
                if got.len() == n {
                    return Ok(got);
                }
                return Err(ContainerError::NotDelivered {
                    server: self.server.name(),
                    got: got.len(),
                    want: n,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(DELIVERY_POLL).await;
        }
    }

    /// The end of the container's output (the server's log), for a failure message.
    pub async fn logs(&self) -> String {
        let out = self.container.stdout_to_vec().await.unwrap_or_default();
        let err = self.container.stderr_to_vec().await.unwrap_or_default();
        let text = format!(
            "---- {} stdout ----\n{}\n---- stderr ----\n{}",
            self.server.name(),
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        );
        tail(&text, 16 * 1024)
    }
}

/// One `key{sep}value` line per pair, for the files the images' start scripts read.
fn pair_lines(pairs: &[(String, String)], sep: &str) -> Vec<u8> {
    let text: String = pairs
        .iter()
        .map(|(k, v)| format!("{k}{sep}{v}\n"))
        .collect();
    text.into_bytes()
}

/// The last `limit` octets of `text` (at a character boundary).
fn tail(text: &str, limit: usize) -> String {
    let mut start = text.len().saturating_sub(limit);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// Parses `/popbridge/delivered`'s output: `<octets> <name>\n` then the octets, repeated.
fn parse_listing(out: &[u8]) -> Result<Vec<Delivered>, usize> {
    let mut files = Vec::new();
    let mut at = 0;
    while at < out.len() {
        let nl = out[at..].iter().position(|&b| b == b'\n').ok_or(at)? + at;
        let line = std::str::from_utf8(&out[at..nl]).map_err(|_| at)?;
        let (len, name) = line.split_once(' ').ok_or(at)?;
        let len: usize = len.parse().map_err(|_| at)?;
        let start = nl + 1;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= out.len())
            .ok_or(at)?;
        files.push(Delivered {
            file: name.to_string(),
            bytes: out[start..end].to_vec(),
        });
        at = end;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_parses_into_its_files_and_a_short_one_is_refused() {
        let out = b"3 a\nxyz0 b\n5 c\n\n\nx\ny";
        let files = parse_listing(out).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(files[2].bytes, b"\n\nx\ny");
        assert_eq!(parse_listing(b"4 a\nxyz").unwrap_err(), 0);
        assert_eq!(parse_listing(b"3 a\nxyzjunk").unwrap_err(), 7);
    }

    #[test]
    fn the_body_is_what_follows_the_first_empty_line() {
        assert_eq!(body_of(b"A: b\nC: d\n\nbody\n\nmore\n"), b"body\n\nmore\n");
        assert_eq!(body_of(b"no header end\n"), b"no header end\n");
    }
}
