//! The world a scenario runs in: both mocks on loopback, popbridge's configuration, the
//! connector's passes in-process, and everything observed.
//!
//! Responsible for: starting mock-pop3 and mock-smtp on `127.0.0.1:0` as the scenario
//! declares them, writing popbridge's configuration (a temporary state folder, the mocks'
//! addresses, one account per mailbox plus the scenario's extra keys), running the passes
//! one after the other with `pass::Runner` (each with a freshly opened ledger,
//! like a restart, and the crash point of `[run] crash`), bounded by the scenario's
//! timeout, and collecting the mocks' final state, the capture and the events; for a
//! mailbox with `[pop3.mailbox.oauth2]`, a mock OAuth2 token endpoint (HTTPS, the run's
//! test CA) the account's `oauth2` table points at.
//! On the paused clock (`[run] clock`, see [`Scenario::clock`]) the same world runs on a
//! current-thread runtime of its own with `start_paused`, on its own thread: the mocks
//! are in memory (`spawn_in_memory`) and popbridge dials them through a `MemoryDialer`
//! (real sockets would let the paused clock run ahead), and the run is bounded from the
//! outside in real time.
//! With `[network]`, the connector reaches each mock through a shaped link (`proxy`): a
//! loopback TCP proxy in front of the mock's listener, or on the paused clock a pipe task
//! on the mock's in-memory stream; the connector's default timeouts and the settle bound
//! grow by the slowest round trip.
//! Must never: contain connector logic (it only calls popbridge's public API), leave a
//! server running after it returns, or wait without a bound.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use mock_pop3::oauth::{OAuthHandle, OAuthProvider};
use mock_pop3::pki::TestPki;
use mock_pop3::{
    Capabilities, Maildrop, MaildropReport, Message, MockPop3, MockPop3Handle, TlsOffer,
};
use mock_smtp::{MockSmtp, MockSmtpHandle, Received};
use popbridge::config::{Config, ConfigError};
use popbridge::events::{Event, EventSink};
use popbridge::ledger::Ledger;
use popbridge::net::{BoxIo, Dialer, MemoryDialer, TcpDialer};
use popbridge::pass::{Faults, Runner, Summary};
use popbridge_proto::pop3::AuthMethod;
use tokio::net::TcpListener;

use crate::external::{run_command_killed, substitute, Connector, ExternalRun, Values};
use crate::proxy::{self, Shape};
use crate::schema::{Clock, Scenario};

/// The domain of the default `deliver_to` (`<user>@contoso.local`).
pub const LOCAL_DOMAIN: &str = "contoso.local";
/// How long the runner waits for the mocks to see their sessions end, or to shut down.
const SETTLE: Duration = Duration::from_secs(10);
/// The ports written into the connector's configuration on the paused clock (nothing
/// listens there: the `MemoryDialer` routes `127.0.0.1` and these ports to the mocks).
pub const MEMORY_POP3_PORT: u16 = 110;
/// See [`MEMORY_POP3_PORT`].
pub const MEMORY_SMTP_PORT: u16 = 25;
/// The first mock OAuth2 token endpoint's port on the paused clock (one more per mailbox
/// with a provider, in declaration order).
pub const MEMORY_OAUTH2_PORT: u16 = 8443;

/// How the mocks are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Net {
    /// Loopback TCP on `127.0.0.1:0`.
    Tcp,
    /// In-memory streams through a `MemoryDialer` (the paused clock).
    Memory,
}

/// Where the connector's configuration points.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The POP3 mock's port.
    pub pop3_port: u16,
    /// The SMTP mock's port.
    pub smtp_port: u16,
    /// The connector's state folder.
    pub state_dir: PathBuf,
    /// The test CA (PEM) when the POP3 side speaks TLS.
    pub ca_file: Option<PathBuf>,
    /// The (never written) configuration file's path, for messages.
    pub config_path: PathBuf,
    /// The mock OAuth2 token endpoints' ports, by mailbox user.
    pub oauth2_ports: BTreeMap<String, u16>,
}

impl Endpoints {
    /// Placeholder addresses, to validate a scenario's connector keys before running.
    pub fn placeholder() -> Self {
        Self {
            pop3_port: 110,
            smtp_port: 25,
            state_dir: PathBuf::from("/nonexistent/poplab/state"),
            ca_file: Some(PathBuf::from("/nonexistent/poplab/ca.pem")),
            config_path: PathBuf::from("/nonexistent/poplab/popbridge.toml"),
            oauth2_ports: BTreeMap::new(),
        }
    }
}

/// The connector account name for a mailbox user (`[A-Za-z0-9._-]`, others become `_`).
pub fn account_name(user: &str) -> String {
    let n: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if n.is_empty() {
        "account".into()
    } else {
        n
    }
}

/// The connector's command timeout when a scenario sets none.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// popbridge's configuration text for a scenario at these endpoints.
pub fn connector_text(s: &Scenario, ep: &Endpoints) -> String {
    use toml::Value;
    let mut top = s.connector.top.clone();
    top.insert(
        "state_dir".into(),
        Value::String(ep.state_dir.display().to_string()),
    );
    let mut transport = top
        .remove("transport")
        .and_then(|t| t.as_table().cloned())
        .unwrap_or_default();
    transport.insert("host".into(), Value::String("127.0.0.1".into()));
    transport.insert("port".into(), Value::Integer(ep.smtp_port.into()));
    top.insert("transport".into(), Value::Table(transport));
    let mut timeouts = top
        .remove("timeouts")
        .and_then(|t| t.as_table().cloned())
        .unwrap_or_default();
    for (k, secs) in [
        ("connect", 10),
        ("command", DEFAULT_COMMAND_TIMEOUT.as_secs()),
        ("data", 120),
    ] {
        let d = Duration::from_secs(secs) + round_trip(s);
        let text = if d.subsec_millis() == 0 {
            format!("{}s", d.as_secs())
        } else {
            format!("{}ms", d.as_millis())
        };
        timeouts.entry(k).or_insert_with(|| Value::String(text));
    }
    top.insert("timeouts".into(), Value::Table(timeouts));
    let tls = match s.file.pop3.tls {
        TlsOffer::None => "none",
        TlsOffer::Stls => "starttls",
        TlsOffer::Implicit => "implicit",
    };
    let mut accounts = Vec::new();
    for mb in &s.mailboxes {
        let mut a = toml::Table::new();
        let local = mb.user.split('@').next().unwrap_or(&mb.user);
        let auth = if mb.auth.contains(&AuthMethod::User) {
            AuthMethod::User
        } else {
            mb.auth.first().copied().unwrap_or(AuthMethod::User)
        };
        let entries: [(&str, Value); 9] = [
            ("name", Value::String(account_name(&mb.user))),
            ("host", Value::String("127.0.0.1".into())),
            ("port", Value::Integer(ep.pop3_port.into())),
            ("tls", Value::String(tls.into())),
            ("allow_plaintext", Value::Boolean(true)),
            ("auth", Value::String(auth.as_str().into())),
            ("username", Value::String(mb.user.clone())),
            ("password", Value::String(mb.password.clone())),
            (
                "deliver_to",
                Value::String(format!("{local}@{LOCAL_DOMAIN}")),
            ),
        ];
        for (k, v) in entries {
            a.insert(k.into(), v);
        }
        if s.file.pop3.tls != TlsOffer::None || s.oauth2.contains_key(&mb.user) {
            if let Some(ca) = &ep.ca_file {
                a.insert("ca_file".into(), Value::String(ca.display().to_string()));
            }
        }
        if let Some(plan) = s.oauth2.get(&mb.user) {
            // XOAUTH2 with an access token from the mailbox's mock token endpoint.
            a.remove("password");
            a.insert("auth".into(), Value::String("xoauth2".into()));
            let p = &plan.provider;
            let port = ep.oauth2_ports.get(&mb.user).copied().unwrap_or(443);
            let mut o = toml::Table::new();
            o.insert(
                "token_url".into(),
                Value::String(format!("https://127.0.0.1:{port}{}", p.path)),
            );
            o.insert("client_id".into(), Value::String(p.client_id.clone()));
            if let Some(secret) = &p.client_secret {
                o.insert("client_secret".into(), Value::String(secret.clone()));
            }
            let refresh = p.refresh_tokens.first().cloned().unwrap_or_default();
            o.insert("refresh_token".into(), Value::String(refresh));
            if let Some(scope) = &plan.scope {
                o.insert("scope".into(), Value::String(scope.clone()));
            }
            a.insert("oauth2".into(), Value::Table(o));
        }
        if let Some((_, extra)) = s.connector.accounts.get(&mb.user) {
            for (k, v) in extra {
                a.insert(k.clone(), v.clone());
            }
        }
        accounts.push(Value::Table(a));
    }
    top.insert("account".into(), Value::Array(accounts));
    toml::to_string(&top).unwrap_or_default()
}

/// popbridge's validated configuration for a scenario at these endpoints.
pub fn connector_config(s: &Scenario, ep: &Endpoints) -> Result<Config, ConfigError> {
    Config::from_str(&connector_text(s, ep), &ep.config_path)
}

/// One event with the pass it happened in.
#[derive(Debug, Clone)]
pub struct PassEvent {
    /// The pass, from 1.
    pub pass: u32,
    /// The event.
    pub event: Event,
}

/// Replaces run-specific text (temporary paths, ports) with stable placeholders.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    pairs: Vec<(String, String)>,
}

impl Redactor {
    /// Adds a replacement (longer needles are applied first).
    pub fn add(&mut self, needle: impl Into<String>, with: impl Into<String>) {
        let needle = needle.into();
        if !needle.is_empty() {
            self.pairs.push((needle, with.into()));
            self.pairs.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
        }
    }

    /// `text` with every needle replaced.
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (n, w) in &self.pairs {
            out = out.replace(n.as_str(), w);
        }
        out
    }
}

/// Everything a run observed.
#[derive(Debug, Default)]
pub struct Observed {
    /// The POP3 mailboxes' final state.
    pub mailboxes: Vec<MaildropReport>,
    /// Every SMTP transaction.
    pub captured: Vec<Received>,
    /// The connector's events, with their pass.
    pub events: Vec<PassEvent>,
    /// Each pass's summaries.
    pub summaries: Vec<(u32, Vec<Summary>)>,
    /// (account, uid) of quarantined messages whose durable copy exists.
    pub quarantine_copies: BTreeSet<(String, String)>,
    /// Account name → mailbox user.
    pub accounts: Vec<(String, String)>,
    /// Run-specific text to hide in reports.
    pub redactor: Redactor,
    /// Set when the run could not start or did not finish in time.
    pub error: Option<String>,
    /// How long it took (real time).
    pub elapsed: Duration,
    /// The clock it ran on (real for an external connector, whatever the scenario says).
    pub clock: Clock,
    /// On the paused clock: how much virtual time the run took.
    pub virtual_elapsed: Option<Duration>,
    /// The connector, as reports name it.
    pub connector: String,
    /// True when it was an external command (no events, no crash points).
    pub external: bool,
    /// Each run of the external command, by pass and mailbox.
    pub external_runs: Vec<ExternalRun>,
    /// With `[run] settle`: whether a clean pass changed nothing before the bound.
    pub settled: Option<bool>,
    /// Why the scenario was not run at all (it needs what this connector cannot do).
    pub skipped: Option<String>,
}

impl Observed {
    /// An empty observation of scenario `s` but for its account names.
    pub fn of_accounts(s: &Scenario) -> Self {
        Self {
            accounts: s
                .mailboxes
                .iter()
                .map(|m| (account_name(&m.user), m.user.clone()))
                .collect(),
            ..Self::default()
        }
    }
}

/// Where runs make their temporary folders (state, scratch): the system's temporary
/// folder unless [`set_scratch_root`] said otherwise.
static SCRATCH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes every later run keep its temporary folders under `root` (chaos runs use a
/// memory-backed folder); the first call wins.
pub fn set_scratch_root(root: PathBuf) {
    let _ = SCRATCH.set(root);
}

async fn listener() -> std::io::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0").await
}

/// Runs a scenario: mocks up, passes, state collected, mocks down.
pub async fn run(s: &Scenario) -> Observed {
    run_with(s, &Connector::Popbridge).await
}

/// Runs a scenario against `connector`: mocks up, passes, state collected, mocks down.
/// A paused-clock scenario with popbridge in-process runs on a paused runtime of its own
/// (see the module's documentation); with an external connector it falls back to the real
/// clock (external programs need real sockets), which the report says.
pub async fn run_with(s: &Scenario, connector: &Connector) -> Observed {
    run_external_with_kills(s, connector, &[]).await
}

/// [`run_with`]; an external connector's process group is also SIGKILLed `ms`
/// milliseconds into its run of pass `pass`, for each `(pass, ms)` of `kills` (crashes at
/// random moments; popbridge in-process takes its crashes from `[run] crash`).
pub async fn run_external_with_kills(
    s: &Scenario,
    connector: &Connector,
    kills: &[(u32, u64)],
) -> Observed {
    if connector.is_external() && !s.oauth2.is_empty() {
        let mut obs = observed_for(s, connector);
        obs.skipped = Some(
            "the scenario needs OAuth2 (a [pop3.mailbox.oauth2] provider: XOAUTH2 with access \
             tokens from a token endpoint), and an external connector's template gets only \
             {user} and {password}"
                .into(),
        );
        return obs;
    }
    if s.clock == Clock::Paused && !connector.is_external() {
        return run_paused(s).await;
    }
    let started = Instant::now();
    let mut obs = observed_for(s, connector);
    // Created when the passes start (an async block runs on its first poll).
    let timeout = s.timeout;
    let bound = async move { tokio::time::sleep(timeout).await };
    if let Err(e) = run_inner(s, connector, Net::Tcp, bound, &mut obs, kills).await {
        obs.error = Some(obs.redactor.apply(&e));
    }
    obs.elapsed = started.elapsed();
    obs
}

fn observed_for(s: &Scenario, connector: &Connector) -> Observed {
    Observed {
        connector: connector.name(),
        external: connector.is_external(),
        ..Observed::of_accounts(s)
    }
}

/// The paused clock: the world on a current-thread runtime with `start_paused(true)` on a
/// thread of its own, waited for in real time (a paused runtime cannot time itself out:
/// its clock jumps ahead whenever it is idle). Past `[run] timeout` the run is told to
/// stop, and reports what the servers saw so far like a real-clock timeout; a runtime
/// that does not answer within [`SETTLE`] after that is abandoned (its thread is left
/// to finish on its own) and the run is reported as timed out.
async fn run_paused(s: &Scenario) -> Observed {
    let started = Instant::now();
    let connector = Connector::Popbridge;
    let mut fallback = observed_for(s, &connector);
    fallback.clock = Clock::Paused;
    let (tx, rx) = mpsc::channel::<Observed>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let scenario = s.clone();
    let spawned = std::thread::Builder::new()
        .name("poplab-paused-clock".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build();
            let mut obs = observed_for(&scenario, &connector);
            obs.clock = Clock::Paused;
            match runtime {
                Ok(rt) => rt.block_on(async {
                    let t0 = tokio::time::Instant::now();
                    let bound = async {
                        // A dropped sender (the waiting side gone) is no reason to stop.
                        if stop_rx.await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    };
                    if let Err(e) =
                        run_inner(&scenario, &connector, Net::Memory, bound, &mut obs, &[]).await
                    {
                        obs.error = Some(obs.redactor.apply(&e));
                    }
                    obs.virtual_elapsed = Some(t0.elapsed());
                }),
                Err(e) => obs.error = Some(format!("cannot start a paused-clock runtime: {e}")),
            }
            let _ = tx.send(obs);
        });
    if let Err(e) = spawned {
        fallback.error = Some(format!("cannot start the paused-clock thread: {e}"));
        fallback.elapsed = started.elapsed();
        return fallback;
    }
    // Wait in real time, without blocking the caller's runtime.
    let timeout = s.timeout;
    let waited = tokio::task::spawn_blocking(move || match rx.recv_timeout(timeout) {
        Ok(obs) => Ok(obs),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = stop_tx.send(());
            rx.recv_timeout(SETTLE).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => format!(
                    "timed out after {timeout:?} (the paused-clock run did not stop within {} s \
                     after being told to; abandoned)",
                    SETTLE.as_secs()
                ),
                mpsc::RecvTimeoutError::Disconnected => "the paused-clock run panicked".into(),
            })
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("the paused-clock run panicked".into()),
    })
    .await;
    let mut obs = match waited {
        Ok(Ok(obs)) => obs,
        Ok(Err(e)) => {
            fallback.error = Some(e);
            fallback
        }
        Err(e) => {
            fallback.error = Some(format!("waiting for the paused-clock run: {e}"));
            fallback
        }
    };
    obs.elapsed = started.elapsed();
    obs
}

async fn run_inner(
    s: &Scenario,
    connector: &Connector,
    net: Net,
    bound: impl Future<Output = ()>,
    obs: &mut Observed,
    kills: &[(u32, u64)],
) -> Result<(), String> {
    let dir = match SCRATCH.get() {
        Some(root) => tempfile::Builder::new().prefix("poplab-").tempdir_in(root),
        None => tempfile::Builder::new().prefix("poplab-").tempdir(),
    }
    .map_err(|e| format!("cannot create a temporary folder: {e}"))?;
    obs.redactor.add(dir.path().display().to_string(), "[TMP]");
    if let Ok(real) = dir.path().canonicalize() {
        obs.redactor.add(real.display().to_string(), "[TMP]");
    }

    let side = start_pop3_on(s, dir.path(), net).await?;
    let (pop3, ca_file, oauth2) = (side.pop3, side.ca_file, side.oauth2);
    let (pop3, smtp) = (Arc::new(pop3), Arc::new(start_smtp_on(s, net).await?));
    let oauth2: Vec<(String, Arc<OAuthHandle>)> = oauth2
        .into_iter()
        .map(|(user, h)| (user, Arc::new(h)))
        .collect();
    let mut oauth2_ports = BTreeMap::new();
    // With [network], the connector reaches each mock through a shaped link: a loopback
    // TCP proxy in front of its listener, or (paused clock) a pipe task on its stream.
    let mut proxies = Vec::new();
    let (pop3_port, smtp_port, dialer): (u16, u16, Arc<dyn Dialer>) = match net {
        Net::Tcp => {
            for (user, h) in &oauth2 {
                oauth2_ports.insert(user.clone(), h.addr().map_or(0, |a| a.port()));
            }
            let mut port_of = async |addr: Option<SocketAddr>, shape: Option<Shape>| {
                let Some(addr) = addr else {
                    return Ok(0);
                };
                let Some(shape) = shape else {
                    return Ok(addr.port());
                };
                let bound = listener().await.map_err(|e| format!("bind: {e}"))?;
                let proxy = proxy::spawn_tcp(bound, addr, shape)
                    .map_err(|e| format!("latency proxy: {e}"))?;
                let port = proxy.addr().port();
                proxies.push(proxy);
                Ok::<u16, String>(port)
            };
            let network = s.network;
            (
                port_of(pop3.addr(), network.map(|n| n.pop3)).await?,
                port_of(smtp.addr(), network.map(|n| n.smtp)).await?,
                Arc::new(TcpDialer),
            )
        }
        Net::Memory => {
            let dialer = MemoryDialer::new();
            for (i, (user, h)) in oauth2.iter().enumerate() {
                let port = MEMORY_OAUTH2_PORT + i as u16;
                let h = h.clone();
                dialer.route(
                    "127.0.0.1",
                    port,
                    Arc::new(move || Box::new(h.connect_duplex()) as BoxIo),
                );
                oauth2_ports.insert(user.clone(), port);
            }
            let (p, m, network) = (pop3.clone(), smtp.clone(), s.network);
            type Duplex = Arc<dyn Fn() -> tokio::io::DuplexStream + Send + Sync>;
            let servers: [(u16, Option<Shape>, Duplex); 2] = [
                (
                    MEMORY_POP3_PORT,
                    network.map(|n| n.pop3),
                    Arc::new(move || p.connect_duplex()),
                ),
                (
                    MEMORY_SMTP_PORT,
                    network.map(|n| n.smtp),
                    Arc::new(move || m.connect_duplex()),
                ),
            ];
            for (port, shape, connect) in servers {
                dialer.route(
                    "127.0.0.1",
                    port,
                    Arc::new(move || shaped(connect(), shape)),
                );
            }
            (MEMORY_POP3_PORT, MEMORY_SMTP_PORT, Arc::new(dialer))
        }
    };
    obs.redactor
        .add(format!("127.0.0.1:{pop3_port}"), "127.0.0.1:[POP3-PORT]");
    obs.redactor
        .add(format!("127.0.0.1:{smtp_port}"), "127.0.0.1:[SMTP-PORT]");

    let ep = Endpoints {
        pop3_port,
        smtp_port,
        state_dir: dir.path().join("state"),
        ca_file,
        config_path: dir.path().join("popbridge.toml"),
        oauth2_ports,
    };
    for port in ep.oauth2_ports.values() {
        obs.redactor
            .add(format!("127.0.0.1:{port}"), "127.0.0.1:[OAUTH2-PORT]");
    }
    let outcome = match connector {
        Connector::Popbridge => match connector_config(s, &ep) {
            Ok(config) => {
                let events: Arc<Mutex<Vec<PassEvent>>> = Arc::default();
                let run = passes(
                    s,
                    &config,
                    dialer.clone(),
                    &events,
                    &pop3,
                    &smtp,
                    &mut obs.summaries,
                    &mut obs.settled,
                );
                let passes = tokio::select! {
                    biased;
                    r = run => Some(r),
                    () = bound => None,
                };
                obs.events = std::mem::take(&mut *events.lock().unwrap_or_else(|p| p.into_inner()));
                match passes {
                    Some(r) => r,
                    None => Err(format!(
                        "timed out after {:?} (pass {} of {})",
                        s.timeout,
                        obs.summaries.len() + 1,
                        s.file.run.passes
                    )),
                }
            }
            Err(e) => Err(format!("connector configuration: {e}")),
        },
        Connector::External { template } => {
            let runs = &mut obs.external_runs;
            let settled = &mut obs.settled;
            let r = external_passes(
                s,
                template,
                &ep,
                dir.path(),
                &pop3,
                &smtp,
                runs,
                settled,
                kills,
            )
            .await;
            for run in runs.iter_mut() {
                run.stdout = obs.redactor.apply(&run.stdout);
                run.stderr = obs.redactor.apply(&run.stderr);
            }
            r
        }
    };

    drop(dialer);
    for proxy in proxies {
        let _ = tokio::time::timeout(SETTLE, proxy.shutdown()).await;
    }
    // The tokens this process holds for the run's accounts go with its folder.
    popbridge::oauth2::forget(&ep.state_dir);
    for (_, h) in oauth2 {
        if let Ok(h) = Arc::try_unwrap(h) {
            let _ = tokio::time::timeout(SETTLE, h.shutdown()).await;
        }
    }
    // What is left, whatever happened.
    obs.mailboxes = pop3.maildrops();
    obs.captured = smtp.captured();
    for pe in &obs.events {
        if let Event::Quarantined {
            account, uid, path, ..
        } = &pe.event
        {
            if Path::new(path).is_file() {
                obs.quarantine_copies.insert((account.clone(), uid.clone()));
            }
        }
    }
    // The dialer's routes (the only other holders of the handles) are gone by now.
    if let Ok(pop3) = Arc::try_unwrap(pop3) {
        let _ = tokio::time::timeout(SETTLE, pop3.shutdown()).await;
    }
    if let Ok(smtp) = Arc::try_unwrap(smtp) {
        let _ = tokio::time::timeout(SETTLE, smtp.shutdown()).await;
    }
    drop(dir);
    outcome
}

/// A mock's in-memory stream as the connector sees it: through the link's shape, if any.
fn shaped(io: tokio::io::DuplexStream, shape: Option<Shape>) -> BoxIo {
    match shape {
        Some(shape) => Box::new(proxy::shaped_duplex(io, shape)),
        None => Box::new(io),
    }
}

/// A scenario's mocks, running on loopback.
pub struct Mocks {
    /// The POP3 mock.
    pub pop3: MockPop3Handle,
    /// The SMTP mock.
    pub smtp: MockSmtpHandle,
    /// The test CA (PEM, written into the run's folder) when the POP3 side speaks TLS.
    pub ca_file: Option<PathBuf>,
}

/// Starts the scenario's POP3 and SMTP mocks on `127.0.0.1:0`; `dir` receives the test
/// CA when the POP3 side speaks TLS.
pub async fn start_mocks(s: &Scenario, dir: &Path) -> Result<Mocks, String> {
    let (pop3, ca_file) = start_pop3(s, dir).await?;
    let smtp = start_smtp(s).await?;
    Ok(Mocks {
        pop3,
        smtp,
        ca_file,
    })
}

/// Starts the scenario's POP3 mock alone on `127.0.0.1:0`, with the test CA's path when it
/// speaks TLS (written into `dir`).
pub async fn start_pop3(
    s: &Scenario,
    dir: &Path,
) -> Result<(MockPop3Handle, Option<PathBuf>), String> {
    if !s.oauth2.is_empty() {
        return Err(
            "the scenario has a [pop3.mailbox.oauth2] provider: standalone mocks do not start \
             OAuth2 token endpoints (poplab run does)"
                .into(),
        );
    }
    let side = start_pop3_on(s, dir, Net::Tcp).await?;
    Ok((side.pop3, side.ca_file))
}

/// The POP3 side of a run: the mock, the test CA, and the mock OAuth2 token endpoints.
struct Pop3Side {
    pop3: MockPop3Handle,
    ca_file: Option<PathBuf>,
    oauth2: Vec<(String, OAuthHandle)>,
}

async fn start_pop3_on(s: &Scenario, dir: &Path, net: Net) -> Result<Pop3Side, String> {
    // POP3.
    let p = &s.file.pop3;
    let mut before = Capabilities::full();
    let mut after = Capabilities::full_after_login();
    for c in [&mut before, &mut after] {
        c.uidl = p.uidl;
        c.top = p.top;
        c.pipelining = p.pipelining;
        c.resp_codes = p.resp_codes;
    }
    after.login_delay = (p.login_delay > 0).then_some(p.login_delay);
    // Offer what the mailboxes accept.
    let accepted: BTreeSet<AuthMethod> = s.mailboxes.iter().flat_map(|m| m.auth.clone()).collect();
    before.user = accepted.contains(&AuthMethod::User);
    before.sasl = AuthMethod::ALL
        .into_iter()
        .filter(|m| m.sasl_name().is_some() && accepted.contains(m))
        .collect();
    let mut pop3 = MockPop3::builder()
        .capabilities(before)
        .capabilities_after_login(after)
        .apop_timestamp(p.apop_timestamp)
        .dot_stuffing(p.dot_stuffing)
        .seed(p.seed);
    let mut ca_file = None;
    let mut tls_config = None;
    if p.tls != TlsOffer::None || !s.oauth2.is_empty() {
        let pki = TestPki::localhost().map_err(|e| format!("test PKI: {e}"))?;
        let cfg = pki.server_config().map_err(|e| format!("test PKI: {e}"))?;
        let path = dir.join("ca.pem");
        std::fs::write(&path, &pki.ca_pem).map_err(|e| format!("cannot write the CA: {e}"))?;
        ca_file = Some(path);
        tls_config = Some(cfg);
    }
    if let Some(cfg) = tls_config.clone().filter(|_| p.tls != TlsOffer::None) {
        pop3 = pop3.tls(p.tls.with_config(cfg));
    }
    let mut oauth2 = Vec::new();
    for mb in &s.mailboxes {
        let mut m =
            Maildrop::new(mb.user.clone(), mb.password.clone()).with_methods(mb.auth.clone());
        if let (Some(plan), Some(cfg)) = (s.oauth2.get(&mb.user), &tls_config) {
            let provider = OAuthProvider::new(plan.provider.clone());
            let endpoint = match net {
                Net::Tcp => provider.spawn(
                    listener().await.map_err(|e| format!("bind: {e}"))?,
                    cfg.clone(),
                ),
                Net::Memory => provider.spawn_in_memory(cfg.clone()),
            };
            m = m.with_oauth(provider);
            oauth2.push((mb.user.clone(), endpoint));
        }
        for msg in s.messages.iter().filter(|m| m.user == mb.user) {
            let mut message = Message::new(msg.data.clone()).with_uid(msg.uid.clone());
            if let Some(n) = msg.list_size {
                message = message.with_reported_size(n);
            }
            m = m.with_message(message);
        }
        pop3 = pop3.maildrop(m);
    }
    for f in &s.pop3_faults {
        pop3 = pop3.fault(f.clone());
    }

    let pop3 = match net {
        Net::Tcp => pop3.spawn(listener().await.map_err(|e| format!("bind: {e}"))?),
        Net::Memory => pop3.spawn_in_memory(),
    };
    Ok(Pop3Side {
        pop3,
        ca_file,
        oauth2,
    })
}

/// Starts the scenario's SMTP mock alone on `127.0.0.1:0`.
pub async fn start_smtp(s: &Scenario) -> Result<MockSmtpHandle, String> {
    start_smtp_on(s, Net::Tcp).await
}

async fn start_smtp_on(s: &Scenario, net: Net) -> Result<MockSmtpHandle, String> {
    // SMTP.
    let sp = &s.smtp;
    let mut smtp = MockSmtp::builder()
        .limits(sp.limits.clone())
        .extensions(sp.extensions.clone())
        .seed(sp.seed);
    if let Some(d) = &sp.default_domain {
        smtp = smtp.default_domain(d.clone());
    }
    if let Some(n) = sp.organization_receive_limit {
        smtp = smtp.organization_receive_limit(n);
    }
    for r in &sp.reject_senders {
        smtp = smtp.reject_sender(r.clone());
    }
    for m in &sp.mailboxes {
        smtp = smtp.mailbox(m.clone());
    }
    if sp.refuse_all {
        smtp = smtp.mailbox(mock_smtp::MailboxSpec::new("nobody@poplab.invalid"));
    }
    for r in &sp.spam_rules {
        smtp = smtp.spam_rule(r.clone());
    }
    for f in &sp.faults {
        smtp = smtp.fault(f.clone());
    }

    Ok(match net {
        Net::Tcp => smtp.spawn(listener().await.map_err(|e| format!("bind: {e}"))?),
        Net::Memory => smtp.spawn_in_memory(),
    })
}

/// What both servers hold, to tell whether a pass changed anything: messages left,
/// deleted and ever retrieved on the POP3 side (a first retrieval is progress even when
/// nothing else changed: the connector learnt something), transactions seen on the SMTP
/// side.
fn footprint(pop3: &MockPop3Handle, smtp: &MockSmtpHandle) -> (usize, usize, usize, usize) {
    let mbs = pop3.maildrops();
    (
        mbs.iter().map(|m| m.remaining.len()).sum(),
        mbs.iter().map(|m| m.deleted.len()).sum(),
        mbs.iter().map(|m| m.retrieved.len()).sum(),
        smtp.captured().len(),
    )
}

#[allow(clippy::too_many_arguments)]
async fn passes(
    s: &Scenario,
    config: &Config,
    dialer: Arc<dyn Dialer>,
    events: &Arc<Mutex<Vec<PassEvent>>>,
    pop3: &mock_pop3::MockPop3Handle,
    smtp: &mock_smtp::MockSmtpHandle,
    summaries: &mut Vec<(u32, Vec<Summary>)>,
    settled: &mut Option<bool>,
) -> Result<(), String> {
    let config = Arc::new(config.clone());
    let settle_bound = settle_bound(s);
    let planned = s.file.run.passes;
    let settle = s.file.run.settle;
    for pass in 1..=planned + settle {
        if pass == planned + 1 {
            // The faults stop; the connector gets clean passes until nothing changes.
            pop3.set_faults_armed(false);
            smtp.set_faults_armed(false);
            *settled = Some(false);
        }
        let before = footprint(pop3, smtp);
        let sink = {
            let events = events.clone();
            EventSink::none().with_observer(move |e| {
                events
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(PassEvent {
                        pass,
                        event: e.clone(),
                    });
            })
        };
        // A fresh ledger handle each pass: every pass is a connector (re)start.
        let ledger =
            Ledger::open(&config.state_dir).map_err(|e| format!("pass {pass}: ledger: {e}"))?;
        let faults = Faults {
            crash: s.crashes.get(&pass).copied(),
            sabotage: s.sabotage,
        };
        let out = Runner::new(
            config.clone(),
            dialer.clone(),
            Arc::new(sink),
            Arc::new(Mutex::new(ledger)),
        )
        .faults(faults)
        .run(config.accounts.clone())
        .await;
        summaries.push((pass, out));
        if faults.crash.is_some() {
            // A killed process keeps no access token in memory.
            popbridge::oauth2::forget(&config.state_dir);
        }
        // The mocks apply a session's end (QUIT's deletions, a dropped connection) when
        // they see it: wait for that before the next pass or the inspection.
        mocks_idle(pop3, smtp, settle_bound, pass, "the pass").await?;
        if pass > planned && footprint(pop3, smtp) == before {
            *settled = Some(true);
            break;
        }
    }
    Ok(())
}

/// Waits up to `bound` for both mocks to see every session end; past it, an error saying
/// a session of pass `pass` was still open that long after `what`.
async fn mocks_idle(
    pop3: &MockPop3Handle,
    smtp: &MockSmtpHandle,
    bound: Duration,
    pass: u32,
    what: &str,
) -> Result<(), String> {
    let settle = async {
        pop3.wait_idle().await;
        smtp.wait_idle().await;
    };
    match tokio::time::timeout(bound, settle).await {
        Ok(()) => Ok(()),
        Err(_) => Err(format!(
            "pass {pass}: a mock session was still open {} s after {what}",
            bound.as_secs()
        )),
    }
}

/// How long the mocks get to see their sessions end after a pass: [`SETTLE`] plus what
/// the delay faults could add up to, since a mock stalling on a session the connector gave up on only
/// notices when its delay is over (on the paused clock that costs no real time; on the
/// real clock only when a session is actually stalled).
fn settle_bound(s: &Scenario) -> Duration {
    SETTLE + s.delays_in_all() + round_trip(s)
}

/// The slowest `[network]` round trip (zero without `[network]`): what the link adds to
/// every reply, so it is added to the connector's default timeouts and the settle bound.
pub fn round_trip(s: &Scenario) -> Duration {
    s.network
        .map_or(Duration::ZERO, |n| 2 * n.pop3.latency.max(n.smtp.latency))
}

/// The envelope recipient a connector delivers a mailbox's mail to: the `deliver_to` of
/// its `[[connector.account]]`, else `<local part of user>@contoso.local`.
pub fn recipient_for(s: &Scenario, user: &str) -> String {
    s.connector
        .accounts
        .get(user)
        .and_then(|(_, extra)| extra.get("deliver_to"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let local = user.split('@').next().unwrap_or(user);
            format!("{local}@{LOCAL_DOMAIN}")
        })
}

/// The connector's command timeout as the scenario sets it (`[connector.timeouts]
/// command`), else the world's default; the `{timeout}` placeholder.
pub fn command_timeout(s: &Scenario) -> Duration {
    s.connector
        .top
        .get("timeouts")
        .and_then(|t| t.get("command"))
        .and_then(|v| match v {
            toml::Value::String(text) => popbridge::config::parse_duration(text).ok(),
            toml::Value::Integer(n) => u64::try_from(*n).ok().map(Duration::from_secs),
            _ => None,
        })
        .unwrap_or(DEFAULT_COMMAND_TIMEOUT + round_trip(s))
}

/// The external connector's passes: the command once per pass and mailbox, each bounded
/// by the scenario's timeout (and SIGKILLed as `kills` says), the mocks settled after each
/// pass; then, with `[run] settle`, clean passes as for popbridge.
#[allow(clippy::too_many_arguments)]
async fn external_passes(
    s: &Scenario,
    template: &str,
    ep: &Endpoints,
    dir: &Path,
    pop3: &MockPop3Handle,
    smtp: &MockSmtpHandle,
    runs: &mut Vec<ExternalRun>,
    settled: &mut Option<bool>,
    kills: &[(u32, u64)],
) -> Result<(), String> {
    let planned = s.file.run.passes;
    for pass in 1..=planned + s.file.run.settle {
        if pass == planned + 1 {
            pop3.set_faults_armed(false);
            smtp.set_faults_armed(false);
            *settled = Some(false);
        }
        let before = footprint(pop3, smtp);
        for mb in &s.mailboxes {
            // One scratch folder per scenario (per mailbox when there are several), kept
            // across passes: the connector's own memory (fetchmail's id file) survives.
            let mut scratch = dir.join("scratch");
            if s.mailboxes.len() > 1 {
                scratch = scratch.join(account_name(&mb.user));
            }
            std::fs::create_dir_all(&scratch)
                .map_err(|e| format!("cannot create the scratch folder: {e}"))?;
            let values = Values {
                pop3_host: "127.0.0.1".into(),
                pop3_port: ep.pop3_port,
                smtp_host: "127.0.0.1".into(),
                smtp_port: ep.smtp_port,
                user: mb.user.clone(),
                password: mb.password.clone(),
                rcpt: recipient_for(s, &mb.user),
                scratch,
                pass,
                timeout: command_timeout(s).as_secs(),
            };
            let kill = kills
                .iter()
                .find(|(p, _)| *p == pass)
                .map(|(_, ms)| Duration::from_millis(*ms));
            let run = run_command_killed(
                &substitute(template, &values),
                s.timeout,
                kill,
                pass,
                &mb.user,
            )
            .await;
            let timed_out = run.timed_out;
            runs.push(run);
            if timed_out {
                return Err(format!(
                    "pass {pass} of {}, mailbox {}: the connector command was killed after {:?} (timeout)",
                    planned, mb.user, s.timeout
                ));
            }
        }
        let bound = settle_bound(s);
        mocks_idle(pop3, smtp, bound, pass, "the connector command ended").await?;
        if pass > planned && footprint(pop3, smtp) == before {
            *settled = Some(true);
            break;
        }
    }
    Ok(())
}
