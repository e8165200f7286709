//! The server: builder, shared state and the handle tests inspect (the accept loop,
//! session records and shutdown are the core's [`Host`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use mock_core::host::{Host, Protocol, Settings};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::capture::{Delivery, Outcome, Received, SessionStats};
use crate::config::{Extensions, Limits, MailboxSpec, Replies, SpamRule};

/// How much of each message the server keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureMode {
    /// Every transaction with its bytes.
    #[default]
    Full,
    /// Counters only (benchmarks): no transaction records, no bytes kept.
    CountOnly,
}

/// Totals kept in every capture mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Messages answered 2xx at the end of data.
    pub accepted: u64,
    /// Of those, delivered to every recipient.
    pub delivered: u64,
    /// Of those, bounced for at least one recipient after acceptance.
    pub ndr: u64,
    /// Transactions refused in the session.
    pub rejected: u64,
    /// Messages refused by anti-spam rules (kept as badmail).
    pub badmail: u64,
    /// Octets of accepted message data.
    pub bytes: u64,
}

/// Everything immutable about a server instance.
pub(crate) struct Config {
    pub hostname: String,
    pub greeting: String,
    pub ext: Extensions,
    pub limits: Limits,
    pub replies: Replies,
    pub mailboxes: BTreeMap<String, MailboxSpec>,
    pub domains: BTreeSet<String>,
    pub default_domain: Option<String>,
    pub org_limit: Option<u64>,
    pub spam: Vec<SpamRule>,
    pub reject_senders: Vec<String>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub credentials: Option<(String, String)>,
    pub capture: CaptureMode,
    pub spool: Option<PathBuf>,
}

pub(crate) struct State {
    pub transactions: Vec<Received>,
    pub used: BTreeMap<String, u64>,
    pub counts: Counts,
    pub next_txn: u64,
}

/// State shared by the accept loop, the sessions and the handle.
pub struct Shared {
    pub(crate) cfg: Config,
    state: Mutex<State>,
    pub(crate) host: Host<SessionStats>,
    /// The running count of accepted messages (`Counts::accepted`), for waiters.
    accepted: watch::Sender<u64>,
}

impl Protocol for Shared {
    type Record = SessionStats;

    fn host(&self) -> &Host<SessionStats> {
        &self.host
    }

    fn session<S>(
        self: Arc<Self>,
        stream: S,
        id: u64,
        peer: IpAddr,
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        crate::session::run(self, stream, id, peer.to_string())
    }
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a session's counters.
    pub(crate) fn stats(&self, id: u64, f: impl FnOnce(&mut SessionStats)) {
        self.host.with_record(id, f);
    }

    /// Stores a finished transaction and updates the counters.
    pub(crate) fn record(&self, mut t: Received, outcome: Outcome) {
        let mut st = self.state();
        match &outcome {
            Outcome::Accepted => {
                st.counts.accepted += 1;
                st.counts.bytes += t.size;
                if t.deliveries
                    .iter()
                    .all(|d| matches!(d, Delivery::Delivered { .. }))
                {
                    st.counts.delivered += 1;
                } else {
                    st.counts.ndr += 1;
                }
            }
            Outcome::Rejected { .. } => st.counts.rejected += 1,
            Outcome::Badmail { .. } => st.counts.badmail += 1,
            Outcome::Abandoned => {}
        }
        t.outcome = outcome;
        if self.cfg.capture == CaptureMode::Full {
            st.transactions.push(t);
        }
        let accepted = st.counts.accepted;
        drop(st);
        self.notify_accepted(accepted);
    }

    /// Publishes the accepted count to [`MockSmtpHandle::accepted_watch`] receivers (never
    /// backwards when sessions report out of order).
    fn notify_accepted(&self, accepted: u64) {
        self.accepted.send_if_modified(|seen| {
            let newer = accepted > *seen;
            if newer {
                *seen = accepted;
            }
            newer
        });
    }
}

/// Builds a mock Exchange-like SMTP server.
pub struct Builder {
    hostname: String,
    greeting: Option<String>,
    ext: Extensions,
    limits: Limits,
    replies: Replies,
    mailboxes: Vec<MailboxSpec>,
    domains: Vec<String>,
    default_domain: Option<String>,
    org_limit: Option<u64>,
    spam: Vec<SpamRule>,
    reject_senders: Vec<String>,
    tls: Option<Arc<rustls::ServerConfig>>,
    credentials: Option<(String, String)>,
    capture: CaptureMode,
    spool: Option<PathBuf>,
    host: Settings,
}

/// Entry point: `MockSmtp::builder()`.
pub struct MockSmtp;

impl MockSmtp {
    /// An Exchange 2010 hub receive connector with default limits, accepting any recipient
    /// until mailboxes are declared.
    pub fn builder() -> Builder {
        Builder {
            hostname: "exchange.contoso.local".into(),
            greeting: None,
            ext: Extensions::default(),
            limits: Limits::default(),
            replies: Replies::default(),
            mailboxes: Vec::new(),
            domains: Vec::new(),
            default_domain: None,
            org_limit: None,
            spam: Vec::new(),
            reject_senders: Vec::new(),
            tls: None,
            credentials: None,
            capture: CaptureMode::Full,
            spool: None,
            host: Settings::default(),
        }
    }
}

impl Builder {
    /// The server's FQDN (greeting, EHLO, queue ids).
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = name.into();
        self
    }

    /// The 220 greeting text (default: `<fqdn> Microsoft ESMTP MAIL Service ready`).
    pub fn greeting(mut self, text: impl Into<String>) -> Self {
        self.greeting = Some(text.into());
        self
    }

    mock_core::setters! {
        /// EHLO extensions.
        extensions(ext: Extensions);
        /// Receive-connector limits.
        limits(limits: Limits);
        /// Reply texts.
        replies(replies: Replies);
        /// Capture mode.
        capture(capture: CaptureMode);
    }

    mock_core::host_setters!();

    /// A local mailbox; once any is declared, unknown recipients are refused.
    pub fn mailbox(mut self, mailbox: MailboxSpec) -> Self {
        self.mailboxes.push(mailbox);
        self
    }

    /// An accepted domain besides those of the mailboxes (for `550 5.1.1` vs relay denied).
    pub fn accepted_domain(mut self, domain: impl Into<String>) -> Self {
        self.domains.push(domain.into());
        self
    }

    /// Exchange's `DefaultDomain`: appended to a sender without a domain.
    pub fn default_domain(mut self, domain: impl Into<String>) -> Self {
        self.default_domain = Some(domain.into());
        self
    }

    /// The organisation's receive limit, applied after acceptance (an NDR, not a 552).
    pub fn organization_receive_limit(mut self, octets: u64) -> Self {
        self.org_limit = Some(octets);
        self
    }

    /// An anti-spam rule.
    pub fn spam_rule(mut self, rule: SpamRule) -> Self {
        self.spam.push(rule);
        self
    }

    /// Refuses senders containing `pattern` (case-insensitive) with `501 5.1.7` at MAIL FROM,
    /// as Exchange does for addresses it finds invalid where RFC 5321 parsing does not.
    pub fn reject_sender(mut self, pattern: impl Into<String>) -> Self {
        self.reject_senders
            .push(pattern.into().to_ascii_lowercase());
        self
    }

    /// Enables STARTTLS with this configuration.
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Accepts AUTH PLAIN / LOGIN with these credentials (advertised when `extensions.auth`).
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Writes every accepted message to `dir` as `.eml` (badmail under `dir/badmail`).
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool = Some(dir.into());
        self
    }

    fn build(self) -> Arc<Shared> {
        let mut domains: BTreeSet<String> = self
            .domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        let mut mailboxes = BTreeMap::new();
        for m in self.mailboxes {
            if let Some((_, d)) = m.address.rsplit_once('@') {
                domains.insert(d.to_ascii_lowercase());
            }
            mailboxes.insert(m.address.to_ascii_lowercase(), m);
        }
        if let Some(d) = &self.default_domain {
            domains.insert(d.to_ascii_lowercase());
        }
        let greeting = self
            .greeting
            .unwrap_or_else(|| format!("{} Microsoft ESMTP MAIL Service ready", self.hostname));
        Arc::new(Shared {
            cfg: Config {
                hostname: self.hostname,
                greeting,
                ext: self.ext,
                limits: self.limits,
                replies: self.replies,
                mailboxes,
                domains,
                default_domain: self.default_domain,
                org_limit: self.org_limit,
                spam: self.spam,
                reject_senders: self.reject_senders,
                tls: self.tls,
                credentials: self.credentials,
                capture: self.capture,
                spool: self.spool,
            },
            state: Mutex::new(State {
                transactions: Vec::new(),
                used: BTreeMap::new(),
                counts: Counts::default(),
                next_txn: 1,
            }),
            host: Host::new(self.host),
            accepted: watch::channel(0).0,
        })
    }
}

mock_core::handle_type! {
    /// A running mock SMTP server: the core [`mock_core::Handle`] (address, sessions, transcripts,
    /// faults on or off, in-memory connections, waiting, shutdown) and the capture.
    pub struct MockSmtpHandle(Shared) from Builder;
}

impl MockSmtpHandle {
    /// Every transaction so far (empty in count-only mode).
    pub fn captured(&self) -> Vec<Received> {
        self.shared().state().transactions.clone()
    }

    /// Totals, kept in every capture mode.
    pub fn counts(&self) -> Counts {
        self.shared().state().counts
    }

    /// Octets stored so far in a mailbox (for quota tests).
    pub fn mailbox_usage(&self, address: &str) -> u64 {
        self.shared()
            .state()
            .used
            .get(&address.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// A receiver of [`Counts::accepted`], updated as each message is accepted (in every
    /// capture mode, after its transaction is captured).
    pub fn accepted_watch(&self) -> watch::Receiver<u64> {
        self.shared().accepted.subscribe()
    }

    /// Waits until at least `n` messages were accepted in all (callers bound it with a
    /// timeout: it waits for ever if no more come).
    pub async fn wait_for_accepted(&self, n: u64) {
        let mut rx = self.accepted_watch();
        let _ = rx.wait_for(|a| *a >= n).await;
    }
}
