//! `entente audit`: the hub's audit log (docs/AUDIT.md). `tail`, `export` and `prove` ask a
//! running hub as an administrator; `prove` trusts nothing the hub says and checks the proof
//! against the checkpoint key given. `verify` checks an exported log offline, with no hub:
//! every record, leaf and checkpoint, its consistency with checkpoints kept elsewhere, and that
//! given records are in it.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Subcommand;
use entente_audit::{
    AuditError, Checkpoint, CheckpointError, CheckpointIn, ConsistencyProof, Event, FieldMac,
    GrantStage, Hash, InclusionProof, Leaf, NoteError, Outcome, QuarantineAction, Record,
    RecordProof, Text, Verdict, VerifiedLog, Verifier, VerifierKey, verify_consistency,
    verify_export,
};
use entente_client::Client;
use entente_wire::{AuditProofResponse, AuditRecordsResponse, MAX_AUDIT_RECORDS};
use serde_json::{Map, Value, json};

use crate::At;
use crate::commands::agent::{self, connect};
use crate::commands::clean;
use crate::commands::grants::utc;

/// The beginning of every message about tampering or damage found in the export itself.
const DOES_NOT_VERIFY: &str = "the audit log does not verify";

/// How many records `tail` shows without `--from`.
const TAIL_COUNT: u64 = 20;

/// How long `tail --follow` waits between asking the hub for new records.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Print records of the running hub's audit log, one line each (administrators).
    ///
    /// Without `--from`, the last `--count` records (default 20). With `--json`, one JSON
    /// object per line with the record's hash, for `verify --record` and `prove`.
    Tail {
        #[command(flatten)]
        at: At,
        /// Start at this record index (from 0), and print to the end of the log, or
        /// `--count` records.
        #[arg(long, value_name = "INDEX")]
        from: Option<u64>,
        /// How many records to print (default 20 without `--from`, all with it).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Then keep printing new records as they come (every second) until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Export the running hub's audit log to a file, for `verify` (administrators).
    ///
    /// Also writes the checkpoint the export ends with to `OUT.checkpoint`: keep it, and pass
    /// it as `--known` when verifying a later export or proving a record. When
    /// `OUT.checkpoint` is there already, the new export replaces `OUT` and it only if it
    /// extends that checkpoint (as `verify --known` checks); otherwise both are kept, the new
    /// export is left in `OUT.new`, and the command exits 1.
    Export {
        #[command(flatten)]
        at: At,
        /// The file to write.
        out: PathBuf,
    },
    /// Ask the running hub to prove that a record is in its audit log, and check the proof
    /// here against the checkpoint key (administrators).
    ///
    /// Exits 0 if the proof holds, 1 if not (with one line saying why), 2 on bad arguments.
    Prove {
        #[command(flatten)]
        at: At,
        /// The record's index (from 0), as `tail` prints it.
        index: u64,
        /// A checkpoint of this log kept earlier (`export` writes one): the hub must also
        /// prove that its log extends it.
        #[arg(long, value_name = "CHECKPOINT")]
        known: Option<PathBuf>,
        /// The checkpoint key, `<name>+<hex key ID>+<base64 key>`, or `@FILE` to read one
        /// from a file, obtained apart from the hub. Repeat it for the keys the log used
        /// before a rotation.
        #[arg(long = "key", value_name = "VKEY", required = true, value_parser = parse_key)]
        keys: Vec<VerifierKey>,
    },
    /// Verify an exported audit log offline: every record, leaf and checkpoint signature, its
    /// consistency with checkpoints kept elsewhere, and that given records are in it.
    ///
    /// Exits 0 if all of it holds, 1 if not (with one line naming where), 2 on bad arguments.
    Verify {
        /// The export file, written by the audit log's export.
        export: PathBuf,
        /// A checkpoint key, `<name>+<hex key ID>+<base64 key>`, or `@FILE` to read one from
        /// a file. Repeat it for the keys the log used before a rotation.
        #[arg(long = "key", value_name = "VKEY", required = true, value_parser = parse_key)]
        keys: Vec<VerifierKey>,
        /// A signed checkpoint of this log kept elsewhere (published, given to an auditor):
        /// the log must extend it, or it was rolled back or rewritten.
        #[arg(long, value_name = "CHECKPOINT")]
        known: Vec<PathBuf>,
        /// A record's hash (64 hex digits): it must be in the log, with a proof that verifies
        /// against the latest checkpoint.
        #[arg(long = "record", value_name = "HASH", value_parser = parse_hash)]
        records: Vec<Hash>,
    },
}

/// Runs an `entente audit` command.
pub(crate) fn run(command: AuditCommand, json: bool) -> Result<ExitCode> {
    match command {
        AuditCommand::Tail {
            at,
            from,
            count,
            follow,
        } => tail(&at, from, count, follow, json),
        AuditCommand::Export { at, out } => export(&at, &out, json),
        AuditCommand::Prove {
            at,
            index,
            known,
            keys,
        } => prove(&at, index, known.as_deref(), &keys, json),
        AuditCommand::Verify {
            export,
            keys,
            known,
            records,
        } => Ok(verify(&export, &keys, &known, &records, json)),
    }
}

/// `entente audit tail`: prints records from `from`, or the last `count`; with `follow`, then
/// polls for new ones until interrupted.
fn tail(
    at: &At,
    from: Option<u64>,
    count: Option<u64>,
    follow: bool,
    json: bool,
) -> Result<ExitCode> {
    agent::run(async {
        let client = connect(&at.identity, &at.hub).await?;
        let result = tail_from(&client, from, count, follow, json).await;
        client.close().await;
        result.map(|()| ExitCode::SUCCESS)
    })
}

/// `entente audit export`: writes the export, its checkpoint beside it, and says how to verify
/// it. The export is verified ([`check`]) under the hub's checkpoint keys, and the checkpoint
/// kept is its own latest one, never a note the hub sends beside it (a hub rewriting its log
/// could send an old one, and the kept checkpoint would never move on); one that does not
/// verify keeps no checkpoint, and the command fails. When a checkpoint is kept beside `out`
/// already (an earlier export's), the new export is downloaded aside ([`pending_file`]) and
/// replaces `out` and its checkpoint only if it also extends the kept one, as `verify
/// --known` checks; otherwise both old files stay as they were, the new export stays aside,
/// and the command fails: the one file that would show a log cut back or rewritten is never
/// lost.
fn export(at: &At, out: &Path, json: bool) -> Result<ExitCode> {
    let kept = checkpoint_file(out);
    // A regular file only, never followed: anything else there (a link, to a write-once
    // volume maybe) is refused rather than taken as no checkpoint kept, which would skip the
    // check against it.
    let has_kept = match std::fs::symlink_metadata(&kept) {
        Ok(meta) if meta.is_file() => true,
        Ok(_) => bail!(
            "`{}` is not a regular file: the checkpoint kept beside an export must be one (it \
             is read, and replaced, there; a link is never followed)",
            kept.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(e).with_context(|| format!("looking at `{}`", kept.display()));
        }
    };
    let download = if has_kept {
        pending_file(out)
    } else {
        out.to_path_buf()
    };
    agent::run(async {
        let client = connect(&at.identity, &at.hub).await?;
        let result = async {
            let key = log_state(&client).await?.verifier_key;
            let exported = client.audit_export(&download).await?;
            // Asked after the export, so that every key that signed a checkpoint of it is
            // there (a key is never dropped, only added by a rotation).
            let keys = client
                .keys(None)
                .await
                .context("reading the hub's checkpoint keys")?;
            let keys: Vec<String> = std::iter::once(keys.audit_key)
                .chain(keys.audit_trusted)
                .collect();
            Ok::<_, anyhow::Error>((key, exported, keys))
        }
        .await;
        client.close().await;
        let (key, exported, keys) = result?;
        let claimed = CheckpointIn::parse(&exported.checkpoint)
            .map(|checkpoint| checkpoint.size())
            .unwrap_or_default();
        let known = if has_kept { Some(kept.as_path()) } else { None };
        let latest = match verified_latest(&download, known, &keys) {
            Ok(latest) => latest,
            Err(failure) if has_kept => {
                return Ok(refuse(failure, out, &kept, (&download, claimed), json));
            }
            Err(failure) => return Ok(unverified(failure, out, json)),
        };
        let size = latest.size();
        if has_kept {
            std::fs::rename(&download, out).with_context(|| {
                format!(
                    "replacing `{}` with the new export `{}`",
                    out.display(),
                    download.display()
                )
            })?;
        }
        // Owner-only, through a new temporary file renamed over it: never written through a
        // link already there.
        let (dir, name) = (
            kept.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
            kept.file_name()
                .and_then(|n| n.to_str())
                .context("the export's name is not UTF-8")?,
        );
        entente_keystore::local::files::replace(
            dir,
            name,
            latest.as_str().as_bytes(),
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .with_context(|| format!("writing `{}`", kept.display()))?;
        if json {
            super::print_json(&json!({
                "export": out.display().to_string(),
                "bytes": exported.bytes,
                "size": size,
                "verifier_key": key,
                "checkpoint_file": kept.display().to_string(),
                "checkpoint": latest.as_str(),
                "extends_kept": has_kept,
            }));
        } else {
            outln!(
                "exported the audit log to `{}`: {} bytes, tree size {size}",
                out.display(),
                exported.bytes
            );
            if has_kept {
                outln!(
                    "it extends the checkpoint kept before in `{}`",
                    kept.display()
                );
            }
            outln!(
                "checkpoint kept in `{}`: pass it as `--known` to check a later export",
                kept.display()
            );
            for line in verify_hint(out, &key) {
                outln!("{line}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Checks that the export `download` verifies under the hub's checkpoint `keys` and extends
/// the checkpoint kept in `kept`, if any, as `verify --known` does; its latest checkpoint.
fn verified_latest(
    download: &Path,
    kept: Option<&Path>,
    keys: &[String],
) -> Result<Checkpoint, Failure> {
    let keys = keys
        .iter()
        .map(|key| VerifierKey::parse(key))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Failure::new(
                "bad_key",
                format!("a checkpoint key the hub gave does not parse: {e}"),
                json!({}),
            )
        })?;
    let known: Vec<PathBuf> = kept.map(Path::to_path_buf).into_iter().collect();
    check(download, &verifier_of(&keys), &known, &[]).map(|verified| verified.latest)
}

/// Reports why `export` kept no checkpoint beside the first export `out`: it does not verify
/// under the hub's checkpoint keys. Returns the exit code of a failed check.
fn unverified(failure: Failure, out: &Path, json: bool) -> ExitCode {
    let message = format!(
        "the export `{}` does not verify under the hub's checkpoint keys: {}; no checkpoint \
         was kept beside it",
        out.display(),
        failure.message
    );
    Failure::new(failure.kind, message, failure.at)
        .report(("export", out.display().to_string().into()), json)
}

/// Reports why `export` did not replace `out` and the checkpoint `kept` with the export
/// `download` of tree size `size`, as `verify` reports a failure, naming the sizes, both files
/// kept and where the new export was left; returns the exit code of a failed check.
fn refuse(
    failure: Failure,
    out: &Path,
    kept: &Path,
    (download, size): (&Path, u64),
    json: bool,
) -> ExitCode {
    // The size the kept checkpoint claims, read again even if its signature failed.
    let kept_size = std::fs::read_to_string(kept)
        .ok()
        .and_then(|note| CheckpointIn::parse(&note).ok())
        .map(|checkpoint| checkpoint.size());
    let kept_tree = kept_size.map_or_else(
        || "a tree size that can't be read".to_owned(),
        |n| format!("tree size {n}"),
    );
    let reason = match failure.kind {
        "unknown_key" => failure
            .message
            .replace("`--key` is not this log's key", "it is another log's"),
        _ => failure.message,
    };
    let message = format!(
        "refused to replace `{}`: the new export (tree size {size}) does not extend the \
         checkpoint kept in `{}` ({kept_tree}): {reason}; `{}` and `{}` are unchanged, the new \
         export is left in `{}`",
        out.display(),
        kept.display(),
        out.display(),
        kept.display(),
        download.display(),
    );
    let mut at = match failure.at {
        Value::Object(at) => at,
        _ => Map::new(),
    };
    at.insert("checkpoint_file".into(), kept.display().to_string().into());
    at.insert("new_export".into(), download.display().to_string().into());
    at.insert("new_size".into(), size.into());
    at.insert("kept_size".into(), kept_size.into());
    Failure::new(failure.kind, message, Value::Object(at))
        .report(("export", out.display().to_string().into()), json)
}

/// `export`'s lines on the checkpoint key the hub gave: the key, and a command to verify the
/// export with it, each argument one shell word ([`shell_word`]), to copy and paste. A key
/// that does not parse is said so, with no command to copy.
fn verify_hint(out: &Path, key: &str) -> Vec<String> {
    match VerifierKey::parse(key) {
        Ok(key) => {
            let key = key.to_string();
            vec![
                format!("checkpoint key (as the hub gives it): {}", clean(&key)),
                format!(
                    "verify it offline with `entente audit verify {} --key {}`",
                    shell_word(&out.display().to_string()),
                    shell_word(&key)
                ),
            ]
        }
        Err(e) => vec![format!(
            "the checkpoint key the hub gave does not parse ({}): verify the export with a key \
             obtained apart from the hub",
            clean(&e.to_string())
        )],
    }
}

/// `text` as one POSIX shell word: in single quotes, with `'` written `'\''`, and what can't
/// be seen escaped as [`clean`] escapes it (a command to copy shows all it holds).
fn shell_word(text: &str) -> String {
    clean(&format!("'{}'", text.replace('\'', r"'\''")))
}

/// `entente audit prove`: asks the hub for the proof of record `index` (and of consistency
/// with the `known` checkpoint) and checks all of it against `keys`.
fn prove(
    at: &At,
    index: u64,
    known: Option<&Path>,
    keys: &[VerifierKey],
    json: bool,
) -> Result<ExitCode> {
    let verifier = verifier_of(keys);
    let subject = ("index", Value::from(index));
    let known = match known
        .map(|path| known_checkpoint(path, &verifier))
        .transpose()
    {
        Ok(known) => known,
        Err(failure) => return Ok(failure.report(subject, json)),
    };
    let old_size = known
        .as_ref()
        .map_or(0, |(_, checkpoint)| checkpoint.size());
    agent::run(async {
        let client = connect(&at.identity, &at.hub).await?;
        let answer = client.audit_proof(index, old_size).await;
        client.close().await;
        let checked = check_proof(index, &answer?, &verifier, known.as_ref());
        Ok(match checked {
            Ok(proven) => {
                proven.print(json);
                ExitCode::SUCCESS
            }
            Err(failure) => failure.report(subject, json),
        })
    })
}

// === tail ===

/// Prints the records `tail` asked for, then, with `follow`, new ones as they come.
async fn tail_from(
    client: &Client,
    from: Option<u64>,
    count: Option<u64>,
    follow: bool,
    json: bool,
) -> Result<()> {
    let (start, end) = match from {
        Some(from) => (from, count.map(|count| from.saturating_add(count))),
        None => {
            let total = log_state(client).await?.total;
            let count = count.unwrap_or(TAIL_COUNT);
            (total.saturating_sub(count), Some(total))
        }
    };
    let mut next = print_records(client, start, end, json).await?;
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(POLL).await;
        next = print_records(client, next, None, json).await?;
    }
}

/// The log's size and checkpoint key, without records: asked from past the end, the hub
/// answers from its end.
async fn log_state(client: &Client) -> Result<AuditRecordsResponse> {
    Ok(client.audit_records(u64::MAX, 1).await?)
}

/// Prints records from `next` to `end` (exclusive), or to the log's end, page by page;
/// returns the index after the last one printed.
async fn print_records(
    client: &Client,
    mut next: u64,
    end: Option<u64>,
    json: bool,
) -> Result<u64> {
    let page = MAX_AUDIT_RECORDS as u64;
    loop {
        let want = end.map_or(page, |end| end.saturating_sub(next).min(page));
        if want == 0 {
            return Ok(next);
        }
        let answer = client
            .audit_records(next, u32::try_from(want).unwrap_or(u32::MAX))
            .await?;
        if answer.records.is_empty() {
            return Ok(next);
        }
        if answer.from != next {
            bail!(
                "the hub answered with records from {} when asked from {next}",
                answer.from
            );
        }
        for bytes in answer.records.iter().take(want as usize) {
            let record = Record::from_bytes(bytes)
                .map_err(|e| anyhow!("record {next} from the hub does not decode: {e}"))?;
            let hash = record
                .hash()
                .map_err(|e| anyhow!("record {next} from the hub does not encode: {e}"))?;
            if json {
                super::print_json(&record_json(next, &record, &hash));
            } else {
                outln!("{}", record_line(next, &record));
            }
            next += 1;
        }
    }
}

// === prove ===

/// What `prove` established: the record is at its index in the log of the checkpoint, which
/// extends the known one.
struct Proven {
    index: u64,
    record: Record,
    hash: Hash,
    leaf: u64,
    checkpoint: Checkpoint,
    known: Option<(PathBuf, u64)>,
}

/// Checks the hub's answer to a proof request against `verifier` alone: its checkpoint's
/// signature, the record's path to the checkpoint's root, and the consistency of that
/// checkpoint with the `known` one.
fn check_proof(
    index: u64,
    answer: &AuditProofResponse,
    verifier: &Verifier,
    known: Option<&(PathBuf, Checkpoint)>,
) -> Result<Proven, Failure> {
    let checkpoint = Checkpoint::parse(&answer.checkpoint, verifier).map_err(|e| {
        let (kind, problem) = checkpoint_problem(&e);
        Failure::new(
            kind,
            format!("the checkpoint the hub returned {problem}"),
            json!({ "reason": e.to_string() }),
        )
    })?;
    let size = checkpoint.size();
    let malformed = |what: String| {
        Failure::new(
            "bad_proof",
            format!("the hub's proof of record {index} is malformed: {what}"),
            json!({ "size": size }),
        )
    };
    let record = Record::from_bytes(&answer.record)
        .map_err(|e| malformed(format!("the record does not decode: {e}")))?;
    let hash = record
        .hash()
        .map_err(|e| malformed(format!("the record does not encode: {e}")))?;
    let leaf = Leaf::from_bytes(&answer.leaf)
        .map_err(|e| malformed(format!("the leaf does not decode: {e}")))?;
    if !leaf.records().contains(&index) {
        return Err(malformed(format!(
            "its leaf seals {}, not record {index}",
            records_range(leaf.first_record, leaf.records().end)
        )));
    }
    let proof = RecordProof {
        index,
        leaf_index: answer.leaf_index,
        record_path: InclusionProof {
            index: index - leaf.first_record,
            size: u64::from(leaf.count),
            path: hashes(&answer.record_path)
                .ok_or_else(|| malformed("a hash of the record's path is not 32 bytes".into()))?,
        },
        log_path: InclusionProof {
            index: answer.leaf_index,
            size,
            path: hashes(&answer.log_path)
                .ok_or_else(|| malformed("a hash of the leaf's path is not 32 bytes".into()))?,
        },
        leaf,
    };
    proof.verify(&hash, &checkpoint).map_err(|e| {
        Failure::new(
            "bad_proof",
            format!(
                "the hub's proof of record {index} (`{hash}`) does not verify against its \
                 checkpoint of tree size {size}: {e}"
            ),
            json!({ "record_hash": hash.to_hex(), "size": size }),
        )
    })?;
    let known = match known {
        None => None,
        Some((path, old)) => {
            check_consistency(old, &checkpoint, &answer.consistency, path)?;
            Some((path.clone(), old.size()))
        }
    };
    Ok(Proven {
        index,
        record,
        hash,
        leaf: proof.leaf_index,
        checkpoint,
        known,
    })
}

/// Checks that `new` extends the known checkpoint `old` (kept in `path`) with `path_hashes`.
fn check_consistency(
    old: &Checkpoint,
    new: &Checkpoint,
    path_hashes: &[Vec<u8>],
    path: &Path,
) -> Result<(), Failure> {
    let at = json!({ "known": path.display().to_string(), "size": old.size(), "have": new.size() });
    let the_known = format!(
        "the known checkpoint `{}` (tree size {})",
        path.display(),
        old.size()
    );
    if new.origin() != old.origin() {
        return Err(Failure::new(
            "origin_mismatch",
            format!(
                "{the_known} is for `{}`, not the hub's log `{}`",
                old.origin(),
                new.origin()
            ),
            at,
        ));
    }
    if new.size() < old.size() {
        return Err(Failure::new(
            "rolled_back",
            format!(
                "the hub's audit log was rolled back: its checkpoint has {} leaves, fewer than \
                 the {} of {the_known}",
                new.size(),
                old.size()
            ),
            at,
        ));
    }
    let proof = ConsistencyProof {
        old: old.size(),
        new: new.size(),
        path: hashes(path_hashes).ok_or_else(|| {
            Failure::new(
                "bad_proof",
                "the hub's consistency proof is malformed: a hash is not 32 bytes".to_owned(),
                at.clone(),
            )
        })?,
    };
    verify_consistency(old, new, &proof).map_err(|e| {
        Failure::new(
            "forked",
            format!(
                "the hub's audit log is not consistent with {the_known}: {e}: it was rewritten \
                 or forked"
            ),
            at,
        )
    })
}

impl Proven {
    fn print(&self, json: bool) {
        if json {
            let known = self
                .known
                .as_ref()
                .map(|(path, size)| json!({ "file": path.display().to_string(), "size": size }));
            let signed_by: Vec<String> = self
                .checkpoint
                .signed_by()
                .iter()
                .map(ToString::to_string)
                .collect();
            super::print_json(&json!({
                "ok": true,
                "record": record_json(self.index, &self.record, &self.hash),
                "leaf": self.leaf,
                "checkpoint": {
                    "size": self.checkpoint.size(),
                    "root": self.checkpoint.root().to_hex(),
                    "signed_by": signed_by,
                    "note": self.checkpoint.as_str(),
                },
                "known": known,
            }));
            return;
        }
        outln!("{}", record_line(self.index, &self.record));
        outln!(
            "record {} (`{}`) is proven in the checkpoint of tree size {} (leaf {}, root {}), \
             signed by {}",
            self.index,
            self.hash,
            self.checkpoint.size(),
            self.leaf,
            self.checkpoint.root(),
            signers(&self.checkpoint)
        );
        if let Some((path, size)) = &self.known {
            outln!(
                "the log is consistent with the known checkpoint of tree size {size} (`{}`)",
                path.display()
            );
        }
    }
}

// === records ===

/// One line: index, time, actor, outcome, kind and the kind's main fields.
fn record_line(index: u64, record: &Record) -> String {
    format!(
        "{index}  {}  {}  {}  {}",
        rfc3339(record.time_ms),
        clean(&record.actor),
        outcome(record.outcome),
        summary(&record.event, &record.actor)
    )
}

/// The kind and its main fields, in words; protected fields as `hmac:<first 8 hex>`. A
/// decision's principal is left out when it is the `actor`.
fn summary(event: &Event, actor: &str) -> String {
    let t = text;
    match event {
        Event::Decision(d) => {
            let verdict = if d.allowed { "allowed" } else { "denied" };
            let by = if d.policies.is_empty() {
                String::new()
            } else {
                format!(" by {}", clean(&d.policies.join(", ")))
            };
            let reason = if d.allowed {
                String::new()
            } else {
                format!(": {}", t(&d.reason))
            };
            let principal = match &d.principal {
                Text::Clear(p) if p == actor => String::new(),
                other => format!("{} ", t(other)),
            };
            format!(
                "decision {principal}{} {} {verdict}{by} (epoch {}){reason}",
                t(&d.action),
                t(&d.resource),
                d.policy_epoch
            )
        }
        Event::Enrollment(e) => format!(
            "enrollment {} segment {} token {}, certificate {}… until {}",
            t(&e.principal),
            t(&e.segment),
            t(&e.token_id),
            short(&e.certificate.0),
            rfc3339(e.not_after_ms)
        ),
        Event::Renewal(r) => format!(
            "renewal {}, certificate {}… until {}",
            t(&r.principal),
            short(&r.certificate.0),
            rfc3339(r.not_after_ms)
        ),
        Event::Grant(g) => {
            let resource = match &g.resource {
                Text::Clear(r) if r.is_empty() => String::new(),
                other => format!(" on {}", t(other)),
            };
            let reason = g
                .reason
                .map(|m| format!(", reason {}", mac(&m)))
                .unwrap_or_default();
            format!(
                "grant {} {} `{}`{resource} to {} until {}{reason}",
                t(&g.grant_id),
                stage(g.stage),
                t(&g.action),
                t(&g.principal),
                rfc3339(g.not_after_ms)
            )
        }
        Event::Approval(a) => format!(
            "approval {} {} from {} on {}, envelope {}…{}",
            t(&a.message_id),
            verdict(a.verdict),
            t(&a.sender),
            t(&a.channel),
            short(&a.envelope.0),
            a.statement
                .map(|s| format!(", statement {}…", short(&s.0)))
                .unwrap_or_default()
        ),
        Event::Revocation(r) => format!(
            "revocation {} (list version {}): {}",
            t(&r.principal),
            r.list_version,
            t(&r.reason)
        ),
        Event::Quarantine(q) => format!(
            "quarantine {} {} (risk {}): {}",
            t(&q.principal),
            quarantine(q.action),
            q.risk,
            t(&q.evidence)
        ),
        Event::Limit(l) => {
            let scope = match &l.scope {
                Text::Clear(s) if s.is_empty() => String::new(),
                other => format!(" of {}", t(other)),
            };
            format!(
                "limit {} {}{scope}: {} refusal(s), retry after {} ms",
                t(&l.limit),
                t(&l.principal),
                l.count,
                l.retry_after_ms
            )
        }
        Event::Admin(a) => {
            let detail = match &a.detail {
                Text::Clear(d) if d.is_empty() => String::new(),
                other => format!(": {}", t(other)),
            };
            format!("admin {} {}{detail}", t(&a.operation), t(&a.target))
        }
        Event::DeliveredBatch(b) => format!(
            "delivered-batch {} → {}: {} envelope{}, {} B, root {}…",
            t(&b.sender),
            t(&b.channel),
            b.count,
            if b.count == 1 { "" } else { "s" },
            b.bytes,
            short(&b.envelopes_root.0)
        ),
        other => other.kind().to_string(),
    }
}

/// One JSON object: index, time, hub, actor, outcome, kind, the kind's fields (protected ones
/// as `{"hmac": <hex>}`), and the record's hash.
fn record_json(index: u64, record: &Record, hash: &Hash) -> Value {
    let t = text_json;
    let fields = match &record.event {
        Event::Decision(d) => json!({
            "principal": t(&d.principal),
            "action": t(&d.action),
            "resource": t(&d.resource),
            "allowed": d.allowed,
            "policies": d.policies,
            "reason": t(&d.reason),
            "policy_epoch": d.policy_epoch,
        }),
        Event::Enrollment(e) => json!({
            "principal": t(&e.principal),
            "segment": t(&e.segment),
            "token_id": t(&e.token_id),
            "certificate": e.certificate.to_hex(),
            "not_after_ms": e.not_after_ms,
        }),
        Event::Renewal(r) => json!({
            "principal": t(&r.principal),
            "certificate": r.certificate.to_hex(),
            "not_after_ms": r.not_after_ms,
        }),
        Event::Grant(g) => json!({
            "grant_id": t(&g.grant_id),
            "stage": stage(g.stage),
            "principal": t(&g.principal),
            "action": t(&g.action),
            "resource": t(&g.resource),
            "not_after_ms": g.not_after_ms,
            "reason": g.reason.map(|m| json!({ "hmac": Hash(m.0).to_hex() })),
        }),
        Event::Approval(a) => json!({
            "message_id": t(&a.message_id),
            "sender": t(&a.sender),
            "channel": t(&a.channel),
            "verdict": verdict(a.verdict),
            "envelope": a.envelope.to_hex(),
            "statement": a.statement.map(|s| s.to_hex()),
        }),
        Event::Revocation(r) => json!({
            "principal": t(&r.principal),
            "list_version": r.list_version,
            "reason": t(&r.reason),
        }),
        Event::Quarantine(q) => json!({
            "principal": t(&q.principal),
            "action": quarantine(q.action),
            "risk": q.risk,
            "evidence": t(&q.evidence),
        }),
        Event::Limit(l) => json!({
            "principal": t(&l.principal),
            "limit": t(&l.limit),
            "scope": t(&l.scope),
            "count": l.count,
            "retry_after_ms": l.retry_after_ms,
        }),
        Event::Admin(a) => json!({
            "operation": t(&a.operation),
            "target": t(&a.target),
            "detail": t(&a.detail),
        }),
        Event::DeliveredBatch(b) => json!({
            "sender": t(&b.sender),
            "channel": t(&b.channel),
            "count": b.count,
            "bytes": b.bytes,
            "envelopes_root": b.envelopes_root.to_hex(),
        }),
        _ => json!({}),
    };
    json!({
        "index": index,
        "time_ms": record.time_ms,
        "time": rfc3339(record.time_ms),
        "hub": record.hub,
        "actor": record.actor,
        "outcome": outcome(record.outcome),
        "kind": record.kind().as_str(),
        "fields": fields,
        "hash": hash.to_hex(),
    })
}

fn outcome(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "success",
        Outcome::Denied => "denied",
        Outcome::Failed => "failed",
    }
}

fn stage(stage: GrantStage) -> &'static str {
    match stage {
        GrantStage::Given => "given",
        GrantStage::Requested => "requested",
        GrantStage::Approved => "approved",
        GrantStage::Rejected => "rejected",
        GrantStage::Expired => "expired",
        GrantStage::Revoked => "revoked",
    }
}

fn verdict(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Approved => "approved",
        Verdict::Rejected => "rejected",
        Verdict::Expired => "expired",
    }
}

fn quarantine(action: QuarantineAction) -> &'static str {
    match action {
        QuarantineAction::Imposed => "imposed",
        QuarantineAction::Lifted => "lifted",
    }
}

/// A field for a line: its value, or `hmac:<first 8 hex>` if protected.
fn text(text: &Text) -> String {
    match text {
        Text::Clear(value) => clean(value),
        Text::Mac(m) => mac(m),
    }
}

fn text_json(text: &Text) -> Value {
    match text {
        Text::Clear(value) => value.as_str().into(),
        Text::Mac(m) => json!({ "hmac": Hash(m.0).to_hex() }),
    }
}

fn mac(mac: &FieldMac) -> String {
    format!("hmac:{}", short(&mac.0))
}

/// The first 8 hex digits.
fn short(bytes: &[u8; 32]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Unix milliseconds as RFC 3339 UTC, `2025-06-01T14:15:00.500Z`.
fn rfc3339(ms: u64) -> String {
    let seconds = utc(ms);
    let seconds = seconds.strip_suffix('Z').unwrap_or(&seconds);
    format!("{}.{:03}Z", seconds.replacen(' ', "T", 1), ms % 1000)
}

/// The keys that signed a checkpoint, `name (key ID)`.
fn signers(checkpoint: &Checkpoint) -> String {
    let signers: Vec<String> = checkpoint
        .signed_by()
        .iter()
        .map(|k| format!("{} ({:08x})", k.name(), k.key_id()))
        .collect();
    signers.join(", ")
}

/// Hashes as the hub sends them, each 32 bytes.
fn hashes(path: &[Vec<u8>]) -> Option<Vec<Hash>> {
    path.iter()
        .map(|h| <[u8; 32]>::try_from(h.as_slice()).ok().map(Hash))
        .collect()
}

// === verify ===

/// `entente audit verify`: prints what was verified and exits 0, or prints one line naming
/// what failed and where, and exits 1.
fn verify(
    export: &Path,
    keys: &[VerifierKey],
    known: &[PathBuf],
    records: &[Hash],
    json: bool,
) -> ExitCode {
    let verifier = verifier_of(keys);
    match check(export, &verifier, known, records) {
        Ok(verified) => {
            if json {
                super::print_json(&verified.to_json(export));
            } else {
                verified.print(export);
            }
            ExitCode::SUCCESS
        }
        Err(failure) => failure.report(("export", export.display().to_string().into()), json),
    }
}

/// What `verify` established.
struct Verified {
    log: VerifiedLog,
    latest: Checkpoint,
    known: Vec<(PathBuf, Checkpoint)>,
    found: Vec<Found>,
}

/// A record found in the log, its proof verified against the latest checkpoint.
struct Found {
    hash: Hash,
    index: u64,
    leaf: u64,
}

/// Why the export does not verify: one lowercase sentence, a stable name for scripts, and the
/// position (record, leaf, tree size, offset…) as JSON fields.
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    message: String,
    at: Value,
}

fn check(
    export: &Path,
    verifier: &Verifier,
    known: &[PathBuf],
    records: &[Hash],
) -> Result<Verified, Failure> {
    let log = verify_export(export, verifier).map_err(|e| describe(&e, None))?;
    let latest = log
        .checkpoint()
        .cloned()
        .ok_or_else(|| describe(&AuditError::MissingCheckpoint { size: log.size() }, None))?;

    let mut checked = Vec::with_capacity(known.len());
    for path in known {
        let (path, checkpoint) = known_checkpoint(path, verifier)?;
        log.check_against(&checkpoint)
            .map_err(|e| describe(&e, Some(&path)))?;
        checked.push((path, checkpoint));
    }

    let mut found = Vec::with_capacity(records.len());
    for hash in records {
        let index = log.find(hash).ok_or_else(|| {
            Failure::new(
                "record_not_found",
                format!("the audit log verifies but does not hold record `{hash}`"),
                json!({ "record_hash": hash.to_hex() }),
            )
        })?;
        let proof = log
            .record_proof(index, latest.size())
            .map_err(|e| describe(&e, None))?;
        proof.verify(hash, &latest).map_err(|e| {
            Failure::new(
                "bad_proof",
                format!(
                    "{DOES_NOT_VERIFY}: the proof of record {index} (`{hash}`) does not verify \
                     against the checkpoint of tree size {}: {e}",
                    latest.size()
                ),
                json!({ "record": index, "record_hash": hash.to_hex(), "size": latest.size() }),
            )
        })?;
        found.push(Found {
            hash: *hash,
            index,
            leaf: proof.leaf_index,
        });
    }
    Ok(Verified {
        log,
        latest,
        known: checked,
        found,
    })
}

// === impl Verified ===

impl Verified {
    fn print(&self, export: &Path) {
        outln!(
            "the audit log `{}` verifies: origin `{}`, {} records in {} leaves, {} checkpoints",
            export.display(),
            self.log.origin(),
            self.log.record_count(),
            self.log.size(),
            self.log.checkpoints().len()
        );
        outln!(
            "latest checkpoint: tree size {}, root {}, signed by {}",
            self.latest.size(),
            self.latest.root(),
            signers(&self.latest)
        );
        for (path, checkpoint) in &self.known {
            outln!(
                "known checkpoint `{}`: tree size {}, consistent with the log",
                path.display(),
                checkpoint.size()
            );
        }
        for found in &self.found {
            outln!(
                "record {}: index {} in leaf {}, proven in the latest checkpoint",
                found.hash,
                found.index,
                found.leaf
            );
        }
    }

    fn to_json(&self, export: &Path) -> Value {
        let signed_by: Vec<String> = self
            .latest
            .signed_by()
            .iter()
            .map(ToString::to_string)
            .collect();
        let known: Vec<Value> = self
            .known
            .iter()
            .map(|(path, c)| {
                json!({
                    "file": path.display().to_string(),
                    "size": c.size(),
                    "root": c.root().to_hex(),
                })
            })
            .collect();
        let found: Vec<Value> = self
            .found
            .iter()
            .map(|f| json!({ "hash": f.hash.to_hex(), "index": f.index, "leaf": f.leaf }))
            .collect();
        json!({
            "ok": true,
            "export": export.display().to_string(),
            "origin": self.log.origin(),
            "hmac_key": self.log.hmac_key().to_hex(),
            "records": self.log.record_count(),
            "size": self.log.size(),
            "checkpoints": self.log.checkpoints().len(),
            "checkpoint": {
                "size": self.latest.size(),
                "root": self.latest.root().to_hex(),
                "signed_by": signed_by,
                "note": self.latest.as_str(),
            },
            "known": known,
            "found": found,
        })
    }
}

// === impl Failure ===

impl Failure {
    fn new(kind: &'static str, message: String, at: Value) -> Self {
        Self { kind, message, at }
    }

    /// Prints the failure (one line on standard error, or JSON with `subject`, the name and
    /// value of what was being checked) and returns the exit code of a failed check.
    fn report(&self, subject: (&str, Value), json: bool) -> ExitCode {
        if json {
            super::announce_json(&self.to_json(subject));
        } else {
            eprintln!("{}", self.line());
        }
        ExitCode::FAILURE
    }

    /// The one line on standard error, escaped: the message may quote an export's text.
    fn line(&self) -> String {
        format!("error: {}", clean(&self.message))
    }

    fn to_json(&self, (name, value): (&str, Value)) -> Value {
        let mut out = Map::new();
        out.insert("ok".into(), false.into());
        out.insert(name.into(), value);
        out.insert("kind".into(), self.kind.into());
        out.insert("error".into(), self.message.clone().into());
        if let Value::Object(at) = &self.at {
            out.extend(at.clone());
        }
        Value::Object(out)
    }
}

/// One sentence per error, naming the position the error carries. `known` is the file of the
/// known checkpoint the log was being checked against, if any.
fn describe(err: &AuditError, known: Option<&Path>) -> Failure {
    let the_known = match known {
        Some(path) => format!("the known checkpoint `{}`", path.display()),
        None => "a known checkpoint".to_owned(),
    };
    let with_known = |at: Value| match (at, known) {
        (Value::Object(mut at), Some(path)) => {
            at.insert("known".into(), path.display().to_string().into());
            Value::Object(at)
        }
        (at, _) => at,
    };
    match err {
        AuditError::Io { .. } => Failure::new("io", err.to_string(), json!({})),
        AuditError::Meta(why) => Failure::new(
            "metadata",
            format!("{DOES_NOT_VERIFY}: its metadata is invalid: {why}"),
            json!({ "reason": why }),
        ),
        AuditError::Corrupt {
            file,
            offset,
            reason,
        } => Failure::new(
            "corrupt",
            format!(
                "{DOES_NOT_VERIFY}: {} is corrupt at byte {offset}: {reason}",
                section(file)
            ),
            json!({ "section": section_key(file), "offset": offset, "reason": reason }),
        ),
        AuditError::TornTail { file, offset } => Failure::new(
            "truncated",
            format!(
                "{DOES_NOT_VERIFY}: {} ends inside the frame at byte {offset}",
                section(file)
            ),
            json!({ "section": section_key(file), "offset": offset }),
        ),
        AuditError::RecordCorrupt {
            index,
            offset,
            reason,
        } => Failure::new(
            "record_corrupt",
            format!(
                "{DOES_NOT_VERIFY}: record {index} at byte {offset} of the records section is corrupt: \
                 {reason}"
            ),
            json!({ "record": index, "offset": offset, "reason": reason }),
        ),
        AuditError::LeafOutOfOrder {
            leaf,
            expected,
            found,
        } => Failure::new(
            "leaf_out_of_order",
            format!(
                "{DOES_NOT_VERIFY}: leaf {leaf} starts at record {found} instead of \
                 {expected}: a leaf was removed or altered"
            ),
            json!({ "leaf": leaf, "expected": expected, "found": found }),
        ),
        AuditError::RecordsMissing {
            leaf,
            first,
            end,
            available,
        } => Failure::new(
            "records_missing",
            format!(
                "{DOES_NOT_VERIFY}: leaf {leaf} seals {} but the export holds only \
                 {available} records: records were removed",
                records_range(*first, *end)
            ),
            json!({ "leaf": leaf, "first": first, "end": end, "available": available }),
        ),
        AuditError::LeafMismatch { leaf, first, end } => Failure::new(
            "leaf_mismatch",
            format!(
                "{DOES_NOT_VERIFY}: {} no longer rebuild leaf {leaf}: a record there was \
                 changed, dropped, inserted or reordered",
                records_range(*first, *end)
            ),
            json!({ "leaf": leaf, "first": first, "end": end }),
        ),
        AuditError::UnsealedRecord { index } => Failure::new(
            "unsealed_record",
            format!(
                "{DOES_NOT_VERIFY}: record {index} is not sealed in any leaf: records were \
                 added after the last checkpoint"
            ),
            json!({ "record": index }),
        ),
        AuditError::MissingCheckpoint { size } => Failure::new(
            "missing_checkpoint",
            format!(
                "{DOES_NOT_VERIFY}: there is no checkpoint for tree size {size}: a checkpoint \
                 was removed"
            ),
            json!({ "size": size }),
        ),
        AuditError::BadCheckpoint { size, source } => {
            let (kind, problem) = checkpoint_problem(source);
            Failure::new(
                kind,
                format!("{DOES_NOT_VERIFY}: the checkpoint at tree size {size} {problem}"),
                json!({ "size": size, "reason": source.to_string() }),
            )
        }
        AuditError::OriginMismatch {
            size,
            expected,
            found,
        } => {
            let which = match known {
                Some(_) => the_known.clone(),
                None => format!("the checkpoint at tree size {size}"),
            };
            let message = format!("{which} is for `{found}`, not this log's origin `{expected}`");
            Failure::new(
                "origin_mismatch",
                match known {
                    Some(_) => message,
                    None => format!("{DOES_NOT_VERIFY}: {message}"),
                },
                with_known(json!({ "size": size, "expected": expected, "found": found })),
            )
        }
        AuditError::SizeMismatch { size, claimed } => Failure::new(
            "size_mismatch",
            format!(
                "{DOES_NOT_VERIFY}: the checkpoint at tree size {size} claims size {claimed}: \
                 checkpoints were moved or removed"
            ),
            json!({ "size": size, "claimed": claimed }),
        ),
        AuditError::RootMismatch {
            size,
            claimed,
            computed,
        } => Failure::new(
            "root_mismatch",
            format!(
                "{DOES_NOT_VERIFY}: the checkpoint at tree size {size} has root {claimed} but \
                 the leaves give {computed}"
            ),
            json!({ "size": size, "claimed": claimed.to_hex(), "computed": computed.to_hex() }),
        ),
        AuditError::RolledBack { known: size, have } => Failure::new(
            "rolled_back",
            format!(
                "the audit log was rolled back: it has {have} leaves, fewer than the {size} of \
                 {the_known}"
            ),
            with_known(json!({ "size": size, "have": have })),
        ),
        AuditError::Forked { size } => Failure::new(
            "forked",
            format!(
                "the audit log was forked: its root at tree size {size} is not the root of \
                 {the_known}, so the log was rewritten"
            ),
            with_known(json!({ "size": size })),
        ),
        other => Failure::new(
            "invalid",
            format!("{DOES_NOT_VERIFY}: {other}"),
            with_known(json!({})),
        ),
    }
}

/// The kind and the end of a sentence saying why a checkpoint was refused.
fn checkpoint_problem(err: &CheckpointError) -> (&'static str, String) {
    match err {
        CheckpointError::Note(NoteError::UnknownKey) => (
            "unknown_key",
            "has no signature from the given keys: it was forged, or `--key` is not this log's \
             key"
            .to_owned(),
        ),
        CheckpointError::Note(NoteError::BadSignature { name, key_id }) => (
            "bad_signature",
            format!(
                "has a signature of `{}` ({key_id:08x}) that does not verify: it was altered",
                name.escape_debug()
            ),
        ),
        other => ("bad_checkpoint", format!("is malformed: {other}")),
    }
}

/// `record 4`, `records 4 and 5`, or `records 4 to 7` for the range `4..8`.
fn records_range(first: u64, end: u64) -> String {
    match end.saturating_sub(first) {
        0 | 1 => format!("record {first}"),
        2 => format!("records {first} and {}", first + 1),
        _ => format!("records {first} to {}", end - 1),
    }
}

/// The part of the export an error's `file` names, for a sentence.
fn section(file: &str) -> String {
    match section_key(file) {
        "records" => "the records section".to_owned(),
        "tree" => "the tree section".to_owned(),
        "export" => "the export".to_owned(),
        _ => format!("`{file}`"),
    }
}

/// The part of the export an error's `file` names, for JSON.
fn section_key(file: &str) -> &str {
    match file {
        "export records" | "records" => "records",
        "export tree" | "tree" => "tree",
        other => other,
    }
}

/// The verifier of the `--key`s.
fn verifier_of(keys: &[VerifierKey]) -> Verifier {
    let mut verifier = Verifier::default();
    for key in keys {
        verifier.add(key.clone());
    }
    verifier
}

/// A `--known` checkpoint, read and verified under `verifier`.
fn known_checkpoint(path: &Path, verifier: &Verifier) -> Result<(PathBuf, Checkpoint), Failure> {
    let note = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            "io",
            format!("cannot read `{}`: {e}", path.display()),
            json!({ "known": path.display().to_string() }),
        )
    })?;
    let checkpoint = Checkpoint::parse(&note, verifier).map_err(|e| {
        let (kind, problem) = checkpoint_problem(&e);
        Failure::new(
            kind,
            format!("the known checkpoint `{}` {problem}", path.display()),
            json!({ "known": path.display().to_string(), "reason": e.to_string() }),
        )
    })?;
    Ok((path.to_path_buf(), checkpoint))
}

/// Where `export` downloads a new export while a checkpoint is kept beside `out`, until it is
/// found to extend it (and where it stays if not): `OUT.new`.
fn pending_file(out: &Path) -> PathBuf {
    beside(out, ".new")
}

/// Where `export` keeps the checkpoint of the export `out`: `OUT.checkpoint`.
fn checkpoint_file(out: &Path) -> PathBuf {
    beside(out, ".checkpoint")
}

/// `out` with `suffix` after its whole name.
fn beside(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A `--key`: the vkey text, or `@FILE` holding it (surrounding whitespace ignored).
fn parse_key(arg: &str) -> Result<VerifierKey, String> {
    let text = match arg.strip_prefix('@') {
        Some(file) => {
            std::fs::read_to_string(file).map_err(|e| format!("cannot read `{file}`: {e}"))?
        }
        None => arg.to_owned(),
    };
    VerifierKey::parse(text.trim()).map_err(|e| e.to_string())
}

/// A `--record`: 64 hex digits.
fn parse_hash(arg: &str) -> Result<Hash, String> {
    Hash::from_hex(arg).ok_or_else(|| "a record hash is 64 hex digits".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;

    #[test]
    fn ranges_and_sections_read_well() {
        assert_eq!(records_range(4, 5), "record 4");
        assert_eq!(records_range(4, 6), "records 4 and 5");
        assert_eq!(records_range(4, 8), "records 4 to 7");
        assert_eq!(section("export records"), "the records section");
        assert_eq!(section("export tree"), "the tree section");
        assert_eq!(section("export"), "the export");
    }

    #[test]
    fn the_export_hint_quotes_the_key_and_path_as_shell_words() {
        // A key name the hub chose to break out of single quotes, and a path of spaces and
        // quotes: the shell reads each back as one word, the same.
        let key = VerifierKey::ed25519("it's';echo${IFS}injected;'", [7; 32]).unwrap();
        let out = Path::new("my audit's \"log\".export");
        let lines = verify_hint(out, &key.to_string());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0],
            format!("checkpoint key (as the hub gives it): {key}")
        );
        let command = lines[1]
            .strip_prefix("verify it offline with `entente audit verify ")
            .and_then(|rest| rest.strip_suffix('`'))
            .unwrap();
        let words = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\n' {command}"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(words.stdout).unwrap(),
            format!("{}\n--key\n{key}\n", out.display())
        );

        // What can't be seen is escaped, in the key and in the command.
        let key = VerifierKey::ed25519("hub\u{202e}evil", [7; 32]).unwrap();
        let lines = verify_hint(out, &key.to_string());
        assert!(lines.iter().all(|l| !l.contains('\u{202e}')), "{lines:?}");
        assert!(lines[1].contains("--key 'hub\\u{202e}evil+"), "{lines:?}");

        // A key that does not parse gives no command.
        let lines = verify_hint(out, "x' ; rm -rf ~ ; echo '\u{1b}[2K");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("does not parse"), "{lines:?}");
        assert!(!lines[0].contains("entente audit verify"), "{lines:?}");
        assert!(!lines[0].contains("rm -rf"), "{lines:?}");
    }

    #[test]
    fn a_failure_is_one_line_escaped() {
        // A reason an untrusted export chose, quoted in the message.
        let failure = Failure::new(
            "metadata",
            format!("{DOES_NOT_VERIFY}: its metadata is invalid: x\nok\u{1b}[2K\u{202e}"),
            json!({}),
        );
        assert_eq!(
            failure.line(),
            format!(
                "error: {DOES_NOT_VERIFY}: its metadata is invalid: x\\nok\\u{{1b}}[2K\\u{{202e}}"
            )
        );
    }

    #[test]
    fn keys_and_hashes_parse_or_fail_clearly() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        assert_eq!(parse_key(vkey).unwrap().to_string(), vkey);
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("key");
        std::fs::write(&file, format!("  {vkey}\n")).unwrap();
        let arg = format!("@{}", file.display());
        assert_eq!(parse_key(&arg).unwrap().to_string(), vkey);
        assert!(
            parse_key("PeterNeumann")
                .unwrap_err()
                .contains("verifier key")
        );
        assert!(
            parse_key("@/nonexistent/key")
                .unwrap_err()
                .contains("cannot read")
        );
        assert!(parse_hash(&"ab".repeat(32)).is_ok());
        assert!(parse_hash("abc").is_err());
    }

    // === prove ===

    use entente_audit::{
        Admin, AuditKey, AuditLog, AuditOptions, Decision, DeliveredBatch, Ed25519Signer,
        NoteSigner,
    };

    const ORIGIN: &str = "hub-1.acme.internal/audit";

    fn signer(seed: u8) -> Ed25519Signer {
        Ed25519Signer::from_seed(ORIGIN, &[seed; 32]).unwrap()
    }

    fn verifier(seed: u8) -> Verifier {
        Verifier::new(signer(seed).verifier_key().clone())
    }

    fn admin_record(i: u64, salt: &str) -> Record {
        Record {
            time_ms: 1_760_000_000_000 + i,
            hub: "hub-1".into(),
            actor: "spiffe://acme.internal/human/admin".into(),
            event: Event::Admin(Admin {
                operation: "create-token".into(),
                target: format!("spiffe://acme.internal/agent/ops/a{i}{salt}").into(),
                detail: "".into(),
            }),
            outcome: Outcome::Success,
        }
    }

    /// A log of seven records in three leaves (3, 2, 2), signed with key `seed`; `salt` makes
    /// another log's records differ. Returns the log and its checkpoints by size.
    fn write_log(dir: &Path, seed: u8, salt: &str) -> (AuditLog, Vec<Checkpoint>) {
        let mut log = AuditLog::create(
            dir.join(format!("log{seed}{salt}")),
            Box::new(signer(seed)),
            AuditKey::from_bytes(&[0x17; 32]).unwrap(),
            AuditOptions::default(),
        )
        .unwrap();
        let mut i = 0;
        for n in [3, 2, 2] {
            for _ in 0..n {
                log.append(&admin_record(i, salt)).unwrap();
                i += 1;
            }
            log.seal().unwrap();
        }
        let checkpoints = log.checkpoints().to_vec();
        (log, checkpoints)
    }

    /// The hub's answer to a proof request, built as the hub builds it.
    fn answer(log: &AuditLog, index: u64, old_size: u64) -> AuditProofResponse {
        let mut answer = answer_at(log, index, log.size());
        if old_size != 0 {
            answer.consistency =
                hashes_of(log.consistency_proof(old_size, log.size()).unwrap().path);
        }
        answer
    }

    /// As [`answer`], against the log's earlier checkpoint of `size` leaves.
    fn answer_at(log: &AuditLog, index: u64, size: u64) -> AuditProofResponse {
        let proof = log.record_proof(index, size).unwrap();
        AuditProofResponse {
            checkpoint: log.checkpoints()[size as usize].as_str().to_owned(),
            record: log.records(index..index + 1).unwrap()[0]
                .to_bytes()
                .unwrap(),
            leaf_index: proof.leaf_index,
            leaf: proof.leaf.to_bytes(),
            record_path: hashes_of(proof.record_path.path),
            log_path: hashes_of(proof.log_path.path),
            consistency: Vec::new(),
        }
    }

    fn hashes_of(path: Vec<Hash>) -> Vec<Vec<u8>> {
        path.into_iter().map(|h| h.0.to_vec()).collect()
    }

    fn kind_of(result: Result<Proven, Failure>) -> (&'static str, String) {
        let failure = result.err().unwrap();
        (failure.kind, failure.message)
    }

    #[test]
    fn a_proof_verifies_against_the_key_and_a_known_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, checkpoints) = write_log(tmp.path(), 1, "");
        let known = (PathBuf::from("kept"), checkpoints[1].clone());

        let proven = check_proof(3, &answer(&log, 3, 0), &verifier(1), None).unwrap();
        assert_eq!(proven.record, admin_record(3, ""));
        assert_eq!(proven.hash, admin_record(3, "").hash().unwrap());
        assert_eq!(proven.leaf, 1);
        assert_eq!(proven.checkpoint.size(), 3);
        let proven = check_proof(6, &answer(&log, 6, 1), &verifier(1), Some(&known)).unwrap();
        assert_eq!(proven.known, Some((PathBuf::from("kept"), 1)));
        // The checkpoint of the same size is consistent with an empty proof.
        let same = (PathBuf::from("same"), checkpoints[3].clone());
        check_proof(0, &answer(&log, 0, 3), &verifier(1), Some(&same)).unwrap();
    }

    #[test]
    fn whatever_the_hub_changes_fails_the_proof() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, checkpoints) = write_log(tmp.path(), 1, "");
        let good = answer(&log, 4, 1);
        let check = |answer: &AuditProofResponse, known: Option<&(PathBuf, Checkpoint)>| {
            kind_of(check_proof(4, answer, &verifier(1), known))
        };

        // Another key, or a checkpoint altered.
        let (kind, message) = kind_of(check_proof(4, &good, &verifier(2), None));
        assert_eq!(kind, "unknown_key");
        assert!(message.starts_with("the checkpoint the hub returned has no signature"));
        let mut bad = good.clone();
        bad.checkpoint = bad.checkpoint.replacen("\n3\n", "\n4\n", 1);
        assert_eq!(check(&bad, None).0, "bad_signature");

        // Another record, or the right one at another index.
        let mut bad = good.clone();
        bad.record = admin_record(4, "x").to_bytes().unwrap();
        let (kind, message) = check(&bad, None);
        assert_eq!(kind, "bad_proof");
        assert!(
            message.contains("does not verify against its checkpoint of tree size 3"),
            "{message}"
        );
        assert_eq!(
            kind_of(check_proof(3, &good, &verifier(1), None)).0,
            "bad_proof"
        );
        let (kind, message) = kind_of(check_proof(0, &good, &verifier(1), None));
        assert_eq!(kind, "bad_proof");
        assert!(
            message.contains("its leaf seals records 3 and 4, not record 0"),
            "{message}"
        );

        // Any hash of either path, the leaf, or its place.
        for at in 0..good.record_path.len() + good.log_path.len() {
            let mut bad = good.clone();
            let hash = match bad.record_path.get_mut(at) {
                Some(hash) => hash,
                None => &mut bad.log_path[at - good.record_path.len()],
            };
            hash[7] ^= 1;
            assert_eq!(check(&bad, None).0, "bad_proof", "hash {at}");
        }
        let mut bad = good.clone();
        bad.leaf_index = 2;
        assert_eq!(check(&bad, None).0, "bad_proof");
        let mut bad = good.clone();
        bad.leaf[30] ^= 1;
        assert_eq!(check(&bad, None).0, "bad_proof");
        let mut bad = good.clone();
        bad.log_path[0].push(0);
        let (kind, message) = check(&bad, None);
        assert_eq!(kind, "bad_proof");
        assert!(message.contains("is not 32 bytes"), "{message}");
        let mut bad = good.clone();
        bad.record.push(0);
        let (_, message) = check(&bad, None);
        assert!(message.contains("the record does not decode"), "{message}");

        // The consistency with a known checkpoint: a forked log, a log rolled back, a
        // consistency proof changed.
        let (_, forked) = write_log(tmp.path(), 1, "-fork");
        let fork = (PathBuf::from("fork"), forked[1].clone());
        let (kind, message) = check(&good, Some(&fork));
        assert_eq!(kind, "forked");
        assert!(
            message.starts_with(
                "the hub's audit log is not consistent with the known checkpoint `fork` \
                 (tree size 1)"
            ),
            "{message}"
        );
        let early = answer_at(&log, 4, 2);
        let later = (PathBuf::from("later"), checkpoints[3].clone());
        let (kind, message) = check(&early, Some(&later));
        assert_eq!(kind, "rolled_back");
        assert!(
            message.contains("has 2 leaves, fewer than the 3"),
            "{message}"
        );
        let mut bad = good.clone();
        bad.consistency[0][0] ^= 1;
        let known = (PathBuf::from("kept"), checkpoints[1].clone());
        assert_eq!(check(&bad, Some(&known)).0, "forked");
    }

    // === records ===

    #[test]
    fn records_read_on_one_line() {
        let key = AuditKey::from_bytes(&[0x17; 32]).unwrap();
        let alice = "spiffe://acme.internal/agent/shop/alice";
        let decision = Record {
            time_ms: 1_748_787_300_500,
            hub: "acme.internal".into(),
            actor: alice.into(),
            event: Event::Decision(Decision {
                principal: alice.into(),
                action: "publish".into(),
                resource: "Channel::\"orders.eu\"".into(),
                allowed: true,
                policies: vec!["shop-orders".into()],
                reason: "permitted".into(),
                policy_epoch: 3,
            }),
            outcome: Outcome::Success,
        };
        assert_eq!(
            record_line(7, &decision),
            format!(
                "7  2025-06-01T14:15:00.500Z  {alice}  success  decision publish \
                 Channel::\"orders.eu\" allowed by shop-orders (epoch 3)"
            )
        );
        let batch = Event::DeliveredBatch(DeliveredBatch {
            sender: alice.into(),
            channel: "orders.eu".into(),
            count: 3,
            bytes: 812,
            envelopes_root: Hash([0xab; 32]),
        });
        assert_eq!(
            summary(&batch, alice),
            format!("delivered-batch {alice} → orders.eu: 3 envelopes, 812 B, root abababab…")
        );
        // Protected fields show the start of their MAC, control characters are escaped.
        let protected = key.protect("INC-42");
        let Text::Mac(mac) = &protected else {
            panic!("not protected")
        };
        let admin = Event::Admin(Admin {
            operation: "create-token".into(),
            target: protected.clone(),
            detail: "no policy permits it\nforged line".into(),
        });
        assert_eq!(
            summary(&admin, alice),
            format!(
                "admin create-token hmac:{}: no policy permits it\\nforged line",
                &Hash(mac.0).to_hex()[..8]
            )
        );
        let hash = Hash([1; 32]);
        let v = record_json(7, &decision, &hash);
        assert_eq!(v["index"], 7);
        assert_eq!(v["time_ms"], 1_748_787_300_500_u64);
        assert_eq!(v["kind"], "decision");
        assert_eq!(v["fields"]["policies"][0], "shop-orders");
        assert_eq!(v["hash"], hash.to_hex());
        assert_eq!(text_json(&protected)["hmac"], Hash(mac.0).to_hex());
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_748_787_300_007), "2025-06-01T14:15:00.007Z");
    }

    #[test]
    fn a_checkpoint_is_kept_beside_its_export() {
        assert_eq!(
            checkpoint_file(Path::new("dir/audit.export")),
            PathBuf::from("dir/audit.export.checkpoint")
        );
    }
}
