//! `entente hub start` with its keys in a PKCS#11 token (SoftHSM2): the CA keys, the audit
//! checkpoint key and the key-encryption keys are made in the token and never written to the
//! data directory; later starts need the PIN, and a wrong one is a clear error. Each kind of
//! key (CA, audit, data) may be placed in the token or the local store on its own.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use support::{LIMIT, enroll, ok, s, stop, wait};

const MODULE_PATHS: [&str; 3] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];
const TOKEN: &str = "entente-hub";
const PIN: &str = "hub-user-pin";

fn module() -> PathBuf {
    MODULE_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("SoftHSM2 is needed: `apt-get install softhsm2` (scripts/test does it)")
}

/// A SoftHSM2 configuration with one initialized token, in `dir`.
fn softhsm(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", TOKEN])
        .args(["--pin", PIN, "--so-pin", "hub-so-pin"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (package softhsm2)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    conf
}

/// `entente hub start` on `data` with the token's settings (`pin`: `None` leaves the PIN out).
fn hub(data: &Path, conf: &Path, pin: Option<&str>) -> Child {
    hub_with(data, conf, pin, &[])
}

/// [`hub`] with more environment variables.
fn hub_with(data: &Path, conf: &Path, pin: Option<&str>, env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_entente"));
    command
        .args([
            "hub",
            "start",
            "--json",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data)
        .env_remove("ENTENTE_KEYSTORE_KEY")
        .env_remove("ENTENTE_KEYSTORE_PASSPHRASE")
        .env("SOFTHSM2_CONF", conf)
        .env("ENTENTE_PKCS11_MODULE", module())
        .env("ENTENTE_PKCS11_TOKEN", TOKEN)
        .env_remove("ENTENTE_CA_KEYSTORE")
        .env_remove("ENTENTE_AUDIT_KEYSTORE")
        .env_remove("ENTENTE_DATA_KEYSTORE")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match pin {
        Some(pin) => command.env("ENTENTE_PKCS11_PIN", pin),
        None => command.env_remove("ENTENTE_PKCS11_PIN"),
    };
    command.spawn().unwrap()
}

fn listening(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    v["listening"].as_str().unwrap().to_owned()
}

/// What a start that fails says (with `--json`, on standard output).
fn refused(child: Child) -> String {
    let out = wait(child, LIMIT);
    assert!(!out.status.success());
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_hub_keeps_its_keys_in_a_pkcs11_token() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = softhsm(tmp.path());
    let data = tmp.path().join("hub");

    let mut child = hub(&data, &conf, Some(PIN));
    let addr = listening(&mut child);
    // No key file in the data directory: the keys are the token's.
    assert!(!data.join("keys").exists());
    assert!(!data.join("keystore.key").exists());
    let config = std::fs::read_to_string(data.join("config.toml")).unwrap();
    assert!(
        config.contains("[keystore]") && config.contains("backend = \"pkcs11\""),
        "{config}"
    );
    // The hub works: enrollment (a certificate signed in the token), the audit log (its
    // checkpoint key there too).
    enroll(&data, &addr, "demo/alice", tmp.path());
    let keys = keys_status(&data, &addr);
    assert!(
        keys["audit_key"].as_str().unwrap().contains("/audit+"),
        "{keys:#}"
    );
    stop(child);

    // Later starts need the PIN, and the right one; an empty one is never tried (a failed
    // login uses up one of the token's tries).
    let err = refused(hub(&data, &conf, None));
    assert!(err.contains("ENTENTE_PKCS11_PIN"), "{err}");
    let err = refused(hub(&data, &conf, Some("")));
    assert!(err.contains("ENTENTE_PKCS11_PIN is set but empty"), "{err}");
    let err = refused(hub(&data, &conf, Some("not-the-pin")));
    assert!(err.contains("wrong pin"), "{err}");
    assert!(
        !err.contains("not-the-pin"),
        "the PIN is never shown: {err}"
    );
    let mut child = hub(&data, &conf, Some(PIN));
    let addr = listening(&mut child);
    enroll(&data, &addr, "demo/bob", tmp.path());
    stop(child);
}

/// The names of the keys in the local store `dir`, sorted.
fn local_keys(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|name| name.strip_suffix(".key").map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// `entente keys status --json` as the data directory's admin.
fn keys_status(data: &Path, addr: &str) -> serde_json::Value {
    let admin = data.join("admin");
    serde_json::from_str(&ok(&[
        "keys",
        "status",
        "--identity",
        s(&admin),
        "--hub",
        addr,
        "--json",
    ]))
    .unwrap()
}

fn key_stores(data: &Path, addr: &str) -> serde_json::Value {
    keys_status(data, addr)["key_stores"].clone()
}

#[test]
fn each_kind_of_key_lives_in_the_store_chosen_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = softhsm(tmp.path());

    // The CA keys in the token, the audit and data keys in the local store.
    let data = tmp.path().join("ca-in-token");
    let local = [
        ("ENTENTE_AUDIT_KEYSTORE", "local"),
        ("ENTENTE_DATA_KEYSTORE", "local"),
    ];
    let mut child = hub_with(&data, &conf, Some(PIN), &local);
    let addr = listening(&mut child);
    assert_eq!(
        local_keys(&data.join("keys").join("keys")),
        ["audit-checkpoint", "audit-kek", "data-kek"]
    );
    let expected = serde_json::json!({"ca": "pkcs11", "audit": "local", "data": "local"});
    assert_eq!(key_stores(&data, &addr), expected);
    let config = std::fs::read_to_string(data.join("config.toml")).unwrap();
    assert!(
        config.contains("[keystore]")
            && config.contains("[audit_keystore]\nbackend = \"local\"")
            && config.contains("[data_keystore]\nbackend = \"local\""),
        "{config}"
    );
    enroll(&data, &addr, "demo/alice", tmp.path());
    stop(child);
    // Later starts read the placement from config.toml.
    let mut child = hub(&data, &conf, Some(PIN));
    let addr = listening(&mut child);
    assert_eq!(key_stores(&data, &addr), expected);
    stop(child);

    // The reverse: the CA keys local, the audit and data keys in the token.
    let data = tmp.path().join("ca-local");
    let mut child = hub_with(&data, &conf, Some(PIN), &[("ENTENTE_CA_KEYSTORE", "local")]);
    let addr = listening(&mut child);
    assert_eq!(
        local_keys(&data.join("keys").join("keys")),
        ["ca-intermediate", "ca-root"]
    );
    let expected = serde_json::json!({"ca": "local", "audit": "pkcs11", "data": "pkcs11"});
    assert_eq!(key_stores(&data, &addr), expected);
    enroll(&data, &addr, "demo/bob", tmp.path());
    stop(child);
    // The token's keys still need the PIN.
    let err = refused(hub(&data, &conf, None));
    assert!(err.contains("ENTENTE_PKCS11_PIN"), "{err}");
    let mut child = hub(&data, &conf, Some(PIN));
    let addr = listening(&mut child);
    assert_eq!(key_stores(&data, &addr), expected);
    stop(child);

    // A choice that is neither is refused.
    let err = refused(hub_with(
        &tmp.path().join("bad"),
        &conf,
        Some(PIN),
        &[("ENTENTE_AUDIT_KEYSTORE", "tpm")],
    ));
    assert!(err.contains("ENTENTE_AUDIT_KEYSTORE"), "{err}");
}

/// A throwaway hub (the demo's) makes no key in the token the environment names: an
/// operator's token stays as it was, and a real hub's first start on it works after.
#[test]
fn the_demo_leaves_the_token_of_the_environment_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = softhsm(tmp.path());
    let child = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["demo", "--json"])
        .env("SOFTHSM2_CONF", &conf)
        .env("ENTENTE_PKCS11_MODULE", module())
        .env("ENTENTE_PKCS11_TOKEN", TOKEN)
        .env("ENTENTE_PKCS11_PIN", PIN)
        .env("ENTENTE_CA_KEYSTORE", "pkcs11")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait(child, LIMIT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let data = tmp.path().join("hub");
    let mut child = hub(&data, &conf, Some(PIN));
    let addr = listening(&mut child);
    enroll(&data, &addr, "demo/alice", tmp.path());
    stop(child);
}
