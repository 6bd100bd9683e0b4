use super::*;

fn nz(rate: u64) -> Option<NonZeroU64> {
    NonZeroU64::new(rate)
}

fn rate(per_second: u64) -> NonZeroU64 {
    NonZeroU64::new(per_second).expect("nonzero rate")
}

#[test]
fn an_unlimited_rate_needs_no_limiter() {
    assert!(RateLimiter::new(RateLimit::default(), Instant::now()).is_none());
    assert!(!RateLimit::default().is_limited());
}

#[test]
fn bytes_are_admitted_up_to_the_burst_then_at_the_rate() {
    let t0 = Instant::now();
    let limit = RateLimit {
        bytes_per_second: nz(1000),
        ops_per_second: None,
    };
    let mut limiter = RateLimiter::new(limit, t0).expect("limited");
    assert_eq!(limiter.admit(600, t0), Ok(()));
    assert_eq!(limiter.admit(400, t0), Ok(()));
    // Empty: 100 bytes take 100 ms to accrue, and nothing was taken by the refusal.
    assert_eq!(limiter.admit(100, t0), Err(Duration::from_millis(100)));
    assert_eq!(
        limiter.admit(100, t0 + Duration::from_millis(50)),
        Err(Duration::from_millis(50))
    );
    assert_eq!(limiter.admit(100, t0 + Duration::from_millis(100)), Ok(()));
}

#[test]
fn an_operation_larger_than_the_burst_waits_for_a_full_bucket() {
    let t0 = Instant::now();
    let limit = RateLimit {
        bytes_per_second: nz(1000),
        ops_per_second: None,
    };
    let mut limiter = RateLimiter::new(limit, t0).expect("limited");
    assert_eq!(limiter.admit(1 << 30, t0), Ok(()));
    assert_eq!(limiter.admit(1 << 30, t0), Err(Duration::from_secs(1)));
    assert_eq!(limiter.admit(1 << 30, t0 + Duration::from_secs(1)), Ok(()));
}

#[test]
fn operations_are_limited_independently_of_their_size() {
    let t0 = Instant::now();
    let limit = RateLimit {
        bytes_per_second: nz(1 << 20),
        ops_per_second: nz(2),
    };
    let mut limiter = RateLimiter::new(limit, t0).expect("limited");
    assert_eq!(limiter.admit(0, t0), Ok(()));
    assert_eq!(limiter.admit(0, t0), Ok(()));
    assert_eq!(limiter.admit(0, t0), Err(Duration::from_millis(500)));
    // The byte bucket lost nothing to the refused operation.
    assert_eq!(
        limiter.admit(1 << 20, t0 + Duration::from_millis(500)),
        Ok(())
    );
}

#[test]
fn the_longer_wait_of_the_two_buckets_is_reported() {
    let t0 = Instant::now();
    let limit = RateLimit {
        bytes_per_second: nz(100),
        ops_per_second: nz(10),
    };
    let mut limiter = RateLimiter::new(limit, t0).expect("limited");
    assert_eq!(limiter.admit(100, t0), Ok(()));
    assert_eq!(limiter.admit(50, t0), Err(Duration::from_millis(500)));
}

#[test]
fn an_alarm_keeps_the_earlier_of_two_deadlines_and_rings() {
    let mut alarm = Alarm::new().expect("timerfd");
    let now = Instant::now();
    alarm.ring_after(Duration::from_millis(20), now);
    alarm.ring_after(Duration::from_secs(60), now);
    assert_eq!(alarm.deadline, Some(now + Duration::from_millis(20)));
    let mut fds = [libc::pollfd {
        fd: alarm.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 5_000) };
    assert_eq!(ready, 1, "the alarm rang within 5 s");
    alarm.acknowledge();
    assert_eq!(alarm.deadline, None);
    // A read with no expiration pending does not block.
    alarm.acknowledge();
}

#[test]
fn token_bucket_caps_bytes_per_period() {
    let t0 = Instant::now();
    let mut bucket = TokenBucket::new(rate(1000), t0);
    assert_eq!(bucket.capacity(), 1000);
    // The burst: one second's worth, then nothing.
    assert!(bucket.try_take(600, t0));
    assert!(!bucket.try_take(401, t0));
    assert!(bucket.try_take(400, t0));
    assert!(!bucket.try_take(1, t0));
    assert_eq!(bucket.time_until(1, t0), Duration::from_millis(1));
    assert_eq!(bucket.time_until(250, t0), Duration::from_millis(250));
    // More than the capacity is never needed: a full bucket is the most one waits for.
    assert_eq!(bucket.time_until(5000, t0), Duration::from_secs(1));

    // Half a second refills half the rate.
    let t1 = t0 + Duration::from_millis(500);
    assert_eq!(bucket.available(t1), 500);
    assert!(!bucket.try_take(501, t1));
    assert!(bucket.try_take(500, t1));

    // Over any stretch of time, at most burst + rate * time bytes leave the bucket, even
    // when drawn in tiny steps (fractions of a token are carried, not lost or invented).
    let mut bucket = TokenBucket::new(rate(1000), t0);
    let mut taken = 0u64;
    for step in 0..=3000u64 {
        let now = t0 + Duration::from_micros(step * 1000);
        while bucket.try_take(7, now) {
            taken += 7;
        }
    }
    // 3 s at 1000 B/s plus the 1000-byte burst, minus what is left in 7-byte units.
    assert!((4000 - 7..=4000).contains(&taken), "{taken}");

    // Idle time does not bank more than the burst.
    let mut bucket = TokenBucket::new(rate(1000), t0);
    assert!(bucket.try_take(1000, t0));
    assert_eq!(bucket.available(t0 + Duration::from_secs(60)), 1000);
    // A clock that appears to go backwards takes nothing and gives nothing.
    assert_eq!(bucket.available(t0), 1000);
}

#[test]
fn token_bucket_carries_fractions_at_low_rates() {
    let t0 = Instant::now();
    let mut bucket = TokenBucket::new(rate(3), t0);
    assert!(bucket.try_take(3, t0));
    // 3 B/s: one token every 333.33 ms, refilled in 100 ms steps.
    let mut now = t0;
    for _ in 0..3 {
        now += Duration::from_millis(100);
        assert_eq!(bucket.available(now), 0);
    }
    now += Duration::from_millis(100);
    assert_eq!(bucket.available(now), 1);
    let wait = bucket.time_until(2, now);
    assert!(
        wait > Duration::from_millis(266) && wait <= Duration::from_millis(267),
        "{wait:?}"
    );
}
