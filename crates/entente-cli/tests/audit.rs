//! `entente audit verify` with the real binary, on exports written by the audit library: what
//! verifies, which records are found, and each kind of tampering refused with its position.
//! `entente audit tail`, `export` and `prove` against `entente hub start`: what an
//! administrator reads, exports and proves, checked here with the audit library, and an agent
//! refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use aws_lc_rs::digest::{Context, SHA256};
use entente_audit::{
    Admin, AuditKey, AuditLog, AuditOptions, Checkpoint, Decision, EXPORT_MAGIC, Ed25519Signer,
    Enrollment, Event, Hash, NoteSigner, Outcome, Record, RecordRef, Revocation, Verifier,
    VerifierKey, verify_export,
};
use serde_json::Value;
use support::{entente, ok, s, start, stop};

const ORIGIN: &str = "hub-1.acme.internal/audit";
const SEED: [u8; 32] = [0x42; 32];
const OTHER_SEED: [u8; 32] = [0x43; 32];

/// Records per leaf: leaf 0 holds records 0–2, leaf 1 3–4, leaf 2 5–8, leaf 3 9.
const BATCHES: [usize; 4] = [3, 2, 4, 1];

fn signer(seed: &[u8; 32]) -> Ed25519Signer {
    Ed25519Signer::from_seed(ORIGIN, seed).unwrap()
}

fn vkey(seed: &[u8; 32]) -> String {
    signer(seed).verifier_key().to_string()
}

/// Record `i` of a log, of one of four kinds; `salt` makes another log's records differ.
fn record(i: u64, salt: u64) -> Record {
    let alice = "spiffe://acme.internal/agent/ops/alice";
    let event = match i % 4 {
        0 => Event::Decision(Decision {
            principal: alice.into(),
            action: "publish".into(),
            resource: format!("orders.eu.{i}").into(),
            allowed: true,
            policies: vec!["ops-namespace".into()],
            reason: "matched ops-namespace".into(),
            policy_epoch: 3,
        }),
        1 => Event::Enrollment(Enrollment {
            principal: alice.into(),
            segment: "ops".into(),
            token_id: format!("t-{i}").into(),
            certificate: Hash([i as u8; 32]),
            not_after_ms: 1_760_086_400_000,
        }),
        2 => Event::Revocation(Revocation {
            principal: "spiffe://acme.internal/agent/ops/mallory".into(),
            list_version: i,
            reason: "key leaked".into(),
        }),
        _ => Event::Admin(Admin {
            operation: "policy.load".into(),
            target: "hub".into(),
            detail: format!("epoch {i}").into(),
        }),
    };
    Record {
        time_ms: 1_760_000_000_000 + i * 1000 + salt,
        hub: "hub-1".into(),
        actor: alice.into(),
        event,
        outcome: Outcome::Success,
    }
}

/// A log of ten records in four leaves, exported whole and after its second leaf.
struct Log {
    /// The export of all four leaves.
    export: PathBuf,
    /// The export taken when the log had two leaves.
    early: PathBuf,
    refs: Vec<RecordRef>,
    /// The checkpoints of tree sizes 0 to 4.
    checkpoints: Vec<Checkpoint>,
}

fn write_log(dir: &Path, seed: &[u8; 32], salt: u64) -> Log {
    let key = AuditKey::from_bytes(&[0x17; 32]).unwrap();
    let mut log = AuditLog::create(
        dir.join("log"),
        Box::new(signer(seed)),
        key,
        AuditOptions::default(),
    )
    .unwrap();
    let early = dir.join("early.export");
    let mut refs = Vec::new();
    for (leaf, n) in BATCHES.into_iter().enumerate() {
        for _ in 0..n {
            refs.push(log.append(&record(refs.len() as u64, salt)).unwrap());
        }
        log.seal().unwrap();
        if leaf == 1 {
            log.export(&early).unwrap();
        }
    }
    let export = dir.join("audit.export");
    log.export(&export).unwrap();
    Log {
        export,
        early,
        refs,
        checkpoints: log.checkpoints().to_vec(),
    }
}

/// Writes `checkpoint`'s note to `dir/name`, as an auditor keeps it.
fn keep(dir: &Path, name: &str, checkpoint: &Checkpoint) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, checkpoint.as_str()).unwrap();
    path
}

fn verify(export: &Path, args: &[&str]) -> Output {
    let mut all = vec!["audit", "verify", s(export)];
    all.extend_from_slice(args);
    entente(&all)
}

/// Runs `verify`, which must succeed; returns its standard output.
fn passes(export: &Path, args: &[&str]) -> String {
    let out = verify(export, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `verify`, which must find the export does not verify (exit 1, one line on standard
/// error); returns that line, and the `--json` answer of the same run.
fn fails(export: &Path, args: &[&str]) -> (String, Value) {
    let out = verify(export, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty());
    let line = String::from_utf8(out.stderr).unwrap();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.starts_with("error: "), "{line}");

    let mut with_json = args.to_vec();
    with_json.push("--json");
    let out = verify(export, &with_json);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["error"], line.trim_end().trim_start_matches("error: "));
    (line, v)
}

#[test]
fn an_intact_export_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let log = write_log(tmp.path(), &SEED, 0);
    let key = vkey(&SEED);
    let latest = log.checkpoints.last().unwrap();

    let text = passes(&log.export, &["--key", &key]);
    assert!(
        text.starts_with(&format!(
            "the audit log `{}` verifies: origin `{ORIGIN}`, 10 records in 4 leaves, 5 checkpoints\n",
            log.export.display()
        )),
        "{text}"
    );
    let key_id = key.split('+').nth(1).unwrap();
    assert!(
        text.contains(&format!(
            "latest checkpoint: tree size 4, root {}, signed by {ORIGIN} ({key_id})",
            latest.root()
        )),
        "{text}"
    );

    let v: Value = serde_json::from_str(&passes(&log.export, &["--key", &key, "--json"])).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["origin"], ORIGIN);
    assert_eq!(v["records"], 10);
    assert_eq!(v["size"], 4);
    assert_eq!(v["checkpoints"], 5);
    assert_eq!(v["checkpoint"]["size"], 4);
    assert_eq!(v["checkpoint"]["root"], latest.root().to_hex());
    assert_eq!(v["checkpoint"]["signed_by"][0], key.as_str());
    assert_eq!(v["checkpoint"]["note"], latest.as_str());

    // The key from a file; a key the log used before a rotation given as well.
    let key_file = tmp.path().join("audit.vkey");
    fs::write(&key_file, format!("{key}\n")).unwrap();
    let at_file = format!("@{}", s(&key_file));
    passes(&log.export, &["--key", &at_file]);
    passes(&log.export, &["--key", &vkey(&OTHER_SEED), "--key", &key]);

    // The latest checkpoint printed is one an auditor can keep and check later copies with.
    let kept = tmp.path().join("kept");
    fs::write(&kept, v["checkpoint"]["note"].as_str().unwrap()).unwrap();
    passes(&log.export, &["--key", &key, "--known", s(&kept)]);
}

#[test]
fn records_are_found_with_their_index_or_said_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let log = write_log(tmp.path(), &SEED, 0);
    let key = vkey(&SEED);
    let sixth = log.refs[6].hash.to_hex();
    let first = log.refs[0].hash.to_hex();

    let text = passes(
        &log.export,
        &["--key", &key, "--record", &sixth, "--record", &first],
    );
    assert!(
        text.contains(&format!("record {sixth}: index 6 in leaf 2,")),
        "{text}"
    );
    assert!(
        text.contains(&format!("record {first}: index 0 in leaf 0,")),
        "{text}"
    );
    let v: Value = serde_json::from_str(&passes(
        &log.export,
        &["--key", &key, "--record", &sixth, "--json"],
    ))
    .unwrap();
    assert_eq!(v["found"][0]["hash"], sixth.as_str());
    assert_eq!(v["found"][0]["index"], 6);
    assert_eq!(v["found"][0]["leaf"], 2);

    let stranger = Hash(sha256(&[b"not a record"])).to_hex();
    let (line, v) = fails(
        &log.export,
        &["--key", &key, "--record", &sixth, "--record", &stranger],
    );
    assert!(
        line.contains(&format!("does not hold record `{stranger}`")),
        "{line}"
    );
    assert_eq!(v["kind"], "record_not_found");
    assert_eq!(v["record_hash"], stranger.as_str());

    // A record of the early export is found in it; a later one is not.
    passes(&log.early, &["--key", &key, "--record", &first]);
    fails(&log.early, &["--key", &key, "--record", &sixth]);
}

#[test]
fn a_record_changed_in_place_is_named_with_its_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let log = write_log(tmp.path(), &SEED, 0);
    let mut bytes = fs::read(&log.export).unwrap();
    let (records_at, frames) = record_frames(&bytes);
    let offset = frames[3];
    // The last byte of the record's time: still a record, but not the one its frame checks.
    bytes[records_at + offset + 4 + 9] ^= 1;
    let tampered = tmp.path().join("tampered.export");
    fs::write(&tampered, &bytes).unwrap();

    let (line, v) = fails(&tampered, &["--key", &vkey(&SEED)]);
    assert!(
        line.contains(&format!(
            "the audit log does not verify: record 3 at byte {offset} of the records section is corrupt"
        )),
        "{line}"
    );
    assert_eq!(v["kind"], "record_corrupt");
    assert_eq!(v["record"], 3);
    assert_eq!(v["offset"], offset);
}

#[test]
fn records_changed_reordered_or_dropped_with_valid_frames_name_their_leaf() {
    let tmp = tempfile::tempdir().unwrap();
    let log = write_log(tmp.path(), &SEED, 0);
    let key = vkey(&SEED);
    let tampered = tmp.path().join("tampered.export");

    // Each tampering, the leaf that no longer rebuilds, and that leaf's records.
    let names_leaf = |what: &str, tamper: fn(&mut Export), leaf: u64, range: &str| {
        let mut export = Export::read(&log.export);
        tamper(&mut export);
        export.write(&tampered);
        let (line, v) = fails(&tampered, &["--key", &key]);
        assert!(
            line.contains(&format!(
                "the audit log does not verify: {range} no longer rebuild leaf {leaf}:"
            )),
            "{what}: {line}"
        );
        assert_eq!(v["kind"], "leaf_mismatch", "{what}");
        assert_eq!(v["leaf"], leaf, "{what}");
    };
    // Byte 9 is the last of the record's time: it still decodes.
    names_leaf(
        "record 6 changed",
        |e| e.records[6][9] ^= 1,
        2,
        "records 5 to 8",
    );
    names_leaf(
        "records 3 and 4 swapped",
        |e| e.records.swap(3, 4),
        1,
        "records 3 and 4",
    );
    names_leaf(
        "record 1 dropped",
        |e| {
            e.records.remove(1);
        },
        0,
        "records 0 to 2",
    );
}

#[test]
fn forged_and_altered_checkpoints_name_their_tree_size() {
    let tmp = tempfile::tempdir().unwrap();
    let log = write_log(tmp.path(), &SEED, 0);
    let key = vkey(&SEED);
    let tampered = tmp.path().join("tampered.export");

    // The checkpoint of size 2 signed again by another key of the same name: same size, same
    // root, a valid frame.
    let mut export = Export::read(&log.export);
    let honest = &log.checkpoints[2];
    let forged = Checkpoint::sign(2, honest.root(), &signer(&OTHER_SEED)).unwrap();
    let at = export.checkpoint_entry(2);
    export.tree[at].1 = forged.as_str().as_bytes().to_vec();
    export.write(&tampered);
    let (line, v) = fails(&tampered, &["--key", &key]);
    assert!(
        line.contains("the checkpoint at tree size 2 has no signature from the given keys"),
        "{line}"
    );
    assert_eq!(v["kind"], "unknown_key");
    assert_eq!(v["size"], 2);

    // The checkpoint of size 3 with one character of its signature changed.
    let mut export = Export::read(&log.export);
    let at = export.checkpoint_entry(3);
    let mut note = String::from_utf8(export.tree[at].1.clone()).unwrap();
    let sig_at = note.rfind(' ').unwrap() + 30;
    let old = note.as_bytes()[sig_at];
    let new = if old == b'A' { "B" } else { "A" };
    note.replace_range(sig_at..sig_at + 1, new);
    export.tree[at].1 = note.into_bytes();
    export.write(&tampered);
    let (line, v) = fails(&tampered, &["--key", &key]);
    assert!(
        line.contains(&format!(
            "the checkpoint at tree size 3 has a signature of `{ORIGIN}`"
        )),
        "{line}"
    );
    assert!(line.contains("does not verify: it was altered"), "{line}");
    assert_eq!(v["kind"], "bad_signature");
    assert_eq!(v["size"], 3);
}

#[test]
fn known_checkpoints_catch_forks_and_rollbacks() {
    let tmp = tempfile::tempdir().unwrap();
    let log = write_log(tmp.path(), &SEED, 0);
    let key = vkey(&SEED);

    // An earlier checkpoint of the same log, and the latest one.
    let second = keep(tmp.path(), "second.checkpoint", &log.checkpoints[2]);
    let fourth = keep(tmp.path(), "fourth.checkpoint", &log.checkpoints[4]);
    let text = passes(
        &log.export,
        &["--key", &key, "--known", s(&second), "--known", s(&fourth)],
    );
    assert!(
        text.contains(&format!(
            "known checkpoint `{}`: tree size 2, consistent with the log",
            second.display()
        )),
        "{text}"
    );
    let v: Value = serde_json::from_str(&passes(
        &log.export,
        &["--key", &key, "--known", s(&second), "--json"],
    ))
    .unwrap();
    assert_eq!(v["known"][0]["size"], 2);
    assert_eq!(v["known"][0]["root"], log.checkpoints[2].root().to_hex());

    // The key holder rewrote the log: same key, other records. Each copy verifies alone.
    let fork_dir = tmp.path().join("fork");
    fs::create_dir(&fork_dir).unwrap();
    let fork = write_log(&fork_dir, &SEED, 7);
    passes(&fork.export, &["--key", &key]);
    let forked = keep(tmp.path(), "forked.checkpoint", &fork.checkpoints[2]);
    let (line, v) = fails(&log.export, &["--key", &key, "--known", s(&forked)]);
    assert!(
        line.contains(&format!(
            "the audit log was forked: its root at tree size 2 is not the root of the known checkpoint `{}`",
            forked.display()
        )),
        "{line}"
    );
    assert_eq!(v["kind"], "forked");
    assert_eq!(v["size"], 2);
    assert_eq!(v["known"], s(&forked));

    // The log cut back to two leaves verifies alone, and with the checkpoint of that size,
    // but not with a later one.
    passes(&log.early, &["--key", &key, "--known", s(&second)]);
    let (line, v) = fails(&log.early, &["--key", &key, "--known", s(&fourth)]);
    assert!(
        line.contains(&format!(
            "the audit log was rolled back: it has 2 leaves, fewer than the 4 of the known checkpoint `{}`",
            fourth.display()
        )),
        "{line}"
    );
    assert_eq!(v["kind"], "rolled_back");
    assert_eq!(v["size"], 4);
    assert_eq!(v["have"], 2);

    // A known checkpoint that the keys do not sign is refused, not ignored.
    let stranger = Checkpoint::sign(2, log.checkpoints[2].root(), &signer(&OTHER_SEED)).unwrap();
    let stranger = keep(tmp.path(), "stranger.checkpoint", &stranger);
    let (line, v) = fails(&log.export, &["--key", &key, "--known", s(&stranger)]);
    assert!(
        line.contains(&format!(
            "the known checkpoint `{}` has no signature from the given keys",
            stranger.display()
        )),
        "{line}"
    );
    assert_eq!(v["kind"], "unknown_key");
}

#[test]
fn wrong_keys_fail_and_malformed_arguments_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let log = write_log(tmp.path(), &SEED, 0);

    let (line, v) = fails(&log.export, &["--key", &vkey(&OTHER_SEED)]);
    assert!(
        line.contains(
            "the audit log does not verify: the checkpoint at tree size 0 has no signature from \
             the given keys: it was forged, or `--key` is not this log's key"
        ),
        "{line}"
    );
    assert_eq!(v["kind"], "unknown_key");
    assert_eq!(v["size"], 0);

    let key = vkey(&SEED);
    let missing = tmp.path().join("missing.vkey");
    let at_missing = format!("@{}", s(&missing));
    for (args, needle) in [
        (vec!["--key", "not-a-key"], "--key"),
        (vec!["--key", &key[..key.len() - 2]], "--key"),
        (vec!["--key", &at_missing], "cannot read"),
        (vec![], "--key"),
        (vec!["--key", &key, "--record", "abc"], "64 hex digits"),
    ] {
        let out = verify(&log.export, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }

    // An export that is not there is a failure, not a usage error.
    let (line, _) = fails(&tmp.path().join("nothing.export"), &["--key", &key]);
    assert!(line.contains("cannot open"), "{line}");
}

// === against a running hub ===

/// The hub's log origin: its trust domain's.
const HUB_ORIGIN: &str = "entente.local/audit";

/// A running `entente hub start`, its admin identity and an enrolled agent, `demo/alice`, who
/// has sent one message to `demo.greetings`.
struct Hub {
    child: std::process::Child,
    addr: String,
    admin: PathBuf,
    alice: PathBuf,
}

impl Hub {
    fn start(tmp: &Path) -> Self {
        let data = tmp.join("hub");
        let (child, info) = start(&data);
        let addr = info["listening"].as_str().unwrap().to_owned();
        let admin = data.join("admin");
        let alice = support::enroll(&data, &addr, "demo/alice", tmp);
        let hub = Self {
            child,
            addr,
            admin,
            alice,
        };
        hub.send("hello bob");
        hub
    }

    fn send(&self, message: &str) {
        ok(&[
            "send",
            "--identity",
            s(&self.alice),
            "--hub",
            &self.addr,
            "demo.greetings",
            message,
        ]);
    }

    /// Runs `entente audit ARGS --identity ID --hub ADDR`.
    fn audit(&self, id: &Path, args: &[&str]) -> Output {
        let mut all = vec!["audit"];
        all.extend_from_slice(args);
        all.extend(["--identity", s(id), "--hub", &self.addr]);
        entente(&all)
    }

    /// As [`Hub::audit`] as the admin, which must succeed; its standard output.
    fn admin(&self, args: &[&str]) -> String {
        let out = self.audit(&self.admin, args);
        assert!(
            out.status.success(),
            "entente audit {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `audit export OUT --json` as the admin.
    fn export(&self, out: &Path) -> Value {
        serde_json::from_str(&self.admin(&["export", s(out), "--json"])).unwrap()
    }

    /// Stops the hub, runs `between` on its data directory, and starts it again there, at the
    /// same address.
    fn restart(self, tmp: &Path, between: impl FnOnce(&Path)) -> Self {
        stop(self.child);
        let data = tmp.join("hub");
        between(&data);
        let (child, _) = support::start_at(&data, &self.addr);
        Self { child, ..self }
    }

    fn stop(self) {
        stop(self.child);
    }
}

/// JSON lines.
fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn tail_prints_the_hubs_records_with_their_hashes() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(tmp.path());
    let alice = "spiffe://entente.local/agent/demo/alice";

    let text = hub.admin(&["tail"]);
    for needle in [
        format!(
            "  spiffe://entente.local/human/admin  success  admin create-token {alice}: token "
        ),
        format!("  {alice}  success  enrollment {alice} segment demo token "),
        format!(
            "  {alice}  success  decision publish Channel::\"demo.greetings\" allowed by \
             demo-traffic (epoch 1)\n"
        ),
        format!("  {alice}  success  delivered-batch {alice} → demo.greetings: 1 envelope, "),
    ] {
        assert!(text.contains(&needle), "{needle}: {text}");
    }
    // One line per record, from index 0 (the log holds fewer than 20), each with its time.
    for (i, line) in text.lines().enumerate() {
        let (index, rest) = line.split_once("  ").unwrap();
        assert_eq!(index, i.to_string(), "{line}");
        let time = rest.split("  ").next().unwrap();
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.contains('T'),
            "{line}"
        );
    }
    let total = text.lines().count() as u64;

    // The same with --json, and a window of it with --from and --count.
    let records = lines(&hub.admin(&["tail", "--json"]));
    assert_eq!(records.len() as u64, total);
    let batch = records
        .iter()
        .find(|r| r["kind"] == "delivered-batch")
        .unwrap();
    assert_eq!(batch["actor"], alice);
    assert_eq!(batch["outcome"], "success");
    assert_eq!(batch["fields"]["channel"], "demo.greetings");
    assert_eq!(batch["fields"]["count"], 1);
    let enrollment = records.iter().find(|r| r["kind"] == "enrollment").unwrap();
    assert_eq!(enrollment["fields"]["principal"], alice);
    assert_eq!(enrollment["fields"]["segment"], "demo");
    let window = lines(&hub.admin(&["tail", "--json", "--from", "1", "--count", "2"]));
    assert_eq!(window.len(), 2);
    assert_eq!(window[0], records[1]);
    assert_eq!(window[1], records[2]);
    let last = lines(&hub.admin(&["tail", "--json", "--count", "2"]));
    assert_eq!(last[..], records[records.len() - 2..]);

    // Each hash is the hash of the record the log holds at that index (two records alike,
    // such as decisions made in the same millisecond, have the same hash).
    let export = tmp.path().join("audit.export");
    let exported = hub.export(&export);
    let key = VerifierKey::parse(exported["verifier_key"].as_str().unwrap()).unwrap();
    let log = verify_export(&export, &Verifier::new(key)).unwrap();
    for record in &records {
        let hash = Hash::from_hex(record["hash"].as_str().unwrap()).unwrap();
        let index = record["index"].as_u64().unwrap();
        assert_eq!(log.record_hash(index), Some(hash), "{record}");
    }

    // --follow prints what comes next, until stopped.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args([
            "audit",
            "tail",
            "--follow",
            "--json",
            "--from",
            &total.to_string(),
        ])
        .args(["--identity", s(&hub.admin), "--hub", &hub.addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    hub.send("hello again");
    let mut followed = Vec::new();
    while !followed
        .iter()
        .any(|r: &Value| r["kind"] == "delivered-batch")
    {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
            follower.kill().unwrap();
            let out = follower.wait_with_output().unwrap();
            panic!("nothing followed: {}", String::from_utf8_lossy(&out.stderr));
        };
        followed.push(serde_json::from_str(&line).unwrap());
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
    assert_eq!(followed[0]["index"], total, "{followed:?}");

    // Whoever reads it gone (`| head -1`), --follow ends at its next line, quietly and with
    // success: its standard output is a pipe already closed at the other end.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let gone = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["audit", "tail", "--follow"])
        .args(["--identity", s(&hub.admin), "--hub", &hub.addr])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = support::wait(gone, support::LIMIT);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.is_empty(), "{said}");

    hub.stop();
}

#[test]
fn exports_verify_offline_and_records_are_proven_against_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(tmp.path());

    // The export, its checkpoint kept beside it, and the hint.
    let first = tmp.path().join("first.export");
    let text = hub.admin(&["export", s(&first)]);
    assert!(
        text.starts_with(&format!(
            "exported the audit log to `{}`: {} bytes, tree size ",
            first.display(),
            fs::metadata(&first).unwrap().len()
        )),
        "{text}"
    );
    let v = hub.export(&first);
    let key = v["verifier_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("{HUB_ORIGIN}+")), "{key}");
    assert!(
        text.contains(&format!(
            "verify it offline with `entente audit verify '{}' --key '{key}'`",
            first.display()
        )),
        "{text}"
    );
    assert_eq!(v["bytes"], fs::metadata(&first).unwrap().len());
    let kept = PathBuf::from(v["checkpoint_file"].as_str().unwrap());
    assert_eq!(kept, tmp.path().join("first.export.checkpoint"));
    assert_eq!(fs::read_to_string(&kept).unwrap(), v["checkpoint"]);
    let first_size = v["size"].as_u64().unwrap();
    assert!(first_size >= 1, "{v}");
    let verified: Value =
        serde_json::from_str(&passes(&first, &["--key", &key, "--json"])).unwrap();
    assert_eq!(verified["size"], first_size);

    // Owner-only; and links planted where the export and its checkpoint are written are
    // replaced, never written through.
    for file in [&first, &kept] {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(file).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
    let victim = tmp.path().join("victim");
    fs::write(&victim, "untouched").unwrap();
    let second = tmp.path().join("second.export");
    for planted in ["second.export.part", "second.export.checkpoint"] {
        std::os::unix::fs::symlink(&victim, tmp.path().join(planted)).unwrap();
    }

    // Links planted where the export and its checkpoint go are never followed: one at the
    // checkpoint's place is refused (taken as no checkpoint kept, it would skip the check),
    // one at the partial file's is replaced.
    hub.send("hello again");
    let planted = tmp.path().join("second.export.checkpoint");
    let refused = hub.audit(&hub.admin, &["export", s(&second)]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is not a regular file"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
    fs::remove_file(&planted).unwrap();
    let v = hub.export(&second);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
    assert!(
        !fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(v["size"].as_u64().unwrap() > first_size, "{v}");
    let text = passes(&second, &["--key", &key, "--known", s(&kept)]);
    assert!(
        text.contains(&format!(
            "known checkpoint `{}`: tree size {first_size}, consistent with the log",
            kept.display()
        )),
        "{text}"
    );

    // A record proven against the key alone, then with the kept checkpoint.
    let records = lines(&hub.admin(&["tail", "--json"]));
    let newest = records.last().unwrap();
    let index = newest["index"].as_u64().unwrap().to_string();
    let text = hub.admin(&["prove", "1", "--key", &key]);
    let first_line = text.lines().next().unwrap();
    assert!(first_line.starts_with("1  "), "{text}");
    assert!(first_line.contains("enrollment "), "{text}");
    assert!(
        text.contains("is proven in the checkpoint of tree size "),
        "{text}"
    );
    assert!(!text.contains("consistent"), "{text}");
    let key_file = tmp.path().join("hub.vkey");
    fs::write(&key_file, format!("{key}\n")).unwrap();
    let at_key = format!("@{}", s(&key_file));
    let text = hub.admin(&["prove", &index, "--key", &at_key, "--known", s(&kept)]);
    assert!(
        text.contains(&format!(
            "the log is consistent with the known checkpoint of tree size {first_size} (`{}`)",
            kept.display()
        )),
        "{text}"
    );
    let v: Value = serde_json::from_str(&hub.admin(&[
        "prove",
        &index,
        "--key",
        &key,
        "--known",
        s(&kept),
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["record"], *newest);
    assert_eq!(v["known"]["size"], first_size);
    assert!(
        v["checkpoint"]["size"].as_u64().unwrap() > first_size,
        "{v}"
    );

    // Another key of the same name: the hub's checkpoint is not trusted (exit 1, one line).
    let other = Ed25519Signer::from_seed(HUB_ORIGIN, &OTHER_SEED)
        .unwrap()
        .verifier_key()
        .to_string();
    let out = hub.audit(&hub.admin, &["prove", "1", "--key", &other]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "error: the checkpoint the hub returned has no signature from the given keys"
        ),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    let out = hub.audit(&hub.admin, &["prove", "1", "--key", &other, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["kind"], "unknown_key", "{v}");
    assert_eq!(v["index"], 1, "{v}");
    // ... nor is a kept checkpoint under it.
    let out = hub.audit(
        &hub.admin,
        &["prove", "1", "--key", &other, "--known", s(&kept)],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!(
        "the known checkpoint `{}` has no signature from the given keys",
        kept.display()
    )));

    // Bad arguments are usage errors; a record the log does not hold is a failure.
    for args in [vec!["prove", "1"], vec!["prove", "1", "--key", "not-a-key"]] {
        let out = hub.audit(&hub.admin, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = hub.audit(&hub.admin, &["prove", "100000", "--key", &key]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("record 100000 does not exist"));

    hub.stop();
}

/// The mode bits of `path` for group, others and its owner.
fn mode(path: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&fs::metadata(path).unwrap().permissions()) & 0o777
}

/// `cp -a FROM TO`.
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// An export to where one was made before replaces it only if it verifies and extends the
/// checkpoint kept beside it, under every key the hub's log was signed with; a log cut back
/// (a hub restored from a backup), or a checkpoint of another log, is refused with both old
/// files intact and the new export left aside.
#[test]
fn an_export_replaces_the_last_one_only_if_it_extends_its_kept_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(tmp.path());
    let out = tmp.path().join("audit.export");
    let kept = tmp.path().join("audit.export.checkpoint");
    let aside = tmp.path().join("audit.export.new");

    // The checkpoint key rotated first: the log holds checkpoints signed by either key.
    let old_key = hub.export(&tmp.path().join("before-rotation.export"))["verifier_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let rotated = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args([
            "keys",
            "rotate",
            "audit",
            "--identity",
            s(&hub.admin),
            "--hub",
            &hub.addr,
        ])
        .output()
        .unwrap();
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    hub.send("after the rotation");
    let first = hub.export(&out);
    assert_eq!(first["extends_kept"], false, "{first}");
    let first_size = first["size"].as_u64().unwrap();
    let new_key = first["verifier_key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, old_key);

    // The hub's data directory as a backup would hold it now.
    let backup = tmp.path().join("backup");
    let hub = hub.restart(tmp.path(), |data| copy_dir(data, &backup));

    // A later export to the same path extends the kept checkpoint: both are replaced, still
    // owner-only, and nothing is left aside.
    hub.send("hello again");
    let text = hub.admin(&["export", s(&out)]);
    assert!(
        text.contains(&format!(
            "it extends the checkpoint kept before in `{}`",
            kept.display()
        )),
        "{text}"
    );
    let second: Value = serde_json::from_str(&hub.admin(&["export", s(&out), "--json"])).unwrap();
    assert_eq!(second["extends_kept"], true, "{second}");
    let second_size = second["size"].as_u64().unwrap();
    assert!(second_size > first_size, "{second}");
    assert_eq!(fs::read_to_string(&kept).unwrap(), second["checkpoint"]);
    assert_eq!(second["bytes"], fs::metadata(&out).unwrap().len());
    assert!(!aside.exists());
    for file in [&out, &kept] {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    let held = fs::read(&out).unwrap();
    let held_checkpoint = fs::read_to_string(&kept).unwrap();
    let (key_args, kept_arg) = (["--key", &old_key, "--key", &new_key], s(&kept));
    passes(&out, &[&key_args[..], &["--known", kept_arg]].concat());

    // The hub restored from the backup: its log is cut back to what it was then, and grows
    // another way. Its export is refused (a log rolled back or forked, with the sizes), the
    // old export and checkpoint stay, and the new export is left aside, owner-only.
    let hub = hub.restart(tmp.path(), |data| {
        fs::remove_dir_all(data).unwrap();
        fs::rename(&backup, data).unwrap();
    });
    let refused = hub.audit(&hub.admin, &["export", s(&out)]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(refused.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: refused to replace `{}`: the new export (tree size ",
            out.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "does not extend the checkpoint kept in `{}` (tree size {second_size}): ",
            kept.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("was rolled back") || stderr.contains("was forked"),
        "{stderr}"
    );
    assert!(
        stderr.trim_end().ends_with(&format!(
            "`{}` and `{}` are unchanged, the new export is left in `{}`",
            out.display(),
            kept.display(),
            aside.display()
        )),
        "{stderr}"
    );
    assert_eq!(fs::read(&out).unwrap(), held);
    assert_eq!(fs::read_to_string(&kept).unwrap(), held_checkpoint);
    assert_eq!(mode(&aside), 0o600);
    // The same as JSON, for scripts.
    let refused = hub.audit(&hub.admin, &["export", s(&out), "--json"]);
    assert_eq!(refused.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["kind"] == "rolled_back" || v["kind"] == "forked", "{v}");
    assert_eq!(v["export"], s(&out), "{v}");
    assert_eq!(v["checkpoint_file"], s(&kept), "{v}");
    assert_eq!(v["new_export"], s(&aside), "{v}");
    assert_eq!(v["kept_size"], second_size, "{v}");
    assert_eq!(fs::read(&out).unwrap(), held);
    assert_eq!(fs::read_to_string(&kept).unwrap(), held_checkpoint);
    // What was refused, `verify --known` refuses as well.
    fails(&aside, &[&key_args[..], &["--known", kept_arg]].concat());

    // A checkpoint of another log (another hub's) kept there: refused alike.
    fs::create_dir_all(tmp.path().join("other")).unwrap();
    let other = write_log(&tmp.path().join("other"), &SEED, 0);
    let theirs = other.checkpoints.last().unwrap().as_str().to_owned();
    fs::write(&kept, &theirs).unwrap();
    let refused = hub.audit(&hub.admin, &["export", s(&out)]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "has no signature from the given keys: it was forged, or it is another log's; `{}` \
             and `{}` are unchanged",
            out.display(),
            kept.display()
        )),
        "{stderr}"
    );
    assert_eq!(fs::read(&out).unwrap(), held);
    assert_eq!(fs::read_to_string(&kept).unwrap(), theirs);

    // The checkpoint kept as a link (to a write-once volume, say): refused, not taken as no
    // checkpoint kept (which would skip the check); nothing changes.
    let elsewhere = tmp.path().join("elsewhere.checkpoint");
    fs::write(&elsewhere, &held_checkpoint).unwrap();
    fs::remove_file(&kept).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &kept).unwrap();
    let refused = hub.audit(&hub.admin, &["export", s(&out)]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a regular file"), "{stderr}");
    assert_eq!(fs::read(&out).unwrap(), held);
    assert!(
        fs::symlink_metadata(&kept)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_to_string(&elsewhere).unwrap(), held_checkpoint);
    hub.stop();
}

#[test]
fn agents_may_not_read_export_or_prove() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(tmp.path());
    let export = tmp.path().join("nope.export");
    let key = Ed25519Signer::from_seed(HUB_ORIGIN, &SEED)
        .unwrap()
        .verifier_key()
        .to_string();
    for args in [
        vec!["tail"],
        vec!["tail", "--from", "0"],
        vec!["export", s(&export)],
        vec!["prove", "0", "--key", &key],
    ] {
        let out = hub.audit(&hub.alice, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains("is denied"), "{args:?}: {stderr}");
    }
    assert!(!export.exists());
    assert!(!tmp.path().join("nope.export.checkpoint").exists());
    hub.stop();
}

// === helpers ===

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    for part in parts {
        ctx.update(part);
    }
    ctx.finish().as_ref().try_into().unwrap()
}

/// The offset of the records section in an export, and each record frame's offset in it.
fn record_frames(bytes: &[u8]) -> (usize, Vec<usize>) {
    let export = Export::read_bytes(bytes);
    let records_at = export.head.len() + 8;
    let mut offsets = Vec::new();
    let mut at = 0;
    for record in &export.records {
        offsets.push(at);
        at += 4 + record.len() + 8;
    }
    (records_at, offsets)
}

/// An export taken apart (docs/AUDIT.md §5–6), to be put back together with valid frames, as
/// someone rewriting it would.
struct Export {
    /// The magic line and the metadata, with its length.
    head: Vec<u8>,
    records: Vec<Vec<u8>>,
    /// Tree frames: type (`L` or `C`) and body.
    tree: Vec<(u8, Vec<u8>)>,
}

impl Export {
    fn read(path: &Path) -> Self {
        Self::read_bytes(&fs::read(path).unwrap())
    }

    fn read_bytes(bytes: &[u8]) -> Self {
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let magic = EXPORT_MAGIC.len();
        assert_eq!(&bytes[..magic], EXPORT_MAGIC.as_bytes());
        let head_end = magic + 4 + u32_at(magic);
        let mut at = head_end + 8;
        let records_end = at + u64_at(head_end);
        let mut records = Vec::new();
        while at < records_end {
            let len = u32_at(at);
            records.push(bytes[at + 4..at + 4 + len].to_vec());
            at += 4 + len + 8;
        }
        let tree_end = at + 8 + u64_at(at);
        at += 8;
        let mut tree = Vec::new();
        while at < tree_end {
            let len = u32_at(at + 1);
            tree.push((bytes[at], bytes[at + 5..at + 5 + len].to_vec()));
            at += 5 + len + 8;
        }
        assert_eq!(at, bytes.len());
        Self {
            head: bytes[..head_end].to_vec(),
            records,
            tree,
        }
    }

    /// The index in `tree` of the checkpoint of tree size `size` (after the size-th leaf).
    fn checkpoint_entry(&self, size: usize) -> usize {
        self.tree
            .iter()
            .enumerate()
            .filter(|(_, (kind, _))| *kind == b'C')
            .nth(size)
            .unwrap()
            .0
    }

    /// Writes the export with every frame's length and check value made right: a record
    /// frame is `u32(len) ‖ record ‖ SHA-256(0x00 ‖ record)[..8]`, a tree frame
    /// `type ‖ u32(len) ‖ body ‖ SHA-256(type ‖ u32(len) ‖ body)[..8]`.
    fn write(&self, path: &Path) {
        let mut records = Vec::new();
        for record in &self.records {
            records.extend_from_slice(&(record.len() as u32).to_be_bytes());
            records.extend_from_slice(record);
            records.extend_from_slice(&sha256(&[&[0x00], record])[..8]);
        }
        let mut tree = Vec::new();
        for (kind, body) in &self.tree {
            let start = tree.len();
            tree.push(*kind);
            tree.extend_from_slice(&(body.len() as u32).to_be_bytes());
            tree.extend_from_slice(body);
            let check = sha256(&[&tree[start..]]);
            tree.extend_from_slice(&check[..8]);
        }
        let mut out = self.head.clone();
        out.extend_from_slice(&(records.len() as u64).to_be_bytes());
        out.extend_from_slice(&records);
        out.extend_from_slice(&(tree.len() as u64).to_be_bytes());
        out.extend_from_slice(&tree);
        fs::write(path, out).unwrap();
    }
}
