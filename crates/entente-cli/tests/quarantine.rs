//! `entente quarantine list|impose|release` against a real hub (docs/ANOMALY.md).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use support::{enroll, entente, ok, s, start, stop};

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).unwrap()
}

fn stderr(args: &[&str]) -> String {
    let out = entente(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_administrator_quarantines_and_releases_an_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let admin = data.join("admin");
    let at = ["--identity", s(&admin), "--hub", &addr];
    let eve = enroll(&data, &addr, "demo/eve", tmp.path());
    let eve_at = ["--identity", s(&eve), "--hub", &addr];

    let listed = json(&[&["quarantine", "list", "--json"][..], &at[..]].concat());
    assert_eq!(listed["quarantined"], serde_json::json!([]), "{listed:#}");
    // A reason is required; an agent is no administrator.
    let said = stderr(&[&["quarantine", "impose", "demo/eve"][..], &at[..]].concat());
    assert!(said.contains("--reason"), "{said}");
    let said = stderr(&[&["quarantine", "list"][..], &eve_at[..]].concat());
    assert!(said.contains("denied"), "{said}");

    let imposed = json(
        &[
            &[
                "quarantine",
                "impose",
                "demo/eve",
                "--reason",
                "odd traffic",
                "--json",
            ][..],
            &at[..],
        ]
        .concat(),
    );
    let entry = &imposed["quarantined"][0];
    assert!(
        entry["principal"]
            .as_str()
            .unwrap()
            .ends_with("/agent/demo/eve")
    );
    assert_eq!(entry["evidence"], "odd traffic");
    assert!(entry["by"].as_str().unwrap().contains("/human/"), "{entry}");
    // Eve can't connect now, and is told why.
    let said = stderr(&[&["quarantine", "list"][..], &eve_at[..]].concat());
    assert!(said.contains("credential is suspended"), "{said}");
    // The text form.
    let text = ok(&[&["quarantine", "list"][..], &at[..]].concat());
    assert!(
        text.contains("demo/eve") && text.contains("odd traffic"),
        "{text}"
    );

    let released = json(
        &[
            &[
                "quarantine",
                "release",
                "demo/eve",
                "--reason",
                "checked",
                "--json",
            ][..],
            &at[..],
        ]
        .concat(),
    );
    assert_eq!(
        released["quarantined"],
        serde_json::json!([]),
        "{released:#}"
    );
    assert!(
        released["released"]["principal"]
            .as_str()
            .unwrap()
            .ends_with("/agent/demo/eve")
    );
    // Connecting works again (and listing is still an administrator's act).
    let said = stderr(&[&["quarantine", "list"][..], &eve_at[..]].concat());
    assert!(
        said.contains("denied") && !said.contains("suspended"),
        "{said}"
    );
    stop(hub);
}
