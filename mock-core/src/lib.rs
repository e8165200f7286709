//! What the POP3 and SMTP mocks share, so that neither depends on the other.
//!
//! Responsible for: the scripted, seedable fault engine ([`fault`]: one syntax for both
//! protocols' hooks), the throw-away test PKI ([`pki`]), the connection with its
//! deadlines, speed limit and TLS upgrade ([`stream`]), the session host ([`host`]: the
//! accept loop, one record per session with its transcript and [`SessionEnd`], waiting
//! for quiet, shutdown and the handle tests inspect, over the task [`tracker`]), the
//! standalone binaries' helpers ([`standalone`]), the WAN link between a client and a
//! server that poplab and the connector's tests put in front of a server ([`proxy`]:
//! delay, bandwidth cap, a cut after N bytes, a silent cut and its restore), and, behind
//! the `test-support` feature,
//! the peer-skip helpers of the test suites that drive real programs (`test_support`) and
//! the protocol-blind half of the mocks' test clients (`test_client`).
//!
//! Must never: know a protocol's commands or replies, share state between server
//! instances, sleep in place of a signal, or be used outside tests, benchmarks and the
//! mocks.

pub mod fault;
pub mod host;
pub mod pki;
pub mod proxy;
pub mod standalone;
pub mod stream;
#[cfg(feature = "test-support")]
pub mod test_client;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod tracker;

pub use fault::{FaultAction, FaultPlan, FaultRule, Hook};
pub use host::{EndGuard, Flow, Handle, Host, Protocol, Record, SessionEnd, Settings, Step};
pub use stream::{Conn, MaybeTls};
