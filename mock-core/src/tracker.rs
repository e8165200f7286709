//! Session bookkeeping shared by both mocks: spawning sessions, counting the running
//! ones, waiting for quiet and shutting down.
//!
//! Must never: sleep to wait for sessions (it signals through a watch channel).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Mutex;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// Tracks a server's tasks: the accept loop and one task per session.
#[derive(Debug)]
pub struct Tracker {
    active: watch::Sender<usize>,
    /// The most sessions that ran at once.
    peak: std::sync::atomic::AtomicUsize,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements the running count however a session task ends (abort included).
struct Running(watch::Sender<usize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Tracker {
    /// No tasks yet.
    pub fn new() -> Self {
        Self {
            active: watch::channel(0).0,
            peak: std::sync::atomic::AtomicUsize::new(0),
            tasks: Mutex::new(Vec::new()),
        }
    }

    fn keep(&self, handle: AbortHandle) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    /// Runs a session; it counts as running from this call until it ends or is aborted.
    pub fn spawn_session(&self, session: impl Future<Output = ()> + Send + 'static) {
        self.active.send_modify(|n| {
            *n += 1;
            self.peak.fetch_max(*n, std::sync::atomic::Ordering::SeqCst);
        });
        let running = Running(self.active.clone());
        let task = tokio::spawn(async move {
            session.await;
            drop(running);
        });
        self.keep(task.abort_handle());
    }

    /// Accepts connections (with `TCP_NODELAY`) and hands each to `on_accept` with its peer IP.
    pub fn accept_loop<F>(&self, listener: TcpListener, on_accept: F)
    where
        F: Fn(TcpStream, IpAddr) + Send + 'static,
    {
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, peer)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                on_accept(sock, peer.ip());
            }
        });
        self.keep(task.abort_handle());
    }

    /// The most sessions that ran at the same time so far.
    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until no session is running.
    pub async fn wait_idle(&self) {
        let mut rx = self.active.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Aborts the accept loop and every session, then waits for them to be gone.
    pub async fn shutdown(&self) {
        let tasks: Vec<AbortHandle> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in &tasks {
            t.abort();
        }
        self.wait_idle().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_peak_counts_the_sessions_that_ran_at_once() {
        let t = Tracker::new();
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        t.spawn_session(async move {
            let _ = held.await;
        });
        t.spawn_session(async {});
        drop(release);
        t.wait_idle().await;
        t.spawn_session(async {});
        t.wait_idle().await;
        assert_eq!(t.peak(), 2);
    }
}
