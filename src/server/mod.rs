//! `ossmirror serve`: a local OSS-compatible server that Alibaba's official SDKs accept.
//!
//! It is the store every test of the product runs against and the agent's embedded default when no endpoint
//! is configured, so it aims to be faithful (OSS's answers, headers, error codes and quirks, see
//! OSS-PROTOCOL.md §11), robust (a malformed request gets an OSS error, never a panic) and crash-safe (a
//! SIGKILL at any instant never leaves a torn object, and multipart uploads survive restarts).
//!
//! Layout, every import pointing down this list:
//! - this module: configuration, the accept loop, per-connection control (a fault can abort a TCP
//!   connection with a real RST mid-body) and the hourly lifecycle task;
//! - `handler`: the request pipeline (addressing, routing, stats, faults, authentication, operation,
//!   common headers); [`control`]: the test-only JSON API;
//! - `context`: what handlers work with (`Shared`, the running server; `Ctx`, one request);
//! - `ops`: the operations, one file per family (bucket and its configurations, listing, object, multipart);
//! - `request`: addressing (path style / virtual host) and routing to an operation; `auth`: Signature V1 /
//!   V4, header and presigned, STS tokens; `body`: streaming bodies; `callback`: upload callbacks;
//! - [`lifecycle`]: lifecycle rules (XML in and out, validation, when a rule applies); `tags`: object tags;
//! - [`store`]: the SQLite index plus immutable blob files, versions, the lifecycle pass, and the commit
//!   protocol;
//! - [`faults`]: seeded fault injection, the request and lifecycle clocks, exact stats; `xml`, `error`.
//!
//! Embedding:
//! ```no_run
//! # async fn demo() -> Result<(), ossmirror::server::ServerError> {
//! use ossmirror::server::{Server, ServerConfig};
//! let mut config = ServerConfig::new("/tmp/oss-data");
//! config.listen = "127.0.0.1:0".parse().unwrap();
//! config.buckets = vec!["demo".into()];
//! let running = Server::start(config).await?;
//! println!("endpoint http://{}", running.addr());
//! running.shutdown().await;
//! # Ok(()) }
//! ```

mod auth;
mod body;
mod callback;
mod context;
pub mod control;
mod error;
pub mod faults;
mod handler;
pub mod lifecycle;
mod ops;
mod request;
pub mod store;
mod tags;
mod xml;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::{OssError, ServerError};
pub use faults::{DownMode, FaultAction, FaultConfig, Faults, ScriptedFault, Stats};

use crate::remote::Credentials;
use body::ConnCtl;
use context::{Shared, SharedConfig};

/// How long in-flight requests may take to finish after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// OSS applies lifecycle rules once a day; a local server can afford to look every hour.
pub const DEFAULT_LIFECYCLE_INTERVAL: Duration = Duration::from_secs(3600);

/// Everything needed to run a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory holding the index and the data (created if missing; one server at a time).
    pub root: PathBuf,
    pub listen: SocketAddr,
    /// When set, every request must be signed with these credentials; when their `session_token` is set,
    /// requests must carry it too. When `None`, any request is accepted.
    pub credentials: Option<Credentials>,
    /// When set, V4 signatures must be scoped to this region. Also reported as the buckets' location
    /// (`oss-<region>`; default `cn-hangzhou`).
    pub region: Option<String>,
    /// Host suffixes for virtual-hosted requests (`<bucket>.<domain>`). Empty: any non-IP host name with a
    /// dot is virtual-hosted by its first label.
    pub base_domains: Vec<String>,
    pub faults: FaultConfig,
    /// Serve the test-only control API under `/_ossmirror/`.
    pub control_api: bool,
    /// fsync data and the index on every commit (turn off only for throwaway test data).
    pub fsync: bool,
    /// Buckets to create at start if missing.
    pub buckets: Vec<String>,
    /// Let upload callbacks go to addresses other than loopback ones (off: every callback stays on this
    /// machine).
    pub allow_remote_callbacks: bool,
    /// How often the lifecycle rules are applied (`None`: only through the control API).
    pub lifecycle_interval: Option<Duration>,
}

impl ServerConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ServerConfig {
            root: root.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            credentials: None,
            region: None,
            base_domains: Vec::new(),
            faults: FaultConfig::default(),
            control_api: false,
            fsync: true,
            buckets: Vec::new(),
            allow_remote_callbacks: false,
            lifecycle_interval: Some(DEFAULT_LIFECYCLE_INTERVAL),
        }
    }
}

/// Entry point.
pub struct Server;

impl Server {
    /// Open the store, bind the listener and start serving in the background.
    pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
        for b in &config.buckets {
            if !request::valid_bucket_name(b) {
                return Err(ServerError::Config(format!("invalid bucket name {b:?}")));
            }
        }
        let (root, fsync) = (config.root.clone(), config.fsync);
        let store = tokio::task::spawn_blocking(move || store::Store::open(&root, fsync))
            .await
            .map_err(|_| ServerError::TaskFailed)??;
        let now = crate::timefmt::unix_secs(std::time::SystemTime::now());
        for b in &config.buckets {
            let (s, name) = (store.clone(), b.clone());
            let created = tokio::task::spawn_blocking(move || s.create_bucket(&name, "private", now))
                .await
                .map_err(|_| ServerError::TaskFailed)?
                .map_err(|e| ServerError::Corrupt(e.to_string()))?;
            if created {
                tracing::info!(bucket = %b, "bucket created");
            }
        }

        let listener = bind(config.listen).map_err(|e| ServerError::io(format!("listen on {}", config.listen), e))?;
        let addr = listener.local_addr().map_err(|e| ServerError::io("read the bound address", e))?;
        let faults = Arc::new(Faults::new(config.faults.clone()));
        let auth = config.credentials.as_ref().map(|c| auth::AuthConfig {
            access_key_id: c.access_key_id.clone(),
            access_key_secret: c.access_key_secret.clone(),
            session_token: c.session_token.clone(),
            region: config.region.clone(),
        });
        let callback_client = callback::client()
            .map_err(|e| ServerError::Config(format!("cannot build the HTTP client for upload callbacks: {e}")))?;
        let shared = Arc::new(Shared::new(
            store.clone(),
            faults.clone(),
            SharedConfig {
                auth,
                base_domains: config.base_domains.clone(),
                control_api: config.control_api,
                region: config.region.clone().unwrap_or_else(|| "cn-hangzhou".into()),
                initial_faults: config.faults.clone(),
                callback_client,
                allow_remote_callbacks: config.allow_remote_callbacks,
            },
        ));
        let shutdown = CancellationToken::new();
        if let Some(every) = config.lifecycle_interval {
            tokio::spawn(lifecycle_loop(store.clone(), faults.clone(), every, shutdown.clone()));
        }
        let task = tokio::spawn(accept_loop(listener, addr, shared, shutdown.clone()));
        tracing::info!(%addr, root = %config.root.display(), auth = config.credentials.is_some(), "ossmirror serve listening");
        Ok(RunningServer { addr, faults, store, shutdown, task: Some(task) })
    }
}

/// A server running in the background. Dropping it stops accepting connections; [`RunningServer::shutdown`]
/// also waits for in-flight requests.
pub struct RunningServer {
    addr: SocketAddr,
    faults: Arc<Faults>,
    store: store::Store,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// The bound address (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for path-style clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fault settings, the clock, the outage mode and the stats, for in-process tests.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    pub fn stats(&self) -> Stats {
        self.faults.stats()
    }

    pub fn store(&self) -> &store::Store {
        &self.store
    }

    /// Stop accepting, let in-flight requests finish (up to a grace period), then return.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        tracing::info!(addr = %self.addr, "ossmirror serve stopped");
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Apply the lifecycle rules every `every`, on the lifecycle clock, until shutdown. A failed pass is logged
/// and tried again next time.
async fn lifecycle_loop(store: store::Store, faults: Arc<Faults>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let (s, now) = (store.clone(), faults.lifecycle_now());
        match tokio::task::spawn_blocking(move || s.lifecycle_pass(now)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "lifecycle pass failed; it runs again at the next interval"),
            Err(_) => tracing::error!("lifecycle pass panicked; it runs again at the next interval"),
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // Rebinding the same port after a "refuse" outage must not wait for TIME_WAIT sockets.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let mut listener = Some(listener);
    let mut down = shared.faults.subscribe_down();
    loop {
        let mode = *down.borrow_and_update();
        if mode == DownMode::Refuse {
            if listener.take().is_some() {
                tracing::warn!(%addr, "outage: listening socket closed, connections are refused");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = down.changed() => if changed.is_err() { break },
            }
            continue;
        }
        let current = match listener.take() {
            Some(l) => l,
            None => match bind(addr) {
                Ok(l) => {
                    tracing::info!(%addr, "outage over: listening again");
                    l
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot listen again yet");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    continue;
                }
            },
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = down.changed() => {
                if changed.is_err() {
                    break;
                }
                listener = Some(current);
            }
            accepted = current.accept() => {
                listener = Some(current);
                match accepted {
                    Ok((stream, peer)) => {
                        if shared.faults.down_mode() != DownMode::Up {
                            shared.faults.record_down_connection();
                        }
                        tracker.spawn(serve_connection(stream, peer, shared.clone(), shutdown.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), tracker.wait()).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period");
    }
}

/// Abort a TCP connection: with a zero linger, closing the socket sends RST instead of FIN.
fn set_zero_linger(fd: RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `fd` is the socket of a connection we still own (the caller drops it right after), and the
    // option value is a properly sized `linger` on the stack.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let ctl = Arc::new(ConnCtl::default());
    let (svc_shared, svc_ctl) = (shared.clone(), ctl.clone());
    let service = service_fn(move |req| handler::handle(svc_shared.clone(), svc_ctl.clone(), peer, req));
    let conn =
        http1::Builder::new().timer(TokioTimer::new()).keep_alive(true).serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = ctl.reset.cancelled() => {
            set_zero_linger(fd);
            tracing::debug!(%peer, "connection reset");
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = ctl.reset.cancelled() => set_zero_linger(fd),
                _ = tokio::time::sleep(SHUTDOWN_GRACE) => {}
            }
        }
    }
    // `conn` (and with it the socket) is dropped here, after the linger option was set if needed.
}
