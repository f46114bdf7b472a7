//! Request throttling (`-drive iops=,bps=`, QEMU's `throttling.iops-total=` and
//! `throttling.bps-total=`): a token bucket per limit, refilled continuously at the limit's rate
//! and holding at most one second's budget, so a burst after an idle spell never exceeds what
//! one second allows. A request is admitted when every bucket holds its cost (or, for a request
//! costing more than a second's budget, when the bucket is full); the cost is then taken, which
//! may leave a bucket in debt. A request that is not admitted waits in the ring; the device arms
//! a timer for [`Throttle::admit`]'s answer and serves the queues again when it fires.
//!
//! Time is passed in (`now`) so that the buckets can be tested without sleeping.

use std::time::{Duration, Instant};

/// Nanoseconds in a second: bucket levels are kept in token-nanoseconds, so that refilling at
/// `rate` tokens per second adds `rate` per elapsed nanosecond, in integers.
const NANOS: i128 = 1_000_000_000;

/// The limits of one drive; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleLimits {
    /// Requests per second.
    pub iops: Option<u64>,
    /// Data bytes per second.
    pub bps: Option<u64>,
}

impl ThrottleLimits {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.iops.is_some() || self.bps.is_some()
    }
}

/// One token bucket: `rate` tokens per second, at most `rate` held.
#[derive(Debug)]
struct Bucket {
    rate: i128,
    /// Tokens times [`NANOS`]; negative while in debt.
    level: i128,
    last: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    fn new(rate: u64, now: Instant) -> Bucket {
        let rate = i128::from(rate.max(1));
        Bucket {
            rate,
            level: rate * NANOS,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let elapsed = i128::try_from(elapsed).unwrap_or(i128::MAX / 2);
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.rate * NANOS);
        self.last = now;
    }

    /// Token-nanoseconds a request of `cost` tokens needs in the bucket before it may start.
    fn needed(&self, cost: u64) -> i128 {
        i128::from(cost).min(self.rate) * NANOS
    }

    /// How long until a request of `cost` tokens may start (zero if it may now).
    fn wait(&self, cost: u64) -> Duration {
        let missing = self.needed(cost) - self.level;
        if missing <= 0 {
            return Duration::ZERO;
        }
        // Ceiling division: the bucket holds enough once this many nanoseconds passed.
        let nanos = (missing + self.rate - 1) / self.rate;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn take(&mut self, cost: u64) {
        self.level -= i128::from(cost) * NANOS;
    }
}

/// The buckets of one drive.
#[derive(Debug)]
pub struct Throttle {
    iops: Option<Bucket>,
    bps: Option<Bucket>,
}

impl Throttle {
    /// Full buckets for `limits` at `now`.
    pub fn new(limits: ThrottleLimits, now: Instant) -> Throttle {
        Throttle {
            iops: limits.iops.map(|rate| Bucket::new(rate, now)),
            bps: limits.bps.map(|rate| Bucket::new(rate, now)),
        }
    }

    /// Whether the byte limit is set (callers then count a request's data bytes).
    pub fn counts_bytes(&self) -> bool {
        self.bps.is_some()
    }

    /// Admits a request moving `bytes` data bytes at `now`, taking its cost: `Ok(())`, or
    /// `Err(wait)` with nothing taken if it must wait that long.
    pub fn admit(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        let mut buckets = [(self.iops.as_mut(), 1), (self.bps.as_mut(), bytes)];
        let mut wait = Duration::ZERO;
        for (bucket, cost) in buckets.iter_mut() {
            if let Some(bucket) = bucket {
                bucket.refill(now);
                wait = wait.max(bucket.wait(*cost));
            }
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        for (bucket, cost) in buckets {
            if let Some(bucket) = bucket {
                bucket.take(cost);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// How many one-request admissions succeed at `now`.
    fn admitted(t: &mut Throttle, bytes: u64, now: Instant) -> u64 {
        let mut n = 0;
        while t.admit(bytes, now).is_ok() {
            n += 1;
            assert!(n < 1_000_000, "unbounded");
        }
        n
    }

    #[test]
    fn a_full_bucket_admits_one_seconds_budget_then_waits() {
        let t0 = Instant::now();
        let mut t = Throttle::new(
            ThrottleLimits {
                iops: Some(500),
                bps: None,
            },
            t0,
        );
        assert_eq!(admitted(&mut t, 4096, t0), 500);
        assert_eq!(t.admit(4096, t0), Err(ms(2)));
        // 10 ms later, 5 more.
        assert_eq!(admitted(&mut t, 4096, t0 + ms(10)), 5);
    }

    #[test]
    fn a_burst_after_a_long_idle_spell_is_capped_at_one_second() {
        let t0 = Instant::now();
        let mut t = Throttle::new(
            ThrottleLimits {
                iops: Some(100),
                bps: None,
            },
            t0,
        );
        assert_eq!(admitted(&mut t, 0, t0), 100);
        assert_eq!(admitted(&mut t, 0, t0 + Duration::from_secs(3600)), 100);
    }

    #[test]
    fn over_several_seconds_the_rate_holds() {
        let t0 = Instant::now();
        let mut t = Throttle::new(
            ThrottleLimits {
                iops: Some(500),
                bps: None,
            },
            t0,
        );
        let mut total = 0;
        // A greedy client polling every millisecond for 5 s.
        for step in 0..=5000 {
            total += admitted(&mut t, 4096, t0 + ms(step));
        }
        // The first second's budget plus 5 s at 500/s.
        assert_eq!(total, 500 + 5 * 500);
    }

    #[test]
    fn bytes_are_limited_and_a_request_larger_than_a_second_waits_for_a_full_bucket() {
        let t0 = Instant::now();
        let mut t = Throttle::new(
            ThrottleLimits {
                iops: None,
                bps: Some(1 << 20),
            },
            t0,
        );
        assert!(t.counts_bytes());
        assert_eq!(admitted(&mut t, 64 << 10, t0), 16);
        // 4 MiB costs more than a second: admitted only once the bucket is full again (1 s).
        let wait = t.admit(4 << 20, t0).expect_err("empty bucket");
        assert_eq!(wait, Duration::from_secs(1));
        assert!(t.admit(4 << 20, t0 + Duration::from_secs(1)).is_ok());
        // Its debt then holds the next request for the 3 s it overdrew, plus its own cost.
        let wait = t
            .admit(512, t0 + Duration::from_secs(1))
            .expect_err("in debt");
        assert!(wait > Duration::from_secs(3), "{wait:?}");
    }

    #[test]
    fn both_limits_must_admit_and_a_refused_request_takes_nothing() {
        let t0 = Instant::now();
        let mut t = Throttle::new(
            ThrottleLimits {
                iops: Some(1000),
                bps: Some(4096),
            },
            t0,
        );
        assert!(t.admit(4096, t0).is_ok());
        // bps refuses; iops must not have been charged for it.
        for _ in 0..10 {
            assert!(t.admit(4096, t0).is_err());
        }
        assert_eq!(admitted(&mut t, 0, t0), 999);
        assert!(t.admit(4096, t0 + Duration::from_secs(1)).is_ok());
    }
}
