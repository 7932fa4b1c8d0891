//! A one-shot Linux timerfd for mio loops: epoll's own timeout has millisecond resolution (mio
//! rounds it up), a timerfd has nanoseconds. The server's group loop arms it at absolute
//! CLOCK_BOOTTIME deadlines (a clock that keeps counting through suspend, for leases); the load
//! generator arms it relative to now on CLOCK_MONOTONIC.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Which clock the timer counts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerClock {
    Monotonic,
    Boottime,
}

/// CLOCK_BOOTTIME in ns as the kernel keeps it (no test build's clock fault): the clock of
/// the servers' group threads, of Fast Paxos deadlines and of the latency anatomy's stamps.
pub fn boottime_raw_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_BOOTTIME exists on every Linux
    // this runs on (2.6.39+).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub struct TimerFd {
    fd: OwnedFd,
    /// The absolute deadline last armed with [`TimerFd::arm_at`] (0: none).
    armed_at: u64,
}

impl TimerFd {
    pub fn new(clock: TimerClock) -> io::Result<TimerFd> {
        let clock = match clock {
            TimerClock::Monotonic => libc::CLOCK_MONOTONIC,
            TimerClock::Boottime => libc::CLOCK_BOOTTIME,
        };
        // SAFETY: timerfd_create returns a new descriptor we own, or -1.
        let raw = unsafe { libc::timerfd_create(clock, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh, valid descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(TimerFd { fd, armed_at: 0 })
    }

    /// The descriptor to register with the poll (readable when the timer fired).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Fires once at `at` nanoseconds of the timer's clock; re-arming for the same instant is
    /// free, and an instant in the past fires at once.
    pub fn arm_at(&mut self, at: u64) {
        if at == self.armed_at {
            return;
        }
        self.armed_at = at;
        self.set(at, libc::TFD_TIMER_ABSTIME);
    }

    /// Fires once, `after_ns` from now (0 disarms).
    pub fn arm_after(&mut self, after_ns: u64) {
        self.armed_at = 0;
        self.set(after_ns, 0);
    }

    fn set(&self, ns: u64, flags: libc::c_int) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd and a valid itimerspec; no old value is asked for.
        unsafe { libc::timerfd_settime(self.fd(), flags, &spec, std::ptr::null_mut()) };
    }

    /// Consumes an expiry so the descriptor stops being readable.
    pub fn clear(&mut self) {
        let mut n: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; the descriptor is non-blocking.
        unsafe { libc::read(self.fd(), (&mut n as *mut u64).cast(), 8) };
        self.armed_at = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn readable(fd: RawFd, timeout_ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, timeout_ms) == 1 }
    }

    #[test]
    fn fires_after_the_delay_and_clears() {
        let mut t = TimerFd::new(TimerClock::Monotonic).unwrap();
        let start = Instant::now();
        t.arm_after(3_000_000);
        assert!(readable(t.fd(), 1_000));
        assert!(start.elapsed() >= Duration::from_millis(3));
        t.clear();
        assert!(!readable(t.fd(), 0));
    }

    #[test]
    fn an_absolute_deadline_in_the_past_fires_at_once() {
        let mut t = TimerFd::new(TimerClock::Boottime).unwrap();
        t.arm_at(1);
        assert!(readable(t.fd(), 1_000));
        t.clear();
        assert!(!readable(t.fd(), 0));
    }
}
