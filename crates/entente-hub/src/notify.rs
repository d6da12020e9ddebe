//! Telling humans: each quarantine imposed or lifted is POSTed as JSON to a webhook
//! ([`Webhook`], docs/ANOMALY.md).
//!
//! Notices wait in a bounded queue ([`QUEUE`]) and one task sends them in order, each tried
//! [`ATTEMPTS`] times ([`TIMEOUT`] each, a growing pause between) until the webhook answers
//! 2xx. Nothing is dropped silently: a notice that can't be queued or sent is counted
//! (`entente_webhook_notices_total{result="failed"}`) and logged at `error` with the
//! principal it was about. The webhook's address may carry a secret (many services put one
//! in the path): only its scheme, host and port are ever logged or shown ([`crate::post`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::HubError;
use crate::post::{Endpoint, redacted};
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

// === impl Notifier ===

impl Notifier {
    /// A notifier for `webhook` (none: notices are only logged); its task runs until the
    /// notifier and its clones are dropped.
    pub(crate) fn start(webhook: Option<&Webhook>, stats: Arc<Stats>) -> Result<Self, HubError> {
        let Some(webhook) = webhook else {
            return Ok(Self { queue: None, stats });
        };
        let target = Endpoint::parse(&webhook.url, webhook.roots_pem.as_deref(), "the webhook")
            .map_err(HubError::Webhook)?;
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

/// The notices not sent yet. Dropped with its task before they are (the hub stopping), each
/// is counted and logged as not sent: none is lost silently.
struct Waiting {
    queue: mpsc::Receiver<(String, Bytes)>,
    /// Whom the notice being sent is about.
    sending: Option<String>,
    stats: Arc<Stats>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.queue.close();
        let mut left: Vec<String> = self.sending.take().into_iter().collect();
        while let Ok((principal, _)) = self.queue.try_recv() {
            left.push(principal);
        }
        for principal in left {
            stats::bump(&self.stats.webhook_failures);
            tracing::error!(
                %principal,
                "webhook notice not sent: the hub stopped before it was"
            );
        }
    }
}

async fn send_loop(target: Endpoint, queue: mpsc::Receiver<(String, Bytes)>, stats: Arc<Stats>) {
    let mut waiting = Waiting {
        queue,
        sending: None,
        stats: stats.clone(),
    };
    while let Some((principal, body)) = waiting.queue.recv().await {
        waiting.sending = Some(principal.clone());
        let mut attempt = 1;
        loop {
            let sent =
                tokio::time::timeout(TIMEOUT, target.post(body.clone(), "application/json", &[]))
                    .await;
            let error = match sent {
                Ok(Ok(_)) => {
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
                    webhook = %target.shown(),
                    %error,
                    "webhook notice not sent after {ATTEMPTS} attempts"
                );
                break;
            }
            tracing::warn!(
                %principal,
                webhook = %target.shown(),
                %error,
                attempt,
                "webhook notice failed; trying again"
            );
            tokio::time::sleep(Duration::from_millis(500) * attempt).await;
            attempt += 1;
        }
        waiting.sending = None;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_webhook_is_shown_without_its_path() {
        let shown = format!(
            "{:?}",
            Webhook {
                url: "https://h.example/SECRET".to_owned(),
                roots_pem: None,
            }
        );
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    /// Notices still waiting when the hub stops (the sending task dropped) are counted as not
    /// sent, the one being sent too.
    #[tokio::test]
    async fn notices_left_when_the_hub_stops_are_counted_as_not_sent() {
        // A webhook that takes connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                open.push(socket);
            }
        });
        let stats = Arc::new(Stats::default());
        let target = Endpoint::parse(&url, None, "the webhook").unwrap();
        let (queue, waiting) = mpsc::channel(QUEUE);
        let task = tokio::spawn(send_loop(target, waiting, stats.clone()));
        for who in ["a", "b", "c"] {
            queue
                .try_send((who.to_owned(), Bytes::from_static(b"{}")))
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(stats.snapshot().webhook_failures, 3);
        held.abort();
    }
}
