//! Dot-stuffing (sending) and dot-unstuffing (receiving) of multi-line data:
//! POP3 multi-line responses and SMTP DATA share the same rules.
//!
//! Responsible for: a streaming, resumable decoder that ends on `CRLF . CRLF` (a bare
//! `LF . LF` never ends the data early), and, for a POP3 client only, also on `LF . CRLF`
//! (how a server that keeps bare-LF line ends finishes its data; an SMTP server must never
//! accept it, that is the SMTP smuggling shape); and a streaming stuffer that can
//! normalise bare CR and LF to CRLF (SMTP smuggling defence).
//!
//! Lines after a bare LF: such servers stuff a leading dot there as they would after
//! CRLF, so `LF . .` unstuffs to `LF .`; a single dot followed by anything else (a bare
//! LF, text) was never stuffed and is kept as data.
//! Must never: hold more than the caller's limit, or look further than the terminator.

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// The searcher for a line that starts with a dot, built once: building one per call
/// costs more than the search on the short runs between such lines.
static LINE_DOT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n."));

/// Why multi-line data could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DotError {
    /// The data grew beyond the caller's limit before its terminator. The decoder is spent:
    /// callers that must read on to the terminator use an unbounded or discarding decoder
    /// and check [`DotDecoder::total`] themselves.
    #[error("multi-line data exceeds {limit} octets")]
    TooLarge {
        /// The limit in octets of unstuffed data.
        limit: u64,
    },
}

/// What one call to [`DotDecoder::decode`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes consumed; bytes after the terminator are left for the caller.
    pub consumed: usize,
    /// True once the terminator (`CRLF . CRLF`, or `LF . CRLF`) was consumed.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line; `crlf` tells whether the previous line ended in CRLF.
    Start { crlf: bool },
    /// Saw `.` at the start of a line after CRLF: terminator or stuffing.
    Dot,
    /// Saw `.` CR at the start of a line after CRLF.
    DotCr,
    /// Saw `.` at the start of a line after a bare LF: terminator, stuffing or data.
    LfDot,
    /// Saw `.` CR at the start of a line after a bare LF.
    LfDotCr,
    /// Inside a line.
    Body,
    /// Inside a line, just after CR.
    Cr,
    /// The terminator was consumed.
    Done,
}

/// Resumable decoder of dot-stuffed data up to `CRLF . CRLF` (or `LF . CRLF`).
///
/// The start counts as following a CRLF (the status line or the DATA command ended in one),
/// so `.\r\n` alone is empty data.
#[derive(Debug, Clone)]
pub struct DotDecoder {
    state: State,
    limit: u64,
    total: u64,
    discard: bool,
    lf_end: bool,
}

impl DotDecoder {
    /// A decoder that fails with [`DotError::TooLarge`] past `limit` octets of unstuffed data.
    pub fn new(limit: u64) -> Self {
        Self {
            state: State::Start { crlf: true },
            limit,
            total: 0,
            discard: false,
            lf_end: false,
        }
    }

    /// Also ends on `LF . CRLF`, the end a server that keeps bare-LF line ends sends (for a
    /// POP3 client; an SMTP server must never accept it).
    pub fn with_lf_terminator(mut self) -> Self {
        self.lf_end = true;
        self
    }

    /// A decoder that counts but never stores, for reading past a size limit to the terminator.
    pub fn discarding() -> Self {
        Self {
            discard: true,
            ..Self::new(u64::MAX)
        }
    }

    /// Stops storing output from now on; counting and terminator detection go on.
    pub fn start_discarding(&mut self) {
        self.discard = true;
        self.limit = u64::MAX;
    }

    /// Octets of unstuffed data seen so far (stored or not).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// True once the terminator was seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn emit(&mut self, out: &mut BytesMut, bytes: &[u8]) -> Result<(), DotError> {
        self.total += bytes.len() as u64;
        if self.total > self.limit {
            return Err(DotError::TooLarge { limit: self.limit });
        }
        if !self.discard {
            out.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// Decodes as much of `input` as possible, appending unstuffed data to `out`.
    ///
    /// Stops right after the terminator; the remaining input belongs to whatever follows.
    pub fn decode(&mut self, input: &[u8], out: &mut BytesMut) -> Result<Progress, DotError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => break,
                State::Start { crlf } => {
                    if b == b'.' {
                        // A dot may start the terminator or be stuffing, after CRLF and
                        // after a bare LF alike; the next byte tells.
                        self.state = if crlf { State::Dot } else { State::LfDot };
                        i += 1;
                        continue;
                    }
                    self.state = State::Body;
                }
                State::LfDot => match b {
                    b'.' => {
                        // `LF . .`: stuffing, one dot is data.
                        self.emit(out, b".")?;
                        self.state = State::Body;
                        i += 1;
                    }
                    b'\r' => {
                        self.state = State::LfDotCr;
                        i += 1;
                    }
                    _ => {
                        // Never stuffed (a lone-dot line ended by a bare LF, or text): data.
                        self.emit(out, b".")?;
                        self.state = State::Body;
                    }
                },
                State::LfDotCr => {
                    if b == b'\n' && self.lf_end {
                        self.state = State::Done;
                        i += 1;
                        break;
                    }
                    self.emit(out, b".\r")?;
                    self.state = State::Cr;
                }
                State::Dot => {
                    if b == b'\r' {
                        self.state = State::DotCr;
                        i += 1;
                        continue;
                    }
                    // A stuffed dot: drop it, the byte belongs to the line.
                    self.state = State::Body;
                }
                State::DotCr => {
                    if b == b'\n' {
                        self.state = State::Done;
                        i += 1;
                        break;
                    }
                    // `.` CR then something else: the dot was stuffing, the CR is data.
                    self.emit(out, b"\r")?;
                    self.state = State::Cr;
                }
                State::Body => {
                    // Only a line that starts with a dot needs decoding: everything up to
                    // the next one (or the end of the input) is data as it stands, line
                    // ends included. In Body the byte before `rest` is never a CR (that
                    // is state Cr), so a line end at its very start is a bare LF.
                    let rest = &input[i..];
                    let (n, next) = match LINE_DOT.find(rest) {
                        Some(p) => (
                            p + 1,
                            State::Start {
                                crlf: p > 0 && rest[p - 1] == b'\r',
                            },
                        ),
                        None => (
                            rest.len(),
                            match rest {
                                [.., b'\r', b'\n'] => State::Start { crlf: true },
                                [.., b'\n'] => State::Start { crlf: false },
                                [.., b'\r'] => State::Cr,
                                _ => State::Body,
                            },
                        ),
                    };
                    self.emit(out, &rest[..n])?;
                    self.state = next;
                    i += n;
                }
                State::Cr => {
                    self.emit(out, &input[i..=i])?;
                    self.state = match b {
                        b'\n' => State::Start { crlf: true },
                        b'\r' => State::Cr,
                        _ => State::Body,
                    };
                    i += 1;
                }
            }
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
        })
    }
}

/// The length of the run of whole lines at the start of `input` that normalised stuffing
/// leaves as they are: each ends in CRLF and holds no other CR or LF; the run stops after a
/// line followed by one that starts with a dot (the caller stuffs it at that line start).
/// 0 when the first line is not such a line, or is not complete within `input`.
fn clean_lines(input: &[u8]) -> usize {
    let mut end = 0;
    for lf in memchr::memchr_iter(b'\n', input) {
        // The line `input[end..=lf]` must be `text CR LF` with no CR in `text`.
        if lf == end
            || input[lf - 1] != b'\r'
            || memchr::memchr(b'\r', &input[end..lf - 1]).is_some()
        {
            break;
        }
        end = lf + 1;
        // A dot starting the next line is stuffed by the caller, at that line start.
        if input.get(end) == Some(&b'.') {
            break;
        }
    }
    end
}

/// Streaming dot-stuffer for sending multi-line data.
///
/// With `normalize`, bare CR and bare LF become CRLF (required for SMTP DATA);
/// without it the bytes go out as they are, a dot added at each line start.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    normalize: bool,
    at_line_start: bool,
    pending_cr: bool,
    ends_crlf: bool,
}

impl DotStuffer {
    /// A stuffer; `normalize` turns bare CR and LF into CRLF.
    pub fn new(normalize: bool) -> Self {
        Self {
            normalize,
            at_line_start: true,
            pending_cr: false,
            ends_crlf: true,
        }
    }

    /// Appends the stuffed form of `input` to `out`.
    pub fn stuff(&mut self, input: &[u8], out: &mut BytesMut) {
        out.reserve(input.len() + input.len() / 64 + 8);
        if self.normalize {
            self.stuff_normalized(input, out);
        } else {
            self.stuff_raw(input, out);
        }
    }

    fn stuff_raw(&mut self, input: &[u8], out: &mut BytesMut) {
        let mut i = 0;
        while i < input.len() {
            if self.at_line_start && input[i] == b'.' {
                out.put_u8(b'.');
            }
            let rest = &input[i..];
            let n = rest
                .iter()
                .position(|&c| c == b'\n')
                .map_or(rest.len(), |p| p + 1);
            let chunk = &rest[..n];
            out.extend_from_slice(chunk);
            self.at_line_start = chunk.last() == Some(&b'\n');
            self.ends_crlf = if chunk.len() >= 2 {
                chunk.ends_with(b"\r\n")
            } else {
                self.pending_cr && chunk == b"\n"
            };
            self.pending_cr = chunk.last() == Some(&b'\r');
            i += n;
        }
    }

    fn stuff_normalized(&mut self, input: &[u8], out: &mut BytesMut) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if self.pending_cr {
                self.pending_cr = false;
                out.put_slice(b"\r\n");
                self.at_line_start = true;
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.pending_cr = true;
                    i += 1;
                }
                b'\n' => {
                    out.put_slice(b"\r\n");
                    self.at_line_start = true;
                    i += 1;
                }
                _ => {
                    if self.at_line_start && b == b'.' {
                        out.put_u8(b'.');
                    }
                    // Whole CRLF-ended lines that need nothing go out as they are: up to
                    // the first bare CR, bare LF, or line starting with a dot.
                    let rest = &input[i..];
                    let n = clean_lines(rest);
                    if n > 0 {
                        out.extend_from_slice(&rest[..n]);
                        self.at_line_start = true;
                        i += n;
                        continue;
                    }
                    let n = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                    out.extend_from_slice(&rest[..n]);
                    self.at_line_start = false;
                    i += n;
                }
            }
        }
        self.ends_crlf = self.at_line_start && !self.pending_cr;
    }

    /// Ends the data: a CRLF if the last line is unfinished, then `.` CRLF. Without
    /// normalising, a last line ended by a bare LF is finished (`LF . CRLF` follows, as
    /// servers that keep bare-LF line ends send it).
    pub fn finish(&mut self, out: &mut BytesMut) {
        // A pending bare CR (normalising) or an unfinished last line both need one.
        let finished = if self.normalize {
            self.ends_crlf
        } else {
            self.at_line_start
        };
        if !finished {
            out.put_slice(b"\r\n");
        }
        out.put_slice(b".\r\n");
        *self = Self::new(self.normalize);
    }

    /// Stuffs a whole message and its terminator in one go.
    pub fn stuff_all(input: &[u8], normalize: bool) -> BytesMut {
        let mut out = BytesMut::with_capacity(input.len() + input.len() / 64 + 8);
        let mut s = Self::new(normalize);
        s.stuff(input, &mut out);
        s.finish(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> (Vec<u8>, usize) {
        let mut d = DotDecoder::new(1 << 20);
        let mut out = BytesMut::new();
        let p = d.decode(input, &mut out).unwrap();
        assert!(p.done, "not done: {:?}", String::from_utf8_lossy(input));
        (out.to_vec(), p.consumed)
    }

    /// `wire`, complete with its terminator, decodes to `data`.
    fn decodes_to(wire: &[u8], data: &[u8]) {
        assert_eq!(
            decode_all(wire).0,
            data,
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }

    #[test]
    fn hand_written_wire_bytes_decode() {
        let (out, used) = decode_all(b"line 1\r\n..dot\r\n\r\n.\r\nNEXT");
        assert_eq!(out, b"line 1\r\n.dot\r\n\r\n");
        assert_eq!(used, 20);
        assert_eq!(decode_all(b".\r\n").0, b"");
    }

    #[test]
    fn bare_lf_dot_lf_does_not_end_the_data() {
        // A lone dot ended by a bare LF was never stuffed: it stays, with its line.
        decodes_to(b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n");
        decodes_to(b"a\r\n.\nb\r\n.\r\n", b"a\r\n\nb\r\n");
    }

    #[test]
    fn after_a_bare_lf_dots_unstuff_end_or_stay() {
        // `LF . CRLF` ends the data of a server that keeps bare-LF line ends, for a POP3
        // client that asks for it; it is data otherwise.
        let input = b"a\nb\n.\r\nNEXT";
        let mut d = DotDecoder::new(100).with_lf_terminator();
        let mut out = BytesMut::new();
        let p = d.decode(input, &mut out).unwrap();
        assert_eq!((&out[..], p.consumed, p.done), (&b"a\nb\n"[..], 7, true));
        let mut out = BytesMut::new();
        let p = DotDecoder::new(100).decode(input, &mut out).unwrap();
        assert_eq!((&out[..], p.done), (&b"a\nb\n.\r\nNEXT"[..], false));
        // `LF . .` is a stuffed dot; `LF . x` and `LF . CR x` are data.
        decodes_to(b"a\n..x\r\n.\r\n", b"a\n.x\r\n");
        decodes_to(b"a\n.x\r\n.\r\n", b"a\n.x\r\n");
        decodes_to(b"a\n.\rx\r\n.\r\n", b"a\n.\rx\r\n");
    }

    #[test]
    fn keeps_nul_8bit_and_bare_cr() {
        decodes_to(b"a\0b\xff\rc\r\r\n.\r\n", b"a\0b\xff\rc\r\r\n");
        decodes_to(b".\rx\r\n.\r\n", b"\rx\r\n");
    }

    #[test]
    fn stuffing_then_unstuffing_round_trips() {
        let cases: &[&[u8]] = &[
            b"",
            b"a",
            b".",
            b"..\r\n.\r\n",
            b"x\r\n.\r\n.y\r\n",
            b"hello\r\nworld\r\n",
            b"\r\n\r\n",
            b".\r",
        ];
        for &c in cases {
            let wire = DotStuffer::stuff_all(c, false);
            let (out, used) = decode_all(&wire);
            assert_eq!(used, wire.len());
            let mut expect = c.to_vec();
            if !expect.is_empty() && !expect.ends_with(b"\n") {
                expect.extend_from_slice(b"\r\n");
            }
            assert_eq!(out, expect, "case {:?}", String::from_utf8_lossy(c));
        }
    }

    #[test]
    fn stuffer_hand_written_bytes() {
        assert_eq!(
            &DotStuffer::stuff_all(b".a\r\nb", false)[..],
            b"..a\r\nb\r\n.\r\n"
        );
        assert_eq!(&DotStuffer::stuff_all(b"", false)[..], b".\r\n");
        assert_eq!(&DotStuffer::stuff_all(b"a\r\n", false)[..], b"a\r\n.\r\n");
        assert_eq!(
            &DotStuffer::stuff_all(b"a\n.b\n", false)[..],
            b"a\n..b\n.\r\n"
        );
        assert_eq!(
            &DotStuffer::stuff_all(b"a\n.b\rc\r", true)[..],
            b"a\r\n..b\r\nc\r\n.\r\n"
        );
        assert_eq!(
            &DotStuffer::stuff_all(b"a\r\n\n.", true)[..],
            b"a\r\n\r\n..\r\n.\r\n"
        );
    }

    #[test]
    fn stuffer_chunking_does_not_change_output() {
        let input = b"a\r\n.b\n.\r\r\n..\rx\ny\r";
        for normalize in [false, true] {
            let whole = DotStuffer::stuff_all(input, normalize);
            for split in 0..=input.len() {
                let mut s = DotStuffer::new(normalize);
                let mut out = BytesMut::new();
                s.stuff(&input[..split], &mut out);
                s.stuff(&input[split..], &mut out);
                s.finish(&mut out);
                assert_eq!(out, whole, "normalize {normalize} split {split}");
            }
        }
    }

    #[test]
    fn decoder_split_at_every_byte_gives_the_same_result() {
        let input = b"x\r\n..y\r\n.\rz\r\na\n.\n\r\n.\r\nLEFTOVER";
        let (whole, used) = decode_all(input);
        for split in 0..=input.len() {
            let mut d = DotDecoder::new(1 << 20);
            let mut out = BytesMut::new();
            let p1 = d.decode(&input[..split], &mut out).unwrap();
            assert_eq!(p1.consumed, split.min(used));
            let p2 = if p1.done {
                p1
            } else {
                let p = d.decode(&input[split..], &mut out).unwrap();
                assert_eq!(split + p.consumed, used, "split {split}");
                p
            };
            assert!(p2.done);
            assert_eq!(out.to_vec(), whole, "split {split}");
        }
    }

    #[test]
    fn data_that_never_ends_hits_the_limit() {
        let mut d = DotDecoder::new(1000);
        let mut out = BytesMut::new();
        let chunk = b"0123456789\r\n".repeat(10);
        let mut fed = 0;
        let err = loop {
            match d.decode(&chunk, &mut out) {
                Ok(p) => {
                    assert!(!p.done);
                    fed += p.consumed;
                    assert!(fed < 10_000);
                }
                Err(e) => break e,
            }
        };
        assert_eq!(err, DotError::TooLarge { limit: 1000 });
        assert!(out.len() <= 1000);
    }

    #[test]
    fn discarding_counts_but_stores_nothing() {
        let mut d = DotDecoder::discarding();
        let mut out = BytesMut::new();
        let p = d.decode(b"abc\r\n..\r\n.\r\n", &mut out).unwrap();
        assert!(p.done);
        assert!(out.is_empty());
        assert_eq!(d.total(), 8);
    }
}
