//! `entente keys status` and `entente keys rotate data|data-kek|audit|intermediate`: the hub's
//! data keys, audit checkpoint keys and intermediate CAs (administrators).

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Subcommand, ValueEnum};

use crate::At;
use crate::commands::agent::{connect, run};
use crate::commands::grants::utc;

/// What `entente keys` does.
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Show the data keys' versions, the audit checkpoint keys and the intermediate CAs.
    Status {
        #[command(flatten)]
        at: At,
    },
    /// Make a new key of KIND now; it is recorded in the audit log.
    Rotate {
        #[command(flatten)]
        at: At,
        /// `data`: a new data key encrypts what the hub keeps at rest from now on (older ones
        /// are retired once nothing kept needs them); `data-kek`: every data key is wrapped again
        /// under a new key-encryption key and the old one is deleted (nothing kept at rest is
        /// decrypted); `audit`: a new checkpoint key signs the
        /// audit log from now on (auditors trust both); `intermediate`: a new intermediate CA
        /// is staged (trusted, not signing), signs an overlap later, and the old one is retired
        /// another overlap after that — no agent is disconnected.
        kind: KeyKind,
    },
}

/// A kind of key `entente keys rotate` makes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum KeyKind {
    /// The data key.
    Data,
    /// The key-encryption key that wraps the data keys.
    #[value(name = "data-kek")]
    DataKek,
    /// The audit log's checkpoint key.
    Audit,
    /// The intermediate CA.
    Intermediate,
}

pub(crate) fn run_command(command: KeysCommand, json: bool) -> Result<ExitCode> {
    let (at, rotate) = match command {
        KeysCommand::Status { at } => (at, None),
        KeysCommand::Rotate { at, kind } => (
            at,
            Some(match kind {
                KeyKind::Data => "data",
                KeyKind::DataKek => "data-kek",
                KeyKind::Audit => "audit",
                KeyKind::Intermediate => "intermediate",
            }),
        ),
    };
    run(async move {
        let client = connect(&at.identity, &at.hub).await?;
        let keys = client.keys(rotate).await.context(match rotate {
            Some(_) => "rotating the key",
            None => "reading the hub's keys",
        })?;
        client.close().await;
        if json {
            super::print_json(&serde_json::json!({
                "data_keys": keys.data_keys.iter().map(|k| serde_json::json!({
                    "version": k.version,
                    "created_ms": k.created_ms,
                    "current": k.current,
                })).collect::<Vec<_>>(),
                "audit_key": keys.audit_key,
                "audit_trusted": keys.audit_trusted,
                "rotated": keys.rotated,
                "intermediates": keys.intermediates.iter().map(|i| serde_json::json!({
                    "role": i.role,
                    "signer": hex::encode(&i.signer),
                    "not_before_ms": i.not_before_ms,
                    "not_after_ms": i.not_after_ms,
                    "key": i.key,
                })).collect::<Vec<_>>(),
                "rollover_next": keys.rollover_next,
                "rollover_next_ms": keys.rollover_next_ms,
                "data_kek": keys.data_kek,
                "key_stores": {
                    "ca": keys.ca_key_store,
                    "audit": keys.audit_key_store,
                    "data": keys.data_key_store,
                },
            }));
            return Ok(ExitCode::SUCCESS);
        }
        if !keys.rotated.is_empty() {
            outln!("rotated: {}", keys.rotated);
        }
        outln!(
            "key stores: ca keys {}, audit keys {}, data keys {}",
            keys.ca_key_store,
            keys.audit_key_store,
            keys.data_key_store
        );
        outln!("data keys wrapped by `{}`", keys.data_kek);
        for key in &keys.data_keys {
            outln!(
                "data key v{}  made {}{}",
                key.version,
                utc(key.created_ms),
                if key.current { "  (encrypts now)" } else { "" }
            );
        }
        if keys.audit_key.is_empty() {
            outln!("no audit log");
        } else {
            outln!("audit checkpoint key  {}", keys.audit_key);
            for key in &keys.audit_trusted {
                outln!("  earlier, still trusted  {key}");
            }
        }
        for ca in &keys.intermediates {
            let signer: String = hex::encode(&ca.signer).chars().take(16).collect();
            outln!(
                "intermediate ca {signer}  {}  valid {} to {}{}",
                ca.role,
                utc(ca.not_before_ms),
                utc(ca.not_after_ms),
                if ca.key.is_empty() {
                    "  (key not in the key store)".to_owned()
                } else {
                    format!("  key `{}`", ca.key)
                }
            );
        }
        if !keys.rollover_next.is_empty() {
            outln!(
                "next rollover step: {} at {}",
                keys.rollover_next,
                utc(keys.rollover_next_ms)
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
