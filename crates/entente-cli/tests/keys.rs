//! `entente keys status` and `entente keys rotate data|audit|intermediate` against a real hub.
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

    // The data keys' wrapping key rotates: the data keys stay, wrapped anew, and a new one,
    // which the old wrapping key never wrapped, seals from now on.
    assert_eq!(rotated["data_kek"], "data-kek", "{rotated:#}");
    let rewrapped = keys(&[&["keys", "rotate", "data-kek"][..], &at[..]].concat());
    let kek = rewrapped["data_kek"].as_str().unwrap();
    assert!(kek.starts_with("data-kek-"), "{rewrapped:#}");
    assert_eq!(rewrapped["rotated"], format!("data-kek {kek}, data v3"));
    let versions: Vec<_> = rewrapped["data_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["version"].as_u64().unwrap(), k["current"] == true))
        .collect();
    assert_eq!(
        versions,
        [(1, false), (2, false), (3, true)],
        "{rewrapped:#}"
    );
    assert!(!data.join("keys/keys/data-kek.key").exists());
    assert!(data.join(format!("keys/keys/{kek}.key")).exists());

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

#[test]
fn an_intermediate_rollover_is_staged_on_request_and_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let admin = data.join("admin");
    let at = ["--identity", s(&admin), "--hub", &addr, "--json"];

    let before = keys(&[&["keys", "status"][..], &at[..]].concat());
    let intermediates = before["intermediates"].as_array().unwrap();
    assert_eq!(intermediates.len(), 1, "{before:#}");
    assert_eq!(intermediates[0]["role"], "active");
    assert_eq!(intermediates[0]["key"], "ca-intermediate");
    let first = intermediates[0]["signer"].as_str().unwrap().to_owned();
    assert_eq!(before["rollover_next"], "stage", "{before:#}");

    let staged = keys(&[&["keys", "rotate", "intermediate"][..], &at[..]].concat());
    assert!(
        staged["rotated"]
            .as_str()
            .unwrap()
            .starts_with("staged intermediate"),
        "{staged:#}"
    );
    let roles: Vec<_> = staged["intermediates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["role"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(roles, ["active", "staged"]);
    assert_eq!(staged["intermediates"][0]["signer"], first.as_str());
    let new_key = staged["intermediates"][1]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(new_key.starts_with("ca-intermediate-"), "{staged:#}");
    assert_eq!(staged["rollover_next"], "activate");

    // A second rollover can't begin before this one ends.
    let refused = entente(&[
        "keys",
        "rotate",
        "intermediate",
        "--identity",
        s(&admin),
        "--hub",
        &addr,
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in progress"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The staged intermediate is kept: a restarted hub still trusts it and new agents learn
    // it at enrollment.
    stop(hub);
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let at = ["--identity", s(&admin), "--hub", &addr, "--json"];
    let after = keys(&[&["keys", "status"][..], &at[..]].concat());
    assert_eq!(after["intermediates"], staged["intermediates"], "{after:#}");
    let agent = enroll(&data, &addr, "demo/eve", tmp.path());
    let trust = std::fs::read_to_string(agent.join("ca.pem")).unwrap();
    assert_eq!(trust.matches("BEGIN CERTIFICATE").count(), 3, "{trust}");

    let text = ok(&["keys", "status", "--identity", s(&admin), "--hub", &addr]);
    assert!(
        text.contains("staged") && text.contains("next rollover step: activate"),
        "{text}"
    );
    stop(hub);
}

/// What `entente hub start` says when a started and stopped data directory's config.toml
/// gets `extra` appended: it must refuse to start.
fn refused_with_config(extra: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (hub, _) = start(&data);
    stop(hub);
    let config = data.join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    let out = entente(&["hub", "start", "--data", s(&data)]);
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_overlap_shorter_than_the_certificate_lifetime_stops_the_hub_at_start() {
    let stderr = refused_with_config("\n[ca_rollover]\noverlap = \"30m\"\n");
    assert!(stderr.contains("overlap"), "{stderr}");
}

#[test]
fn an_unknown_key_store_backend_stops_the_hub_at_start() {
    let stderr = refused_with_config("\n[audit_keystore]\nbackend = \"tpm\"\n");
    assert!(
        stderr.contains("[audit_keystore] backend") && stderr.contains("tpm"),
        "{stderr}"
    );
}
