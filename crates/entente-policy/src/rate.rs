//! Rates set by policy: `@rate("100/s")` (and `@burst("…")`) on a permit caps how often each
//! principal may do what that permit allows.
//!
//! The engine only parses and carries the rate ([`PolicyInfo::rate`](crate::PolicyInfo::rate));
//! the host keeps the buckets and charges each allowed request to every determining permit
//! that has one (docs/POLICY.md, "Rates").

use std::fmt;
use std::time::Duration;

/// The largest count a `@rate` may give per period, and the largest `@burst`.
pub const MAX_RATE_COUNT: u32 = 1_000_000_000;

/// The longest an empty bucket may take to fill again (the interval times the burst): 31
/// days. Longer is refused, so that no bucket's arithmetic can overflow.
pub const MAX_REFILL: Duration = Duration::from_secs(31 * 24 * 3600);

/// A rate from `@rate("<count>/<period>")` and `@burst("<n>")`: `count` requests per
/// `period`, up to `burst` at once (by default `count`, the bucket of one period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyRate {
    /// Requests allowed per period, from 1 to [`MAX_RATE_COUNT`].
    pub count: u32,
    /// The period.
    pub period: Period,
    /// Requests allowed at once, from 1 to [`MAX_RATE_COUNT`].
    pub burst: u32,
}

/// The period of a [`PolicyRate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// `/s`.
    Second,
    /// `/min`.
    Minute,
    /// `/h`.
    Hour,
}

// === impl PolicyRate ===

impl PolicyRate {
    /// Parses the values of `@rate` and `@burst` (absent: the count), or says what is wrong
    /// in words for a load problem.
    pub fn parse(rate: &str, burst: Option<&str>) -> Result<Self, String> {
        let bad_rate = || {
            format!(
                "`@rate(\"{}\")`: write a whole number from 1 to {MAX_RATE_COUNT} per `s`, `min` or `h`, e.g. `@rate(\"100/s\")`",
                rate.escape_debug()
            )
        };
        let (count, period) = rate.split_once('/').ok_or_else(bad_rate)?;
        let count = whole(count).ok_or_else(bad_rate)?;
        let period = match period {
            "s" => Period::Second,
            "min" => Period::Minute,
            "h" => Period::Hour,
            _ => return Err(bad_rate()),
        };
        let burst = match burst {
            None => count,
            Some(text) => whole(text).ok_or_else(|| {
                format!(
                    "`@burst(\"{}\")`: write a whole number from 1 to {MAX_RATE_COUNT}",
                    text.escape_debug()
                )
            })?,
        };
        let rate = Self {
            count,
            period,
            burst,
        };
        let refill = rate.interval().checked_mul(burst);
        if refill.is_none_or(|refill| refill > MAX_REFILL) {
            return Err(format!(
                "`@rate(\"{}\")` with a burst of {burst}: an empty bucket would take longer than {} days to fill again; give a smaller `@burst`",
                rate_text(count, period),
                MAX_REFILL.as_secs() / 86_400
            ));
        }
        Ok(rate)
    }

    /// The time one request's share of the bucket takes to come back: the period divided by
    /// the count (at least a nanosecond).
    pub fn interval(&self) -> Duration {
        let period_ns: u64 = match self.period {
            Period::Second => 1_000_000_000,
            Period::Minute => 60_000_000_000,
            Period::Hour => 3_600_000_000_000,
        };
        Duration::from_nanos((period_ns / u64::from(self.count.max(1))).max(1))
    }
}

impl fmt::Display for PolicyRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}, bursts of {}",
            self.count, self.period, self.burst
        )
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Second => "s",
            Self::Minute => "min",
            Self::Hour => "h",
        })
    }
}

fn rate_text(count: u32, period: Period) -> String {
    format!("{count}/{period}")
}

/// A whole number from 1 to [`MAX_RATE_COUNT`], digits only.
fn whole(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_RATE_COUNT).contains(n))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rates_parse_with_their_bursts() {
        let rate = PolicyRate::parse("100/s", None).unwrap();
        assert_eq!(
            rate,
            PolicyRate {
                count: 100,
                period: Period::Second,
                burst: 100
            }
        );
        assert_eq!(rate.interval(), Duration::from_millis(10));
        assert_eq!(rate.to_string(), "100/s, bursts of 100");
        let rate = PolicyRate::parse("6/min", Some("2")).unwrap();
        assert_eq!((rate.period, rate.burst), (Period::Minute, 2));
        assert_eq!(rate.interval(), Duration::from_secs(10));
        let rate = PolicyRate::parse("1000000000/s", None).unwrap();
        assert_eq!(rate.interval(), Duration::from_nanos(1));
        assert_eq!(
            PolicyRate::parse("1/h", None).unwrap().interval(),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn bad_rates_and_bursts_are_refused_in_words() {
        for bad in [
            "",
            "100",
            "/s",
            "0/s",
            "-1/s",
            "+1/s",
            "1.5/s",
            "100/sec",
            "100/ s",
            " 100/s",
            "100/S",
            "1000000001/s",
            "99999999999/s",
            "100/s/s",
            "ten/s",
        ] {
            let e = PolicyRate::parse(bad, None).unwrap_err();
            assert!(e.contains("@rate"), "{bad:?}: {e}");
        }
        for bad in ["", "0", "x", "1000000001", "-3", "2.0"] {
            let e = PolicyRate::parse("10/s", Some(bad)).unwrap_err();
            assert!(e.contains("@burst"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_bucket_must_fill_again_within_31_days() {
        // 744 hours is 31 days: the longest refill.
        assert!(PolicyRate::parse("1/h", Some("744")).is_ok());
        assert!(PolicyRate::parse("1000000000/s", Some("1000000000")).is_ok());
        for (rate, burst) in [("1/h", "745"), ("1/min", "1000000000"), ("1/h", "6000000")] {
            let e = PolicyRate::parse(rate, Some(burst)).unwrap_err();
            assert!(e.contains("longer than 31 days"), "{rate} {burst}: {e}");
        }
    }
}
