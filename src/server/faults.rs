//! Fault injection, the server clocks (requests, lifecycle), and exact request statistics.
//!
//! **Random faults** ([`FaultConfig`]) are decided per request from a hash of
//! `(seed, operation, bucket, key, partNumber, attempt)`, where `attempt` counts earlier requests with the
//! same identity. The decision therefore depends neither on timing nor on how parallel requests interleave:
//! the same client doing the same work against a server with the same seed meets the same faults, and a
//! retry of a failed part is a new attempt with its own, independent draw.
//!
//! **Scripted faults** ([`ScriptedFault`]) are one-shot rules consumed in order by the next matching requests:
//! "the next 2 UploadPart answer 503", "reset the next UploadPart of key k after 1000 body bytes".
//!
//! **Stats** ([`Stats`]) count every OSS request by operation: requests, request-body bytes the server
//! consumed, response statuses, and the faults injected. A connection reset by a fault after K bytes counts
//! exactly K body bytes (bytes past K in the same network read are discarded, not counted), so an upload
//! engine's waste can be asserted exactly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Random faults, applied to every OSS request (never to the control API).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Fraction of requests answered `500 InternalError` or `503 ServiceUnavailable` (chosen by the same
    /// draw), after the request body was read, without performing the operation.
    pub error_rate: f64,
    /// Fraction of requests with a body whose connection is reset after `reset_after` body bytes.
    pub reset_rate: f64,
    /// Body bytes read before a random reset (0: reset before reading any).
    pub reset_after: u64,
    /// Delay added before every request is handled.
    pub latency_ms: u64,
    pub seed: u64,
}

/// What a scripted fault does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultAction {
    /// Answer with this OSS error. With `after: true` the operation is performed first and its success
    /// answer replaced by the error (a response lost after the server acted, e.g. a Complete that did
    /// complete); otherwise the body is read and the operation is not performed.
    Error {
        status: u16,
        code: String,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        after: bool,
    },
    /// Abort the TCP connection (RST) once `after_bytes` of the request body were read (or at the end of a
    /// shorter body, before answering).
    Reset { after_bytes: u64 },
    /// Delay this request.
    Delay { ms: u64 },
}

/// A one-shot rule for the next `times` requests that match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptedFault {
    /// Operation name as in the stats (`UploadPart`, `PutObject`, `CompleteMultipartUpload`, …); any if absent.
    #[serde(default)]
    pub op: Option<String>,
    /// Exact object key; any if absent.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub part_number: Option<u32>,
    #[serde(default = "one")]
    pub times: u32,
    #[serde(flatten)]
    pub action: FaultAction,
}

fn one() -> u32 {
    1
}

/// Outage simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownMode {
    #[default]
    Up,
    /// Close the listening socket: new connections are refused (ECONNREFUSED). Only a timed outage makes
    /// sense here (the control API is unreachable too); the embedding API can end it at any time.
    Refuse,
    /// Accept connections but reset every OSS request (the control API keeps working).
    Drop,
}

/// The fault decided for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub delay: Duration,
    pub error: Option<InjectedError>,
    pub reset_after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub after: bool,
}

/// Per-operation counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpStats {
    pub requests: u64,
    /// Request-body bytes the server consumed.
    pub body_bytes: u64,
    /// Responses by status code; `reset` for connections the server reset, `aborted` for requests whose
    /// client went away before the answer.
    pub statuses: BTreeMap<String, u64>,
    pub injected_errors: u64,
    pub injected_resets: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultStats {
    pub errors: u64,
    pub resets: u64,
    pub delays: u64,
    /// Requests reset because the server was "down" in drop mode.
    pub down_drops: u64,
    /// Connections refused or dropped while down.
    pub down_connections: u64,
}

/// Everything the control API's `/stats` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub body_bytes: u64,
    pub operations: BTreeMap<String, OpStats>,
    pub faults: FaultStats,
}

/// Shared fault, clock and stats state of a running server.
pub struct Faults {
    config: Mutex<FaultConfig>,
    scripts: Mutex<Vec<ScriptedFault>>,
    attempts: Mutex<HashMap<u64, u32>>,
    stats: Mutex<Stats>,
    clock_offset_secs: AtomicI64,
    lifecycle_offset_secs: AtomicI64,
    token_expired: AtomicBool,
    down: watch::Sender<DownMode>,
    down_generation: AtomicI64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters and rule lists stay consistent even if a holder panicked mid-update.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// FNV-1a over the identity, then a SplitMix64 finalizer: stable across runs and platforms (unlike
/// std's randomly seeded hasher).
fn identity_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        h ^= 0xFF;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The identity of a request for fault decisions and scripted matching.
#[derive(Debug, Clone, Copy)]
pub struct RequestIdentity<'a> {
    pub op: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
    pub part_number: Option<u32>,
    pub has_body: bool,
}

impl Faults {
    pub fn new(config: FaultConfig) -> Self {
        let (down, _) = watch::channel(DownMode::Up);
        Faults {
            config: Mutex::new(config),
            scripts: Mutex::new(Vec::new()),
            attempts: Mutex::new(HashMap::new()),
            stats: Mutex::new(Stats::default()),
            clock_offset_secs: AtomicI64::new(0),
            lifecycle_offset_secs: AtomicI64::new(0),
            token_expired: AtomicBool::new(false),
            down,
            down_generation: AtomicI64::new(0),
        }
    }

    pub fn config(&self) -> FaultConfig {
        lock(&self.config).clone()
    }

    /// Replace the random fault settings. Attempt counters restart, so a new seed replays from the start.
    pub fn set_config(&self, config: FaultConfig) {
        *lock(&self.config) = config;
        lock(&self.attempts).clear();
    }

    pub fn add_script(&self, rule: ScriptedFault) {
        lock(&self.scripts).push(rule);
    }

    pub fn scripts(&self) -> Vec<ScriptedFault> {
        lock(&self.scripts).clone()
    }

    pub fn clear_scripts(&self) {
        lock(&self.scripts).clear();
    }

    /// The server's idea of now (real time plus the test clock offset).
    pub fn now(&self) -> SystemTime {
        let offset = self.clock_offset_secs.load(Ordering::Relaxed);
        let now = SystemTime::now();
        if offset >= 0 {
            now + Duration::from_secs(offset as u64)
        } else {
            now.checked_sub(Duration::from_secs(offset.unsigned_abs())).unwrap_or(now)
        }
    }

    pub fn clock_offset(&self) -> i64 {
        self.clock_offset_secs.load(Ordering::Relaxed)
    }

    pub fn set_clock_offset(&self, secs: i64) {
        self.clock_offset_secs.store(secs, Ordering::Relaxed);
    }

    /// The lifecycle clock: the server's now plus its own offset. Tests move it days ahead to make lifecycle
    /// rules due without moving the request clock (which would make every signature too skewed).
    pub fn lifecycle_now(&self) -> i64 {
        crate::timefmt::unix_secs(self.now()) + self.lifecycle_offset_secs.load(Ordering::Relaxed)
    }

    pub fn lifecycle_offset(&self) -> i64 {
        self.lifecycle_offset_secs.load(Ordering::Relaxed)
    }

    /// Move the lifecycle clock forward by `secs` (negative moves it back); returns the new offset.
    pub fn advance_lifecycle_clock(&self, secs: i64) -> i64 {
        self.lifecycle_offset_secs.fetch_add(secs, Ordering::Relaxed) + secs
    }

    pub fn reset_lifecycle_clock(&self) {
        self.lifecycle_offset_secs.store(0, Ordering::Relaxed);
    }

    pub fn token_expired(&self) -> bool {
        self.token_expired.load(Ordering::Relaxed)
    }

    pub fn set_token_expired(&self, expired: bool) {
        self.token_expired.store(expired, Ordering::Relaxed);
    }

    pub fn down_mode(&self) -> DownMode {
        *self.down.borrow()
    }

    pub fn subscribe_down(&self) -> watch::Receiver<DownMode> {
        self.down.subscribe()
    }

    /// Set the outage mode; returns a generation number so a timed outage only ends itself.
    pub fn set_down(&self, mode: DownMode) -> i64 {
        let generation = self.down_generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.down.send_replace(mode);
        generation
    }

    /// End a timed outage, unless the mode was changed since.
    pub fn end_down(&self, generation: i64) {
        if self.down_generation.load(Ordering::SeqCst) == generation {
            self.set_down(DownMode::Up);
        }
    }

    /// Decide the fault for one OSS request (consumes a scripted rule if one matches).
    pub fn decide(&self, id: RequestIdentity<'_>) -> Decision {
        let mut decision = Decision::default();
        let config = self.config();
        decision.delay = Duration::from_millis(config.latency_ms);

        let scripted = {
            let mut scripts = lock(&self.scripts);
            let pos = scripts.iter().position(|r| {
                r.op.as_deref().is_none_or(|op| op == id.op)
                    && r.key.as_deref().is_none_or(|k| k == id.key)
                    && r.part_number.is_none_or(|p| Some(p) == id.part_number)
            });
            pos.map(|i| {
                let rule = &mut scripts[i];
                let action = rule.action.clone();
                rule.times = rule.times.saturating_sub(1);
                if rule.times == 0 {
                    scripts.remove(i);
                }
                action
            })
        };
        if let Some(action) = scripted {
            match action {
                FaultAction::Error { status, code, message, after } => {
                    decision.error = Some(InjectedError {
                        status,
                        message: message.unwrap_or_else(|| default_message(&code)),
                        code,
                        after,
                    });
                }
                FaultAction::Reset { after_bytes } => decision.reset_after = Some(after_bytes),
                FaultAction::Delay { ms } => decision.delay += Duration::from_millis(ms),
            }
            return decision;
        }

        if config.error_rate <= 0.0 && config.reset_rate <= 0.0 {
            return decision;
        }
        let part = id.part_number.map(|p| p.to_le_bytes()).unwrap_or_default();
        let base = identity_hash(&[
            &config.seed.to_le_bytes(),
            id.op.as_bytes(),
            id.bucket.as_bytes(),
            id.key.as_bytes(),
            &part,
        ]);
        let attempt = {
            let mut attempts = lock(&self.attempts);
            // A test server sees a bounded number of identities; never let the map grow without limit.
            if attempts.len() > 1_000_000 {
                attempts.clear();
            }
            let n = attempts.entry(base).or_insert(0);
            *n += 1;
            *n
        };
        let h = mix(base ^ mix(u64::from(attempt)));
        if unit(h) < config.error_rate {
            let (status, code) = if mix(h ^ 1) & 1 == 0 { (500, "InternalError") } else { (503, "ServiceUnavailable") };
            decision.error =
                Some(InjectedError { status, code: code.into(), message: default_message(code), after: false });
        } else if id.has_body && unit(mix(h ^ 2)) < config.reset_rate {
            decision.reset_after = Some(config.reset_after);
        }
        decision
    }

    // -----------------------------------------------------------------------------------------------------
    // Stats

    pub fn stats(&self) -> Stats {
        lock(&self.stats).clone()
    }

    pub fn reset_stats(&self) {
        *lock(&self.stats) = Stats::default();
    }

    pub fn record_request(&self, op: &str) {
        let mut s = lock(&self.stats);
        s.requests += 1;
        s.operations.entry(op.to_string()).or_default().requests += 1;
    }

    pub fn record_body_bytes(&self, op: &str, n: u64) {
        let mut s = lock(&self.stats);
        s.body_bytes += n;
        s.operations.entry(op.to_string()).or_default().body_bytes += n;
    }

    pub fn record_status(&self, op: &str, status: &str) {
        let mut s = lock(&self.stats);
        *s.operations.entry(op.to_string()).or_default().statuses.entry(status.to_string()).or_default() += 1;
    }

    pub fn record_injected_error(&self, op: &str) {
        let mut s = lock(&self.stats);
        s.faults.errors += 1;
        s.operations.entry(op.to_string()).or_default().injected_errors += 1;
    }

    pub fn record_injected_reset(&self, op: &str) {
        let mut s = lock(&self.stats);
        s.faults.resets += 1;
        s.operations.entry(op.to_string()).or_default().injected_resets += 1;
    }

    pub fn record_delay(&self) {
        lock(&self.stats).faults.delays += 1;
    }

    pub fn record_down_drop(&self) {
        lock(&self.stats).faults.down_drops += 1;
    }

    pub fn record_down_connection(&self) {
        lock(&self.stats).faults.down_connections += 1;
    }
}

fn default_message(code: &str) -> String {
    match code {
        "InternalError" => "We encountered an internal error. Please try again.".into(),
        "ServiceUnavailable" => "Please reduce your request rate.".into(),
        _ => format!("Injected fault {code}."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<'a>(key: &'a str, part: Option<u32>) -> RequestIdentity<'a> {
        RequestIdentity { op: "UploadPart", bucket: "b", key, part_number: part, has_body: true }
    }

    fn pattern(seed: u64) -> Vec<bool> {
        let f = Faults::new(FaultConfig { error_rate: 0.5, seed, ..FaultConfig::default() });
        (0..64).map(|i| f.decide(id("k", Some(i))).error.is_some()).collect()
    }

    #[test]
    fn random_faults_repeat_with_the_seed_and_not_without() {
        assert_eq!(pattern(7), pattern(7));
        assert_ne!(pattern(7), pattern(8));
        let hits = pattern(7).iter().filter(|e| **e).count();
        assert!(hits > 0 && hits < 64);
    }

    #[test]
    fn decisions_do_not_depend_on_interleaving() {
        let a = Faults::new(FaultConfig { error_rate: 0.5, seed: 3, ..FaultConfig::default() });
        let b = Faults::new(FaultConfig { error_rate: 0.5, seed: 3, ..FaultConfig::default() });
        let forward: Vec<bool> = (0..20).map(|i| a.decide(id("k", Some(i))).error.is_some()).collect();
        let mut backward: Vec<bool> = (0..20).rev().map(|i| b.decide(id("k", Some(i))).error.is_some()).collect();
        backward.reverse();
        assert_eq!(forward, backward);
        // A retry of the same part is a fresh draw, so a part cannot fail forever.
        let c = Faults::new(FaultConfig { error_rate: 0.5, seed: 3, ..FaultConfig::default() });
        let retries: Vec<bool> = (0..40).map(|_| c.decide(id("k", Some(1))).error.is_some()).collect();
        assert!(retries.iter().any(|e| !e));
    }

    #[test]
    fn scripted_rules_are_consumed_in_order() {
        let f = Faults::new(FaultConfig::default());
        f.add_script(ScriptedFault {
            op: Some("UploadPart".into()),
            key: None,
            part_number: Some(2),
            times: 2,
            action: FaultAction::Error { status: 503, code: "ServiceUnavailable".into(), message: None, after: false },
        });
        f.add_script(ScriptedFault {
            op: None,
            key: Some("k".into()),
            part_number: None,
            times: 1,
            action: FaultAction::Reset { after_bytes: 10 },
        });
        assert_eq!(f.decide(id("k", Some(2))).error.map(|e| e.status), Some(503));
        assert_eq!(f.decide(id("k", Some(1))).reset_after, Some(10));
        assert_eq!(f.decide(id("k", Some(2))).error.map(|e| e.status), Some(503));
        assert_eq!(f.decide(id("k", Some(2))), Decision::default());
        assert!(f.scripts().is_empty());
    }

    #[test]
    fn scripted_json_shape() {
        let rule: ScriptedFault =
            serde_json::from_str(r#"{"op":"UploadPart","times":2,"error":{"status":503,"code":"ServiceUnavailable"}}"#)
                .unwrap();
        assert_eq!(rule.times, 2);
        let rule: ScriptedFault = serde_json::from_str(r#"{"reset":{"after_bytes":5}}"#).unwrap();
        assert_eq!(rule.action, FaultAction::Reset { after_bytes: 5 });
        assert_eq!(rule.times, 1);
        assert!(serde_json::from_str::<ScriptedFault>(r#"{"op":"UploadPart"}"#).is_err());
    }
}
