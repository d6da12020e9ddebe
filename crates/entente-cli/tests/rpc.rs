//! `entente serve` and `entente request` with the real binary: a request answered by a shell
//! command, a timeout, and a direct to nobody.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::{path::Path, process::Child};

use support::{enroll, entente, s, spawn_ready_with, start, stop};

/// Starts `entente serve … direct --exec EXEC --count 1` and waits until it serves.
fn serve(identity: &Path, addr: &str, exec: &str) -> Child {
    serve_with(identity, addr, exec, &[])
}

/// As [`serve`], with `env` in the server's environment.
fn serve_with(identity: &Path, addr: &str, exec: &str, env: &[(&str, &str)]) -> Child {
    spawn_ready_with(
        &[
            "serve",
            "--identity",
            s(identity),
            "--hub",
            addr,
            "direct",
            "--exec",
            exec,
            "--count",
            "1",
        ],
        "serving `_direct.demo.bob`",
        env,
    )
}

#[test]
fn serve_answers_a_request_with_the_commands_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let alice = enroll(&data, &addr, "demo/alice", tmp.path());
    let bob = enroll(&data, &addr, "demo/bob", tmp.path());

    // `entente [--json] request --identity alice … demo/bob MESSAGE --timeout TIMEOUT`.
    let ask = |json: bool, message: &str, timeout: &str| {
        let mut args = if json { vec!["--json"] } else { Vec::new() };
        args.extend([
            "request",
            "--identity",
            s(&alice),
            "--hub",
            &addr,
            "demo/bob",
        ]);
        args.extend([message, "--timeout", timeout]);
        entente(&args)
    };
    let succeeded = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let server = serve(&bob, &addr, "tr a-z A-Z");
    let reply = succeeded(ask(false, "hello bob", "10s"));
    // Into a pipe, the reply's exact bytes (`tr` added no newline).
    assert_eq!(reply, "HELLO BOB");
    let out = support::wait(server, support::LIMIT);
    assert!(out.status.success());
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.contains("answered `spiffe://entente.local/agent/demo/alice`"),
        "{said}"
    );

    // Bob is gone: the request is refused at once, in one line.
    let refused = entente(&[
        "request",
        "--identity",
        s(&alice),
        "--hub",
        &addr,
        "spiffe://entente.local/agent/demo/bob",
        "anyone?",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("NO_RECIPIENT"), "{stderr}");

    // A command that fails: the requester learns that, not what it printed on its standard
    // error (which stays with the server's operator).
    let server = serve(&bob, &addr, "echo 'secret path /srv/x' >&2; exit 3");
    let reply = succeeded(ask(false, "go", "10s"));
    assert_eq!(reply.trim_end(), "error: the command failed");
    let out = support::wait(server, support::LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret path /srv/x"), "{stderr}");
    // Its exit status says a request was not served as asked.
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("1 of 1 request(s)"), "{stderr}");

    // The command gets none of the secrets of the server's environment.
    let server = serve_with(
        &bob,
        &addr,
        "printenv ENTENTE_KEYSTORE_PASSPHRASE ENTENTE_KEYSTORE_KEY ENTENTE_PKCS11_PIN \
         OTEL_EXPORTER_OTLP_HEADERS ENTENTE_JOIN_TOKEN PATH_SEEN; echo done",
        &[
            ("ENTENTE_KEYSTORE_PASSPHRASE", "pass-SECRET"),
            ("ENTENTE_KEYSTORE_KEY", "key-SECRET"),
            ("ENTENTE_PKCS11_PIN", "pin-SECRET"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=SECRET"),
            ("ENTENTE_JOIN_TOKEN", "ent_SECRET"),
            ("PATH_SEEN", "other variables pass"),
        ],
    );
    let reply = succeeded(ask(false, "env?", "10s"));
    assert!(!reply.contains("SECRET"), "{reply}");
    assert!(
        reply.contains("other variables pass") && reply.contains("done"),
        "{reply}"
    );
    assert!(support::wait(server, support::LIMIT).status.success());

    // A binary reply reaches a pipe byte for byte, and `--json` carries it in base64 (as
    // text it would be lost to replacement characters).
    let binary = "printf '\\377\\033[2J\\000end'";
    let server = serve(&bob, &addr, binary);
    let raw = ask(false, "bytes?", "10s");
    assert!(raw.status.success());
    assert_eq!(raw.stdout, b"\xff\x1b[2J\x00end");
    assert!(support::wait(server, support::LIMIT).status.success());
    let server = serve(&bob, &addr, binary);
    let line = succeeded(ask(true, "bytes?", "10s"));
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["payload_base64"], "/xtbMkoAZW5k", "{line}");
    assert!(reply.get("payload").is_none(), "{line}");
    assert!(support::wait(server, support::LIMIT).status.success());

    // A server too slow for the requester's timeout. (On a slow machine the timeout may end
    // before the request reaches the server, which then never answers: it is stopped.)
    let mut server = serve(&bob, &addr, "sleep 15; cat");
    let late = ask(false, "quick?", "3s");
    assert!(!late.status.success());
    let stderr = String::from_utf8_lossy(&late.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no reply from `spiffe://entente.local/agent/demo/bob` within 3s"),
        "{stderr}"
    );
    server.kill().unwrap();
    support::wait(server, support::LIMIT);
    stop(hub);
}

/// A responder whose standard error nobody reads any more (a supervisor that read its first
/// line and went away) goes on serving: the lines it writes there for a failed command, and
/// its last one, are lost, not fatal.
#[test]
fn serve_goes_on_when_nobody_reads_its_standard_error() {
    use std::io::BufRead as _;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let alice = enroll(&data, &addr, "demo/alice", tmp.path());
    let bob = enroll(&data, &addr, "demo/bob", tmp.path());

    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["serve", "--identity", s(&bob), "--hub", &addr, "direct"])
        .args(["--exec", "cat >/dev/null; echo 'no luck' >&2; exit 3"])
        .args(["--count", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("serving `_direct.demo.bob`"), "{line}");
    // The reader dropped with the line read: the server's standard error is a closed pipe.

    for message in ["first", "second"] {
        let out = entente(&[
            "request",
            "--identity",
            s(&alice),
            "--hub",
            &addr,
            "demo/bob",
            message,
            "--timeout",
            "20s",
        ]);
        assert!(
            out.status.success(),
            "{message}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            "error: the command failed"
        );
    }
    // Both requests failed the command: a failure, not a panic.
    let out = support::wait(server, support::LIMIT);
    assert_eq!(out.status.code(), Some(1));
    stop(hub);
}

/// A timeout longer than a day is refused before anything is sent, in one line (one that no
/// clock can reach panicked).
#[test]
fn request_refuses_a_timeout_over_a_day() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (hub, info) = start(&data);
    let addr = info["listening"].as_str().unwrap().to_owned();
    let alice = enroll(&data, &addr, "demo/alice", tmp.path());
    enroll(&data, &addr, "demo/bob", tmp.path());
    let ask = |timeout: &str| {
        entente(&[
            "request",
            "--identity",
            s(&alice),
            "--hub",
            &addr,
            "demo/bob",
            "anyone?",
            "--timeout",
            timeout,
        ])
    };
    for timeout in ["10000000000000000000s", "2d", "86401s", "25h"] {
        let out = ask(timeout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{timeout}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            "error: `--timeout` must be at most 1d (24h)",
            "{timeout}"
        );
    }
    // A day is taken: nobody serves bob, so the hub refuses the request at once.
    let out = ask("1d");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("NO_RECIPIENT"), "{stderr}");
    stop(hub);
}
