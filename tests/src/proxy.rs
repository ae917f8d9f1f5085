//! A small TCP proxy between the worker and a service (the broker), for
//! fault injection: `sever` drops every live connection at once (both
//! directions, no FIN handshake with the other side), and `refuse_for`
//! makes the proxy close new connections at once for a while, like a
//! broker that is down. `freeze` is a silent partition: the connections
//! open at that moment stay open and pass no byte either way (no FIN, no
//! RST), as behind a dead network path; new connections pass again.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};

/// A running proxy; stops (and drops every connection) when dropped.
pub struct TcpProxy {
    pub port: u16,
    /// Incremented by `sever`: every connection opened before ends.
    generation: watch::Sender<u64>,
    /// Incremented by `freeze`: every connection opened before goes silent.
    frozen: watch::Sender<u64>,
    refuse_until: Arc<Mutex<Option<Instant>>>,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    live: Arc<AtomicU64>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`
    /// (`host:port`).
    pub async fn start(upstream: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (generation, _) = watch::channel(0u64);
        let (frozen, _) = watch::channel(0u64);
        let refuse_until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let accepted = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let live = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_owned();
        let accept_task = {
            let generation = generation.clone();
            let frozen = frozen.clone();
            let refuse_until = refuse_until.clone();
            let accepted = accepted.clone();
            let refused = refused.clone();
            let live = live.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let refusing = refuse_until
                        .lock()
                        .await
                        .is_some_and(|t| Instant::now() < t);
                    if refusing {
                        refused.fetch_add(1, Ordering::SeqCst);
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        refused.fetch_add(1, Ordering::SeqCst);
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let mut cut = generation.subscribe();
                    let born = *cut.borrow_and_update();
                    let mut freeze = frozen.subscribe();
                    let thawed = *freeze.borrow_and_update();
                    let live = live.clone();
                    live.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (mut cr, mut cw) = client.into_split();
                        let (mut sr, mut sw) = server.into_split();
                        // A side that closes is closed on the other side
                        // too (FIN passed on): a client that went away
                        // must not stay connected to the broker as a ghost
                        // until the broker's heartbeat time-out.
                        let up = async {
                            let _ = tokio::io::copy(&mut cr, &mut sw).await;
                            let _ = sw.shutdown().await;
                        };
                        let down = async {
                            let _ = tokio::io::copy(&mut sr, &mut cw).await;
                            let _ = cw.shutdown().await;
                        };
                        let silent = tokio::select! {
                            _ = async { tokio::join!(up, down) } => false,
                            _ = cut.wait_for(|g| *g != born) => false,
                            _ = freeze.wait_for(|g| *g != thawed) => true,
                        };
                        if silent {
                            // The sockets stay open (the halves live on
                            // here) and nothing is copied, until a `sever`
                            // or the proxy's end.
                            let _ = cut.wait_for(|g| *g != born).await.map(|_| ());
                        }
                        live.fetch_sub(1, Ordering::SeqCst);
                        // Dropping both halves of both sockets closes them.
                    });
                }
            })
        };
        TcpProxy {
            port,
            generation,
            frozen,
            refuse_until,
            accepted,
            refused,
            live,
            accept_task,
        }
    }

    /// Drops every live connection through the proxy.
    pub fn sever(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// A silent partition of every live connection: they stay open and
    /// carry nothing from now on; connections opened later pass.
    pub fn freeze(&self) {
        self.frozen.send_modify(|g| *g += 1);
    }

    /// Refuses (closes at once) every new connection for `d`.
    pub async fn refuse_for(&self, d: Duration) {
        *self.refuse_until.lock().await = Some(Instant::now() + d);
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections refused so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn live(&self) -> u64 {
        self.live.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.sever();
        self.accept_task.abort();
    }
}
