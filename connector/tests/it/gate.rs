//! A link that can be cut: a loopback TCP listener forwarding each connection to a unix
//! socket (the private PostgreSQL's), with a gate that stops all traffic while it is
//! closed and lets it flow again when it reopens.
//!
//! While cut, nothing passes either way: a chunk already read is held until the gate
//! reopens, and a new connection is accepted but not forwarded. That is a silent link
//! (a cable pulled, a firewall dropping packets): nothing is refused and nothing ends, so
//! only the client's own deadlines get it out. What was held is delivered late after
//! the gate reopens, so a statement can reach the server long after it was sent.
//!
//! Must never: listen on anything but the loopback, drop or reorder bytes, or outlive the
//! test (the accept loop and every forwarder stop when the `Gate` is dropped).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The most bytes read from one side before they are written to the other.
const CHUNK: usize = 64 * 1024;

/// A running gate; dropping it stops everything it forwards.
pub struct Gate {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Gate {
    /// Listens on a free loopback port and forwards to the unix socket `to`; open.
    pub async fn to_unix(to: &Path) -> Gate {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, _) = watch::channel(true);
        let accept = tokio::spawn(accept_loop(listener, to.to_owned(), open.subscribe()));
        Gate { addr, open, accept }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops all traffic (held, not dropped) until [`Gate::restore`].
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Lets traffic flow again, what was held first.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, to: PathBuf, open: watch::Receiver<bool>) {
    let mut links = tokio::task::JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        let (to, mut open) = (to.clone(), open.clone());
        links.spawn(async move {
            if open.wait_for(|o| *o).await.is_err() {
                return;
            }
            let Ok(server) = UnixStream::connect(&to).await else {
                return;
            };
            link(client, server, open).await;
        });
    }
}

/// Forwards both ways until both have ended.
async fn link(client: TcpStream, server: UnixStream, open: watch::Receiver<bool>) {
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::join!(forward(cr, sw, open.clone()), forward(sr, cw, open));
}

/// Copies `from` to `to` a chunk at a time, each chunk waiting for the gate to be open.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut open: watch::Receiver<bool>,
) {
    let mut buf = vec![0; CHUNK];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if open.wait_for(|o| *o).await.is_err() {
            return;
        }
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            let _ = to.shutdown().await;
            return;
        }
    }
}
