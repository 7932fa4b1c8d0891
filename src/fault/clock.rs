//! A replica's faulty clock: the runtime's CLOCK_BOOTTIME reading passed through an offset and
//! a rate, kept monotonic (the server's clock never runs backward, so neither does this one).
//!
//! `fake(raw) = anchor_fake + (raw - anchor_raw) × (10⁶ + rate_ppm) / 10⁶`; every change
//! re-anchors at the moment it is applied, so the clock is continuous except for offset jumps.
//! A backward jump is clamped: readings never go below the last one returned, so the clock
//! stands still until `fake` catches up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Debug)]
pub struct Clock {
    active: bool,
    anchor_raw: u64,
    anchor_fake: i128,
    rate_ppm: i64,
    offset_ns: i64,
    /// The largest reading returned.
    last: u64,
}

const PPM: i128 = 1_000_000;

impl Clock {
    pub const fn new() -> Clock {
        Clock {
            active: false,
            anchor_raw: 0,
            anchor_fake: 0,
            rate_ppm: 0,
            offset_ns: 0,
            last: 0,
        }
    }

    fn fake_at(&self, raw: u64) -> i128 {
        self.anchor_fake
            + (raw as i128 - self.anchor_raw as i128) * (PPM + self.rate_ppm as i128) / PPM
    }

    /// The faulty reading at raw instant `raw` (never below an earlier reading).
    pub fn now(&mut self, raw: u64) -> u64 {
        let fake = if self.active {
            self.fake_at(raw).max(0) as u64
        } else {
            raw
        };
        self.last = self.last.max(fake);
        self.last
    }

    /// The raw instant at which the clock reads `at`.
    pub fn to_raw(&self, at: u64) -> u64 {
        if !self.active {
            return at;
        }
        let raw = self.anchor_raw as i128
            + (at as i128 - self.anchor_fake) * PPM / (PPM + self.rate_ppm as i128);
        raw.max(0) as u64
    }

    /// Applies a new rate and offset at raw instant `raw`; returns whether anything changed.
    pub fn set(&mut self, raw: u64, rate_ppm: i64, offset_ns: i64) -> bool {
        let rate_ppm = rate_ppm.clamp(-999_999, 100_000_000);
        if !self.active {
            self.anchor_raw = raw;
            self.anchor_fake = raw as i128;
            self.rate_ppm = 0;
            self.offset_ns = 0;
        }
        if self.rate_ppm == rate_ppm && self.offset_ns == offset_ns {
            return false;
        }
        let fake = self.fake_at(raw) + (offset_ns as i128 - self.offset_ns as i128);
        self.anchor_raw = raw;
        self.anchor_fake = fake;
        self.rate_ppm = rate_ppm;
        self.offset_ns = offset_ns;
        self.active = true;
        true
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The process's clock (one replica per process).
static CLOCK: Mutex<Clock> = Mutex::new(Clock::new());
/// Set once a fault was applied; until then readings pass through without the lock.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The clock the server sees, given the raw clock reading.
pub fn now(raw: u64) -> u64 {
    if !ACTIVE.load(Ordering::Acquire) {
        return raw;
    }
    CLOCK.lock().unwrap_or_else(|e| e.into_inner()).now(raw)
}

/// The raw clock instant at which the server's clock reads `at` (for arming a timer on the
/// raw clock).
pub fn to_raw(at: u64) -> u64 {
    if !ACTIVE.load(Ordering::Acquire) {
        return at;
    }
    CLOCK.lock().unwrap_or_else(|e| e.into_inner()).to_raw(at)
}

/// Applies a new rate and offset now (`raw`); returns whether anything changed.
pub fn set(raw: u64, rate_ppm: i64, offset_ns: i64) -> bool {
    let mut c = CLOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Readings so far were raw: the faulty clock starts where they left off.
    c.last = c.last.max(raw);
    let changed = c.set(raw, rate_ppm, offset_ns);
    if changed {
        ACTIVE.store(true, Ordering::Release);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_offset_and_backward_jumps_keep_the_clock_monotonic() {
        let mut c = Clock::new();
        let t0 = 1_000_000_000u64;
        assert_eq!(c.now(t0), t0);
        assert!(c.set(t0, 100_000, 0)); // 10% fast
        assert_eq!(c.now(t0 + 1_000_000), t0 + 1_100_000);
        assert_eq!(c.to_raw(t0 + 1_100_000), t0 + 1_000_000);
        assert!(!c.set(t0 + 1_000_000, 100_000, 0));
        // A forward jump of 50 ms at t0 + 1 ms, back to real speed.
        assert!(c.set(t0 + 1_000_000, 0, 50_000_000));
        assert_eq!(c.now(t0 + 2_000_000), t0 + 52_100_000);
        // Back by 100 ms: the clock stands still until it catches up.
        assert!(c.set(t0 + 2_000_000, 0, -50_000_000));
        assert_eq!(c.now(t0 + 3_000_000), t0 + 52_100_000);
        assert_eq!(c.now(t0 + 102_000_000), t0 + 52_100_000);
        assert_eq!(c.now(t0 + 103_000_000), t0 + 53_100_000);
        // Half speed.
        assert!(c.set(t0 + 103_000_000, -500_000, -50_000_000));
        assert_eq!(c.now(t0 + 105_000_000), t0 + 54_100_000);
        assert_eq!(c.to_raw(t0 + 54_100_000), t0 + 105_000_000);
    }
}
