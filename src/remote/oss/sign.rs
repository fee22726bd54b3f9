//! OSS request signing, Signature V1 (`OSS ak:sig`, HMAC-SHA1) and V4 (`OSS4-HMAC-SHA256`).
//!
//! The canonicalization functions are pure and shared: the client signs with them and `ossmirror serve`
//! verifies with them, so the two can only agree by being right, which the golden vectors below (from the
//! official go-v2 signer tests and OSS-PROTOCOL.md §1.7 / §2.8) pin down.
//!
//! The traps (OSS-PROTOCOL.md §12): V1 signs the *raw* key and only a whitelist of query parameters with raw
//! values; V4 signs the percent-encoded key with `/` kept and *every* query parameter (re-encoded, `/` as
//! `%2F`). Both sign `/bucket/key` whatever the URL shape (path style or virtual host).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

use crate::remote::Credentials;
use crate::timefmt;

/// V4 payload hash: OSS accepts only this value.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
pub const V4_ALGORITHM: &str = "OSS4-HMAC-SHA256";
pub const V4_TERMINATOR: &str = "aliyun_v4_request";

/// Query parameters V1 signs (the union of the SDKs' sub-resource lists that matter to us; py-oss2's is
/// the largest). Any parameter whose name starts with `x-oss-` is signed too (as go-v2 does).
const V1_SUBRESOURCES: &[&str] = &[
    "acl",
    "append",
    "asyncFetch",
    "bucketInfo",
    "callback",
    "callback-var",
    "cname",
    "comp",
    "continuation-token",
    "cors",
    "delete",
    "encryption",
    "endTime",
    "img",
    "inventory",
    "inventoryId",
    "lifecycle",
    "link",
    "live",
    "location",
    "logging",
    "objectMeta",
    "partNumber",
    "policy",
    "position",
    "qos",
    "qosInfo",
    "referer",
    "regionList",
    "replication",
    "replicationLocation",
    "replicationProgress",
    "requestPayment",
    "resourceGroup",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "restore",
    "security-token",
    "sequential",
    "startTime",
    "stat",
    "status",
    "style",
    "styleName",
    "symlink",
    "tagging",
    "transferAcceleration",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "vod",
    "website",
    "worm",
    "wormExtend",
    "wormId",
];

/// Which signature scheme to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureVersion {
    V1,
    V4,
}

impl std::str::FromStr for SignatureVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "v1" | "1" => Ok(SignatureVersion::V1),
            "v4" | "4" => Ok(SignatureVersion::V4),
            _ => Err(format!("unknown signature version {s:?}: use v1 or v4")),
        }
    }
}

/// The parts of a request a signature covers. `query` holds *decoded* names and values (an empty value
/// stands for a bare `name`); `bucket`/`key` are the logical names, never taken from the URL shape.
#[derive(Debug, Clone, Copy)]
pub struct SignInput<'a> {
    pub method: &'a str,
    pub bucket: Option<&'a str>,
    pub key: Option<&'a str>,
    pub query: &'a [(String, String)],
    pub headers: &'a HeaderMap,
}

// ---------------------------------------------------------------------------------------------------------
// Shared helpers

/// Percent-encode every byte outside `A-Z a-z 0-9 - _ . ~` (and `/` when `keep_slash`), upper-case hex.
pub fn uri_encode(input: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(input.len() + 8);
    for &b in input.as_bytes() {
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
        if unreserved || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A header's value as text: trimmed, repeated headers joined with `,` (as go-v2 and OSS do).
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let joined: Vec<String> = values.map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string()).collect();
    Some(joined.join(","))
}

/// Every `x-oss-*` header, lower-cased and sorted, as `(name, value)`.
fn oss_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).filter(|n| n.starts_with("x-oss-")).collect();
    names.sort_unstable();
    names.dedup();
    names.into_iter().filter_map(|n| header_text(headers, n).map(|v| (n.to_string(), v))).collect()
}

fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// Compare two signatures without leaking, through timing, how long a prefix matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------------------------------------
// V1

fn is_v1_subresource(name: &str) -> bool {
    name.starts_with("x-oss-") || V1_SUBRESOURCES.binary_search(&name).is_ok()
}

/// `/bucket/key` (raw key) plus the sorted sub-resources, e.g. `/b/k?partNumber=3&uploadId=X`.
/// `extra_subresources` lets a caller sign parameters outside the built-in list (go-v2's `SubResource`).
pub fn canonical_resource_v1(
    bucket: Option<&str>,
    key: Option<&str>,
    query: &[(String, String)],
    extra_subresources: &[&str],
) -> String {
    let mut resource = match (bucket, key) {
        (Some(b), Some(k)) => format!("/{b}/{k}"),
        (Some(b), None) => format!("/{b}/"),
        _ => "/".to_string(),
    };
    let mut signed: Vec<&(String, String)> =
        query.iter().filter(|(n, _)| is_v1_subresource(n) || extra_subresources.contains(&n.as_str())).collect();
    signed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    for (i, (name, value)) in signed.iter().enumerate() {
        resource.push(if i == 0 { '?' } else { '&' });
        resource.push_str(name);
        if !value.is_empty() {
            resource.push('=');
            resource.push_str(value);
        }
    }
    resource
}

/// The V1 StringToSign. `date_or_expires` is the `Date` header for header auth, `Expires` for a presigned URL.
pub fn string_to_sign_v1(input: &SignInput<'_>, date_or_expires: &str, extra_subresources: &[&str]) -> String {
    let mut s = String::with_capacity(256);
    s.push_str(input.method);
    s.push('\n');
    s.push_str(&header_text(input.headers, "content-md5").unwrap_or_default());
    s.push('\n');
    s.push_str(&header_text(input.headers, "content-type").unwrap_or_default());
    s.push('\n');
    s.push_str(date_or_expires);
    s.push('\n');
    for (name, value) in oss_headers(input.headers) {
        s.push_str(&name);
        s.push(':');
        s.push_str(&value);
        s.push('\n');
    }
    s.push_str(&canonical_resource_v1(input.bucket, input.key, input.query, extra_subresources));
    s
}

/// Base64(HMAC-SHA1(secret, string_to_sign)).
pub fn signature_v1(secret: &str, string_to_sign: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha1(secret.as_bytes(), string_to_sign.as_bytes()))
}

// ---------------------------------------------------------------------------------------------------------
// V4

/// `/bucket/key` percent-encoded with `/` kept; `/bucket/` for bucket requests, `/` for service requests.
pub fn canonical_uri_v4(bucket: Option<&str>, key: Option<&str>) -> String {
    match (bucket, key) {
        (Some(b), Some(k)) => format!("/{}/{}", uri_encode(b, true), uri_encode(k, true)),
        (Some(b), None) => format!("/{}/", uri_encode(b, true)),
        _ => "/".to_string(),
    }
}

/// Every query parameter except `x-oss-signature`, names and values re-encoded (`/` as `%2F`), sorted.
pub fn canonical_query_v4(query: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = query
        .iter()
        .filter(|(n, _)| n != "x-oss-signature")
        .map(|(n, v)| (uri_encode(n, false), uri_encode(v, false)))
        .collect();
    encoded.sort();
    let parts: Vec<String> =
        encoded.into_iter().map(|(n, v)| if v.is_empty() { n } else { format!("{n}={v}") }).collect();
    parts.join("&")
}

/// Normalize a requested AdditionalHeaders list: lower-cased, only headers present in the request, without
/// the ones signed by default (`x-oss-*`, `content-type`, `content-md5`), sorted and de-duplicated.
pub fn additional_headers_v4<S: AsRef<str>>(requested: &[S], headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = requested
        .iter()
        .map(|n| n.as_ref().trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty() && !n.starts_with("x-oss-") && n != "content-type" && n != "content-md5")
        .filter(|n| headers.contains_key(n.as_str()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The V4 canonical request. `additional` must already be normalized ([`additional_headers_v4`]).
pub fn canonical_request_v4(input: &SignInput<'_>, additional: &[String]) -> String {
    let mut signed: Vec<(String, String)> = oss_headers(input.headers);
    for name in ["content-type", "content-md5"].iter().map(|s| s.to_string()).chain(additional.iter().cloned()) {
        if let Some(v) = header_text(input.headers, &name) {
            signed.push((name, v));
        }
    }
    signed.sort();
    signed.dedup_by(|a, b| a.0 == b.0);
    let payload_hash = header_text(input.headers, "x-oss-content-sha256").unwrap_or_else(|| UNSIGNED_PAYLOAD.into());

    let mut s = String::with_capacity(512);
    s.push_str(input.method);
    s.push('\n');
    s.push_str(&canonical_uri_v4(input.bucket, input.key));
    s.push('\n');
    s.push_str(&canonical_query_v4(input.query));
    s.push('\n');
    for (name, value) in &signed {
        s.push_str(name);
        s.push(':');
        s.push_str(value);
        s.push('\n');
    }
    s.push('\n');
    s.push_str(&additional.join(";"));
    s.push('\n');
    s.push_str(&payload_hash);
    s
}

/// `yyyymmdd/region/product/aliyun_v4_request`.
pub fn scope_v4(day: &str, region: &str, product: &str) -> String {
    format!("{day}/{region}/{product}/{V4_TERMINATOR}")
}

pub fn string_to_sign_v4(timestamp: &str, scope: &str, canonical_request: &str) -> String {
    let hash = hex::encode(Sha256::digest(canonical_request.as_bytes()));
    format!("{V4_ALGORITHM}\n{timestamp}\n{scope}\n{hash}")
}

/// The derived key chain: `"aliyun_v4" + secret` → day → region → product → `aliyun_v4_request`.
pub fn signing_key_v4(secret: &str, day: &str, region: &str, product: &str) -> [u8; 32] {
    let k1 = hmac_sha256(format!("aliyun_v4{secret}").as_bytes(), day.as_bytes());
    let k2 = hmac_sha256(&k1, region.as_bytes());
    let k3 = hmac_sha256(&k2, product.as_bytes());
    hmac_sha256(&k3, V4_TERMINATOR.as_bytes())
}

pub fn signature_v4(signing_key: &[u8; 32], string_to_sign: &str) -> String {
    hex::encode(hmac_sha256(signing_key, string_to_sign.as_bytes()))
}

// ---------------------------------------------------------------------------------------------------------
// The client-side signer

/// Signs requests for one endpoint: scheme, region and product fixed, time passed in (tests inject it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub version: SignatureVersion,
    /// Bare region id for V4, e.g. `cn-hangzhou` (not `oss-cn-hangzhou`).
    pub region: String,
    /// `oss`, or `oss-cloudbox` for CloudBox.
    pub product: String,
}

fn put_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

impl Signer {
    pub fn new(version: SignatureVersion, region: impl Into<String>) -> Self {
        Signer { version, region: region.into(), product: "oss".into() }
    }

    /// Add the date, token and `Authorization` headers to a request about to be sent at `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn sign_headers(
        &self,
        credentials: &Credentials,
        method: &str,
        bucket: Option<&str>,
        key: Option<&str>,
        query: &[(String, String)],
        headers: &mut HeaderMap,
        now: SystemTime,
    ) {
        headers.remove(http::header::AUTHORIZATION);
        put_header(headers, "date", &timefmt::rfc1123(now));
        match &credentials.session_token {
            Some(token) => put_header(headers, "x-oss-security-token", token.expose()),
            None => {
                headers.remove("x-oss-security-token");
            }
        }
        let authorization = match self.version {
            SignatureVersion::V1 => {
                // V1 signs the Date header; an x-oss-date header would be ambiguous (§1.2), so never send one.
                headers.remove("x-oss-date");
                let date = timefmt::rfc1123(now);
                let input = SignInput { method, bucket, key, query, headers };
                let sts = string_to_sign_v1(&input, &date, &[]);
                format!(
                    "OSS {}:{}",
                    credentials.access_key_id,
                    signature_v1(credentials.access_key_secret.expose(), &sts)
                )
            }
            SignatureVersion::V4 => {
                let timestamp = timefmt::iso8601_basic(now);
                let day = timefmt::iso8601_day(now);
                put_header(headers, "x-oss-date", &timestamp);
                put_header(headers, "x-oss-content-sha256", UNSIGNED_PAYLOAD);
                let input = SignInput { method, bucket, key, query, headers };
                let canonical = canonical_request_v4(&input, &[]);
                let scope = scope_v4(&day, &self.region, &self.product);
                let sts = string_to_sign_v4(&timestamp, &scope, &canonical);
                let signing_key =
                    signing_key_v4(credentials.access_key_secret.expose(), &day, &self.region, &self.product);
                format!(
                    "{V4_ALGORITHM} Credential={}/{scope},Signature={}",
                    credentials.access_key_id,
                    signature_v4(&signing_key, &sts)
                )
            }
        };
        put_header(headers, "authorization", &authorization);
    }

    /// Append presigning parameters to `query` for a URL valid from `now` for `expires`. `headers` are the
    /// headers the user of the URL will send (they are signed).
    #[allow(clippy::too_many_arguments)]
    pub fn presign(
        &self,
        credentials: &Credentials,
        method: &str,
        bucket: Option<&str>,
        key: Option<&str>,
        query: &mut Vec<(String, String)>,
        headers: &HeaderMap,
        additional_headers: &[&str],
        now: SystemTime,
        expires: Duration,
    ) {
        match self.version {
            SignatureVersion::V1 => {
                let expires_at = timefmt::unix_secs(now) + expires.as_secs() as i64;
                if let Some(token) = &credentials.session_token {
                    query.push(("security-token".into(), token.expose().to_string()));
                }
                let input = SignInput { method, bucket, key, query, headers };
                let sts = string_to_sign_v1(&input, &expires_at.to_string(), &[]);
                let sig = signature_v1(credentials.access_key_secret.expose(), &sts);
                query.push(("OSSAccessKeyId".into(), credentials.access_key_id.clone()));
                query.push(("Expires".into(), expires_at.to_string()));
                query.push(("Signature".into(), sig));
            }
            SignatureVersion::V4 => {
                let timestamp = timefmt::iso8601_basic(now);
                let day = timefmt::iso8601_day(now);
                let scope = scope_v4(&day, &self.region, &self.product);
                let additional = additional_headers_v4(additional_headers, headers);
                query.push(("x-oss-signature-version".into(), V4_ALGORITHM.into()));
                query.push(("x-oss-date".into(), timestamp.clone()));
                query.push(("x-oss-expires".into(), expires.as_secs().to_string()));
                query.push(("x-oss-credential".into(), format!("{}/{scope}", credentials.access_key_id)));
                if !additional.is_empty() {
                    query.push(("x-oss-additional-headers".into(), additional.join(";")));
                }
                if let Some(token) = &credentials.session_token {
                    query.push(("x-oss-security-token".into(), token.expose().to_string()));
                }
                let input = SignInput { method, bucket, key, query, headers };
                let canonical = canonical_request_v4(&input, &additional);
                let sts = string_to_sign_v4(&timestamp, &scope, &canonical);
                let signing_key =
                    signing_key_v4(credentials.access_key_secret.expose(), &day, &self.region, &self.product);
                query.push(("x-oss-signature".into(), signature_v4(&signing_key, &sts)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timefmt::{from_unix_secs, parse_rfc1123};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn lookup<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
        query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn subresource_list_is_sorted_for_binary_search() {
        let mut sorted = V1_SUBRESOURCES.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, V1_SUBRESOURCES);
    }

    // go-v2 oss/signer/signer_test.go TestV1AuthHeader, cases 1-4.
    #[test]
    fn v1_header_go_v2_vectors() {
        let date = "Wed, 28 Dec 2022 10:27:41 GMT";
        let h = headers(&[
            ("Content-MD5", "eB5eJF1ptWaXm4bijSPyxw=="),
            ("Content-Type", "text/html"),
            ("x-oss-meta-author", "alice"),
            ("x-oss-meta-magic", "abracadabra"),
            ("x-oss-date", date),
        ]);
        let empty = q(&[]);
        let input =
            SignInput { method: "PUT", bucket: Some("examplebucket"), key: Some("nelson"), query: &empty, headers: &h };
        let sts = string_to_sign_v1(&input, date, &[]);
        assert_eq!(
            sts,
            "PUT\neB5eJF1ptWaXm4bijSPyxw==\ntext/html\nWed, 28 Dec 2022 10:27:41 GMT\nx-oss-date:Wed, 28 Dec 2022 10:27:41 GMT\nx-oss-meta-author:alice\nx-oss-meta-magic:abracadabra\n/examplebucket/nelson"
        );
        assert_eq!(signature_v1("sk", &sts), "kSHKmLxlyEAKtZPkJhG9bZb5k7M=");

        let acl = q(&[("acl", "")]);
        let input = SignInput { query: &acl, ..input };
        assert_eq!(signature_v1("sk", &string_to_sign_v1(&input, date, &[])), "/afkugFbmWDQ967j1vr6zygBLQk=");

        let h = headers(&[("x-oss-date", date)]);
        let query = q(&[("resourceGroup", ""), ("non-resousce", "null")]);
        let input = SignInput { method: "GET", bucket: Some("examplebucket"), key: None, query: &query, headers: &h };
        let sts = string_to_sign_v1(&input, date, &["resourceGroup"]);
        assert!(sts.ends_with("\n/examplebucket/?resourceGroup"), "{sts}");
        assert_eq!(signature_v1("sk", &sts), "vkQmfuUDyi1uDi3bKt67oemssIs=");

        let query = q(&[("resourceGroup", ""), ("acl", "")]);
        let input = SignInput { query: &query, ..input };
        let sts = string_to_sign_v1(&input, date, &["resourceGroup"]);
        assert!(sts.ends_with("/examplebucket/?acl&resourceGroup"), "{sts}");
        assert_eq!(signature_v1("sk", &sts), "x3E5TgOvl/i7PN618s5mEvpJDYk=");
    }

    // OSS-PROTOCOL.md V1-B: UploadPart with an STS token and a space in the key, through the Signer.
    #[test]
    fn v1_signer_upload_part_with_token() {
        let creds = Credentials::new("OSSEXAMPLEAK", "OSSEXAMPLESECRET").with_session_token("STSEXAMPLETOKEN");
        let mut h =
            headers(&[("Content-Type", "application/octet-stream"), ("Content-MD5", "eB5eJF1ptWaXm4bijSPyxw==")]);
        let query = q(&[("partNumber", "3"), ("uploadId", "0004B9894A22E5B1888A1E29F823ABCD")]);
        let now = parse_rfc1123("Tue, 20 Dec 2022 08:48:18 GMT").unwrap();
        Signer::new(SignatureVersion::V1, "cn-hangzhou").sign_headers(
            &creds,
            "PUT",
            Some("my-bucket"),
            Some("backups/2024 db.tar"),
            &query,
            &mut h,
            now,
        );
        assert_eq!(h["date"], "Tue, 20 Dec 2022 08:48:18 GMT");
        assert_eq!(h["x-oss-security-token"], "STSEXAMPLETOKEN");
        assert_eq!(h["authorization"], "OSS OSSEXAMPLEAK:LpI99xtg8zoSsf3PvCe1dTWrUBA=");
    }

    // OSS-PROTOCOL.md V1-C and go-v2 TestV1AuthQuery cases 1 and 2.
    #[test]
    fn v1_presign_vectors() {
        let creds = Credentials::new("OSSEXAMPLEAK", "OSSEXAMPLESECRET");
        let mut query = Vec::new();
        let now = parse_rfc1123("Tue, 20 Dec 2022 08:48:18 GMT").unwrap();
        Signer::new(SignatureVersion::V1, "cn-hangzhou").presign(
            &creds,
            "GET",
            Some("my-bucket"),
            Some("backups/2024 db.tar"),
            &mut query,
            &HeaderMap::new(),
            &[],
            now,
            Duration::from_secs(3600),
        );
        assert_eq!(lookup(&query, "Expires"), Some("1671529698"));
        assert_eq!(lookup(&query, "Signature"), Some("K2zeFB4pjv1XI82D3BWg7scdURU="));

        let creds = Credentials::new("ak", "sk");
        let mut query = q(&[("versionId", "versionId")]);
        Signer::new(SignatureVersion::V1, "cn-hangzhou").presign(
            &creds,
            "GET",
            Some("bucket"),
            Some("key"),
            &mut query,
            &HeaderMap::new(),
            &[],
            from_unix_secs(1_699_807_420),
            Duration::ZERO,
        );
        assert_eq!(lookup(&query, "Signature"), Some("dcLTea+Yh9ApirQ8o8dOPqtvJXQ="));

        let creds = Credentials::new("ak", "sk").with_session_token("token");
        let mut query = q(&[("versionId", "versionId")]);
        Signer::new(SignatureVersion::V1, "cn-hangzhou").presign(
            &creds,
            "GET",
            Some("bucket"),
            Some("key+123"),
            &mut query,
            &HeaderMap::new(),
            &[],
            from_unix_secs(1_699_808_204),
            Duration::ZERO,
        );
        assert_eq!(lookup(&query, "security-token"), Some("token"));
        assert_eq!(lookup(&query, "Signature"), Some("jzKYRrM5y6Br0dRFPaTGOsbrDhY="));
    }

    fn v4_vector_query() -> Vec<(String, String)> {
        q(&[
            ("param1", "value1"),
            ("+param1", "value3"),
            ("|param1", "value4"),
            ("+param2", ""),
            ("|param2", ""),
            ("param2", ""),
        ])
    }

    fn v4_vector_headers(content_type: &str, with_sha: bool) -> HeaderMap {
        let mut h = headers(&[
            ("x-oss-head1", "value"),
            ("abc", "value"),
            ("ZAbc", "value"),
            ("XYZ", "value"),
            ("content-type", content_type),
        ]);
        if with_sha {
            h.insert("x-oss-content-sha256", HeaderValue::from_static(UNSIGNED_PAYLOAD));
        }
        h
    }

    // go-v2 TestV4AuthHeader: the canonical request printed in OSS-PROTOCOL.md §2.8 V4-A, then the signature.
    #[test]
    fn v4_header_go_v2_vector() {
        let creds = Credentials::new("ak", "sk");
        let query = v4_vector_query();
        let mut h = v4_vector_headers("text/plain", true);
        let now = from_unix_secs(1_702_743_657);
        let signer = Signer::new(SignatureVersion::V4, "cn-hangzhou");
        signer.sign_headers(&creds, "PUT", Some("bucket"), Some("1234+-/123/1.txt"), &query, &mut h, now);
        let input = SignInput {
            method: "PUT",
            bucket: Some("bucket"),
            key: Some("1234+-/123/1.txt"),
            query: &query,
            headers: &h,
        };
        assert_eq!(
            canonical_request_v4(&input, &[]),
            "PUT\n/bucket/1234%2B-/123/1.txt\n%2Bparam1=value3&%2Bparam2&%7Cparam1=value4&%7Cparam2&param1=value1&param2\n\
             content-type:text/plain\nx-oss-content-sha256:UNSIGNED-PAYLOAD\nx-oss-date:20231216T162057Z\nx-oss-head1:value\n\n\nUNSIGNED-PAYLOAD"
        );
        assert_eq!(
            h["authorization"],
            "OSS4-HMAC-SHA256 Credential=ak/20231216/cn-hangzhou/oss/aliyun_v4_request,Signature=e21d18daa82167720f9b1047ae7e7f1ce7cb77a31e8203a7d5f4624fa0284afe"
        );
    }

    #[test]
    fn v4_header_with_token_and_cloudbox() {
        let query = v4_vector_query();
        let creds = Credentials::new("ak", "sk").with_session_token("token");
        let mut h = v4_vector_headers("text/plain", true);
        Signer::new(SignatureVersion::V4, "cn-hangzhou").sign_headers(
            &creds,
            "PUT",
            Some("bucket"),
            Some("1234+-/123/1.txt"),
            &query,
            &mut h,
            from_unix_secs(1_702_784_856),
        );
        assert_eq!(
            h["authorization"],
            "OSS4-HMAC-SHA256 Credential=ak/20231217/cn-hangzhou/oss/aliyun_v4_request,Signature=b94a3f999cf85bcdc00d332fbd3734ba03e48382c36fa4d5af5df817395bd9ea"
        );

        let creds = Credentials::new("ak", "sk");
        let mut h = v4_vector_headers("text/plain", true);
        let signer = Signer { version: SignatureVersion::V4, region: "cb-123".into(), product: "oss-cloudbox".into() };
        signer.sign_headers(
            &creds,
            "PUT",
            Some("bucket"),
            Some("1234+-/123/1.txt"),
            &query,
            &mut h,
            from_unix_secs(1_702_743_657),
        );
        assert_eq!(
            h["authorization"],
            "OSS4-HMAC-SHA256 Credential=ak/20231216/cb-123/oss-cloudbox/aliyun_v4_request,Signature=94ce1f12c17d148ea681030275a94449d3357f5b5b21133996eec80af3e08a43"
        );
    }

    // go-v2 TestV4AuthHeaderWithAdditionalHeaders: computed with the primitives a verifying server uses.
    #[test]
    fn v4_header_additional_headers_vector() {
        let query = v4_vector_query();
        let mut h = v4_vector_headers("text/plain", true);
        let now = from_unix_secs(1_702_747_512);
        h.insert("x-oss-date", HeaderValue::from_str(&timefmt::iso8601_basic(now)).unwrap());
        for requested in [&["ZAbc", "abc"][..], &["x-oss-no-exist", "ZAbc", "x-oss-head1", "abc"][..]] {
            let additional = additional_headers_v4(requested, &h);
            assert_eq!(additional, ["abc", "zabc"]);
            let input = SignInput {
                method: "PUT",
                bucket: Some("bucket"),
                key: Some("1234+-/123/1.txt"),
                query: &query,
                headers: &h,
            };
            let canonical = canonical_request_v4(&input, &additional);
            let scope = scope_v4("20231216", "cn-hangzhou", "oss");
            let sts = string_to_sign_v4("20231216T172512Z", &scope, &canonical);
            let key = signing_key_v4("sk", "20231216", "cn-hangzhou", "oss");
            assert_eq!(signature_v4(&key, &sts), "4a4183c187c07c8947db7620deb0a6b38d9fbdd34187b6dbaccb316fa251212f");
        }
    }

    // go-v2 TestV4AuthQuery, TestV4AuthQueryToken, TestV4AuthQueryWithAdditionalHeaders, TestV4AuthQueryWithCloudBox.
    #[test]
    fn v4_presign_go_v2_vectors() {
        // (token, sign time, additional headers, region, product, expected signature)
        type Case<'a> = (Option<&'a str>, i64, &'a [&'a str], &'a str, &'a str, &'a str);
        let cases: &[Case] = &[
            (
                None,
                1_702_781_677,
                &[],
                "cn-hangzhou",
                "oss",
                "a39966c61718be0d5b14e668088b3fa07601033f6518ac7b523100014269c0fe",
            ),
            (
                Some("token"),
                1_702_785_388,
                &[],
                "cn-hangzhou",
                "oss",
                "3817ac9d206cd6dfc90f1c09c00be45005602e55898f26f5ddb06d7892e1f8b5",
            ),
            (
                None,
                1_702_783_809,
                &["ZAbc", "abc"],
                "cn-hangzhou",
                "oss",
                "6bd984bfe531afb6db1f7550983a741b103a8c58e5e14f83ea474c2322dfa2b7",
            ),
            (
                None,
                1_702_783_809,
                &["x-oss-no-exist", "abc", "x-oss-head1", "ZAbc"],
                "cn-hangzhou",
                "oss",
                "6bd984bfe531afb6db1f7550983a741b103a8c58e5e14f83ea474c2322dfa2b7",
            ),
            (
                None,
                1_702_781_677,
                &["ZAbc", "abc"],
                "cb-123",
                "oss-cloudbox",
                "07284191b9b4978ac3520cd39ee2dea2747eda454089359371ff463a6c7ba20f",
            ),
            (
                None,
                1_702_783_809,
                &["x-oss-no-exist", "abc", "x-oss-head1", "ZAbc"],
                "cb-123",
                "oss-cloudbox",
                "16782cc8a7a554523db055eb804b508522e7e370073108ad88ee2f47496701dd",
            ),
        ];
        for (token, sign_time, additional, region, product, expected) in cases {
            let mut creds = Credentials::new("ak", "sk");
            if let Some(t) = token {
                creds = creds.with_session_token(*t);
            }
            let signer =
                Signer { version: SignatureVersion::V4, region: region.to_string(), product: product.to_string() };
            let mut query = v4_vector_query();
            let h = v4_vector_headers("application/octet-stream", false);
            signer.presign(
                &creds,
                "PUT",
                Some("bucket"),
                Some("1234+-/123/1.txt"),
                &mut query,
                &h,
                additional,
                from_unix_secs(*sign_time),
                Duration::from_secs(599),
            );
            assert_eq!(lookup(&query, "x-oss-expires"), Some("599"));
            assert_eq!(lookup(&query, "x-oss-signature"), Some(*expected), "{token:?} {additional:?} {region}");
            if !additional.is_empty() {
                assert_eq!(lookup(&query, "x-oss-additional-headers"), Some("abc;zabc"));
            }
        }
    }

    // OSS-PROTOCOL.md V4-B (UploadPart with token), V4-C (ListObjectsV2), V4-D (presigned GET).
    #[test]
    fn v4_protocol_doc_examples() {
        let now = parse_rfc1123("Tue, 20 Dec 2022 08:48:18 GMT").unwrap();
        let signer = Signer::new(SignatureVersion::V4, "cn-hangzhou");
        assert_eq!(
            hex::encode(signing_key_v4("OSSEXAMPLESECRET", "20221220", "cn-hangzhou", "oss")),
            "a4bff14ef495d4c8cd3782b70c04183e92f0fcc3f035ea62da2c9487d2955db2"
        );

        let creds = Credentials::new("OSSEXAMPLEAK", "OSSEXAMPLESECRET").with_session_token("STSEXAMPLETOKEN");
        let mut h =
            headers(&[("Content-Type", "application/octet-stream"), ("Content-MD5", "eB5eJF1ptWaXm4bijSPyxw==")]);
        let query = q(&[("partNumber", "3"), ("uploadId", "0004B9894A22E5B1888A1E29F823ABCD")]);
        signer.sign_headers(&creds, "PUT", Some("my-bucket"), Some("backups/2024 db.tar"), &query, &mut h, now);
        assert!(
            h["authorization"]
                .to_str()
                .unwrap()
                .ends_with("Signature=d3a2d2fca4ce1a1280c0112c83d31cc563f9400f8dcf71ccf25d83a79fa13e08")
        );

        let creds = Credentials::new("OSSEXAMPLEAK", "OSSEXAMPLESECRET");
        let mut h = HeaderMap::new();
        let query = q(&[
            ("list-type", "2"),
            ("prefix", "photos/2024/"),
            ("delimiter", "/"),
            ("max-keys", "100"),
            ("encoding-type", "url"),
            ("continuation-token", ""),
        ]);
        signer.sign_headers(&creds, "GET", Some("my-bucket"), None, &query, &mut h, now);
        assert_eq!(
            canonical_query_v4(&query),
            "continuation-token&delimiter=%2F&encoding-type=url&list-type=2&max-keys=100&prefix=photos%2F2024%2F"
        );
        assert!(
            h["authorization"]
                .to_str()
                .unwrap()
                .ends_with("Signature=1d5470205fae7b57fb56979284c2c697bfa761054bfc43182061461fcdd0e79c")
        );

        let mut query = Vec::new();
        signer.presign(
            &creds,
            "GET",
            Some("my-bucket"),
            Some("backups/2024 db.tar"),
            &mut query,
            &HeaderMap::new(),
            &[],
            now,
            Duration::from_secs(3600),
        );
        assert_eq!(
            lookup(&query, "x-oss-signature"),
            Some("9ae002421570dc39783c28e94809f9317d5e9773759844b03edf18c3f3a3daf1")
        );
    }

    #[test]
    fn encoding_rules() {
        assert_eq!(uri_encode("a b+c/d~e", true), "a%20b%2Bc/d~e");
        assert_eq!(uri_encode("a b+c/d~e", false), "a%20b%2Bc%2Fd~e");
        assert_eq!(uri_encode("中", false), "%E4%B8%AD");
        assert_eq!(canonical_uri_v4(None, None), "/");
        assert_eq!(canonical_uri_v4(Some("b"), None), "/b/");
        assert_eq!(
            canonical_resource_v1(
                Some("b"),
                Some("k"),
                &q(&[("uploadId", "X"), ("partNumber", "3"), ("max-parts", "5")]),
                &[]
            ),
            "/b/k?partNumber=3&uploadId=X"
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn v1_never_sends_x_oss_date() {
        let creds = Credentials::new("ak", "sk");
        let mut h = headers(&[("x-oss-date", "20231216T162057Z")]);
        Signer::new(SignatureVersion::V1, "r").sign_headers(
            &creds,
            "GET",
            Some("b"),
            Some("k"),
            &[],
            &mut h,
            from_unix_secs(0),
        );
        assert!(!h.contains_key("x-oss-date"));
        assert!(h["authorization"].to_str().unwrap().starts_with("OSS ak:"));
    }
}
