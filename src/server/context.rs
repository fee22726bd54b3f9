//! What a request handler works with: [`Shared`], the state of the running server every connection sees,
//! and [`Ctx`], one decoded OSS request. Kept apart from the pipeline (`handler`) so that the operations
//! (`ops`) and the control API (`control`) depend on these types without depending on the pipeline that
//! calls them: every import in `server/` points one way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use http::{HeaderMap, Method};

use super::auth::AuthConfig;
use super::faults::{FaultConfig, Faults};
use super::request::{Op, Query, Target};
use super::store::Store;
use crate::timefmt;

/// State shared by every connection of a running server.
pub struct Shared {
    pub store: Store,
    pub faults: Arc<Faults>,
    pub auth: Option<AuthConfig>,
    pub base_domains: Vec<String>,
    pub control_api: bool,
    /// Region id reported by GetBucketLocation / GetBucketInfo (e.g. `cn-hangzhou`).
    pub region: String,
    /// The fault settings given at start (what the control API's `reset` restores).
    pub initial_faults: FaultConfig,
    /// The HTTP client upload callbacks are sent with.
    pub callback_client: reqwest::Client,
    /// Whether callbacks may go to addresses other than loopback ones.
    pub allow_remote_callbacks: bool,
    request_seq: AtomicU64,
    request_prefix: u32,
}

/// What [`Shared::new`] takes besides the store and the faults.
pub struct SharedConfig {
    pub auth: Option<AuthConfig>,
    pub base_domains: Vec<String>,
    pub control_api: bool,
    pub region: String,
    pub initial_faults: FaultConfig,
    pub callback_client: reqwest::Client,
    pub allow_remote_callbacks: bool,
}

impl Shared {
    pub fn new(store: Store, faults: Arc<Faults>, config: SharedConfig) -> Self {
        Shared {
            store,
            faults,
            auth: config.auth,
            base_domains: config.base_domains,
            control_api: config.control_api,
            region: config.region,
            initial_faults: config.initial_faults,
            callback_client: config.callback_client,
            allow_remote_callbacks: config.allow_remote_callbacks,
            request_seq: AtomicU64::new(1),
            request_prefix: fastrand::u32(..),
        }
    }

    /// 24 upper-case hex digits: a per-process random prefix and a counter, so ids are unique and ordered.
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("{:08X}{:016X}", self.request_prefix, n)
    }
}

/// One OSS request, decoded.
pub struct Ctx {
    pub request_id: String,
    pub method: Method,
    pub target: Target,
    pub query: Query,
    pub headers: HeaderMap,
    /// The `Host` the client used (for `HostId` and `Location`).
    pub host: String,
    pub op: Op,
    /// The server clock (with the test offset) when the request arrived.
    pub now: SystemTime,
    /// The client's address (for the `${clientIp}` of upload callbacks).
    pub peer: Option<SocketAddr>,
}

impl Ctx {
    pub fn bucket(&self) -> &str {
        self.target.bucket.as_deref().unwrap_or("")
    }

    pub fn key(&self) -> &str {
        self.target.key.as_deref().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
    }

    pub fn now_secs(&self) -> i64 {
        timefmt::unix_secs(self.now)
    }
}
