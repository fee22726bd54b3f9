//! A loopback fake of the cloud services the credential chain talks to: the ECS instance metadata service
//! (IMDSv2), STS (`AssumeRole`, `AssumeRoleWithOIDC`) and a credentials URI, in one blocking HTTP server on
//! `127.0.0.1:0`. Every request is recorded, so a test can check exactly what the agent sent.
//!
//! ```ignore
//! let cloud = FakeCloud::start();
//! cloud.issue(|n| Issued::new("STS.id", "secret", if n == 1 { "stale" } else { "token" }));
//! cloud.set_lifetime(Duration::from_secs(3));
//! cloud.set_role(Some("ossmirror-role"));
//! cloud.set_sts_caller("CALLERID", "CALLERSECRET");  // AssumeRole signatures are verified with it
//! // OSSMIRROR_ECS_METADATA_ENDPOINT = OSSMIRROR_STS_ENDPOINT = cloud.endpoint()
//! // ALIBABA_CLOUD_CREDENTIALS_URI = cloud.endpoint() + "/credentials"
//! let sent = cloud.requests();
//! ```
//!
//! The metadata service answers as ECS does: `PUT /latest/api/token` needs
//! `X-aliyun-ecs-metadata-token-ttl-seconds` and returns a token, which the other metadata paths then
//! require in `X-aliyun-ecs-metadata-token` (unless [`FakeCloud::allow_imds_v1`]). STS checks the RPC
//! signature of `AssumeRole` with its own implementation of the algorithm (not the library's), and answers
//! `SignatureDoesNotMatch` as STS would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_json::json;

/// RFC 3986 unreserved characters stay; everything else is escaped (the RPC signature's encoding).
const RPC_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Temporary credentials the fake hands out.
#[derive(Debug, Clone)]
pub struct Issued {
    pub id: String,
    pub secret: String,
    pub token: String,
}

impl Issued {
    pub fn new(id: &str, secret: &str, token: &str) -> Issued {
        Issued { id: id.into(), secret: secret.into(), token: token.into() }
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    /// The form body (`application/x-www-form-urlencoded`), decoded.
    pub form: Vec<(String, String)>,
    /// For `AssumeRole`: whether the signature checked out against the configured caller.
    pub signature_ok: Option<bool>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A query or form parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().chain(&self.form).find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn is_credentials_fetch(&self) -> bool {
        self.method == "GET" && self.path.starts_with(ROLES_PATH) && self.path.len() > ROLES_PATH.len()
    }
}

const ROLES_PATH: &str = "/latest/meta-data/ram/security-credentials/";

type Issuer = Box<dyn Fn(u32) -> Issued + Send>;

struct State {
    requests: Vec<Recorded>,
    issuer: Issuer,
    /// Credentials handed out so far (all sources together): the argument of the issuer.
    issued: u32,
    lifetime: Duration,
    role: Option<String>,
    imds_tokens: Vec<String>,
    imds_v1: bool,
    sts_caller: Option<(String, String)>,
    oidc_token: Option<String>,
}

pub struct FakeCloud {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeCloud {
    /// Listen on a free loopback port. Defaults: credentials `FAKEID`/`FAKESECRET`/`FAKETOKEN` valid for an
    /// hour, no RAM role attached, IMDSv2 required, any STS caller accepted.
    pub fn start() -> FakeCloud {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake cloud");
        let addr = listener.local_addr().expect("its address");
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            issuer: Box::new(|_| Issued::new("FAKEID", "FAKESECRET", "FAKETOKEN")),
            issued: 0,
            lifetime: Duration::from_secs(3600),
            role: None,
            imds_tokens: Vec::new(),
            imds_v1: false,
            sts_caller: None,
            oidc_token: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        // A broken client connection is the client's problem; the fake goes on.
                        let _ = serve_one(stream, &state);
                    }
                }
            })
        };
        FakeCloud { addr, state, stop, thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("the fake cloud's state")
    }

    /// What the `n`-th credentials handed out (from 1, all sources together) are.
    pub fn issue(&self, issuer: impl Fn(u32) -> Issued + Send + 'static) {
        self.state().issuer = Box::new(issuer);
    }

    /// How long handed-out credentials are valid (their `Expiration`, at one-second resolution).
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.state().lifetime = lifetime;
    }

    /// The RAM role attached to the "instance" (`None`: the metadata service says none).
    pub fn set_role(&self, role: Option<&str>) {
        self.state().role = role.map(str::to_string);
    }

    /// Accept metadata requests without a token (an old metadata service).
    pub fn allow_imds_v1(&self) {
        self.state().imds_v1 = true;
    }

    /// The key `AssumeRole` must be signed with.
    pub fn set_sts_caller(&self, id: &str, secret: &str) {
        self.state().sts_caller = Some((id.into(), secret.into()));
    }

    /// The token `AssumeRoleWithOIDC` must carry.
    pub fn set_oidc_token(&self, token: &str) {
        self.state().oidc_token = Some(token.into());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// Credentials handed out so far.
    pub fn issued(&self) -> u32 {
        self.state().issued
    }

    pub fn clear(&self) {
        self.state().requests.clear();
    }
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else { return Ok(()) };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length: usize =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), decode_pairs(q)),
        None => (target.clone(), Vec::new()),
    };
    let form = decode_pairs(&String::from_utf8_lossy(&body));
    let mut request = Recorded { method, path, query, headers, form, signature_ok: None };
    let (status, content_type, answer) = {
        let mut s = state.lock().expect("the fake cloud's state");
        let answer = route(&mut s, &mut request);
        s.requests.push(request);
        answer
    };
    let mut out = stream;
    let date = httpdate::fmt_http_date(SystemTime::now());
    write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nDate: {date}\r\nConnection: close\r\n\r\n",
        answer.len()
    )?;
    out.write_all(answer.as_bytes())?;
    out.flush()
}

fn decode_pairs(text: &str) -> Vec<(String, String)> {
    let decode = |s: &str| percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// `(status, content type, body)` for a request.
fn route(s: &mut State, r: &mut Recorded) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain";
    const JSON: &str = "application/json";
    match (r.method.as_str(), r.path.as_str()) {
        ("PUT", "/latest/api/token") => match r.header("x-aliyun-ecs-metadata-token-ttl-seconds") {
            Some(ttl) if ttl.parse::<u32>().is_ok_and(|t| (1..=21600).contains(&t)) => {
                let token = format!("imds-token-{}", s.imds_tokens.len() + 1);
                s.imds_tokens.push(token.clone());
                (200, TEXT, token)
            }
            _ => (400, TEXT, "missing or bad X-aliyun-ecs-metadata-token-ttl-seconds".into()),
        },
        ("GET", path) if path.starts_with(ROLES_PATH) => {
            let token_ok =
                r.header("x-aliyun-ecs-metadata-token").is_some_and(|t| s.imds_tokens.iter().any(|k| k == t));
            if !token_ok && !s.imds_v1 {
                return (401, TEXT, "an IMDSv2 token is required".into());
            }
            let asked = &path[ROLES_PATH.len()..];
            match (&s.role, asked) {
                (None, _) => (404, TEXT, "Not Found".into()),
                (Some(role), "") => (200, TEXT, role.clone()),
                (Some(role), asked) if asked == role => {
                    let c = issue(s);
                    let mut doc = credentials_json(&c, s.lifetime);
                    doc["Code"] = json!("Success");
                    doc["LastUpdated"] = json!(rpc_time(SystemTime::now()));
                    (200, JSON, doc.to_string())
                }
                _ => (404, TEXT, "Not Found".into()),
            }
        }
        ("GET", "/credentials") => {
            let c = issue(s);
            (200, JSON, credentials_json(&c, s.lifetime).to_string())
        }
        ("POST", "/") => sts(s, r),
        _ => (404, TEXT, "no such path in the fake cloud".into()),
    }
}

fn issue(s: &mut State) -> Issued {
    s.issued += 1;
    (s.issuer)(s.issued)
}

fn credentials_json(c: &Issued, lifetime: Duration) -> serde_json::Value {
    json!({
        "AccessKeyId": c.id,
        "AccessKeySecret": c.secret,
        "SecurityToken": c.token,
        "Expiration": rpc_time(SystemTime::now() + lifetime),
    })
}

fn sts(s: &mut State, r: &mut Recorded) -> (u16, &'static str, String) {
    const JSON: &str = "application/json";
    let error = |status: u16, code: &str, message: &str| {
        (
            status,
            JSON,
            json!({"RequestId": "FAKE-REQUEST", "HostId": "sts.fake", "Code": code, "Message": message}).to_string(),
        )
    };
    if r.param("Version") != Some("2015-04-01") || r.param("Format") != Some("JSON") {
        return error(400, "MissingParameter", "Version 2015-04-01 and Format JSON are required");
    }
    match r.param("Action") {
        Some("AssumeRole") => {
            let ok = match &s.sts_caller {
                Some((id, secret)) => r.param("AccessKeyId") == Some(id.as_str()) && signature_matches(r, secret),
                None => true,
            };
            r.signature_ok = Some(ok);
            if !ok {
                return error(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.");
            }
        }
        Some("AssumeRoleWithOIDC") => {
            if let Some(expected) = &s.oidc_token
                && r.param("OIDCToken") != Some(expected.as_str())
            {
                return error(400, "AuthenticationFail.OIDCToken.Invalid", "The OIDC token is invalid.");
            }
        }
        _ => return error(400, "InvalidAction.NotFound", "Specified api is not found."),
    }
    let c = issue(s);
    let doc = json!({
        "RequestId": "FAKE-REQUEST",
        "AssumedRoleUser": {"Arn": r.param("RoleArn"), "AssumedRoleId": "1:session"},
        "Credentials": credentials_json(&c, s.lifetime),
    });
    (200, JSON, doc.to_string())
}

/// The RPC signature V1, computed here independently of the library: every parameter but `Signature`,
/// sorted, `key=value` escaped and joined by `&`, escaped again after `POST&%2F&`, HMAC-SHA1 keyed with
/// `secret&`.
fn signature_matches(r: &Recorded, secret: &str) -> bool {
    let Some(given) = r.param("Signature") else { return false };
    let mut params: Vec<(String, String)> =
        r.query.iter().chain(&r.form).filter(|(k, _)| k != "Signature").cloned().collect();
    params.sort();
    let escape = |s: &str| utf8_percent_encode(s, RPC_ESCAPE).to_string();
    let canonical = params.iter().map(|(k, v)| format!("{}={}", escape(k), escape(v))).collect::<Vec<_>>().join("&");
    let string_to_sign = format!("POST&{}&{}", escape("/"), escape(&canonical));
    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(format!("{secret}&").as_bytes()).expect("any key");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()) == given
}

/// `2006-01-02T15:04:05Z`.
fn rpc_time(t: SystemTime) -> String {
    let xml = ossmirror::timefmt::xml_date(t);
    format!("{}Z", &xml[..19])
}
