//! `entente bench-scale` with a few connections: every one opens and stays open, the report
//! has its fields, resumption resumes, and the hub's process is gone afterwards. Timings and
//! memory figures are not asserted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

#[test]
fn the_scale_bench_opens_every_connection_and_reports() {
    let out = support::entente(&[
        "bench-scale",
        "--connections",
        "50",
        "--agents",
        "5",
        "--handshakes",
        "20",
        "--concurrency",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["connections"], 50, "{v:#}");
    assert_eq!(v["agents"], 5, "{v:#}");
    assert_eq!(v["connected"], 50, "{v:#}");
    assert_eq!(v["idle"], 50, "{v:#}");
    for field in [
        "hub_rss_before_kib",
        "hub_rss_idle_kib",
        "hub_rss_closed_kib",
        "idle_bytes_per_connection",
        "target_bytes_per_connection",
        "client_rss_kib",
    ] {
        assert!(v[field].is_u64(), "{field}: {v:#}");
    }
    assert!(v["hub_rss_before_kib"].as_u64().unwrap() > 0, "{v:#}");
    assert!(v["target_met"].is_boolean(), "{v:#}");

    let (full, resumed) = (&v["handshakes"]["full"], &v["handshakes"]["resumed"]);
    assert_eq!(full["handshakes"], 20, "{v:#}");
    assert_eq!(full["resumed"], 0, "{v:#}");
    assert!(full["per_second"].as_f64().unwrap() > 0.0, "{v:#}");
    assert_eq!(resumed["handshakes"], 20, "{v:#}");
    // Each timed handshake had a ticket from an earlier one to resume, but a connection is
    // closed as soon as the hub's first frame arrives, and on a loaded machine the ticket can
    // come after it: then the next handshake of that worker has none. At most one per worker.
    let count = resumed["resumed"].as_u64().unwrap();
    assert!((18..=20).contains(&count), "{v:#}");

    // The hub's process was killed and reaped.
    let pid = v["hub_pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("hub"),
        "the hub's process {pid} is still running"
    );
}

#[test]
fn the_scale_bench_refuses_zero_connections() {
    let out = support::entente(&["bench-scale", "--connections", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--connections"));
}
