//! Secrets never reach a log line, an event, a summary or a mock transcript.
//!
//! A binary of its own: it captures `tracing` output with a thread-local subscriber, and
//! tracing's global level and interest caches are shared with every thread of a test
//! process, so tests running beside it (without a subscriber) can silence its debug lines.
#![allow(missing_docs)]

#[path = "it/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::io::Write;
use std::sync::{Arc, Mutex};

use harness::*;
use mock_pop3::{Maildrop, MockPop3};
use mock_smtp::MockSmtp;
use popbridge_proto::pop3::AuthMethod;

/// A writer collecting every log line.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_in_any_log_line_event_or_transcript() {
    use base64::Engine;
    let token = "ya29.TOKEN-".to_string() + &"Z".repeat(300);
    let logs = Captured::default();
    let w = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || w.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut all_events = String::new();
    let mut transcripts = String::new();
    for (method, cfg_auth, secret) in [
        (AuthMethod::User, "user", PASSWORD.to_string()),
        (AuthMethod::Plain, "plain", PASSWORD.to_string()),
        (AuthMethod::Login, "login", PASSWORD.to_string()),
        (AuthMethod::Xoauth2, "xoauth2", token.clone()),
        (AuthMethod::Ntlm, "ntlm", PASSWORD.to_string()),
    ] {
        let mb = Maildrop::new("info", PASSWORD)
            .with_token(token.clone())
            .with_methods([method])
            .with_demo_messages(2, 500);
        let pop = pop3(MockPop3::builder().maildrop(mb)).await;
        let smtp = smtp(MockSmtp::builder()).await;
        let s = setup(&pop, &smtp, "", "");
        let mut cfg = s.config.clone();
        cfg.accounts[0].auth = match cfg_auth {
            "user" => AuthMethod::User,
            "plain" => AuthMethod::Plain,
            "login" => AuthMethod::Login,
            "ntlm" => AuthMethod::Ntlm,
            _ => AuthMethod::Xoauth2,
        };
        cfg.accounts[0].secret =
            popbridge::secret::SecretSource::Value(popbridge::secret::Secret::new(secret));
        let s = Setup {
            config: cfg,
            dir: s.dir,
        };
        let (sum, events) = s.pass(&pop, &smtp).await;
        assert_eq!(sum.delivered, 2, "{cfg_auth}: {sum:?}");
        all_events.push_str(&serde_json::to_string(&events).unwrap());
        all_events.push_str(&format!("{sum:?}{:?}", s.config));
        transcripts.push_str(&pop.transcript());
        transcripts.push_str(&smtp.transcript());
    }
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("POP3 C: PASS ***"),
        "the transcript is in the logs: {logs}"
    );
    assert!(
        logs.contains("POP3 C: (NTLM negotiate)"),
        "the NTLM exchange is in the logs: {logs}"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let forms = [
        // Every NTLM AUTHENTICATE message in base64 (NTLMSSP\0, type 3) starts so.
        "TlRMTVNTUAADAAAA".to_string(),
        PASSWORD.to_string(),
        b64.encode(PASSWORD),
        b64.encode(format!("\0info\0{PASSWORD}")),
        token.clone(),
        token[..24].to_string(),
        b64.encode(format!("user=info\x01auth=Bearer {token}\x01\x01")),
    ];
    for f in &forms {
        assert!(!logs.contains(f.as_str()), "secret in logs");
        assert!(
            !all_events.contains(f.as_str()),
            "secret in events or summaries"
        );
        assert!(
            !transcripts.contains(f.as_str()),
            "secret in mock transcripts"
        );
    }
}
