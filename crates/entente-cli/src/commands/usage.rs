//! What a bench run cost the machine: CPU time and resident memory of processes, read from
//! Linux's `/proc` over a run's window.
//!
//! CPU is `utime + stime` of `/proc/PID/stat` (every thread of the process, user and kernel time)
//! at the end of the window minus at its start, in clock ticks of 1/100 s (`USER_HZ`, 100 on every
//! Linux architecture the bench runs on): a window shorter than a few tenths of a second is
//! measured coarsely; `stime` alone is the kernel's share (system calls, the network stack, page
//! faults, the scheduler's work on the process's behalf). Memory is `VmRSS` of `/proc/PID/status`,
//! sampled every [`SAMPLE_EVERY`] by a thread of its own and at both ends of the window; the
//! largest sample is reported. The kernel's own peak (`VmHWM`) can't be reset between runs, so it
//! is not used. Where `/proc` can't be read (another system), the figures are zero.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};
use std::thread;
use std::time::Duration;

/// How often resident memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// Measures processes from [`start`](Self::start) to [`stop`](Self::stop).
#[derive(Debug)]
pub(crate) struct Meter {
    pids: Vec<u32>,
    ticks_at_start: Vec<Ticks>,
    rss_at_start: Vec<u64>,
    peaks: Arc<Vec<AtomicU64>>,
    done: Arc<AtomicBool>,
    sampler: Option<thread::JoinHandle<()>>,
}

/// What one process used over a window.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Usage {
    /// CPU time, user and system, of all its threads.
    pub(crate) cpu_seconds: f64,
    /// The system part of `cpu_seconds`: time the kernel spent on its behalf.
    pub(crate) kernel_seconds: f64,
    /// The largest resident set size sampled.
    pub(crate) peak_rss_bytes: u64,
    /// Its resident set size when the window opened.
    pub(crate) rss_start_bytes: u64,
}

/// What a bench run cost, as the bench reports it beside its throughput.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Cost {
    /// CPU seconds of everything that did the work: for Entente its one process (hub and
    /// clients); for NATS nats-server plus this process (its clients).
    pub(crate) cpu_seconds: f64,
    /// [`cpu_seconds`](Self::cpu_seconds) per million operations (deliveries, requests
    /// answered or publishes acknowledged).
    pub(crate) cpu_seconds_per_million: f64,
    /// The kernel's part of [`cpu_seconds_per_million`](Self::cpu_seconds_per_million).
    pub(crate) kernel_seconds_per_million: f64,
    /// The largest resident set sampled of the server: for Entente its whole process (the hub
    /// with its clients, so an upper bound for the hub); for NATS nats-server alone.
    pub(crate) peak_rss_bytes: u64,
    /// This process: Entente's hub and clients, or the NATS clients.
    pub(crate) process: Usage,
    /// nats-server; absent for Entente.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<Usage>,
}

impl Cost {
    /// Entente: everything ran in this process.
    pub(crate) fn in_process(usage: Usage, operations: u64) -> Self {
        Self {
            cpu_seconds: usage.cpu_seconds,
            cpu_seconds_per_million: per_million(usage.cpu_seconds, operations),
            kernel_seconds_per_million: per_million(usage.kernel_seconds, operations),
            peak_rss_bytes: usage.peak_rss_bytes,
            process: usage,
            server: None,
        }
    }

    /// NATS: the server in its own process, the clients in this one.
    pub(crate) fn server_and_clients(server: Usage, clients: Usage, operations: u64) -> Self {
        let cpu_seconds = server.cpu_seconds + clients.cpu_seconds;
        let kernel_seconds = server.kernel_seconds + clients.kernel_seconds;
        Self {
            cpu_seconds,
            cpu_seconds_per_million: per_million(cpu_seconds, operations),
            kernel_seconds_per_million: per_million(kernel_seconds, operations),
            peak_rss_bytes: server.peak_rss_bytes,
            process: clients,
            server: Some(server),
        }
    }
}

// === impl Meter ===

impl Meter {
    /// Starts measuring `pids` (this process is [`std::process::id`]).
    pub(crate) fn start(pids: &[u32]) -> Self {
        let rss_at_start: Vec<u64> = pids.iter().map(|&pid| rss_bytes(pid)).collect();
        let peaks: Arc<Vec<AtomicU64>> =
            Arc::new(rss_at_start.iter().map(|&r| AtomicU64::new(r)).collect());
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (pids, peaks, done) = (pids.to_vec(), Arc::clone(&peaks), Arc::clone(&done));
            thread::Builder::new()
                .name("bench-meter".to_owned())
                .spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        sample(&pids, &peaks);
                        thread::park_timeout(SAMPLE_EVERY);
                    }
                })
                .ok()
        };
        Self {
            pids: pids.to_vec(),
            ticks_at_start: pids.iter().map(|&pid| cpu_ticks(pid)).collect(),
            rss_at_start,
            peaks,
            done,
            sampler,
        }
    }

    /// Ends the window: what each process (in the order given to `start`) used in it.
    pub(crate) fn stop(mut self) -> Vec<Usage> {
        let ticks: Vec<Ticks> = self.pids.iter().map(|&pid| cpu_ticks(pid)).collect();
        sample(&self.pids, &self.peaks);
        self.done.store(true, Ordering::Relaxed);
        if let Some(sampler) = self.sampler.take() {
            sampler.thread().unpark();
            let _ = sampler.join();
        }
        ticks
            .iter()
            .zip(&self.ticks_at_start)
            .zip(self.peaks.iter().zip(&self.rss_at_start))
            .map(|((end, start), (peak, rss_start))| Usage {
                cpu_seconds: seconds(
                    (end.user + end.kernel).saturating_sub(start.user + start.kernel),
                ),
                kernel_seconds: seconds(end.kernel.saturating_sub(start.kernel)),
                peak_rss_bytes: peak.load(Ordering::Relaxed),
                rss_start_bytes: *rss_start,
            })
            .collect()
    }
}

/// Clock ticks in seconds.
fn seconds(ticks: u64) -> f64 {
    ticks as f64 / TICKS_PER_SECOND
}

/// CPU seconds per million of `count` operations; 0 when nothing was done.
pub(crate) fn per_million(cpu_seconds: f64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        cpu_seconds * 1e6 / count as f64
    }
}

fn sample(pids: &[u32], peaks: &[AtomicU64]) {
    for (pid, peak) in pids.iter().zip(peaks) {
        peak.fetch_max(rss_bytes(*pid), Ordering::Relaxed);
    }
}

/// A process's CPU time so far, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ticks {
    /// `utime`.
    user: u64,
    /// `stime`.
    kernel: u64,
}

/// `utime` and `stime` of `pid`; zero if unreadable.
fn cpu_ticks(pid: u32) -> Ticks {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_cpu_ticks(&stat))
        .unwrap_or_default()
}

/// `VmRSS` of `pid` in bytes; 0 if unreadable.
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| parse_rss_bytes(&status))
        .unwrap_or(0)
}

/// Fields 14 and 15 (`utime`, `stime`) of a `/proc/PID/stat` line. The second field, the
/// command name in parentheses, may hold spaces and parentheses itself: fields are counted
/// from after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<Ticks> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let kernel: u64 = fields.next()?.parse().ok()?;
    Some(Ticks { user, kernel })
}

/// The `VmRSS:  N kB` line of `/proc/PID/status`, in bytes.
fn parse_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_fields_14_and_15() {
        let stat = "20488 (a (weird) name) R 20485 20485 19294 0 -1 4194304 100 0 0 0 7 5 0 0 \
                    20 0 1 0 1113295 3133440 362 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(Ticks { user: 7, kernel: 5 }));
        assert_eq!(parse_cpu_ticks("1 (x) R 2"), None);
    }

    #[test]
    fn rss_is_read_in_kib() {
        let status = "Name:\tcat\nVmHWM:\t    2048 kB\nVmRSS:\t    2020 kB\nThreads:\t1\n";
        assert_eq!(parse_rss_bytes(status), Some(2020 * 1024));
        assert_eq!(parse_rss_bytes("Name:\tcat\n"), None);
    }

    #[test]
    fn this_process_is_measured() {
        let meter = Meter::start(&[std::process::id()]);
        let usage = meter.stop();
        assert_eq!(usage.len(), 1);
        if cfg!(target_os = "linux") {
            assert!(usage.first().is_some_and(|u| u.peak_rss_bytes > 0));
        }
    }

    #[test]
    fn per_million_of_nothing_is_zero() {
        assert_eq!(per_million(2.0, 0), 0.0);
        assert_eq!(per_million(2.0, 4_000_000), 0.5);
    }
}
