//! Start-up: where the state lives, who else is running, what the remote is, and what an earlier run left.
//!
//! Order matters: the state database is opened (recovered if damaged) and locked before anything touches
//! the remote, so two agents never work from one index; unfinished uploads are then resumed or aborted and
//! unknown old uploads under the prefix are aborted (no orphaned parts keep costing money).

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{AgentSettings, Env, state_dir};
use crate::remote::Dialect;
use crate::remote::oss::{OssClient, OssConfig};
use crate::remote::{Credentials, ListObjectsRequest, Remote, RemoteError, Throttle, list_all_uploads};
use crate::server::{RunningServer, Server, ServerConfig};
use crate::state::{Binding, Checkpoint, OpenReport, StateDb, UploadRowId};
use crate::watch::Filter;

use super::AgentError;

/// The default state database of an agent: one per watched directory, bucket, prefix *and* remote, so an
/// index is never reused for a remote it does not describe (see [`remote_identity`]).
pub fn default_state_db(settings: &AgentSettings, env: &dyn Env) -> PathBuf {
    let tag = settings.remote.endpoint.as_deref().map(|e| endpoint_tag(settings.remote.protocol, e));
    state_db_for(&settings.watch, &settings.bucket, &settings.prefix, tag.as_deref(), env)
}

/// [`default_state_db`] from its parts (`status` and `verify` find the agent's database so). `endpoint_tag`
/// is `None` for the embedded store, whose database keeps the name older builds gave every database (so a
/// quick start keeps its store across an upgrade; an old index, which names no remote, is re-proven).
pub fn state_db_for(watch: &Path, bucket: &str, prefix: &str, endpoint_tag: Option<&str>, env: &dyn Env) -> PathBuf {
    let base = state_db_stem(watch, bucket, prefix);
    let name = match endpoint_tag {
        Some(tag) => format!("{base}-{tag}.db"),
        None => format!("{base}.db"),
    };
    state_dir(env).join(name)
}

/// `BUCKET-DIRNAME-HASH`: readable, and unique per watched directory + bucket + prefix. Every database of
/// that combination starts with it (one per remote).
pub fn state_db_stem(watch: &Path, bucket: &str, prefix: &str) -> String {
    let watch = std::fs::canonicalize(watch).unwrap_or_else(|_| watch.to_path_buf());
    let mut h = blake3::Hasher::new();
    h.update(watch.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(bucket.as_bytes());
    h.update(b"\0");
    h.update(prefix.as_bytes());
    let base = watch.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "root".into());
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(40).collect()
    };
    format!("{}-{}-{}", clean(bucket), clean(&base), &h.finalize().to_hex()[..10])
}

/// A short tag of the protocol and endpoint, for database names.
pub fn endpoint_tag(protocol: Dialect, endpoint: &str) -> String {
    let place = format!("{} {}", protocol_name(protocol), canonical_endpoint(endpoint));
    blake3::hash(place.as_bytes()).to_hex()[..8].to_string()
}

fn protocol_name(protocol: Dialect) -> &'static str {
    match protocol {
        Dialect::Oss => "oss",
        Dialect::S3 => "s3",
    }
}

/// `scheme://host:port`, as requests reach it: a bare host means https (as the clients read it), names are
/// lower case, the default port is spelled out. Anything unparsable is kept as given (the client refuses
/// it anyway).
pub fn canonical_endpoint(endpoint: &str) -> String {
    let trimmed = endpoint.trim();
    let with_scheme = if trimmed.contains("://") { trimmed.to_string() } else { format!("https://{trimmed}") };
    match reqwest::Url::parse(&with_scheme) {
        Ok(url) => {
            let host = url.host_str().unwrap_or("").trim_end_matches('.').to_ascii_lowercase();
            let port = url.port_or_known_default().map(|p| p.to_string()).unwrap_or_default();
            format!("{}://{host}:{port}", url.scheme())
        }
        Err(_) => trimmed.to_string(),
    }
}

/// What a state database records as the remote it describes: protocol and endpoint, or the embedded
/// store's directory, plus bucket and prefix. Signature version, credentials, region and addressing style
/// are not part of it: changing them does not move a single object.
pub fn remote_identity(settings: &AgentSettings, embedded_root: Option<&Path>) -> String {
    let place = match (&settings.remote.endpoint, embedded_root) {
        (Some(endpoint), _) => format!("{} {}", protocol_name(settings.remote.protocol), canonical_endpoint(endpoint)),
        (None, Some(root)) => format!("embedded {}", std::path::absolute(root).unwrap_or(root.to_path_buf()).display()),
        (None, None) => "embedded".to_string(),
    };
    format!("{place} bucket={} prefix={}", settings.bucket, settings.prefix)
}

/// Bind the state database to the remote it now describes, and say what that meant.
pub async fn bind_remote(state: &StateDb, identity: String) -> Result<(), AgentError> {
    let db = state.clone();
    let shown = identity.clone();
    let binding = tokio::task::spawn_blocking(move || db.bind_remote(&identity))
        .await
        .map_err(|e| AgentError::Io(format!("binding the state database to its remote: {e}")))??;
    match binding {
        Binding::Same => {}
        Binding::New => tracing::info!(remote = %shown, "new state database for this remote"),
        Binding::Rebound { previous, forgotten_files, abandoned_uploads } => {
            let previous = previous.unwrap_or_else(|| "(not recorded: written by an older ossmirror)".into());
            tracing::warn!(
                remote = %shown, previous = %previous, files = forgotten_files, abandoned_uploads = abandoned_uploads.len(),
                "the state database described another remote: nothing in it is trusted here; every file is re-proven \
                 against this remote (adopted if an object with the same size and CRC-64 is there, else uploaded)"
            );
            for u in abandoned_uploads {
                tracing::warn!(bucket = %u.bucket, key = %u.key, upload_id = %u.upload_id,
                    "an unfinished multipart upload on the previous remote is left there; abort it with that remote's tools (or let its lifecycle rule do it)");
            }
        }
    }
    Ok(())
}

/// An exclusive lock held for the agent's lifetime: one agent per state database.
#[derive(Debug)]
pub struct AgentLock {
    _file: File,
    pub path: PathBuf,
}

pub fn lock(state_path: &Path) -> Result<AgentLock, AgentError> {
    let path = state_path.with_extension("agent.lock");
    // The state directory holds the index of every mirrored file (names, sizes) and, for the embedded
    // store, their contents: 0700 when we create it, and a warning when an existing one is open to others.
    StateDb::create_private_parents(&path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(dir)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                dir = %dir.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the state directory is readable by other users: it lists every mirrored file (and holds the embedded \
                 store's objects); make it private with chmod 700"
            );
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| AgentError::Io(format!("opening {}: {e}", path.display())))?;
    // flock: released by the kernel when the process dies, so a kill -9 never leaves a stale lock.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(AgentError::AlreadyRunning { state_db: state_path.to_path_buf() });
    }
    Ok(AgentLock { _file: file, path })
}

pub async fn open_state(path: &Path) -> Result<(StateDb, OpenReport), AgentError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || StateDb::open(&owned))
        .await
        .map_err(|e| AgentError::Io(format!("opening the state database: {e}")))?
        .map_err(AgentError::State)
}

/// Where the embedded store of the agent with this state database keeps its objects.
pub fn embedded_root(state_path: &Path) -> PathBuf {
    state_path.with_extension("store")
}

/// The local OSS-compatible server the agent runs when no endpoint is configured.
pub struct Embedded {
    pub server: RunningServer,
    pub root: PathBuf,
}

/// Start the embedded server (data next to the state database) and a client for it. Random credentials:
/// requests are signed like real ones, and nothing else on this machine can write to it.
pub async fn embedded(
    state_path: &Path,
    bucket: &str,
    throttle: Option<Arc<Throttle>>,
) -> Result<(Embedded, Arc<dyn Remote>), AgentError> {
    let root = embedded_root(state_path);
    let mut rng = fastrand::Rng::new();
    let token = |rng: &mut fastrand::Rng| (0..24).map(|_| rng.alphanumeric()).collect::<String>();
    let credentials = Credentials::new(format!("LOCAL{}", token(&mut rng)), token(&mut rng));
    let mut config = ServerConfig::new(&root);
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.credentials = Some(credentials.clone());
    config.buckets = vec![bucket.to_string()];
    let server = Server::start(config).await.map_err(|e| AgentError::Embedded(e.to_string()))?;
    let mut client = OssConfig::new(server.endpoint());
    client.region = Some("cn-hangzhou".into());
    client.credentials = Some(credentials);
    // Our own server accepts a Complete that leaves out parts past a shrunk file's end.
    client.complete_with_part_subset = true;
    client.throttle = throttle;
    let client = OssClient::new(client).map_err(|e| AgentError::Embedded(e.to_string()))?;
    Ok((Embedded { server, root }, Arc::new(client)))
}

/// Check that the bucket is reachable and readable; returns whether anything exists under `prefix`.
pub async fn probe(remote: &dyn Remote, bucket: &str, prefix: &str) -> Result<bool, RemoteError> {
    let request = ListObjectsRequest {
        prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
        max_keys: Some(1),
        ..Default::default()
    };
    let page = remote.list_objects(bucket, &request).await?;
    Ok(!page.objects.is_empty() || !page.common_prefixes.is_empty())
}

fn ours(bucket: &str, prefix: &str, upload_bucket: &str, key: &str) -> bool {
    upload_bucket == bucket && key.starts_with(prefix)
}

/// What recovery did, for the start-up log and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub kept: usize,
    pub aborted_abandoned: usize,
    pub aborted_orphans: usize,
}

/// Resume-or-abort every checkpoint, abort uploads salvaged from a damaged database, and abort unknown
/// uploads under the prefix older than `orphan_age`.
/// What this agent mirrors: checkpoints and uploads outside it are not its to keep.
pub struct Scope<'a> {
    pub root: &'a Path,
    pub bucket: &'a str,
    pub prefix: &'a str,
    pub filter: &'a Filter,
}

impl Scope<'_> {
    /// Whether a checkpoint of `local_path` → `bucket`/`key` is one this agent would still upload.
    fn covers(&self, bucket: &str, key: &str, local_path: &Path) -> bool {
        ours(self.bucket, self.prefix, bucket, key)
            && local_path.strip_prefix(self.root).is_ok_and(|rel| !self.filter.excludes_path(rel, false))
    }
}

pub async fn recover(
    state: &StateDb,
    report: &OpenReport,
    remote: &dyn Remote,
    scope: &Scope<'_>,
    orphan_age: Duration,
) -> Result<Recovery, AgentError> {
    let (bucket, prefix) = (scope.bucket, scope.prefix);
    let mut recovery = Recovery::default();
    let abort = |b: String, k: String, u: String, why: &'static str| async move {
        match remote.abort_multipart(&b, &k, &u).await {
            Ok(()) => {
                tracing::info!(bucket = %b, key = %k, upload_id = %u, reason = why, "aborted multipart upload");
                true
            }
            Err(e) => {
                tracing::warn!(bucket = %b, key = %k, upload_id = %u, error = %e, "could not abort multipart upload");
                false
            }
        }
    };
    if let Some(q) = &report.quarantined {
        tracing::warn!(moved_to = %q.moved_to.display(), reason = %q.reason,
            "the state database was damaged: it was moved aside and a fresh one started; files are re-verified (adopted or uploaded)");
        for s in q.salvaged_uploads.iter().filter(|s| ours(bucket, prefix, &s.bucket, &s.key)) {
            if abort(s.bucket.clone(), s.key.clone(), s.upload_id.clone(), "listed in the damaged state database").await
            {
                recovery.aborted_abandoned += 1;
            }
        }
    }
    let mut known = std::collections::HashSet::new();
    for checkpoint in state.list_checkpoints()? {
        match checkpoint {
            Checkpoint::Valid { upload, .. } => {
                let in_scope = scope.covers(&upload.bucket, &upload.key, &upload.local_path);
                if in_scope && upload.local_path.is_file() {
                    known.insert(upload.upload_id.clone());
                    recovery.kept += 1;
                    continue;
                }
                let why = if in_scope {
                    "its file is gone"
                } else {
                    "it is outside the watched directory or prefix, or excluded"
                };
                if abort(upload.bucket.clone(), upload.key.clone(), upload.upload_id.clone(), why).await {
                    recovery.aborted_abandoned += 1;
                }
                state.delete_upload(upload.id)?;
            }
            Checkpoint::Damaged { id, bucket: b, key: k, upload_id: u, reason } => {
                tracing::warn!(checkpoint = id.0, %reason, "damaged checkpoint: not trusted");
                if let (Some(b), Some(k)) = (b, k)
                    && ours(bucket, prefix, &b, &k)
                {
                    for u in damaged_checkpoint_uploads(state, remote, id, &b, &k, u).await {
                        if abort(b.clone(), k.clone(), u, "its checkpoint was damaged").await {
                            recovery.aborted_abandoned += 1;
                        }
                    }
                }
                state.delete_upload(id)?;
            }
        }
    }
    // Keys a run of this agent was uploading when it died (its claim outlived it). A kill between
    // InitiateMultipartUpload's answer and the checkpoint write leaves an upload no checkpoint knows: it is
    // ours if it was initiated after that claim was taken (15 minutes of slack for clock skew).
    let died_uploading: std::collections::HashMap<String, SystemTime> = match state.list_in_flight() {
        Ok(claims) => claims
            .into_iter()
            .filter(|c| !c.live && ours(bucket, prefix, &c.bucket, &c.key))
            .map(|c| (c.key, c.started_at))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not read upload claims");
            Default::default()
        }
    };
    if let Err(e) = state.prune_stale_claims() {
        tracing::warn!(error = %e, "could not prune stale upload claims");
    }
    match list_all_uploads(remote, bucket, (!prefix.is_empty()).then_some(prefix)).await {
        Ok(uploads) => {
            let cutoff = SystemTime::now() - orphan_age;
            for u in uploads {
                if known.contains(&u.upload_id) {
                    continue;
                }
                let slack = Duration::from_secs(15 * 60);
                let left_by_a_crash = died_uploading
                    .get(&u.key)
                    .is_some_and(|&claimed| u.initiated.is_some_and(|t| t + slack >= claimed));
                if left_by_a_crash {
                    let why = "started by a run of this agent that was killed before recording it";
                    if abort(bucket.to_string(), u.key, u.upload_id, why).await {
                        recovery.aborted_orphans += 1;
                    }
                    continue;
                }
                // An upload without a date cannot be shown old: leave it for its owner.
                if u.initiated.is_some_and(|t| t < cutoff)
                    && abort(
                        bucket.to_string(),
                        u.key,
                        u.upload_id,
                        "orphaned (older than --orphan-age, unknown to this agent)",
                    )
                    .await
                {
                    recovery.aborted_orphans += 1;
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list unfinished uploads; orphan cleanup skipped this time"),
    }
    Ok(recovery)
}

/// The server-side uploads a damaged checkpoint stands for. The stored upload id may be the damage itself
/// (aborting a made-up id "succeeds" and would leave the real upload behind), so it is used only if the
/// checkpoint's MACs confirm it; otherwise the uploads of this key that the MACs confirm; and only when
/// nothing can be confirmed, the stored id, best effort.
async fn damaged_checkpoint_uploads(
    state: &StateDb,
    remote: &dyn Remote,
    row: UploadRowId,
    bucket: &str,
    key: &str,
    stored: Option<String>,
) -> Vec<String> {
    let confirms = |upload_id: &str| state.checkpoint_confirms_upload_id(row, upload_id).unwrap_or(false);
    if let Some(u) = stored.as_deref().filter(|u| confirms(u)) {
        return vec![u.to_string()];
    }
    let confirmed: Vec<String> = match list_all_uploads(remote, bucket, Some(key)).await {
        Ok(listed) => {
            listed.into_iter().filter(|u| u.key == key && confirms(&u.upload_id)).map(|u| u.upload_id).collect()
        }
        Err(e) => {
            tracing::warn!(%bucket, %key, error = %e, "could not list uploads to find a damaged checkpoint's upload");
            Vec::new()
        }
    };
    if confirmed.is_empty() { stored.into_iter().collect() } else { confirmed }
}
