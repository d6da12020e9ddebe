#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

/// `entente bench ARGS --json`, which must succeed, as JSON.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = support::entente(&all);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The bench runs end to end and loses nothing. Timings are not asserted.
#[test]
fn the_bench_delivers_every_message() {
    let v = bench_json(&["--messages", "2000"]);
    assert_eq!(v["messages"], 2000);
    assert_eq!(v["payload_bytes"], 256);
    assert_eq!(v["delivered"], 2000, "{v:#}");
    assert_eq!(v["lost"], 0, "{v:#}");
    assert_eq!(v["duplicates"], 0, "{v:#}");
    assert_eq!(v["rejected"], 0, "{v:#}");
    assert_eq!(v["publish_errors"], 0, "{v:#}");
    assert!(v["latency_us"]["p99"].is_u64());
}

/// Authorization on against off: both deliver everything; only "on" makes policy decisions
/// (the off switch really skips the engine, and "on" really uses it).
#[test]
fn the_authorization_comparison_runs_both_ways() {
    let v = bench_json(&["--messages", "500", "--compare-authorization", "1"]);
    assert_eq!(v["rounds"], 1);
    let (on, off) = (&v["on"][0], &v["off"][0]);
    for run in [on, off] {
        assert_eq!(run["delivered"], 500, "{v:#}");
        assert_eq!(run["lost"], 0, "{v:#}");
    }
    assert!(on["hub_policy_decisions"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(off["hub_policy_decisions"], 0, "{v:#}");
    assert!(v["ratio"].as_f64().unwrap() > 0.0, "{v:#}");
}

#[test]
fn the_bench_refuses_a_payload_too_small_for_its_header() {
    let out = support::entente(&["bench", "--messages", "10", "--payload", "8"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--payload"));
}

/// Audit on against off: both deliver everything; only "on" writes audit records.
#[test]
fn the_audit_comparison_runs_both_ways() {
    let v = bench_json(&["--messages", "500", "--compare-audit", "1"]);
    assert_eq!(v["switch"], "audit");
    let (on, off) = (&v["on"][0], &v["off"][0]);
    for run in [on, off] {
        assert_eq!(run["delivered"], 500, "{v:#}");
        assert_eq!(run["lost"], 0, "{v:#}");
    }
    assert!(on["hub_audit_records"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(off["hub_audit_records"], 0, "{v:#}");
}

/// Durable publishes through Entente (both sync policies) and through a real nats-server
/// with JetStream file storage, in one run: every run completes with every publish
/// acknowledged. Timings are not asserted.
#[test]
fn durable_publishes_run_beside_jetstream() {
    let v = bench_json(&["--messages", "400", "--compare-jetstream", "1"]);
    let round = &v["rounds"][0];
    for key in [
        "entente_interval_msgs_per_sec",
        "entente_always_msgs_per_sec",
        "jetstream_msgs_per_sec",
    ] {
        assert!(round[key].as_f64().unwrap() > 0.0, "{v:#}");
    }
    assert!(v["ratio_same_sync"].as_f64().unwrap() > 0.0, "{v:#}");
}

#[test]
fn fan_out_runs_beside_nats_plain_and_with_tls() {
    let v = bench_json(&[
        "--messages",
        "400",
        "--subscribers",
        "2",
        "--compare-nats",
        "1",
    ]);
    let round = &v["rounds"][0];
    // Every subscriber gets every message.
    assert_eq!(round["entente"]["subscribers"], 2, "{v:#}");
    assert_eq!(round["entente"]["delivered"], 800, "{v:#}");
    assert_eq!(round["entente"]["lost"], 0, "{v:#}");
    for run in ["nats_plain", "nats_tls"] {
        let delivered = round[run]["delivered"].as_u64().unwrap();
        assert_eq!(
            delivered + round[run]["lost"].as_u64().unwrap(),
            800,
            "{v:#}"
        );
        assert!(delivered > 0, "{v:#}");
        assert!(round[run]["msgs_per_sec"].as_f64().unwrap() > 0.0, "{v:#}");
    }
    for ratio in ["ratio_to_nats_plain", "ratio_to_nats_tls"] {
        assert!(v[ratio].as_f64().unwrap() > 0.0, "{v:#}");
    }
}
