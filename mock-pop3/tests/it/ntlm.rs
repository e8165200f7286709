//! AUTH NTLM on the mock, driven with raw wire lines: the exchange Exchange's POP3 service
//! speaks (`AUTH NTLM`, `+`, NEGOTIATE, `+ CHALLENGE`, AUTHENTICATE, `+OK` or `-ERR`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use mock_pop3::{Maildrop, MockPop3, MockPop3Handle};
use popbridge_proto::ntlm;
use popbridge_proto::pop3::AuthMethod;
use popbridge_proto::pop3::{Pop3Reply, Pop3Response, RespCode};
use tokio::net::TcpStream;

use crate::client::{spawn, Client};

const PASSWORD: &str = "s3cret pass";

fn bob() -> Maildrop {
    Maildrop::new("bob", PASSWORD).with_demo_messages(2, 1500)
}

/// A whole NTLM exchange as `bob` with the right password succeeds.
async fn logs_in(c: &mut Client<TcpStream>) {
    let challenge = start(c).await;
    assert!(c.cmd(&answer(&challenge, "bob", PASSWORD)).await.is_ok());
}

/// Sends `AUTH NTLM` and the NEGOTIATE message; returns the server's CHALLENGE.
async fn start(c: &mut Client<TcpStream>) -> ntlm::Challenge {
    c.wire.send("AUTH NTLM").await;
    assert_eq!(c.response().await, Pop3Response::Continue(String::new()));
    c.wire.send(&B64.encode(ntlm::negotiate())).await;
    let Pop3Response::Continue(challenge) = c.response().await else {
        panic!("no NTLM challenge")
    };
    ntlm::Challenge::parse(&B64.decode(challenge).unwrap()).unwrap()
}

/// The base64 AUTHENTICATE line for `login` and `password`.
fn answer(challenge: &ntlm::Challenge, login: &str, password: &str) -> String {
    let m = ntlm::authenticate(challenge, login, password, [7; 8], 0).unwrap();
    B64.encode(m.as_bytes())
}

async fn ntlm_login(
    server: &MockPop3Handle,
    login: &str,
    password: &str,
) -> (Client<TcpStream>, Pop3Reply) {
    let (mut c, _) = Client::connect(server).await;
    let challenge = start(&mut c).await;
    let line = answer(&challenge, login, password);
    let r = c.cmd(&line).await;
    (c, r)
}

#[tokio::test]
async fn the_right_password_logs_in_whatever_the_domain() {
    let server = spawn(MockPop3::builder().maildrop(bob())).await;
    for login in ["CONTOSO\\bob", "bob"] {
        let (mut c, r) = ntlm_login(&server, login, PASSWORD).await;
        assert!(r.is_ok(), "{login}: {r:?}");
        assert_eq!(
            c.cmd("STAT").await.text,
            "2 3000",
            "{login}: in TRANSACTION"
        );
        assert!(c.cmd("QUIT").await.is_ok());
        server.wait_idle().await;
    }
    let sessions = server.sessions();
    assert!(sessions.iter().all(|s| s.user.as_deref() == Some("bob")));
    // The AUTHENTICATE line never reaches the transcript.
    let t = server.transcript();
    assert!(t.contains("C: AUTH NTLM") && t.contains("C: ***"), "{t}");
}

#[tokio::test]
async fn the_challenge_names_the_mock_domain_has_a_timestamp_and_oem_text_when_asked() {
    let server = spawn(MockPop3::builder().maildrop(bob())).await;
    let (mut c, _) = Client::connect(&server).await;
    let challenge = start(&mut c).await;
    assert_eq!(challenge.target_name, "MOCK");
    assert_ne!(challenge.flags & ntlm::flags::NEGOTIATE_UNICODE, 0);
    assert!(challenge.target_info.timestamp().is_some());
    // A client that asks for OEM text only gets it, and logs in with it.
    let (mut c, _) = Client::connect(&server).await;
    c.begin("AUTH NTLM").await;
    let mut oem = ntlm::negotiate();
    oem[12] &= !(ntlm::flags::NEGOTIATE_UNICODE as u8);
    c.wire.send(&B64.encode(oem)).await;
    let Pop3Response::Continue(challenge) = c.response().await else {
        panic!("no NTLM challenge")
    };
    let challenge = ntlm::Challenge::parse(&B64.decode(challenge).unwrap()).unwrap();
    assert_eq!(challenge.flags & ntlm::flags::NEGOTIATE_UNICODE, 0);
    assert_ne!(challenge.flags & ntlm::flags::NEGOTIATE_OEM, 0);
    assert_eq!(challenge.target_name, "MOCK");
    assert!(c.cmd(&answer(&challenge, "bob", PASSWORD)).await.is_ok());
    // A UPN logs into a mailbox of that exact name.
    let server =
        spawn(MockPop3::builder().maildrop(Maildrop::new("bob@contoso.example", PASSWORD))).await;
    let (_, r) = ntlm_login(&server, "bob@contoso.example", PASSWORD).await;
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_failure_and_the_session_stays_in_authorization() {
    let server = spawn(MockPop3::builder().maildrop(bob())).await;
    let (mut c, r) = ntlm_login(&server, "CONTOSO\\bob", "s3cret pas").await;
    assert!(!r.is_ok());
    assert_eq!(r.code, Some(RespCode::Auth), "{r:?}");
    assert!(!c.cmd("STAT").await.is_ok(), "not logged in");
    // An unknown user fails the same way.
    let (_, r) = ntlm_login(&server, "CONTOSO\\alice", PASSWORD).await;
    assert_eq!(r.code, Some(RespCode::Auth), "{r:?}");
    // So does a mailbox that does not accept NTLM.
    let server = spawn(MockPop3::builder().maildrop(bob().with_methods([AuthMethod::User]))).await;
    let (_, r) = ntlm_login(&server, "bob", PASSWORD).await;
    assert_eq!(r.code, Some(RespCode::Auth), "{r:?}");
    // And the session goes on: USER/PASS still works after a refused NTLM login.
    assert!(c.login("bob", PASSWORD).await.is_ok());
}

#[tokio::test]
async fn malformed_tokens_are_refused_without_an_auth_code() {
    let server = spawn(MockPop3::builder().maildrop(bob())).await;
    let (mut c, _) = Client::connect(&server).await;
    // Not a NEGOTIATE message.
    c.begin("AUTH NTLM").await;
    let r = c.cmd(&B64.encode(b"hello, not NTLM")).await;
    assert!(!r.is_ok());
    assert_eq!(r.code, None, "{r:?}");
    assert!(r.text.contains("Malformed NTLM"), "{r:?}");
    // Not base64.
    c.begin("AUTH NTLM").await;
    let r = c.cmd("!!!").await;
    assert!(!r.is_ok() && r.code.is_none(), "{r:?}");
    // An AUTHENTICATE message whose NT response points past its end.
    let challenge = start(&mut c).await;
    let m = ntlm::authenticate(&challenge, "bob", PASSWORD, [7; 8], 0).unwrap();
    let mut bad = m.as_bytes().to_vec();
    bad[20..22].copy_from_slice(&u16::MAX.to_le_bytes());
    let r = c.cmd(&B64.encode(bad)).await;
    assert!(!r.is_ok());
    assert_eq!(r.code, None, "{r:?}");
    // A NEGOTIATE message where the AUTHENTICATE was due.
    let _ = start(&mut c).await;
    let r = c.cmd(&B64.encode(ntlm::negotiate())).await;
    assert!(!r.is_ok() && r.code.is_none(), "{r:?}");
    // Back in AUTHORIZATION each time: a good NTLM login still works.
    logs_in(&mut c).await;
}

#[tokio::test]
async fn star_cancels_the_ntlm_exchange_at_either_step() {
    let server = spawn(MockPop3::builder().maildrop(bob())).await;
    let (mut c, _) = Client::connect(&server).await;
    c.begin("AUTH NTLM").await;
    c.cancel().await;
    let _ = start(&mut c).await;
    c.cancel().await;
    assert!(!c.cmd("STAT").await.is_ok(), "still in AUTHORIZATION");
    logs_in(&mut c).await;
}

#[tokio::test]
async fn capa_lists_ntlm_and_auth_lists_it_among_the_mechanisms() {
    let server = spawn(MockPop3::builder().maildrop(bob())).await;
    let (mut c, _) = Client::connect(&server).await;
    let capa = c.list("CAPA").await;
    assert!(
        capa.iter()
            .any(|l| l.starts_with("SASL ") && l.split(' ').any(|m| m == "NTLM")),
        "{capa:?}"
    );
    assert!(c.list("AUTH").await.contains(&"NTLM".to_string()));
}
