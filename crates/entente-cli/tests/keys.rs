//! `entente keys status` and `entente keys rotate data|audit` against a real hub.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use support::{enroll, entente, ok, s, start, stop};

fn keys(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).unwrap()
}

#[test]
fn administrators_see_and_rotate_the_hubs_keys_and_agents_may_not() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let admin = data.join("admin");
    let at = ["--identity", s(&admin), "--hub", &addr, "--json"];

    let before = keys(&[&["keys", "status"][..], &at[..]].concat());
    let data_keys = before["data_keys"].as_array().unwrap();
    assert_eq!(data_keys.len(), 1, "{before:#}");
    assert_eq!(data_keys[0]["current"], true);
    let old_audit = before["audit_key"].as_str().unwrap().to_owned();
    assert!(old_audit.contains("/audit+"), "{before:#}");

    let rotated = keys(&[&["keys", "rotate", "data"][..], &at[..]].concat());
    assert_eq!(rotated["rotated"], "data v2", "{rotated:#}");
    let current: Vec<_> = rotated["data_keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["current"] == true)
        .map(|k| k["version"].as_u64().unwrap())
        .collect();
    assert_eq!(current, [2]);

    let rotated = keys(&[&["keys", "rotate", "audit"][..], &at[..]].concat());
    let new_audit = rotated["audit_key"].as_str().unwrap();
    assert_ne!(new_audit, old_audit);
    assert_eq!(rotated["rotated"], new_audit);
    assert_eq!(
        rotated["audit_trusted"][0],
        old_audit.as_str(),
        "{rotated:#}"
    );

    // The text form names them too.
    let text = ok(&["keys", "status", "--identity", s(&admin), "--hub", &addr]);
    assert!(
        text.contains("(encrypts now)") && text.contains("still trusted"),
        "{text}"
    );

    // An agent is no administrator.
    let eve = enroll(&data, &addr, "demo/eve", tmp.path());
    let refused = entente(&[
        "keys",
        "rotate",
        "data",
        "--identity",
        s(&eve),
        "--hub",
        &addr,
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("denied"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    stop(hub);
}
