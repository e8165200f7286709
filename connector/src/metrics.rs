//! Prometheus metrics of the daemon: per account what its passes delivered, refused,
//! deferred, skipped and quarantined, how long they took, when one last succeeded, what
//! waits on the server and for how long; and the ledger's size. Served as the OpenMetrics
//! text format on `GET /metrics` by a small HTTP responder on a listener the caller binds
//! (`metrics_listen`, loopback unless the configuration explicitly allows otherwise).
//!
//! Responsible for: the metric names and their meaning (documented in the README), and
//! answering scrapes with bounded requests and deadlines. Must never: expose a secret, a
//! message's content or addresses (labels are account names only), block a pass, or let a
//! slow or hostile client hold a connection past its deadline.

use crate::report::unix_now;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::pass::Summary;

/// The labels of a per-account metric.
type Labels = Vec<(String, String)>;

/// Largest request head accepted (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;

/// How long a client has to send its request and read the answer.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Scrapes answered at the same time; more connections wait to be accepted.
const CONCURRENT: usize = 8;

/// Pass duration histogram buckets, in seconds (1 s to about 1 h).
const DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Every metric the daemon keeps.
pub struct Metrics {
    registry: Registry,
    delivered: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    deferred: Family<Labels, Counter>,
    skipped: Family<Labels, Counter>,
    quarantined: Family<Labels, Counter>,
    delivered_bytes: Family<Labels, Counter>,
    passes: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
    last_pass: Family<Labels, Gauge>,
    last_success: Family<Labels, Gauge>,
    waiting: Family<Labels, Gauge>,
    oldest_waiting: Family<Labels, Gauge<f64, AtomicU64>>,
    ledger_bytes: Gauge,
}

/// What the ledger says about an account after a pass (read by the caller).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerView {
    /// When the oldest message the ledger has as failed and still on the server first
    /// failed (unix seconds), if any.
    pub oldest_failed_since: Option<i64>,
    /// The ledger's size on disk in octets (database and write-ahead log).
    pub size: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered and at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let delivered = Family::<Labels, Counter>::default();
        let rejected = Family::<Labels, Counter>::default();
        let deferred = Family::<Labels, Counter>::default();
        let skipped = Family::<Labels, Counter>::default();
        let quarantined = Family::<Labels, Counter>::default();
        let delivered_bytes = Family::<Labels, Counter>::default();
        let passes = Family::<Labels, Counter>::default();
        let duration = Family::<Labels, Histogram>::new_with_constructor(
            (|| Histogram::new(DURATION_BUCKETS)) as fn() -> Histogram,
        );
        let last_pass = Family::<Labels, Gauge>::default();
        let last_success = Family::<Labels, Gauge>::default();
        let waiting = Family::<Labels, Gauge>::default();
        let oldest_waiting = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let ledger_bytes = Gauge::default();
        // Counter names get `_total` in the exposition.
        registry.register(
            "popbridge_messages_delivered",
            "Messages delivered (accepted by the SMTP server and recorded)",
            delivered.clone(),
        );
        registry.register(
            "popbridge_messages_rejected",
            "Messages the SMTP server refused permanently (left on the POP3 server)",
            rejected.clone(),
        );
        registry.register(
            "popbridge_messages_deferred",
            "Messages that failed temporarily (retried on the next pass)",
            deferred.clone(),
        );
        registry.register(
            "popbridge_messages_skipped",
            "Messages over the size limit, not downloaded (left on the POP3 server)",
            skipped.clone(),
        );
        registry.register(
            "popbridge_messages_quarantined",
            "Messages quarantined after repeated permanent refusals",
            quarantined.clone(),
        );
        registry.register(
            "popbridge_delivered_bytes",
            "Octets of the messages delivered",
            delivered_bytes.clone(),
        );
        registry.register(
            "popbridge_passes",
            "Account passes, by exit code meaning (delivered, backlog, stuck, connect, config)",
            passes.clone(),
        );
        registry.register(
            "popbridge_pass_duration_seconds",
            "How long account passes took",
            duration.clone(),
        );
        registry.register(
            "popbridge_last_pass_timestamp_seconds",
            "When the account's last pass ended (unix seconds)",
            last_pass.clone(),
        );
        registry.register(
            "popbridge_last_successful_pass_timestamp_seconds",
            "When the account's last pass that connected, logged in and ran to its end ended \
             (unix seconds)",
            last_success.clone(),
        );
        registry.register(
            "popbridge_messages_waiting",
            "Messages left on the server after the last pass that still need delivery",
            waiting.clone(),
        );
        registry.register(
            "popbridge_oldest_waiting_message_age_seconds",
            "Age, at the last pass, of the oldest message that failed and is still on the \
             server (0 when none)",
            oldest_waiting.clone(),
        );
        registry.register(
            "popbridge_ledger_size_bytes",
            "The ledger's size on disk (database and write-ahead log)",
            ledger_bytes.clone(),
        );
        Metrics {
            registry,
            delivered,
            rejected,
            deferred,
            skipped,
            quarantined,
            delivered_bytes,
            passes,
            duration,
            last_pass,
            last_success,
            waiting,
            oldest_waiting,
            ledger_bytes,
        }
    }

    /// Records one account pass: its summary, how long it took, and what the ledger says.
    pub fn record_pass(&self, s: &Summary, took: Duration, ledger: LedgerView) {
        let l: Labels = vec![("account".into(), s.account.clone())];
        self.delivered
            .get_or_create(&l)
            .inc_by(u64::from(s.delivered));
        self.rejected
            .get_or_create(&l)
            .inc_by(u64::from(s.rejected));
        self.deferred
            .get_or_create(&l)
            .inc_by(u64::from(s.deferred));
        self.skipped.get_or_create(&l).inc_by(u64::from(s.skipped));
        self.quarantined
            .get_or_create(&l)
            .inc_by(u64::from(s.quarantined));
        self.delivered_bytes
            .get_or_create(&l)
            .inc_by(s.delivered_octets);
        let outcome = match crate::exit::Exit::of(s) {
            crate::exit::Exit::Delivered => "delivered",
            crate::exit::Exit::Backlog => "backlog",
            crate::exit::Exit::Stuck => "stuck",
            crate::exit::Exit::Connect => "connect",
            crate::exit::Exit::Config => "config",
            crate::exit::Exit::Unknown => "unknown",
        };
        let mut with_outcome = l.clone();
        with_outcome.push(("outcome".into(), outcome.into()));
        self.passes.get_or_create(&with_outcome).inc();
        self.duration.get_or_create(&l).observe(took.as_secs_f64());
        let now = unix_now();
        self.last_pass.get_or_create(&l).set(now);
        if s.failure.is_none() && s.aborted.is_none() {
            self.last_success.get_or_create(&l).set(now);
        }
        // A failed pass knows nothing new about what waits: keep the last known value.
        if s.failure.is_none() {
            self.waiting.get_or_create(&l).set(i64::from(s.remaining()));
            let age = ledger
                .oldest_failed_since
                .map_or(0, |since| now.saturating_sub(since).max(0));
            self.oldest_waiting.get_or_create(&l).set(age as f64);
        }
        self.ledger_bytes
            .set(i64::try_from(ledger.size).unwrap_or(i64::MAX));
    }

    /// The exposition in the OpenMetrics text format (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            // Writing into a String cannot fail; an empty exposition is still valid.
            return "# EOF\n".into();
        }
        out
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers `GET /metrics` on `listener` until the task is dropped. Each connection gets
/// one request (its head at most [`MAX_REQUEST`] octets) and one answer within
/// [`DEADLINE`]; anything else is answered with an HTTP error and closed.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    loop {
        let (mut stream, _) = listener.accept().await?;
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DEADLINE, answer(&mut stream, &metrics)).await;
            drop(permit);
        });
    }
}

/// Reads one request head and writes the answer.
async fn answer(stream: &mut tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if head.len() > MAX_REQUEST {
            break false;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    };
    let (status, body, content_type) = if !complete {
        (
            "431 Request Header Fields Too Large",
            String::new(),
            "text/plain",
        )
    } else {
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut parts = line.trim_end().split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("GET"), Some("/metrics"), Some(v)) if v.starts_with("HTTP/1.") => {
                ("200 OK", metrics.render(), CONTENT_TYPE)
            }
            (Some("GET"), Some(_), Some(_)) => (
                "404 Not Found",
                "popbridge serves /metrics only\n".into(),
                "text/plain",
            ),
            (Some(_), Some(_), Some(_)) => ("405 Method Not Allowed", String::new(), "text/plain"),
            _ => ("400 Bad Request", String::new(), "text/plain"),
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    // A lingering close: read what the client still sends (bounded, within the
    // deadline), so that closing with unread input does not reset the connection before
    // the client has read the answer.
    let mut drained = 0usize;
    while drained < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_shows_in_the_exposition() {
        let m = Metrics::new();
        let s = Summary {
            account: "info".into(),
            delivered: 3,
            delivered_octets: 2400,
            rejected: 1,
            ..Summary::default()
        };
        m.record_pass(
            &s,
            Duration::from_millis(1500),
            LedgerView {
                oldest_failed_since: Some(unix_now() - 100),
                size: 4096,
            },
        );
        let text = m.render();
        for line in [
            "popbridge_messages_delivered_total{account=\"info\"} 3",
            "popbridge_messages_rejected_total{account=\"info\"} 1",
            "popbridge_delivered_bytes_total{account=\"info\"} 2400",
            "popbridge_messages_waiting{account=\"info\"} 1",
            "popbridge_ledger_size_bytes 4096",
            "popbridge_pass_duration_seconds_count{account=\"info\"} 1",
            "popbridge_passes_total{account=\"info\",outcome=\"stuck\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
