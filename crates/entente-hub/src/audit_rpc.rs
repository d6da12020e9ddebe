//! The audit log's RPCs, for administrators (listed in `HubConfig::admins`, or permitted
//! `admin` on `Hub::"hub"`): records from an index (`entente audit tail`), an export in chunks
//! (`entente audit export`), and the proof that a record is in the log with the log's
//! consistency with an earlier checkpoint (docs/AUDIT.md §8).

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use entente_audit::{AuditError, AuditLog};
use entente_wire::{
    AuditExportRequest, AuditExportResponse, AuditProofRequest, AuditProofResponse,
    AuditRecordsRequest, AuditRecordsResponse, MAX_AUDIT_RECORDS,
};

use crate::admin;
use crate::renew::Caller;
use crate::rpc::{self, RpcError, Services};

/// The gRPC path of reading records of the audit log.
pub const AUDIT_RECORDS_PATH: &str = "/entente.v1.Audit/Records";

/// The gRPC path of exporting the audit log, chunk by chunk.
pub const AUDIT_EXPORT_PATH: &str = "/entente.v1.Audit/Export";

/// The gRPC path of proving a record's inclusion and the log's consistency.
pub const AUDIT_PROOF_PATH: &str = "/entente.v1.Audit/Proof";

/// The largest chunk of an export in one answer.
const MAX_CHUNK: usize = 512 * 1024;

/// Room left in a frame for everything but the records or the chunk.
const FRAME_MARGIN: usize = 32 * 1024;

/// The latest export written for [`AUDIT_EXPORT_PATH`]: its number (the tree size it ends
/// at), file, size and checkpoint.
#[derive(Debug, Default)]
pub(crate) struct Exports(Mutex<Option<Snapshot>>);

/// The directory exports are written to: `<log directory>.exports`, beside the log.
pub(crate) fn export_dir(log_dir: &std::path::Path) -> PathBuf {
    let mut name = log_dir.as_os_str().to_owned();
    name.push(".exports");
    PathBuf::from(name)
}

#[derive(Debug, Clone)]
struct Snapshot {
    size: u64,
    path: PathBuf,
    total: u64,
    checkpoint: String,
    /// Who read it from its start (and so whose copy is on the record): only they read on.
    readers: Vec<String>,
}

/// Serves one `Records` request.
pub(crate) async fn records<R>(
    services: &Services<R>,
    caller: &Caller,
    request: AuditRecordsRequest,
) -> Result<AuditRecordsResponse, RpcError> {
    let log = authorized_log(services, caller, "reading the audit log").await?;
    let max = match request.max {
        0 => 100,
        n => (n as usize).min(MAX_AUDIT_RECORDS),
    };
    let budget = services.limits.max_frame_bytes.saturating_sub(FRAME_MARGIN);
    read_log(log, move |log| {
        let total = log.record_count();
        let from = request.from.min(total);
        let end = from.saturating_add(max as u64).min(total);
        let mut records = Vec::new();
        let mut size = 0;
        for record in log.records(from..end)? {
            let bytes = record.to_bytes()?;
            size += bytes.len() + 8;
            if size > budget && !records.is_empty() {
                break;
            }
            records.push(bytes);
        }
        let checkpoint = log.checkpoint().as_str().to_owned();
        let verifier_key = verifier_key(log);
        Ok(AuditRecordsResponse {
            records,
            from,
            total,
            checkpoint,
            verifier_key,
        })
    })
    .await
}

/// Serves one `Export` request: `snapshot` 0 seals the log and writes a new export beside
/// the log's directory (replacing the one before); a chunk names its export by number.
pub(crate) async fn export<R>(
    services: &Services<R>,
    caller: &Caller,
    request: AuditExportRequest,
) -> Result<AuditExportResponse, RpcError> {
    let log = authorized_log(services, caller, "exporting the audit log").await?;
    let (exports, dir) = services
        .authz
        .auditor()
        .exports()
        .ok_or_else(|| RpcError::Precondition("this hub keeps no audit log".into()))?;
    let chunk = services
        .limits
        .max_frame_bytes
        .saturating_sub(FRAME_MARGIN)
        .clamp(1, MAX_CHUNK);
    // A copy is read from its start, which is on the record (the RPC's handler records an
    // export at offset 0), and on only by whoever started it.
    let reader = caller.principal.to_string();
    if request.snapshot == 0 && request.offset != 0 {
        return Err(RpcError::BadRequest(
            "a new export is read from offset 0".into(),
        ));
    }
    let snapshot = if request.snapshot == 0 {
        let (exports, auditor) = (exports.clone(), services.authz.auditor().clone());
        rpc::blocking(move || write_snapshot(&auditor, &log, &exports, &dir).map_err(audit_error))
            .await?
            // Exports are numbered by their tree size, and 0 asks for a new one.
            .ok_or_else(|| {
                RpcError::Precondition(
                    "the audit log holds no sealed record yet: there is nothing to export".into(),
                )
            })?
    } else {
        exports
            .lock()
            .clone()
            .filter(|s| s.size == request.snapshot)
            .ok_or_else(|| {
                RpcError::Precondition(format!(
                    "export {} is gone: a newer export replaced it; start again with snapshot 0",
                    request.snapshot
                ))
            })?
    };
    {
        let mut latest = exports.lock();
        let Some(kept) = latest.as_mut().filter(|s| s.size == snapshot.size) else {
            return Err(RpcError::Precondition(
                "the export was replaced meanwhile; start again with snapshot 0".into(),
            ));
        };
        if request.offset != 0 && !kept.readers.contains(&reader) {
            return Err(RpcError::Precondition(format!(
                "export {} is read from offset 0 first (a copy is recorded as it starts)",
                snapshot.size
            )));
        }
    }
    let offset = request.offset;
    rpc::blocking(move || {
        let mut file = std::fs::File::open(&snapshot.path)
            .map_err(|e| RpcError::Corrupt(format!("opening the export: {e}")))?;
        let start = offset.min(snapshot.total);
        let len = (snapshot.total - start).min(chunk as u64) as usize;
        let mut bytes = vec![0; len];
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| RpcError::Corrupt(format!("reading the export: {e}")))?;
        Ok(AuditExportResponse {
            snapshot: snapshot.size,
            total: snapshot.total,
            chunk: bytes,
            checkpoint: snapshot.checkpoint,
        })
    })
    .await
}

/// Serves one `Proof` request: the log is sealed first, so that every durable record can be
/// proven against the checkpoint returned.
pub(crate) async fn proof<R>(
    services: &Services<R>,
    caller: &Caller,
    request: AuditProofRequest,
) -> Result<AuditProofResponse, RpcError> {
    let log = authorized_log(services, caller, "proving from the audit log").await?;
    let auditor = services.authz.auditor().clone();
    rpc::blocking(move || {
        let mut log = lock(&log);
        let checkpoint = auditor.seal(&mut log).map_err(audit_error)?;
        let size = checkpoint.size();
        let count = log.record_count();
        if request.index >= count {
            return Err(RpcError::BadRequest(format!(
                "record {} does not exist: the log holds {count}",
                request.index
            )));
        }
        if request.old_size > size {
            return Err(RpcError::BadRequest(format!(
                "`old_size` {} is beyond the log's tree size {size}",
                request.old_size
            )));
        }
        let proof = log.record_proof(request.index, size).map_err(audit_error)?;
        let record = log
            .records(request.index..request.index + 1)
            .map_err(audit_error)?
            .into_iter()
            .next()
            .ok_or_else(|| RpcError::Corrupt("the record could not be read".into()))?
            .to_bytes()
            .map_err(|e| RpcError::Corrupt(e.to_string()))?;
        let consistency = if request.old_size == 0 {
            Vec::new()
        } else {
            log.consistency_proof(request.old_size, size)
                .map_err(audit_error)?
                .path
        };
        let hashes =
            |path: Vec<entente_audit::Hash>| path.into_iter().map(|h| h.0.to_vec()).collect();
        Ok(AuditProofResponse {
            checkpoint: checkpoint.as_str().to_owned(),
            record,
            leaf_index: proof.leaf_index,
            leaf: proof.leaf.to_bytes(),
            record_path: hashes(proof.record_path.path),
            log_path: hashes(proof.log_path.path),
            consistency: hashes(consistency),
        })
    })
    .await
}

/// `reader` started a copy of export `snapshot` and its start is on the record: it may read on.
pub(crate) fn started<R>(services: &Services<R>, snapshot: u64, reader: String) {
    let Some((exports, _)) = services.authz.auditor().exports() else {
        return;
    };
    let mut latest = exports.lock();
    if let Some(kept) = latest.as_mut().filter(|s| s.size == snapshot)
        && !kept.readers.contains(&reader)
    {
        kept.readers.push(reader);
    }
}

// === impl Exports ===

impl Exports {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Snapshot>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === helpers ===

/// Authorizes the caller, waits until every record submitted so far is durable, and returns
/// the log.
async fn authorized_log<R>(
    services: &Services<R>,
    caller: &Caller,
    what: &str,
) -> Result<Arc<Mutex<AuditLog>>, RpcError> {
    admin::authorize_on_hub(services, caller, SystemTime::now(), what)?;
    let auditor = services.authz.auditor();
    let log = auditor
        .log()
        .cloned()
        .ok_or_else(|| RpcError::Precondition("this hub keeps no audit log".into()))?;
    auditor
        .durable(auditor.ticket())
        .await
        .map_err(RpcError::Unaudited)?;
    Ok(log)
}

async fn read_log<T: Send + 'static>(
    log: Arc<Mutex<AuditLog>>,
    read: impl FnOnce(&AuditLog) -> Result<T, AuditError> + Send + 'static,
) -> Result<T, RpcError> {
    rpc::blocking(move || read(&lock(&log)).map_err(audit_error)).await
}

/// Seals the log and writes its export as `<dir>/<tree size>.export`, unless the latest
/// export already ends there; removes the export before it. `None` for a log with nothing
/// sealed (tree size 0, which names no export).
fn write_snapshot(
    auditor: &crate::audit::Auditor,
    log: &Mutex<AuditLog>,
    exports: &Exports,
    dir: &std::path::Path,
) -> Result<Option<Snapshot>, AuditError> {
    let mut log = lock(log);
    let checkpoint = auditor.seal(&mut log)?;
    let size = checkpoint.size();
    if size == 0 {
        return Ok(None);
    }
    let mut latest = exports.lock();
    if let Some(snapshot) = latest.as_ref().filter(|s| s.size == size) {
        return Ok(Some(snapshot.clone()));
    }
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(|e| AuditError::Io {
            op: "create",
            path: dir.to_path_buf(),
            source: e,
        })?;
    let path = dir.join(format!("{size}.export"));
    log.export(&path)?;
    let total = std::fs::metadata(&path)
        .map_err(|e| AuditError::Io {
            op: "stat",
            path: path.clone(),
            source: e,
        })?
        .len();
    if let Some(old) = latest.take() {
        let _ = std::fs::remove_file(old.path);
    }
    let snapshot = Snapshot {
        size,
        path,
        total,
        checkpoint: checkpoint.as_str().to_owned(),
        readers: Vec::new(),
    };
    *latest = Some(snapshot.clone());
    Ok(Some(snapshot))
}

fn lock(log: &Mutex<AuditLog>) -> std::sync::MutexGuard<'_, AuditLog> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

fn verifier_key(log: &AuditLog) -> String {
    log.verifier()
        .keys()
        .first()
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// The log failed a read or a write: the detail stays in the hub.
fn audit_error(e: AuditError) -> RpcError {
    RpcError::Audit(e.to_string())
}

#[cfg(test)]
const _: () = {
    // An answer always has room for a chunk and its checkpoint.
    assert!(FRAME_MARGIN > entente_wire::MAX_AUDIT_NOTE_BYTES);
};
