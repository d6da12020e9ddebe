#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::Command;

#[test]
fn the_demo_holds_every_property() {
    let out = Command::new(env!("CARGO_BIN_EXE_entente"))
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("properties held"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn the_demo_speaks_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["demo", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["failed"], 0);
    assert!(v["passed"].as_u64().unwrap() >= 13);
}

#[test]
fn an_unknown_command_is_one_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_entente"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}
