//! `entente policy load|show|check` with the real binary against `entente hub start`, and
//! what the data directory does with policies across restarts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::{fs, path::Path};

use support::{entente, ok, s, start, stop};

/// `--identity DATA/admin --hub ADDR`.
fn admin_at<'a>(data: &'a Path, addr: &'a str) -> [String; 4] {
    [
        "--identity".into(),
        s(&data.join("admin")).into(),
        "--hub".into(),
        addr.into(),
    ]
}

fn run(args: &[&str], at: &[String; 4]) -> std::process::Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(at.iter().map(String::as_str));
    entente(&all)
}

const OPS_READS_RESULTS: &str = r#"// Segment ops may read demo's results.
@id("ops-reads-results")
@cross_segment
permit (
  principal in Segment::"ops",
  action == Action::"subscribe",
  resource == Channel::"demo.results"
);
"#;

#[test]
fn policies_are_loaded_shown_and_checked_and_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (child, first) = start(&data);
    assert_eq!(first["policies"]["origin"], "files", "{first}");
    assert_eq!(first["policies"]["sources"][0], "default.cedar", "{first}");
    assert_eq!(first["policies"]["epoch"], 1);
    let addr = first["listening"].as_str().unwrap().to_owned();
    let at = admin_at(&data, &addr);
    let default = data.join("policies/default.cedar");
    assert!(
        fs::read_to_string(&default)
            .unwrap()
            .contains("@id(\"demo-traffic\")")
    );

    // show: the base policies and default.cedar.
    let out = run(&["policy", "show"], &at);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("policy epoch 1: 6 policies from 2 source(s)"),
        "{text}"
    );
    for needle in [
        "base\n",
        "entente.direct-within-segment",
        "default.cedar\n",
        "demo-traffic",
        "admin-grants-and-approves",
        "permit @cross_segment  default.cedar:",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }

    // check: eve of segment ops is denied across segments (exit 2); alice allowed (exit 0).
    let out = run(
        &[
            "policy",
            "check",
            "--principal",
            "ops/eve",
            "--action",
            "subscribe",
            "--resource",
            "demo.results",
        ],
        &at,
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("DENY: agent `spiffe://entente.local/agent/ops/eve`"),
        "{text}"
    );
    assert!(text.contains("across segments"), "{text}");
    let out = run(
        &[
            "policy",
            "check",
            "--principal",
            "demo/alice",
            "--action",
            "publish",
            "--resource",
            "channel:demo.results",
        ],
        &at,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("ALLOW:"), "{text}");
    assert!(text.contains("demo-traffic (default.cedar:"), "{text}");

    // load: default.cedar and a new file (whose comment holds a bidirectional override); the
    // new epoch is printed.
    let ops = tmp.path().join("ops.cedar");
    let ops_text = format!("// \u{202e}stluser{OPS_READS_RESULTS}");
    fs::write(&ops, &ops_text).unwrap();
    let out = run(&["policy", "load", s(&default), s(&ops)], &at);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("policy epoch 2"), "{text}");
    assert!(text.contains("7 policies"), "{text}");
    let out = run(
        &[
            "--json",
            "policy",
            "check",
            "--principal",
            "ops/eve",
            "--action",
            "subscribe",
            "--resource",
            "demo.results",
        ],
        &at,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["allowed"], true);
    assert_eq!(v["policies"][0], "ops-reads-results");
    assert_eq!(v["cross_segment"], true);

    // An invalid load prints every problem, exits non-zero, and changes nothing.
    let bad = tmp.path().join("bad.cedar");
    fs::write(
        &bad,
        "permit (principal is Agent, action == Action::\"fly\", resource);\n\npermit (principal,\n",
    )
    .unwrap();
    let out = run(&["policy", "load", s(&default), s(&bad)], &at);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].starts_with("error: the hub refused the policies"),
        "{stderr}"
    );
    assert!(lines.len() >= 2, "{stderr}");
    assert!(
        lines[1..].iter().all(|l| l.starts_with("  bad.cedar:")),
        "{stderr}"
    );
    let out = run(&["--json", "policy", "load", s(&bad)], &at);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["problems"].as_array().unwrap().is_empty(), "{v}");
    // Still a failure when whoever reads its standard output is gone (`| head -0`): a script
    // that checks the status must not read a refusal as a success.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["--json", "policy", "load", s(&bad)])
        .args(&at)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = support::wait(refused, support::LIMIT);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["--json", "policy", "show"], &at);
    // The override is a JSON escape, not the character a terminal would obey.
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(!line.contains('\u{202e}'), "{line}");
    assert!(line.contains("// \\u202estluser"), "{line}");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["sources"][2]["text"], ops_text.as_str(), "{v}");
    assert_eq!(v["epoch"], 2, "{v}");
    let names: Vec<&str> = v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "default.cedar", "ops.cedar"]);
    stop(child);

    // A restart runs the stored set, not the files (which still hold default.cedar alone).
    let (child, again) = start(&data);
    assert_eq!(again["policies"]["origin"], "stored", "{again}");
    assert_eq!(again["policies"]["sources"][1], "ops.cedar", "{again}");
    // Each run's epochs start above the previous run's.
    assert_eq!(again["policies"]["epoch"], 1 + (1 << 20), "{again}");
    stop(child);

    // --reload-policies runs (and stores) DATA/policies/*.cedar again.
    let child = support::hub_command(&data, "127.0.0.1:0", &["--json", "--reload-policies"])
        .spawn()
        .unwrap();
    let mut child = child;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["policies"]["origin"], "files", "{v}");
    assert_eq!(v["policies"]["sources"].as_array().unwrap().len(), 1, "{v}");
    stop(child);
}

#[test]
fn a_config_with_allow_rules_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (child, _) = start(&data);
    stop(child);
    let config = data.join("config.toml");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[[allow]]\nsegment = \"demo\"\npublish = [\"demo.>\"]\nsubscribe = [\"demo.>\"]\n",
    );
    fs::write(&config, text).unwrap();
    let out = entente(&[
        "hub",
        "start",
        "--listen",
        "127.0.0.1:0",
        "--data",
        s(&data),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("[[allow]]"), "{stderr}");
    assert!(stderr.contains("entente policy load"), "{stderr}");
    assert!(stderr.contains("policies"), "{stderr}");
}

#[test]
fn policy_commands_fail_in_one_line_on_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (child, first) = start(&data);
    let addr = first["listening"].as_str().unwrap().to_owned();
    let at = admin_at(&data, &addr);
    // No files: clap refuses.
    let out = run(&["policy", "load"], &at);
    assert!(!out.status.success());
    // A missing file: one line naming it.
    let out = run(&["policy", "load", "/nonexistent/x.cedar"], &at);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("x.cedar"), "{stderr}");
    // A bad resource type: one line.
    let out = run(
        &[
            "policy",
            "check",
            "--principal",
            "demo/a",
            "--action",
            "publish",
            "--resource",
            "queue:x",
        ],
        &at,
    );
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    let _ = ok(&[
        "policy",
        "show",
        "--identity",
        s(&data.join("admin")),
        "--hub",
        &addr,
    ]);
    stop(child);
}
