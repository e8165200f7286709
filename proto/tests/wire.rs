//! Whole-stream tests of the wire codecs: hand-written sessions as each side reads
//! them, re-fed cut at every byte boundary and one byte at a time, hostile input,
//! and a dot-stuffing round-trip property over generated messages.

#![allow(missing_docs)]

use std::collections::VecDeque;
use std::fmt::Debug;

use bytes::BytesMut;
use popbridge_proto::line::crlf_normalised;
use popbridge_proto::pop3::{
    self, Pop3Command, Pop3Reply, Pop3Response, RespCode, SaslResponse, Status,
};
use popbridge_proto::smtp::{
    self, EnhancedCode, EnvelopeAddress, Mailbox, Param, Path, Reply, ReplyError, ReplyParser,
    Severity, SmtpCommand,
};
use popbridge_proto::{DotDecoder, DotError, DotStuffer, LineDecoder, LineError};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Every way the stream tests cut their input: whole, in two parts at each
/// boundary (both ends included), and one byte at a time.
fn chunkings(input: &[u8]) -> Vec<(String, Vec<&[u8]>)> {
    let mut v = vec![("whole".to_string(), vec![input])];
    for s in 0..=input.len() {
        v.push((format!("split at {s}"), vec![&input[..s], &input[s..]]));
    }
    v.push(("one byte at a time".to_string(), input.chunks(1).collect()));
    v
}

/// Runs `read` over every chunking of `input`; all results must equal the unsplit one.
fn same_for_every_chunking<T: PartialEq + Debug>(input: &[u8], read: impl Fn(&[&[u8]]) -> T) -> T {
    let whole = read(&[input]);
    for (label, parts) in chunkings(input) {
        assert_eq!(read(&parts), whole, "{label}");
    }
    whole
}

/// Deterministic xorshift64* generator (no new dependencies).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Cuts `input` into random pieces (some empty), for chunked feeding.
fn random_pieces<'a>(rng: &mut XorShift, input: &'a [u8]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = rng.below(rest.len().min(9) + 1);
        let (a, b) = rest.split_at(n);
        pieces.push(a);
        rest = b;
    }
    pieces
}

/// Decodes dot-stuffed `pieces` with a fresh decoder; returns the data and the bytes
/// consumed, asserting the decoder never claims more than it was given.
fn dot_decode_pieces(pieces: &[&[u8]], limit: u64) -> Result<(Vec<u8>, usize, bool), DotError> {
    dot_decode_pieces_with(DotDecoder::new(limit), pieces)
}

/// [`dot_decode_pieces`] with a given decoder (the POP3 client's accepts `LF . CRLF`).
fn dot_decode_pieces_with(
    mut d: DotDecoder,
    pieces: &[&[u8]],
) -> Result<(Vec<u8>, usize, bool), DotError> {
    let mut out = BytesMut::new();
    let mut used = 0;
    for piece in pieces {
        let p = d.decode(piece, &mut out)?;
        assert!(p.consumed <= piece.len());
        used += p.consumed;
        if p.done {
            assert!(d.is_done());
            assert_eq!(d.total(), out.len() as u64);
            return Ok((out.to_vec(), used, true));
        }
        assert_eq!(
            p.consumed,
            piece.len(),
            "an unfinished decoder consumes all input"
        );
    }
    Ok((out.to_vec(), used, false))
}

/// True when every CR is followed by LF and every LF preceded by CR.
fn only_crlf_line_ends(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    })
}

// ---------------------------------------------------------------------------
// 1. A POP3 client session as the server reads it
// ---------------------------------------------------------------------------

type Pop3Read = Result<Pop3Command, pop3::CommandError>;

/// Server side: frame lines with the RFC 2449 limit and parse each as a command.
/// Returns the commands and the unframed rest.
fn pop3_server_reads(parts: &[&[u8]]) -> (Vec<Pop3Read>, Vec<u8>) {
    let (lines, rest) = framed_lines(pop3::MAX_COMMAND_LINE, parts);
    for line in &lines {
        assert!(line.len() <= pop3::MAX_COMMAND_LINE);
    }
    (lines.iter().map(|l| Pop3Command::parse(l)).collect(), rest)
}

/// The lines a `limit` line decoder frames from `parts` fed in turn, and the unframed rest.
fn framed_lines(limit: usize, parts: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut framing = LineDecoder::new(limit);
    let mut buf = BytesMut::new();
    let mut lines = Vec::new();
    for part in parts {
        buf.extend_from_slice(part);
        while let Some(line) = framing.next_line(&mut buf).unwrap() {
            lines.push(line.to_vec());
        }
    }
    (lines, buf.to_vec())
}

#[test]
fn pop3_session_as_the_server_reads_it() {
    let session: &[u8] = b"CAPA\r\n\
        USER bob\r\n\
        PASS x y\r\n\
        STAT\r\n\
        LIST\r\n\
        UIDL 1\r\n\
        RETR 1\r\n\
        TOP 2 0\r\n\
        XTND XMIT\r\n\
        list 2\n\
        DELE 1\r\n\
        RSET\r\n\
        NOOP\r\n\
        QUIT\r\n";
    let expected: Vec<Pop3Read> = vec![
        Ok(Pop3Command::Capa),
        Ok(Pop3Command::User("bob".into())),
        Ok(Pop3Command::Pass("x y".into())),
        Ok(Pop3Command::Stat),
        Ok(Pop3Command::List(None)),
        Ok(Pop3Command::Uidl(Some(1))),
        Ok(Pop3Command::Retr(1)),
        Ok(Pop3Command::Top { msg: 2, lines: 0 }),
        Err(pop3::CommandError::Unknown("XTND".into())),
        Ok(Pop3Command::List(Some(2))),
        Ok(Pop3Command::Dele(1)),
        Ok(Pop3Command::Rset),
        Ok(Pop3Command::Noop),
        Ok(Pop3Command::Quit),
    ];

    let (cmds, rest) = same_for_every_chunking(session, pop3_server_reads);
    assert_eq!(cmds, expected);
    assert!(rest.is_empty());

    // The multi-line flag the server needs to frame its answers.
    let multi: Vec<bool> = cmds
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .map(Pop3Command::expects_multiline)
        .collect();
    assert_eq!(
        multi,
        [true, false, false, false, true, false, true, true, false, false, false, false, false]
    );

    // Canonical (CRLF-terminated, valid) lines re-serialise byte for byte.
    let mut canonical = 0;
    for line in session.split_inclusive(|&b| b == b'\n') {
        if let (Ok(cmd), true) = (Pop3Command::parse(line), line.ends_with(b"\r\n")) {
            assert_eq!(cmd.to_string().as_bytes(), line);
            canonical += 1;
        }
    }
    assert_eq!(canonical, 12);
    // The password never reaches Debug output.
    assert!(!format!("{cmds:?}").contains("x y"));
}

#[test]
fn pop3_sasl_exchange_as_the_server_reads_it() {
    // What the client writes for AUTH LOGIN, then a cancelled AUTH CRAM-MD5.
    let lines = [
        Pop3Command::Auth {
            mechanism: "LOGIN".into(),
            initial: None,
        }
        .to_string(),
        SaslResponse::described(b"bob", "(username)").to_string(),
        SaslResponse::secret(b"x y\r\nDELE 1").to_string(),
        Pop3Command::Auth {
            mechanism: "CRAM-MD5".into(),
            initial: None,
        }
        .to_string(),
        SaslResponse::cancel().to_string(),
        SaslResponse::empty().to_string(),
    ];
    let session = lines.concat();
    let read = |parts: &[&[u8]]| framed_lines(pop3::MAX_SASL_LINE, parts).0;
    let got = same_for_every_chunking(session.as_bytes(), read);
    // One line each: a response never carries a line end of its own.
    assert_eq!(got.len(), 6);
    assert!(matches!(
        Pop3Command::parse(&got[0]),
        Ok(Pop3Command::Auth { .. })
    ));
    let password = SaslResponse::parse(&got[2]).unwrap();
    assert_eq!(password, SaslResponse::secret(b"x y\r\nDELE 1"));
    assert_eq!(password.redacted(), "***");
    assert!(!format!("{password:?}").contains(password.base64().unwrap()));
    assert_eq!(SaslResponse::parse(&got[1]).unwrap().base64(), Some("Ym9i"));
    assert!(SaslResponse::parse(&got[4]).unwrap().is_cancel());
    assert_eq!(SaslResponse::parse(&got[5]).unwrap().base64(), Some(""));
}

#[test]
fn pop3_server_keeps_an_incomplete_last_command() {
    let input = b"NOOP\r\nRETR 1";
    let (cmds, rest) = same_for_every_chunking(input, pop3_server_reads);
    assert_eq!(cmds, vec![Ok(Pop3Command::Noop)]);
    assert_eq!(rest, b"RETR 1");
}

#[test]
fn pop3_command_line_at_the_limit_passes_and_one_over_fails() {
    let max = pop3::MAX_COMMAND_LINE;
    let secret = "s".repeat(max - "PASS \r\n".len());
    let line = format!("PASS {secret}\r\n");
    assert_eq!(line.len(), max);
    let (cmds, rest) = pop3_server_reads(&[line.as_bytes()]);
    assert_eq!(cmds, vec![Ok(Pop3Command::Pass(secret.clone()))]);
    assert!(rest.is_empty());

    let too_long = format!("PASS {secret}s\r\n");
    let mut lines = LineDecoder::new(max);
    let mut buf = BytesMut::from(too_long.as_bytes());
    assert_eq!(lines.next_line(&mut buf), Err(LineError::TooLong { max }));
}

// ---------------------------------------------------------------------------
// 2. A POP3 server's response stream as the client reads it
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum Pop3Event {
    Status(Pop3Reply),
    Data(Vec<u8>),
}

/// Client side: a status line per command, then, for a `+OK` to a multi-line command,
/// dot-stuffed data up to `CRLF . CRLF`; whatever follows is the next status line.
struct Pop3Client {
    lines: LineDecoder,
    buf: BytesMut,
    /// For each status line still to come: is the command multi-line on success?
    plan: VecDeque<bool>,
    data: Option<(DotDecoder, BytesMut)>,
    events: Vec<Pop3Event>,
}

impl Pop3Client {
    fn new(plan: &[bool]) -> Self {
        Self {
            lines: LineDecoder::new(pop3::MAX_RESPONSE_LINE),
            buf: BytesMut::new(),
            plan: plan.iter().copied().collect(),
            data: None,
            events: Vec::new(),
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        loop {
            if let Some((dec, out)) = &mut self.data {
                let p = dec.decode(&self.buf, out).unwrap();
                let _ = self.buf.split_to(p.consumed);
                if !p.done {
                    assert!(self.buf.is_empty(), "unfinished data consumes all input");
                    return;
                }
                let body = out.to_vec();
                self.data = None;
                self.events.push(Pop3Event::Data(body));
                continue;
            }
            let Some(line) = self.lines.next_line(&mut self.buf).unwrap() else {
                return;
            };
            let reply = Pop3Reply::parse(&line).unwrap();
            let multi = self.plan.pop_front().expect("more replies than commands");
            if multi && reply.is_ok() {
                self.data = Some((DotDecoder::new(1 << 20), BytesMut::new()));
            }
            self.events.push(Pop3Event::Status(reply));
        }
    }
}

/// (wire, unstuffed) pairs of the RETR body, hand-written.
fn retr_body_pieces() -> Vec<(Vec<u8>, Vec<u8>)> {
    let long = "x".repeat(2000);
    let pairs: Vec<(&[u8], &[u8])> = vec![
        (
            b"Return-Path: <a@b.example>\r\n",
            b"Return-Path: <a@b.example>\r\n",
        ),
        (b"Subject: dots\r\n\r\n", b"Subject: dots\r\n\r\n"),
        (b"..leading dot\r\n", b".leading dot\r\n"),
        (b"...\r\n", b"..\r\n"),
        // A line holding a single dot, stuffed: must not end the data.
        (b"..\r\n", b".\r\n"),
        (b"bare\nLF\nlines\n", b"bare\nLF\nlines\n"),
        (b"nul\0byte\r\n", b"nul\0byte\r\n"),
        (
            b"8bit \xe9\xe8\xff\x80\xc3 bytes\r\n",
            b"8bit \xe9\xe8\xff\x80\xc3 bytes\r\n",
        ),
        (long.as_bytes(), long.as_bytes()),
        (b"\r\n", b"\r\n"),
        // The body holds "\n.\n" (stuffed after the bare LF as DotStuffer does).
        (b"a\n..\nb\r\n", b"a\n.\nb\r\n"),
        // An unstuffed "\n.\n": only CRLF . CRLF ends data, and a lone dot after a bare
        // LF was never stuffed: it stays (documented decoder rule).
        (b"c\n.\nd\r\n", b"c\n.\nd\r\n"),
        // CRLF . LF does not end the data either.
        (b"e\r\n.\nf\r\n", b"e\r\n\nf\r\n"),
        // Bare CR before and after a dot.
        (b"g\r.\rh\r\n", b"g\r.\rh\r\n"),
        // Unstuffed "." CR x after CRLF: the dot goes, the CR is data.
        (b".\rj\r\n", b"\rj\r\n"),
        // LF . CRLF (the SMTP smuggling shape) does not end the data of a strict
        // decoder; the dot, never stuffed, stays.
        (b"k\n.\r\nl\r\n", b"k\n.\r\nl\r\n"),
        (b"last line\r\n", b"last line\r\n"),
    ];
    pairs
        .into_iter()
        .map(|(w, d)| (w.to_vec(), d.to_vec()))
        .collect()
}

#[test]
fn pop3_response_stream_as_the_client_reads_it() {
    let (body_wire, body): (Vec<Vec<u8>>, Vec<Vec<u8>>) = retr_body_pieces().into_iter().unzip();
    let (body_wire, body) = (body_wire.concat(), body.concat());

    let mut stream = Vec::new();
    stream.extend_from_slice(b"+OK POP3 server ready <123.456@host>\r\n");
    // LIST
    stream.extend_from_slice(b"+OK 2 messages (2345 octets)\r\n1 120\r\n2 2225\r\n.\r\n");
    // RETR 2
    stream.extend_from_slice(b"+OK 2225 octets\r\n");
    stream.extend_from_slice(&body_wire);
    stream.extend_from_slice(b".\r\n");
    // RETR 9: multi-line on success only.
    stream.extend_from_slice(b"-ERR [SYS/PERM] no such message\r\n");
    // TOP 1 0: empty data.
    stream.extend_from_slice(b"+OK\r\n.\r\n");
    // QUIT
    stream.extend_from_slice(b"+OK bye\r\n");
    let plan = [false, true, true, true, true, false];

    let events = same_for_every_chunking(&stream, |parts| {
        let mut c = Pop3Client::new(&plan);
        for p in parts {
            c.feed(p);
        }
        assert!(c.buf.is_empty() && c.data.is_none() && c.plan.is_empty());
        c.events
    });

    let expected = vec![
        Pop3Event::Status(Pop3Reply::ok("POP3 server ready <123.456@host>")),
        Pop3Event::Status(Pop3Reply::ok("2 messages (2345 octets)")),
        Pop3Event::Data(b"1 120\r\n2 2225\r\n".to_vec()),
        Pop3Event::Status(Pop3Reply::ok("2225 octets")),
        Pop3Event::Data(body.clone()),
        Pop3Event::Status(Pop3Reply::err_code(RespCode::SysPerm, "no such message")),
        Pop3Event::Status(Pop3Reply::ok("")),
        Pop3Event::Data(Vec::new()),
        Pop3Event::Status(Pop3Reply::ok("bye")),
    ];
    assert_eq!(events, expected);

    // The body bytes, spot-checked independently of the fixture table.
    assert!(body.starts_with(b"Return-Path: <a@b.example>\r\n"));
    assert!(body.windows(15).any(|w| w == b"\r\n.leading dot\r"));
    assert!(body.windows(5).any(|w| w == b"\r\n.\r\n"));
    assert!(body.windows(3).any(|w| w == b"\n.\n"));
    assert!(body.contains(&0));
    assert!(body.windows(2000).any(|w| w.iter().all(|&b| b == b'x')));
    assert!(body.ends_with(b"last line\r\n"));

    // The greeting's APOP timestamp survives parsing.
    let Pop3Event::Status(greeting) = &events[0] else {
        unreachable!()
    };
    assert_eq!(greeting.status, Status::Ok);
    assert!(greeting.text.ends_with("<123.456@host>"));
}

#[test]
fn pop3_data_decoder_stops_exactly_at_the_terminator() {
    let (wire, data): (Vec<Vec<u8>>, Vec<Vec<u8>>) = retr_body_pieces().into_iter().unzip();
    let mut input = wire.concat();
    input.extend_from_slice(b".\r\n+OK next\r\n");
    let terminator_end = input.len() - b"+OK next\r\n".len();
    for (label, parts) in chunkings(&input) {
        let (out, used, done) = dot_decode_pieces(&parts, 1 << 20).unwrap();
        assert!(done, "{label}");
        assert_eq!(used, terminator_end, "{label}");
        assert_eq!(out, data.concat(), "{label}");
        assert_eq!(
            Pop3Response::parse(&input[used..]),
            Ok(Pop3Response::Status(Pop3Reply::ok("next"))),
            "{label}"
        );
    }
}

// ---------------------------------------------------------------------------
// 3. SMTP replies as the client reads them
// ---------------------------------------------------------------------------

fn smtp_client_reads(parts: &[&[u8]]) -> (Vec<Reply>, Vec<u8>) {
    let mut p = ReplyParser::new();
    let mut buf = BytesMut::new();
    let mut replies = Vec::new();
    for part in parts {
        buf.extend_from_slice(part);
        while let Some(r) = p.parse(&mut buf).unwrap() {
            replies.push(r);
        }
    }
    (replies, buf.to_vec())
}

#[test]
fn smtp_reply_stream_as_the_client_reads_it() {
    let stream: &[u8] = b"220 mx.example.com ESMTP ready\r\n\
        250-mx.example.com Hello client [192.0.2.1]\r\n\
        250-SIZE 35882577\r\n\
        250-8BITMIME\r\n\
        250-PIPELINING\r\n\
        250-ENHANCEDSTATUSCODES\r\n\
        250-CHUNKING\r\n\
        250 SMTPUTF8\r\n\
        250 2.1.0 Sender OK\r\n\
        250 2.1.5 Recipient OK\r\n\
        550-5.1.1 The email account that you tried to reach\r\n\
        550-5.1.1 does not exist.\r\n\
        550 5.1.1 Please check the address.\r\n\
        354 Start mail input; end with <CRLF>.<CRLF>\r\n\
        250 2.6.0 <id-1234@mx.example.com> Queued mail for delivery\r\n\
        421 4.7.0 Too many errors, closing transmission channel\r\n\
        221";
    let (replies, rest) = same_for_every_chunking(stream, smtp_client_reads);
    // The last reply has no CRLF yet: incomplete, kept.
    assert_eq!(rest, b"221");

    let expected = vec![
        Reply {
            code: 220,
            enhanced: None,
            lines: vec!["mx.example.com ESMTP ready".into()],
        },
        Reply {
            code: 250,
            enhanced: None,
            lines: vec![
                "mx.example.com Hello client [192.0.2.1]".into(),
                "SIZE 35882577".into(),
                "8BITMIME".into(),
                "PIPELINING".into(),
                "ENHANCEDSTATUSCODES".into(),
                "CHUNKING".into(),
                "SMTPUTF8".into(),
            ],
        },
        Reply::new(250, Some(EnhancedCode::new(2, 1, 0)), "Sender OK"),
        Reply::new(250, Some(EnhancedCode::new(2, 1, 5)), "Recipient OK"),
        Reply::new(
            550,
            Some(EnhancedCode::new(5, 1, 1)),
            "The email account that you tried to reach\ndoes not exist.\nPlease check the address.",
        ),
        Reply::new(354, None, "Start mail input; end with <CRLF>.<CRLF>"),
        Reply::new(
            250,
            Some(EnhancedCode::new(2, 6, 0)),
            "<id-1234@mx.example.com> Queued mail for delivery",
        ),
        Reply::new(
            421,
            Some(EnhancedCode::new(4, 7, 0)),
            "Too many errors, closing transmission channel",
        ),
    ];
    assert_eq!(replies, expected);

    let severities: Vec<Severity> = replies.iter().map(Reply::severity).collect();
    assert_eq!(
        severities,
        [
            Severity::PositiveCompletion,
            Severity::PositiveCompletion,
            Severity::PositiveCompletion,
            Severity::PositiveCompletion,
            Severity::PermanentNegative,
            Severity::PositiveIntermediate,
            Severity::PositiveCompletion,
            Severity::TransientNegative,
        ]
    );
    assert!(replies[4].is_permanent() && !replies[4].is_transient());
    assert!(replies[7].is_transient() && !replies[7].is_positive());
    // Codes outside 2xx-4xx built by hand count as permanent.
    assert_eq!(
        Reply::new(199, None, "").severity(),
        Severity::PermanentNegative
    );
    assert!(Reply::new(600, None, "").is_permanent());
    assert_eq!(
        replies[6].first_line(),
        "250 2.6.0 <id-1234@mx.example.com> Queued mail for delivery"
    );
    assert_eq!(replies[1].lines.len(), 7);
    assert!(replies[1].lines.iter().any(|l| l == "PIPELINING"));

    // Re-serialised, the replies read back as the same values.
    let rewritten: Vec<u8> = replies
        .iter()
        .flat_map(|r| r.to_string().into_bytes())
        .collect();
    let (again, rest) = smtp_client_reads(&[&rewritten]);
    assert_eq!(again, replies);
    assert!(rest.is_empty());
}

// ---------------------------------------------------------------------------
// 4. SMTP commands and DATA as the server reads them
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum SmtpEvent {
    Command(Result<SmtpCommand, smtp::CommandError>),
    Message(Vec<u8>),
}

/// Server side: command lines, switching to the dot decoder after DATA and back.
fn smtp_server_reads(parts: &[&[u8]]) -> (Vec<SmtpEvent>, Vec<u8>) {
    let mut lines = LineDecoder::new(smtp::MAX_COMMAND_LINE);
    let mut buf = BytesMut::new();
    let mut data: Option<(DotDecoder, BytesMut)> = None;
    let mut events = Vec::new();
    for part in parts {
        buf.extend_from_slice(part);
        loop {
            if let Some((dec, out)) = &mut data {
                let p = dec.decode(&buf, out).unwrap();
                let _ = buf.split_to(p.consumed);
                if !p.done {
                    assert!(buf.is_empty());
                    break;
                }
                events.push(SmtpEvent::Message(out.to_vec()));
                data = None;
                continue;
            }
            let Some(line) = lines.next_line(&mut buf).unwrap() else {
                break;
            };
            let cmd = SmtpCommand::parse(&line);
            if cmd == Ok(SmtpCommand::Data) {
                data = Some((DotDecoder::new(1 << 20), BytesMut::new()));
            }
            events.push(SmtpEvent::Command(cmd));
        }
    }
    (events, buf.to_vec())
}

#[test]
fn smtp_pipelined_commands_and_data_as_the_server_reads_them() {
    let stream: &[u8] = b"EHLO a\r\n\
        MAIL FROM:<a@b.example> SIZE=10\r\n\
        RCPT TO:<c@d.example>\r\n\
        DATA\r\n\
        From: a@b.example\r\n\
        Subject: hi\r\n\
        \r\n\
        ..dot-stuffed\r\n\
        ..\r\n\
        .\n not the end\r\n\
        mid\n.\nline\r\n\
        .x\r\n\
        smuggle\n.\r\nMAIL FROM:<evil@x.example>\r\n\
        8bit \xff\0\r\n\
        last\r\n\
        .\r\n\
        QUIT\r\n";
    let (events, rest) = same_for_every_chunking(stream, smtp_server_reads);
    assert!(rest.is_empty());
    let expected = vec![
        SmtpEvent::Command(Ok(SmtpCommand::Ehlo("a".into()))),
        SmtpEvent::Command(Ok(SmtpCommand::Mail {
            from: EnvelopeAddress::new("a@b.example").unwrap(),
            params: vec![Param::new("SIZE", "10").unwrap()],
        })),
        SmtpEvent::Command(Ok(SmtpCommand::Rcpt {
            to: EnvelopeAddress::new("c@d.example").unwrap(),
            params: vec![],
        })),
        SmtpEvent::Command(Ok(SmtpCommand::Data)),
        SmtpEvent::Message(
            b"From: a@b.example\r\n\
            Subject: hi\r\n\
            \r\n\
            .dot-stuffed\r\n\
            .\r\n\
            \n not the end\r\n\
            mid\n.\nline\r\n\
            x\r\n\
            smuggle\n.\r\nMAIL FROM:<evil@x.example>\r\n\
            8bit \xff\0\r\n\
            last\r\n"
                .to_vec(),
        ),
        SmtpEvent::Command(Ok(SmtpCommand::Quit)),
    ];
    assert_eq!(events, expected);

    // The envelope addresses are valid mailboxes.
    let SmtpEvent::Command(Ok(SmtpCommand::Mail { from, params })) = &events[1] else {
        unreachable!()
    };
    assert_eq!(
        Path::parse(from),
        Ok(Path::Mailbox(Mailbox {
            local: "a".into(),
            domain: "b.example".into()
        }))
    );
    assert_eq!(params[0].keyword(), "SIZE");
    assert_eq!(params[0].value(), Some("10"));
    let SmtpEvent::Command(Ok(SmtpCommand::Rcpt { to, .. })) = &events[2] else {
        unreachable!()
    };
    assert_eq!(Mailbox::parse(to).unwrap().domain, "d.example");

    // Re-stuffing the received message (normalised, as a relay would) and reading it
    // back gives the normalised message.
    let SmtpEvent::Message(msg) = &events[4] else {
        unreachable!()
    };
    let wire = DotStuffer::stuff_all(msg, true);
    assert!(only_crlf_line_ends(&wire));
    let (out, used, done) = dot_decode_pieces(&[&wire[..]], 1 << 20).unwrap();
    assert!(done);
    assert_eq!(used, wire.len());
    assert_eq!(out, crlf_normalised(msg));
}

// ---------------------------------------------------------------------------
// 5. Hostile input: errors, never panics, bounded memory
// ---------------------------------------------------------------------------

#[test]
fn ten_megabyte_line_without_newline_is_refused_near_the_limit() {
    const TOTAL: usize = 10 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let chunk = vec![b'A'; CHUNK];
    for limit in [
        pop3::MAX_COMMAND_LINE,
        pop3::MAX_RESPONSE_LINE,
        smtp::MAX_COMMAND_LINE,
        pop3::MAX_SASL_LINE,
        100_000,
        1 << 20,
    ] {
        let mut lines = LineDecoder::new(limit);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let err = loop {
            assert!(fed < TOTAL, "limit {limit}: 10 MB accepted without error");
            buf.extend_from_slice(&chunk);
            fed += CHUNK;
            match lines.next_line(&mut buf) {
                Ok(None) => assert!(buf.len() < limit),
                Ok(Some(_)) => panic!("limit {limit}: no line expected"),
                Err(e) => break e,
            }
        };
        assert_eq!(err, LineError::TooLong { max: limit });
        assert!(fed >= limit, "limit {limit}: refused early at {fed}");
        assert!(
            fed <= limit + CHUNK,
            "limit {limit}: refused only after {fed} bytes"
        );
    }
}

/// Feeds a fresh reply parser `buf` and then, while it wants more, what `more` gives for
/// the octets fed so far (asserted under `cap`): its first answer and the octets fed.
fn feed_until_answer(
    buf: &mut BytesMut,
    cap: usize,
    more: impl Fn(usize) -> Vec<u8>,
) -> (Result<Option<Reply>, ReplyError>, usize) {
    let mut p = ReplyParser::new();
    let mut fed = buf.len();
    loop {
        assert!(fed < cap, "no answer after {fed} octets");
        let chunk = more(fed);
        buf.extend_from_slice(&chunk);
        fed += chunk.len();
        match p.parse(buf) {
            Ok(None) => {}
            other => return (other, fed),
        }
    }
}

#[test]
fn ten_megabyte_reply_line_is_refused_near_the_limit() {
    const CHUNK: usize = 64 * 1024;
    let mut buf = BytesMut::from(&b"250-"[..]);
    let (err, fed) = feed_until_answer(&mut buf, 10 * 1024 * 1024, |_| vec![b'x'; CHUNK]);
    assert_eq!(
        err,
        Err(ReplyError::Line(LineError::TooLong {
            max: smtp::MAX_REPLY_LINE
        }))
    );
    assert!(fed <= smtp::MAX_REPLY_LINE + CHUNK);
}

#[test]
fn nul_and_invalid_utf8_commands_are_errors() {
    use pop3::CommandError as P;
    use smtp::CommandError as S;

    let pop3_cases: &[(&[u8], P)] = &[
        (b"\0\0\0\r\n", P::Unknown("\\0\\0\\0".into())),
        (b"\xff\xfe\r\n", P::Unknown("\u{fffd}\u{fffd}".into())),
        (b"US\0ER bob\r\n", P::Unknown("US\\0ER".into())),
        (b"\0\r\n", P::Unknown("\\0".into())),
        (b"\r\n", P::Empty),
    ];
    let pop3_syntax: &[&[u8]] = &[
        b"USER \xff\xfe\r\n",
        b"USER \xc3\r\n",
        b"PASS \xc3\x28\r\n",
        b"APOP bob \xff\r\n",
        b"AUTH \xffPLAIN\r\n",
        b"RETR \0\r\n",
        b"RETR 1\0\r\n",
        b"TOP 1 \x001\r\n",
        b"DELE \xef\xbc\x91\r\n", // a full-width digit one
        b"LIST 1 \0\r\n",
        b"QUIT \0\r\n",
        b"STAT \xff\r\n",
    ];
    assert_refused(Pop3Command::parse, pop3_cases, pop3_syntax, |e| {
        matches!(e, P::Syntax { .. })
    });

    let smtp_cases: &[(&[u8], S)] = &[
        (b"\0\0\0\r\n", S::Unknown("\\0\\0\\0".into())),
        (b"EH\0LO a\r\n", S::Unknown("EH\\0LO".into())),
        (b"DATA\0\r\n", S::Unknown("DATA\\0".into())),
    ];
    let smtp_syntax: &[&[u8]] = &[
        b"\xff\xfe\r\n",
        b"MAIL FROM:<\xff@b.example>\r\n",
        b"RCPT TO:<a@b\xc3>\r\n",
        b"EHLO \xc0\x80\r\n",
        b"DATA \0\r\n",
        b"QUIT \0\r\n",
        b"BDAT \0\r\n",
        b"BDAT 1\0\r\n",
        b"RCPT TO:<\0\r\n",
        b"MAIL FROM:<a@b>\0\r\n",
        b"EHLO a \0\r\n",
        b"MAIL FROM:<a@b> =x\r\n",
        b"MAIL <a@b>\r\n",
        b"MAIL FROM:<a@b\r\n",
        b"RCPT TO:<>\r\n",
        b"EHLO\r\n",
        b"BDAT x\r\n",
        b"BDAT 1 NOW\r\n",
        b"DATA now\r\n",
        b"MAIL FROM:<a@b>x\r\n",
        b"MAIL \xff\r\n",
        b"MAIL FROM:<a\rb@c>\r\n",
        b"RCPT TO:a\rb\r\n",
        // Parameters are built through `Param`: what it refuses is a syntax error.
        b"MAIL FROM:<a@b> SIZE=\r\n",
        b"MAIL FROM:<a@b> =1\r\n",
        b"MAIL FROM:<a@b> SIZE=1=2\r\n",
        b"RCPT TO:<a@b> NOTIFY=\x01\r\n",
        b"RCPT TO:<a@b> X_Y\r\n",
    ];
    assert_refused(SmtpCommand::parse, smtp_cases, smtp_syntax, |e| {
        matches!(e, S::Syntax { .. })
    });
}

/// Asserts that `parse` refuses each line of `exact` with exactly its error, and each line
/// of `syntax` with an error `is_syntax` accepts.
fn assert_refused<C: Debug + PartialEq, E: Debug + PartialEq>(
    parse: impl Fn(&[u8]) -> Result<C, E>,
    exact: &[(&[u8], E)],
    syntax: &[&[u8]],
    is_syntax: impl Fn(&E) -> bool,
) {
    for (line, err) in exact {
        assert_eq!(parse(line).as_ref(), Err(err), "{line:?}");
    }
    for line in syntax {
        assert!(matches!(parse(line), Err(e) if is_syntax(&e)), "{line:?}");
    }
}

#[test]
fn nul_and_invalid_utf8_replies_are_errors() {
    for line in [
        &b"\0+OK\r\n"[..],
        b"+OK\0\r\n",
        b"+O\0K\r\n",
        b"-ERR\xff\r\n",
        b"\xff\xfe\xfd\r\n",
        b"\0\0\0\r\n",
        b"+ \0",
        b"+",
        b"",
        b"\r\n",
    ] {
        assert!(
            matches!(Pop3Reply::parse(line), Err(pop3::ReplyError::Invalid(_))),
            "{line:?}"
        );
    }

    let malformed: &[&[u8]] = &[
        b"25\r\n",
        b"abc def\r\n",
        b"250x\r\n",
        b"650 nope\r\n",
        b"\0\0\0\r\n",
        b"2\x0050 x\r\n",
        b"250\0x\r\n",
        b"\xff\xfe\xfd\r\n",
        b"25\xff ok\r\n",
        b"250-ok\r\n25\xff ok\r\n",
        b"250-ok\r\n\0\r\n",
        b"\r\n",
    ];
    for input in malformed {
        let mut p = ReplyParser::new();
        let mut buf = BytesMut::from(*input);
        assert!(
            matches!(p.parse(&mut buf), Err(ReplyError::Malformed(_))),
            "{input:?}"
        );
        // After an error the parser starts afresh on the next reply.
        buf.clear();
        buf.extend_from_slice(b"250 ok\r\n");
        assert_eq!(
            p.parse(&mut buf),
            Ok(Some(Reply::new(250, None, "ok"))),
            "{input:?}"
        );
    }
}

#[test]
fn multi_line_data_that_never_ends_hits_the_limit() {
    const LIMIT: u64 = 1 << 20;
    const CHUNK: usize = 64 * 1024;
    let patterns: &[&[u8]] = &[
        b"an ordinary line of a message that never ends\r\n",
        b"\n.\n",
        b"\r\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n..\r\n",
        b"\r\n.\rx",
        b"\r",
        b".",
        b"\0\xff",
    ];
    for pat in patterns {
        let chunk: Vec<u8> = pat.iter().copied().cycle().take(CHUNK).collect();
        let mut d = DotDecoder::new(LIMIT);
        let mut out = BytesMut::new();
        let mut fed = 0usize;
        let err = loop {
            assert!(fed < 64 * 1024 * 1024, "{pat:?}: no error after {fed}");
            match d.decode(&chunk, &mut out) {
                Ok(p) => {
                    assert!(!p.done, "{pat:?}: ended early");
                    assert_eq!(p.consumed, chunk.len());
                    fed += p.consumed;
                }
                Err(e) => break e,
            }
            assert!(out.len() as u64 <= LIMIT, "{pat:?}: holds {}", out.len());
        };
        assert_eq!(err, DotError::TooLarge { limit: LIMIT }, "{pat:?}");
        assert!(out.len() as u64 <= LIMIT, "{pat:?}: holds {}", out.len());
        // At least the limit's worth of unstuffed data had to arrive first.
        assert!(d.total() > LIMIT, "{pat:?}");
        assert!(fed as u64 + CHUNK as u64 > LIMIT, "{pat:?}");
    }

    // A discarding decoder never stores anything, and never errors.
    let mut d = DotDecoder::discarding();
    let mut out = BytesMut::new();
    let chunk = b"line\r\n".repeat(10_000);
    for _ in 0..40 {
        let p = d.decode(&chunk, &mut out).unwrap();
        assert!(!p.done);
    }
    assert!(out.is_empty());
    assert_eq!(d.total(), 40 * chunk.len() as u64);
}

#[test]
fn endless_multi_line_reply_is_too_many_lines() {
    let line = b"250-x\r\n";
    let mut buf = BytesMut::new();
    let (err, fed) = feed_until_answer(&mut buf, 10 * 1024 * 1024, |_| line.repeat(1000));
    assert_eq!(err, Err(ReplyError::TooManyLines(smtp::MAX_REPLY_LINES)));
    // It gave up on the first line over the bound, not later.
    assert_eq!(fed - buf.len(), (smtp::MAX_REPLY_LINES + 1) * line.len());

    // Same, one byte at a time.
    let (err, fed) = feed_until_answer(&mut BytesMut::new(), 1 << 20, |fed| {
        vec![line[fed % line.len()]]
    });
    assert_eq!(err, Err(ReplyError::TooManyLines(smtp::MAX_REPLY_LINES)));
    assert_eq!(fed, (smtp::MAX_REPLY_LINES + 1) * line.len());
}

/// Random lines from protocol-ish tokens, NUL and invalid UTF-8 (no valid multi-byte
/// characters; see `valid_multibyte_utf8_after_mail_or_rcpt_never_panics`).
fn hostile_line(rng: &mut XorShift) -> Vec<u8> {
    const TOKENS: &[&[u8]] = &[
        b"MAIL",
        b"RCPT",
        b"EHLO",
        b"HELO",
        b"BDAT",
        b"AUTH",
        b"USER",
        b"PASS",
        b"TOP",
        b"LIST",
        b"APOP",
        b"DATA",
        b"QUIT",
        b"+OK",
        b"-ERR",
        b"+",
        b"250",
        b"250-",
        b"2.1.0",
        b" ",
        b" ",
        b"FROM:",
        b"TO:",
        b"FROM",
        b"TO",
        b"<",
        b">",
        b"=",
        b"\0",
        b"\xff",
        b"\xc3",
        b"\r",
        b"\n",
        b"\t",
        b"1",
        b"99999999999",
        b"[",
        b"]",
        b"-",
        b".",
        b"@",
        b"a",
        b"IN-USE",
    ];
    let n = rng.below(9);
    let mut line = Vec::new();
    for _ in 0..n {
        let token = *rng.pick(TOKENS);
        line.extend_from_slice(token);
    }
    line
}

#[test]
fn generated_hostile_lines_never_panic_and_commands_round_trip() {
    let mut rng = XorShift::new(0x5eed_0001);
    let mut parsed = 0;
    for _ in 0..50_000 {
        let line = hostile_line(&mut rng);
        if let Ok(cmd) = Pop3Command::parse(&line) {
            parsed += 1;
            let wire = cmd.to_string();
            assert_eq!(Pop3Command::parse(wire.as_bytes()), Ok(cmd), "{line:?}");
        }
        let _ = Pop3Response::parse(&line);
        let _ = Pop3Reply::parse(&line);
        let _ = SmtpCommand::parse(&line);
        let mut p = ReplyParser::with_limits(64, 4);
        let mut buf = BytesMut::from(&line[..]);
        buf.extend_from_slice(b"\r\n");
        while let Ok(Some(_)) = p.parse(&mut buf) {}
        let text = String::from_utf8_lossy(&line);
        let _ = Mailbox::parse(&text);
        let _ = Path::parse(&text);
    }
    assert!(
        parsed > 100,
        "the generator reaches valid commands ({parsed})"
    );
}

#[test]
fn smtp_envelope_addresses_cannot_carry_a_line_end() {
    // A header's CR LF can never become a second command: the address is refused whole.
    let smuggled = "a@b.example>\r\nRCPT TO:<victim@c.example";
    assert!(EnvelopeAddress::new(smuggled).is_err());
    // What can be built is one line that reads back as the same command.
    let odd = EnvelopeAddress::new("a..b@example.net").unwrap();
    let mail = SmtpCommand::Mail {
        from: odd.clone(),
        params: vec![],
    };
    let wire = mail.to_string();
    assert_eq!(wire, "MAIL FROM:<a..b@example.net>\r\n");
    let (events, rest) = same_for_every_chunking(wire.as_bytes(), smtp_server_reads);
    assert!(rest.is_empty());
    assert_eq!(events, vec![SmtpEvent::Command(Ok(mail))]);
    // A bare CR inside a path on the wire is a syntax error, not an address.
    assert!(matches!(
        SmtpCommand::parse(b"RCPT TO:<a\rb@c.example>\r\n"),
        Err(smtp::CommandError::Syntax { verb: "RCPT", .. })
    ));
}

/// Regression: a valid multi-byte character straddling the `FROM:`/`TO:` prefix once
/// made the parser slice inside it and panic.
#[test]
fn valid_multibyte_utf8_after_mail_or_rcpt_never_panics() {
    for line in [
        "MAIL FROMé\r\n",
        "MAIL FROé\r\n",
        "RCPT Té\r\n",
        "RCPT TOé\r\n",
        "MAIL €\r\n",
        "RCPT 😀\r\n",
    ] {
        let r = std::panic::catch_unwind(|| SmtpCommand::parse(line.as_bytes()));
        assert!(
            matches!(r, Ok(Err(smtp::CommandError::Syntax { .. }))),
            "{line:?} panicked or was accepted"
        );
    }
}

// ---------------------------------------------------------------------------
// 6. Dot-stuffing round trip over generated messages
// ---------------------------------------------------------------------------

/// What `DotStuffer::finish` (raw) makes of a message: a CRLF is added unless the
/// message is empty or already ends in a line end (CRLF or a bare LF; a bare CR ending
/// gets one).
fn raw_expected(msg: &[u8]) -> Vec<u8> {
    let mut v = msg.to_vec();
    if !v.is_empty() && !v.ends_with(b"\n") {
        v.extend_from_slice(b"\r\n");
    }
    v
}

fn check_round_trip(rng: &mut XorShift, msg: &[u8]) {
    for normalize in [false, true] {
        // Raw stuffing (a POP3 server) ends a bare-LF last line with `LF . CRLF`, which the
        // POP3 client's decoder reads; normalised stuffing (SMTP DATA) needs no such thing.
        let decoder = |limit: u64| {
            let d = DotDecoder::new(limit);
            if normalize {
                d
            } else {
                d.with_lf_terminator()
            }
        };
        let dot_decode_pieces =
            |pieces: &[&[u8]], limit: u64| dot_decode_pieces_with(decoder(limit), pieces);
        let wire = DotStuffer::stuff_all(msg, normalize);
        let expect = if normalize {
            crlf_normalised(msg)
        } else {
            raw_expected(msg)
        };
        let ctx = || format!("normalize {normalize} msg {msg:?} wire {:?}", &wire[..]);

        // Streaming stuffing in random pieces gives the same wire.
        let mut s = DotStuffer::new(normalize);
        let mut chunked = BytesMut::new();
        for piece in random_pieces(rng, msg) {
            s.stuff(piece, &mut chunked);
        }
        s.finish(&mut chunked);
        assert_eq!(chunked, wire, "chunked stuffing: {}", ctx());

        // Whole, with trailing bytes that must be left alone.
        let mut with_tail = wire.to_vec();
        with_tail.extend_from_slice(b"QUIT\r\n");
        let (out, used, done) = dot_decode_pieces(&[&with_tail], 1 << 20).unwrap();
        assert!(done, "{}", ctx());
        assert_eq!(used, wire.len(), "{}", ctx());
        assert_eq!(out, expect, "{}", ctx());

        // Random pieces, and a random two-way split.
        let (out, used, done) =
            dot_decode_pieces(&random_pieces(rng, &with_tail), 1 << 20).unwrap();
        assert!(
            done && used == wire.len() && out == expect,
            "pieces: {}",
            ctx()
        );
        let cut = rng.below(wire.len() + 1);
        let (out, used, done) = dot_decode_pieces(&[&wire[..cut], &wire[cut..]], 1 << 20).unwrap();
        assert!(
            done && used == wire.len() && out == expect,
            "cut {cut}: {}",
            ctx()
        );

        // The limit is on unstuffed octets: exactly enough passes, one less fails.
        let exact = expect.len() as u64;
        assert!(
            dot_decode_pieces(&[&wire[..]], exact).unwrap().2,
            "{}",
            ctx()
        );
        if exact > 0 {
            assert_eq!(
                dot_decode_pieces(&[&wire[..]], exact - 1),
                Err(DotError::TooLarge { limit: exact - 1 }),
                "{}",
                ctx()
            );
        }

        // Discarding counts the same and stores nothing.
        let mut d = if normalize {
            DotDecoder::discarding()
        } else {
            DotDecoder::discarding().with_lf_terminator()
        };
        let mut sink = BytesMut::new();
        let p = d.decode(&with_tail, &mut sink).unwrap();
        assert!(p.done && p.consumed == wire.len() && sink.is_empty());
        assert_eq!(d.total(), exact, "{}", ctx());

        if normalize {
            assert!(only_crlf_line_ends(&wire), "wire: {}", ctx());
            assert!(only_crlf_line_ends(&out), "output: {}", ctx());
        }
    }
}

#[test]
fn stuffing_round_trips_over_generated_messages() {
    let mut rng = XorShift::new(0xd07_5eed);
    let mut count = 0;

    // Every message up to five bytes over the four bytes that matter most.
    let small: &[u8] = b".\r\na";
    let mut msgs: Vec<Vec<u8>> = vec![Vec::new()];
    let mut frontier = msgs.clone();
    for _ in 0..5 {
        frontier = frontier
            .iter()
            .flat_map(|m| {
                small.iter().map(move |&b| {
                    let mut n = m.clone();
                    n.push(b);
                    n
                })
            })
            .collect();
        msgs.extend(frontier.iter().cloned());
    }
    assert_eq!(msgs.len(), 1 + 4 + 16 + 64 + 256 + 1024);
    for m in &msgs {
        check_round_trip(&mut rng, m);
        count += 1;
    }

    // Random messages from an alphabet heavy in the bytes that matter.
    let alphabet: &[u8] = &[
        b'.', b'.', b'.', b'\r', b'\r', b'\r', b'\n', b'\n', b'\n', b'a', b'a', 0, 0xff, b' ',
    ];
    for i in 0..3000 {
        let len = if i % 10 == 0 {
            rng.below(400)
        } else {
            rng.below(40)
        };
        let msg: Vec<u8> = (0..len).map(|_| *rng.pick(alphabet)).collect();
        check_round_trip(&mut rng, &msg);
        count += 1;
    }
    assert!(count >= 2000);
}

/// What the (strict) decoder must make of wire bytes up to its terminator: a dot at the
/// start of the input or after CRLF is dropped; a dot after a bare LF is dropped only
/// when another dot follows (stuffing); every other byte is kept.
fn unstuff_model(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    for (i, &b) in wire.iter().enumerate() {
        let after_crlf = i == 0 || (i >= 2 && &wire[i - 2..i] == b"\r\n");
        let after_lf = i >= 1 && wire[i - 1] == b'\n' && !after_crlf;
        let stuffing = b == b'.' && (after_crlf || (after_lf && wire.get(i + 1) == Some(&b'.')));
        if !stuffing {
            out.push(b);
        }
    }
    out
}

/// Where the data ends: just after the first CRLF . CRLF, the start counting as a CRLF.
fn terminator_end(wire: &[u8]) -> Option<usize> {
    end_after_first(wire, b"\r\n.\r\n")
}

/// Where the data ends for the POP3 client's decoder: just after the first `LF . CRLF`
/// (that LF bare or part of a CRLF), the start counting as a CRLF.
fn lenient_terminator_end(wire: &[u8]) -> Option<usize> {
    end_after_first(wire, b"\n.\r\n")
}

/// Just after the first `marker` in `wire`, the start of `wire` counting as a CRLF.
fn end_after_first(wire: &[u8], marker: &[u8]) -> Option<usize> {
    let mut with_start = b"\r\n".to_vec();
    with_start.extend_from_slice(wire);
    with_start
        .windows(marker.len())
        .position(|w| w == marker)
        .map(|p| p + marker.len() - 2)
}

#[test]
fn lenient_dot_decoder_also_ends_on_lf_dot_crlf() {
    let mut rng = XorShift::new(0x1e_d07);
    let alphabet: &[u8] = &[b'.', b'.', b'\r', b'\r', b'\n', b'\n', b'a', 0];
    let mut ended_on_bare_lf = 0;
    for i in 0..5000 {
        let len = rng.below(if i % 10 == 0 { 200 } else { 30 });
        let mut wire: Vec<u8> = (0..len).map(|_| *rng.pick(alphabet)).collect();
        if i % 3 == 0 {
            wire.extend_from_slice(b"x\n.\r\n+OK");
        }
        let decode = |pieces: &[&[u8]]| {
            dot_decode_pieces_with(DotDecoder::new(1 << 20).with_lf_terminator(), pieces).unwrap()
        };
        let whole = decode(&[&wire]);
        match lenient_terminator_end(&wire) {
            Some(end) => {
                assert_eq!((whole.1, whole.2), (end, true), "{wire:?}");
                assert_eq!(whole.0, unstuff_model(&wire[..end - 3]), "{wire:?}");
                if terminator_end(&wire) != Some(end) {
                    ended_on_bare_lf += 1;
                }
            }
            None => assert!(!whole.2 && whole.1 == wire.len(), "{wire:?}"),
        }
        let cut = rng.below(wire.len() + 1);
        assert_eq!(decode(&[&wire[..cut], &wire[cut..]]), whole, "{wire:?}");
        assert_eq!(decode(&random_pieces(&mut rng, &wire)), whole, "{wire:?}");
    }
    assert!(ended_on_bare_lf > 500, "{ended_on_bare_lf}");
}

#[test]
fn dot_decoder_matches_a_model_on_random_wire_bytes() {
    let mut rng = XorShift::new(0x00d0_7ded);
    let alphabet: &[u8] = &[b'.', b'.', b'\r', b'\r', b'\n', b'\n', b'a', 0, 0xff];
    let mut ended = 0;
    for i in 0..5000 {
        let len = rng.below(if i % 10 == 0 { 200 } else { 30 });
        let mut wire: Vec<u8> = (0..len).map(|_| *rng.pick(alphabet)).collect();
        if i % 3 == 0 {
            wire.extend_from_slice(b"\r\n.\r\n+OK");
        }
        let whole = dot_decode_pieces(&[&wire], 1 << 20).unwrap();
        match terminator_end(&wire) {
            Some(end) => {
                ended += 1;
                assert_eq!(whole.1, end, "{wire:?}");
                assert!(whole.2, "{wire:?}");
                assert_eq!(whole.0, unstuff_model(&wire[..end - 3]), "{wire:?}");
            }
            None => {
                assert!(!whole.2, "{wire:?}");
                assert_eq!(whole.1, wire.len());
                // At most the CR of a line-start "." CR, or a dot after a bare LF and the
                // CR after it, can still be held back.
                let model = unstuff_model(&wire);
                assert!(model.starts_with(&whole.0), "{wire:?}");
                assert!(model.len() - whole.0.len() <= 2, "{wire:?}");
            }
        }
        let pieces = random_pieces(&mut rng, &wire);
        assert_eq!(
            dot_decode_pieces(&pieces, 1 << 20).unwrap(),
            whole,
            "{wire:?}"
        );
        let cut = rng.below(wire.len() + 1);
        let two = [&wire[..cut], &wire[cut..]];
        assert_eq!(dot_decode_pieces(&two, 1 << 20).unwrap(), whole, "{wire:?}");
    }
    assert!(ended > 1500, "{ended}");
}

#[test]
fn stuffer_rules_by_hand() {
    // The exact finish() rule, including the bare-LF and bare-CR endings.
    // (message, stuffed as it is, stuffed with its line endings normalised).
    let cases: &[(&[u8], &[u8], &[u8])] = &[
        (b"", b".\r\n", b".\r\n"),
        (b"a", b"a\r\n.\r\n", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n", b"a\r\n.\r\n"),
        (b"a\n", b"a\n.\r\n", b"a\r\n.\r\n"),
        (b"a\r", b"a\r\r\n.\r\n", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n", b"..\r\n.\r\n"),
        (b"\r\n.\r\n", b"\r\n..\r\n.\r\n", b"\r\n..\r\n.\r\n"),
        (b"x\n.\n", b"x\n..\n.\r\n", b"x\r\n..\r\n.\r\n"),
        (b"\r.\n.", b"\r.\n..\r\n.\r\n", b"\r\n..\r\n..\r\n.\r\n"),
        (b"\n\r", b"\n\r\r\n.\r\n", b"\r\n\r\n.\r\n"),
    ];
    for (msg, raw, norm) in cases {
        assert_eq!(&DotStuffer::stuff_all(msg, false)[..], *raw, "{msg:?}");
        assert_eq!(&DotStuffer::stuff_all(msg, true)[..], *norm, "{msg:?}");
    }
}
