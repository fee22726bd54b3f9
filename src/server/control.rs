//! The test-only control API, served under `/_ossmirror/` when `--enable-control-api` is given
//! (path-style requests only; no authentication; never faulted, never counted in the stats).
//!
//! Every body is JSON; every answer is JSON (`{"error": "…"}` with 400/404/405 on a bad call).
//!
//! | method and path | body | effect |
//! |---|---|---|
//! | `GET /_ossmirror/health` | | `{"ok": true}` |
//! | `GET /_ossmirror/faults` | | the random fault settings |
//! | `PUT /_ossmirror/faults` | `{"error_rate":0.1, "reset_rate":0.05, "reset_after":65536, "latency_ms":20, "seed":7}` (any subset) | merge into the settings; attempt counters restart |
//! | `GET /_ossmirror/script` | | pending scripted faults |
//! | `POST /_ossmirror/script` | one rule or an array of rules (below) | append |
//! | `DELETE /_ossmirror/script` | | drop all pending rules |
//! | `GET`/`PUT /_ossmirror/clock` | `{"offset_secs": 3600}` | shift the server clock (provokes `RequestTimeTooSkewed`; `Date` follows) |
//! | `GET`/`PUT /_ossmirror/token` | `{"expired": true}` | the configured session token answers `SecurityTokenExpired` |
//! | `GET`/`PUT /_ossmirror/down` | `{"mode":"drop"}`, `{"mode":"refuse","duration_ms":2000}`, `{"mode":"up"}` | simulate an outage |
//! | `GET /_ossmirror/lifecycle` | | `{"offset_secs": …, "now": …}`: the lifecycle clock (Unix seconds) |
//! | `POST /_ossmirror/lifecycle/run` | `{"advance_secs": 259200}` (optional) | move the lifecycle clock forward, then apply every bucket's lifecycle rules at it; answers what the pass did (`aborted_uploads`, `expired_objects`, `expired_versions`, `removed_delete_markers`) |
//! | `GET /_ossmirror/stats` | | request statistics (below) |
//! | `POST /_ossmirror/stats/reset` | | zero the statistics |
//! | `POST /_ossmirror/reset` | | everything back to the start-up state (faults from the command line, no rules, both clocks, token, up, zero stats) |
//!
//! A scripted rule applies to the next `times` (default 1) requests matching `op` (the operation name used
//! in the stats, e.g. `UploadPart`), and optionally `key` and `part_number`, and does one of:
//! - `"error": {"status": 503, "code": "ServiceUnavailable", "message": "…", "after": false}`: answer this OSS
//!   error after reading the body, without acting; with `"after": true`, act first, then answer the error
//!   (a lost response);
//! - `"reset": {"after_bytes": 1000}`: abort the TCP connection (RST) after exactly that many body bytes, or
//!   at the end of a shorter body;
//! - `"delay": {"ms": 500}`.
//!
//! Example: `{"op":"UploadPart","part_number":3,"times":2,"error":{"status":500,"code":"InternalError"}}`.
//!
//! Down modes: `drop` accepts connections but resets every OSS request (also on kept-alive connections);
//! the control API keeps answering, so `{"mode":"up"}` ends it. `refuse` closes the listening socket, so new
//! connections get ECONNREFUSED and requests on kept-alive connections are reset; the control API is then
//! unreachable, so `refuse` requires `duration_ms` (the embedding API, `RunningServer::faults()`, can end it
//! at any time).
//!
//! Stats (`GET /_ossmirror/stats`):
//! ```json
//! {"requests": 12, "body_bytes": 31457280,
//!  "operations": {"UploadPart": {"requests": 4, "body_bytes": 31457280,
//!                                "statuses": {"200": 3, "reset": 1}, "injected_errors": 0, "injected_resets": 1}},
//!  "faults": {"errors": 0, "resets": 1, "delays": 0, "down_drops": 0, "down_connections": 0}}
//! ```
//! `body_bytes` counts request-body bytes the server consumed; for a reset after K bytes that is exactly K.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{self, Body};
use super::context::Shared;
use super::faults::{DownMode, FaultConfig, ScriptedFault};

pub const PREFIX: &str = "/_ossmirror/";
const MAX_BODY: usize = 1 << 20;

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let text = value.to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, text.len().to_string())
        .body(body::full(text))
        .unwrap_or_else(|_| Response::new(body::empty()))
}

fn ok(value: Value) -> Response<Body> {
    json_response(StatusCode::OK, &value)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({ "error": message.into() }))
}

async fn read_json(body: Incoming) -> Result<Value, String> {
    let bytes: Bytes =
        Limited::new(body, MAX_BODY).collect().await.map_err(|e| format!("cannot read the body: {e}"))?.to_bytes();
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON: {e}"))
}

fn parse<T: for<'de> Deserialize<'de>>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("invalid request: {e}"))
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockBody {
    offset_secs: i64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LifecycleRunBody {
    #[serde(default)]
    advance_secs: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    expired: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownBody {
    mode: DownMode,
    #[serde(default)]
    duration_ms: Option<u64>,
}

pub async fn handle(shared: &Shared, method: &Method, path: &str, body: Incoming) -> Response<Body> {
    let route = path.strip_prefix(PREFIX).unwrap_or("").trim_end_matches('/');
    let value = match read_json(body).await {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if (method, route) == (&Method::POST, "lifecycle/run") {
        return run_lifecycle(shared, value).await;
    }
    match handle_route(shared, method, route, value) {
        Ok(resp) => resp,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// Advance the lifecycle clock and run a pass (blocking store work, on the blocking pool).
async fn run_lifecycle(shared: &Shared, value: Value) -> Response<Body> {
    let b: LifecycleRunBody = if value.is_null() {
        LifecycleRunBody::default()
    } else {
        match parse(value) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        }
    };
    let offset = shared.faults.advance_lifecycle_clock(b.advance_secs);
    let now = shared.faults.lifecycle_now();
    tracing::info!(advance_secs = b.advance_secs, offset_secs = offset, now, "control: lifecycle pass requested");
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || store.lifecycle_pass(now)).await {
        Ok(Ok(report)) => ok(json!({ "offset_secs": offset, "report": to_value(&report) })),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the lifecycle pass failed: {e}")),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the lifecycle pass panicked"),
    }
}

fn handle_route(shared: &Shared, method: &Method, route: &str, value: Value) -> Result<Response<Body>, String> {
    let faults = &shared.faults;
    Ok(match (method, route) {
        (&Method::GET, "health") => ok(json!({ "ok": true })),
        (&Method::GET, "faults") => ok(to_value(&faults.config())),
        (&Method::PUT, "faults") => {
            let mut current = to_value(&faults.config());
            let Value::Object(changes) = value else { return Err("expected a JSON object".into()) };
            if let Value::Object(map) = &mut current {
                for (k, v) in changes {
                    map.insert(k, v);
                }
            }
            let config: FaultConfig = parse(current)?;
            if !(0.0..=1.0).contains(&config.error_rate) || !(0.0..=1.0).contains(&config.reset_rate) {
                return Err("rates must be between 0 and 1".into());
            }
            tracing::info!(?config, "control: fault settings changed");
            faults.set_config(config.clone());
            ok(to_value(&config))
        }
        (&Method::GET, "script") => ok(to_value(&faults.scripts())),
        (&Method::POST, "script") => {
            let rules: Vec<ScriptedFault> = match value {
                Value::Array(_) => parse(value)?,
                other => vec![parse(other)?],
            };
            for rule in rules {
                tracing::info!(?rule, "control: scripted fault added");
                faults.add_script(rule);
            }
            ok(to_value(&faults.scripts()))
        }
        (&Method::DELETE, "script") => {
            faults.clear_scripts();
            ok(json!([]))
        }
        (&Method::GET, "clock") => ok(json!({ "offset_secs": faults.clock_offset() })),
        (&Method::PUT, "clock") => {
            let b: ClockBody = parse(value)?;
            tracing::info!(offset_secs = b.offset_secs, "control: clock offset changed");
            faults.set_clock_offset(b.offset_secs);
            ok(json!({ "offset_secs": b.offset_secs }))
        }
        (&Method::GET, "token") => ok(json!({ "expired": faults.token_expired() })),
        (&Method::PUT, "token") => {
            let b: TokenBody = parse(value)?;
            tracing::info!(expired = b.expired, "control: session token state changed");
            faults.set_token_expired(b.expired);
            ok(json!({ "expired": b.expired }))
        }
        (&Method::GET, "down") => ok(json!({ "mode": to_value(&faults.down_mode()) })),
        (&Method::PUT, "down") => {
            let b: DownBody = parse(value)?;
            if b.mode == DownMode::Refuse && b.duration_ms.is_none() {
                return Err("mode refuse makes the control API unreachable: give duration_ms".into());
            }
            tracing::warn!(mode = ?b.mode, duration_ms = ?b.duration_ms, "control: outage mode changed");
            let generation = faults.set_down(b.mode);
            if let Some(ms) = b.duration_ms.filter(|_| b.mode != DownMode::Up) {
                let faults = faults.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    faults.end_down(generation);
                });
            }
            ok(json!({ "mode": to_value(&b.mode), "duration_ms": b.duration_ms }))
        }
        (&Method::GET, "lifecycle") => {
            ok(json!({ "offset_secs": faults.lifecycle_offset(), "now": faults.lifecycle_now() }))
        }
        (&Method::GET, "stats") => ok(to_value(&faults.stats())),
        (&Method::POST, "stats/reset") => {
            faults.reset_stats();
            ok(to_value(&faults.stats()))
        }
        (&Method::POST, "reset") => {
            faults.set_config(shared.initial_faults.clone());
            faults.clear_scripts();
            faults.set_clock_offset(0);
            faults.reset_lifecycle_clock();
            faults.set_token_expired(false);
            faults.set_down(DownMode::Up);
            faults.reset_stats();
            ok(json!({ "ok": true }))
        }
        (
            _,
            "health" | "faults" | "script" | "clock" | "token" | "down" | "stats" | "stats/reset" | "reset"
            | "lifecycle" | "lifecycle/run",
        ) => error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {route}")),
        _ => error(StatusCode::NOT_FOUND, format!("no control endpoint {route:?}")),
    })
}
