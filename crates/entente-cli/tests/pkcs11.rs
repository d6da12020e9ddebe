//! `entente hub start` with its keys in a PKCS#11 token (SoftHSM2): the CA keys, the audit
//! checkpoint key and the key-encryption keys are made in the token and never written to the
//! data directory; later starts need the PIN, and a wrong one is a clear error.
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
    let admin = data.join("admin");
    let keys: serde_json::Value = serde_json::from_str(&ok(&[
        "keys",
        "status",
        "--identity",
        s(&admin),
        "--hub",
        &addr,
        "--json",
    ]))
    .unwrap();
    assert!(
        keys["audit_key"].as_str().unwrap().contains("/audit+"),
        "{keys:#}"
    );
    stop(child);

    // Later starts need the PIN, and the right one.
    let err = refused(hub(&data, &conf, None));
    assert!(err.contains("ENTENTE_PKCS11_PIN"), "{err}");
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
