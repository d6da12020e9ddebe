#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::{fs, os::unix::fs::PermissionsExt, process::Command};

use support::{start, stop};

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
