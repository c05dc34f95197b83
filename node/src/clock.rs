//! Wall-clock readings, in one place. Decisions take the time as an argument (a
//! monotonic `Instant` passed in by their driver); these are only for values that leave
//! the process: timestamps in records, token expiry, round-trip stamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    since_epoch().as_millis() as u64
}

/// Microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    since_epoch().as_micros() as u64
}
