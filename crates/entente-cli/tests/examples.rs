//! The SDK's examples (`crates/entente-client/examples`) run against a real hub, as the README
//! tells a newcomer to run them. `cargo test --all-targets` builds examples only as test
//! harnesses, so the test command builds the example binaries first
//! (`cargo build --workspace --examples`); this test runs them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use support::{LIMIT, ok, s, start, stop, wait};

/// The example binary `name`, next to the `entente` binary's directory.
fn example(name: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_entente"));
    let path = bin.parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the examples first (cargo build -p entente-client --examples)",
        path.display()
    );
    path
}

/// Runs example `name` with `args`; it must succeed. Returns its standard output.
fn run(name: &str, args: &[&str]) -> String {
    run_with(name, args, &[])
}

/// Runs example `name` with `args` and `env` set; it must succeed. Returns its standard output.
fn run_with(name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let child = Command::new(example(name))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait(child, LIMIT);
    assert!(
        out.status.success(),
        "example {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn token(data: &Path, addr: &str, agent: &str) -> String {
    ok(&[
        "token",
        "create",
        "--identity",
        s(&data.join("admin")),
        "--hub",
        addr,
        "--agent",
        agent,
    ])
    .trim()
    .to_owned()
}

#[test]
fn the_sdk_examples_run_against_a_real_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let ca = data.join("ca.pem");

    let mut dirs = Vec::new();
    for name in ["alice", "bob"] {
        let dir = tmp.path().join(name);
        let said = run_with(
            "enroll",
            &[&addr, s(&ca), s(&dir)],
            &[(
                "ENTENTE_JOIN_TOKEN",
                &token(&data, &addr, &format!("demo/{name}")),
            )],
        );
        assert!(said.contains(&format!("agent/demo/{name}")), "{said}");
        dirs.push(dir);
    }
    let (alice, bob) = (s(&dirs[0]), s(&dirs[1]));

    let said = run("pubsub", &[&addr, alice, bob]);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 3, "{said}");
    assert!(
        lines[0].ends_with("on demo.examples.greetings: hello bob"),
        "{said}"
    );
    assert!(
        lines[2].ends_with("on demo.examples.orders: and a croissant"),
        "{said}"
    );

    let said = run("request_reply", &[&addr, alice, bob]);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 3, "{said}");
    assert!(
        lines[0].starts_with("spiffe://entente.local/agent/demo/bob replied: bob heard"),
        "{said}"
    );
    assert!(lines[2].ends_with("say \"bye\""), "{said}");
    stop(hub);
}
