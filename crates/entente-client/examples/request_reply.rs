//! Request/reply: Bob answers requests on his direct channel; Alice asks.
//!
//! With a hub running and `demo/alice` and `demo/bob` enrolled (README quickstart):
//!
//! ```sh
//! cargo run -p entente-client --example request_reply -- 127.0.0.1:7443 ./alice ./bob
//! ```
//!
//! Each request is a direct message sealed for Bob alone, with a `reply_to` in Alice's own
//! reply namespace. The hub lets Bob, and only Bob, answer it once; Alice's SDK accepts only a
//! verified reply from Bob on that channel.

use std::{path::Path, time::Duration, time::SystemTime};

use entente_client::{Client, ClientOptions, ErrorKind, Identity};
use futures_util::StreamExt as _;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [hub, alice_dir, bob_dir] = args.as_slice() else {
        return Err("usage: request_reply HUB_ADDR ALICE_IDENTITY_DIR BOB_IDENTITY_DIR".into());
    };
    let now = SystemTime::now();
    let alice = Client::connect(
        Identity::load(Path::new(alice_dir), now)?,
        hub.as_str(),
        ClientOptions::new(),
    )
    .await?;
    let bob = Client::connect(
        Identity::load(Path::new(bob_dir), now)?,
        hub.as_str(),
        ClientOptions::new(),
    )
    .await?;

    // Bob's reply handler: a task answering every request on his direct channel.
    let mut requests = bob.serve_direct().await?;
    let server = tokio::spawn(async move {
        while let Some(item) = requests.next().await {
            let request = match item {
                Ok(request) => request,
                // A message that failed verification: reported, and the stream goes on.
                Err(e) if e.kind() == ErrorKind::Rejected => {
                    eprintln!("bob rejected a message: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let question = String::from_utf8_lossy(&request.message.payload).into_owned();
            let answer = format!("bob heard {} say {question:?}", request.message.sender);
            if let Err(e) = request.responder.reply(answer).await {
                eprintln!("bob could not answer: {e}");
            }
        }
        Ok(())
    });

    for question in ["ping", "what time is it?", "bye"] {
        let reply = alice
            .request(bob.principal(), question, Duration::from_secs(5))
            .await?;
        println!(
            "{} replied: {}",
            reply.sender,
            String::from_utf8_lossy(&reply.payload)
        );
    }

    alice.close().await;
    bob.close().await;
    server.abort();
    Ok(())
}
