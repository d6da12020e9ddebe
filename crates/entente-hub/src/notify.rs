//! Telling humans: each quarantine imposed or lifted is POSTed as JSON to a webhook
//! ([`Webhook`], docs/ANOMALY.md).
//!
//! Notices wait in a bounded queue ([`QUEUE`]) and one task sends them in order, each tried
//! [`ATTEMPTS`] times ([`TIMEOUT`] each, a growing pause between) until the webhook answers
//! 2xx. Nothing is dropped silently: a notice that can't be queued or sent is counted
//! (`entente_webhook_notices_total{result="failed"}`) and logged at `error` with the
//! principal it was about. The webhook's address may carry a secret (many services put one
//! in the path): only its scheme, host and port are ever logged or shown.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::HubError;
use crate::stats::{self, Stats};

/// Where quarantines are announced: `http://` or `https://` (then with the certificates its
/// server's must chain to).
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The address to POST to, e.g. `https://alerts.example.org/hooks/entente`.
    pub url: String,
    /// For `https`: the PEM certificates the server's certificate must chain to (the hub's
    /// own trust bundle is for agents, not for this server).
    pub roots_pem: Option<Vec<u8>>,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &redacted(&self.url))
            .field("roots_pem", &self.roots_pem.as_ref().map(Vec::len))
            .finish()
    }
}

/// How many notices may wait to be sent.
pub(crate) const QUEUE: usize = 256;
/// How many times a notice is tried.
pub(crate) const ATTEMPTS: u32 = 3;
/// How long one try may take, connection and answer included.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends notices to the webhook, if there is one.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    queue: Option<mpsc::Sender<(String, Bytes)>>,
    stats: Arc<Stats>,
}

/// A parsed [`Webhook`].
struct Target {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
}

// === impl Notifier ===

impl Notifier {
    /// A notifier for `webhook` (none: notices are only logged); its task runs until the
    /// notifier and its clones are dropped.
    pub(crate) fn start(webhook: Option<&Webhook>, stats: Arc<Stats>) -> Result<Self, HubError> {
        let Some(webhook) = webhook else {
            return Ok(Self { queue: None, stats });
        };
        let target = Target::parse(webhook).map_err(HubError::Webhook)?;
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(send_loop(target, waiting, stats.clone()));
        Ok(Self {
            queue: Some(queue),
            stats,
        })
    }

    /// Queues `notice` (a JSON object) about `principal`.
    pub(crate) fn notify(&self, principal: &str, notice: &serde_json::Value) {
        let Some(queue) = &self.queue else {
            return;
        };
        let body = Bytes::from(notice.to_string());
        if queue.try_send((principal.to_owned(), body)).is_err() {
            stats::bump(&self.stats.webhook_failures);
            tracing::error!(
                %principal,
                "webhook notice not sent: {QUEUE} notices are waiting already"
            );
        }
    }
}

async fn send_loop(
    target: Target,
    mut waiting: mpsc::Receiver<(String, Bytes)>,
    stats: Arc<Stats>,
) {
    while let Some((principal, body)) = waiting.recv().await {
        let mut attempt = 1;
        loop {
            let sent = tokio::time::timeout(TIMEOUT, target.post(body.clone())).await;
            let error = match sent {
                Ok(Ok(())) => {
                    stats::bump(&stats.webhook_sent);
                    break;
                }
                Ok(Err(e)) => e,
                Err(_) => format!("no answer within {} s", TIMEOUT.as_secs()),
            };
            if attempt >= ATTEMPTS {
                stats::bump(&stats.webhook_failures);
                tracing::error!(
                    %principal,
                    webhook = %redacted(&target.uri.to_string()),
                    %error,
                    "webhook notice not sent after {ATTEMPTS} attempts"
                );
                break;
            }
            tracing::warn!(
                %principal,
                webhook = %redacted(&target.uri.to_string()),
                %error,
                attempt,
                "webhook notice failed; trying again"
            );
            tokio::time::sleep(Duration::from_millis(500) * attempt).await;
            attempt += 1;
        }
    }
}

// === impl Target ===

impl Target {
    fn parse(webhook: &Webhook) -> Result<Self, String> {
        let shown = redacted(&webhook.url);
        let uri: Uri = webhook
            .url
            .parse()
            .map_err(|e| format!("the webhook `{shown}` is not a URL: {e}"))?;
        let host = uri
            .host()
            .ok_or_else(|| format!("the webhook `{shown}` names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let pem = webhook.roots_pem.as_deref().ok_or_else(|| {
                    format!("the webhook `{shown}` is https: give the certificates its server's chain to")
                })?;
                Some(connector(pem, &host)?)
            }
            _ => return Err(format!("the webhook `{shown}` must be http:// or https://")),
        };
        let port = uri
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        Ok(Self {
            uri,
            host,
            port,
            tls,
        })
    }

    async fn post(&self, body: Bytes) -> Result<(), String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        match &self.tls {
            None => self.post_over(tcp, body).await,
            Some(connector) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("server name: {e}"))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("tls: {e}"))?;
                self.post_over(tls, body).await
            }
        }
    }

    async fn post_over<I>(&self, io: I, body: Bytes) -> Result<(), String>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("http: {e}"))?;
        tokio::spawn(connection);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let authority = self
            .uri
            .authority()
            .map_or_else(|| self.host.clone(), |a| a.as_str().to_owned());
        let request = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "entente-hub")
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("http: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", response.status()))
        }
    }
}

/// A TLS client that trusts the certificates of `pem` alone.
fn connector(pem: &[u8], host: &str) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("the webhook's certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("the webhook's certificates: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the webhook's certificates: no certificate in the PEM".into());
    }
    ServerName::try_from(host.to_owned()).map_err(|e| format!("the webhook's host: {e}"))?;
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// `url` with nothing after its authority: what may be shown of a webhook.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_owned();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // A user and password before `@` are secret too.
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}/…")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn webhook(url: &str) -> Webhook {
        Webhook {
            url: url.to_owned(),
            roots_pem: None,
        }
    }

    #[test]
    fn the_address_is_shown_without_its_path_or_credentials() {
        assert_eq!(
            redacted("https://hooks.example.org/services/T0/B1/SECRET?x=1"),
            "https://hooks.example.org/…"
        );
        assert_eq!(
            redacted("http://user:pass@127.0.0.1:8080/h"),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(redacted("nonsense"), "(not a URL)");
        let shown = format!("{:?}", webhook("https://h.example/SECRET"));
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    #[test]
    fn webhooks_are_checked_when_the_hub_starts() {
        let target = Target::parse(&webhook("http://127.0.0.1:9/hook?k=v")).unwrap();
        assert_eq!((target.host.as_str(), target.port), ("127.0.0.1", 9));
        assert!(target.tls.is_none());
        assert_eq!(
            Target::parse(&webhook("http://[::1]/x")).unwrap().host,
            "::1"
        );
        for (url, says) in [
            ("ftp://h/x", "http:// or https://"),
            ("https://h.example/SECRET", "certificates"),
            ("not a url", "not a URL"),
            ("/relative", "no host"),
        ] {
            let err = Target::parse(&webhook(url)).err().unwrap();
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("SECRET"), "{err}");
        }
        let bad_pem = Webhook {
            url: "https://h.example/x".into(),
            roots_pem: Some(b"not pem".to_vec()),
        };
        assert!(
            Target::parse(&bad_pem)
                .err()
                .unwrap()
                .contains("no certificate")
        );
    }
}
