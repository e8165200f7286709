//! A WAN link between a client and a server, after toxiproxy: a fixed one-way delay per
//! direction, a bandwidth cap, a cut after N bytes, and a silent cut of a running proxy
//! that can be restored (a partition: nothing refused, nothing closed, nothing passes).
//!
//! Responsible for: shaping one connection ([`pipe`], generic so it runs over
//! `tokio::io::duplex` under tokio's paused clock), an in-memory shaped stream for the
//! paused-clock world ([`shaped_duplex`]), and a loopback TCP proxy ([`spawn_tcp`], or
//! [`spawn_to_unix`] for a server on a unix socket) for the real clock and external
//! connectors; [`ProxyHandle::cut`] holds every byte of every connection (and of new
//! ones) until [`ProxyHandle::restore`], which delivers them late, in order. Each chunk read at time t is delivered no earlier
//! than t + latency (a timestamped queue per direction, so a long link carries a
//! bandwidth-delay product, not one chunk per round trip); writes are paced to the cap;
//! at most [`QUEUE_CHUNKS`] times [`CHUNK`] bytes wait per direction, however many reads
//! filled them (then reading stops: backpressure); an end of stream is delivered like data (after its latency) as a
//! half-close.
//! Must never: read the clock other than through `tokio::time` (the paused clock must
//! stay deterministic), busy-loop, hold unbounded data, or dial anything but a loopback
//! address.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, Instant};

/// The most bytes one read takes from a side (one queued chunk).
pub const CHUNK: usize = 64 * 1024;
/// The most bytes queued per direction, `QUEUE_CHUNKS * CHUNK` (a link's buffer: what may
/// be in flight whatever the size of the reads that filled it).
pub const QUEUE_CHUNKS: usize = 64;
/// The most chunks queued per direction (many small reads each take a slot).
const QUEUE_ITEMS: usize = 4096;
/// The buffer of each in-memory stream [`shaped_duplex`] makes.
const DUPLEX_BUFFER: usize = 256 * 1024;
/// How long the TCP proxy waits for its upstream to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the TCP proxy's accept loop backs off after a failed accept (out of files).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Paced writes go out in slices of at most this share of a second's worth of bytes.
const SLICES_PER_SECOND: u64 = 50;
/// tokio's timers fire on whole milliseconds, and on the real clock a task wakes late: a
/// paced write that woke up to this much late still starts when the link became free, so
/// late wake-ups do not add up to a lower rate (at most this much of the cap goes early).
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// How a proxied connection is shaped, per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// One-way delay, each direction.
    pub latency: Duration,
    /// Bytes per second, each direction (none: as fast as the sides go).
    pub bandwidth: Option<u64>,
    /// Total bytes both ways, then both sides are closed (toxiproxy's `limit_data`).
    pub cut_after: Option<u64>,
}

impl Shape {
    /// True when the shape changes nothing (no delay, no cap, no cut).
    pub fn is_transparent(&self) -> bool {
        *self == Self::default()
    }
}

/// Why the TCP proxy cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The proxy only listens on and dials loopback addresses.
    #[error("{0} is not a loopback address (the latency proxy stays on this machine)")]
    NotLoopback(SocketAddr),
    /// The listener's address could not be read.
    #[error("latency proxy listener: {0}")]
    Io(#[from] io::Error),
}

/// One queued chunk: its bytes (empty: the end of the stream) and when it may go out.
struct Item {
    due: Instant,
    data: Bytes,
    /// Its share of the direction's byte bound, given back once it is written.
    _room: Option<OwnedSemaphorePermit>,
}

/// What both directions of one connection share: the byte budget and the stop signal.
struct Shared {
    /// Bytes still allowed both ways (`None`: no cut).
    budget: Option<AtomicU64>,
    /// Set on a cut or an error: both readers stop; writers drain what is queued.
    stop: watch::Sender<bool>,
}

impl Shared {
    /// How much of `n` freshly read bytes may pass, and whether the budget is now spent.
    fn take(&self, n: usize) -> (usize, bool) {
        let Some(budget) = &self.budget else {
            return (n, false);
        };
        let n64 = n as u64;
        let before = budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                Some(left.saturating_sub(n64))
            })
            .unwrap_or(0);
        let taken = before.min(n64);
        // `taken <= n`, which is a usize.
        (usize::try_from(taken).unwrap_or(n), before <= n64)
    }

    fn halt(&self) {
        self.stop.send_replace(true);
    }

    /// `r`, after stopping both directions when it is an error.
    fn on_error<T>(&self, r: io::Result<T>) -> io::Result<T> {
        if r.is_err() {
            self.halt();
        }
        r
    }
}

/// Queues `item` unless the connection is stopped first; false when it could not.
async fn enqueue(tx: &mpsc::Sender<Item>, item: Item, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => false,
        sent = tx.send(item) => sent.is_ok(),
    }
}

/// Reads one side into the direction's queue, stamping each chunk with its due time.
async fn read_side<R: AsyncRead + Unpin>(
    mut from: R,
    tx: mpsc::Sender<Item>,
    latency: Duration,
    shared: &Shared,
    room: Arc<Semaphore>,
) -> io::Result<()> {
    let mut stop = shared.stop.subscribe();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Ok(()),
            read = from.read(&mut buf) => read?,
        };
        let due = Instant::now() + latency;
        if n == 0 {
            enqueue(
                &tx,
                Item {
                    due,
                    data: Bytes::new(),
                    _room: None,
                },
                &mut stop,
            )
            .await;
            return Ok(());
        }
        let (taken, spent) = shared.take(n);
        if taken > 0 {
            let data = Bytes::copy_from_slice(&buf[..taken]);
            // Waits while the direction holds its bound of bytes (reading stops).
            let permit = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return Ok(()),
                p = room.clone().acquire_many_owned(taken as u32) => p.ok(),
            };
            let item = Item {
                due,
                data,
                _room: permit,
            };
            if !enqueue(&tx, item, &mut stop).await {
                return Ok(());
            }
        }
        if spent {
            shared.halt();
            return Ok(());
        }
    }
}

/// The time `bytes` take at `rate` bytes per second (rounded up: never above the cap).
fn transmission(bytes: usize, rate: u64) -> Duration {
    let nanos = (bytes as u128 * 1_000_000_000).div_ceil(u128::from(rate.max(1)));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Writes the direction's queue to the other side, each chunk at its due time and paced to
/// the cap, and only while the link is `up`; an end-of-stream item shuts the side's
/// write half down. Returns the bytes written.
async fn write_side<W: AsyncWrite + Unpin>(
    mut to: W,
    mut rx: mpsc::Receiver<Item>,
    bandwidth: Option<u64>,
    mut up: watch::Receiver<bool>,
) -> io::Result<u64> {
    let mut written = 0u64;
    // When the link is free again ("next send time" pacing).
    let mut free_at = Instant::now();
    while let Some(item) = rx.recv().await {
        sleep_until(item.due).await;
        // Cut: held until restored (a proxy that is gone ends the connection anyway).
        if up.wait_for(|u| *u).await.is_err() {
            return Ok(written);
        }
        if item.data.is_empty() {
            to.shutdown().await?;
            return Ok(written);
        }
        match bandwidth {
            None => to.write_all(&item.data).await?,
            Some(rate) => {
                let slice = usize::try_from((rate / SLICES_PER_SECOND).max(1)).unwrap_or(CHUNK);
                for part in item.data.chunks(slice) {
                    let now = Instant::now();
                    let start = free_at.max(now.checked_sub(TIMER_SLACK).unwrap_or(now));
                    sleep_until(start).await;
                    to.write_all(part).await?;
                    free_at = start + transmission(part.len(), rate);
                }
            }
        }
        to.flush().await?;
        written += item.data.len() as u64;
    }
    // The reader stopped without an end of stream: a cut or an error. The caller drops
    // the side, which closes it.
    Ok(written)
}

/// Shapes one connection: copies a<->b until either closes (or the cut), with the delay
/// and cap; generic so it works over `tokio::io::duplex` under the paused clock. Returns
/// the bytes delivered a→b and b→a; an I/O error on either side stops both directions.
pub async fn pipe<A, B>(a: A, b: B, shape: Shape) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
{
    pipe_while(a, b, shape, watch::channel(true).1).await
}

/// [`pipe`], delivering only while `up` is true: while it is false, bytes read wait in
/// the link (up to its bound, then reading stops) and nothing is written either way.
pub async fn pipe_while<A, B>(
    a: A,
    b: B,
    shape: Shape,
    up: watch::Receiver<bool>,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let shared = Shared {
        budget: shape.cut_after.map(AtomicU64::new),
        stop: watch::Sender::new(false),
    };
    if shape.cut_after == Some(0) {
        shared.halt();
    }
    let (ab_tx, ab_rx) = mpsc::channel(QUEUE_ITEMS);
    let (ba_tx, ba_rx) = mpsc::channel(QUEUE_ITEMS);
    let bytes = QUEUE_CHUNKS * CHUNK;
    let (ab_room, ba_room) = (
        Arc::new(Semaphore::new(bytes)),
        Arc::new(Semaphore::new(bytes)),
    );
    let shared = &shared;
    let (ra, wb, rb, wa) = tokio::join!(
        async { shared.on_error(read_side(a_read, ab_tx, shape.latency, shared, ab_room).await) },
        async { shared.on_error(write_side(b_write, ab_rx, shape.bandwidth, up.clone()).await) },
        async { shared.on_error(read_side(b_read, ba_tx, shape.latency, shared, ba_room).await) },
        async { shared.on_error(write_side(a_write, ba_rx, shape.bandwidth, up.clone()).await) },
    );
    ra?;
    rb?;
    Ok((wb?, wa?))
}

/// `io` seen through a shaped link: the near end of an in-memory stream whose far end a
/// spawned task pipes to `io` (ends when both sides have closed). Must be called within a
/// tokio runtime.
pub fn shaped_duplex<S>(io: S, shape: Shape) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (near, far) = tokio::io::duplex(DUPLEX_BUFFER);
    tokio::spawn(async move {
        // Errors only end the connection, as on a real link.
        let _ = pipe(far, io, shape).await;
    });
    near
}

/// A running loopback TCP proxy; dropping it stops it too (without waiting).
pub struct ProxyHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    up: watch::Sender<bool>,
}

impl ProxyHandle {
    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link silently: nothing passes either way on any connection, old or new
    /// (a new one is accepted and dialled, and then waits too), nothing is refused or
    /// closed, until [`ProxyHandle::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Ends a [`ProxyHandle::cut`]: what waited is delivered, in order, then the rest.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// Stops accepting, closes every proxied connection, and waits for that.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Where the proxy dials: a loopback address, or a unix socket of this machine.
#[derive(Clone, Debug)]
enum Upstream {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A loopback TCP proxy: accepts on `listener`, dials `upstream` per connection (a refused
/// or slow upstream closes that client), shapes both directions. Both addresses must be
/// loopback. Must be called within a tokio runtime.
pub fn spawn_tcp(
    listener: TcpListener,
    upstream: SocketAddr,
    shape: Shape,
) -> Result<ProxyHandle, ProxyError> {
    if !upstream.ip().is_loopback() {
        return Err(ProxyError::NotLoopback(upstream));
    }
    spawn(listener, Upstream::Tcp(upstream), shape)
}

/// The same proxy in front of a server listening on the unix socket `upstream` (a
/// database that listens on no TCP port).
pub fn spawn_to_unix(
    listener: TcpListener,
    upstream: PathBuf,
    shape: Shape,
) -> Result<ProxyHandle, ProxyError> {
    spawn(listener, Upstream::Unix(upstream), shape)
}

fn spawn(
    listener: TcpListener,
    upstream: Upstream,
    shape: Shape,
) -> Result<ProxyHandle, ProxyError> {
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        return Err(ProxyError::NotLoopback(addr));
    }
    let (stop, stopped) = oneshot::channel();
    let up = watch::Sender::new(true);
    let task = tokio::spawn(accept_loop(
        listener,
        upstream,
        shape,
        stopped,
        up.subscribe(),
    ));
    Ok(ProxyHandle {
        addr,
        stop: Some(stop),
        task: Some(task),
        up,
    })
}

async fn accept_loop(
    listener: TcpListener,
    upstream: Upstream,
    shape: Shape,
    mut stopped: oneshot::Receiver<()>,
    up: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    connections.spawn(proxy_one(client, upstream.clone(), shape, up.clone()));
                }
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
        }
    }
    connections.shutdown().await;
}

/// One client: dial the upstream (dropping the client when that fails), then shape.
async fn proxy_one(client: TcpStream, upstream: Upstream, shape: Shape, up: watch::Receiver<bool>) {
    let _ = client.set_nodelay(true);
    // Errors only end the connection, as on a real link.
    match upstream {
        Upstream::Tcp(addr) => {
            let dial = TcpStream::connect(addr);
            let Ok(Ok(server)) = tokio::time::timeout(CONNECT_TIMEOUT, dial).await else {
                return;
            };
            let _ = server.set_nodelay(true);
            let _ = pipe_while(client, server, shape, up).await;
        }
        Upstream::Unix(path) => {
            let dial = UnixStream::connect(path);
            let Ok(Ok(server)) = tokio::time::timeout(CONNECT_TIMEOUT, dial).await else {
                return;
            };
            let _ = pipe_while(client, server, shape, up).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;
    use tokio::time::{sleep, timeout};

    const MS: Duration = Duration::from_millis(1);

    /// Everything `io` sends until it closes, failing (not hanging) past a minute of
    /// (paused) time.
    async fn to_end(io: &mut DuplexStream) -> Vec<u8> {
        let mut got = Vec::new();
        timeout(Duration::from_secs(60), io.read_to_end(&mut got))
            .await
            .expect("the stream was never closed")
            .unwrap();
        got
    }

    /// Fills `buf` from `io`, failing (not hanging) past a minute of (paused) time.
    async fn exact<R: AsyncRead + Unpin>(io: &mut R, buf: &mut [u8]) {
        timeout(Duration::from_secs(60), io.read_exact(buf))
            .await
            .expect("the bytes never came")
            .unwrap();
    }

    /// A shaped link over in-memory streams: (client end, server end, the pipe's task).
    fn link(
        shape: Shape,
    ) -> (
        DuplexStream,
        DuplexStream,
        JoinHandle<io::Result<(u64, u64)>>,
    ) {
        let (client, proxy_a) = tokio::io::duplex(64 * 1024);
        let (proxy_b, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(pipe(proxy_a, proxy_b, shape));
        (client, server, task)
    }

    fn latency(ms: u64) -> Shape {
        Shape {
            latency: Duration::from_millis(ms),
            ..Shape::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_byte_arrives_exactly_one_latency_later_each_way() {
        let (mut client, mut server, _task) = link(latency(40));
        let sent = Instant::now();
        client.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        exact(&mut server, &mut one).await;
        assert_eq!(sent.elapsed(), 40 * MS);
        let back = Instant::now();
        server.write_all(b"y").await.unwrap();
        exact(&mut client, &mut one).await;
        assert_eq!((&one, back.elapsed()), (b"y", 40 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_sent_back_to_back_keep_their_spacing() {
        let (mut client, mut server, _task) = link(latency(100));
        let t0 = Instant::now();
        let sender = tokio::spawn(async move {
            for b in [b"a", b"b", b"c"] {
                client.write_all(b).await.unwrap();
                sleep(10 * MS).await;
            }
            client
        });
        let mut arrivals = Vec::new();
        let mut one = [0u8; 1];
        for _ in 0..3 {
            exact(&mut server, &mut one).await;
            arrivals.push((one[0], t0.elapsed()));
        }
        // Pipelined: not one chunk per round trip (that would be 100, 300, 500 ms).
        assert_eq!(
            arrivals,
            [(b'a', 100 * MS), (b'b', 110 * MS), (b'c', 120 * MS)]
        );
        drop(sender.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn many_small_reads_are_bounded_by_bytes_not_by_their_number() {
        // 200 small writes 1 ms apart on a 1 s link: all in flight at once, as on a real
        // link (a bound by count of reads would hold the 65th back until the first left).
        let (mut client, mut server, _task) = link(latency(1000));
        let t0 = Instant::now();
        let sender = tokio::spawn(async move {
            for _ in 0..200 {
                client.write_all(&[1u8; 100]).await.unwrap();
                sleep(MS).await;
            }
            client
        });
        let mut buf = [0u8; 100];
        for _ in 0..200 {
            exact(&mut server, &mut buf).await;
        }
        assert_eq!(t0.elapsed(), 1000 * MS + 199 * MS);
        drop(sender.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn the_bandwidth_cap_paces_ten_thousand_bytes_over_ten_seconds() {
        let shape = Shape {
            bandwidth: Some(1000),
            ..Shape::default()
        };
        let (mut client, mut server, _task) = link(shape);
        let t0 = Instant::now();
        let sender = tokio::spawn(async move {
            client.write_all(&[7u8; 10_000]).await.unwrap();
            client
        });
        let mut got = 0usize;
        let mut at_five = None;
        let mut buf = [0u8; 4096];
        while got < 10_000 {
            let n = timeout(Duration::from_secs(60), server.read(&mut buf))
                .await
                .expect("the bytes never came")
                .unwrap();
            assert_ne!(n, 0, "early end of stream");
            if at_five.is_none() && t0.elapsed() >= Duration::from_secs(5) {
                at_five = Some(got);
            }
            got += n;
        }
        let took = t0.elapsed();
        // One slice is 1000 / 50 = 20 bytes, 20 ms.
        let slice = 20 * MS;
        assert!(
            took >= Duration::from_secs(10) - slice && took <= Duration::from_secs(10),
            "{took:?}"
        );
        let half = at_five.unwrap();
        assert!((4_980..=5_020).contains(&half), "{half} bytes by 5 s");
        drop(sender.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_cap_keeps_its_rate_over_many_chunks() {
        // 10 MiB/s: 160 chunks of 64 KiB, 6.25 ms each; the first goes out at once.
        let rate = 10 * 1024 * 1024;
        let shape = Shape {
            bandwidth: Some(rate),
            ..Shape::default()
        };
        let (mut client, mut server, _task) = link(shape);
        let t0 = Instant::now();
        let sender = tokio::spawn(async move {
            client
                .write_all(&vec![7u8; 10 * 1024 * 1024])
                .await
                .unwrap();
            client
        });
        let got = {
            let mut got = 0usize;
            let mut buf = vec![0u8; CHUNK];
            while got < 10 * 1024 * 1024 {
                let n = timeout(Duration::from_secs(60), server.read(&mut buf))
                    .await
                    .expect("the bytes never came")
                    .unwrap();
                assert_ne!(n, 0, "early end of stream");
                got += n;
            }
            got
        };
        let took = t0.elapsed();
        let chunk = transmission(CHUNK, rate);
        assert_eq!(got, 10 * 1024 * 1024);
        assert!(
            took + chunk >= Duration::from_secs(1) && took <= Duration::from_secs(1) + TIMER_SLACK,
            "{took:?}"
        );
        drop(sender.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn cut_after_delivers_n_bytes_then_closes_both_sides() {
        let shape = Shape {
            latency: 5 * MS,
            cut_after: Some(100),
            ..Shape::default()
        };
        let (mut client, mut server, task) = link(shape);
        client.write_all(&[1u8; 60]).await.unwrap();
        let mut buf = [0u8; 60];
        exact(&mut server, &mut buf).await;
        server.write_all(&[2u8; 60]).await.unwrap();
        assert_eq!(to_end(&mut client).await, vec![2u8; 40]);
        assert!(to_end(&mut server).await.is_empty());
        assert_eq!(task.await.unwrap().unwrap(), (60, 40));
    }

    #[tokio::test(start_paused = true)]
    async fn an_end_of_stream_is_a_delayed_half_close() {
        let (mut client, mut server, task) = link(latency(30));
        let t0 = Instant::now();
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let got = to_end(&mut server).await;
        assert_eq!((got.as_slice(), t0.elapsed()), (&b"hello"[..], 30 * MS));
        // The other direction still works after the half-close.
        server.write_all(b"bye").await.unwrap();
        drop(server);
        let back = to_end(&mut client).await;
        assert_eq!((back.as_slice(), t0.elapsed()), (&b"bye"[..], 60 * MS));
        assert_eq!(task.await.unwrap().unwrap(), (5, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_never_reads_stalls_the_writer() {
        let (mut client, _server, _task) = link(latency(40));
        let block = vec![0u8; CHUNK];
        let mut accepted = 0usize;
        // Under the paused clock the timeout fires as soon as everything is stuck.
        while let Ok(written) = timeout(Duration::from_secs(1), client.write(&block)).await {
            accepted += written.unwrap();
            assert!(accepted < 64 * 1024 * 1024, "the queue grows without bound");
        }
        // Both in-memory buffers (64 KiB each), the queue, and one chunk in the hands of
        // the pipe's reader and writer each.
        let bound = QUEUE_CHUNKS * CHUNK + 2 * 64 * 1024 + 2 * CHUNK;
        assert!(
            accepted >= QUEUE_CHUNKS * CHUNK && accepted <= bound,
            "{accepted}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shaped_duplex_delays_like_pipe() {
        let (inner, mut server) = tokio::io::duplex(1024);
        let mut client = shaped_duplex(inner, latency(25));
        let t0 = Instant::now();
        client.write_all(b"z").await.unwrap();
        let mut one = [0u8; 1];
        exact(&mut server, &mut one).await;
        assert_eq!(t0.elapsed(), 25 * MS);
    }

    async fn loopback() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    #[tokio::test]
    async fn the_tcp_proxy_delays_an_echo_by_a_round_trip() {
        let upstream = loopback().await;
        let upstream_addr = upstream.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 4];
            exact(&mut s, &mut buf).await;
            s.write_all(&buf).await.unwrap();
        });
        let proxy = spawn_tcp(loopback().await, upstream_addr, latency(20)).unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let t0 = std::time::Instant::now();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");
        assert!(t0.elapsed() >= 40 * MS, "{:?}", t0.elapsed());
        echo.await.unwrap();
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn a_refused_upstream_closes_the_client() {
        let gone = loopback().await;
        let gone_addr = gone.local_addr().unwrap();
        drop(gone);
        let proxy = spawn_tcp(loopback().await, gone_addr, Shape::default()).unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = Vec::new();
        let read = timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
            .await
            .expect("the client is closed, not left hanging");
        assert!(read.map_or(true, |n| n == 0));
        proxy.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_link_holds_every_byte_until_restored_then_delivers_them_in_order() {
        let (mut client, proxy_a) = tokio::io::duplex(64 * 1024);
        let (proxy_b, mut server) = tokio::io::duplex(64 * 1024);
        let (up, link_up) = watch::channel(true);
        let _task = tokio::spawn(pipe_while(proxy_a, proxy_b, latency(10), link_up));
        up.send_replace(false);
        client.write_all(b"held").await.unwrap();
        server.write_all(b"back").await.unwrap();
        // Nothing arrives while the link is cut, however long (an hour of paused time).
        let mut buf = [0u8; 4];
        let waited = timeout(Duration::from_secs(3600), server.read(&mut buf)).await;
        assert!(waited.is_err(), "a byte passed a cut link");
        up.send_replace(true);
        exact(&mut server, &mut buf).await;
        assert_eq!(&buf, b"held");
        exact(&mut client, &mut buf).await;
        assert_eq!(&buf, b"back");
    }

    #[tokio::test]
    async fn the_proxy_reaches_a_unix_socket_and_a_cut_holds_what_it_carries() {
        let dir = std::env::temp_dir().join(format!("mock-core-proxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("echo.sock");
        let _ = std::fs::remove_file(&path);
        let upstream = tokio::net::UnixListener::bind(&path).unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 4];
            for _ in 0..2 {
                exact(&mut s, &mut buf).await;
                s.write_all(&buf).await.unwrap();
            }
        });
        let proxy = spawn_to_unix(loopback().await, path.clone(), Shape::default()).unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 4];
        c.write_all(b"ping").await.unwrap();
        timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");
        proxy.cut();
        c.write_all(b"pong").await.unwrap();
        let held = timeout(Duration::from_millis(300), c.read_exact(&mut buf)).await;
        assert!(held.is_err(), "the echo came back through a cut link");
        proxy.restore();
        timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"pong");
        echo.await.unwrap();
        proxy.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn only_loopback_upstreams_are_dialled() {
        let upstream: SocketAddr = "192.0.2.1:110".parse().unwrap();
        let e = spawn_tcp(loopback().await, upstream, Shape::default()).err();
        assert!(matches!(e, Some(ProxyError::NotLoopback(a)) if a == upstream));
    }
}
