//! Line framing: finds CRLF- (or LF-) terminated lines in a growing buffer; line ends.
//!
//! Responsible for: a hard maximum line length and remembering how far it has
//! scanned, so re-feeding a buffer one byte at a time stays linear; the whole-message
//! form of SMTP's line-end rule (`crlf_normalised`), which checks and judges compare with.
//! Must never: return a line longer than its maximum, or drop bytes that follow a line.

use bytes::BytesMut;
use thiserror::Error;

/// Why a line could not be framed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LineError {
    /// No line terminator within `max` octets.
    #[error("line longer than {max} octets")]
    TooLong {
        /// The limit that was exceeded, terminator included.
        max: usize,
    },
}

/// A resumable line splitter with a maximum length (terminator included).
#[derive(Debug, Clone)]
pub struct LineDecoder {
    max: usize,
    scanned: usize,
}

impl LineDecoder {
    /// A decoder that refuses lines longer than `max` octets, CRLF included.
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(2),
            scanned: 0,
        }
    }

    /// The maximum line length, terminator included.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Changes the maximum (e.g. SASL continuation lines may be longer than commands).
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(2);
    }

    /// Length (terminator included) of the first complete line of `buf`, if there is one.
    ///
    /// `Ok(None)` means *incomplete*: call again with more bytes appended to the same buffer.
    pub fn find(&mut self, buf: &[u8]) -> Result<Option<usize>, LineError> {
        let start = self.scanned.min(buf.len());
        let window_end = buf.len().min(self.max);
        if start < window_end {
            if let Some(pos) = buf[start..window_end].iter().position(|&b| b == b'\n') {
                self.scanned = 0;
                return Ok(Some(start + pos + 1));
            }
        }
        if buf.len() >= self.max {
            self.scanned = 0;
            return Err(LineError::TooLong { max: self.max });
        }
        self.scanned = buf.len();
        Ok(None)
    }

    /// Splits the first complete line off `buf` (terminator included), leaving what follows.
    pub fn next_line(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, LineError> {
        Ok(self.find(buf)?.map(|len| buf.split_to(len)))
    }

    /// Forgets the scan position (call after the caller consumed or discarded bytes itself).
    pub fn reset(&mut self) {
        self.scanned = 0;
    }
}

/// The line without its trailing LF or CRLF.
pub fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `data` as it reads after SMTP DATA normalised it: CRLF, bare CR and bare LF each
/// become one CRLF, and non-empty data not ending in a line end gets a final CRLF.
///
/// What a normalising `DotStuffer`'s output decodes to, computed whole and separately
/// from it (the stuffer never calls this). At most twice the input plus two octets.
pub fn crlf_normalised(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_crlf_and_bare_lf_lines_and_keeps_the_rest() {
        let mut d = LineDecoder::new(64);
        let mut buf = BytesMut::from(&b"USER a\r\nPASS b\nNOOP"[..]);
        assert_eq!(&d.next_line(&mut buf).unwrap().unwrap()[..], b"USER a\r\n");
        assert_eq!(&d.next_line(&mut buf).unwrap().unwrap()[..], b"PASS b\n");
        assert_eq!(d.next_line(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"NOOP");
    }

    #[test]
    fn split_at_every_byte_gives_the_same_lines() {
        let input = b"+OK hi\r\n-ERR [IN-USE] busy\r\n\r\nx\n";
        let whole = {
            let mut d = LineDecoder::new(64);
            let mut buf = BytesMut::from(&input[..]);
            let mut v = Vec::new();
            while let Some(l) = d.next_line(&mut buf).unwrap() {
                v.push(l.to_vec());
            }
            v
        };
        assert_eq!(whole.len(), 4);
        for split in 0..=input.len() {
            let mut d = LineDecoder::new(64);
            let mut buf = BytesMut::new();
            let mut v = Vec::new();
            for part in [&input[..split], &input[split..]] {
                buf.extend_from_slice(part);
                while let Some(l) = d.next_line(&mut buf).unwrap() {
                    v.push(l.to_vec());
                }
            }
            assert_eq!(v, whole, "split at {split}");
        }
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_over_fails() {
        let mut d = LineDecoder::new(8);
        let mut buf = BytesMut::from(&b"123456\r\n"[..]);
        assert_eq!(d.next_line(&mut buf).unwrap().unwrap().len(), 8);
        let mut buf = BytesMut::from(&b"1234567\r\n"[..]);
        assert_eq!(d.next_line(&mut buf), Err(LineError::TooLong { max: 8 }));
    }

    #[test]
    fn ten_megabytes_without_newline_is_refused_after_the_limit() {
        let mut d = LineDecoder::new(512);
        let mut buf = BytesMut::new();
        let chunk = vec![b'a'; 100];
        let mut fed = 0;
        let err = loop {
            buf.extend_from_slice(&chunk);
            fed += chunk.len();
            match d.next_line(&mut buf) {
                Ok(None) => assert!(fed < 10 * 1024 * 1024),
                Ok(Some(_)) => panic!("no line expected"),
                Err(e) => break e,
            }
        };
        assert_eq!(err, LineError::TooLong { max: 512 });
        assert!(fed <= 600, "refused after {fed} bytes");
    }

    #[test]
    fn trims_terminators() {
        assert_eq!(trim_eol(b"a\r\n"), b"a");
        assert_eq!(trim_eol(b"a\n"), b"a");
        assert_eq!(trim_eol(b"a"), b"a");
        assert_eq!(trim_eol(b"a\r\r\n"), b"a\r");
    }

    #[test]
    fn crlf_normalised_makes_every_line_end_crlf_and_finishes_the_data() {
        let cases: [(&[u8], &[u8]); 5] = [
            (b"", b""),
            (b"a", b"a\r\n"),
            (b"a\r\nb\nc\rd", b"a\r\nb\r\nc\r\nd\r\n"),
            (b"\r\r\n\n", b"\r\n\r\n\r\n"),
            (b"x\r", b"x\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(crlf_normalised(input), want, "{input:?}");
        }
    }
}
