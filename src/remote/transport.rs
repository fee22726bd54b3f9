//! HTTP machinery shared by the OSS and S3 dialects: the reqwest client, request bodies that report their
//! progress, the progress-based timeouts, bounded answer reading, transport-error classification, the clock
//! offset learned from the server, and the retry loop.
//!
//! What a dialect adds on top is only what differs between the protocols: how a request is signed, which
//! headers carry the request id and the checksums, and how an error answer is decoded.
//!
//! Timeouts are about *progress*, not totals: a 5 GB part on a slow link may take an hour, and that is fine
//! as long as the server keeps taking bytes. A request fails when the server stops reading the body, or does
//! not answer, or stops sending the answer, for `read_timeout` (reqwest's own read timeout would count from
//! the start of the request, so it is not used).
//!
//! The retry loop re-runs a whole attempt (sign, stream, read, parse) each time, so a retry is never a
//! replay of a stale signed request, and an answer that is wrong in content is retried like a 503.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;

use crate::remote::body::{ChunkStream, DigestSlot};
use crate::remote::error::TransportKind;
use crate::remote::oss::endpoint::Endpoint;
use crate::remote::oss::response::Redactor;
use crate::remote::retry::RetryPolicy;
use crate::remote::throttle::Throttle;
use crate::remote::{Body, RemoteError};

/// Tracks one attempt's request body: when it last moved and whether it is complete.
#[derive(Debug)]
pub(crate) struct Progress {
    origin: Instant,
    /// Milliseconds after `origin` of the last movement (a chunk taken, the body finished).
    last_ms: AtomicU64,
    pub(crate) done: AtomicBool,
    /// The HTTP stack is waiting for our disk reader, not the other way round: not the server's fault.
    waiting_local: AtomicBool,
}

impl Progress {
    pub(crate) fn new(done: bool) -> Arc<Self> {
        Arc::new(Progress {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            done: AtomicBool::new(done),
            waiting_local: AtomicBool::new(false),
        })
    }

    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the current idle period would exceed `timeout`; `None` while the body waits on local reads.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.waiting_local.load(Ordering::Relaxed) {
            return None;
        }
        let last = self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(far_future_if_none(last.checked_add(timeout)))
    }
}

/// A body stream that reports its progress.
struct Watched<S> {
    inner: S,
    progress: Arc<Progress>,
    remaining: u64,
}

impl<S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin> Stream for Watched<S> {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        let p = &self.progress;
        match &polled {
            Poll::Pending => p.waiting_local.store(true, Ordering::Relaxed),
            Poll::Ready(item) => {
                p.waiting_local.store(false, Ordering::Relaxed);
                p.touch();
                let taken = match item {
                    Some(Ok(chunk)) => chunk.len() as u64,
                    _ => 0,
                };
                let remaining = self.remaining.saturating_sub(taken);
                self.remaining = remaining;
                if remaining == 0 || item.is_none() {
                    self.progress.done.store(true, Ordering::Relaxed);
                }
            }
        }
        polled
    }
}

/// An absurdly long timeout must not overflow `Instant` arithmetic (which panics): treat it as "a year".
fn far_future_if_none(t: Option<Instant>) -> Instant {
    t.unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 86_400))
}

/// Why an attempt produced no answer.
pub(crate) enum SendError {
    Http(reqwest::Error),
    /// No progress for the read timeout; `true` when the whole body had been sent.
    Stalled(bool),
}

/// One attempt's request body, ready for reqwest.
pub(crate) struct PreparedBody {
    pub(crate) body: reqwest::Body,
    /// For file bodies: where the digest of the bytes actually streamed lands.
    pub(crate) slot: Option<DigestSlot>,
    pub(crate) progress: Arc<Progress>,
}

/// The HTTP client of one endpoint plus the rules every dialect applies to it.
pub(crate) struct Transport {
    pub(crate) http: reqwest::Client,
    /// `scheme://host[:port]`, for errors and logs.
    pub(crate) endpoint: String,
    pub(crate) read_timeout: Duration,
    /// Which flag or variable names the endpoint, for "cannot connect" messages.
    endpoint_fix: &'static str,
    /// The secret and token, to be removed from any text we pass on.
    pub(crate) redactor: Redactor,
    /// `--bwlimit`: paces every request body (one bucket shared by the clients of a process).
    throttle: Option<Arc<Throttle>>,
}

impl Transport {
    pub(crate) fn new(
        endpoint: &Endpoint,
        connect_timeout: Duration,
        read_timeout: Duration,
        endpoint_fix: &'static str,
        redactor: Redactor,
        throttle: Option<Arc<Throttle>>,
    ) -> Result<Self, RemoteError> {
        if read_timeout.is_zero() || connect_timeout.is_zero() {
            return Err(RemoteError::invalid_input("a zero timeout", "give timeouts above zero"));
        }
        let mut builder = reqwest::Client::builder();
        if endpoint.is_loopback() {
            // HTTP(S)_PROXY from the environment is honoured for real endpoints, but a proxy cannot reach
            // a loopback server (the embedded default, tests).
            builder = builder.no_proxy();
        }
        let http = builder
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // We retry ourselves, re-signing each attempt; a transparent resend would reuse a stale signature.
            .retry(reqwest::retry::never())
            .user_agent(concat!("ossmirror/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                RemoteError::invalid_input(format!("cannot set up the HTTP client: {e}"), "report this bug")
            })?;
        Ok(Transport { http, endpoint: endpoint.display(), read_timeout, endpoint_fix, redactor, throttle })
    }

    /// Start one attempt's body: a fresh stream for a file range (its digest lands in the slot), the bytes
    /// themselves otherwise.
    /// Wait for `--bwlimit` credit for an in-memory body. Called before signing: a long wait must not age
    /// the signature. (A file body is paced chunk by chunk as it streams.)
    pub(crate) async fn pace_in_memory(&self, body: &Body) {
        if let (Some(t), Body::Bytes(b)) = (&self.throttle, body) {
            t.acquire(b.len() as u64).await;
        }
    }

    pub(crate) fn prepare_body(&self, body: &Body) -> PreparedBody {
        match body {
            Body::File(_) => {
                let (stream, slot) = body.stream();
                // Paced inside Watched: time spent waiting for credit counts as waiting on us, not as a
                // server that stopped taking bytes.
                let stream: ChunkStream = match &self.throttle {
                    Some(t) => Box::pin(t.wrap(stream)),
                    None => stream,
                };
                let progress = Progress::new(body.is_empty());
                let watched = Watched { inner: stream, progress: progress.clone(), remaining: body.len() };
                PreparedBody { body: reqwest::Body::wrap_stream(watched), slot: Some(slot), progress }
            }
            Body::Bytes(b) => {
                PreparedBody { body: reqwest::Body::from(b.clone()), slot: None, progress: Progress::new(true) }
            }
            Body::Empty => {
                PreparedBody { body: reqwest::Body::from(Bytes::new()), slot: None, progress: Progress::new(true) }
            }
        }
    }

    /// Await the answer's head while watching the request body's progress.
    pub(crate) async fn send(
        &self,
        send: impl Future<Output = Result<reqwest::Response, reqwest::Error>>,
        progress: &Progress,
    ) -> Result<reqwest::Response, SendError> {
        let timeout = self.read_timeout;
        tokio::pin!(send);
        loop {
            let deadline = progress
                .idle_deadline(timeout)
                .unwrap_or_else(|| far_future_if_none(Instant::now().checked_add(timeout)));
            tokio::select! {
                answer = &mut send => return answer.map_err(SendError::Http),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    // Re-check: the body may have moved, or be waiting on our own disk, since the timer was set.
                    if let Some(d) = progress.idle_deadline(timeout) {
                        if Instant::now() >= d {
                            return Err(SendError::Stalled(progress.done.load(Ordering::Relaxed)));
                        }
                    }
                }
            }
        }
    }

    /// The error for an attempt that got no answer.
    pub(crate) fn send_error(&self, op: &'static str, e: SendError) -> RemoteError {
        match e {
            SendError::Http(e) => self.transport_error(op, &e),
            SendError::Stalled(body_done) => {
                let detail = if body_done {
                    format!("no answer within {:?} after the request was sent", self.read_timeout)
                } else {
                    format!("the server stopped taking the request body for {:?}", self.read_timeout)
                };
                RemoteError::Transport { op, endpoint: self.endpoint.clone(), kind: TransportKind::Timeout, detail }
            }
        }
    }

    /// Read an answer's body, up to `limit` bytes. Past the limit, `strict` makes it an error; otherwise
    /// the rest is left unread (the connection is then not reused, which is fine for error answers).
    pub(crate) async fn read_body(
        &self,
        op: &'static str,
        mut response: reqwest::Response,
        limit: usize,
        strict: bool,
        request_id: Option<String>,
    ) -> Result<Bytes, RemoteError> {
        let hint = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        let mut buf = BytesMut::with_capacity(hint.unwrap_or(0).min(limit).min(64 * 1024 * 1024));
        loop {
            let chunk = match tokio::time::timeout(self.read_timeout, response.chunk()).await {
                Err(_) => {
                    return Err(RemoteError::Transport {
                        op,
                        endpoint: self.endpoint.clone(),
                        kind: TransportKind::Timeout,
                        detail: format!("the answer stalled for {:?}", self.read_timeout),
                    });
                }
                Ok(Err(e)) => return Err(self.transport_error(op, &e)),
                Ok(Ok(None)) => return Ok(buf.freeze()),
                Ok(Ok(Some(c))) => c,
            };
            if buf.len() + chunk.len() > limit {
                if strict {
                    return Err(RemoteError::BadResponse {
                        op,
                        detail: format!("the answer is larger than {limit} bytes"),
                        request_id,
                    });
                }
                let room = limit - buf.len();
                buf.extend_from_slice(&chunk[..room]);
                return Ok(buf.freeze());
            }
            buf.extend_from_slice(&chunk);
        }
    }

    pub(crate) fn transport_error(&self, op: &'static str, e: &reqwest::Error) -> RemoteError {
        let kind = if e.is_connect() {
            TransportKind::Connect
        } else if e.is_timeout() {
            TransportKind::Timeout
        } else if e.is_body() || e.is_request() {
            TransportKind::Broken
        } else {
            TransportKind::Other
        };
        // reqwest's top-level message names the URL and little else; the causes say what happened.
        let mut causes: Vec<String> = Vec::new();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            let text = s.to_string();
            if !causes.iter().any(|c| c.contains(&text)) {
                causes.push(text);
            }
            source = s.source();
        }
        let cause = if causes.is_empty() { e.to_string() } else { causes.join(": ") };
        let detail = match kind {
            TransportKind::Connect => {
                format!("cannot connect ({cause}); is the server running and reachable? {}", self.endpoint_fix)
            }
            TransportKind::Timeout => format!("timed out ({cause})"),
            TransportKind::Broken => format!("the connection broke ({cause})"),
            TransportKind::Other => cause,
        };
        RemoteError::Transport { op, endpoint: self.endpoint.clone(), kind, detail: self.redactor.apply(detail) }
    }
}

/// Server time minus local time, learned from `RequestTimeTooSkewed` answers; requests are signed with
/// the local time shifted by it.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub(crate) fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    /// The current time as the server sees it (as far as we know).
    pub(crate) fn now(&self) -> SystemTime {
        let offset = self.offset_ms();
        let now = SystemTime::now();
        let delta = Duration::from_millis(offset.unsigned_abs());
        let shifted = if offset >= 0 { now.checked_add(delta) } else { now.checked_sub(delta) };
        shifted.unwrap_or(now)
    }

    fn correct(&self, server: SystemTime) {
        let local = SystemTime::now();
        let offset_ms = match server.duration_since(local) {
            Ok(ahead) => ahead.as_millis().min(i64::MAX as u128) as i64,
            Err(behind) => -(behind.duration().as_millis().min(i64::MAX as u128) as i64),
        };
        self.set_offset_ms(offset_ms);
    }
}

/// The server's time, when `err` is a `RequestTimeTooSkewed` answer that carried a `Date`.
fn skew_server_time(err: &RemoteError) -> Option<SystemTime> {
    match err {
        RemoteError::Service(s) if s.code == "RequestTimeTooSkewed" => s.server_time,
        _ => None,
    }
}

/// Run `attempt` (given the 1-based attempt number) until it succeeds, fails for good, or the policy's
/// attempt or time budget is spent. A `RequestTimeTooSkewed` answer corrects `clock` and is resent at once,
/// outside the budget, the first time.
pub(crate) async fn with_retries<T, F, Fut>(
    op: &'static str,
    policy: &RetryPolicy,
    clock: &Clock,
    mut attempt: F,
) -> Result<T, RemoteError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, RemoteError>>,
{
    let started = Instant::now();
    let mut rng = fastrand::Rng::new();
    let mut number = 0u32;
    // Attempts that count against the policy: the one immediate resend after a clock correction does not.
    let mut counted = 0u32;
    let mut clock_corrected = false;
    loop {
        number += 1;
        counted += 1;
        let err = match attempt(number).await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        if let Some(server_time) = skew_server_time(&err) {
            clock.correct(server_time);
            tracing::warn!(
                attempt = number,
                offset_ms = clock.offset_ms(),
                "the server says our clock is off (RequestTimeTooSkewed); signing with the server's time"
            );
            if !clock_corrected {
                // The first correction fixes the request rather than hoping for luck: resend at once,
                // outside the retry budget. Later ones (a clock that keeps jumping) go through backoff.
                clock_corrected = true;
                counted -= 1;
                continue;
            }
        }
        if !err.is_retryable() {
            tracing::debug!(attempt = number, error = %err, "request failed");
            return Err(err);
        }
        match policy.next_delay(counted, started.elapsed(), &mut rng) {
            Some(delay) => {
                tracing::warn!(attempt = number, error = %err, delay_ms = delay.as_millis() as u64, "request failed; retrying");
                tokio::time::sleep(delay).await;
            }
            None if number > 1 => {
                tracing::debug!(attempt = number, error = %err, "giving up");
                return Err(RemoteError::RetriesExhausted {
                    op,
                    attempts: number,
                    elapsed: started.elapsed(),
                    last: Box::new(err),
                });
            }
            None => return Err(err),
        }
    }
}
