//! The hub's audit log, for administrators (docs/AUDIT.md §8): [`Client::audit_records`],
//! [`Client::audit_export`] and [`Client::audit_proof`]. What comes back is as the hub sent
//! it; verify it with `entente-audit` (`Record::from_bytes`, `verify_export`,
//! `RecordProof::verify`) against a checkpoint key obtained out of band.

use std::io::Write as _;
use std::path::Path;

use entente_wire::{
    AuditExportRequest, AuditExportResponse, AuditProofRequest, AuditProofResponse,
    AuditRecordsRequest, AuditRecordsResponse, KeysRequest, KeysResponse, QuarantineRequest,
    QuarantineResponse,
};

use crate::{Client, Error, ErrorKind};

/// An export written by [`Client::audit_export`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditExport {
    /// Its size in bytes.
    pub bytes: u64,
    /// The signed checkpoint it ends with.
    pub checkpoint: String,
}

/// The most chunks one export may take: a bound on a hub that never ends one.
const MAX_CHUNKS: u64 = 1 << 20;

impl Client {
    /// Records of the hub's audit log from index `from`, at most `max` (1 to 1000; the hub
    /// may return fewer to fit its frame limit), each in its canonical encoding, with the
    /// log's size, its latest checkpoint and its checkpoint key.
    pub async fn audit_records(&self, from: u64, max: u32) -> Result<AuditRecordsResponse, Error> {
        self.audit_call(
            entente_hub::AUDIT_RECORDS_PATH,
            AuditRecordsRequest { from, max },
            "reading the audit log",
        )
        .await
    }

    /// Has the hub seal its audit log and export it (docs/AUDIT.md §6), and writes the export
    /// to `out` (through a temporary file beside it, `out` with `.part` added, owner-only
    /// (0600) and made new — never through a file or link already there — renamed into place
    /// once complete: the export keeps that mode).
    ///
    /// What was at `out` is replaced: an export kept to be checked against later is written
    /// elsewhere, and kept only once it verifies and extends the checkpoint kept from the
    /// last one (`VerifiedLog::check_against`), as `entente audit export` does.
    pub async fn audit_export(&self, out: impl AsRef<Path>) -> Result<AuditExport, Error> {
        let out = out.as_ref();
        let mut temp = out.as_os_str().to_owned();
        temp.push(".part");
        let temp = std::path::PathBuf::from(temp);
        let mut file = None;
        let result = self.export_into(&temp, &mut file).await;
        drop(file);
        match result {
            Ok(export) => {
                std::fs::rename(&temp, out).map_err(|e| io_error(out, e))?;
                Ok(export)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// The proof that record `index` is in the hub's audit log, against the checkpoint the
    /// hub returns (sealing first, so any durable record can be proven), and, if `old_size`
    /// is not 0, the proof that the log is consistent with its checkpoint of that tree size.
    pub async fn audit_proof(
        &self,
        index: u64,
        old_size: u64,
    ) -> Result<AuditProofResponse, Error> {
        self.audit_call(
            entente_hub::AUDIT_PROOF_PATH,
            AuditProofRequest { index, old_size },
            "proving from the audit log",
        )
        .await
    }

    /// Fetches the export chunk by chunk into `temp` (created at the first chunk, so that a
    /// refusal leaves no file).
    async fn export_into(
        &self,
        temp: &Path,
        file: &mut Option<std::fs::File>,
    ) -> Result<AuditExport, Error> {
        let (mut snapshot, mut offset) = (0, 0u64);
        let mut chunks = 0u64;
        let (total, checkpoint) = loop {
            chunks += 1;
            if chunks > MAX_CHUNKS {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    "the hub's audit export does not end",
                ));
            }
            let chunk: AuditExportResponse = self
                .audit_call(
                    entente_hub::AUDIT_EXPORT_PATH,
                    AuditExportRequest { snapshot, offset },
                    "exporting the audit log",
                )
                .await?;
            if chunk.snapshot == 0 || (snapshot != 0 && chunk.snapshot != snapshot) {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    "the hub answered with another audit export",
                ));
            }
            snapshot = chunk.snapshot;
            let writer = match file {
                Some(writer) => writer,
                None => file.insert(new_private_file(temp).map_err(|e| io_error(temp, e))?),
            };
            writer
                .write_all(&chunk.chunk)
                .map_err(|e| io_error(temp, e))?;
            offset += chunk.chunk.len() as u64;
            if offset >= chunk.total || chunk.chunk.is_empty() {
                break (chunk.total, chunk.checkpoint);
            }
        };
        if offset != total {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("the hub's audit export ended at {offset} of {total} bytes"),
            ));
        }
        if let Some(writer) = file {
            writer.sync_all().map_err(|e| io_error(temp, e))?;
        }
        Ok(AuditExport {
            bytes: total,
            checkpoint,
        })
    }

    /// The hub's keys (administrators): the data keys' versions and the audit checkpoint
    /// keys, after rotating `rotate` (`"data"` or `"audit"`) if given.
    pub async fn keys(&self, rotate: Option<&str>) -> Result<KeysResponse, Error> {
        self.audit_call(
            entente_hub::KEYS_PATH,
            KeysRequest {
                rotate: rotate.unwrap_or_default().to_owned(),
            },
            "the hub's keys",
        )
        .await
    }

    /// The quarantined agents (administrators; docs/ANOMALY.md), after the change `request`
    /// asks for: none (`QuarantineRequest::default()`), lifting the quarantine of
    /// `release`, or quarantining `impose` (either with a `reason`).
    pub async fn quarantine(
        &self,
        request: QuarantineRequest,
    ) -> Result<QuarantineResponse, Error> {
        self.audit_call(
            entente_hub::QUARANTINE_PATH,
            request,
            "the quarantined agents",
        )
        .await
    }

    async fn audit_call<Req, Resp>(
        &self,
        path: &'static str,
        request: Req,
        what: &str,
    ) -> Result<Resp, Error>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: entente_wire::Bounded + Send + 'static,
    {
        self.transport()
            .unary(path, request, self.request_timeout(), what)
            .await
            .map_err(|e| self.grant_error(e))
    }
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("writing `{}`", path.display())).with_source(e)
}

/// Makes `path` a new file, owner-only (0600): whatever was left there (an earlier run's
/// temporary file, or a link another user planted to have the export written through it) is
/// removed first, and the file is created only if nothing is there then.
fn new_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}
