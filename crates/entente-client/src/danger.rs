//! **Danger: weakens the SDK's guarantees. For demonstrations and tests only.**
//!
//! The [`Client`] never lets an application send a frame it did not seal and sign itself for
//! its own principal. The functions here do: they put caller-made frames on the wire as they
//! are, so that a demo or a test can show what the hub does with a forged sender, a replayed
//! batch or a tampered envelope. Nothing here is needed to use Entente; code that calls it
//! says so at every call site (`danger::`).

use entente_wire::{ClientFrame, Publish, client_frame, server_frame};
use tokio::sync::mpsc;

use crate::transport::status_text;
use crate::{Client, Error, ErrorKind};

/// Sends `publish` exactly as given — its sender keys and batches unchecked, whatever sender
/// they name, however they were sealed — on a new session stream of `client`'s connection,
/// and waits for the hub's answer to `publish.request_id`: `Ok(())` on `Ack`, an error
/// carrying the hub's code ([`Error::refusal_code`]) on `Refusal`.
///
/// The frame goes over `client`'s authenticated connection, so the hub sees it as coming from
/// `client`'s principal. The extra session is closed once the answer is in; subscriptions
/// and publishes of `client` are not affected.
///
/// Weakens guarantees: this is how a misbehaving or compromised agent talks to the hub. For
/// demonstrations and tests only.
pub async fn danger_publish_raw(client: &Client, publish: Publish) -> Result<(), Error> {
    let limit = client.request_timeout();
    tokio::time::timeout(limit, publish_raw(client, publish))
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!("the hub did not answer within {limit:?}"),
            )
        })?
}

async fn publish_raw(client: &Client, publish: Publish) -> Result<(), Error> {
    let id = publish.request_id;
    let (outbound, outbound_rx) = mpsc::channel(1);
    let mut stream = client.transport().session(outbound_rx).await?;
    outbound
        .send(ClientFrame {
            kind: Some(client_frame::Kind::Publish(publish)),
        })
        .await
        .map_err(|_| Error::new(ErrorKind::Closed, "the raw session closed at once"))?;
    loop {
        let frame = stream.message().await.map_err(|status| {
            Error::new(
                ErrorKind::Closed,
                format!("the hub closed the raw session: {}", status_text(&status)),
            )
            .with_source(status)
        })?;
        let Some(frame) = frame else {
            return Err(Error::new(
                ErrorKind::Closed,
                "the hub ended the raw session without answering",
            ));
        };
        match frame.kind {
            Some(server_frame::Kind::Ack(ack)) if ack.request_id == id => return Ok(()),
            Some(server_frame::Kind::Refusal(r)) if r.request_id == id => {
                return Err(Error::refusal("the raw publish", r.code, &r.reason));
            }
            _ => {}
        }
    }
}
