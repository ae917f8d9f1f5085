//! The e-mail transports (R10): an HTTP e-mail API through reqwest, or a
//! directory of `.eml` files when no API is configured. A send is 2xx (sent,
//! with the provider's id), retryable (408/429/5xx/time-outs) or permanent
//! (other 4xx). The dispatcher that drives them is `app::mail_relay`.

use std::path::PathBuf;
use std::time::Duration;

use crate::adapters::db::OutboxEmail;

/// Why a send did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later (rate limit, server error, time-out, connection).
    #[error("{reason}")]
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The provider refused the e-mail; retrying will not help.
    #[error("{0}")]
    Permanent(String),
}

impl SendError {
    /// A short, bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SendError::Retryable { reason, .. } if reason.starts_with("HTTP 429") => "rate_limited",
            SendError::Retryable { reason, .. } if reason.starts_with("HTTP") => "server_error",
            SendError::Retryable { reason, .. } if reason.contains("time-out") => "timeout",
            SendError::Retryable { .. } => "connection",
            SendError::Permanent(_) => "rejected",
        }
    }
}

/// The HTTP e-mail API: `POST {base}/messages` with a bearer token and an
/// `Idempotency-Key` header; JSON body `{from, to, subject, text, html}`;
/// a 2xx answer may carry `{"id": "..."}`.
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    url: String,
    token: String,
    from: String,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("url", &self.url)
            .field("token", &"***")
            .finish()
    }
}

impl HttpTransport {
    pub fn new(base_url: &str, token: &str, from: &str, timeout: Duration) -> Result<Self, String> {
        // reqwest's TLS needs a process-wide crypto provider: ring, as sqlx and
        // lapin use. Installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpTransport {
            client,
            url: format!("{}/messages", base_url.trim_end_matches('/')),
            token: token.to_owned(),
            from: from.to_owned(),
        })
    }

    pub async fn send(&self, e: &OutboxEmail) -> Result<String, SendError> {
        let body = serde_json::json!({
            "from": self.from,
            "to": [e.to_address],
            "subject": e.subject,
            "text": e.body_text,
            "html": e.body_html,
        });
        let resp = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("Idempotency-Key", e.idempotency_key.to_string())
            .json(&body)
            .send()
            .await
            .map_err(|err| SendError::Retryable {
                reason: if err.is_timeout() {
                    "time-out talking to the mail API".into()
                } else {
                    "cannot reach the mail API".into()
                },
                retry_after: None,
            })?;
        let status = resp.status();
        if status.is_success() {
            let id = resp
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
                .unwrap_or_else(|| e.idempotency_key.to_string());
            return Ok(id);
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let code = status.as_u16();
        if code == 408 || code == 429 || status.is_server_error() {
            Err(SendError::Retryable {
                reason: format!("HTTP {code} from the mail API"),
                retry_after,
            })
        } else {
            // The provider's body may echo the address; keep only the status.
            Err(SendError::Permanent(format!(
                "HTTP {code} from the mail API: the provider refused this e-mail"
            )))
        }
    }
}

/// Writes each e-mail as `<idempotency key>.eml` into a directory, atomically;
/// the same e-mail always lands in the same file, so it is never doubled.
#[derive(Debug, Clone)]
pub struct FileTransport {
    dir: PathBuf,
    from: String,
}

impl FileTransport {
    pub fn new(dir: PathBuf, from: &str) -> Self {
        FileTransport {
            dir,
            from: from.to_owned(),
        }
    }

    pub async fn send(&self, e: &OutboxEmail) -> Result<String, SendError> {
        let io = |what: &str, err: std::io::Error| SendError::Retryable {
            reason: format!("cannot {what} the mail directory: {}", err.kind()),
            retry_after: None,
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|err| io("create", err))?;
        let name = format!("{}.eml", e.idempotency_key);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        tokio::fs::write(&tmp, render_eml(&self.from, e))
            .await
            .map_err(|err| io("write to", err))?;
        tokio::fs::rename(&tmp, self.dir.join(&name))
            .await
            .map_err(|err| io("write to", err))?;
        Ok(name)
    }
}

/// A multipart/alternative message (text and HTML), RFC 5322.
pub fn render_eml(from: &str, e: &OutboxEmail) -> String {
    let boundary = format!("las-worker-{}", e.idempotency_key.simple());
    let subject = encode_header(&e.subject);
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{key}@las-worker>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n\
--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n\
--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n\
--{boundary}--\r\n",
        to = e.to_address,
        key = e.idempotency_key,
        text = e.body_text.replace('\n', "\r\n"),
        html = e.body_html.replace('\n', "\r\n"),
    )
}

/// RFC 2047 for non-ASCII subjects.
fn encode_header(s: &str) -> String {
    if s.is_ascii() {
        return s.to_owned();
    }
    let mut hex = String::new();
    for b in s.as_bytes() {
        match *b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => hex.push(*b as char),
            b' ' => hex.push('_'),
            b => hex.push_str(&format!("={b:02X}")),
        }
    }
    format!("=?UTF-8?Q?{hex}?=")
}

#[derive(Debug, Clone)]
pub enum Transport {
    Http(HttpTransport),
    Files(FileTransport),
}

impl Transport {
    pub async fn send(&self, e: &OutboxEmail) -> Result<String, SendError> {
        match self {
            Transport::Http(t) => t.send(e).await,
            Transport::Files(t) => t.send(e).await,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Transport::Http(t) => format!("HTTP API {}", t.url),
            Transport::Files(t) => format!("files in {}", t.dir.display()),
        }
    }
}
