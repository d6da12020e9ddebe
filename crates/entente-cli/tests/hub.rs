#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::{fs, os::unix::fs::PermissionsExt, process::Command};

use support::{ok, s, start, start_with, stop, stop_with_output};

#[test]
fn the_first_start_initializes_and_later_starts_reuse() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let (child, first) = start(&dir);
    assert!(
        first["listening"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(first["trust_domain"], "entente.local");
    let created = first["created"].as_array().unwrap();
    assert!(created.len() >= 6, "{created:?}");
    for name in [
        "config.toml",
        "keystore.key",
        "ca.pem",
        "store.redb",
        "admin/chain.pem",
        "keys",
        "policies",
        "policies/default.cedar",
    ] {
        let path = dir.join(name);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o077;
        assert_eq!(mode, 0, "{name} is readable by others");
    }
    let config = fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(config.contains("trust_domain = \"entente.local\""));
    assert!(!config.contains("[[allow]]"), "{config}");
    assert_eq!(first["policies"]["origin"], "files", "{first}");
    stop(child);

    let (child, second) = start(&dir);
    assert!(second["created"].as_array().unwrap().is_empty(), "{second}");
    assert_eq!(second["policies"]["origin"], "stored", "{second}");
    stop(child);
}

#[test]
fn another_trust_domain_for_an_existing_directory_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let (child, _) = start(&dir);
    stop(child);
    let out = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args([
            "hub",
            "start",
            "--listen",
            "127.0.0.1:0",
            "--trust-domain",
            "other.org",
            "--data",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("other.org"), "{stderr}");
}

/// Every file under `dir` with its bytes, by path.
fn snapshot(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.insert(path.clone(), fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// A data directory that lost its `config.toml` is not made anew over the hub it holds (a new
/// CA, admin identity and policies written over the old ones): the start is refused in one
/// line that says so, and nothing in it changes.
#[test]
fn a_hub_without_its_config_is_refused_not_made_anew() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let (child, _) = start(&dir);
    stop(child);
    fs::remove_file(dir.join("config.toml")).unwrap();
    let before = snapshot(&dir);
    assert!(before.contains_key(&dir.join("ca").join("root.pem")));

    let out = start_without_keys(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: `{}` holds a hub's files (store.redb, ca, ca.pem, admin, keys, keystore.key, \
             audit) but no `config.toml`: restore `{}` from a backup",
            dir.display(),
            dir.join("config.toml").display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.trim_end().ends_with("nothing was changed"),
        "{stderr}"
    );
    assert!(!dir.join("config.toml").exists());
    assert!(snapshot(&dir) == before, "the data directory changed");

    // With its keys elsewhere (in a PKCS#11 token the environment does not name now, here
    // moved away): a new local store and CA would be made over the old CA's files.
    fs::rename(dir.join("keys"), tmp.path().join("keys")).unwrap();
    fs::rename(dir.join("keystore.key"), tmp.path().join("keystore.key")).unwrap();
    let before = snapshot(&dir);
    let out = start_without_keys(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds a hub's files (store.redb, ca, ca.pem, admin, audit) but no"),
        "{stderr}"
    );
    assert!(snapshot(&dir) == before, "the data directory changed");
    assert!(!dir.join("keys").exists());

    // Any one of them is enough.
    let lone = tmp.path().join("lone");
    fs::create_dir(&lone).unwrap();
    fs::set_permissions(&lone, fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(lone.join("admin")).unwrap();
    let out = start_without_keys(&lone);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("holds a hub's files (admin)"), "{stderr}");
    assert!(!lone.join("config.toml").exists());
    assert!(!lone.join("ca").exists());
}

#[test]
fn a_missing_keystore_key_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let (child, _) = start(&dir);
    stop(child);
    fs::remove_file(dir.join("keystore.key")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["hub", "start", "--listen", "127.0.0.1:0", "--data"])
        .arg(&dir)
        .env_remove("ENTENTE_KEYSTORE_KEY")
        .env_remove("ENTENTE_KEYSTORE_PASSPHRASE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ENTENTE_KEYSTORE_KEY"), "{stderr}");
}

/// A `keystore.key` without its key store (a first start stopped between the two, or a key
/// store removed) is refused: a store made now would be under a key that is never kept.
#[test]
fn a_keystore_key_without_its_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let key = dir.join("keystore.key");
    fs::write(&key, "ab".repeat(32)).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let out = start_without_keys(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("keystore.key"), "{stderr}");
    assert!(stderr.contains("restore"), "{stderr}");
    assert!(!dir.join("keys").exists());
    assert_eq!(fs::read_to_string(&key).unwrap(), "ab".repeat(32));
}

#[test]
fn the_hub_logs_one_json_object_per_line_and_no_secret() {
    use std::io::{Read as _, Write as _};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let (child, first) = start_with(&dir, "127.0.0.1:0", &["--log-level", "debug"]);
    let addr = first["listening"].as_str().unwrap().to_owned();

    // Not TLS at all: refused at the handshake, and logged (at debug level).
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let _ = tcp.read_to_end(&mut Vec::new());
    // A join token and a policy load: the token is a secret, the load an event.
    let admin = dir.join("admin");
    let at = ["--identity", s(&admin), "--hub", &addr];
    let token = ok(&[&["token", "create", "--agent", "demo/alice"][..], &at[..]].concat());
    let default = dir.join("policies/default.cedar");
    ok(&[&["policy", "load", s(&default)][..], &at[..]].concat());

    let out = stop_with_output(child);
    let logs = String::from_utf8(out.stderr).unwrap();
    let events: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |message: &str| {
        events
            .iter()
            .find(|e| e["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no `{message}` in {logs}"))
    };
    let serving = find("hub serving");
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["fields"]["listen"], addr.as_str());
    assert_eq!(serving["target"], "entente_hub::server");
    let refused = find("TLS handshake refused");
    assert_eq!(refused["level"], "DEBUG");
    assert!(refused["fields"]["error"].as_str().is_some(), "{refused}");
    let loaded = find("policies loaded");
    assert!(
        loaded["fields"]["by"]
            .as_str()
            .is_some_and(|by| by.starts_with("spiffe://entente.local/")),
        "{loaded}"
    );
    for e in &events {
        assert!(e["timestamp"].is_string() && e["level"].is_string(), "{e}");
    }
    // The key store's key kept beside the store is warned about, at every start.
    assert!(
        events.iter().any(|e| e["level"] == "WARN"
            && e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("`keystore.key`"))),
        "{logs}"
    );
    // No secret: the token, the key store's key.
    assert!(!logs.contains(token.trim()), "{logs}");
    let key = fs::read_to_string(dir.join("keystore.key")).unwrap();
    assert!(!logs.contains(key.trim()), "{logs}");
}

/// A running hub goes on when whoever reads what it prints is gone (a supervisor that read
/// what it wanted, or never reads): its announcements are not what it is for.
#[test]
fn a_hub_whose_output_is_closed_goes_on_serving() {
    use std::io::BufRead as _;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let mut child = support::hub_command(&dir, "127.0.0.1:0", &["--log-format", "json"])
        .spawn()
        .unwrap();
    // The reader is gone before the hub says anything: every line goes into a closed pipe.
    drop(child.stdout.take());
    // Where it listens, from its log (standard error, still read).
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let addr = loop {
        let mut line = String::new();
        if log.read_line(&mut line).unwrap() == 0 {
            panic!("the hub exited without serving: {seen}");
        }
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if event["fields"]["message"] == "hub serving" {
            break event["fields"]["listen"].as_str().unwrap().to_owned();
        }
        seen.push_str(&line);
    };
    child.stderr = Some(log.into_inner());
    // It answers a request after its announcements went nowhere, and goes on running.
    let token = ok(&[
        "token",
        "create",
        "--identity",
        s(&dir.join("admin")),
        "--hub",
        &addr,
        "--agent",
        "demo/alice",
    ]);
    assert!(token.trim().starts_with("ent_"), "{token}");
    assert!(child.try_wait().unwrap().is_none(), "the hub exited");
    // It stops when told, with success.
    stop_with_output(child);
}

/// A failure nobody reads is still a failure: with `--json` the error goes to standard
/// output, and that pipe closed does not make the command exit with success.
#[test]
fn a_failure_into_a_closed_pipe_is_still_a_failure() {
    use std::process::Stdio;

    let tmp = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let failing = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["--json", "listen", "--identity"])
        .arg(tmp.path().join("nobody"))
        .args(["--hub", "127.0.0.1:1", "demo.greetings"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = support::wait(failing, support::LIMIT);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A data directory others may write to is refused, new or initialized: they could replace
/// what the hub reads (its configuration, policies, CA certificates).
#[test]
fn a_data_directory_others_may_write_to_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let out = start_without_keys(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has mode 0777"), "{stderr}");
    assert!(!dir.join("keys").exists(), "nothing made in it");

    // Initialized while private, then opened up: refused at the next start.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let (hub, _) = support::start(&dir);
    support::stop(hub);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).unwrap();
    let out = start_without_keys(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has mode 0770"), "{stderr}");

    // So is a policy file others may write (it would be the running set at the next load).
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let policy = dir.join("policies").join("default.cedar");
    fs::set_permissions(&policy, fs::Permissions::from_mode(0o666)).unwrap();
    let out = start_without_keys(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("group or others may write it"), "{stderr}");

    // And what another user owns, a policy file linked there or the directory itself: its
    // owner could replace what is in it. Only root can give a file away to make the case.
    fs::set_permissions(&policy, fs::Permissions::from_mode(0o644)).unwrap();
    let theirs = tmp.path().join("theirs.cedar");
    fs::write(&theirs, "").unwrap();
    const SOMEONE: u32 = 54_321;
    if std::os::unix::fs::chown(&theirs, Some(SOMEONE), None).is_err() {
        eprintln!("not run as root: ownership checks not exercised");
        return;
    }
    let linked = dir.join("policies").join("theirs.cedar");
    std::os::unix::fs::symlink(&theirs, &linked).unwrap();
    for owned in [&linked, &dir] {
        if owned == &dir {
            fs::remove_file(&linked).unwrap();
            std::os::unix::fs::chown(&dir, Some(SOMEONE), None).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = start_without_keys(&dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("is owned by user 54321"), "{stderr}");
    }
}

/// `entente hub start --data DIR` without a key store key or passphrase in the environment,
/// to completion (at most [`support::LIMIT`]).
fn start_without_keys(dir: &std::path::Path) -> std::process::Output {
    let child = support::hub_command(dir, "127.0.0.1:0", &[])
        .spawn()
        .unwrap();
    support::wait(child, support::LIMIT)
}
