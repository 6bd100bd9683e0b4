//! Token-bucket rate limits for the guest-facing devices: virtio-rng's entropy, and the
//! bytes and operations a guest moves through virtio-blk and virtio-net.
//!
//! A [`RateLimit`] says how many bytes and how many operations (requests, frames) per
//! second a device may serve; each limit is a bucket holding one second's worth (the
//! burst). A worker asks its [`RateLimiter`] to admit each request before serving it; a
//! refused request stays where it is (in the available ring, or read from the tap and
//! held), and the worker's [`Alarm`] wakes it when the buckets will hold enough. A guest
//! that keeps notifying in the meantime only makes the worker look at the buckets again.

use std::io;
use std::num::NonZeroU64;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// Shortest timer a throttled worker arms, so a nearly full bucket does not spin.
pub(crate) const MIN_WAIT: Duration = Duration::from_millis(1);

/// How much a device may move per second; `None` leaves that dimension unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Bytes per second (the data of block requests, whole frames for net).
    pub bytes_per_second: Option<NonZeroU64>,
    /// Operations per second (block requests, net frames).
    pub ops_per_second: Option<NonZeroU64>,
}

impl RateLimit {
    /// A limit of `bytes_per_second` and `ops_per_second`; `None` or 0 leaves that
    /// dimension unlimited.
    pub fn new(bytes_per_second: Option<u64>, ops_per_second: Option<u64>) -> Self {
        Self {
            bytes_per_second: bytes_per_second.and_then(NonZeroU64::new),
            ops_per_second: ops_per_second.and_then(NonZeroU64::new),
        }
    }

    /// Whether either dimension is limited.
    pub fn is_limited(&self) -> bool {
        self.bytes_per_second.is_some() || self.ops_per_second.is_some()
    }
}

/// A token bucket: `rate` tokens (bytes) per second, at most `capacity` banked.
///
/// Time is passed in by the caller, so the arithmetic can be tested without sleeping.
/// Fractions of a token are carried over (in byte-nanoseconds), so a low rate refilled at
/// short intervals loses nothing.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: u64,
    capacity: u64,
    tokens: u64,
    /// Fraction of a token accrued since the last whole one, in units of 1/10^9 token.
    fraction: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` bytes per second with a burst of one second's worth.
    pub(crate) fn new(rate: NonZeroU64, now: Instant) -> Self {
        Self {
            rate: rate.get(),
            capacity: rate.get(),
            tokens: rate.get(),
            fraction: 0,
            last: now,
        }
    }

    /// Most tokens the bucket holds (the burst).
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Tokens available at `now`.
    #[cfg(test)]
    pub(crate) fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = self.last.max(now);
        if self.tokens >= self.capacity {
            self.fraction = 0;
            return;
        }
        let accrued = elapsed
            .saturating_mul(u128::from(self.rate))
            .saturating_add(self.fraction);
        let whole = accrued / NANOS_PER_SEC;
        let room = u128::from(self.capacity - self.tokens);
        if whole >= room {
            self.tokens = self.capacity;
            self.fraction = 0;
        } else {
            // whole < room <= u64::MAX.
            self.tokens += whole as u64;
            self.fraction = accrued % NANOS_PER_SEC;
        }
    }

    /// Takes `amount` tokens if the bucket holds that many at `now`.
    pub(crate) fn try_take(&mut self, amount: u64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= amount {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }

    /// How long after `now` the bucket will hold `amount` tokens (capped at its capacity).
    pub(crate) fn time_until(&mut self, amount: u64, now: Instant) -> Duration {
        self.refill(now);
        let amount = amount.min(self.capacity);
        if self.tokens >= amount {
            return Duration::ZERO;
        }
        let missing = u128::from(amount - self.tokens) * NANOS_PER_SEC;
        let missing = missing.saturating_sub(self.fraction);
        let rate = u128::from(self.rate);
        let nanos = missing.div_ceil(rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The buckets of one [`RateLimit`].
#[derive(Debug, Clone)]
pub struct RateLimiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// A full byte bucket of `rate` bytes per second and no operation limit.
    pub(crate) fn bytes(rate: NonZeroU64, now: Instant) -> Self {
        Self {
            bytes: Some(TokenBucket::new(rate, now)),
            ops: None,
        }
    }

    /// Bytes the byte bucket holds at `now` (0 without one).
    #[cfg(test)]
    pub(crate) fn available_bytes(&mut self, now: Instant) -> u64 {
        self.bytes
            .as_mut()
            .map_or(0, |bucket| bucket.available(now))
    }

    /// Full buckets for `limit`; `None` when nothing is limited.
    pub fn new(limit: RateLimit, now: Instant) -> Option<Self> {
        limit.is_limited().then(|| Self {
            bytes: limit
                .bytes_per_second
                .map(|rate| TokenBucket::new(rate, now)),
            ops: limit.ops_per_second.map(|rate| TokenBucket::new(rate, now)),
        })
    }

    /// Admits one operation of `bytes` bytes at `now`, taking its tokens, or says how long
    /// until it would be admitted (taking nothing). An operation larger than the byte burst
    /// costs a full bucket, so it is admitted once the bucket is full.
    pub fn admit(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        let byte_cost = self.bytes.as_ref().map_or(0, |b| bytes.min(b.capacity()));
        let byte_wait = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.time_until(byte_cost, now));
        let op_wait = self
            .ops
            .as_mut()
            .map_or(Duration::ZERO, |b| b.time_until(1, now));
        let wait = byte_wait.max(op_wait);
        if !wait.is_zero() {
            return Err(wait);
        }
        if let Some(bucket) = self.bytes.as_mut() {
            bucket.try_take(byte_cost, now);
        }
        if let Some(bucket) = self.ops.as_mut() {
            bucket.try_take(1, now);
        }
        Ok(())
    }
}

/// A throttled worker's wake-up: a non-blocking one-shot timerfd and the moment it is
/// armed for, so that arming it for two waits keeps the earlier.
#[derive(Debug)]
pub(crate) struct Alarm {
    timer: TimerFd,
    deadline: Option<Instant>,
}

impl Alarm {
    /// A disarmed alarm.
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            timer: nonblocking_timer()?,
            deadline: None,
        })
    }

    /// Arms the alarm `wait` after `now` (at least [`MIN_WAIT`]) unless it already rings
    /// earlier.
    pub(crate) fn ring_after(&mut self, wait: Duration, now: Instant) {
        let wait = wait.max(MIN_WAIT);
        let deadline = now + wait;
        if matches!(self.deadline, Some(armed) if armed > now && armed <= deadline) {
            return;
        }
        match self.timer.reset(wait, None) {
            Ok(()) => self.deadline = Some(deadline),
            Err(err) => {
                tracing::error!(%err, "cannot arm the rate-limit timer; throttled requests wait for the next notification");
            }
        }
    }

    /// Consumes the expiration epoll reported.
    pub(crate) fn acknowledge(&mut self) {
        self.deadline = None;
        if let Err(err) = self.timer.wait() {
            if err.errno() != libc::EAGAIN {
                tracing::warn!(%err, "cannot read the rate-limit timer");
            }
        }
    }
}

impl AsRawFd for Alarm {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

/// A monotonic timerfd whose reads never block (a re-armed timer may have lost the
/// expiration that made epoll report it).
pub(crate) fn nonblocking_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new().map_err(io::Error::from)?;
    let fd = timer.as_raw_fd();
    // SAFETY: `fd` is a valid descriptor owned by `timer` for the duration of both calls;
    // F_GETFL/F_SETFL only read and change its status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

#[cfg(test)]
mod tests;
