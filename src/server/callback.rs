//! Upload callbacks, as OSS performs them (OSS-PROTOCOL.md §5.18; [DOC: help.aliyun.com "Callback"]).
//!
//! PutObject and CompleteMultipartUpload may carry `x-oss-callback` (or the `callback` query parameter of a
//! presigned URL): Base64 of a JSON object with `callbackUrl` (up to five URLs separated by `;`, tried in
//! order until one answers), `callbackHost` (the `Host` to send), `callbackBody` (a template) and
//! `callbackBodyType` (`application/x-www-form-urlencoded`, the default, or `application/json`).
//! `x-oss-callback-var` is Base64 of a JSON object of custom `x:` variables.
//!
//! After the object is stored, the server POSTs the body with `${bucket}`, `${object}`, `${etag}`,
//! `${size}`, `${mimeType}`, `${crc64}`, `${contentMd5}`, `${reqId}`, `${operation}`, `${clientIp}` and the
//! `${x:…}` variables filled in: URL-encoded for a form body, as JSON values for a JSON body (strings quoted,
//! as the official SDK samples' templates `{"mimeType":${mimeType},"size":${size}}` expect). The callback
//! server must answer 200 with a JSON body within 5 seconds; OSS does not retry. Its answer becomes the
//! upload's response body (200); any failure becomes `203 CallbackFailed` — the object stays stored.
//!
//! Not done: OSS signs its callback requests (`Authorization` with an RSA key, `x-oss-pub-key-url`); this
//! server does not, so a callback server that verifies OSS's signature refuses it. And, because every test
//! must stay on this machine, callbacks go only to loopback addresses (`localhost` or a loopback IP
//! literal, no name lookups) unless `serve --allow-remote-callbacks` is given.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::error::OssError;
use crate::remote::oss::sign::uri_encode;

/// How long OSS waits for a callback server (fixed, [DOC]).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest callback answer OSS accepts (3 MB, [DOC]).
const MAX_ANSWER: usize = 3 << 20;
const MAX_URLS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyType {
    Form,
    Json,
}

/// A validated callback request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    urls: Vec<String>,
    host: Option<String>,
    body: String,
    body_type: BodyType,
    vars: Vec<(String, String)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallbackJson {
    #[serde(default)]
    callback_url: String,
    #[serde(default)]
    callback_host: Option<String>,
    #[serde(default)]
    callback_body: String,
    #[serde(default)]
    callback_body_type: Option<String>,
}

fn invalid(message: impl Into<String>) -> OssError {
    OssError::invalid_argument(message)
}

fn decode_json(what: &str, b64: &str) -> Result<Value, OssError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| invalid(format!("The {what} is not Base64.")))?;
    serde_json::from_slice(&bytes).map_err(|_| invalid(format!("The {what} is not json format.")))
}

impl Callback {
    /// The callback a request asks for: `x-oss-callback` (or the `callback` query parameter) and
    /// `x-oss-callback-var` (or `callback-var`). `Ok(None)` without one.
    pub fn from_request(callback: Option<&str>, vars: Option<&str>) -> Result<Option<Callback>, OssError> {
        let Some(raw) = callback.filter(|c| !c.trim().is_empty()) else { return Ok(None) };
        let config: CallbackJson = serde_json::from_value(decode_json("callback configuration", raw)?)
            .map_err(|_| invalid("The callback configuration is not json format."))?;
        let urls: Vec<String> =
            config.callback_url.split(';').map(str::trim).filter(|u| !u.is_empty()).map(str::to_string).collect();
        if urls.is_empty() {
            return Err(invalid("The callbackUrl of the callback configuration is missing."));
        }
        if urls.len() > MAX_URLS {
            return Err(invalid(format!("A callback can name at most {MAX_URLS} callbackUrls.")));
        }
        let urls = urls
            .into_iter()
            .map(|u| {
                let full = if u.contains("://") { u } else { format!("http://{u}") };
                match reqwest::Url::parse(&full) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Ok(full),
                    _ => Err(invalid(format!("The callbackUrl {full:?} is not a valid http(s) URL."))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if config.callback_body.is_empty() {
            return Err(invalid("The callbackBody of the callback configuration is missing."));
        }
        let body_type = match config.callback_body_type.as_deref().map(str::trim) {
            None | Some("") => BodyType::Form,
            Some(t) if t.eq_ignore_ascii_case("application/x-www-form-urlencoded") => BodyType::Form,
            Some(t) if t.eq_ignore_ascii_case("application/json") => BodyType::Json,
            Some(t) => {
                return Err(invalid(format!(
                    "The callbackBodyType {t:?} is not supported: use application/x-www-form-urlencoded or \
                     application/json."
                )));
            }
        };
        let mut custom = Vec::new();
        if let Some(raw) = vars.filter(|v| !v.trim().is_empty()) {
            let Value::Object(map) = decode_json("callback-var", raw)? else {
                return Err(invalid("The callback-var is not a json object."));
            };
            for (name, value) in map {
                if !name.starts_with("x:") {
                    return Err(invalid(format!("The callback variable {name:?} must start with x:.")));
                }
                let Value::String(value) = value else {
                    return Err(invalid(format!("The callback variable {name:?} must be a string.")));
                };
                custom.push((name, value));
            }
        }
        let host = config.callback_host.filter(|h| !h.trim().is_empty());
        Ok(Some(Callback { urls, host, body: config.callback_body, body_type, vars: custom }))
    }

    /// The body with every `${…}` variable filled in (unknown variables become empty).
    pub fn render(&self, upload: &Uploaded<'_>) -> String {
        let mut out = String::with_capacity(self.body.len() + 64);
        let mut rest = self.body.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                return out;
            };
            let name = &after[..end];
            out.push_str(&self.value(name, upload));
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }

    fn value(&self, name: &str, u: &Uploaded<'_>) -> String {
        let text = |s: &str| match self.body_type {
            BodyType::Form => uri_encode(s, false),
            BodyType::Json => Value::String(s.to_string()).to_string(),
        };
        match name {
            "bucket" => text(u.bucket),
            "object" => text(u.key),
            "etag" => text(u.etag),
            "size" => u.size.to_string(),
            "mimeType" => text(u.mime_type),
            "crc64" => text(&u.crc64.map(|c| c.to_string()).unwrap_or_default()),
            "contentMd5" => text(u.content_md5.unwrap_or("")),
            "reqId" => text(u.request_id),
            "operation" => text(u.operation),
            "clientIp" => text(u.client_ip),
            custom if custom.starts_with("x:") => {
                text(self.vars.iter().find(|(n, _)| n == custom).map(|(_, v)| v.as_str()).unwrap_or(""))
            }
            // imageInfo.*, vpcId and unknown names: nothing to say here.
            _ => text(""),
        }
    }

    fn content_type(&self) -> &'static str {
        match self.body_type {
            BodyType::Form => "application/x-www-form-urlencoded",
            BodyType::Json => "application/json",
        }
    }

    /// POST the callback; the first URL that answers 200 with JSON wins.
    pub async fn perform(&self, client: &reqwest::Client, upload: &Uploaded<'_>, allow_remote: bool) -> Outcome {
        let body = self.render(upload);
        let mut failure = String::new();
        for url in &self.urls {
            match self.post(client, url, &body, allow_remote).await {
                Ok(answer) => {
                    tracing::info!(url = %url, "upload callback answered");
                    return Outcome::Answered(answer);
                }
                Err(message) => {
                    tracing::warn!(url = %url, %message, "upload callback failed");
                    failure = message;
                }
            }
        }
        Outcome::Failed(failure)
    }

    async fn post(&self, client: &reqwest::Client, url: &str, body: &str, allow_remote: bool) -> Result<Bytes, String> {
        let parsed = reqwest::Url::parse(url).map_err(|_| format!("The callbackUrl {url} is not valid."))?;
        if !allow_remote && !is_loopback(&parsed) {
            return Err(format!(
                "Error status : -1. Callback to {url} refused: ossmirror serve calls back only loopback addresses \
                 (start it with --allow-remote-callbacks to allow others)."
            ));
        }
        let mut request = client
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, self.content_type())
            .body(body.to_string())
            .timeout(TIMEOUT);
        if let Some(host) = &self.host {
            request = request.header(reqwest::header::HOST, host);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                format!("Error status : -1. The callback server {url} did not answer within 5 seconds.")
            } else {
                format!("Error status : -1. OSS can not connect to your callbackUrl {url}, please check it.")
            }
        })?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(format!("Error status : {}.", status.as_u16()));
        }
        if response.content_length().is_some_and(|n| n as usize > MAX_ANSWER) {
            return Err("The callback server's response body is larger than 3 MB.".into());
        }
        let answer = response.bytes().await.map_err(|_| "Error status : -1. The callback response was cut short.")?;
        if answer.len() > MAX_ANSWER {
            return Err("The callback server's response body is larger than 3 MB.".into());
        }
        if serde_json::from_slice::<Value>(&answer).is_err() {
            return Err("Response body is not valid json format.".into());
        }
        Ok(answer)
    }
}

/// `localhost` or a loopback IP literal: nothing is resolved, so nothing leaves the machine.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What the callback body can say about the upload.
#[derive(Debug, Clone)]
pub struct Uploaded<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    /// Without quotes.
    pub etag: &'a str,
    pub size: u64,
    pub mime_type: &'a str,
    pub crc64: Option<u64>,
    pub content_md5: Option<&'a str>,
    pub request_id: &'a str,
    pub operation: &'a str,
    pub client_ip: &'a str,
}

/// How a callback ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The callback server's JSON answer, to return as the response body.
    Answered(Bytes),
    /// Why it failed, for the `203 CallbackFailed` message.
    Failed(String),
}

/// The client callbacks are sent with: no proxy (the environment must not send them elsewhere), no
/// redirects, OSS's timeout.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).timeout(TIMEOUT).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn upload() -> Uploaded<'static> {
        Uploaded {
            bucket: "bkt",
            key: "dir/a b.txt",
            etag: "ABC",
            size: 12,
            mime_type: "text/plain",
            crc64: Some(7),
            content_md5: Some("md5=="),
            request_id: "RID",
            operation: "PutObject",
            client_ip: "127.0.0.1",
        }
    }

    #[test]
    fn templates_fill_in_form_and_json_values() {
        let cb = Callback::from_request(
            Some(&b64(r#"{"callbackUrl":"127.0.0.1:9","callbackBody":"o=${object}&s=${size}&v=${x:var}&n=${nope}"}"#)),
            Some(&b64(r#"{"x:var":"a&b"}"#)),
        )
        .unwrap()
        .unwrap();
        assert_eq!(cb.urls, ["http://127.0.0.1:9"]);
        assert_eq!(cb.render(&upload()), "o=dir%2Fa%20b.txt&s=12&v=a%26b&n=");
        let cb = Callback::from_request(
            Some(&b64(
                r#"{"callbackUrl":"http://localhost:1/x","callbackBody":"{\"m\":${mimeType},\"s\":${size},\"e\":${etag}}","callbackBodyType":"application/json"}"#,
            )),
            None,
        )
        .unwrap()
        .unwrap();
        let json: Value = serde_json::from_str(&cb.render(&upload())).unwrap();
        assert_eq!(json, serde_json::json!({"m": "text/plain", "s": 12, "e": "ABC"}));
    }

    #[test]
    fn bad_configurations_are_refused() {
        for (cb, vars) in [
            ("not base64!".to_string(), None),
            (b64("not json"), None),
            (b64(r#"{"callbackBody":"x"}"#), None),
            (b64(r#"{"callbackUrl":"http://127.0.0.1:1"}"#), None),
            (b64(r#"{"callbackUrl":"ftp://127.0.0.1:1","callbackBody":"x"}"#), None),
            (b64(r#"{"callbackUrl":"a;b;c;d;e;f","callbackBody":"x"}"#), None),
            (b64(r#"{"callbackUrl":"127.0.0.1:1","callbackBody":"x","callbackBodyType":"text/plain"}"#), None),
            (b64(r#"{"callbackUrl":"127.0.0.1:1","callbackBody":"x"}"#), Some(b64(r#"{"var":"1"}"#))),
            (b64(r#"{"callbackUrl":"127.0.0.1:1","callbackBody":"x"}"#), Some(b64(r#"{"x:var":1}"#))),
        ] {
            let e = Callback::from_request(Some(&cb), vars.as_deref()).unwrap_err();
            assert_eq!(e.code, "InvalidArgument", "{cb}");
        }
        assert!(Callback::from_request(None, None).unwrap().is_none());
    }

    #[test]
    fn only_loopback_without_the_flag() {
        for (url, ok) in [
            ("http://127.0.0.1:1/", true),
            ("http://[::1]:1/", true),
            ("http://localhost:1/", true),
            ("http://10.0.0.1/", false),
            ("http://example.com/", false),
            ("http://100.100.100.200/", false),
        ] {
            assert_eq!(is_loopback(&reqwest::Url::parse(url).unwrap()), ok, "{url}");
        }
    }
}
