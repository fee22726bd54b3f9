//! Endpoints, V4 regions and request URLs.
//!
//! An endpoint is `scheme://host[:port]` (a bare host means https, as go-v2 and py-v2 default). Addressing
//! follows OSS-PROTOCOL.md §4: virtual-hosted (`bucket.host/key`) for named hosts, which is the only style
//! real OSS accepts; path style (`host/bucket/key`) for IP literals and `localhost` (what the SDKs do against
//! a loopback server), or when asked for.
//!
//! URLs are written byte for byte as they will be signed: the key percent-encoded with `/` kept, and the
//! query in exactly its V4 canonical form (sorted, RFC 3986 encoded, `/` as `%2F`). So a request never
//! depends on a server normalizing the encoding the same way we do. The URL library must not rewrite what we
//! wrote either: `.` and `..` path segments would be resolved away by any WHATWG-style parser, so a key with
//! such a segment is sent with its slashes encoded (`%2F`, which every OSS server decodes, §4), and
//! [`RequestUrl::build`] re-checks that the parsed URL is exactly the string we built.

use reqwest::Url;

use crate::remote::RemoteError;
use crate::remote::oss::sign::{canonical_query_v4, uri_encode};

/// Where the endpoint flag and variable are named in messages.
pub const ENDPOINT_FIX: &str = "check --endpoint or OSS_ENDPOINT (e.g. https://oss-cn-hangzhou.aliyuncs.com)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKind {
    Ip,
    Localhost,
    Named,
}

/// A validated endpoint: scheme, host and optional port, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    https: bool,
    /// As it appears in a URL: `127.0.0.1`, `[::1]`, `oss-cn-hangzhou.aliyuncs.com` (lower case).
    host: String,
    port: Option<u16>,
    kind: HostKind,
}

impl Endpoint {
    /// Parse `http://127.0.0.1:9000`, `https://oss-cn-hangzhou.aliyuncs.com` or `oss-cn-hangzhou.aliyuncs.com`.
    pub fn parse(input: &str) -> Result<Self, RemoteError> {
        let trimmed = input.trim();
        // Never echo user info back: it may hold a password.
        let shown = if trimmed.contains('@') { "(with user info)".to_string() } else { format!("{trimmed:?}") };
        let bad = |why: &str| RemoteError::invalid_input(format!("invalid endpoint {shown}: {why}"), ENDPOINT_FIX);
        if trimmed.is_empty() {
            return Err(RemoteError::invalid_input("no endpoint given", ENDPOINT_FIX));
        }
        let with_scheme = if trimmed.contains("://") { trimmed.to_string() } else { format!("https://{trimmed}") };
        let url = Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(bad(&format!("unsupported scheme {other:?}, use http or https"))),
        };
        if !url.username().is_empty() || url.password().is_some() {
            // Credentials in a URL end up in logs and process listings; they have their own flags.
            return Err(bad("it must not contain a user name or password (use the credential flags)"));
        }
        if url.path() != "/" && !url.path().is_empty() {
            return Err(bad("it must not contain a path (give the bucket with --bucket)"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("it must not contain a query or fragment"));
        }
        // `host_str` is already normalized by the parser: IPv6 in brackets, IPv4 dotted, names lower case.
        let host = url.host_str().unwrap_or("").trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Err(bad("no host name"));
        }
        let kind = if host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok() {
            HostKind::Ip
        } else if host == "localhost" {
            HostKind::Localhost
        } else {
            HostKind::Named
        };
        Ok(Endpoint { https, host, port: url.port(), kind })
    }

    fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    fn authority(&self, bucket_label: Option<&str>) -> String {
        let mut s = String::with_capacity(self.host.len() + 16);
        if let Some(b) = bucket_label {
            s.push_str(b);
            s.push('.');
        }
        s.push_str(&self.host);
        if let Some(p) = self.port {
            s.push(':');
            s.push_str(&p.to_string());
        }
        s
    }

    /// `scheme://host[:port]`, for logs and messages.
    pub fn display(&self) -> String {
        format!("{}://{}", self.scheme(), self.authority(None))
    }

    /// Path style is the only style that works against an IP literal or `localhost` (no DNS for buckets).
    pub fn needs_path_style(&self) -> bool {
        matches!(self.kind, HostKind::Ip | HostKind::Localhost)
    }

    /// A loopback endpoint (`127.0.0.0/8`, `[::1]`, `localhost`): no proxy can serve it.
    pub fn is_loopback(&self) -> bool {
        match self.kind {
            HostKind::Localhost => true,
            HostKind::Ip => {
                let bare = self.host.trim_start_matches('[').trim_end_matches(']');
                bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
            HostKind::Named => false,
        }
    }

    /// The region id in an OSS host name: `oss-<region>[-internal].aliyuncs.com` (also behind an `s3.`
    /// label) or the dual-stack `<region>.oss.aliyuncs.com`. Accelerate endpoints carry no region.
    pub fn guess_region(&self) -> Option<String> {
        if self.kind != HostKind::Named {
            return None;
        }
        let rest = self.host.strip_suffix(".aliyuncs.com")?;
        let labels: Vec<&str> = rest.split('.').collect();
        let last = *labels.last()?;
        let region = if last == "oss" {
            *labels.get(labels.len().checked_sub(2)?)?
        } else {
            let r = last.strip_prefix("oss-")?;
            r.strip_suffix("-internal").unwrap_or(r)
        };
        let plausible = !region.is_empty()
            && !region.starts_with("accelerate")
            && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        plausible.then(|| region.to_string())
    }
}

/// Which of a region's OSS endpoints to talk to (`--endpoint-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// `oss-REGION.aliyuncs.com`.
    Public,
    /// `oss-REGION-internal.aliyuncs.com`: reached from ECS in the same region, traffic not billed.
    Internal,
    /// `oss-accelerate.aliyuncs.com`: transfer acceleration (enabled per bucket).
    Accelerate,
}

/// The endpoint of `kind` for the region of `endpoint` (an Alibaba Cloud OSS host), or for `region` when no
/// endpoint is given. The scheme (https by default) is kept. An endpoint that is not an OSS host of a
/// region is refused: the kind can only be derived from `oss-REGION[-internal].aliyuncs.com`.
pub fn endpoint_of_kind(
    endpoint: Option<&str>,
    region: Option<&str>,
    kind: EndpointKind,
) -> Result<String, RemoteError> {
    let (https, region) = match endpoint {
        Some(e) => {
            let parsed = Endpoint::parse(e)?;
            let on_accelerate = parsed.host.starts_with("oss-accelerate");
            let region = parsed.guess_region().or_else(|| region.map(str::to_string));
            match region {
                Some(r) if parsed.host.ends_with(".aliyuncs.com") => (parsed.https, r),
                None if on_accelerate && kind == EndpointKind::Accelerate => (parsed.https, String::new()),
                _ => {
                    return Err(RemoteError::invalid_input(
                        format!("--endpoint-kind needs an Alibaba Cloud OSS endpoint, not {}", parsed.display()),
                        "give --endpoint https://oss-REGION.aliyuncs.com (or --region), or the host you want directly",
                    ));
                }
            }
        }
        None => match region {
            Some(r) => (true, r.strip_prefix("oss-").unwrap_or(r).to_string()),
            None => {
                return Err(RemoteError::invalid_input(
                    "--endpoint-kind without an endpoint or a region",
                    "give --region cn-hangzhou (or --endpoint https://oss-cn-hangzhou.aliyuncs.com)",
                ));
            }
        },
    };
    let host = match kind {
        EndpointKind::Public => format!("oss-{region}.aliyuncs.com"),
        EndpointKind::Internal => format!("oss-{region}-internal.aliyuncs.com"),
        EndpointKind::Accelerate => "oss-accelerate.aliyuncs.com".to_string(),
    };
    Ok(format!("{}://{host}", if https { "https" } else { "http" }))
}

/// The key as it goes into the URL path: percent-encoded with `/` kept, unless a `.`/`..` segment would be
/// resolved away by URL normalization; then the slashes are encoded too and the key is one opaque segment.
pub fn encode_key_path(key: &str) -> String {
    let has_dot_segment = key.split('/').any(|seg| seg == "." || seg == "..");
    uri_encode(key, !has_dot_segment)
}

/// A request URL, kept as the exact strings that were written (the signature covers the logical request,
/// and these are what must reach the server).
#[derive(Debug, Clone)]
pub struct RequestUrl {
    pub url: Url,
    /// Encoded path, e.g. `/bucket/a%20b/c` (path style) or `/a%20b/c` (virtual host).
    pub path: String,
    /// Encoded query without the `?`, in V4 canonical form; empty when there is none.
    pub query: String,
}

impl RequestUrl {
    /// The URL of `bucket` (and `key`) with `query` (decoded names and values; an empty value is a bare
    /// name). `extra_query` is appended verbatim (already encoded), for presigned signatures.
    pub fn build(
        endpoint: &Endpoint,
        path_style: bool,
        bucket: &str,
        key: Option<&str>,
        query: &[(String, String)],
        extra_query: Option<&str>,
    ) -> Result<Self, RemoteError> {
        let encoded_key = key.map(encode_key_path);
        let (authority, path) = if path_style {
            let path = match &encoded_key {
                Some(k) => format!("/{bucket}/{k}"),
                None => format!("/{bucket}/"),
            };
            (endpoint.authority(None), path)
        } else {
            let path = match &encoded_key {
                Some(k) => format!("/{k}"),
                None => "/".to_string(),
            };
            (endpoint.authority(Some(bucket)), path)
        };
        let mut query_text = canonical_query_v4(query);
        if let Some(extra) = extra_query {
            if !query_text.is_empty() {
                query_text.push('&');
            }
            query_text.push_str(extra);
        }
        let mut text = format!("{}://{authority}{path}", endpoint.scheme());
        if !query_text.is_empty() {
            text.push('?');
            text.push_str(&query_text);
        }
        let problem = || {
            RemoteError::invalid_input(
                format!("object key {:?} cannot be addressed in a URL without being rewritten", key.unwrap_or("")),
                "rename the file: keys that are exactly \".\" or \"..\" are resolved away by URL normalization",
            )
        };
        let url = Url::parse(&text).map_err(|_| problem())?;
        // The guarantee this module gives: the bytes we signed for are the bytes that go out.
        if url.path() != path || url.query().unwrap_or("") != query_text {
            return Err(problem());
        }
        Ok(RequestUrl { url, path, query: query_text })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        Endpoint::parse(s).unwrap()
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_endpoint_forms() {
        let e = ep("http://127.0.0.1:9000");
        assert_eq!(e.display(), "http://127.0.0.1:9000");
        assert!(e.needs_path_style());
        let e = ep("oss-cn-hangzhou.aliyuncs.com");
        assert_eq!(e.display(), "https://oss-cn-hangzhou.aliyuncs.com");
        assert!(!e.needs_path_style());
        let e = ep("https://OSS-cn-hangzhou.aliyuncs.com/");
        assert_eq!(e.display(), "https://oss-cn-hangzhou.aliyuncs.com");
        assert!(ep("http://localhost:9000").needs_path_style());
        assert!(ep("http://localhost:9000").is_loopback() && ep("http://127.0.0.2").is_loopback());
        assert!(!ep("http://10.0.0.1").is_loopback() && !ep("oss-cn-hangzhou.aliyuncs.com").is_loopback());
        let e = ep("http://[::1]:9000");
        assert!(e.needs_path_style());
        assert_eq!(e.display(), "http://[::1]:9000");
        assert!(e.is_loopback());
    }

    #[test]
    fn rejects_bad_endpoints_with_the_fix() {
        for bad in ["", "ftp://host", "http://user:pw@host", "https://host/bucket", "https://host/?x=1", "http://"] {
            let e = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--endpoint") && e.contains("OSS_ENDPOINT"), "{bad}: {e}");
        }
        let e = Endpoint::parse("http://user:hunter2@host").unwrap_err().to_string();
        assert!(!e.contains("hunter2") && e.contains("user name or password"), "{e}");
    }

    #[test]
    fn guesses_regions() {
        let cases = [
            ("oss-cn-hangzhou.aliyuncs.com", Some("cn-hangzhou")),
            ("https://oss-cn-hangzhou-internal.aliyuncs.com", Some("cn-hangzhou")),
            ("oss-ap-southeast-1.aliyuncs.com", Some("ap-southeast-1")),
            ("s3.oss-us-west-1.aliyuncs.com", Some("us-west-1")),
            ("cn-shanghai.oss.aliyuncs.com", Some("cn-shanghai")),
            ("oss-accelerate.aliyuncs.com", None),
            ("oss-accelerate-overseas.aliyuncs.com", None),
            ("http://127.0.0.1:9000", None),
            ("http://localhost:9000", None),
            ("storage.example.com", None),
            ("aliyuncs.com", None),
        ];
        for (endpoint, want) in cases {
            assert_eq!(ep(endpoint).guess_region().as_deref(), want, "{endpoint}");
        }
    }

    #[test]
    fn path_and_virtual_host_urls() {
        let local = ep("http://127.0.0.1:9000");
        let u = RequestUrl::build(&local, true, "bkt", Some("dir/a b.txt"), &q(&[]), None).unwrap();
        assert_eq!(u.url.as_str(), "http://127.0.0.1:9000/bkt/dir/a%20b.txt");
        let u = RequestUrl::build(&local, true, "bkt", None, &q(&[("list-type", "2")]), None).unwrap();
        assert_eq!(u.url.as_str(), "http://127.0.0.1:9000/bkt/?list-type=2");

        let oss = ep("oss-cn-hangzhou.aliyuncs.com");
        let u = RequestUrl::build(&oss, false, "bkt", Some("k+1"), &q(&[("uploads", "")]), None).unwrap();
        assert_eq!(u.url.as_str(), "https://bkt.oss-cn-hangzhou.aliyuncs.com/k%2B1?uploads");
        let u = RequestUrl::build(&oss, false, "bkt", None, &q(&[]), None).unwrap();
        assert_eq!(u.url.as_str(), "https://bkt.oss-cn-hangzhou.aliyuncs.com/");
        let u = RequestUrl::build(&oss, true, "bkt", Some("k"), &q(&[]), None).unwrap();
        assert_eq!(u.url.as_str(), "https://oss-cn-hangzhou.aliyuncs.com/bkt/k");
    }

    #[test]
    fn query_is_written_in_canonical_form() {
        let local = ep("http://127.0.0.1:9000");
        let query = q(&[
            ("prefix", "photos/2024 x+y&z=é"),
            ("list-type", "2"),
            ("continuation-token", "a/b=="),
            ("encoding-type", "url"),
        ]);
        let u = RequestUrl::build(&local, true, "bkt", None, &query, Some("x-oss-signature=abc")).unwrap();
        assert_eq!(
            u.query,
            "continuation-token=a%2Fb%3D%3D&encoding-type=url&list-type=2&prefix=photos%2F2024%20x%2By%26z%3D%C3%A9\
             &x-oss-signature=abc"
        );
        assert_eq!(u.url.query(), Some(u.query.as_str()));
    }

    #[test]
    fn tricky_keys_are_not_rewritten_by_the_url_parser() {
        let local = ep("http://127.0.0.1:9000");
        for key in ["a b+c/%41/..//x", "./x", "a/./b", "a/..", "..a/b..", "dir/", "q?x#y;z", "中文/ключ", "a\\b"]
        {
            let u = RequestUrl::build(&local, true, "bkt", Some(key), &q(&[]), None).unwrap();
            assert_eq!(u.url.path(), u.path);
            let encoded = u.path.strip_prefix("/bkt/").unwrap();
            let decoded = percent_encoding::percent_decode_str(encoded).decode_utf8().unwrap();
            assert_eq!(decoded, key, "{key} went out as {}", u.url);
        }
        let u = RequestUrl::build(&local, true, "bkt", Some("a b+c/%41/..//x"), &q(&[]), None).unwrap();
        assert_eq!(u.path, "/bkt/a%20b%2Bc%2F%2541%2F..%2F%2Fx");
        let u = RequestUrl::build(&local, true, "bkt", Some("a b+c/%41//x"), &q(&[]), None).unwrap();
        assert_eq!(u.path, "/bkt/a%20b%2Bc/%2541//x");
        for key in [".", ".."] {
            let e = RequestUrl::build(&local, true, "bkt", Some(key), &q(&[]), None).unwrap_err();
            assert!(e.to_string().contains("rename"), "{e}");
        }
    }

    #[test]
    fn endpoint_kinds_are_derived_from_the_region() {
        use super::{EndpointKind, endpoint_of_kind};
        let e = Some("https://oss-cn-hangzhou.aliyuncs.com");
        assert_eq!(
            endpoint_of_kind(e, None, EndpointKind::Internal).unwrap(),
            "https://oss-cn-hangzhou-internal.aliyuncs.com"
        );
        assert_eq!(endpoint_of_kind(e, None, EndpointKind::Accelerate).unwrap(), "https://oss-accelerate.aliyuncs.com");
        let internal = Some("oss-cn-beijing-internal.aliyuncs.com");
        assert_eq!(
            endpoint_of_kind(internal, None, EndpointKind::Public).unwrap(),
            "https://oss-cn-beijing.aliyuncs.com"
        );
        assert_eq!(
            endpoint_of_kind(None, Some("eu-central-1"), EndpointKind::Internal).unwrap(),
            "https://oss-eu-central-1-internal.aliyuncs.com"
        );
        let err =
            endpoint_of_kind(Some("http://127.0.0.1:9000"), None, EndpointKind::Internal).unwrap_err().to_string();
        assert!(err.contains("Alibaba Cloud OSS endpoint") && err.contains("--region"), "{err}");
        assert!(endpoint_of_kind(None, None, EndpointKind::Internal).is_err());
    }
}
