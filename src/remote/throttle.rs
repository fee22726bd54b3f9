//! `--bwlimit`: one token bucket shared by every request body of a process.
//!
//! The bucket holds up to `burst` bytes of credit and refills at `rate` bytes per second. Taking bytes never
//! waits for the bucket to fill first: [`Throttle::reserve`] takes the credit at once, letting it go negative,
//! and answers how long the caller must wait before sending. Reservations are therefore served in the order
//! they were made (no starvation of a large part by many small bodies), and concurrent uploads share the rate
//! instead of each getting it: the debt one caller leaves is paid by the next one's wait.
//!
//! Bodies are throttled in small slices ([`Throttle::quantum`]) so that the bytes leave steadily rather than
//! in 256 KiB bursts separated by long pauses, which keeps a slow limit from looking like a stalled server
//! to the client's progress timeout (a throttled body reports "waiting on us", not "the server is slow").
//!
//! Time is Tokio's clock, so tests run it paused and advance it by exactly the waits computed here.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

/// Smallest and largest slice a body is cut into before it is metered.
const MIN_QUANTUM: u64 = 4 * 1024;
const MAX_QUANTUM: u64 = 256 * 1024;

/// A shared upload rate limit. Put it in an `Arc` and hand it to every client of the process.
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    burst: u64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Credit in bytes; negative while callers are waiting for bytes they already reserved.
    tokens: f64,
    refilled_at: Instant,
}

impl Throttle {
    /// `rate` bytes per second (at least 1). The burst is a tenth of a second's worth, at least one
    /// quantum: enough to keep a fast link busy between wake-ups, too little to overshoot the limit
    /// noticeably over any second.
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1);
        let burst = (rate / 10).max(Self::quantum_for(rate));
        Throttle { rate, burst, state: Mutex::new(Bucket { tokens: burst as f64, refilled_at: Instant::now() }) }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The slice size bodies are metered in: a twentieth of a second's worth, within 4 KiB ..= 256 KiB.
    pub fn quantum(&self) -> u64 {
        Self::quantum_for(self.rate)
    }

    fn quantum_for(rate: u64) -> u64 {
        (rate / 20).clamp(MIN_QUANTUM, MAX_QUANTUM)
    }

    /// Take `n` bytes of credit now; returns how long to wait before sending them (zero when the bucket
    /// had the credit).
    pub fn reserve(&self, n: u64) -> Duration {
        let now = Instant::now();
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(b.refilled_at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate as f64).min(self.burst as f64);
        b.refilled_at = now;
        b.tokens -= n as f64;
        if b.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-b.tokens / self.rate as f64) }
    }

    /// Wait until `n` bytes may be sent.
    pub async fn acquire(&self, n: u64) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// `inner`, with each chunk cut into quanta and each quantum released only when the bucket allows.
    pub fn wrap<S>(self: &std::sync::Arc<Self>, inner: S) -> Throttled<S> {
        Throttled { inner, throttle: self.clone(), held: None, wait: None }
    }
}

/// A byte stream paced by a [`Throttle`]; see [`Throttle::wrap`].
pub struct Throttled<S> {
    inner: S,
    throttle: std::sync::Arc<Throttle>,
    /// The rest of the current chunk, not yet released.
    held: Option<Bytes>,
    /// The wait for the quantum about to be released (its credit is already reserved).
    wait: Option<(Bytes, Pin<Box<Sleep>>)>,
}

impl<S: Stream<Item = Result<Bytes, io::Error>> + Unpin> Stream for Throttled<S> {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some((_, sleep)) = &mut this.wait {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if let Some((slice, _)) = this.wait.take() {
                    return Poll::Ready(Some(Ok(slice)));
                }
            }
            let mut chunk = match this.held.take() {
                Some(rest) => rest,
                None => match Pin::new(&mut this.inner).poll_next(cx) {
                    Poll::Ready(Some(Ok(chunk))) if chunk.is_empty() => continue,
                    Poll::Ready(Some(Ok(chunk))) => chunk,
                    // Errors and the end pass through unmetered.
                    other => return other,
                },
            };
            let quantum = usize::try_from(this.throttle.quantum()).unwrap_or(usize::MAX);
            if chunk.len() > quantum {
                this.held = Some(chunk.split_off(quantum));
            }
            let wait = this.throttle.reserve(chunk.len() as u64);
            if wait.is_zero() {
                return Poll::Ready(Some(Ok(chunk)));
            }
            this.wait = Some((chunk, Box::pin(tokio::time::sleep(wait))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::Arc;

    const MB: u64 = 1_000_000;

    /// Virtual seconds since `start` (the clock is paused: only the throttle's sleeps move it).
    fn secs_since(start: Instant) -> f64 {
        start.elapsed().as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn the_burst_is_free_and_the_rest_is_paced() {
        let t = Throttle::new(MB);
        assert_eq!(t.burst(), MB / 10);
        let start = Instant::now();
        t.acquire(t.burst()).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "the initial burst needs no wait");
        // 2 MB more at 1 MB/s: exactly two seconds.
        for _ in 0..20 {
            t.acquire(MB / 10).await;
        }
        let took = secs_since(start);
        assert!((took - 2.0).abs() < 1e-3, "took {took} virtual seconds");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_earns_no_more_than_the_burst() {
        let t = Throttle::new(MB);
        t.acquire(t.burst()).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let start = Instant::now();
        // An hour idle must not let an hour's worth through at once: only the burst is free.
        t.acquire(MB / 10 + MB).await;
        let took = secs_since(start);
        assert!((took - 1.0).abs() < 1e-3, "took {took} virtual seconds");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_users_share_one_rate() {
        let t = Arc::new(Throttle::new(MB));
        t.acquire(t.burst()).await; // start empty
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    t.acquire(MB / 20).await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // 4 × 10 × 50 kB = 2 MB through one 1 MB/s bucket: two seconds, not half a second.
        let took = secs_since(start);
        assert!((took - 2.0).abs() < 1e-3, "took {took} virtual seconds");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrapped_stream_is_paced_sliced_and_intact() {
        let t = Arc::new(Throttle::new(200_000));
        let quantum = t.quantum() as usize;
        assert_eq!(quantum, 10_000);
        t.acquire(t.burst()).await;
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Result<Bytes, io::Error>> =
            data.chunks(256 * 1024).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let start = Instant::now();
        let mut stream = t.wrap(futures_util::stream::iter(chunks));
        let mut out = Vec::new();
        let mut largest = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            largest = largest.max(chunk.len());
            out.extend_from_slice(&chunk);
        }
        assert_eq!(out, data, "bytes and order unchanged");
        assert!(largest <= quantum, "sliced to the quantum, got {largest}");
        let took = secs_since(start);
        assert!((took - 3.0).abs() < 1e-3, "600 kB at 200 kB/s took {took} virtual seconds");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_and_the_end_pass_through() {
        let t = Arc::new(Throttle::new(1000));
        let items = vec![Ok(Bytes::from_static(b"abc")), Err(io::Error::other("disk")), Ok(Bytes::new())];
        let mut stream = t.wrap(futures_util::stream::iter(items));
        assert_eq!(stream.next().await.unwrap().unwrap(), Bytes::from_static(b"abc"));
        assert_eq!(stream.next().await.unwrap().unwrap_err().to_string(), "disk");
        assert!(stream.next().await.is_none(), "an empty chunk is dropped, then the end");
    }

    #[test]
    fn a_tiny_rate_still_meters_in_whole_quanta() {
        let t = Throttle::new(0);
        assert_eq!(t.rate(), 1);
        assert_eq!(t.quantum(), MIN_QUANTUM);
        assert_eq!(t.burst(), MIN_QUANTUM);
        assert_eq!(Throttle::new(u64::MAX).quantum(), MAX_QUANTUM);
    }
}
