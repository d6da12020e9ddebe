//! The keys RPC ([`KEYS_PATH`], administrators): the hub's data keys, audit checkpoint keys and
//! intermediate CAs, and rotating any (`entente keys status`, `entente keys rotate
//! data|data-kek|audit|intermediate`).

use std::time::SystemTime;

use entente_audit::{Admin, Event, Outcome};
use entente_wire::{DataKeyInfo, KeysRequest, KeysResponse};

use crate::admin;
use crate::audit;
use crate::renew::Caller;
use crate::rollover;
use crate::rpc::{self, RpcError, Services};

/// The gRPC path of the keys RPC.
pub const KEYS_PATH: &str = "/entente.v1.Admin/Keys";

/// Makes a new data key that seals from now on, and records it (`rotate-data-key`); returns
/// its version.
async fn rotate_data_key<R>(services: &Services<R>, caller: &Caller) -> Result<u32, RpcError> {
    let now = rpc::unix_ms(SystemTime::now());
    let version = services
        .data_keys
        .rotate(&services.registry, now)
        .await
        .map_err(|e| RpcError::Keys(e.to_string()))?;
    let event = Event::Admin(Admin {
        operation: audit::clear("rotate-data-key"),
        target: audit::clear(crate::datakeys::DATA_KEK),
        detail: audit::clear(&format!("version {version}")),
    });
    services
        .authz
        .auditor()
        .record(caller.principal.as_str(), Outcome::Success, event)
        .await
        .map_err(RpcError::Unaudited)?;
    Ok(version)
}

/// Serves one `Keys` request: the keys, after the rotation asked for, if any.
pub(crate) async fn keys<R>(
    services: &Services<R>,
    caller: &Caller,
    request: KeysRequest,
) -> Result<KeysResponse, RpcError> {
    let what = match request.rotate.as_str() {
        "" => "showing the hub's keys",
        "data" | "data-kek" | "audit" | "intermediate" => "rotating the hub's keys",
        other => {
            return Err(RpcError::BadRequest(format!(
                "`rotate` is `data`, `data-kek`, `audit` or `intermediate`, not `{}`",
                other.escape_debug()
            )));
        }
    };
    admin::authorize_on_hub(services, caller, SystemTime::now(), what)?;
    let auditor = services.authz.auditor();
    let rotated = match request.rotate.as_str() {
        "data" => {
            auditor.check().map_err(RpcError::Unaudited)?;
            let version = rotate_data_key(services, caller).await?;
            format!("data v{version}")
        }
        "data-kek" => {
            auditor.check().map_err(RpcError::Unaudited)?;
            let rotated = services.data_keys.rotate_kek(&services.registry).await;
            let (outcome, target, detail) = match &rotated {
                Ok((old, new, true)) => (Outcome::Success, new.clone(), format!("after {old}")),
                Ok((old, new, false)) => (
                    Outcome::Success,
                    new.clone(),
                    format!("after {old}, which could not be deleted from the key store"),
                ),
                Err(e) => (
                    Outcome::Failed,
                    services.data_keys.wrapping_key_name(),
                    e.to_string(),
                ),
            };
            let event = Event::Admin(Admin {
                operation: audit::clear("rotate-data-kek"),
                target: audit::clear(&target),
                detail: audit::clear(&detail),
            });
            auditor
                .record(caller.principal.as_str(), outcome, event)
                .await
                .map_err(RpcError::Unaudited)?;
            let (_, new, _) = rotated.map_err(|e| RpcError::Keys(e.to_string()))?;
            // An exposed wrapping key unwraps the data keys of any copy of the list it
            // wrapped (a backup): what is sealed from now on is sealed under a data key it
            // never wrapped.
            let version = rotate_data_key(services, caller).await.map_err(|e| {
                RpcError::Keys(format!(
                    "the data keys are wrapped under `{new}` now, but no new data key was made \
                     (rotate `data` again): {e}"
                ))
            })?;
            format!("data-kek {new}, data v{version}")
        }
        "audit" => auditor
            .rotate_key(&services.audit_keystore, &services.registry)
            .await
            .map_err(|e| RpcError::Keys(e.to_string()))?,
        "intermediate" => {
            rollover::take_step(
                services,
                rollover::Step::Stage,
                caller.principal.as_str(),
                SystemTime::now(),
            )
            .await?
        }
        _ => String::new(),
    };
    let (audit_key, audit_trusted) = match auditor.log() {
        Some(log) => {
            let log = log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut keys = log.verifier().keys().iter().map(ToString::to_string);
            (keys.next().unwrap_or_default(), keys.collect())
        }
        None => (String::new(), Vec::new()),
    };
    let (intermediates, rollover_next, rollover_next_ms) = services.ca.status();
    let response = KeysResponse {
        data_keys: services
            .data_keys
            .status()
            .into_iter()
            .map(|k| DataKeyInfo {
                version: k.version,
                created_ms: k.created_ms,
                current: k.current,
            })
            .collect(),
        audit_key,
        audit_trusted,
        rotated,
        intermediates,
        rollover_next,
        rollover_next_ms,
        ca_key_store: services.ca.backend().to_owned(),
        audit_key_store: services.audit_keystore.backend().to_owned(),
        data_key_store: services.data_keys.backend().to_owned(),
        data_kek: services.data_keys.wrapping_key_name(),
    };
    // Nothing cut silently: an answer over the frame limit (a configured small one) says so.
    if !rpc::fits(&response, &services.limits) {
        let done = if response.rotated.is_empty() {
            String::new()
        } else {
            format!(" (the rotation asked for was made: {})", response.rotated)
        };
        return Err(RpcError::TooMany(format!(
            "the hub's keys ({} data keys) do not fit in one answer within the frame limit{done}",
            response.data_keys.len()
        )));
    }
    Ok(response)
}
