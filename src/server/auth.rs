//! Request authentication: OSS Signature V1 and V4, each as an `Authorization` header or a presigned URL
//! (OSS-PROTOCOL.md §1.8, §2.9, §3).
//!
//! Verification rebuilds the string to sign with the same pure functions the client signs with
//! (`remote::oss::sign`), from the *decoded* bucket, key and query, never from the raw URL, so path-style
//! and virtual-hosted requests and every SDK's choice of escaping verify alike.
//!
//! Order of checks, and the answer to each failure (as OSS answers them):
//! 1. malformed `Authorization` or presign parameters → 400 `InvalidArgument`;
//! 2. unknown AccessKeyId → 403 `InvalidAccessKeyId`;
//! 3. the session token, when one is configured: missing or wrong → 403 `InvalidSecurityToken`, marked
//!    expired → 403 `SecurityTokenExpired`;
//! 4. missing or unreadable date → 403 `AccessDenied`;
//! 5. signature → 403 `SignatureDoesNotMatch`, with `StringToSign` (and V4's `CanonicalRequest`) in the body;
//! 6. time: header auth more than 15 minutes off → 403 `RequestTimeTooSkewed`; a presigned URL past its
//!    expiry → 403 `AccessDenied` "Request has expired.".
//!
//! A request with no signature at all is anonymous: 403 `AccessDenied` (this server has no public ACLs).

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use super::error::OssError;
use crate::remote::Secret;
use crate::remote::oss::sign::{
    SignInput, UNSIGNED_PAYLOAD, V4_ALGORITHM, V4_TERMINATOR, additional_headers_v4, canonical_request_v4,
    constant_time_eq, scope_v4, signature_v1, signature_v4, signing_key_v4, string_to_sign_v1, string_to_sign_v4,
};
use crate::timefmt;

/// The largest clock difference OSS tolerates for header-signed requests.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// The longest validity of a V4 presigned URL.
pub const MAX_V4_EXPIRES: u64 = 604_800;

/// The credentials requests must be signed with.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub access_key_id: String,
    pub access_key_secret: Secret,
    /// When set, every signed request must carry this STS token.
    pub session_token: Option<Secret>,
    /// When set, V4 credential scopes must name this region.
    pub region: Option<String>,
}

/// What a signature covers, from the decoded request.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    pub method: &'a str,
    pub bucket: Option<&'a str>,
    pub key: Option<&'a str>,
    pub query: &'a [(String, String)],
    pub headers: &'a HeaderMap,
}

impl<'a> AuthRequest<'a> {
    fn sign_input(&self) -> SignInput<'a> {
        SignInput { method: self.method, bucket: self.bucket, key: self.key, query: self.query, headers: self.headers }
    }

    fn param(&self, name: &str) -> Option<&'a str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
    }
}

/// Verify a request; `Ok` when it is correctly signed (or nothing is configured).
pub fn verify(cfg: &AuthConfig, req: &AuthRequest<'_>, now: SystemTime, token_expired: bool) -> Result<(), OssError> {
    if let Some(auth) = req.headers.get(http::header::AUTHORIZATION) {
        let auth = auth.to_str().map_err(|_| malformed("The Authorization header is not ASCII."))?.trim();
        if let Some(rest) = auth.strip_prefix(V4_ALGORITHM) {
            return verify_v4_header(cfg, req, rest, now, token_expired);
        }
        if let Some(rest) = auth.strip_prefix("OSS ") {
            return verify_v1_header(cfg, req, rest, now, token_expired);
        }
        return Err(malformed("Authorization header is invalid."));
    }
    if req.param("x-oss-signature-version").is_some() || req.param("x-oss-signature").is_some() {
        return verify_v4_presigned(cfg, req, now, token_expired);
    }
    if req.param("OSSAccessKeyId").is_some() || req.param("Signature").is_some() {
        return verify_v1_presigned(cfg, req, now, token_expired);
    }
    Err(OssError::access_denied("You have no right to access this object because of bucket acl."))
}

fn malformed(message: &str) -> OssError {
    OssError::invalid_argument(message)
}

fn check_access_key(cfg: &AuthConfig, ak: &str) -> Result<(), OssError> {
    if ak == cfg.access_key_id {
        Ok(())
    } else {
        Err(OssError::new(
            http::StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            "The OSS Access Key Id you provided does not exist in our records.",
        )
        .with("OSSAccessKeyId", ak))
    }
}

fn check_token(cfg: &AuthConfig, provided: Option<&str>, token_expired: bool) -> Result<(), OssError> {
    let Some(expected) = &cfg.session_token else { return Ok(()) };
    match provided {
        Some(t) if constant_time_eq(t.as_bytes(), expected.expose().as_bytes()) => {
            if token_expired {
                Err(OssError::new(
                    http::StatusCode::FORBIDDEN,
                    "SecurityTokenExpired",
                    "The security token you provided has expired.",
                )
                .with_ec("0002-00000007")
                .with("SecurityToken", t))
            } else {
                Ok(())
            }
        }
        _ => Err(OssError::new(
            http::StatusCode::FORBIDDEN,
            "InvalidSecurityToken",
            "The security token you provided is invalid.",
        )
        .with_ec("0002-00000003")),
    }
}

fn signature_mismatch(string_to_sign: &str, provided: &str, ak: &str, canonical: Option<&str>) -> OssError {
    let bytes: Vec<String> = string_to_sign.bytes().map(|b| format!("{b:02X}")).collect();
    let mut e = OssError::new(
        http::StatusCode::FORBIDDEN,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. Check your key and \
         signing method.",
    )
    .with("StringToSign", string_to_sign)
    .with("StringToSignBytes", bytes.join(" "))
    .with("SignatureProvided", provided)
    .with("OSSAccessKeyId", ak);
    if let Some(c) = canonical {
        e = e.with("CanonicalRequest", c);
    }
    e
}

fn skew_check(request_time: SystemTime, now: SystemTime) -> Result<(), OssError> {
    let skew = match now.duration_since(request_time) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > MAX_SKEW {
        return Err(OssError::new(
            http::StatusCode::FORBIDDEN,
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
        )
        .with("RequestTime", timefmt::xml_date(request_time))
        .with("ServerTime", timefmt::xml_date(now))
        .with("MaxAllowedSkewMilliseconds", MAX_SKEW.as_millis().to_string()));
    }
    Ok(())
}

fn expired(expires_at: SystemTime, now: SystemTime) -> OssError {
    OssError::access_denied("Request has expired.")
        .with("Expires", timefmt::xml_date(expires_at))
        .with("ServerTime", timefmt::xml_date(now))
}

fn missing_date() -> OssError {
    OssError::access_denied("OSS authentication requires a valid Date.")
}

// -------------------------------------------------------------------------------------------------------
// V1

fn verify_v1_header(
    cfg: &AuthConfig,
    req: &AuthRequest<'_>,
    credentials: &str,
    now: SystemTime,
    token_expired: bool,
) -> Result<(), OssError> {
    let (ak, provided) = credentials
        .trim()
        .split_once(':')
        .filter(|(ak, sig)| !ak.is_empty() && !sig.is_empty())
        .ok_or_else(|| malformed("Authorization header is invalid. Expected OSS AccessKeyId:Signature."))?;
    check_access_key(cfg, ak)?;
    check_token(cfg, req.header("x-oss-security-token"), token_expired)?;
    // V1 signs the Date header; py-oss2 signs x-oss-date instead when it sends one (§1.2), so accept either.
    let dates: Vec<&str> = [req.header("date"), req.header("x-oss-date")].into_iter().flatten().collect();
    // A request whose dates are all unreadable is refused as such, before any signature is compared.
    if dates.iter().all(|d| timefmt::parse_rfc1123(d).is_none()) {
        return Err(missing_date());
    }
    let secret = cfg.access_key_secret.expose();
    let input = req.sign_input();
    let mut first_sts = None;
    for date in &dates {
        let sts = string_to_sign_v1(&input, date, &[]);
        if constant_time_eq(signature_v1(secret, &sts).as_bytes(), provided.as_bytes()) {
            // The skew check must use the date the signature covers: checking a fresh, unsigned Date while
            // the signature covers an old x-oss-date would let a captured request be replayed forever.
            let request_time = timefmt::parse_rfc1123(date).ok_or_else(missing_date)?;
            return skew_check(request_time, now);
        }
        first_sts.get_or_insert(sts);
    }
    Err(signature_mismatch(&first_sts.unwrap_or_default(), provided, ak, None))
}

fn verify_v1_presigned(
    cfg: &AuthConfig,
    req: &AuthRequest<'_>,
    now: SystemTime,
    token_expired: bool,
) -> Result<(), OssError> {
    let ak = req.param("OSSAccessKeyId").filter(|s| !s.is_empty());
    let provided = req.param("Signature").filter(|s| !s.is_empty());
    let expires = req.param("Expires");
    let (Some(ak), Some(provided), Some(expires)) = (ak, provided, expires) else {
        return Err(malformed("A presigned URL needs OSSAccessKeyId, Expires and Signature."));
    };
    let expires_at: i64 = expires
        .parse()
        .map_err(|_| OssError::invalid_argument_named("Expires", expires, "Expires must be Unix seconds."))?;
    check_access_key(cfg, ak)?;
    check_token(cfg, req.param("security-token"), token_expired)?;
    let sts = string_to_sign_v1(&req.sign_input(), expires, &[]);
    if !constant_time_eq(signature_v1(cfg.access_key_secret.expose(), &sts).as_bytes(), provided.as_bytes()) {
        return Err(signature_mismatch(&sts, provided, ak, None));
    }
    if timefmt::unix_secs(now) > expires_at {
        return Err(expired(timefmt::from_unix_secs(expires_at), now));
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------------------
// V4

/// `<AK>/<yyyymmdd>/<region>/<product>/aliyun_v4_request`.
struct Credential<'a> {
    ak: &'a str,
    day: &'a str,
    region: &'a str,
    product: &'a str,
}

fn parse_credential(value: &str) -> Result<Credential<'_>, OssError> {
    let fields: Vec<&str> = value.split('/').collect();
    match fields.as_slice() {
        [ak, day, region, product, terminator]
            if !ak.is_empty()
                && day.len() == 8
                && day.bytes().all(|b| b.is_ascii_digit())
                && !region.is_empty()
                && !product.is_empty()
                && *terminator == V4_TERMINATOR =>
        {
            Ok(Credential { ak, day, region, product })
        }
        _ => Err(malformed("Invalid Credential in the signature: expected AK/yyyymmdd/region/oss/aliyun_v4_request.")),
    }
}

fn check_region(cfg: &AuthConfig, cred: &Credential<'_>) -> Result<(), OssError> {
    match &cfg.region {
        Some(r) if r != cred.region => Err(OssError::invalid_argument(format!(
            "Invalid signing region in Authorization header: {}, expected {r}.",
            cred.region
        ))),
        _ => Ok(()),
    }
}

fn split_additional(list: &str) -> Result<Vec<&str>, OssError> {
    if list.trim().is_empty() {
        return Err(malformed("AdditionalHeaders is empty.").with_ec("0002-00000209"));
    }
    Ok(list.split(';').map(str::trim).filter(|s| !s.is_empty()).collect())
}

/// Compute the V4 signature for `req` and compare.
#[allow(clippy::too_many_arguments)]
fn check_v4_signature(
    cfg: &AuthConfig,
    req: &AuthRequest<'_>,
    cred: &Credential<'_>,
    timestamp: &str,
    additional: &[&str],
    provided: &str,
) -> Result<(), OssError> {
    let additional = additional_headers_v4(additional, req.headers);
    let canonical = canonical_request_v4(&req.sign_input(), &additional);
    let scope = scope_v4(cred.day, cred.region, cred.product);
    let sts = string_to_sign_v4(timestamp, &scope, &canonical);
    let key = signing_key_v4(cfg.access_key_secret.expose(), cred.day, cred.region, cred.product);
    let expected = signature_v4(&key, &sts);
    if constant_time_eq(expected.as_bytes(), provided.to_ascii_lowercase().as_bytes()) {
        Ok(())
    } else {
        Err(signature_mismatch(&sts, provided, cred.ak, Some(&canonical)))
    }
}

fn verify_v4_header(
    cfg: &AuthConfig,
    req: &AuthRequest<'_>,
    rest: &str,
    now: SystemTime,
    token_expired: bool,
) -> Result<(), OssError> {
    if !rest.starts_with(' ') {
        return Err(malformed("Authorization header is invalid."));
    }
    let (mut credential, mut signature, mut additional) = (None, None, None);
    // go-v2/py-v2 separate with ",", py-oss2 and the docs with ", "; py-oss2 puts AdditionalHeaders last.
    for field in rest.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (name, value) = field.split_once('=').ok_or_else(|| malformed("Authorization header is invalid."))?;
        match name.trim() {
            "Credential" => credential = Some(value.trim()),
            "Signature" => signature = Some(value.trim()),
            "AdditionalHeaders" => additional = Some(value.trim()),
            _ => return Err(malformed("Authorization header is invalid: unknown field.")),
        }
    }
    let (Some(credential), Some(provided)) = (credential, signature.filter(|s| !s.is_empty())) else {
        return Err(malformed("Authorization header is invalid: Credential and Signature are required."));
    };
    let cred = parse_credential(credential)?;
    let additional = match additional {
        Some(list) => split_additional(list)?,
        None => Vec::new(),
    };
    check_access_key(cfg, cred.ak)?;
    check_region(cfg, &cred)?;
    check_token(cfg, req.header("x-oss-security-token"), token_expired)?;
    match req.header("x-oss-content-sha256") {
        Some(UNSIGNED_PAYLOAD) => {}
        Some(other) => {
            return Err(OssError::invalid_argument_named(
                "x-oss-content-sha256",
                other,
                "x-oss-content-sha256 must be UNSIGNED-PAYLOAD.",
            )
            .with_ec("0002-00000214"));
        }
        None => return Err(malformed("Missing required header x-oss-content-sha256.").with_ec("0002-00000214")),
    }
    // TimeStamp: x-oss-date (ISO 8601 basic), or else the Date header verbatim (go-v1's V4 mode).
    let (timestamp, request_time) = match req.header("x-oss-date") {
        Some(d) => match timefmt::parse_iso8601_basic(d) {
            Some(t) => (d, t),
            None => return Err(OssError::access_denied("Invalid x-oss-date format.").with_ec("0002-00000502")),
        },
        None => {
            let d = req.header("date").ok_or_else(missing_date)?;
            (d, timefmt::parse_rfc1123(d).ok_or_else(missing_date)?)
        }
    };
    if timefmt::iso8601_day(request_time) != cred.day {
        return Err(malformed("Invalid credential date. Date is not the same as x-oss-date."));
    }
    check_v4_signature(cfg, req, &cred, timestamp, &additional, provided)?;
    skew_check(request_time, now)
}

fn verify_v4_presigned(
    cfg: &AuthConfig,
    req: &AuthRequest<'_>,
    now: SystemTime,
    token_expired: bool,
) -> Result<(), OssError> {
    match req.param("x-oss-signature-version") {
        Some(V4_ALGORITHM) => {}
        other => {
            return Err(OssError::invalid_argument_named(
                "x-oss-signature-version",
                other.unwrap_or(""),
                "x-oss-signature-version must be OSS4-HMAC-SHA256.",
            ));
        }
    }
    let (Some(credential), Some(date), Some(expires), Some(provided)) = (
        req.param("x-oss-credential"),
        req.param("x-oss-date"),
        req.param("x-oss-expires"),
        req.param("x-oss-signature").filter(|s| !s.is_empty()),
    ) else {
        return Err(malformed(
            "A V4 presigned URL needs x-oss-credential, x-oss-date, x-oss-expires and x-oss-signature.",
        ));
    };
    let cred = parse_credential(credential)?;
    let expires_secs: u64 = expires.parse().ok().filter(|e| (1..=MAX_V4_EXPIRES).contains(e)).ok_or_else(|| {
        OssError::invalid_argument_named("x-oss-expires", expires, "x-oss-expires must be 1 to 604800.")
    })?;
    let request_time = timefmt::parse_iso8601_basic(date)
        .ok_or_else(|| OssError::access_denied("Invalid x-oss-date format.").with_ec("0002-00000502"))?;
    if timefmt::iso8601_day(request_time) != cred.day {
        return Err(malformed("Invalid credential date. Date is not the same as x-oss-date."));
    }
    let additional = match req.param("x-oss-additional-headers") {
        Some(list) => split_additional(list)?,
        None => Vec::new(),
    };
    check_access_key(cfg, cred.ak)?;
    check_region(cfg, &cred)?;
    check_token(cfg, req.param("x-oss-security-token"), token_expired)?;
    check_v4_signature(cfg, req, &cred, date, &additional, provided)?;
    let expires_at = request_time + Duration::from_secs(expires_secs);
    if now > expires_at {
        return Err(expired(expires_at, now));
    }
    // A URL signed by a clock far ahead of ours.
    if request_time > now + MAX_SKEW {
        return skew_check(request_time, now);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::Credentials;
    use crate::remote::oss::sign::{SignatureVersion, Signer};
    use http::{HeaderName, HeaderValue};

    fn cfg(token: Option<&str>) -> AuthConfig {
        AuthConfig {
            access_key_id: "AK".into(),
            access_key_secret: Secret::new("SK"),
            session_token: token.map(Secret::new),
            region: None,
        }
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn signed(version: SignatureVersion, creds: &Credentials, query: &[(String, String)], at: SystemTime) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("x-oss-meta-a", HeaderValue::from_static("b"));
        Signer::new(version, "cn-hangzhou").sign_headers(creds, "PUT", Some("bkt"), Some("a b/c+d"), query, &mut h, at);
        h
    }

    fn req<'a>(headers: &'a HeaderMap, query: &'a [(String, String)]) -> AuthRequest<'a> {
        AuthRequest { method: "PUT", bucket: Some("bkt"), key: Some("a b/c+d"), query, headers }
    }

    #[test]
    fn header_signatures_verify_and_tampering_fails() {
        let now = SystemTime::now();
        let query = q(&[("partNumber", "1"), ("uploadId", "U")]);
        for version in [SignatureVersion::V1, SignatureVersion::V4] {
            let h = signed(version, &Credentials::new("AK", "SK"), &query, now);
            verify(&cfg(None), &req(&h, &query), now, false).unwrap();

            let wrong = signed(version, &Credentials::new("AK", "nope"), &query, now);
            let e = verify(&cfg(None), &req(&wrong, &query), now, false).unwrap_err();
            assert_eq!(e.code, "SignatureDoesNotMatch", "{version:?}");
            assert!(e.extra.iter().any(|(n, _)| *n == "StringToSign"));

            let other_query = q(&[("partNumber", "2"), ("uploadId", "U")]);
            assert_eq!(
                verify(&cfg(None), &req(&h, &other_query), now, false).unwrap_err().code,
                "SignatureDoesNotMatch"
            );

            let unknown = signed(version, &Credentials::new("OTHER", "SK"), &query, now);
            assert_eq!(verify(&cfg(None), &req(&unknown, &query), now, false).unwrap_err().code, "InvalidAccessKeyId");

            let late = now + Duration::from_secs(16 * 60);
            assert_eq!(verify(&cfg(None), &req(&h, &query), late, false).unwrap_err().code, "RequestTimeTooSkewed");
        }
    }

    /// A V1 signature covering an old `x-oss-date` (py-oss2 signs it when present) must not be revived by
    /// a fresh, unsigned `Date`: the skew check applies to the date the signature covers.
    #[test]
    fn v1_replay_with_a_fresh_date_header_is_refused() {
        use crate::remote::oss::sign::{SignInput, signature_v1, string_to_sign_v1};
        let now = SystemTime::now();
        let old = crate::timefmt::rfc1123(now - Duration::from_secs(3600));
        let query = q(&[]);
        let mut h = HeaderMap::new();
        h.insert("x-oss-date", HeaderValue::from_str(&old).unwrap());
        let input = SignInput { method: "PUT", bucket: Some("bkt"), key: Some("a b/c+d"), query: &query, headers: &h };
        let sig = signature_v1("SK", &string_to_sign_v1(&input, &old, &[]));
        h.insert("authorization", HeaderValue::from_str(&format!("OSS AK:{sig}")).unwrap());
        h.insert("date", HeaderValue::from_str(&crate::timefmt::rfc1123(now)).unwrap());
        assert_eq!(verify(&cfg(None), &req(&h, &query), now, false).unwrap_err().code, "RequestTimeTooSkewed");
        // The same request within the skew window is fine.
        assert!(verify(&cfg(None), &req(&h, &query), now - Duration::from_secs(3600), false).is_ok());
    }

    #[test]
    fn session_tokens() {
        let now = SystemTime::now();
        let query = q(&[]);
        for version in [SignatureVersion::V1, SignatureVersion::V4] {
            let with = signed(version, &Credentials::new("AK", "SK").with_session_token("T"), &query, now);
            let without = signed(version, &Credentials::new("AK", "SK"), &query, now);
            let wrong = signed(version, &Credentials::new("AK", "SK").with_session_token("X"), &query, now);
            verify(&cfg(Some("T")), &req(&with, &query), now, false).unwrap();
            assert_eq!(
                verify(&cfg(Some("T")), &req(&without, &query), now, false).unwrap_err().code,
                "InvalidSecurityToken"
            );
            assert_eq!(
                verify(&cfg(Some("T")), &req(&wrong, &query), now, false).unwrap_err().code,
                "InvalidSecurityToken"
            );
            assert_eq!(
                verify(&cfg(Some("T")), &req(&with, &query), now, true).unwrap_err().code,
                "SecurityTokenExpired"
            );
        }
    }

    #[test]
    fn presigned_urls_verify_and_expire() {
        let now = SystemTime::now();
        for version in [SignatureVersion::V1, SignatureVersion::V4] {
            let mut query = q(&[("response-content-type", "text/plain")]);
            let headers = HeaderMap::new();
            Signer::new(version, "cn-hangzhou").presign(
                &Credentials::new("AK", "SK"),
                "GET",
                Some("bkt"),
                Some("k"),
                &mut query,
                &headers,
                &[],
                now,
                Duration::from_secs(60),
            );
            let r =
                AuthRequest { method: "GET", bucket: Some("bkt"), key: Some("k"), query: &query, headers: &headers };
            verify(&cfg(None), &r, now, false).unwrap();
            let e = verify(&cfg(None), &r, now + Duration::from_secs(120), false).unwrap_err();
            assert_eq!((e.code.as_str(), e.message.as_str()), ("AccessDenied", "Request has expired."));
            let other = AuthRequest { key: Some("k2"), ..r };
            assert_eq!(verify(&cfg(None), &other, now, false).unwrap_err().code, "SignatureDoesNotMatch");
        }
    }

    #[test]
    fn malformed_and_anonymous() {
        let now = SystemTime::now();
        let query = q(&[]);
        let mut h = HeaderMap::new();
        assert_eq!(verify(&cfg(None), &req(&h, &query), now, false).unwrap_err().code, "AccessDenied");
        for bad in [
            "OSS",
            "OSS nocolon",
            "OSS :sig",
            "Bearer x",
            "OSS4-HMAC-SHA256",
            "OSS4-HMAC-SHA256 Credential=AK/2023/cn/oss/aliyun_v4_request,Signature=00",
            "OSS4-HMAC-SHA256 Credential=AK/20231216/cn-hangzhou/oss/aliyun_v4_request",
            "OSS4-HMAC-SHA256 Credential=AK/20231216/cn-hangzhou/oss/aliyun_v4_request,AdditionalHeaders=,Signature=00",
            "OSS4-HMAC-SHA256 garbage",
        ] {
            h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(bad).unwrap());
            let e = verify(&cfg(None), &req(&h, &query), now, false).unwrap_err();
            assert_eq!(e.status, http::StatusCode::BAD_REQUEST, "{bad}: {e}");
        }
        // A V1 header without any date.
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_static("OSS AK:c2ln"));
        assert_eq!(verify(&cfg(None), &req(&h, &query), now, false).unwrap_err().code, "AccessDenied");
        let _ = HeaderName::from_static("x");
    }

    #[test]
    fn v4_additional_headers_after_the_signature_like_py_oss2() {
        let now = SystemTime::now();
        let query = q(&[]);
        let mut h = HeaderMap::new();
        h.insert("abc", HeaderValue::from_static("value"));
        h.insert("x-oss-date", HeaderValue::from_str(&timefmt::iso8601_basic(now)).unwrap());
        h.insert("x-oss-content-sha256", HeaderValue::from_static(UNSIGNED_PAYLOAD));
        let day = timefmt::iso8601_day(now);
        let additional = additional_headers_v4(&["abc"], &h);
        let canonical = canonical_request_v4(&req(&h, &query).sign_input(), &additional);
        let sts = string_to_sign_v4(&timefmt::iso8601_basic(now), &scope_v4(&day, "cn-hangzhou", "oss"), &canonical);
        let sig = signature_v4(&signing_key_v4("SK", &day, "cn-hangzhou", "oss"), &sts);
        let auth = format!(
            "OSS4-HMAC-SHA256 Credential=AK/{day}/cn-hangzhou/oss/aliyun_v4_request, Signature={sig}, AdditionalHeaders=abc"
        );
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&auth).unwrap());
        verify(&cfg(None), &req(&h, &query), now, false).unwrap();
        // The additional header is really signed.
        h.insert("abc", HeaderValue::from_static("changed"));
        assert_eq!(verify(&cfg(None), &req(&h, &query), now, false).unwrap_err().code, "SignatureDoesNotMatch");
    }

    #[test]
    fn v4_accepts_comma_space_and_additional_headers_last() {
        let now = SystemTime::now();
        let query = q(&[]);
        let mut h = signed(SignatureVersion::V4, &Credentials::new("AK", "SK"), &query, now);
        let auth = h[http::header::AUTHORIZATION].to_str().unwrap().to_string();
        let (cred, sig) = auth.split_once(",Signature=").unwrap();
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("{cred}, Signature={sig}")).unwrap());
        verify(&cfg(None), &req(&h, &query), now, false).unwrap();
    }
}
