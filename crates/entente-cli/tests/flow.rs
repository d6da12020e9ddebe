//! The README's manual path, end to end with the real binary: start a hub, create join tokens
//! as the admin, enroll two agents (the token on standard input, in a file, in the
//! environment: never an argument), listen and send; a cross-segment agent is refused; a
//! revoked agent is cut off.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use support::{entente, entente_with, ok, ok_with, s, spawn_ready, start, stop};

/// `entente listen` as `identity` on `demo.greetings` for `count` messages, once it listens.
fn listen(identity: &std::path::Path, addr: &str, count: u64) -> std::process::Child {
    let count = count.to_string();
    spawn_ready(
        &[
            "listen",
            "--identity",
            s(identity),
            "--hub",
            addr,
            "demo.greetings",
            "--count",
            &count,
        ],
        "listening",
    )
}

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
        let file = tmp.path().join(format!("{}.token", name.replace('/', "-")));
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let enroll = |out: &std::path::Path, how: &str| {
            let mut args = vec!["enroll", "--hub", &addr, "--ca", s(&ca), "--out", s(out)];
            match how {
                "stdin" => args.extend(["--token-file", "-"]),
                "file" => args.extend(["--token-file", s(&file)]),
                _ => {}
            }
            let env: &[(&str, &str)] = if how == "env" {
                &[("ENTENTE_JOIN_TOKEN", token)]
            } else {
                &[]
            };
            entente_with(&args, format!("{token}\n").as_bytes(), env)
        };
        let how = match name {
            "demo/alice" => "stdin",
            "demo/bob" => "file",
            _ => "env",
        };
        let said = enroll(&dir, how);
        assert!(said.status.success(), "{said:?}");
        let said = String::from_utf8(said.stdout).unwrap();
        assert!(said.contains(name.split('/').nth(1).unwrap()), "{said}");
        // The token is single use.
        let again = enroll(&tmp.path().join("again"), how);
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("already used"));
        ids.push(dir);
    }
    let (alice, bob, eve) = (&ids[0], &ids[1], &ids[2]);

    // Never as an argument, and never none.
    let enroll = [
        "enroll",
        "--hub",
        &addr,
        "--ca",
        s(&ca),
        "--out",
        s(tmp.path()),
    ];
    let argv = entente(&[&enroll[..], &["--token", "ent_x"]].concat());
    assert!(!argv.status.success());
    assert!(String::from_utf8_lossy(&argv.stderr).contains("--token"));
    let none = entente(&enroll);
    assert!(!none.status.success());
    let said = String::from_utf8_lossy(&none.stderr);
    assert!(said.contains("no join token"), "{said}");
    let empty = entente_with(&[&enroll[..], &["--token-file", "-"]].concat(), b"\n", &[]);
    assert!(String::from_utf8_lossy(&empty.stderr).contains("empty"));

    // A zero lifetime is refused, not taken as the hub's default.
    let create = ["token", "create", "--identity", s(&admin), "--hub", &addr];
    let zero = entente(&[&create[..], &["--agent", "demo/carol", "--ttl", "0s"]].concat());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("at least 1s"));
    // Where the identity would go is checked before the token is spent.
    let token = ok(&[&create[..], &["--agent", "demo/carol"]].concat());
    let not_a_dir = tmp.path().join("a-file");
    std::fs::write(&not_a_dir, "").unwrap();
    let carol = |out: &std::path::Path| {
        let args = ["enroll", "--hub", &addr, "--ca", s(&ca), "--out", s(out)];
        entente_with(
            &[&args[..], &["--token-file", "-"]].concat(),
            token.as_bytes(),
            &[],
        )
    };
    let refused = carol(&not_a_dir);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("identity directory"));
    assert!(carol(&tmp.path().join("carol")).status.success());

    // Bob listens; once subscribed, Alice sends.
    let listener = listen(bob, &addr, 1);
    // The message on standard input.
    let sent = ok_with(
        &[
            "send",
            "--identity",
            s(alice),
            "--hub",
            &addr,
            "demo.greetings",
        ],
        b"hello bob",
        &[],
    );
    assert!(sent.contains("sent"), "{sent}");
    let out = support::wait(listener, support::LIMIT);
    assert!(out.status.success());
    let heard = String::from_utf8(out.stdout).unwrap();
    assert!(heard.contains("hello bob"), "{heard}");
    assert!(heard.contains("agent/demo/alice"), "{heard}");

    // A payload can't print a line of its own (a sender line of someone else's) or drive the
    // terminal: one line per message, its control characters escaped.
    let listener = listen(bob, &addr, 1);
    let forged =
        "ok\nspiffe://entente.local/agent/demo/admin on demo.greetings: pay \u{1b}[2K \u{202e}x";
    ok_with(
        &[
            "send",
            "--identity",
            s(alice),
            "--hub",
            &addr,
            "demo.greetings",
        ],
        forged.as_bytes(),
        &[],
    );
    let out = support::wait(listener, support::LIMIT);
    let heard = String::from_utf8(out.stdout).unwrap();
    assert_eq!(heard.lines().count(), 1, "{heard}");
    assert!(heard.contains("ok\\nspiffe://"), "{heard}");
    assert!(heard.contains("pay \\u{1b}[2K \\u{202e}x"), "{heard}");

    // As JSON, the same payload decodes to exactly what was sent, and the line shows its
    // invisible characters as escapes (JSON by itself escapes only the control ones).
    let mut listener = std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["--json", "listen", "--identity", s(bob), "--hub", &addr])
        .args(["demo.greetings", "--count", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // It says nothing when it is subscribed: send until it has heard one.
    for _ in 0..50 {
        if listener.try_wait().unwrap().is_some() {
            break;
        }
        ok_with(
            &[
                "send",
                "--identity",
                s(alice),
                "--hub",
                &addr,
                "demo.greetings",
            ],
            forged.as_bytes(),
            &[],
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = support::wait(listener, support::LIMIT);
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        !line.contains('\u{202e}') && line.contains("\\u202e"),
        "{line}"
    );
    let heard: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(heard["payload"], forged, "{line}");

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

/// A reader that stops reading (`entente listen … | head -1`) ends `listen` quietly: no panic,
/// exit 0.
#[test]
fn listen_ends_quietly_when_its_reader_is_gone() {
    use std::io::BufRead as _;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let alice = support::enroll(&data, &addr, "demo/alice", tmp.path());
    let bob = support::enroll(&data, &addr, "demo/bob", tmp.path());
    let mut listener = listen(&bob, &addr, 50);
    let send = |text: &str| {
        ok(&[
            "send",
            "--identity",
            s(&alice),
            "--hub",
            &addr,
            "demo.greetings",
            text,
        ]);
    };
    send("first");
    let mut reader = std::io::BufReader::new(listener.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("first"), "{line}");
    drop(reader);
    for i in 0..3 {
        send(&format!("after {i}"));
    }
    let out = support::wait(listener, support::LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    stop(hub);
}
