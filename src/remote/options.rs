//! OSS options a server user reaches for on uploads: server-side encryption, object tags, upload callbacks
//! and the per-request traffic limit. Dialect-neutral descriptions; each client renders them in its own
//! headers (or refuses them with a clear error where its API has no equivalent).

use base64::Engine as _;

use super::RemoteError;

/// Server-side encryption of a new object (`x-oss-server-side-encryption`; S3 `x-amz-server-side-encryption`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    /// Keys managed by the service (OSS `AES256`, S3 `AES256`).
    Aes256,
    /// KMS, with the CMK id to use (the service's default key when `None`).
    Kms { key_id: Option<String> },
    /// SM4 (OSS only).
    Sm4,
}

impl Encryption {
    /// `--sse AES256|KMS|SM4` with `--sse-kms-key-id`.
    pub fn parse(algorithm: &str, kms_key_id: Option<&str>) -> Result<Self, RemoteError> {
        let sse = match algorithm.trim().to_ascii_uppercase().as_str() {
            "AES256" => Encryption::Aes256,
            "KMS" => Encryption::Kms { key_id: kms_key_id.map(str::to_string) },
            "SM4" => Encryption::Sm4,
            other => {
                return Err(RemoteError::invalid_input(
                    format!("unknown server-side encryption {other:?}"),
                    "use --sse AES256, KMS or SM4",
                ));
            }
        };
        if kms_key_id.is_some() && !matches!(sse, Encryption::Kms { .. }) {
            return Err(RemoteError::invalid_input(
                "--sse-kms-key-id given without --sse KMS",
                "add --sse KMS, or drop the key id",
            ));
        }
        Ok(sse)
    }
}

/// An upload callback (OSS): once the object is stored, the server POSTs `body` (a template with
/// `${bucket}`, `${object}`, `${etag}`, `${size}`, `${mimeType}`, `${x:var}` …) to `url` and returns the
/// callback server's answer as the upload's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadCallback {
    /// Up to five URLs separated by `;`, tried in order.
    pub url: String,
    pub body: String,
    /// The `Host` header the callback request carries.
    pub host: Option<String>,
    /// `application/json` instead of the default `application/x-www-form-urlencoded`.
    pub json_body: bool,
    /// Custom variables, names starting with `x:` (`${x:name}` in the body).
    pub vars: Vec<(String, String)>,
}

/// The default body when `--callback-body` is not given: what the uploaded object is.
pub const DEFAULT_CALLBACK_BODY: &str =
    "bucket=${bucket}&object=${object}&etag=${etag}&size=${size}&mimeType=${mimeType}";

impl UploadCallback {
    /// `--callback-var KEY=VALUE`: `x:` is added to a name that lacks it (OSS requires the prefix).
    pub fn parse_var(pair: &str) -> Result<(String, String), RemoteError> {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            RemoteError::invalid_input(
                format!("--callback-var {pair:?} is not KEY=VALUE"),
                "write it as --callback-var x:name=value",
            )
        })?;
        let k = k.trim();
        let name = if k.starts_with("x:") { k.to_string() } else { format!("x:{k}") };
        if name.len() <= 2 || !name[2..].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(RemoteError::invalid_input(
                format!("callback variable {k:?} is not a valid name"),
                "OSS takes lower-case letters, digits and '_' after the x: prefix",
            ));
        }
        Ok((name, v.to_string()))
    }

    /// The `x-oss-callback` and (when there are variables) `x-oss-callback-var` header values: Base64 JSON.
    pub fn header_values(&self) -> (String, Option<String>) {
        let mut spec = serde_json::Map::new();
        spec.insert("callbackUrl".into(), self.url.clone().into());
        if let Some(h) = &self.host {
            spec.insert("callbackHost".into(), h.clone().into());
        }
        spec.insert("callbackBody".into(), self.body.clone().into());
        let body_type = if self.json_body { "application/json" } else { "application/x-www-form-urlencoded" };
        spec.insert("callbackBodyType".into(), body_type.into());
        let b64 = |v: serde_json::Value| base64::engine::general_purpose::STANDARD.encode(v.to_string());
        let vars = (!self.vars.is_empty()).then(|| {
            let map: serde_json::Map<String, serde_json::Value> =
                self.vars.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
            b64(map.into())
        });
        (b64(spec.into()), vars)
    }
}

/// What became of an upload's callback. The object is stored in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// The callback server answered; its body, as OSS returned it.
    Answered(String),
    /// OSS answered 203 CallbackFailed: the object is stored, the callback did not succeed.
    Failed { message: String, request_id: Option<String> },
    /// The upload's answer was lost and its success confirmed afterwards (a retried Complete), so the
    /// callback's answer is unknown.
    Unknown,
}

/// `x-oss-traffic-limit` bounds, bit/s, as OSS documents them (30 KB/s … 100 MB/s).
pub const TRAFFIC_LIMIT_BITS: std::ops::RangeInclusive<u64> = 245_760..=838_860_800;

/// `--traffic-limit RATE` (bytes per second, like `--bwlimit`) as the header's bits per second.
pub fn traffic_limit_bits(bytes_per_second: u64) -> Result<u64, RemoteError> {
    let bits = bytes_per_second.saturating_mul(8);
    if !TRAFFIC_LIMIT_BITS.contains(&bits) {
        return Err(RemoteError::invalid_input(
            format!("--traffic-limit {bytes_per_second} bytes/s is outside what OSS accepts"),
            "give 30K to 100M (bytes per second; OSS's x-oss-traffic-limit is 245760 to 838860800 bit/s)",
        ));
    }
    Ok(bits)
}

/// `x-oss-tagging` / `x-amz-tagging`: `k=v&k2=v2`, URL-encoded. At most 10 tags, keys up to 128 and values
/// up to 256 characters (OSS and S3 limits).
pub fn tagging_header(tags: &[(String, String)]) -> Result<Option<String>, RemoteError> {
    if tags.is_empty() {
        return Ok(None);
    }
    if tags.len() > 10 {
        return Err(RemoteError::invalid_input(
            format!("{} tags given; an object takes at most 10", tags.len()),
            "give at most 10 --tag options",
        ));
    }
    let mut out = String::new();
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(RemoteError::invalid_input(
                format!("tag {k:?}={v:?} is too long or has an empty key"),
                "tag keys take 1 to 128 characters, values up to 256",
            ));
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&super::oss::sign::uri_encode(k, false));
        out.push('=');
        out.push_str(&super::oss::sign::uri_encode(v, false));
    }
    Ok(Some(out))
}

/// `--tag k=v`.
pub fn parse_tag(pair: &str) -> Result<(String, String), RemoteError> {
    let (k, v) = pair.split_once('=').ok_or_else(|| {
        RemoteError::invalid_input(format!("--tag {pair:?} is not KEY=VALUE"), "write it as --tag project=alpha")
    })?;
    Ok((k.trim().to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_flags() {
        assert_eq!(Encryption::parse("aes256", None).unwrap(), Encryption::Aes256);
        assert_eq!(Encryption::parse("KMS", Some("k1")).unwrap(), Encryption::Kms { key_id: Some("k1".into()) });
        assert!(Encryption::parse("AES256", Some("k1")).unwrap_err().to_string().contains("--sse KMS"));
        assert!(Encryption::parse("DES", None).unwrap_err().to_string().contains("AES256, KMS or SM4"));
    }

    #[test]
    fn tags_are_url_encoded_and_bounded() {
        let tags = vec![("a b".to_string(), "x&y=z".to_string()), ("k".to_string(), String::new())];
        assert_eq!(tagging_header(&tags).unwrap().unwrap(), "a%20b=x%26y%3Dz&k=");
        let many: Vec<_> = (0..11).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert!(tagging_header(&many).unwrap_err().to_string().contains("at most 10"));
        assert_eq!(tagging_header(&[]).unwrap(), None);
    }

    #[test]
    fn traffic_limit_is_bits_within_the_documented_range() {
        assert_eq!(traffic_limit_bits(100 * 1024).unwrap(), 819_200);
        assert!(traffic_limit_bits(1024).is_err());
        assert!(traffic_limit_bits(200 << 20).is_err());
    }

    #[test]
    fn callback_headers_are_base64_json_with_x_prefixed_vars() {
        let cb = UploadCallback {
            url: "http://127.0.0.1:1/cb".into(),
            body: DEFAULT_CALLBACK_BODY.into(),
            host: None,
            json_body: false,
            vars: vec![UploadCallback::parse_var("uid=7").unwrap()],
        };
        let (spec, vars) = cb.header_values();
        let decode = |s: &str| -> serde_json::Value {
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
        };
        let spec = decode(&spec);
        assert_eq!(spec["callbackUrl"], "http://127.0.0.1:1/cb");
        assert_eq!(spec["callbackBodyType"], "application/x-www-form-urlencoded");
        assert_eq!(decode(&vars.unwrap())["x:uid"], "7");
        assert!(UploadCallback::parse_var("Bad-Name=1").is_err());
        assert!(UploadCallback::parse_var("novalue").is_err());
    }
}
