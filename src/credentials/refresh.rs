//! [`Refreshing`]: temporary credentials kept fresh in the background.
//!
//! One fetch at start-up (its failure is the caller's to report); then a task wakes when two thirds of
//! the credentials' lifetime have passed and fetches new ones. A failed refresh is retried with backoff
//! (1 s doubling to 60 s) and logged; until it succeeds the old credentials stay in use, so a flaky STS
//! costs nothing as long as it recovers before they expire. Refreshes are single-flight: a server refusal
//! seen by twenty parts in flight at once causes one fetch, and every waiter shares its outcome.
//!
//! The task holds only a weak reference: dropping the last client ends it at its next wake-up.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{Credentials, CredentialsError, CredentialsProvider};

/// Credentials valid until `expiration`.
#[derive(Debug, Clone)]
pub struct Temporary {
    pub credentials: Credentials,
    pub expiration: SystemTime,
}

/// Something that fetches temporary credentials (STS, the metadata service, a URI).
#[async_trait]
pub trait Fetch: Send + Sync + 'static {
    async fn fetch(&self) -> Result<Temporary, CredentialsError>;
}

/// Longest wait between retries of a failing refresh.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// Shortest wait before a scheduled refresh (credentials that arrive nearly expired must not spin).
const MIN_DELAY: Duration = Duration::from_secs(1);

pub struct Refreshing {
    source: String,
    fetch: Box<dyn Fetch>,
    state: Mutex<State>,
    /// Held while a fetch runs: one at a time.
    flight: tokio::sync::Mutex<()>,
}

struct State {
    current: Arc<Credentials>,
    expiration: SystemTime,
    fetched_at: SystemTime,
    /// Fetch attempts so far (successful or not): a waiter compares it to know a fetch happened meanwhile.
    attempts: u64,
    /// Consecutive failures since the last success.
    failures: u32,
    last_error: Option<CredentialsError>,
}

impl std::fmt::Debug for Refreshing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refreshing").field("source", &self.source).field("expiration", &self.expiration()).finish()
    }
}

impl Refreshing {
    /// Fetch the first credentials and start refreshing them in the background (needs a Tokio runtime).
    pub async fn start(source: impl Into<String>, fetch: impl Fetch) -> Result<Arc<Refreshing>, CredentialsError> {
        let source = source.into();
        let first = fetch.fetch().await?;
        let now = SystemTime::now();
        warn_if_expired(&source, &first, now);
        let provider = Arc::new(Refreshing {
            source,
            fetch: Box::new(fetch),
            state: Mutex::new(State {
                current: Arc::new(first.credentials),
                expiration: first.expiration,
                fetched_at: now,
                attempts: 1,
                failures: 0,
                last_error: None,
            }),
            flight: tokio::sync::Mutex::new(()),
        });
        spawn_refresher(Arc::downgrade(&provider));
        Ok(provider)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written (every update is one
        // assignment of complete values), so a poisoned lock is still good to read.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long the background task sleeps before its next fetch.
    fn next_delay(&self, now: SystemTime) -> Duration {
        let s = self.state();
        if s.failures > 0 {
            let backoff = Duration::from_secs(1u64 << (s.failures - 1).min(6));
            return backoff.min(MAX_RETRY_DELAY);
        }
        let lifetime = s.expiration.duration_since(s.fetched_at).unwrap_or_default();
        let refresh_at = s.fetched_at + lifetime * 2 / 3;
        refresh_at.duration_since(now).unwrap_or_default().max(MIN_DELAY)
    }

    /// Fetch now, unless another fetch finished while we waited for our turn (then share its outcome).
    async fn refresh_once(&self) -> Result<(), CredentialsError> {
        let seen = self.state().attempts;
        let _turn = self.flight.lock().await;
        {
            let s = self.state();
            if s.attempts != seen {
                return match &s.last_error {
                    Some(e) if s.failures > 0 => Err(e.clone()),
                    _ => Ok(()),
                };
            }
        }
        let outcome = self.fetch.fetch().await;
        let now = SystemTime::now();
        let mut s = self.state();
        s.attempts += 1;
        match outcome {
            Ok(fresh) => {
                warn_if_expired(&self.source, &fresh, now);
                s.current = Arc::new(fresh.credentials);
                s.expiration = fresh.expiration;
                s.fetched_at = now;
                s.failures = 0;
                s.last_error = None;
                tracing::info!(
                    source = %self.source,
                    valid_for_secs = fresh.expiration.duration_since(now).map(|d| d.as_secs()).unwrap_or(0),
                    "credentials refreshed"
                );
                Ok(())
            }
            Err(e) => {
                s.failures += 1;
                s.last_error = Some(e.clone());
                let left = s.expiration.duration_since(now).map(|d| d.as_secs()).ok();
                tracing::warn!(
                    source = %self.source,
                    error = %e,
                    failures = s.failures,
                    current_valid_for_secs = left.unwrap_or(0),
                    expired = left.is_none(),
                    "refreshing the credentials failed; still using the current ones, retrying"
                );
                Err(e)
            }
        }
    }
}

#[async_trait]
impl CredentialsProvider for Refreshing {
    fn current(&self) -> Arc<Credentials> {
        self.state().current.clone()
    }

    async fn refresh(&self) -> Result<bool, CredentialsError> {
        self.refresh_once().await.map(|()| true)
    }

    fn source(&self) -> &str {
        &self.source
    }

    fn expiration(&self) -> Option<SystemTime> {
        Some(self.state().expiration)
    }
}

fn warn_if_expired(source: &str, fresh: &Temporary, now: SystemTime) {
    if fresh.expiration <= now {
        tracing::warn!(
            source,
            "the credentials just fetched have already expired: is this machine's clock right (NTP)?"
        );
    }
}

fn spawn_refresher(provider: Weak<Refreshing>) {
    tokio::spawn(async move {
        loop {
            let delay = match provider.upgrade() {
                Some(p) => p.next_delay(SystemTime::now()),
                None => return,
            };
            tokio::time::sleep(delay).await;
            let Some(p) = provider.upgrade() else { return };
            // The outcome is logged by `refresh_once`; the next delay follows from it.
            let _ = p.refresh_once().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Hands out `key-1`, `key-2`, … valid for `lifetime`; fails while `failing` is set.
    struct Counter {
        fetches: Arc<AtomicU32>,
        failing: Arc<std::sync::atomic::AtomicBool>,
        lifetime: Duration,
    }

    #[async_trait]
    impl Fetch for Counter {
        async fn fetch(&self) -> Result<Temporary, CredentialsError> {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            // Give concurrent callers time to pile up on the single flight.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(CredentialsError::unavailable("STS is down"));
            }
            Ok(Temporary {
                credentials: Credentials::new(format!("key-{n}"), "secret").with_session_token(format!("token-{n}")),
                expiration: SystemTime::now() + self.lifetime,
            })
        }
    }

    fn counter(lifetime: Duration) -> (Counter, Arc<AtomicU32>, Arc<std::sync::atomic::AtomicBool>) {
        let fetches = Arc::new(AtomicU32::new(0));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (Counter { fetches: fetches.clone(), failing: failing.clone(), lifetime }, fetches, failing)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_refusals_cause_one_fetch() {
        let (fetch, fetches, _) = counter(Duration::from_secs(3600));
        let p = Refreshing::start("test", fetch).await.unwrap();
        assert_eq!(p.current().access_key_id, "key-1");
        let calls: Vec<_> = (0..20).map(|_| p.refresh()).collect();
        let results = futures_util::future::join_all(calls).await;
        assert!(results.iter().all(|r| matches!(r, Ok(true))), "{results:?}");
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "the start, then one fetch for all twenty refusals");
        assert_eq!(p.current().access_key_id, "key-2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_current_credentials_and_backs_off() {
        let (fetch, _, failing) = counter(Duration::from_secs(3600));
        let p = Refreshing::start("test", fetch).await.unwrap();
        let now = SystemTime::now();
        let scheduled = p.next_delay(now);
        assert!(scheduled > Duration::from_secs(2300) && scheduled <= Duration::from_secs(2400), "{scheduled:?}");
        failing.store(true, Ordering::SeqCst);
        let e = p.refresh().await.unwrap_err();
        assert!(e.message.contains("STS is down"));
        assert_eq!(p.current().access_key_id, "key-1", "the old credentials stay in use");
        assert_eq!(p.next_delay(now), Duration::from_secs(1));
        let _ = p.refresh().await;
        assert_eq!(p.next_delay(now), Duration::from_secs(2));
        for _ in 0..10 {
            let _ = p.refresh().await;
        }
        assert_eq!(p.next_delay(now), MAX_RETRY_DELAY);
        failing.store(false, Ordering::SeqCst);
        assert!(p.refresh().await.unwrap());
        assert_ne!(p.current().access_key_id, "key-1");
    }

    /// Paused time: the task's sleeps are virtual, so the schedule is exact.
    #[tokio::test(start_paused = true)]
    async fn the_background_task_refreshes_before_expiry_and_stops_with_the_provider() {
        let (fetch, fetches, _) = counter(Duration::from_millis(1500));
        let p = Refreshing::start("test", fetch).await.unwrap();
        // Two thirds of a 1.5 s lifetime: a refresh about every second (each fetch takes 20 ms).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 3, "the start, then refreshes at about 1 s and 2 s");
        assert_eq!(p.current().access_key_id, "key-3");
        drop(p);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 3, "the refresher kept fetching after the provider was dropped");
    }
}
