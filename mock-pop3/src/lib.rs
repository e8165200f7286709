//! An in-process POP3 server (RFC 1939, 2449, 2595, 3206, 5034) for tests and benchmarks.
//!
//! Responsible for: faithful POP3 states (deletions only at QUIT, `[IN-USE]` locking),
//! every authentication mechanism the connector speaks, STLS and implicit TLS,
//! switchable capabilities, scripted and seedable faults, and inspection of what
//! each client did; a mock OAuth2 token endpoint ([`oauth`]) whose issued access tokens
//! XOAUTH2 then accepts. It is the source in throughput benchmarks, so replies go out
//! in as few writes as possible and messages are shared, never copied per session.
//!
//! What both mocks share (the fault engine, the test PKI, the connection with its TLS
//! upgrade and speed limit, the accept loop, session records, shutdown and the handle)
//! lives in mock-core; this crate holds POP3 only and does not depend on mock-smtp.
//!
//! Must never: share state between server instances, sleep in place of a signal,
//! or write a password or token into a transcript.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mock_pop3::{Maildrop, MockPop3};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = MockPop3::builder()
//!     .maildrop(Maildrop::new("bob", "secret").with_demo_messages(3, 1024))
//!     .spawn(listener);
//! println!("POP3 on {}", server.addr().unwrap());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod caps;
mod maildrop;
pub mod oauth;
mod server;
mod session;

pub use caps::{Capabilities, Expire};
pub use maildrop::{demo_message, Maildrop, Message};
/// The fault engine (shared with mock-smtp through mock-core).
pub use mock_core::fault::{self, FaultAction, FaultPlan, FaultRule, Hook};
/// How a session ended (shared with mock-smtp through mock-core).
pub use mock_core::host::SessionEnd;
/// The throw-away test PKI (shared with mock-smtp through mock-core).
pub use mock_core::pki;
pub use server::{
    Builder, MaildropReport, MockPop3, MockPop3Handle, ServerTls, SessionRecord, TlsOffer,
};
