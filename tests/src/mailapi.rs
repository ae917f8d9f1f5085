//! A fake e-mail API (`POST /messages`) for the worker's HTTP transport, whose
//! behaviour a test switches while the worker runs: answer 200, answer an
//! error status (5xx, 429 with `Retry-After`), or answer slowly. It records
//! every call with its `Idempotency-Key`, so a test can tell an e-mail
//! delivered twice from a retried call.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the fake API answers the next calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailMode {
    /// 200 with `{"id": ...}`.
    Ok,
    /// This status (429 carries `Retry-After: 1`).
    Fail(u16),
    /// Waits this long, then 200.
    Slow(Duration),
}

/// One call the API received.
#[derive(Debug, Clone)]
pub struct MailCall {
    pub idempotency_key: String,
    pub to: String,
    /// The status answered (0: the client went away before the answer).
    pub status: u16,
}

#[derive(Default)]
struct State {
    mode: Option<MailMode>,
    calls: Vec<MailCall>,
}

pub struct MailApi {
    pub port: u16,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl MailApi {
    pub async fn start(mode: MailMode) -> MailApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            mode: Some(mode),
            calls: vec![],
        }));
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        continue;
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let _ = serve(sock, state).await;
                    });
                }
            })
        };
        MailApi { port, state, task }
    }

    /// The base URL for `MAIL_API_URL`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_mode(&self, mode: MailMode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<MailCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The idempotency keys answered with 200, in order (a key twice means
    /// the API accepted the same e-mail twice).
    pub fn delivered(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.status == 200)
            .map(|c| c.idempotency_key)
            .collect()
    }
}

impl Drop for MailApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut sock: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: serde_json::Value =
        serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or_default();
    let key = header("idempotency-key").unwrap_or_default();
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    let mode = state.lock().unwrap().mode.unwrap_or(MailMode::Ok);
    let (status, extra) = match mode {
        MailMode::Ok => (200, ""),
        MailMode::Fail(429) => (429, "Retry-After: 1\r\n"),
        MailMode::Fail(s) => (s, ""),
        MailMode::Slow(d) => {
            tokio::time::sleep(d).await;
            (200, "")
        }
    };
    let payload = if status == 200 {
        format!("{{\"id\":\"fake-{key}\"}}")
    } else {
        "{\"error\":\"injected\"}".to_owned()
    };
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{payload}",
        payload.len()
    );
    // Recorded only when the answer reached the socket: a client that timed
    // out and went away did not get a 200.
    let written = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
    state.lock().unwrap().calls.push(MailCall {
        idempotency_key: key,
        to,
        status: if written.is_ok() { status } else { 0 },
    });
    Ok(())
}
