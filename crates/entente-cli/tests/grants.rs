//! `entente grant`, `grants`, `request-grant`, `approvals`, `approve`, `reject`, `held`,
//! `send --purpose` and `token create --human` with the real binary against `entente hub
//! start` and its `default.cedar`: the README's just-in-time walkthrough, each command with a
//! good and a bad input, a grant ending a live `listen`, and a payment held until approved.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use support::{entente, s, spawn_ready, start, stop};

/// Runs `entente ARGS --identity ID --hub ADDR`.
fn as_(id: &Path, addr: &str, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--identity", s(id), "--hub", addr]);
    entente(&all)
}

/// As [`as_`], which must succeed; its standard output.
fn ok_as(id: &Path, addr: &str, args: &[&str]) -> String {
    let out = as_(id, addr, args);
    assert!(
        out.status.success(),
        "entente {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// As [`as_`], which must fail with one line on standard error containing `says`.
fn fails_as(id: &Path, addr: &str, args: &[&str], says: &str) {
    let out = as_(id, addr, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "entente {args:?} succeeded");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(says), "{says}: {stderr}");
}

/// Enrolls `--agent SEGMENT/NAME` or `--human NAME` (per `kind`) into `tmp/DIR`.
fn enroll(tmp: &Path, data: &Path, addr: &str, kind: &str, name: &str) -> PathBuf {
    let (dir, said) = support::enroll_as(data, addr, kind, name, tmp);
    assert!(said.contains("enrolled"), "{said}");
    dir
}

#[test]
fn just_in_time_from_request_to_approval_and_direct_grants_that_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let admin = data.join("admin");
    let eve = enroll(tmp.path(), &data, &addr, "--agent", "ops/eve");
    let alice = enroll(tmp.path(), &data, &addr, "--agent", "demo/alice");
    let dan = enroll(tmp.path(), &data, &addr, "--agent", "ops/dan");

    // request-grant: eve asks for `demo-read` (default.cedar: one approval, at most 1h).
    let said = ok_as(
        &eve,
        &addr,
        &[
            "request-grant",
            "demo-read",
            "--for",
            "15m",
            "--reason",
            "INC-42: check the orders",
        ],
    );
    assert!(
        said.starts_with("requested `demo-read` for 15m as r-1"),
        "{said}"
    );
    assert!(said.contains("entente approve r-1"), "{said}");
    fails_as(
        &eve,
        &addr,
        &["request-grant", "demo-read", "--for", "2h", "--reason", "x"],
        "exceeds its maximum of 1h",
    );
    fails_as(
        &eve,
        &addr,
        &[
            "request-grant",
            "demo-read",
            "--for",
            "soon",
            "--reason",
            "x",
        ],
        "invalid duration `soon`",
    );

    // approvals: the admin sees it; eve has nothing to decide (her own request is not hers to).
    let pending = ok_as(&admin, &addr, &["approvals"]);
    assert!(
        pending.contains("r-1  pending 0/1  `demo-read` for 15m"),
        "{pending}"
    );
    assert!(pending.contains("agent/ops/eve"), "{pending}");
    assert!(pending.contains("INC-42: check the orders"), "{pending}");
    let v: serde_json::Value =
        serde_json::from_str(&ok_as(&admin, &addr, &["approvals", "--json"])).unwrap();
    assert_eq!(v["requests"][0]["id"], "r-1");
    assert_eq!(v["requests"][0]["required"], 1);
    assert!(ok_as(&eve, &addr, &["approvals"]).contains("no pending requests"));
    fails_as(
        &tmp.path().join("nobody"),
        &addr,
        &["approvals"],
        "loading the identity",
    );

    // approve: not by eve herself (separation of duties); by the admin, with a signed
    // statement.
    fails_as(
        &eve,
        &addr,
        &["approve", "r-1"],
        "cannot approve its own request",
    );
    fails_as(&admin, &addr, &["approve", "1"], "neither a request ID");
    let said = ok_as(&admin, &addr, &["approve", "r-1"]);
    assert!(
        said.starts_with("approved r-1: `spiffe://entente.local/agent/ops/eve` holds `demo-read`"),
        "{said}"
    );
    fails_as(&admin, &addr, &["approve", "r-1"], "already granted");

    // grants: the admin sees eve's grant; eve her own; --json for scripts.
    let listed = ok_as(&admin, &addr, &["grants"]);
    assert!(listed.contains("active grants (1):"), "{listed}");
    assert!(listed.contains("g-1  demo-read"), "{listed}");
    assert!(
        listed.contains("approved by spiffe://entente.local/human/admin (r-1)"),
        "{listed}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok_as(&eve, &addr, &["grants", "--json"])).unwrap();
    assert_eq!(v["grants"][0]["name"], "demo-read");
    assert_eq!(v["requests"][0]["state"], "granted");
    fails_as(
        &admin,
        &addr,
        &["grants", "--principal", "eve"],
        "not a principal",
    );

    // reject: a second request, rejected; rejecting again is refused.
    ok_as(
        &eve,
        &addr,
        &[
            "request-grant",
            "demo-read",
            "--for",
            "5m",
            "--reason",
            "more",
        ],
    );
    assert_eq!(
        ok_as(&admin, &addr, &["reject", "r-2"]).trim(),
        "rejected r-2: the request is closed"
    );
    fails_as(&admin, &addr, &["reject", "r-2"], "already rejected");

    // grant: directly to dan, for a short while (time for two commands to start on a slow
    // machine); it ends his live `listen` with nobody acting.
    fails_as(
        &admin,
        &addr,
        &["grant", "ops/eve", "root", "--for", "1m", "--reason", "x"],
        "unknown grant `root`",
    );
    fails_as(
        &eve,
        &addr,
        &[
            "grant",
            "demo/alice",
            "demo-read",
            "--for",
            "1m",
            "--reason",
            "x",
        ],
        "is denied",
    );
    let said = ok_as(
        &admin,
        &addr,
        &[
            "grant",
            "ops/dan",
            "demo-read",
            "--for",
            "20s",
            "--reason",
            "INC-43",
        ],
    );
    assert!(
        said.starts_with("granted `demo-read` to `spiffe://entente.local/agent/ops/dan` for 20s"),
        "{said}"
    );
    let listener = spawn_ready(
        &["listen", "--identity", s(&dan), "--hub", &addr, "demo.>"],
        "listening",
    );
    ok_as(
        &alice,
        &addr,
        &["send", "demo.incidents", "order 1043 is held"],
    );
    let out = support::wait(listener, support::LIMIT);
    assert!(!out.status.success());
    let heard = String::from_utf8_lossy(&out.stdout);
    assert!(heard.contains("order 1043 is held"), "{heard}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("(DENIED)"), "{stderr}");
    assert!(stderr.contains("no longer allowed"), "{stderr}");

    // revoke-grant: a grant ended early, by the admin; eve may not.
    let said = ok_as(
        &admin,
        &addr,
        &[
            "grant",
            "ops/eve",
            "demo-read",
            "--for",
            "1h",
            "--reason",
            "INC-44",
        ],
    );
    let id = said.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(id.starts_with("g-"), "{said}");
    fails_as(
        &eve,
        &addr,
        &["revoke-grant", &id, "--reason", "mine"],
        "is denied",
    );
    let said = ok_as(
        &admin,
        &addr,
        &["revoke-grant", &id, "--reason", "INC-44 closed"],
    );
    assert!(said.starts_with(&format!("ended {id}: ")), "{said}");
    fails_as(
        &admin,
        &addr,
        &["revoke-grant", &id, "--reason", "again"],
        "unknown grant",
    );
    stop(hub);
}

#[test]
fn humans_enroll_with_their_own_token_and_act_with_their_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let admin = data.join("admin");

    let v: serde_json::Value = serde_json::from_str(&ok_as(
        &admin,
        &addr,
        &["token", "create", "--human", "ann", "--json"],
    ))
    .unwrap();
    assert_eq!(v["human"], "spiffe://entente.local/human/ann");
    fails_as(
        &admin,
        &addr,
        &["token", "create", "--human", "Ann Smith"],
        "not a human name",
    );
    let both = as_(
        &admin,
        &addr,
        &["token", "create", "--human", "ann", "--agent", "ops/eve"],
    );
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));

    let ann = enroll(tmp.path(), &data, &addr, "--human", "ann");
    // Ann is a principal like any: she asks for a grant, the admin approves it; the default
    // policies let only the admin grant, so her own grant is denied.
    let said = ok_as(
        &ann,
        &addr,
        &[
            "request-grant",
            "demo-read",
            "--for",
            "1m",
            "--reason",
            "audit",
        ],
    );
    assert!(said.contains("as r-1"), "{said}");
    assert!(ok_as(&admin, &addr, &["approve", "r-1"]).contains("human/ann"));
    assert!(ok_as(&ann, &addr, &["grants"]).contains("g-1  demo-read"));
    fails_as(
        &ann,
        &addr,
        &[
            "grant",
            "human/admin",
            "demo-read",
            "--for",
            "1m",
            "--reason",
            "x",
        ],
        "is denied",
    );
    let check = as_(
        &admin,
        &addr,
        &[
            "policy",
            "check",
            "--principal",
            "human/admin",
            "--action",
            "approve",
            "--resource",
            "human:ann",
        ],
    );
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    stop(hub);
}

#[test]
fn a_payment_is_held_until_the_administrator_approves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let admin = data.join("admin");
    let alice = enroll(tmp.path(), &data, &addr, "--agent", "demo/alice");
    let bob = enroll(tmp.path(), &data, &addr, "--agent", "demo/bob");

    let listener = spawn_ready(
        &[
            "listen",
            "--identity",
            s(&bob),
            "--hub",
            &addr,
            "demo.payments.>",
            "--count",
            "1",
        ],
        "listening",
    );

    // send --purpose: default.cedar holds `demo.payments.>` for one approval.
    let said = ok_as(
        &alice,
        &addr,
        &[
            "send",
            "demo.payments.out",
            "pay invoice 42",
            "--purpose",
            "invoice 42, due today",
        ],
    );
    assert!(
        said.starts_with("held for approval on `demo.payments.out`: "),
        "{said}"
    );
    let id = said
        .trim_start_matches("held for approval on `demo.payments.out`: ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    fails_as(
        &alice,
        &addr,
        &["send", "demo.payments.out", "pay", "--purpose", ""],
        "purpose",
    );

    // The sender never approves its own; the administrator sees it and releases it.
    fails_as(&alice, &addr, &["approve", &id], "separation of duties");
    fails_as(&admin, &addr, &["approve", "soon"], "neither a request ID");
    let pending = ok_as(&admin, &addr, &["approvals"]);
    assert!(pending.contains(&format!("{id}  pending")), "{pending}");
    assert!(pending.contains("invoice 42, due today"), "{pending}");
    let said = ok_as(&admin, &addr, &["approve", &id]);
    assert!(said.contains("released to its channel"), "{said}");
    let out = support::wait(listener, support::LIMIT);
    assert!(out.status.success());
    let heard = String::from_utf8_lossy(&out.stdout);
    assert!(heard.contains("pay invoice 42"), "{heard}");

    let mine = ok_as(&alice, &addr, &["held"]);
    assert!(mine.contains(&format!("{id}  released")), "{mine}");
    stop(hub);
}
