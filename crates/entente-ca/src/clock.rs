//! Conversions between the time types of std, `time`, rustls-pki-types and the wire format.
//!
//! Every conversion is total: out-of-range values saturate or are reported, never panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::UnixTime;
use time::OffsetDateTime;

/// Unix milliseconds, 0 before 1970, saturating far in the future.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The time as rustls-webpki wants it (seconds since 1970, 0 before).
pub(crate) fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

/// `t` truncated to whole seconds (certificates carry no fractions), or `None` if it is outside
/// the years 1950 to 9999 that X.509 validity can express.
pub(crate) fn to_cert_time(t: SystemTime) -> Option<OffsetDateTime> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok()?,
        Err(e) => {
            let d = e.duration();
            // Round towards the past, like truncation does after 1970.
            let whole = i64::try_from(d.as_secs()).ok()?;
            if d.subsec_nanos() > 0 {
                whole.checked_add(1)?.checked_neg()?
            } else {
                whole.checked_neg()?
            }
        }
    };
    let dt = OffsetDateTime::from_unix_timestamp(secs).ok()?;
    (1950..=9999).contains(&dt.year()).then_some(dt)
}

/// The inverse of [`to_cert_time`].
pub(crate) fn from_cert_time(dt: OffsetDateTime) -> SystemTime {
    let secs = dt.unix_timestamp();
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
    .unwrap_or(UNIX_EPOCH)
}

/// `t + d` in certificate time, or `None` past the year 9999.
pub(crate) fn add(t: OffsetDateTime, d: Duration) -> Option<OffsetDateTime> {
    let d = time::Duration::try_from(d).ok()?;
    let sum = t.checked_add(d)?;
    (sum.year() <= 9999).then_some(sum)
}

/// `t - d` in certificate time, or `None` before the year 1950.
pub(crate) fn sub(t: OffsetDateTime, d: Duration) -> Option<OffsetDateTime> {
    let d = time::Duration::try_from(d).ok()?;
    let diff = t.checked_sub(d)?;
    (diff.year() >= 1950).then_some(diff)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use super::*;

    #[test]
    fn cert_time_round_trips_whole_seconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        let dt = to_cert_time(t).unwrap();
        assert_eq!(dt.unix_timestamp(), 1_700_000_000);
        assert_eq!(
            from_cert_time(dt),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
    }

    #[test]
    fn cert_time_before_1970_rounds_down() {
        let t = UNIX_EPOCH - Duration::from_millis(1_500);
        assert_eq!(to_cert_time(t).unwrap().unix_timestamp(), -2);
        assert_eq!(
            from_cert_time(to_cert_time(t).unwrap()),
            UNIX_EPOCH - Duration::from_secs(2)
        );
    }

    #[test]
    fn out_of_range_times_are_refused_not_panics() {
        let far = UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400 * 100);
        assert!(to_cert_time(far).is_none());
        let now = to_cert_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000)).unwrap();
        assert!(add(now, Duration::from_secs(u64::MAX)).is_none());
        assert!(add(now, Duration::from_secs(9000 * 365 * 86_400)).is_none());
        assert!(sub(now, Duration::from_secs(100 * 365 * 86_400)).is_none());
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1234)), 1234);
    }
}
