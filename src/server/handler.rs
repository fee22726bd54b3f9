//! The request pipeline: addressing → routing → stats → faults → authentication → operation → common
//! response headers.
//!
//! Every response, errors included, carries `Date`, `x-oss-request-id` (24 hex), `Server: AliyunOSS` and
//! `x-oss-server-time` (the handling time in milliseconds, as OSS sends it). Errors on HEAD (and 304s) have
//! no body; HEAD errors carry the Base64 error XML in `x-oss-err` and the EC in `x-oss-ec`, which every SDK
//! decodes when the body is empty.
//!
//! The request body is always consumed before the answer (unless a fault resets the connection): clients
//! like `requests` write the whole body before reading, and an unread body would turn our error answer into
//! a broken pipe on their side.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use base64::Engine as _;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tracing::Instrument as _;

use super::auth::{self, AuthRequest};
use super::body::{self, Body, ConnCtl, RequestBody};
use super::context::{Ctx, Shared};
use super::control;
use super::error::OssError;
use super::faults::{DownMode, Faults, RequestIdentity};
use super::ops;
use super::request::{Op, Query, Target, is_virtual_host, resolve_target, route};
use crate::timefmt;

/// Records the outcome of a request in the stats even if its future is dropped (client gone, reset).
struct StatusGuard {
    faults: Arc<Faults>,
    op: &'static str,
    done: bool,
    conn: Arc<ConnCtl>,
}

impl Drop for StatusGuard {
    fn drop(&mut self) {
        // A reset records itself; anything else that ends a request without an answer is the client's doing.
        if !self.done && !self.conn.reset.is_cancelled() {
            self.faults.record_status(self.op, "aborted");
        }
    }
}

pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnCtl>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let request_id = shared.next_request_id();
    let (parts, incoming) = req.into_parts();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let now = shared.faults.now();

    if shared.control_api
        && parts.uri.path().starts_with(control::PREFIX)
        && !is_virtual_host(Some(&host), &shared.base_domains)
    {
        let resp = control::handle(&shared, &parts.method, parts.uri.path(), incoming).await;
        return Ok(finish(resp, &request_id, now, started));
    }

    let target = resolve_target(Some(&host), parts.uri.path(), &shared.base_domains);
    let has_copy_source = parts.headers.contains_key("x-oss-copy-source");
    let routed = target.and_then(|t| {
        let q = Query::parse(parts.uri.query())?;
        let op = route(&parts.method, &t, &q, has_copy_source)?;
        Ok((t, q, op))
    });
    let (target, query, op, early_error) = match routed {
        Ok((t, q, op)) => (t, q, op, None),
        Err(e) => (Target::default(), Query::default(), Op::Unknown, Some(e)),
    };
    let is_head = parts.method == Method::HEAD;
    let ctx = Ctx {
        request_id,
        method: parts.method,
        target,
        query,
        headers: parts.headers,
        host,
        op,
        now,
        peer: Some(peer),
    };
    let faults = shared.faults.clone();
    faults.record_request(op.name());
    let mut guard = StatusGuard { faults: faults.clone(), op: op.name(), done: false, conn: conn.clone() };

    let span = tracing::info_span!(
        "request",
        op = op.name(),
        request_id = %ctx.request_id,
        bucket = ctx.bucket(),
        key = ctx.key(),
        upload_id = ctx.query.get("uploadId").unwrap_or(""),
        part = ctx.query.get("partNumber").unwrap_or(""),
    );
    let resp = run(&shared, &conn, &ctx, incoming, early_error, is_head, started).instrument(span).await;
    faults.record_status(op.name(), resp.status().as_str());
    guard.done = true;
    Ok(resp)
}

async fn run(
    shared: &Shared,
    conn: &Arc<ConnCtl>,
    ctx: &Ctx,
    incoming: Incoming,
    early_error: Option<OssError>,
    is_head: bool,
    started: Instant,
) -> Response<Body> {
    let faults = &shared.faults;
    let op = ctx.op;
    // Down (either mode) also resets requests on connections that were already open.
    if faults.down_mode() != DownMode::Up {
        faults.record_down_drop();
        faults.record_status(op.name(), "reset");
        conn.reset.cancel();
        std::future::pending::<()>().await;
    }

    let has_body = ctx
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
        || ctx.headers.contains_key(header::TRANSFER_ENCODING);
    let part_number = ctx.query.get("partNumber").and_then(|p| p.parse().ok());
    let decision =
        faults.decide(RequestIdentity { op: op.name(), bucket: ctx.bucket(), key: ctx.key(), part_number, has_body });
    if !decision.delay.is_zero() {
        faults.record_delay();
        tokio::time::sleep(decision.delay).await;
    }
    let mut body = RequestBody::new(incoming, op.name(), faults.clone(), conn.clone(), decision.reset_after);

    let outcome = async {
        if let Some(e) = early_error {
            return Err(e);
        }
        if let Some(injected) = decision.error.as_ref().filter(|e| !e.after) {
            faults.record_injected_error(op.name());
            return Err(injected_error(injected));
        }
        if let Some(cfg) = &shared.auth {
            let req = AuthRequest {
                method: ctx.method.as_str(),
                bucket: ctx.target.bucket.as_deref(),
                key: ctx.target.key.as_deref(),
                query: ctx.query.pairs(),
                headers: &ctx.headers,
            };
            auth::verify(cfg, &req, ctx.now, faults.token_expired())?;
        }
        ops::dispatch(shared, ctx, &mut body).await
    }
    .await;

    // Consume what the operation left of the body (this is also where a planned reset happens).
    let drained = body.drain().await.is_ok();
    let mut outcome = outcome;
    if let Some(injected) = decision.error.as_ref().filter(|e| e.after) {
        faults.record_injected_error(op.name());
        outcome = Err(injected_error(injected));
    }
    let injected = decision.error.is_some();
    let resp = match outcome {
        Ok(resp) => resp,
        Err(e) => {
            if injected {
                tracing::info!(code = %e.code, status = e.status.as_u16(), "fault: answering with an injected error");
            } else if e.status.is_server_error() {
                tracing::warn!(code = %e.code, status = e.status.as_u16(), "answering with an error");
            } else {
                tracing::debug!(code = %e.code, status = e.status.as_u16(), "answering with an error");
            }
            error_response(&e, &ctx.request_id, &ctx.host, is_head)
        }
    };
    let mut resp = finish(resp, &ctx.request_id, ctx.now, started);
    if !drained {
        // The client broke its body: do not try to reuse the connection.
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    tracing::debug!(status = resp.status().as_u16(), "answered");
    resp
}

fn injected_error(e: &super::faults::InjectedError) -> OssError {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    OssError::new(status, e.code.clone(), e.message.clone())
}

/// Add the headers every OSS response carries.
fn finish(mut resp: Response<Body>, request_id: &str, now: SystemTime, started: Instant) -> Response<Body> {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&timefmt::rfc1123(now)) {
        h.insert(header::DATE, v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-oss-request-id", v);
    }
    h.insert(header::SERVER, HeaderValue::from_static("AliyunOSS"));
    if let Ok(v) = HeaderValue::from_str(&started.elapsed().as_millis().to_string()) {
        h.insert("x-oss-server-time", v);
    }
    resp
}

pub fn error_response(e: &OssError, request_id: &str, host: &str, is_head: bool) -> Response<Body> {
    let xml = e.to_xml(request_id, host);
    let mut builder = Response::builder().status(e.status);
    if let Ok(v) = HeaderValue::from_str(e.ec) {
        builder = builder.header("x-oss-ec", v);
    }
    for (name, value) in &e.headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            builder = builder.header(*name, v);
        }
    }
    let no_body = is_head || e.status == StatusCode::NOT_MODIFIED;
    let resp = if no_body {
        if is_head {
            let encoded = base64::engine::general_purpose::STANDARD.encode(xml.as_bytes());
            builder = builder.header("x-oss-err", encoded);
        }
        builder.header(header::CONTENT_LENGTH, "0").body(body::empty())
    } else {
        builder
            .header(header::CONTENT_TYPE, "application/xml")
            .header(header::CONTENT_LENGTH, xml.len().to_string())
            .body(body::full(xml))
    };
    resp.unwrap_or_else(|_| Response::new(body::empty()))
}
