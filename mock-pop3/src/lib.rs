//! An in-process POP3 server (RFC 1939, 2449, 2595, 3206, 5034) for tests and benchmarks.
//!
//! Responsible for: faithful POP3 states (deletions only at QUIT, `[IN-USE]` locking),
//! every authentication mechanism the connector speaks, STLS and implicit TLS,
//! switchable capabilities, scripted and seedable faults, and inspection of what
//! each client did; a mock OAuth2 token endpoint ([`oauth`]) whose issued access tokens
//! XOAUTH2 then accepts. It is the source in throughput benchmarks, so replies go out
//! in as few writes as possible and messages are shared, never copied per session.
//!
//! Must never: share state between server instances, sleep in place of a signal,
//! or write a password or token into a transcript.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mock_pop3::{Mailbox, MockPop3};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = MockPop3::builder()
//!     .mailbox(Mailbox::new("bob", "secret").with_demo_messages(3, 1024))
//!     .spawn(listener);
//! println!("POP3 on {}", server.addr().unwrap());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod caps;
pub mod fault;
mod mailbox;
pub mod oauth;
pub mod pki;
mod server;
mod session;
pub mod standalone;
pub mod stream;
pub mod tracker;

pub use caps::{Capabilities, Expire};
pub use fault::{FaultAction, FaultPlan, FaultRule, Hook};
pub use mailbox::{demo_message, AuthMethod, Mailbox, Message};
pub use server::{
    Builder, MailboxReport, MockPop3, MockPop3Handle, SessionEnd, SessionRecord, TlsMode,
};
