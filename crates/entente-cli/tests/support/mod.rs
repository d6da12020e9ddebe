//! Running the real `entente` binary.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Output, Stdio},
};

/// Starts `entente hub start --json` on `dir` and returns it with its first line of output.
pub fn start(dir: &std::path::Path) -> (Child, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args([
            "hub",
            "start",
            "--json",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir)
        .env_remove("ENTENTE_KEYSTORE_KEY")
        .env_remove("ENTENTE_KEYSTORE_PASSPHRASE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (child, v)
}

pub fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}

/// Runs `entente ARGS` to completion.
pub fn entente(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(args)
        .env_remove("ENTENTE_KEYSTORE_KEY")
        .env_remove("ENTENTE_KEYSTORE_PASSPHRASE")
        .output()
        .unwrap()
}

/// Runs `entente ARGS`, which must succeed; returns its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = entente(args);
    assert!(
        out.status.success(),
        "entente {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A path as a `&str`.
pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}
