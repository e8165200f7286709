//! A downloaded message: in memory when small, spooled to a file under the state
//! directory when large, so memory does not grow with message size.
//!
//! Must never: leave spool files behind (they are removed on drop) or hold more than the
//! threshold in memory (plus the header copy).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWriteExt};

/// Header bytes kept in memory even for spooled messages (enough for any sane header).
pub const HEAD_MAX: usize = 256 * 1024;

/// The most a LIST size reserves up front (a larger body grows past it as it arrives).
const PRESIZE_MAX: u64 = 16 * 1024 * 1024;

/// Unused room a finished in-memory body may keep; past it the body is copied into a
/// buffer of its own size.
const SLACK_MAX: usize = 64 * 1024;

static SPOOL_SEQ: AtomicU64 = AtomicU64::new(0);

/// A removable spool file.
#[derive(Debug)]
struct SpoolFile {
    path: PathBuf,
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Debug)]
enum Storage {
    Memory(Bytes),
    File(SpoolFile),
}

/// How a message's lines end: what a server's LIST size may differ by (servers count
/// sizes with CRLF, or as stored with bare LF, or as sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineEnds {
    /// CR LF pairs.
    pub crlf: u64,
    /// LFs not preceded by CR.
    pub bare_lf: u64,
    /// CRs not followed by LF.
    pub bare_cr: u64,
}

impl LineEnds {
    /// Counts the line ends of `data`, continuing after a chunk that ended in CR when
    /// `pending_cr`; returns whether this chunk ends in CR (not yet decided).
    fn count(&mut self, data: &[u8], pending_cr: bool) -> bool {
        let Some(&last) = data.last() else {
            return pending_cr;
        };
        // Line ends are rare among the octets: find them with memchr (vectorised) rather
        // than looking at every octet.
        let mut crlf = 0u64;
        let mut lf = 0u64;
        for i in memchr::memchr_iter(b'\n', data) {
            lf += 1;
            let after_cr = if i == 0 {
                pending_cr
            } else {
                data[i - 1] == b'\r'
            };
            crlf += u64::from(after_cr);
        }
        let cr = memchr::memchr_iter(b'\r', data).count() as u64;
        let across = u64::from(pending_cr && data[0] == b'\n');
        self.crlf += crlf;
        self.bare_lf += lf - crlf;
        // This chunk's CRs, less those paired inside it and the one left pending at its
        // end; and the previous chunk's pending CR if nothing paired it.
        let ends_in_cr = last == b'\r';
        self.bare_cr += cr - (crlf - across) - u64::from(ends_in_cr);
        if pending_cr && across == 0 {
            self.bare_cr += 1;
        }
        ends_in_cr
    }

    /// The LIST sizes a server may truthfully give for a message of `len` octets with these
    /// line ends: as sent, with every line end counted as one octet (LF storage), or with
    /// bare ones counted as two (CRLF storage), two octets either way for a final line end
    /// the server added or counted.
    pub fn plausible_sizes(&self, len: u64) -> std::ops::RangeInclusive<u64> {
        let low = len.saturating_sub(self.crlf + 2);
        let high = len
            .saturating_add(self.bare_lf)
            .saturating_add(self.bare_cr)
            .saturating_add(2);
        low..=high
    }
}

/// A complete message as downloaded (dot-unstuffed), with facts learnt while reading it.
#[derive(Debug)]
pub struct Body {
    storage: Storage,
    head: Bytes,
    len: u64,
    has_8bit: bool,
    line_ends: LineEnds,
}

impl Body {
    /// A body held in memory.
    pub fn from_bytes(data: Bytes) -> Self {
        let head = data.slice(..data.len().min(HEAD_MAX));
        let has_8bit = !data.is_ascii();
        let mut line_ends = LineEnds::default();
        if line_ends.count(&data, false) {
            line_ends.bare_cr += 1;
        }
        Self {
            len: data.len() as u64,
            storage: Storage::Memory(data),
            head,
            has_8bit,
            line_ends,
        }
    }

    /// How its lines end.
    pub fn line_ends(&self) -> LineEnds {
        self.line_ends
    }

    /// Octets in the message.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first octets (up to [`HEAD_MAX`]): the header and maybe some body.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// True when any octet is 8-bit (BODY=8BITMIME is needed).
    pub fn has_8bit(&self) -> bool {
        self.has_8bit
    }

    /// The whole message when it is in memory.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.storage {
            Storage::Memory(b) => Some(b),
            Storage::File(_) => None,
        }
    }

    /// A reader over the whole message.
    pub async fn reader(&self) -> io::Result<Box<dyn AsyncRead + Unpin + Send>> {
        match &self.storage {
            Storage::Memory(b) => Ok(Box::new(io::Cursor::new(b.clone()))),
            Storage::File(f) => Ok(Box::new(tokio::fs::File::open(&f.path).await?)),
        }
    }

    /// Writes the message durably to `path` (temporary name, fsync, rename).
    pub async fn persist(&self, path: &Path) -> io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        crate::private::create_dir_all_async(dir).await?;
        let tmp = path.with_extension("tmp");
        let mut out = crate::private::create_async(&tmp).await?;
        let mut r = self.reader().await?;
        tokio::io::copy(&mut r, &mut out).await?;
        out.sync_all().await?;
        drop(out);
        tokio::fs::rename(&tmp, path).await?;
        if let Ok(d) = tokio::fs::File::open(dir).await {
            let _ = d.sync_all().await;
        }
        Ok(())
    }
}

/// What a builder learnt of the octets pushed so far, wherever they went.
#[derive(Default)]
struct Seen {
    len: u64,
    has_8bit: bool,
    line_ends: LineEnds,
    pending_cr: bool,
}

impl Seen {
    /// Counts `data`, the octets after those seen so far.
    fn add(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        self.has_8bit |= !self.has_8bit && !data.is_ascii();
        self.pending_cr = self.line_ends.count(data, self.pending_cr);
    }
}

/// Collects a message as it arrives, spilling to a spool file past a threshold.
pub struct BodyBuilder {
    spool_dir: PathBuf,
    threshold: u64,
    mem: BytesMut,
    head: BytesMut,
    file: Option<(tokio::fs::File, SpoolFile)>,
    seen: Seen,
    discard: bool,
}

impl BodyBuilder {
    /// A builder spilling into `spool_dir` once more than `threshold` octets arrived.
    pub fn new(spool_dir: &Path, threshold: u64) -> Self {
        Self {
            spool_dir: spool_dir.to_path_buf(),
            threshold,
            mem: BytesMut::new(),
            head: BytesMut::new(),
            file: None,
            seen: Seen::default(),
            discard: false,
        }
    }

    /// The same builder, its buffer sized up front for a body of `listed` octets (as LIST
    /// gave it) when that stays in memory: one allocation instead of a doubling series
    /// that copies the body again and again. Only a hint: a server that lists more than
    /// it sends costs the difference until [`BodyBuilder::finish`] gives it back.
    pub fn expecting(mut self, listed: u64) -> Self {
        if !self.discard && listed <= self.threshold {
            self.mem
                .reserve(usize::try_from(listed.min(PRESIZE_MAX)).unwrap_or(0));
        }
        self
    }

    /// A builder that keeps nothing (reads a body only to skip it).
    pub fn discarding() -> Self {
        let mut b = Self::new(Path::new(""), u64::MAX);
        b.discard = true;
        b
    }

    /// Octets so far.
    pub fn len(&self) -> u64 {
        self.seen.len
    }

    /// True before any octet arrived.
    pub fn is_empty(&self) -> bool {
        self.seen.len == 0
    }

    /// Appends decoded message bytes.
    pub async fn push(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.seen.add(data);
        if self.discard {
            return Ok(());
        }
        if let Some((f, _)) = self.file.as_mut() {
            if self.head.len() < HEAD_MAX {
                let n = (HEAD_MAX - self.head.len()).min(data.len());
                self.head.extend_from_slice(&data[..n]);
            }
            return f.write_all(data).await;
        }
        self.mem.extend_from_slice(data);
        self.spill_if_over().await
    }

    /// The buffer to decode into directly while the body is held in memory (no copy in
    /// between); after writing into it, [`BodyBuilder::appended`] accounts for what was
    /// added. `None` once spooled or when discarding: then [`BodyBuilder::push`].
    pub fn in_memory(&mut self) -> Option<&mut BytesMut> {
        (!self.discard && self.file.is_none()).then_some(&mut self.mem)
    }

    /// Accounts for what was written into [`BodyBuilder::in_memory`]'s buffer past its
    /// first `from` octets, as [`BodyBuilder::push`] would have.
    pub async fn appended(&mut self, from: usize) -> io::Result<()> {
        let Some(added) = self.mem.get(from..).filter(|a| !a.is_empty()) else {
            return Ok(());
        };
        self.seen.add(added);
        self.spill_if_over().await
    }

    /// Past the threshold, moves what is held in memory into a spool file (keeping the
    /// header part in memory), where the rest of the body goes too.
    async fn spill_if_over(&mut self) -> io::Result<()> {
        if self.mem.len() as u64 <= self.threshold {
            return Ok(());
        }
        crate::private::create_dir_all_async(&self.spool_dir).await?;
        let seq = SPOOL_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self
            .spool_dir
            .join(format!("spool-{}-{seq}.part", std::process::id()));
        let guard = SpoolFile { path: path.clone() };
        let mut f = crate::private::create_async(&path).await?;
        f.write_all(&self.mem).await?;
        self.head = BytesMut::from(&self.mem[..self.mem.len().min(HEAD_MAX)]);
        self.mem = BytesMut::new();
        self.file = Some((f, guard));
        Ok(())
    }

    /// The finished body.
    pub async fn finish(mut self) -> io::Result<Body> {
        if self.seen.pending_cr {
            self.seen.line_ends.bare_cr += 1;
        }
        let (storage, head) = match self.file {
            Some((mut f, guard)) => {
                f.flush().await?;
                (Storage::File(guard), self.head.freeze())
            }
            None => {
                // Room a lying LIST size reserved is not kept while the message waits.
                let mem = if self.mem.capacity() - self.mem.len() > SLACK_MAX {
                    Bytes::copy_from_slice(&self.mem)
                } else {
                    self.mem.freeze()
                };
                // In memory, the header part is the body's own first octets.
                let head = mem.slice(..mem.len().min(HEAD_MAX));
                (Storage::Memory(mem), head)
            }
        };
        Ok(Body {
            storage,
            head,
            len: self.seen.len,
            has_8bit: self.seen.has_8bit,
            line_ends: self.seen.line_ends,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_listed_size_is_only_a_hint_whether_the_body_is_shorter_or_longer() {
        let dir = tempfile::tempdir().unwrap();
        // Listed far larger than sent (a lying server), then smaller than sent.
        for (listed, parts) in [(8 << 20, 3), (10, 40)] {
            let mut b = BodyBuilder::new(dir.path(), 1 << 20).expecting(listed);
            for _ in 0..parts {
                b.push(b"Subject: x\r\n").await.unwrap();
            }
            let body = b.finish().await.unwrap();
            assert_eq!(
                body.as_bytes().unwrap()[..],
                b"Subject: x\r\n".repeat(parts)[..]
            );
            assert_eq!(body.len(), 12 * parts as u64);
        }
        // Over the threshold it still spills, whatever was listed.
        let mut b = BodyBuilder::new(dir.path(), 100).expecting(50);
        b.push(&[b'a'; 300]).await.unwrap();
        let body = b.finish().await.unwrap();
        assert!(body.as_bytes().is_none());
        assert_eq!(body.len(), 300);
    }

    #[tokio::test]
    async fn small_bodies_stay_in_memory_and_large_ones_spill_then_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = BodyBuilder::new(dir.path(), 100);
        b.push(b"Subject: x\r\n\r\n").await.unwrap();
        let small = b.finish().await.unwrap();
        assert!(small.as_bytes().is_some());
        let mut b = BodyBuilder::new(dir.path(), 100);
        for _ in 0..50 {
            b.push(b"0123456789\xe9").await.unwrap();
        }
        let big = b.finish().await.unwrap();
        assert!(big.as_bytes().is_none());
        assert_eq!(big.len(), 550);
        assert!(big.has_8bit());
        let mut all = Vec::new();
        big.reader()
            .await
            .unwrap()
            .read_to_end(&mut all)
            .await
            .unwrap();
        assert_eq!(all, b"0123456789\xe9".repeat(50));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let q = dir.path().join("q/copy.eml");
        big.persist(&q).await.unwrap();
        assert_eq!(std::fs::read(&q).unwrap(), all);
        #[cfg(unix)]
        {
            // Mail at rest is private whatever the umask: the spool file, the copy and
            // the folder made for it.
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            let spool = std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .find(|e| e.path().is_file())
                .unwrap()
                .path();
            assert_eq!(mode(&spool), 0o600);
            assert_eq!(mode(&q), 0o600);
            assert_eq!(mode(q.parent().unwrap()), 0o700);
        }
        drop(big);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .collect();
        assert!(left.is_empty(), "spool file removed on drop: {left:?}");
    }

    #[tokio::test]
    async fn line_ends_are_counted_across_chunks() {
        let data = b"a\r\nb\nc\rd\r\r\ne\r";
        let whole = Body::from_bytes(Bytes::from_static(data)).line_ends();
        let expect = LineEnds {
            crlf: 2,
            bare_lf: 1,
            bare_cr: 3,
        };
        assert_eq!(whole, expect);
        let dir = tempfile::tempdir().unwrap();
        for split in 0..=data.len() {
            let mut b = BodyBuilder::new(dir.path(), 4);
            b.push(&data[..split]).await.unwrap();
            b.push(&data[split..]).await.unwrap();
            assert_eq!(
                b.finish().await.unwrap().line_ends(),
                expect,
                "split {split}"
            );
        }
        // Against a byte-by-byte count, over random bytes cut at random places.
        let naive = |d: &[u8]| {
            let mut e = LineEnds::default();
            for (i, &b) in d.iter().enumerate() {
                let prev_cr = i > 0 && d[i - 1] == b'\r';
                match b {
                    b'\n' if prev_cr => e.crlf += 1,
                    b'\n' => e.bare_lf += 1,
                    b'\r' if d.get(i + 1) != Some(&b'\n') => e.bare_cr += 1,
                    _ => {}
                }
            }
            e
        };
        let mut x: u64 = 0x5eed;
        for round in 0..300 {
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let len = (next() % 64) as usize;
            let d: Vec<u8> = (0..len)
                .map(|_| [b'\r', b'\n', b'a'][(next() % 3) as usize])
                .collect();
            let cut = (next() as usize) % (len + 1);
            let mut b = BodyBuilder::new(dir.path(), u64::MAX);
            b.push(&d[..cut]).await.unwrap();
            b.push(&d[cut..]).await.unwrap();
            assert_eq!(
                b.finish().await.unwrap().line_ends(),
                naive(&d),
                "round {round}: {d:?}"
            );
        }
        // A CRLF message may be listed as sent, or with one octet per line end.
        let r = LineEnds {
            crlf: 10,
            bare_lf: 0,
            bare_cr: 0,
        }
        .plausible_sizes(500);
        assert!(r.contains(&500) && r.contains(&490) && !r.contains(&487));
        assert!(!r.contains(&503), "a truncated body is never plausible");
    }
}
