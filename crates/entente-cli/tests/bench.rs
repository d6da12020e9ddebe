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
    assert_percentiles_in_order(&v["latency_us"], &v);
}

/// `latency` (microseconds) carries every percentile, each no less than the one before.
#[track_caller]
fn assert_percentiles_in_order(latency: &serde_json::Value, whole: &serde_json::Value) {
    let read = |key: &str| {
        latency[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no `{key}` in {whole:#}"))
    };
    let all = ["p50", "p90", "p99", "p999", "max"].map(read);
    assert!(all.is_sorted(), "{all:?} in {whole:#}");
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
    for run in ["entente", "nats_plain", "nats_tls"] {
        assert_percentiles_in_order(&round[run]["latency_us"], &v);
    }
    for ratio in ["ratio_to_nats_plain", "ratio_to_nats_tls"] {
        assert!(v[ratio].as_f64().unwrap() > 0.0, "{v:#}");
    }
}

/// `--rate` paces every side of a comparison alike: a publisher offered 2 000 messages a
/// second cannot have its 200th delivered before it was due, 99.5 ms after the start.
#[test]
fn a_rate_paces_every_side_of_a_comparison() {
    let v = bench_json(&["--messages", "200", "--rate", "2000", "--compare-nats", "1"]);
    assert_eq!(v["rate"], 2000, "{v:#}");
    let round = &v["rounds"][0];
    assert_eq!(round["entente"]["lost"], 0, "{v:#}");
    for run in ["entente", "nats_plain", "nats_tls"] {
        assert_eq!(round[run]["rate"], 2000, "{v:#}");
        assert!(round[run]["seconds"].as_f64().unwrap() >= 0.0995, "{v:#}");
    }
}

/// Several publishers, each on its own connection: every subscriber gets every message of
/// every publisher, through Entente and through nats-server; what the runs cost is reported.
#[test]
fn publishers_fan_in_beside_nats() {
    let v = bench_json(&[
        "--messages",
        "200",
        "--publishers",
        "3",
        "--subscribers",
        "2",
        "--compare-nats",
        "1",
    ]);
    assert_eq!(v["publishers"], 3, "{v:#}");
    let round = &v["rounds"][0];
    let entente = &round["entente"];
    assert_eq!(entente["publishers"], 3, "{v:#}");
    assert_eq!(entente["delivered"], 1200, "{v:#}");
    assert_eq!(entente["lost"], 0, "{v:#}");
    assert_eq!(entente["duplicates"], 0, "{v:#}");
    assert!(
        entente["cost"]["cpu_seconds_per_million"].is_number(),
        "{v:#}"
    );
    assert!(
        entente["cost"]["peak_rss_bytes"].as_u64().unwrap() > 0,
        "{v:#}"
    );
    for run in ["nats_plain", "nats_tls"] {
        let delivered = round[run]["delivered"].as_u64().unwrap();
        assert_eq!(
            delivered + round[run]["lost"].as_u64().unwrap(),
            1200,
            "{v:#}"
        );
        assert!(delivered > 0, "{v:#}");
        assert_eq!(round[run]["duplicates"], 0, "{v:#}");
        // nats-server's memory, and CPU counted for the server and the clients.
        assert!(
            round[run]["cost"]["peak_rss_bytes"].as_u64().unwrap() > 0,
            "{v:#}"
        );
        assert!(
            round[run]["cost"]["server"]["cpu_seconds"].is_number(),
            "{v:#}"
        );
    }
}

/// Request/reply with one and with many requests in flight: every request is answered,
/// through Entente and through nats-server, plain and with TLS.
#[test]
fn request_reply_runs_beside_nats() {
    for inflight in ["1", "16"] {
        let v = bench_json(&[
            "--messages",
            "100",
            "--request-reply",
            inflight,
            "--compare-nats",
            "1",
        ]);
        let round = &v["rounds"][0];
        assert_eq!(round["entente"]["answered"], 100, "{v:#}");
        assert_eq!(round["entente"]["lost"], 0, "{v:#}");
        assert_eq!(round["entente"]["failed"], 0, "{v:#}");
        assert_eq!(round["entente"]["mismatched"], 0, "{v:#}");
        // Each signed batch carried one message at least, and no more than were in flight;
        // nats has no such figure.
        let most: f64 = inflight.parse().unwrap();
        for side in ["requests", "replies"] {
            let per_batch = round["entente"]["per_batch"][side].as_f64().unwrap();
            assert!((1.0..=most).contains(&per_batch), "{v:#}");
        }
        assert!(round["nats_plain"]["per_batch"].is_null(), "{v:#}");
        for run in ["entente", "nats_plain", "nats_tls"] {
            assert!(round[run]["answered"].as_u64().unwrap() > 0, "{v:#}");
            assert!(
                round[run]["requests_per_sec"].as_f64().unwrap() > 0.0,
                "{v:#}"
            );
            assert_percentiles_in_order(&round[run]["latency_us"], &v);
        }
        assert!(v["ratio_to_nats_plain"].as_f64().unwrap() > 0.0, "{v:#}");
    }
}

/// `--round-trip-batch-min` reaches the SDK clients' options (the report says which least
/// limit was set), no batch of requests holds more than are in flight, and nothing is lost.
#[test]
fn the_round_trip_batch_limit_reaches_the_clients() {
    let v = bench_json(&[
        "--messages",
        "1280",
        "--request-reply",
        "64",
        "--round-trip-batch-min",
        "64",
    ]);
    assert_eq!(v["answered"], 1280, "{v:#}");
    assert_eq!(v["lost"], 0, "{v:#}");
    assert_eq!(v["per_batch"]["round_trip_batch_min"], 64, "{v:#}");
    let requests = v["per_batch"]["requests"].as_f64().unwrap();
    assert!((1.0..=64.0).contains(&requests), "{v:#}");
}

/// The whole suite with tiny counts: every workload ran on every side, Entente lost
/// nothing, and each line carries throughput, latency, CPU and memory. Timings are not
/// asserted.
#[test]
fn the_suite_runs_every_workload() {
    let v = bench_json(&["--suite", "1", "--messages", "100"]);
    assert_eq!(v["clean"], true, "{v:#}");
    assert_eq!(v["entente_lost"], 0, "{v:#}");
    let workloads = v["workloads"].as_array().unwrap();
    let ids: Vec<&str> = workloads
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "a", "a-half", "b", "c", "d1", "d64", "e", "e-always", "f1k", "f16k"
        ],
        "{v:#}"
    );
    // The latency target's run: each side's publisher offered half of what it carried in
    // the same round's (a), which ran flat out.
    let a = &workloads[0]["rounds"][0];
    let half = &workloads[1]["rounds"][0];
    for side in ["entente", "nats", "nats_tls"] {
        assert_eq!(a[side]["offered_per_sec"], 0, "{v:#}");
        let carried = a[side]["per_sec"].as_f64().unwrap().round() as u64;
        assert_eq!(
            half[side]["offered_per_sec"].as_u64().unwrap(),
            carried / 2,
            "{v:#}"
        );
    }
    for w in workloads {
        assert_eq!(w["rounds"].as_array().unwrap().len(), 1, "{w:#}");
        assert_eq!(w["entente"]["lost"], 0, "{w:#}");
        let mut sides = vec!["entente", "nats"];
        if w["compared_with"] == "nats-server" {
            sides.push("nats_tls");
            assert!(w["ratio_to_nats_tls"].as_f64().unwrap() > 0.0, "{w:#}");
        } else {
            assert!(w["nats_tls"].is_null(), "{w:#}");
        }
        for side in sides {
            let s = &w[side];
            assert!(s["per_sec"].as_f64().unwrap() > 0.0, "{w:#}");
            // The kernel's part of the CPU is part of it.
            let (cpu, kernel) = (
                s["cpu_seconds_per_million"].as_f64().unwrap(),
                s["kernel_seconds_per_million"].as_f64().unwrap(),
            );
            assert!((0.0..=cpu).contains(&kernel), "{w:#}");
            assert!(s["peak_rss_bytes"].as_u64().unwrap() > 0, "{w:#}");
            // Megabytes of payload per second: the throughput times the payload size.
            let payload = w["payload_bytes"].as_f64().unwrap();
            let (per_sec, mb) = (
                s["per_sec"].as_f64().unwrap(),
                s["mb_per_sec"].as_f64().unwrap(),
            );
            assert!(
                (mb - per_sec * payload / 1e6).abs() <= 1e-6 * mb.max(1.0),
                "{w:#}"
            );
            let latency = ["p50_us", "p99_us", "p999_us"].map(|k| s[k].as_u64().unwrap());
            if w["compared_with"] == "nats-server" {
                assert!(latency[0] > 0 && latency.is_sorted(), "{w:#}");
            } else {
                // Durable publish measures no latency per message.
                assert_eq!(latency, [0; 3], "{w:#}");
            }
        }
        assert!(w["ratio_to_nats"].as_f64().unwrap() > 0.0, "{w:#}");
    }
    let f16k = workloads.iter().find(|w| w["id"] == "f16k").unwrap();
    assert_eq!(f16k["payload_bytes"], 16384, "{f16k:#}");
    // The crypto floor comes with the suite, its parts adding up to its total.
    let floor = &v["crypto_floor"];
    let parts: f64 = ["publisher_ns", "hub_ns", "subscriber_ns", "tls_ns"]
        .iter()
        .map(|k| floor[*k].as_f64().unwrap())
        .sum();
    let total = floor["total_ns"].as_f64().unwrap();
    assert!(total > 0.0 && (parts - total).abs() < 1e-6, "{floor:#}");
    assert!(
        floor["ceiling_msgs_per_sec"].as_f64().unwrap() > 0.0,
        "{floor:#}"
    );
}

#[test]
fn the_crypto_floor_runs_alone() {
    let v = bench_json(&["--crypto-floor", "--payload", "1024"]);
    assert_eq!(v["payload_bytes"], 1024, "{v:#}");
    assert!(v["ceiling_msgs_per_sec"].as_f64().unwrap() > 0.0, "{v:#}");
    assert!(
        v["wire_bytes_per_message"].as_f64().unwrap() > 1024.0,
        "{v:#}"
    );
    assert!(
        v["request_reply_rtt_floor_ns"].as_f64().unwrap() > 0.0,
        "{v:#}"
    );
    // Request/reply signatures shared as the SDK batches requests and replies, or as asked.
    assert_eq!(v["request_reply_shared_by"], 32, "{v:#}");
    let v = bench_json(&["--crypto-floor", "--round-trip-batch-min", "48"]);
    assert_eq!(v["request_reply_shared_by"], 48, "{v:#}");
}
