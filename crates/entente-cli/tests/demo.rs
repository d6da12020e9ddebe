#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

#[test]
fn the_demo_holds_every_property() {
    let out = support::entente(&["demo"]);
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
    let out = support::entente(&["demo", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["failed"], 0);
    let checks: Vec<&serde_json::Value> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["checks"].as_array().unwrap())
        .collect();
    assert_eq!(checks.len() as u64, v["passed"].as_u64().unwrap());
    assert!(checks.iter().all(|c| c["held"] == true), "{v:#}");
    for property in [
        "tls13_only",
        "mutual_tls",
        "exchange",
        "no_plaintext",
        "denied",
        "forged_sender",
        "replay",
        "tamper",
        "token_reuse",
        "foreign_bundle",
        "revoked",
        "jit_request",
        "separation_of_duties",
        "jit_approved",
        "jit_access",
        "grant_expired",
        "held",
        "approver_view",
        "released",
        "throttled",
        "quarantined",
        "audit_verified",
        "audit_tamper_caught",
    ] {
        assert!(
            checks.iter().any(|c| c["property"] == property),
            "no `{property}` check in {v:#}"
        );
    }
}

#[test]
fn an_unknown_command_is_one_clear_error() {
    let out = support::entente(&["frobnicate"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}
