//! Running the real `entente` binary.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// The longest any one command of a test may run: a hang fails the test instead of stalling it.
pub const LIMIT: Duration = Duration::from_secs(120);

/// Starts `entente hub start --json` on `dir` and returns it with its first line of output.
pub fn start(dir: &std::path::Path) -> (Child, serde_json::Value) {
    start_at(dir, "127.0.0.1:0")
}

/// As [`start`], listening on `listen` (an address a previous start of `dir` got, to come
/// back at the same place).
pub fn start_at(dir: &std::path::Path, listen: &str) -> (Child, serde_json::Value) {
    start_with(dir, listen, &[])
}

/// As [`start_at`], with more arguments for `hub start`.
pub fn start_with(
    dir: &std::path::Path,
    listen: &str,
    more: &[&str],
) -> (Child, serde_json::Value) {
    let mut child = hub_command(dir, listen, &[&["--json"], more].concat())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (child, v)
}

/// `entente hub start --listen LISTEN MORE… --data DIR`, with no key store key or passphrase
/// from the environment (a new directory keeps a random key of its own) and its standard
/// output and error piped.
pub fn hub_command(dir: &Path, listen: &str, more: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_entente"));
    command
        .args(["hub", "start", "--listen", listen])
        .args(more)
        .arg("--data")
        .arg(dir)
        .env_remove("ENTENTE_KEYSTORE_KEY")
        .env_remove("ENTENTE_KEYSTORE_PASSPHRASE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

pub fn stop(child: Child) {
    stop_with_output(child);
}

/// As [`stop`], returning what the hub wrote.
pub fn stop_with_output(child: Child) -> Output {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = wait(child, LIMIT);
    assert!(out.status.success());
    out
}

/// Waits for `child` to exit, at most `limit`, collecting whatever of its standard output and
/// error was piped; a child still running then is killed and the test fails with its output.
pub fn wait(mut child: Child, limit: Duration) -> Output {
    fn drain(from: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut from) = from {
                let _ = from.read_to_end(&mut out);
            }
            out
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&stderr.join().unwrap())
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Runs `entente ARGS` to completion (at most [`LIMIT`]).
pub fn entente(args: &[&str]) -> Output {
    entente_with(args, b"", &[])
}

/// Runs `entente ARGS` with `stdin` on its standard input and `env` set, to completion (at
/// most [`LIMIT`]).
pub fn entente_with(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(args)
        .env_remove("ENTENTE_KEYSTORE_KEY")
        .env_remove("ENTENTE_KEYSTORE_PASSPHRASE")
        .env_remove("ENTENTE_JOIN_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // A command that does not read its input may be gone before it is written.
    let _ = std::io::Write::write_all(&mut input, stdin);
    drop(input);
    wait(child, LIMIT)
}

/// Like [`entente_with`], which must succeed; returns its standard output.
pub fn ok_with(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> String {
    let out = entente_with(args, stdin, env);
    assert!(
        out.status.success(),
        "entente {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `entente ARGS`, which must succeed; returns its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = entente(args);
    assert!(
        out.status.success(),
        "entente {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Enrolls the agent `name` (`segment/name`) with a join token the hub's admin (in
/// `data/admin`) creates; returns its identity directory, `out/segment-name`.
pub fn enroll(data: &Path, addr: &str, name: &str, out: &Path) -> std::path::PathBuf {
    enroll_as(data, addr, "--agent", name, out).0
}

/// Enrolls the agent (`kind` `--agent`, `name` `segment/name`) or human (`--human`, `name`)
/// with a join token the hub's admin creates; returns its identity directory, `out/<name>`
/// with `/` as `-`, and what `enroll` said.
pub fn enroll_as(
    data: &Path,
    addr: &str,
    kind: &str,
    name: &str,
    out: &Path,
) -> (std::path::PathBuf, String) {
    let token = ok(&[
        "token",
        "create",
        "--identity",
        s(&data.join("admin")),
        "--hub",
        addr,
        kind,
        name,
    ]);
    let dir = out.join(name.replace('/', "-"));
    let said = ok_with(
        &[
            "enroll",
            "--hub",
            addr,
            "--ca",
            s(&data.join("ca.pem")),
            "--token-file",
            "-",
            "--out",
            s(&dir),
        ],
        token.as_bytes(),
        &[],
    );
    (dir, said)
}

/// A path as a `&str`.
pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Starts `entente ARGS` in the background and waits for its first line on standard error,
/// which must contain `ready` (`listening`, `serving …`).
pub fn spawn_ready(args: &[&str], ready: &str) -> Child {
    spawn_ready_with(args, ready, &[])
}

/// As [`spawn_ready`], with `env` set in the command's environment.
pub fn spawn_ready_with(args: &[&str], ready: &str, env: &[(&str, &str)]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains(ready), "{line}");
    child
}
