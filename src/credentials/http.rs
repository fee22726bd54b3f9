//! HTTP for the credential sources: small requests, short timeouts, bounded answers.

use std::time::Duration;

use super::CredentialsError;

/// No credential answer is anywhere near this big; a larger one is not what we asked for.
const ANSWER_LIMIT: usize = 64 * 1024;

/// An answer: status and (UTF-8, possibly lossy) body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: String,
}

/// Why a request got no answer.
#[derive(Debug)]
pub(crate) enum NoAnswer {
    /// Nothing listens there (or the connection could not be made in time).
    Connect(String),
    /// Connected, then the exchange failed (timeout, reset, an oversized answer).
    Exchange(String),
}

/// A client for one source. `direct` bypasses `HTTP(S)_PROXY`: the metadata service and loopback servers
/// are never behind a proxy.
pub(crate) fn client(url: &str, connect: Duration, total: Duration) -> Result<reqwest::Client, CredentialsError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect)
        .timeout(total)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ossmirror/", env!("CARGO_PKG_VERSION")));
    if is_direct(url) {
        builder = builder.no_proxy();
    }
    builder.build().map_err(|e| CredentialsError::invalid(format!("cannot set up an HTTP client for {url}: {e}")))
}

/// The metadata service's link-local address and loopback addresses are reached without a proxy.
fn is_direct(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else { return false };
    match parsed.host_str() {
        Some("localhost") => true,
        Some(host) => host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok_and(|ip| {
            ip.is_loopback() || ip == std::net::IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 100, 200))
        }),
        None => false,
    }
}

/// Send and read the whole (bounded) answer.
pub(crate) async fn send(request: reqwest::RequestBuilder) -> Result<Answer, NoAnswer> {
    let mut response = request
        .send()
        .await
        .map_err(|e| if e.is_connect() { NoAnswer::Connect(describe(&e)) } else { NoAnswer::Exchange(describe(&e)) })?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| NoAnswer::Exchange(describe(&e)))? {
        if body.len() + chunk.len() > ANSWER_LIMIT {
            return Err(NoAnswer::Exchange(format!("the answer is larger than {ANSWER_LIMIT} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer { status, body: String::from_utf8_lossy(&body).into_owned() })
}

/// A reqwest error with its causes (its own `Display` stops at "error sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() { "timed out".to_string() } else { e.to_string() };
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// `scheme://host[:port]/path` of a URL, for messages: a query string may hold a token.
pub(crate) fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => "<an invalid URL>".to_string(),
    }
}

/// A server's text, cut short and stripped of the secrets we sent, for an error message.
pub(crate) fn excerpt(body: &str, secrets: &[&str]) -> String {
    let mut text: String = body.chars().filter(|c| !c.is_control()).take(300).collect();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret, "<redacted>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_metadata_service_and_loopback_bypass_proxies() {
        assert!(is_direct("http://100.100.100.200/latest"));
        assert!(is_direct("http://127.0.0.1:9000/"));
        assert!(is_direct("http://localhost:1/"));
        assert!(is_direct("http://[::1]:1/"));
        assert!(!is_direct("https://sts.aliyuncs.com"));
    }

    #[test]
    fn urls_are_shown_without_query_or_password() {
        assert_eq!(shown("http://u:p@h:1/creds?token=abc"), "http://h:1/creds");
        assert_eq!(shown("not a url"), "<an invalid URL>");
    }

    #[test]
    fn excerpts_drop_secrets() {
        assert_eq!(excerpt("bad token CAIStoken here", &["CAIStoken"]), "bad token <redacted> here");
    }
}
