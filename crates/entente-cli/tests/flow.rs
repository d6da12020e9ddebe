//! The README's manual path, end to end with the real binary: start a hub, create join tokens
//! as the admin, enroll two agents, listen and send; a cross-segment agent is refused; a
//! revoked agent is cut off.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use support::{entente, ok, s, spawn_ready, start, stop};

#[test]
fn enroll_two_agents_and_exchange_a_sealed_message() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let admin = data.join("admin");
    let ca = data.join("ca.pem");

    let mut ids = Vec::new();
    for name in ["demo/alice", "demo/bob", "ops/eve"] {
        let token = ok(&[
            "token",
            "create",
            "--identity",
            s(&admin),
            "--hub",
            &addr,
            "--agent",
            name,
            "--ttl",
            "10m",
        ]);
        let token = token.trim();
        assert!(token.starts_with("ent_"), "{token}");
        assert_eq!(token.lines().count(), 1);
        let dir = tmp.path().join(name.replace('/', "-"));
        let said = ok(&[
            "enroll",
            "--hub",
            &addr,
            "--ca",
            s(&ca),
            "--token",
            token,
            "--out",
            s(&dir),
        ]);
        assert!(said.contains(name.split('/').nth(1).unwrap()), "{said}");
        // The token is single use.
        let again = entente(&[
            "enroll",
            "--hub",
            &addr,
            "--ca",
            s(&ca),
            "--token",
            token,
            "--out",
            s(&tmp.path().join("again")),
        ]);
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("already used"));
        ids.push(dir);
    }
    let (alice, bob, eve) = (&ids[0], &ids[1], &ids[2]);

    // Bob listens; once subscribed, Alice sends.
    let listener = spawn_ready(
        &[
            "listen",
            "--identity",
            s(bob),
            "--hub",
            &addr,
            "demo.greetings",
            "--count",
            "1",
        ],
        "listening",
    );
    let sent = ok(&[
        "send",
        "--identity",
        s(alice),
        "--hub",
        &addr,
        "demo.greetings",
        "hello bob",
    ]);
    assert!(sent.contains("sent"), "{sent}");
    let out = support::wait(listener, support::LIMIT);
    assert!(out.status.success());
    let heard = String::from_utf8(out.stdout).unwrap();
    assert!(heard.contains("hello bob"), "{heard}");
    assert!(heard.contains("agent/demo/alice"), "{heard}");

    // Eve, of another segment, may not listen there.
    let refused = entente(&[
        "listen",
        "--identity",
        s(eve),
        "--hub",
        &addr,
        "demo.greetings",
        "--count",
        "1",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.to_lowercase().contains("denied"), "{stderr}");

    // Revoked, Alice is cut off.
    let said = ok(&[
        "revoke",
        "--identity",
        s(&admin),
        "--hub",
        &addr,
        "spiffe://entente.local/agent/demo/alice",
    ]);
    assert!(said.contains("revoked"), "{said}");
    let after = entente(&[
        "send",
        "--identity",
        s(alice),
        "--hub",
        &addr,
        "demo.greetings",
        "still here?",
    ]);
    assert!(!after.status.success());

    // An agent cannot administer.
    let denied = entente(&[
        "token",
        "create",
        "--identity",
        s(bob),
        "--hub",
        &addr,
        "--agent",
        "demo/mallory",
    ]);
    assert!(!denied.status.success());
    stop(hub);
}
