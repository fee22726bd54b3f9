//! Where access keys come from, and keeping temporary ones fresh.
//!
//! # The chain
//! With an endpoint configured and no `--anonymous`, the first source that has credentials wins, in the
//! order of Alibaba Cloud's credentials SDKs (aliyun/credentials-go `providers/default.go`
//! `NewDefaultCredentialsProvider`, and alibabacloud_credentials `provider/default.py`), after the sources
//! that are ossmirror's own:
//!
//! 1. `--access-key-id` / `--access-key-secret`, `OSS_ACCESS_KEY_ID` / `OSS_ACCESS_KEY_SECRET` /
//!    `OSS_SESSION_TOKEN` (the OSS SDKs' variables), `ALIBABA_CLOUD_ACCESS_KEY_ID` /
//!    `ALIBABA_CLOUD_ACCESS_KEY_SECRET` / `ALIBABA_CLOUD_SECURITY_TOKEN` (the credentials SDKs' `env`
//!    provider), then `access_key_id` / `access_key_secret` in ossmirror's config file (`config.rs`);
//! 2. OIDC / RRSA (ACK pods): `ALIBABA_CLOUD_ROLE_ARN`, `ALIBABA_CLOUD_OIDC_PROVIDER_ARN`,
//!    `ALIBABA_CLOUD_OIDC_TOKEN_FILE`, exchanged at STS with `AssumeRoleWithOIDC` ([`sts`]);
//! 3. the aliyun CLI's `~/.aliyun/config.json` (or `ALIBABA_CLOUD_CONFIG_FILE`): profile
//!    `ALIBABA_CLOUD_PROFILE`, else the file's `current`; modes AK, StsToken, RamRoleArn, EcsRamRole, OIDC,
//!    ChainableRamRoleArn ([`profiles`]);
//! 4. the shared credentials file `ALIBABA_CLOUD_CREDENTIALS_FILE`, else `~/.alibabacloud/credentials`
//!    (credentials-go) or `~/.alibabacloud/credentials.ini` (the Python SDK): INI section
//!    `ALIBABA_CLOUD_PROFILE`, else `default`; types access_key, sts, ram_role_arn, ecs_ram_role,
//!    oidc_role_arn;
//! 5. the ECS instance RAM role through the metadata service, IMDSv2 ([`ecs`]), unless
//!    `ALIBABA_CLOUD_ECS_METADATA_DISABLED=true`;
//! 6. `ALIBABA_CLOUD_CREDENTIALS_URI`, a URL answering the ECS metadata JSON ([`uri`]).
//!
//! The SDKs skip a source on *any* error. We skip only a source that is absent (a variable not set, a file
//! not there, no metadata service); a source that is present but wrong (a broken file, a profile mode we do
//! not support, STS refusing the role) stops start-up with a message naming the file and the fix, because
//! falling through would silently run under another identity. [`chain::resolve`] lists every source it
//! looked at when none had credentials.
//!
//! # Refreshing
//! Temporary credentials (STS, ECS, OIDC, URI) live in a [`refresh::Refreshing`] provider: a background task
//! fetches new ones when two thirds of their lifetime have passed (the SDKs: 3 minutes (Go) to 15 minutes
//! (Python) before expiry; a third of an hour leaves room for a failing STS to recover), and retries with
//! backoff while the old ones are still valid. Clients read [`CredentialsProvider::current`] each time they
//! sign, so uploads in flight are never restarted: their next request simply carries the new key. A
//! request refused with an expired or unknown token ([`is_credentials_refusal`]) makes the client call
//! [`CredentialsProvider::refresh`] and retry once.
//!
//! # Never off this machine in tests
//! The metadata service (`OSSMIRROR_ECS_METADATA_ENDPOINT`, default `http://100.100.100.200`) and STS
//! (`OSSMIRROR_STS_ENDPOINT`, default `https://sts.aliyuncs.com`) are overridable; the test harnesses point
//! them at loopback fakes or disable the metadata provider, and this library's own unit tests default both
//! to a closed loopback port.
//!
//! Secrets never appear in `Debug`, `Display`, logs, errors or the state database.

pub mod chain;
pub mod ecs;
mod http;
pub mod profiles;
pub mod refresh;
pub mod sts;
pub mod uri;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

pub use chain::{ChainEnv, ChainError, Resolved, Tried};

/// A secret string: `Debug` and `Display` print `<redacted>`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// An access key pair, optionally with an STS session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: Secret,
    pub session_token: Option<Secret>,
}

impl Credentials {
    pub fn new(access_key_id: impl Into<String>, access_key_secret: impl Into<String>) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            access_key_secret: Secret::new(access_key_secret),
            session_token: None,
        }
    }

    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(Secret::new(token));
        self
    }

    /// Whether these can be sent: a non-empty id and secret, and an id and token that fit in an HTTP
    /// header (visible ASCII). `Err` says what is wrong, never the value.
    pub fn check_sendable(&self) -> Result<(), &'static str> {
        let header_safe = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        if self.access_key_id.is_empty() || self.access_key_secret.expose().is_empty() {
            return Err("the access key id or secret is empty");
        }
        if !header_safe(&self.access_key_id) || self.session_token.as_ref().is_some_and(|t| !header_safe(t.expose())) {
            return Err("the access key id or session token holds spaces, line breaks or non-ASCII characters");
        }
        Ok(())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &self.access_key_secret)
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What went wrong getting credentials from one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The source is not there (no metadata service, no RAM role attached): the chain moves on.
    Absent,
    /// The source is there but wrong (bad file, refused role): fix the configuration.
    Invalid,
    /// The source failed in a way that may pass (STS busy, a timeout): try again later.
    Unavailable,
}

/// A failure to get credentials. The message names the source and, where we know it, the fix; it never
/// holds a secret (server text is scrubbed of the secrets we sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CredentialsError {
    pub kind: FailureKind,
    pub message: String,
}

impl CredentialsError {
    pub fn absent(message: impl Into<String>) -> Self {
        CredentialsError { kind: FailureKind::Absent, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        CredentialsError { kind: FailureKind::Invalid, message: message.into() }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        CredentialsError { kind: FailureKind::Unavailable, message: message.into() }
    }
}

/// Where a client gets the credentials it signs with. Cheap to ask: [`current`](Self::current) returns the
/// cached credentials and never waits for the network.
#[async_trait]
pub trait CredentialsProvider: Send + Sync + fmt::Debug {
    /// The credentials to sign the next request with.
    fn current(&self) -> Arc<Credentials>;

    /// The server refused the current credentials: fetch new ones now. `Ok(true)` when new credentials are
    /// in use (so a retry may succeed), `Ok(false)` when there is nothing to refresh (static keys).
    async fn refresh(&self) -> Result<bool, CredentialsError>;

    /// Where the credentials come from, for logs and `ossmirror doctor` (never a secret).
    fn source(&self) -> &str;

    /// When the current credentials expire, for temporary ones.
    fn expiration(&self) -> Option<SystemTime> {
        None
    }
}

/// Credentials that never change: keys from flags, the environment or a file.
#[derive(Debug)]
pub struct StaticProvider {
    credentials: Arc<Credentials>,
    source: String,
}

impl StaticProvider {
    pub fn new(credentials: Credentials, source: impl Into<String>) -> Self {
        StaticProvider { credentials: Arc::new(credentials), source: source.into() }
    }

    /// A shared handle, as the clients take it.
    pub fn shared(credentials: Credentials, source: impl Into<String>) -> Arc<dyn CredentialsProvider> {
        Arc::new(Self::new(credentials, source))
    }
}

#[async_trait]
impl CredentialsProvider for StaticProvider {
    fn current(&self) -> Arc<Credentials> {
        self.credentials.clone()
    }

    async fn refresh(&self) -> Result<bool, CredentialsError> {
        Ok(false)
    }

    fn source(&self) -> &str {
        &self.source
    }
}

/// Whether a server error code means "these credentials are no longer (or not yet) good", which fresh
/// temporary credentials can cure. OSS: `SecurityTokenExpired`, `InvalidSecurityToken`,
/// `AccessKeyIdAndSecurityTokenNotMatch` (OSS-PROTOCOL.md §1.10), and `InvalidAccessKeyId`, which OSS
/// answers for an STS key id once its token has lapsed; S3: `ExpiredToken`, `InvalidToken`,
/// `TokenRefreshRequired`. A wrong signature or a missing permission is not cured by a refresh.
pub fn is_credentials_refusal(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "SecurityTokenExpired"
                | "InvalidSecurityToken"
                | "AccessKeyIdAndSecurityTokenNotMatch"
                | "InvalidAccessKeyId"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired"
        )
    )
}

/// After a request failed with `code`: refresh `provider` if that can help, and say whether a retry is
/// worth it. Refresh failures are logged here (the request's own error is what the caller reports).
pub async fn refresh_after_refusal(provider: Option<&Arc<dyn CredentialsProvider>>, code: Option<&str>) -> bool {
    let Some(provider) = provider else { return false };
    if !is_credentials_refusal(code) {
        return false;
    }
    match provider.refresh().await {
        Ok(refreshed) => {
            if refreshed {
                tracing::info!(
                    source = %provider.source(),
                    code = code.unwrap_or(""),
                    "the server refused the credentials; fetched new ones, retrying once"
                );
            }
            refreshed
        }
        Err(e) => {
            tracing::warn!(source = %provider.source(), error = %e, "the server refused the credentials and new ones could not be fetched");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials::new("AKID", "very-secret-value").with_session_token("token-value-xyz");
        let shown = format!("{c:?} {} {:?}", c.access_key_secret, c.session_token);
        assert!(shown.contains("AKID"));
        assert!(!shown.contains("very-secret-value"), "{shown}");
        assert!(!shown.contains("token-value-xyz"), "{shown}");
        let p = StaticProvider::new(c, "test");
        assert!(!format!("{p:?}").contains("very-secret-value"));
    }

    #[test]
    fn only_sendable_credentials_pass() {
        assert!(Credentials::new("AK", "SK").with_session_token("CAIS+/=").check_sendable().is_ok());
        assert!(Credentials::new("", "SK").check_sendable().is_err());
        assert!(Credentials::new("AK", "").check_sendable().is_err());
        assert!(Credentials::new("A K", "SK").check_sendable().is_err());
        assert!(Credentials::new("AK", "SK").with_session_token("line\nbreak").check_sendable().is_err());
    }

    #[test]
    fn refusals_that_a_refresh_can_cure() {
        for code in ["SecurityTokenExpired", "InvalidSecurityToken", "InvalidAccessKeyId", "ExpiredToken"] {
            assert!(is_credentials_refusal(Some(code)), "{code}");
        }
        for code in ["SignatureDoesNotMatch", "AccessDenied", "NoSuchKey", ""] {
            assert!(!is_credentials_refusal(Some(code)), "{code}");
        }
        assert!(!is_credentials_refusal(None));
    }
}
