//! Enroll an agent with a one-time join token and write its identity directory. The token is
//! taken from the environment (`ENTENTE_JOIN_TOKEN`), never from the arguments, which other
//! users of the machine can read.
//!
//! ```sh
//! export ENTENTE_JOIN_TOKEN=$(entente token create --identity hub-data/admin --hub 127.0.0.1:7443 --agent demo/carol)
//! cargo run -p entente-client --example enroll -- 127.0.0.1:7443 hub-data/ca.pem ./carol
//! ```
//!
//! The SDK makes a TLS key and message keys locally, sends a CSR and the public keys over TLS
//! to the hub's enrollment name (verified against the trust bundle), and gets back its
//! X509-SVID chain and CA-signed key bundle. Private keys never leave this process; the
//! directory's private files are written 0600.

use std::path::Path;

use entente_client::TrustBundle;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [hub, ca_pem, out] = args.as_slice() else {
        return Err("usage: ENTENTE_JOIN_TOKEN=TOKEN enroll HUB_ADDR CA_PEM OUT_DIR".into());
    };
    let token =
        std::env::var("ENTENTE_JOIN_TOKEN").map_err(|_| "no join token: set ENTENTE_JOIN_TOKEN")?;
    let trust = TrustBundle::from_pem(&std::fs::read_to_string(ca_pem)?)?;
    let identity = entente_client::enroll(hub.as_str(), &trust, token.trim()).await?;
    identity.save(Path::new(out))?;
    println!("enrolled {} into {out}", identity.principal());
    Ok(())
}
