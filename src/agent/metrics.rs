//! Prometheus metrics: counters the agent bumps as it works, gauges it sets every tick, served as text on
//! `--metrics-listen` (`GET /metrics`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Metrics {
    pub files_synced: AtomicU64,
    pub bytes_synced: AtomicU64,
    pub files_uploaded: AtomicU64,
    pub files_copied: AtomicU64,
    pub files_adopted: AtomicU64,
    pub files_revalidated: AtomicU64,
    pub objects_deleted: AtomicU64,
    pub errors: AtomicU64,
    pub scans: AtomicU64,
    // Gauges, set by the agent loop.
    pub queue_depth: AtomicU64,
    pub uploads_in_flight: AtomicU64,
    pub root_missing: AtomicU64,
    pub remote_reachable: AtomicU64,
    /// Paths that can never be mirrored (names that cannot be keys, paths over PATH_MAX).
    pub unmirrorable_paths: AtomicU64,
    /// The remote check (`agent::remote_check`): when it last finished, what it listed and found.
    pub remote_check_timestamp: AtomicU64,
    pub remote_check_objects: AtomicU64,
    pub remote_check_differences: AtomicU64,
    pub remote_unknown_objects: AtomicU64,
    /// 1 while the bucket does not exist.
    pub bucket_missing: AtomicU64,
    /// When a file was last verified on the remote (Unix seconds; 0: not yet in this run).
    pub last_sync_timestamp: AtomicU64,
    /// Files whose last attempt failed and that wait for a retry.
    pub files_failing: AtomicU64,
    // Copied from the engine's counters on every tick.
    pub bytes_uploaded: AtomicU64,
    pub parts_uploaded: AtomicU64,
    pub parts_resent: AtomicU64,
    pub parts_reused: AtomicU64,
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn set(gauge: &AtomicU64, n: u64) {
    gauge.store(n, Ordering::Relaxed);
}

impl Metrics {
    /// Ready to do its job: the remote answered the last request, the bucket exists, the watched directory is
    /// there. (`/readyz`; `/healthz` only says the process serves requests.)
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.bucket_missing.load(Ordering::Relaxed) != 0 {
            Err("the bucket does not exist")
        } else if self.root_missing.load(Ordering::Relaxed) != 0 {
            Err("the watched directory is missing or unmounted")
        } else if self.remote_reachable.load(Ordering::Relaxed) == 0 {
            Err("the remote is not reachable, or refuses the credentials")
        } else {
            Ok(())
        }
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let rows: &[(&str, &str, &str, &AtomicU64)] = &[
            (
                "ossmirror_files_synced_total",
                "counter",
                "Files verified on the remote (uploaded, copied, adopted or revalidated).",
                &self.files_synced,
            ),
            (
                "ossmirror_bytes_synced_total",
                "counter",
                "Size of the files verified on the remote.",
                &self.bytes_synced,
            ),
            ("ossmirror_files_uploaded_total", "counter", "Files uploaded through the engine.", &self.files_uploaded),
            (
                "ossmirror_files_copied_total",
                "counter",
                "Renamed files copied server-side instead of uploaded.",
                &self.files_copied,
            ),
            (
                "ossmirror_files_adopted_total",
                "counter",
                "Existing remote objects adopted after a local CRC-64 check.",
                &self.files_adopted,
            ),
            (
                "ossmirror_files_revalidated_total",
                "counter",
                "Files whose metadata changed but content did not (no upload).",
                &self.files_revalidated,
            ),
            ("ossmirror_objects_deleted_total", "counter", "Remote objects deleted (--delete).", &self.objects_deleted),
            ("ossmirror_errors_total", "counter", "Failed attempts (each is retried).", &self.errors),
            ("ossmirror_scans_total", "counter", "Scans of the tree or a subtree.", &self.scans),
            (
                "ossmirror_bytes_uploaded_total",
                "counter",
                "Body bytes sent in PutObject and UploadPart.",
                &self.bytes_uploaded,
            ),
            ("ossmirror_parts_uploaded_total", "counter", "Parts sent.", &self.parts_uploaded),
            (
                "ossmirror_parts_resent_total",
                "counter",
                "Parts sent again for a part number already sent (changed content or lost by the server).",
                &self.parts_resent,
            ),
            (
                "ossmirror_parts_reused_total",
                "counter",
                "Parts of interrupted uploads reused after verification.",
                &self.parts_reused,
            ),
            ("ossmirror_queue_depth", "gauge", "Files queued, running or waiting for a retry.", &self.queue_depth),
            ("ossmirror_uploads_in_flight", "gauge", "Files being handled right now.", &self.uploads_in_flight),
            (
                "ossmirror_root_missing",
                "gauge",
                "1 while the watched directory is missing or unmounted.",
                &self.root_missing,
            ),
            (
                "ossmirror_remote_reachable",
                "gauge",
                "1 when the last request to the remote succeeded.",
                &self.remote_reachable,
            ),
            (
                "ossmirror_unmirrorable_paths",
                "gauge",
                "Paths that can never be mirrored (names that cannot be object keys, paths too long to open).",
                &self.unmirrorable_paths,
            ),
            (
                "ossmirror_remote_check_timestamp_seconds",
                "gauge",
                "When the last check of the remote against the index finished (Unix time; 0: not yet).",
                &self.remote_check_timestamp,
            ),
            (
                "ossmirror_remote_check_objects",
                "gauge",
                "Objects the last remote check listed.",
                &self.remote_check_objects,
            ),
            (
                "ossmirror_remote_check_differences",
                "gauge",
                "Indexed files the last remote check found missing or changed on the remote (queued again).",
                &self.remote_check_differences,
            ),
            (
                "ossmirror_remote_unknown_objects",
                "gauge",
                "Objects under the prefix the index does not know, as of the last remote check.",
                &self.remote_unknown_objects,
            ),
            ("ossmirror_bucket_missing", "gauge", "1 while the bucket does not exist.", &self.bucket_missing),
            (
                "ossmirror_last_sync_timestamp_seconds",
                "gauge",
                "When a file was last verified on the remote (Unix time; 0: none in this run).",
                &self.last_sync_timestamp,
            ),
            (
                "ossmirror_files_failing",
                "gauge",
                "Files whose last attempt failed, waiting for a retry.",
                &self.files_failing,
            ),
        ];
        let mut out = String::with_capacity(4096);
        for &(name, kind, help, value) in rows {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", value.load(Ordering::Relaxed));
        }
        out
    }
}

/// Serve `GET /metrics`, `/healthz` and `/readyz` on `addr` until `stop` is cancelled. Returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics listener: accept failed");
                        continue;
                    }
                },
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let text = |status: StatusCode, body: String| {
                            Response::builder()
                                .status(status)
                                .header("content-type", "text/plain; charset=utf-8")
                                .body(Full::new(Bytes::from(body)))
                        };
                        let response = match req.uri().path() {
                            "/metrics" => Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(metrics.render()))),
                            "/healthz" => text(StatusCode::OK, "ok\n".into()),
                            "/readyz" => match metrics.ready() {
                                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                            },
                            _ => text(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n".into()),
                        };
                        response.map_err(std::io::Error::other)
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lists_every_metric_once() {
        let m = Metrics::default();
        add(&m.bytes_synced, 42);
        let text = m.render();
        assert!(text.contains("ossmirror_bytes_synced_total 42"));
        assert_eq!(text.matches("# TYPE").count(), 25);
        let names: std::collections::HashSet<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
        assert_eq!(names.len(), 25, "no metric is listed twice");
        assert!(text.contains("# TYPE ossmirror_queue_depth gauge"));
    }
}
