//! A TCP proxy in front of the fake that drops connections: some right after a request went
//! through but before any response byte came back (the worst case for "exactly once": the server
//! did the work and the client never heard of it), and every other one after a short random
//! lifetime, wherever it is (mid-response included), so clients keep opening new ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct FlakyProxy {
    addr: SocketAddr,
    dropped: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FlakyProxy {
    /// Proxies to `upstream` (`http://127.0.0.1:PORT`), dropping each new connection with
    /// `probability` once its first request has been sent on, and the others after 20-200 ms
    /// (seeded, so a run is reproducible).
    pub async fn start(upstream: &str, probability: f64, seed: u64) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("an http://IP:PORT upstream");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let dropped = Arc::new(AtomicUsize::new(0));
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
        let counter = dropped.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (doomed, lifetime) = {
                    let mut rng = rng.lock().unwrap();
                    (
                        rng.f64() < probability,
                        Duration::from_millis(rng.u64(20..200)),
                    )
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    if doomed {
                        drop_after_request(client, server).await;
                        counter.fetch_add(1, Ordering::SeqCst);
                    } else {
                        let (mut client, mut server) = (client, server);
                        let relay = tokio::io::copy_bidirectional(&mut client, &mut server);
                        if tokio::time::timeout(lifetime, relay).await.is_err() {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        FlakyProxy {
            addr,
            dropped,
            task,
        }
    }

    /// Proxies to `upstream`, dropping the first `times` connections whose first request
    /// contains `needle` (e.g. `/v1/submitjob`) right after that request went through, before
    /// any response byte came back; every other connection is relayed untouched. Clients should
    /// not pool connections, so that each request opens its own.
    pub async fn drop_matching(upstream: &str, needle: &'static str, times: usize) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("an http://IP:PORT upstream");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let dropped = Arc::new(AtomicUsize::new(0));
        let counter = dropped.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut first = vec![0u8; 64 * 1024];
                    let Ok(n) = client.read(&mut first).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&first[..n]).to_ascii_lowercase();
                    let doomed = head.contains(needle)
                        && counter
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                                (d < times).then_some(d + 1)
                            })
                            .is_ok();
                    if server.write_all(&first[..n]).await.is_err() {
                        return;
                    }
                    if doomed {
                        drop_after_request(client, server).await;
                    } else {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        FlakyProxy {
            addr,
            dropped,
            task,
        }
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections dropped so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends the client's bytes on until the server starts answering, then closes both sides.
async fn drop_after_request(client: TcpStream, server: TcpStream) {
    let (mut client_read, _client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let forward = tokio::spawn(async move {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut first = [0u8; 1];
    let _ = server_read.read(&mut first).await;
    forward.abort();
    // Dropping the halves closes both connections with the response unsent.
}
