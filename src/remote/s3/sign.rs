//! AWS Signature Version 4 (`AWS4-HMAC-SHA256`) for header-signed requests.
//!
//! The canonicalization functions are pure and take the request as it goes on the wire: the canonical URI
//! is the path exactly as sent (S3 never normalizes it), the query is decoded names and values that are
//! re-encoded here (RFC 3986, `/` as `%2F`, a bare name signed as `name=`), and every header we set is
//! signed except the few that proxies and HTTP stacks may rewrite. The time comes in as an argument, so
//! golden tests pin the whole chain with AWS's published test suite (`aws-sig-v4-test-suite`) and the S3
//! documentation's worked example.
//!
//! The payload is `UNSIGNED-PAYLOAD` unless the client is told to sign it (some servers insist); it is
//! never `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` (`aws-chunked`), which OSS's S3 API rejects and which would
//! hide the body's checksum in a trailer.

use std::time::SystemTime;

use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::{Digest as _, Sha256};

use crate::remote::Credentials;
pub use crate::remote::oss::sign::uri_encode;
use crate::timefmt;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const TERMINATOR: &str = "aws4_request";
/// `x-amz-content-sha256` when the body is not hashed into the signature.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// SHA-256 of the empty string, the payload hash of a request without a body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Headers never signed: HTTP stacks and proxies add, drop or rewrite them (botocore's list, plus the
/// `Authorization` being computed).
const UNSIGNED_HEADERS: &[&str] =
    &["authorization", "connection", "expect", "transfer-encoding", "user-agent", "x-amzn-trace-id"];

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// Hex SHA-256, for payload hashes.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Every parameter `name=value`, both RFC 3986 encoded (`/` as `%2F`), sorted by name then value. A
/// parameter without a value is still `name=` (unlike OSS V4, which signs a bare name).
pub fn canonical_query(query: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> =
        query.iter().map(|(n, v)| (uri_encode(n, false), uri_encode(v, false))).collect();
    encoded.sort();
    encoded.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("&")
}

/// A header value as signed: trimmed, inner runs of spaces and tabs collapsed to one space.
pub fn canonical_value(value: &str) -> String {
    value.split([' ', '\t']).filter(|p| !p.is_empty()).collect::<Vec<_>>().join(" ")
}

/// `(canonical headers block, signed header list)` from `(name, value)` pairs: names lower-cased and
/// sorted, repeated names joined with `,` in the order given.
pub fn canonical_headers(headers: &[(String, String)]) -> (String, String) {
    let mut sorted: Vec<(String, String)> =
        headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), canonical_value(v))).collect();
    // Stable: repeated headers keep their order, as the suite's get-header-value-order requires.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut merged: Vec<(String, String)> = Vec::with_capacity(sorted.len());
    for (name, value) in sorted {
        match merged.last_mut() {
            Some((last, joined)) if *last == name => {
                joined.push(',');
                joined.push_str(&value);
            }
            _ => merged.push((name, value)),
        }
    }
    let block = merged.iter().map(|(n, v)| format!("{n}:{v}\n")).collect::<String>();
    let signed = merged.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(";");
    (block, signed)
}

/// The canonical request and the signed header list.
pub fn canonical_request(
    method: &str,
    canonical_uri: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    payload_hash: &str,
) -> (String, String) {
    let (block, signed) = canonical_headers(headers);
    let query = canonical_query(query);
    (format!("{method}\n{canonical_uri}\n{query}\n{block}\n{signed}\n{payload_hash}"), signed)
}

/// `yyyymmdd/region/service/aws4_request`.
pub fn scope(day: &str, region: &str, service: &str) -> String {
    format!("{day}/{region}/{service}/{TERMINATOR}")
}

pub fn string_to_sign(timestamp: &str, scope: &str, canonical_request: &str) -> String {
    format!("{ALGORITHM}\n{timestamp}\n{scope}\n{}", sha256_hex(canonical_request.as_bytes()))
}

/// `"AWS4" + secret` → day → region → service → `aws4_request`.
pub fn signing_key(secret: &str, day: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), day.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, TERMINATOR.as_bytes())
}

pub fn signature(signing_key: &[u8; 32], string_to_sign: &str) -> String {
    hex::encode(hmac_sha256(signing_key, string_to_sign.as_bytes()))
}

/// Signs requests for one region and service (`s3`); the time is passed in (tests inject it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub region: String,
    pub service: String,
}

fn put_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

impl Signer {
    pub fn new(region: impl Into<String>) -> Self {
        Signer { region: region.into(), service: "s3".into() }
    }

    /// Add `x-amz-date`, `x-amz-content-sha256`, the session token and `Authorization` to a request about
    /// to be sent at `now`. `headers` must already hold `Host` and every header that will be sent (they are
    /// all signed); `canonical_uri` is the encoded path exactly as sent.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        &self,
        credentials: &Credentials,
        method: &str,
        canonical_uri: &str,
        query: &[(String, String)],
        headers: &mut HeaderMap,
        payload_hash: &str,
        now: SystemTime,
    ) {
        headers.remove(http::header::AUTHORIZATION);
        let timestamp = timefmt::iso8601_basic(now);
        let day = timefmt::iso8601_day(now);
        put_header(headers, "x-amz-date", &timestamp);
        put_header(headers, "x-amz-content-sha256", payload_hash);
        match &credentials.session_token {
            Some(token) => put_header(headers, "x-amz-security-token", token.expose()),
            None => {
                headers.remove("x-amz-security-token");
            }
        }
        let pairs: Vec<(String, String)> = headers
            .iter()
            .filter(|(name, _)| !UNSIGNED_HEADERS.contains(&name.as_str()))
            .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let (canonical, signed) = canonical_request(method, canonical_uri, query, &pairs, payload_hash);
        let scope = scope(&day, &self.region, &self.service);
        let sts = string_to_sign(&timestamp, &scope, &canonical);
        let key = signing_key(credentials.access_key_secret.expose(), &day, &self.region, &self.service);
        let authorization = format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed}, Signature={}",
            credentials.access_key_id,
            signature(&key, &sts)
        );
        put_header(headers, "authorization", &authorization);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's published SigV4 test suite (aws-sig-v4-test-suite): credentials AKIDEXAMPLE /
    // wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, region us-east-1, service "service", 2015-08-30T12:36:00Z.
    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    /// Sign one suite request; returns the full Authorization value.
    fn suite(
        method: &str,
        uri: &str,
        query: &[(&str, &str)],
        extra_headers: &[(&str, &str)],
        payload_hash: &str,
    ) -> String {
        let mut headers = pairs(&[("Host", "example.amazonaws.com"), ("X-Amz-Date", DATE)]);
        headers.extend(pairs(extra_headers));
        let (canonical, signed) = canonical_request(method, uri, &pairs(query), &headers, payload_hash);
        let scope = scope("20150830", "us-east-1", "service");
        let sts = string_to_sign(DATE, &scope, &canonical);
        let sig = signature(&signing_key(SECRET, "20150830", "us-east-1", "service"), &sts);
        format!("{ALGORITHM} Credential={AKID}/{scope}, SignedHeaders={signed}, Signature={sig}")
    }

    fn authz(signed: &str, sig: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders={signed}, Signature={sig}"
        )
    }

    #[test]
    fn get_vanilla_and_query_cases() {
        let hd = "host;x-amz-date";
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("get-vanilla", &[], "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
            (
                "get-vanilla-query-order-key-case",
                &[("Param2", "value2"), ("Param1", "value1")],
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            (
                "get-vanilla-query-order-key",
                &[("Param1", "value2"), ("Param1", "Value1")],
                "eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1",
            ),
            (
                "get-vanilla-query-order-value",
                &[("Param1", "value2"), ("Param1", "value1")],
                "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694",
            ),
            (
                "get-vanilla-query-order-encoded",
                &[("Param-3", "Value3"), ("Param", "Value2"), ("\u{1234}", "Value1")],
                "371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac",
            ),
            (
                "get-vanilla-query-unreserved",
                &[(
                    "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                    "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                )],
                "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197",
            ),
            (
                "get-vanilla-utf8-query",
                &[("\u{1234}", "bar")],
                "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
            ),
        ];
        for (name, query, sig) in cases {
            assert_eq!(suite("GET", "/", query, &[], EMPTY_SHA256), authz(hd, sig), "{name}");
        }
        // Encoded paths are signed as sent: get-utf8, get-unreserved, get-space.
        for (uri, sig) in [
            ("/%E1%88%B4", "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
            (
                "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
            ),
            ("/example%20space/", "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"),
        ] {
            assert_eq!(suite("GET", uri, &[], &[], EMPTY_SHA256), authz(hd, sig), "{uri}");
        }
        assert_eq!(uri_encode("example space/$delete", true), "example%20space/%24delete");
    }

    #[test]
    fn header_cases() {
        let h1 = "host;my-header1;x-amz-date";
        // get-header-value-trim: leading spaces dropped, inner runs collapsed.
        assert_eq!(
            suite("GET", "/", &[], &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")], EMPTY_SHA256),
            authz(
                "host;my-header1;my-header2;x-amz-date",
                "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"
            )
        );
        // get-header-key-duplicate and get-header-value-order: repeated headers joined in order.
        assert_eq!(
            suite(
                "GET",
                "/",
                &[],
                &[("My-Header1", "value2"), ("My-Header1", "value2"), ("My-Header1", "value1")],
                EMPTY_SHA256
            ),
            authz(h1, "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea")
        );
        assert_eq!(
            suite(
                "GET",
                "/",
                &[],
                &[
                    ("My-Header1", "value4"),
                    ("My-Header1", "value1"),
                    ("My-Header1", "value3"),
                    ("My-Header1", "value2")
                ],
                EMPTY_SHA256
            ),
            authz(h1, "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01")
        );
        // post-header-key-sort, post-header-value-case.
        assert_eq!(
            suite("POST", "/", &[], &[("My-Header1", "value1")], EMPTY_SHA256),
            authz(h1, "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c")
        );
        assert_eq!(
            suite("POST", "/", &[], &[("My-Header1", "VALUE1")], EMPTY_SHA256),
            authz(h1, "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d")
        );
    }

    #[test]
    fn post_cases() {
        let hd = "host;x-amz-date";
        assert_eq!(
            suite("POST", "/", &[], &[], EMPTY_SHA256),
            authz(hd, "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")
        );
        assert_eq!(
            suite("POST", "/", &[("Param1", "value1")], &[], EMPTY_SHA256),
            authz(hd, "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11")
        );
        // post-x-www-form-urlencoded(-parameters): a signed payload hash.
        let body = sha256_hex(b"Param1=value1");
        assert_eq!(body, "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e");
        assert_eq!(
            suite("POST", "/", &[], &[("Content-Type", "application/x-www-form-urlencoded")], &body),
            authz("content-type;host;x-amz-date", "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a")
        );
        assert_eq!(
            suite("POST", "/", &[], &[("Content-Type", "application/x-www-form-urlencoded; charset=utf8")], &body),
            authz("content-type;host;x-amz-date", "1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe")
        );
    }

    #[test]
    fn session_token_is_signed() {
        // get-vanilla-with-session-token and post-sts-header-before.
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        assert_eq!(
            suite("GET", "/", &[], &[("X-Amz-Security-Token", token)], EMPTY_SHA256),
            authz(
                "host;x-amz-date;x-amz-security-token",
                "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
            )
        );
    }

    /// The S3 documentation's worked example (GetObject with a Range, "examplebucket"), through the client
    /// signer with an injected clock: date, payload hash and Authorization as the document shows them.
    #[test]
    fn s3_documented_get_object_example() {
        // The S3 guide's example secret differs from the suite's by one character (`/` for `+`).
        let creds = Credentials::new("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("examplebucket.s3.amazonaws.com"));
        headers.insert("range", HeaderValue::from_static("bytes=0-9"));
        headers.insert("user-agent", HeaderValue::from_static("not signed"));
        let now = timefmt::parse_iso8601_basic("20130524T000000Z").unwrap();
        Signer::new("us-east-1").sign(&creds, "GET", "/test.txt", &[], &mut headers, EMPTY_SHA256, now);
        assert_eq!(headers["x-amz-date"], "20130524T000000Z");
        assert_eq!(headers["x-amz-content-sha256"], EMPTY_SHA256);
        assert_eq!(
            headers["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(headers.get("x-amz-security-token").is_none());
    }

    #[test]
    fn bare_query_names_are_signed_with_an_equals_sign() {
        let q = pairs(&[("uploads", ""), ("prefix", "a b/c+d"), ("list-type", "2")]);
        assert_eq!(canonical_query(&q), "list-type=2&prefix=a%20b%2Fc%2Bd&uploads=");
        assert_eq!(canonical_value("  a \t  b  "), "a b");
    }
}
