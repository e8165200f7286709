//! A minimal HTTP/1.1 client for one request and its response over a stream the caller
//! opened (the OAuth2 token endpoint, over TLS through the crate's dialer).
//!
//! Responsible for: writing one request with `Connection: close`, and reading its response
//! bounded in size: the status line and headers (parsed with `httparse`), informational
//! `1xx` responses skipped, and a body framed by `Content-Length`, by chunked transfer
//! coding, or by the end of the connection. [`parse`] is pure and resumable: it tells an
//! incomplete response (read more) from an invalid one.
//! Must never: follow a redirect, read past its bound, panic on any input, or log a
//! request or response body (they carry secrets).

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most headers a response may have.
const MAX_HEADERS: usize = 64;

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (`200`, `400` ...).
    pub status: u16,
    /// The reason phrase, as sent (may be empty).
    pub reason: String,
    /// The `Content-Type` header's value, when there is one.
    pub content_type: Option<String>,
    /// The body, with any chunked transfer coding removed.
    pub body: Vec<u8>,
}

/// Why no usable response was read.
#[derive(Debug, Error)]
pub enum HttpError {
    /// The connection failed while writing or reading.
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The response grew past its bound before it was complete.
    #[error("the response is larger than {limit} octets")]
    TooLarge {
        /// The bound applied.
        limit: usize,
    },
    /// The response is not HTTP/1.x as it must be.
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    /// The connection ended before the response was complete.
    #[error("the connection closed before the response was complete")]
    Truncated,
}

/// How the body of a response is delimited.
enum Framing {
    /// Exactly this many octets.
    Length(usize),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the connection closes.
    Close,
    /// No body (`204`, `304`).
    None,
}

/// A `POST` of a form (`application/x-www-form-urlencoded`) with `Connection: close`:
/// the exact bytes to send. `host` is the `Host` header's value (with its port when it is
/// not the scheme's default).
pub fn form_post(host: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\n\
         Host: {host}\r\n\
         User-Agent: popbridge/{}\r\n\
         Accept: application/json\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         \r\n\
         {body}",
        env!("CARGO_PKG_VERSION"),
        body.len()
    )
    .into_bytes()
}

/// Sends `request` and reads the response, at most `limit` octets of it (status line and
/// headers included). The caller bounds the whole exchange in time.
pub async fn exchange<S>(io: &mut S, request: &[u8], limit: usize) -> Result<Response, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    io.write_all(request).await?;
    io.flush().await?;
    let mut buf: Vec<u8> = Vec::with_capacity(limit.min(16 * 1024));
    let mut chunk = vec![0u8; 8 * 1024];
    loop {
        if let Some(r) = parse(&buf, false)? {
            return Ok(r);
        }
        if buf.len() >= limit {
            return Err(HttpError::TooLarge { limit });
        }
        let room = (limit - buf.len()).min(chunk.len());
        let n = match io.read(&mut chunk[..room]).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: the end of the response, which
            // the framing (or the JSON that must follow) still has to make whole.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return parse(&buf, true)?.ok_or(HttpError::Truncated);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parses a response from `buf`: `Ok(None)` while it is incomplete (`closed` says the
/// connection has ended, which completes a body delimited by the close). Informational
/// `1xx` responses before the final one are skipped.
pub fn parse(buf: &[u8], closed: bool) -> Result<Option<Response>, HttpError> {
    let mut rest = buf;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut head = httparse::Response::new(&mut headers);
        let used = match head.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if closed => return Err(HttpError::Truncated),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        };
        let status = head.code.unwrap_or(0);
        if !(100..=599).contains(&status) {
            return Err(HttpError::Malformed(format!("status code {status}")));
        }
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(HttpError::Malformed(
                    "101 Switching Protocols was not asked for".into(),
                ));
            }
            rest = &rest[used..];
            continue;
        }
        let reason = head.reason.unwrap_or("").to_string();
        let mut content_type = None;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        for h in head.headers.iter() {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| HttpError::Malformed(format!("header {} is not text", h.name)))?
                .trim();
            if h.name.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.to_string());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = value.rsplit(',').next().unwrap_or("").trim();
                if !last.eq_ignore_ascii_case("chunked") {
                    return Err(HttpError::Malformed(format!(
                        "unsupported Transfer-Encoding {value:?}"
                    )));
                }
                if value.split(',').count() > 1 {
                    return Err(HttpError::Malformed(format!(
                        "unsupported Transfer-Encoding {value:?}"
                    )));
                }
                chunked = true;
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let n = parse_length(value)?;
                if length.is_some_and(|l| l != n) {
                    return Err(HttpError::Malformed(
                        "two different Content-Length headers".into(),
                    ));
                }
                length = Some(n);
            }
        }
        let framing = if status == 204 || status == 304 {
            Framing::None
        } else if chunked {
            Framing::Chunked
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::Close
        };
        let body = &rest[used..];
        let body = match framing {
            Framing::None => Some(Vec::new()),
            Framing::Length(n) if body.len() >= n => Some(body[..n].to_vec()),
            Framing::Length(_) if closed => return Err(HttpError::Truncated),
            Framing::Length(_) => None,
            Framing::Chunked => match dechunk(body)? {
                Some(b) => Some(b),
                None if closed => return Err(HttpError::Truncated),
                None => None,
            },
            Framing::Close if closed => Some(body.to_vec()),
            Framing::Close => None,
        };
        return Ok(body.map(|body| Response {
            status,
            reason,
            content_type,
            body,
        }));
    }
}

fn parse_length(value: &str) -> Result<usize, HttpError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::Malformed(format!(
            "invalid Content-Length {value:?}"
        )));
    }
    value
        .parse()
        .map_err(|_| HttpError::Malformed(format!("Content-Length {value:?} is too large")))
}

/// Decodes a chunked body: `Ok(None)` while the last chunk (and the trailer section after
/// it) has not arrived.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find_crlf(data) else {
            return Ok(None);
        };
        let line = &data[..eol];
        let size_text = line.split(|&b| b == b';').next().unwrap_or(b"");
        let size_text = std::str::from_utf8(size_text)
            .map_err(|_| HttpError::Malformed("chunk size is not text".into()))?
            .trim();
        if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HttpError::Malformed(format!(
                "invalid chunk size {size_text:?}"
            )));
        }
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed("chunk size too large".into()))?;
        data = &data[eol + 2..];
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(eol) = find_crlf(data) else {
                    return Ok(None);
                };
                if eol == 0 {
                    return Ok(Some(out));
                }
                data = &data[eol + 2..];
            }
        }
        let Some(end) = size.checked_add(2) else {
            return Err(HttpError::Malformed("chunk size too large".into()));
        };
        if data.len() < end {
            return Ok(None);
        }
        if &data[size..end] != b"\r\n" {
            return Err(HttpError::Malformed(
                "a chunk does not end with CRLF".into(),
            ));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[end..];
    }
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(text: &str) -> Response {
        parse(text.as_bytes(), false)
            .unwrap()
            .unwrap_or_else(|| panic!("incomplete: {text:?}"))
    }

    #[test]
    fn content_length_bodies() {
        let r = complete(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        );
        assert_eq!(
            (r.status, r.reason.as_str(), r.content_type.as_deref()),
            (200, "OK", Some("application/json"))
        );
        assert_eq!(r.body, b"{}");
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", false)
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", true),
            Err(HttpError::Truncated)
        ));
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let text = "HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n\
                    4;x=y\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let r = complete(text);
        assert_eq!((r.status, r.body.as_slice()), (400, &b"{\"a\":1}"[..]));
        // Every prefix is incomplete, never an error.
        for i in 0..text.len() {
            assert!(
                parse(&text.as_bytes()[..i], false).unwrap().is_none(),
                "prefix {i}"
            );
        }
    }

    #[test]
    fn read_to_close_bodies() {
        let text = b"HTTP/1.0 200 OK\r\n\r\n{\"x\":1}";
        assert!(parse(text, false).unwrap().is_none());
        assert_eq!(parse(text, true).unwrap().unwrap().body, b"{\"x\":1}");
    }

    #[test]
    fn informational_responses_are_skipped() {
        let r =
            complete("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"x"[..]));
    }

    #[test]
    fn hostile_responses_are_typed_errors() {
        for bad in [
            "NOT HTTP\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 999 Odd\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad.as_bytes(), false), Err(HttpError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn no_input_panics() {
        let full = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: a\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for i in 0..full.len() {
            for b in [0u8, b'\r', b'\n', b'0', b'f', 0xff, b':'] {
                let mut v = full.to_vec();
                v[i] = b;
                let _ = parse(&v, false);
                let _ = parse(&v, true);
                let _ = parse(&v[..i], true);
            }
        }
    }

    #[tokio::test]
    async fn exchange_is_bounded() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(async move {
            let mut req = vec![0u8; 4096];
            let n = server.read(&mut req).await.unwrap();
            req.truncate(n);
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
            server.write_all(head.as_bytes()).await.unwrap();
            let _ = server.write_all(&[b'x'; 20_000]).await;
            req
        });
        let request = form_post("auth.example:8443", "/token", "a=b");
        let e = exchange(&mut client, &request, 4096).await.unwrap_err();
        assert!(matches!(e, HttpError::TooLarge { limit: 4096 }), "{e}");
        let sent = String::from_utf8(serve.await.unwrap()).unwrap();
        assert!(sent.starts_with("POST /token HTTP/1.1\r\nHost: auth.example:8443\r\n"));
        assert!(sent.contains("\r\nContent-Length: 3\r\nConnection: close\r\n\r\na=b"));
    }

    #[tokio::test]
    async fn exchange_reads_to_the_close() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut req = vec![0u8; 4096];
            let _ = server.read(&mut req).await;
            let _ = server.write_all(b"HTTP/1.1 200 OK\r\n\r\nbody").await;
        });
        let r = exchange(&mut client, b"GET / HTTP/1.1\r\n\r\n", 4096)
            .await
            .unwrap();
        assert_eq!(r.body, b"body");
    }
}
