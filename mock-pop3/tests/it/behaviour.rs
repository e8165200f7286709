//! The mock's POP3 behaviour, one test per promise, each failing when the promise breaks.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use mock_pop3::pki::TestPki;
use mock_pop3::{
    Capabilities, Expire, FaultAction, FaultRule, Hook, Maildrop, Message, MockPop3, ServerTls,
    SessionEnd,
};
use popbridge_proto::pop3::AuthMethod;
use popbridge_proto::pop3::{Pop3Response, RespCode};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::client::{spawn, Client, STEP};

fn bob(n: usize) -> Maildrop {
    Maildrop::new("bob", "s3cret pass").with_demo_messages(n, 1500)
}

/// A server holding `bob(1)` with capabilities `caps`.
async fn bob_with(caps: Capabilities) -> mock_pop3::MockPop3Handle {
    spawn(MockPop3::builder().maildrop(bob(1)).capabilities(caps)).await
}

/// A localhost PKI and a builder holding `bob(n)` over TLS `mode` with its server config.
fn bob_over_tls(
    n: usize,
    mode: fn(Arc<rustls::ServerConfig>) -> ServerTls,
) -> (TestPki, mock_pop3::Builder) {
    let pki = TestPki::localhost().unwrap();
    let builder = MockPop3::builder()
        .maildrop(bob(n))
        .tls(mode(pki.server_config().unwrap()));
    (pki, builder)
}

async fn logged_in(server: &mock_pop3::MockPop3Handle) -> Client<TcpStream> {
    let (mut c, g) = Client::connect(server).await;
    assert!(g.is_ok());
    let r = c.login("bob", "s3cret pass").await;
    assert!(r.is_ok(), "{r:?}");
    c
}

fn uids(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("bob-{i:06}")).collect()
}

#[tokio::test]
async fn dele_marks_rset_unmarks_and_only_quit_deletes() {
    let server = spawn(MockPop3::builder().maildrop(bob(3))).await;
    let mut c = logged_in(&server).await;
    assert!(c.cmd("DELE 1").await.is_ok());
    assert_eq!(c.cmd("DELE 1").await.text, "Message 1 already deleted");
    assert!(
        !c.cmd("RETR 1").await.is_ok(),
        "a marked message cannot be retrieved"
    );
    assert_eq!(c.cmd("STAT").await.text.split(' ').next(), Some("2"));
    assert!(c.cmd("RSET").await.is_ok());
    assert_eq!(c.cmd("STAT").await.text.split(' ').next(), Some("3"));
    assert!(c.cmd("DELE 2").await.is_ok());
    // Not yet deleted while the session runs.
    assert_eq!(server.maildrop("bob").unwrap().remaining, uids(3));
    assert!(c.cmd("QUIT").await.is_ok());
    assert!(c.wire.closed().await);
    server.wait_idle().await;
    let mb = server.maildrop("bob").unwrap();
    assert_eq!(mb.remaining, vec!["bob-000001", "bob-000003"]);
    assert_eq!(mb.deleted, vec!["bob-000002"]);
    assert_eq!(server.sessions()[0].end, Some(SessionEnd::QuitUpdate));
}

#[tokio::test]
async fn a_dropped_connection_deletes_nothing_and_releases_the_lock() {
    let server = spawn(MockPop3::builder().maildrop(bob(3))).await;
    let mut c = logged_in(&server).await;
    for i in 1..=3 {
        let (r, _) = c.multi(&format!("RETR {i}")).await;
        assert!(r.is_ok());
        assert!(c.cmd(&format!("DELE {i}")).await.is_ok());
    }
    drop(c);
    server.wait_idle().await;
    let mb = server.maildrop("bob").unwrap();
    assert_eq!(mb.remaining, uids(3));
    assert!(mb.deleted.is_empty());
    assert_eq!(mb.retrieved, uids(3));
    assert_eq!(server.sessions()[0].end, Some(SessionEnd::ClientClosed));
    // The lock went with the connection: a new session logs in.
    let mut c = logged_in(&server).await;
    assert!(c.cmd("QUIT").await.is_ok());
}

#[tokio::test]
async fn a_second_session_gets_in_use() {
    let server = spawn(MockPop3::builder().maildrop(bob(1))).await;
    let mut first = logged_in(&server).await;
    let (mut second, _) = Client::connect(&server).await;
    let r = second.login("bob", "s3cret pass").await;
    assert!(!r.is_ok());
    assert_eq!(r.code, Some(RespCode::InUse));
    // Without RESP-CODES the refusal carries no code.
    assert!(first.cmd("QUIT").await.is_ok());
    let server2 = bob_with(Capabilities {
        resp_codes: false,
        ..Capabilities::full()
    })
    .await;
    let _held = logged_in(&server2).await;
    let (mut c, _) = Client::connect(&server2).await;
    let r = c.login("bob", "s3cret pass").await;
    assert!(!r.is_ok());
    assert_eq!(r.code, None);
}

#[tokio::test]
async fn stat_list_uidl_retr_top_noop_answer_per_rfc_1939() {
    let msg =
        b"Subject: hi\r\nFrom: a@b.example\r\n\r\nline1\r\n.dotted\r\nline3\r\nline4\r\n".to_vec();
    let server = spawn(
        MockPop3::builder().maildrop(
            Maildrop::new("bob", "s3cret pass")
                .with_message(Message::new(msg.clone()))
                .with_demo_messages(1, 3000),
        ),
    )
    .await;
    let mut c = logged_in(&server).await;
    assert_eq!(c.cmd("STAT").await.text, format!("2 {}", msg.len() + 3000));
    assert_eq!(
        c.list("LIST").await,
        vec![format!("1 {}", msg.len()), "2 3000".into()]
    );
    assert_eq!(c.cmd("LIST 2").await.text, "2 3000");
    assert!(!c.cmd("LIST 3").await.is_ok());
    assert!(!c.cmd("LIST 0").await.is_ok());
    assert_eq!(c.list("UIDL").await, vec!["1 bob-000001", "2 bob-000002"]);
    assert_eq!(c.cmd("UIDL 2").await.text, "2 bob-000002");
    let (r, body) = c.multi("RETR 1").await;
    assert!(r.is_ok());
    assert_eq!(body, msg, "RETR returns the exact bytes, dot-unstuffed");
    let (_, top) = c.multi("TOP 1 2").await;
    assert_eq!(
        top,
        b"Subject: hi\r\nFrom: a@b.example\r\n\r\nline1\r\n.dotted\r\n"
    );
    let (_, top0) = c.multi("TOP 1 0").await;
    assert_eq!(top0, b"Subject: hi\r\nFrom: a@b.example\r\n\r\n");
    assert!(c.cmd("NOOP").await.is_ok());
    assert!(!c.cmd("XYZZY").await.is_ok());
    assert!(!c.cmd("RETR").await.is_ok());
    assert!(
        !c.cmd("USER x").await.is_ok(),
        "USER is refused after login"
    );
    assert!(c.cmd("QUIT").await.is_ok());
}

#[tokio::test]
async fn transaction_commands_are_refused_before_login_and_wrong_password_fails_with_auth_code() {
    let server = spawn(MockPop3::builder().maildrop(bob(1))).await;
    let (mut c, _) = Client::connect(&server).await;
    for cmd in ["STAT", "LIST", "RETR 1", "DELE 1", "NOOP"] {
        assert!(!c.cmd(cmd).await.is_ok(), "{cmd}");
    }
    assert!(!c.cmd("PASS x").await.is_ok(), "PASS without USER");
    let r = c.login("bob", "wrong").await;
    assert_eq!(r.code, Some(RespCode::Auth));
    let r = c.login("nobody", "s3cret pass").await;
    assert_eq!(r.code, Some(RespCode::Auth));
    assert!(c.login("bob", "s3cret pass").await.is_ok());
}

fn apop_digest(greeting: &str, pass: &str) -> String {
    let ts = &greeting[greeting.find('<').unwrap()..=greeting.rfind('>').unwrap()];
    hex::encode(Md5::digest(format!("{ts}{pass}").as_bytes()))
}

#[tokio::test]
async fn apop_uses_the_greeting_timestamp() {
    let server = spawn(MockPop3::builder().maildrop(bob(1))).await;
    let (mut c, g) = Client::connect(&server).await;
    let bad = apop_digest(&g.text, "wrong");
    assert_eq!(
        c.cmd(&format!("APOP bob {bad}")).await.code,
        Some(RespCode::Auth)
    );
    let good = apop_digest(&g.text, "s3cret pass");
    assert!(c.cmd(&format!("APOP bob {good}")).await.is_ok());
    // The digest never reaches the transcript.
    assert!(!server.transcript().contains(&good));
}

#[tokio::test]
async fn greeting_without_timestamp_makes_apop_impossible() {
    let server = spawn(MockPop3::builder().maildrop(bob(1)).apop_timestamp(false)).await;
    let (mut c, g) = Client::connect(&server).await;
    assert!(!g.text.contains('<'));
    let r = c.cmd("APOP bob 0123456789abcdef0123456789abcdef").await;
    assert!(!r.is_ok());
    assert!(r.text.contains("APOP not available"), "{r:?}");
}

#[tokio::test]
async fn auth_plain_with_initial_response_and_continuation() {
    let server = spawn(MockPop3::builder().maildrop(bob(1))).await;
    let (mut c, _) = Client::connect(&server).await;
    let wrong = B64.encode(b"\0bob\0nope");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {wrong}")).await.code,
        Some(RespCode::Auth)
    );
    c.wire.send("AUTH PLAIN").await;
    assert_eq!(c.response().await, Pop3Response::Continue(String::new()));
    assert!(c.cmd(&B64.encode(b"\0bob\0s3cret pass")).await.is_ok());
    assert!(c.cmd("QUIT").await.is_ok());
    assert!(!server
        .transcript()
        .contains(&B64.encode(b"\0bob\0s3cret pass")));
    assert!(!server.transcript().contains("s3cret"));
}

#[tokio::test]
async fn auth_login_asks_for_username_then_password() {
    let server = spawn(MockPop3::builder().maildrop(bob(1))).await;
    let (mut c, _) = Client::connect(&server).await;
    c.wire.send("AUTH LOGIN").await;
    assert_eq!(
        c.response().await,
        Pop3Response::Continue("VXNlcm5hbWU6".into())
    );
    c.wire.send(&B64.encode("bob")).await;
    assert_eq!(
        c.response().await,
        Pop3Response::Continue("UGFzc3dvcmQ6".into())
    );
    assert!(c.cmd(&B64.encode("s3cret pass")).await.is_ok());
}

#[tokio::test]
async fn auth_cram_md5_checks_the_hmac_of_the_challenge() {
    let server = spawn(MockPop3::builder().maildrop(bob(1))).await;
    for (pass, ok) in [("wrong", false), ("s3cret pass", true)] {
        let (mut c, _) = Client::connect(&server).await;
        c.wire.send("AUTH CRAM-MD5").await;
        let Pop3Response::Continue(ch) = c.response().await else {
            panic!("no challenge")
        };
        let challenge = B64.decode(ch).unwrap();
        let mut mac = Hmac::<Md5>::new_from_slice(pass.as_bytes()).unwrap();
        mac.update(&challenge);
        let resp = format!("bob {}", hex::encode(mac.finalize().into_bytes()));
        let r = c.cmd(&B64.encode(resp)).await;
        assert_eq!(r.is_ok(), ok, "{pass}: {r:?}");
        c.cmd("QUIT").await;
        server.wait_idle().await;
    }
}

#[tokio::test]
async fn auth_xoauth2_with_long_token_after_continuation_and_error_challenge() {
    let token = "ya29.".to_string() + &"A".repeat(2000);
    let server = spawn(MockPop3::builder().maildrop(bob(1).with_token(token.clone()))).await;
    let (mut c, _) = Client::connect(&server).await;
    // Wrong token: an error challenge, the client answers with an empty line, then -ERR [AUTH].
    let bad = B64.encode("user=bob\x01auth=Bearer nope\x01\x01");
    c.wire.send(&format!("AUTH XOAUTH2 {bad}")).await;
    let Pop3Response::Continue(err) = c.response().await else {
        panic!("expected error challenge")
    };
    assert!(String::from_utf8(B64.decode(err).unwrap())
        .unwrap()
        .contains("401"));
    assert_eq!(c.cmd("").await.code, Some(RespCode::Auth));
    // A token too long for the 255-octet command line goes after the `+ ` continuation.
    let good = B64.encode(format!("user=bob\x01auth=Bearer {token}\x01\x01"));
    assert!(good.len() > 255);
    c.wire.send("AUTH XOAUTH2").await;
    assert_eq!(c.response().await, Pop3Response::Continue(String::new()));
    assert!(c.cmd(&good).await.is_ok());
    assert!(!server.transcript().contains(&token[..40]));
    // And a long AUTH command line itself is refused (RFC 2449: 255 octets).
    let server2 = spawn(MockPop3::builder().maildrop(bob(1).with_token(token.clone()))).await;
    let (mut c2, _) = Client::connect(&server2).await;
    let r = c2.cmd(&format!("AUTH XOAUTH2 {good}")).await;
    assert!(!r.is_ok());
    assert!(c2.wire.closed().await);
}

#[tokio::test]
async fn star_cancels_an_auth_exchange() {
    let server = spawn(MockPop3::builder().maildrop(bob(1))).await;
    let (mut c, _) = Client::connect(&server).await;
    c.begin("AUTH LOGIN").await;
    c.cancel().await;
    assert!(
        c.login("bob", "s3cret pass").await.is_ok(),
        "the session goes on after a cancel"
    );
}

#[tokio::test]
async fn mailbox_methods_and_server_sasl_list_restrict_authentication() {
    let server = spawn(
        MockPop3::builder()
            .maildrop(bob(1).with_methods([AuthMethod::Apop]))
            .capabilities(Capabilities {
                sasl: vec![AuthMethod::Plain],
                ..Capabilities::full()
            }),
    )
    .await;
    let (mut c, _) = Client::connect(&server).await;
    assert_eq!(
        c.login("bob", "s3cret pass").await.code,
        Some(RespCode::Auth),
        "USER not allowed for bob"
    );
    let r = c.cmd(&format!("AUTH LOGIN {}", B64.encode("bob"))).await;
    assert!(r.text.contains("Unsupported"), "{r:?}");
    assert_eq!(c.list("AUTH").await, vec!["PLAIN"]);
}

#[tokio::test]
async fn capa_lists_what_is_switched_on_before_and_after_login() {
    let (_pki, builder) = bob_over_tls(1, ServerTls::Stls);
    let server = spawn(builder.capabilities(Capabilities {
        login_delay: Some(0),
        expire: Some(Expire::Never),
        ..Capabilities::full()
    }))
    .await;
    let (mut c, _) = Client::connect(&server).await;
    let before = c.list("CAPA").await;
    for cap in [
        "TOP",
        "UIDL",
        "USER",
        "SASL PLAIN LOGIN CRAM-MD5 XOAUTH2 NTLM",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "LOGIN-DELAY 0",
        "EXPIRE NEVER",
        "STLS",
    ] {
        assert!(
            before.contains(&cap.to_string()),
            "{cap} missing from {before:?}"
        );
    }
    c.login("bob", "s3cret pass").await;
    let after = c.list("CAPA").await;
    assert!(
        !after
            .iter()
            .any(|l| l == "USER" || l == "STLS" || l.starts_with("SASL")),
        "{after:?}"
    );
    assert!(after.contains(&"UIDL".to_string()));
}

#[tokio::test]
async fn switched_off_capabilities_refuse_their_commands() {
    let none = Capabilities::minimal();
    let server = spawn(
        MockPop3::builder()
            .maildrop(bob(2))
            .capabilities(Capabilities {
                user: true,
                ..none.clone()
            })
            .capabilities_after_login(none),
    )
    .await;
    let (mut c, _) = Client::connect(&server).await;
    assert!(!c.cmd("CAPA").await.is_ok(), "CAPA off");
    let r = c
        .cmd(&format!("AUTH PLAIN {}", B64.encode("\0bob\0s3cret pass")))
        .await;
    assert!(!r.is_ok(), "no SASL");
    assert!(!c.cmd("STLS").await.is_ok(), "no STLS");
    let r = c.login("bob", "s3cret pass").await;
    assert!(r.is_ok());
    assert!(!c.cmd("UIDL").await.is_ok(), "UIDL off");
    assert!(!c.cmd("UIDL 1").await.is_ok(), "UIDL off");
    assert!(!c.cmd("TOP 1 0").await.is_ok(), "TOP off");
    assert!(c.multi("RETR 1").await.0.is_ok(), "RETR always works");
    // USER switched off.
    let server = bob_with(Capabilities {
        user: false,
        ..Capabilities::full()
    })
    .await;
    let (mut c, _) = Client::connect(&server).await;
    assert!(!c.cmd("USER bob").await.is_ok());
    assert!(!c.list("CAPA").await.contains(&"USER".to_string()));
}

#[tokio::test(start_paused = true)]
async fn login_delay_is_enforced_on_the_paused_clock() {
    let server = MockPop3::builder()
        .maildrop(bob(1))
        .capabilities(Capabilities {
            login_delay: Some(60),
            ..Capabilities::full()
        })
        .spawn_in_memory();
    let (mut c, _) = Client::over(server.connect_duplex()).await;
    assert!(c.login("bob", "s3cret pass").await.is_ok());
    c.cmd("QUIT").await;
    server.wait_idle().await;
    let (mut c, _) = Client::over(server.connect_duplex()).await;
    let r = c.login("bob", "s3cret pass").await;
    assert_eq!(r.code, Some(RespCode::LoginDelay));
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(c.login("bob", "s3cret pass").await.is_ok());
}

#[tokio::test]
async fn expire_zero_deletes_retrieved_messages_at_quit() {
    let server = spawn(
        MockPop3::builder()
            .maildrop(bob(3))
            .capabilities_after_login(Capabilities {
                expire: Some(Expire::Days(0)),
                ..Capabilities::full_after_login()
            }),
    )
    .await;
    let mut c = logged_in(&server).await;
    assert!(c.list("CAPA").await.contains(&"EXPIRE 0".to_string()));
    c.multi("RETR 2").await;
    c.cmd("QUIT").await;
    server.wait_idle().await;
    assert_eq!(server.maildrop("bob").unwrap().deleted, vec!["bob-000002"]);
}

async fn tls_client(pki: &TestPki, tcp: TcpStream) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(pki.client_config().unwrap());
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn implicit_tls_greets_after_the_handshake() {
    let (pki, builder) = bob_over_tls(2, ServerTls::Implicit);
    let server = spawn(builder).await;
    let tcp = TcpStream::connect(server.addr().unwrap()).await.unwrap();
    let (mut c, g) = Client::over(tls_client(&pki, tcp).await).await;
    assert!(g.is_ok());
    assert!(c.login("bob", "s3cret pass").await.is_ok());
    assert!(
        !c.list("CAPA").await.contains(&"STLS".to_string()),
        "no STLS inside TLS"
    );
    c.cmd("QUIT").await;
    server.wait_idle().await;
    assert!(server.sessions()[0].tls);
    // A plain-text client gets no POP3 greeting from an implicit-TLS port.
    let mut raw = TcpStream::connect(server.addr().unwrap()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"CAPA\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        crate::client::STEP,
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut buf),
    )
    .await;
    assert!(!buf.starts_with(b"+OK"));
}

#[tokio::test]
async fn stls_upgrades_and_discards_commands_injected_before_the_handshake() {
    let (pki, builder) = bob_over_tls(1, ServerTls::Stls);
    let server = spawn(builder).await;
    let (mut c, _) = Client::connect(&server).await;
    assert!(c.list("CAPA").await.contains(&"STLS".to_string()));
    // STLS and an injected command in the same packet: the injected one must be dropped.
    c.wire.send_raw(b"STLS\r\nUSER injected\r\n").await;
    assert!(c.reply().await.is_ok());
    assert!(
        c.wire.buf.is_empty(),
        "nothing may follow the STLS reply in clear"
    );
    let tls = tls_client(&pki, c.wire.stream).await;
    let mut c = Client::resume(tls);
    // Had USER been kept, PASS would log in without a USER in the TLS session.
    let r = c.cmd("PASS s3cret pass").await;
    assert_eq!(r.text, "USER first");
    assert!(c.login("bob", "s3cret pass").await.is_ok());
    c.cmd("QUIT").await;
    server.wait_idle().await;
    let s = &server.sessions()[0];
    assert!(s.tls);
    assert!(s.commands.contains(&"USER bob".to_string()));
    assert!(
        !s.commands.iter().any(|c| c.contains("injected")),
        "{:?}",
        s.commands
    );
}

#[tokio::test]
async fn stls_is_refused_without_tls_configured_or_when_switched_off() {
    let server = spawn(MockPop3::builder().maildrop(bob(1))).await;
    let (mut c, _) = Client::connect(&server).await;
    assert!(!c.list("CAPA").await.contains(&"STLS".to_string()));
    assert!(!c.cmd("STLS").await.is_ok());
    let (_pki, builder) = bob_over_tls(1, ServerTls::Stls);
    let server = spawn(builder.capabilities(Capabilities {
        stls: false,
        ..Capabilities::full()
    }))
    .await;
    let (mut c, _) = Client::connect(&server).await;
    assert!(!c.cmd("STLS").await.is_ok());
}

#[tokio::test]
async fn replace_reply_fires_on_the_nth_use_for_k_times() {
    let server = spawn(
        MockPop3::builder().maildrop(bob(5)).fault(
            FaultRule::new(
                Hook::command("RETR"),
                FaultAction::Reply("-ERR [SYS/TEMP] disk trouble".into()),
            )
            .nth(2)
            .times(2),
        ),
    )
    .await;
    let mut c = logged_in(&server).await;
    let mut outcomes = Vec::new();
    for i in 1..=5 {
        let (r, _) = c.multi(&format!("RETR {i}")).await;
        outcomes.push(r.is_ok());
        if !r.is_ok() {
            assert_eq!(r.code, Some(RespCode::SysTemp));
        }
    }
    assert_eq!(outcomes, [true, false, false, true, true]);
    c.cmd("QUIT").await;
    server.wait_idle().await;
    assert_eq!(
        server.maildrop("bob").unwrap().retrieved,
        vec!["bob-000001", "bob-000004", "bob-000005"]
    );
}

#[tokio::test]
async fn replaced_greeting_and_garbage_line() {
    let server = spawn(
        MockPop3::builder()
            .maildrop(bob(1))
            .fault(FaultRule::new(
                Hook::Greeting,
                FaultAction::Reply("-ERR [SYS/TEMP] maintenance".into()),
            ))
            .fault(FaultRule::new(
                Hook::command("STAT"),
                FaultAction::GarbageLine(b"\x00garbage\xff".to_vec()),
            )),
    )
    .await;
    let (_c, g) = Client::connect(&server).await;
    assert!(!g.is_ok());
    assert_eq!(g.code, Some(RespCode::SysTemp));
    let (mut c, g) = Client::connect(&server).await;
    assert!(g.is_ok(), "only the first greeting is replaced");
    c.login("bob", "s3cret pass").await;
    c.wire.send("STAT").await;
    assert_eq!(c.line().await.unwrap(), b"\x00garbage\xff\r\n");
    assert!(
        c.reply().await.is_ok(),
        "the real reply follows the garbage"
    );
}

#[tokio::test]
async fn close_before_reply_and_close_after_n_bytes() {
    let server = spawn(
        MockPop3::builder()
            .maildrop(bob(3))
            .fault(FaultRule::new(Hook::command("RETR"), FaultAction::CloseAfterBytes(100)).nth(2))
            .fault(FaultRule::new(
                Hook::command("QUIT"),
                FaultAction::CloseBeforeReply,
            )),
    )
    .await;
    let mut c = logged_in(&server).await;
    assert!(c.multi("RETR 1").await.0.is_ok());
    assert!(c.cmd("DELE 1").await.is_ok());
    c.wire.send("RETR 2").await;
    let got = c.drain().await;
    assert_eq!(got.len(), 100, "exactly 100 octets of the reply arrive");
    assert!(got.starts_with(b"+OK 1500 octets\r\n"));
    server.wait_idle().await;
    assert_eq!(server.sessions()[0].end, Some(SessionEnd::FaultClosed));
    let mb = server.maildrop("bob").unwrap();
    assert_eq!(
        mb.retrieved,
        vec!["bob-000001"],
        "a cut RETR is not a retrieval"
    );
    assert!(mb.deleted.is_empty());
    // QUIT closed before its reply: no UPDATE state, nothing deleted.
    let mut c = logged_in(&server).await;
    assert!(c.cmd("DELE 1").await.is_ok());
    c.wire.send("QUIT").await;
    assert_eq!(c.line().await, None);
    server.wait_idle().await;
    assert_eq!(server.maildrop("bob").unwrap().remaining.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn delay_and_throttle_run_on_the_paused_clock() {
    let server = MockPop3::builder()
        .maildrop(Maildrop::new("bob", "s3cret pass").with_demo_messages(1, 10_000))
        .fault(FaultRule::new(
            Hook::command("STAT"),
            FaultAction::Delay(Duration::from_secs(30)),
        ))
        .spawn_in_memory();
    let (mut c, _) = Client::over(server.connect_duplex()).await;
    c.wire.step = Duration::from_secs(3600);
    c.login("bob", "s3cret pass").await;
    let t = Instant::now();
    assert!(c.cmd("STAT").await.is_ok());
    assert!(t.elapsed() >= Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(31));

    let server = MockPop3::builder()
        .maildrop(Maildrop::new("bob", "s3cret pass").with_demo_messages(1, 10_000))
        .throttle(1000)
        .spawn_in_memory();
    let (mut c, _) = Client::over(server.connect_duplex()).await;
    c.wire.step = Duration::from_secs(3600);
    c.login("bob", "s3cret pass").await;
    let t = Instant::now();
    let (_, body) = c.multi("RETR 1").await;
    assert_eq!(body.len(), 10_000);
    let e = t.elapsed();
    assert!(
        e >= Duration::from_secs(9) && e <= Duration::from_secs(12),
        "10 kB at 1 kB/s took {e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_client_is_disconnected_after_the_timeout() {
    let server = MockPop3::builder()
        .maildrop(bob(1))
        .idle_timeout(Duration::from_secs(600))
        .spawn_in_memory();
    let (mut c, _) = Client::over(server.connect_duplex()).await;
    c.wire.step = Duration::from_secs(3600);
    c.login("bob", "s3cret pass").await;
    c.cmd("DELE 1").await;
    tokio::time::advance(Duration::from_secs(601)).await;
    assert!(c.wire.closed().await);
    server.wait_idle().await;
    assert_eq!(server.sessions()[0].end, Some(SessionEnd::Timeout));
    assert_eq!(server.maildrop("bob").unwrap().remaining.len(), 1);
}

#[tokio::test]
async fn probabilistic_faults_replay_with_the_same_seed() {
    async fn run(seed: u64) -> (Vec<bool>, String) {
        let server = spawn(
            MockPop3::builder().maildrop(bob(40)).seed(seed).fault(
                FaultRule::new(
                    Hook::command("RETR"),
                    FaultAction::Reply("-ERR [SYS/TEMP] flaky".into()),
                )
                .always()
                .probability(0.3),
            ),
        )
        .await;
        let (mut c, g) = Client::connect(&server).await;
        c.login("bob", "s3cret pass").await;
        let mut v = Vec::new();
        for i in 1..=40 {
            v.push(c.multi(&format!("RETR {i}")).await.0.is_ok());
        }
        (v, g.text)
    }
    let (a, ga) = run(7).await;
    let (b, gb) = run(7).await;
    let (c, gc) = run(8).await;
    assert_eq!(a, b, "same seed, same faults");
    assert_eq!(ga, gb, "same seed, same APOP timestamp");
    assert_ne!(a, c, "another seed, other faults");
    assert_ne!(ga, gc);
    let failures = a.iter().filter(|ok| !**ok).count();
    assert!(
        (4..=20).contains(&failures),
        "about 30% of 40, got {failures}"
    );
}

#[tokio::test]
async fn wrong_list_size_and_duplicate_uids_are_served_as_declared() {
    let server = spawn(
        MockPop3::builder().maildrop(
            Maildrop::new("bob", "s3cret pass")
                .with_message(
                    Message::new(&b"Subject: a\r\n\r\nbody\r\n"[..])
                        .with_uid("same")
                        .with_reported_size(5),
                )
                .with_message(Message::new(&b"Subject: b\r\n\r\nbody\r\n"[..]).with_uid("same")),
        ),
    )
    .await;
    let mut c = logged_in(&server).await;
    assert_eq!(c.list("LIST").await, vec!["1 5", "2 20"]);
    assert_eq!(c.cmd("RETR 1").await.text, "5 octets");
    assert_eq!(
        c.body().await.len(),
        20,
        "the lie is in LIST only: RETR sends it all"
    );
    assert_eq!(c.list("UIDL").await, vec!["1 same", "2 same"]);
    assert!(c.cmd("DELE 1").await.is_ok());
    c.cmd("QUIT").await;
    server.wait_idle().await;
    let mb = server.maildrop("bob").unwrap();
    assert_eq!(
        mb.remaining,
        vec!["same"],
        "deletion is by message, not by UID"
    );
    assert_eq!(mb.deleted, vec!["same"]);
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let server = spawn(MockPop3::builder().maildrop(bob(3))).await;
    let (mut c, _) = Client::connect(&server).await;
    c.wire.send_raw(
        b"USER bob\r\nPASS s3cret pass\r\nSTAT\r\nRETR 1\r\nRETR 2\r\nDELE 1\r\nDELE 2\r\nQUIT\r\n",
    )
    .await;
    for _ in 0..3 {
        assert!(c.reply().await.is_ok());
    }
    for _ in 0..2 {
        assert!(c.reply().await.is_ok());
        assert_eq!(c.body().await.len(), 1500);
    }
    for _ in 0..3 {
        assert!(c.reply().await.is_ok());
    }
    assert!(c.wire.closed().await);
    server.wait_idle().await;
    assert_eq!(
        server.maildrop("bob").unwrap().remaining,
        vec!["bob-000003"]
    );
}

#[tokio::test]
async fn replies_pipelined_behind_a_large_body_never_overtake_it() {
    let big = 200 * 1024;
    let server = spawn(
        MockPop3::builder()
            .maildrop(Maildrop::new("bob", "s3cret pass").with_demo_messages(3, big)),
    )
    .await;
    let (mut c, _) = Client::connect(&server).await;
    c.wire.send_raw(
        b"USER bob\r\nPASS s3cret pass\r\nRETR 1\r\nDELE 1\r\nNOOP\r\nRETR 2\r\nRETR 3\r\nQUIT\r\n",
    )
    .await;
    assert!(c.reply().await.is_ok());
    assert!(c.reply().await.is_ok());
    assert_eq!(c.reply().await.text, format!("{big} octets"));
    assert_eq!(c.body().await.len(), big);
    assert_eq!(c.reply().await.text, "Message 1 deleted");
    assert_eq!(c.reply().await.text, "");
    for _ in 0..2 {
        assert_eq!(c.reply().await.text, format!("{big} octets"));
        assert_eq!(c.body().await.len(), big);
    }
    assert!(c.reply().await.text.starts_with("Bye"));
}

#[tokio::test]
async fn inspection_shows_commands_and_a_redacted_transcript() {
    let server = spawn(MockPop3::builder().maildrop(bob(2))).await;
    let (mut c, _) = Client::connect(&server).await;
    c.login("bob", "s3cret pass").await;
    c.multi("RETR 2").await;
    c.cmd("DELE 2").await;
    c.wire.send("PASS \u{fffd}s3cret pass again").await;
    c.reply().await;
    c.cmd("QUIT").await;
    server.wait_idle().await;
    let s = &server.sessions()[0];
    assert_eq!(s.user.as_deref(), Some("bob"));
    assert_eq!(
        s.commands,
        vec!["USER bob", "PASS ***", "RETR 2", "DELE 2", "PASS ***", "QUIT"]
    );
    let t = server.transcript();
    assert!(!t.contains("s3cret"), "{t}");
    assert!(
        t.contains("C: RETR 2") && t.contains("S: +OK 1500 octets"),
        "{t}"
    );
    let mb = server.maildrop("bob").unwrap();
    assert_eq!(
        (
            mb.retrieved.clone(),
            mb.deleted.clone(),
            mb.remaining.clone()
        ),
        (
            vec!["bob-000002".to_string()],
            vec!["bob-000002".to_string()],
            vec!["bob-000001".to_string()]
        )
    );
    assert_eq!(mb.retrievals, 1);
}

#[tokio::test]
async fn hostile_clients_get_errors_not_crashes() {
    let server = spawn(MockPop3::builder().maildrop(bob(1))).await;
    let (mut c, _) = Client::connect(&server).await;
    assert!(!c.cmd("\u{0}\u{1}binary").await.is_ok());
    c.wire.send_raw(b"\xff\xfe\xfd\r\n").await;
    assert!(!c.reply().await.is_ok());
    // A 10 MB line: refused once it passes 255 octets, the connection closes.
    let big = vec![b'A'; 10 * 1024 * 1024];
    let _ = tokio::io::AsyncWriteExt::write_all(&mut c.wire.stream, &big).await;
    let r = c.reply().await;
    assert_eq!(r.text, "Line too long");
    assert!(c.wire.closed().await);
    // The server still serves others.
    let mut c = logged_in(&server).await;
    assert!(c.cmd("QUIT").await.is_ok());
}

#[tokio::test]
async fn messages_added_later_show_up_in_the_next_session_and_servers_share_nothing() {
    let a = spawn(MockPop3::builder().maildrop(bob(1))).await;
    let b = spawn(MockPop3::builder().maildrop(bob(1))).await;
    assert!(a.add_message("bob", Message::new(&b"Subject: late\r\n\r\nx\r\n"[..])));
    assert!(!a.add_message("nobody", Message::new(&b"x"[..])));
    let mut c = logged_in(&a).await;
    assert_eq!(c.list("UIDL").await.len(), 2);
    c.cmd("DELE 1").await;
    c.cmd("QUIT").await;
    a.wait_idle().await;
    assert_eq!(a.maildrop("bob").unwrap().remaining.len(), 1);
    assert_eq!(b.maildrop("bob").unwrap().remaining.len(), 1);
    assert_eq!(b.maildrop("bob").unwrap().remaining[0], "bob-000001");
    let a2 = Arc::new(a);
    assert!(Arc::strong_count(&a2) == 1);
}

/// POSTs a form to the mock token endpoint over TLS (trusting the test CA) and returns the
/// status and the JSON body.
async fn token_request(
    addr: std::net::SocketAddr,
    pki: &mock_pop3::pki::TestPki,
    form: &str,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(pki.client_config().unwrap());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let request = format!(
        "POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(STEP, tls.read_to_end(&mut out))
        .await
        .expect("token endpoint stalled");
    let text = String::from_utf8(out).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    (status, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn xoauth2_accepts_only_valid_tokens_issued_by_the_mock_token_endpoint() {
    use mock_pop3::oauth::{OAuthProvider, ProviderConfig};
    let pki = mock_pop3::pki::TestPki::localhost().unwrap();
    let provider = OAuthProvider::new(ProviderConfig::new("bob", "client-1", "refresh-1"));
    let endpoint = provider.spawn(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        pki.server_config().unwrap(),
    );
    let server = spawn(MockPop3::builder().maildrop(bob(1).with_oauth(provider.clone()))).await;
    let addr = endpoint.addr().unwrap();

    let (status, json) = token_request(
        addr,
        &pki,
        "grant_type=refresh_token&refresh_token=refresh-1&client_id=client-1",
    )
    .await;
    assert_eq!(status, 200, "{json}");
    let token = json["access_token"].as_str().unwrap().to_string();
    assert_eq!(json["token_type"], "Bearer");

    let login = |token: String| {
        let server = &server;
        async move {
            let (mut c, _) = Client::connect(server).await;
            let payload = B64.encode(format!("user=bob\x01auth=Bearer {token}\x01\x01"));
            c.wire.send(&format!("AUTH XOAUTH2 {payload}")).await;
            let r = match c.response().await {
                Pop3Response::Status(r) => (r.is_ok(), false),
                // Gmail's failure: a base64 JSON challenge, an empty answer, then -ERR.
                Pop3Response::Continue(err) => {
                    let json = String::from_utf8(B64.decode(err).unwrap()).unwrap();
                    assert!(json.contains("\"status\":\"401\""), "{json}");
                    let r = c.cmd("").await;
                    assert_eq!(r.code, Some(RespCode::Auth));
                    (r.is_ok(), true)
                }
            };
            c.cmd("QUIT").await;
            server.wait_idle().await;
            r
        }
    };
    assert_eq!(login(token.clone()).await, (true, false));
    // The static password is no longer a bearer token for this mailbox.
    assert_eq!(login("s3cret pass".into()).await, (false, true));
    provider.advance(std::time::Duration::from_secs(3600));
    assert_eq!(
        login(token).await,
        (false, true),
        "expired on the mock clock"
    );

    // A revoked refresh token: invalid_grant, RFC 6749 §5.2.
    provider.set_revoked(true);
    let (status, json) = token_request(
        addr,
        &pki,
        "grant_type=refresh_token&refresh_token=refresh-1&client_id=client-1",
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(
        json["error_description"],
        mock_pop3::oauth::REVOKED_DESCRIPTION
    );
    assert!(!server.transcript().contains("mock-access"));
    endpoint.shutdown().await;
}
