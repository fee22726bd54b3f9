//! Errors from a remote, classified once where the response is parsed.
//!
//! A service error keeps everything OSS sends for diagnosis (HTTP status, Code, Message, RequestId, HostId,
//! EC) and adds a hint that names the fix (which flag or environment variable, which limit). Whether an error
//! is worth retrying is decided here, by [`RemoteError::is_retryable`], following the official SDKs: 5xx, 408,
//! 429, `RequestTimeTooSkewed`, `BadRequest`, transport failures and checksum mismatches are retried; the
//! rest are not.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// An error answer from the server (an `<Error>` body, or a bodiless HEAD error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// The API call, e.g. `UploadPart`.
    pub op: &'static str,
    pub status: u16,
    /// `NoSuchKey`, `SignatureDoesNotMatch`, … Empty when the server sent no code.
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
    pub host_id: Option<String>,
    /// OSS's fine-grained error code (`0002-00000007`); diagnostic only.
    pub ec: Option<String>,
    /// The server's `Date` header, used to correct clock skew.
    pub server_time: Option<SystemTime>,
}

impl ServiceError {
    /// What the user should do about it, when we know.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self.code.as_str() {
            "SignatureDoesNotMatch" => {
                "the access key secret is wrong: check --access-key-secret or OSS_ACCESS_KEY_SECRET \
                 (AWS_SECRET_ACCESS_KEY with --protocol s3), and --signature/--region for V4"
            }
            "InvalidAccessKeyId" => {
                "the access key id is unknown or disabled: check --access-key-id or OSS_ACCESS_KEY_ID \
                 (AWS_ACCESS_KEY_ID with --protocol s3)"
            }
            "AccessDenied" => "the credentials lack permission for this bucket or operation (or a signed URL expired)",
            "SecurityTokenExpired" | "ExpiredToken" => {
                "the STS token expired: fetch new credentials and set OSS_SESSION_TOKEN (AWS_SESSION_TOKEN)"
            }
            "InvalidSecurityToken" | "AccessKeyIdAndSecurityTokenNotMatch" => {
                "the STS token does not belong to this access key: check OSS_SESSION_TOKEN"
            }
            "RequestTimeTooSkewed" => "this machine's clock is more than 15 minutes off: fix it (NTP)",
            "NoSuchBucket" => "the bucket does not exist in this region: check --bucket and --endpoint",
            "InvalidBucketName" => {
                "bucket names are 3-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
            }
            "InvalidObjectName" => "object keys are 1-1023 bytes of UTF-8 and must not start with '/' or '\\'",
            "EntityTooSmall" => "every part but the last must be at least 100 KiB (5 MiB on S3)",
            "BadDigest" | "XAmzContentSHA256Mismatch" => {
                "the server received other bytes than the checksum sent with them (corrupted on the way)"
            }
            "FileAlreadyExists" => "the object exists and overwriting was forbidden",
            _ => return None,
        })
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: HTTP {}", self.op, self.status)?;
        if !self.code.is_empty() {
            write!(f, " {}", self.code)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(hint) = self.hint() {
            write!(f, " (hint: {hint})")?;
        }
        write!(
            f,
            " [RequestId: {}, HostId: {}",
            self.request_id.as_deref().unwrap_or("-"),
            self.host_id.as_deref().unwrap_or("-")
        )?;
        if let Some(ec) = &self.ec {
            write!(f, ", EC: {ec}")?;
        }
        write!(f, "]")
    }
}

/// The details of [`RemoteError::DigestMismatch`] (boxed: errors travel by value through every call).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{op}: the server confirmed different bytes than were sent ({what}: local {local}, server {server}) \
     [RequestId: {}]", request_id.as_deref().unwrap_or("-")
)]
pub struct DigestMismatch {
    pub op: &'static str,
    pub what: &'static str,
    pub local: String,
    pub server: String,
    pub request_id: Option<String>,
}

/// How a transport failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Connect,
    Timeout,
    /// The connection broke while sending or receiving.
    Broken,
    Other,
}

/// Coarse classes the engine and agent branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// NoSuchKey, NoSuchUpload, NoSuchBucket.
    NotFound,
    /// Credentials, signature, permission, STS token.
    Auth,
    /// 409 FileAlreadyExists and similar.
    Conflict,
    /// A request the server refused as invalid (4xx other than the above).
    Rejected,
    /// 5xx, 429, 408: try again later.
    ServerBusy,
    Transport,
    /// The server confirmed bytes other than the ones sent.
    Integrity,
    /// The local file could not be read as planned (changed, vanished, unreadable).
    LocalIo,
    /// Bad names, bad configuration: fix the input.
    Input,
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Service(Box<ServiceError>),

    #[error("{op} to {endpoint}: {detail}")]
    Transport { op: &'static str, endpoint: String, kind: TransportKind, detail: String },

    #[error(
        "{op}: the server confirmed different bytes than were sent (local CRC-64 {local}, server {server}) \
         [RequestId: {}]", request_id.as_deref().unwrap_or("-")
    )]
    ChecksumMismatch { op: &'static str, local: u64, server: u64, request_id: Option<String> },

    /// Like [`RemoteError::ChecksumMismatch`], for digests that are not a CRC-64 (an MD5 ETag, a multipart
    /// ETag): the server confirmed other bytes than the ones sent.
    #[error("{0}")]
    DigestMismatch(Box<DigestMismatch>),

    #[error("{op}: the server's answer could not be understood: {detail} [RequestId: {}] (is the endpoint an OSS server, or an S3 server used with --protocol s3?)",
        request_id.as_deref().unwrap_or("-"))]
    BadResponse { op: &'static str, detail: String, request_id: Option<String> },

    #[error("{op}: reading the local file failed: {source}")]
    LocalRead { op: &'static str, source: Arc<io::Error> },

    #[error("{problem}; {fix}")]
    InvalidInput { problem: String, fix: String },

    #[error("{op} still failing after {attempts} attempts over {elapsed:?}: {last}")]
    RetriesExhausted { op: &'static str, attempts: u32, elapsed: Duration, last: Box<RemoteError> },

    #[error("{op} cancelled")]
    Cancelled { op: &'static str },
}

impl RemoteError {
    pub fn invalid_input(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        RemoteError::InvalidInput { problem: problem.into(), fix: fix.into() }
    }

    /// The innermost error (unwrapping [`RemoteError::RetriesExhausted`]).
    pub fn root(&self) -> &RemoteError {
        match self {
            RemoteError::RetriesExhausted { last, .. } => last.root(),
            other => other,
        }
    }

    /// The service error, if the server answered with one.
    pub fn service(&self) -> Option<&ServiceError> {
        match self.root() {
            RemoteError::Service(s) => Some(s),
            _ => None,
        }
    }

    /// The OSS/S3 error code, if any.
    pub fn code(&self) -> Option<&str> {
        self.service().map(|s| s.code.as_str()).filter(|c| !c.is_empty())
    }

    pub fn status(&self) -> Option<u16> {
        self.service().map(|s| s.status)
    }

    pub fn kind(&self) -> ErrorKind {
        match self.root() {
            RemoteError::Service(s) => match (s.status, s.code.as_str()) {
                (_, "NoSuchKey" | "NoSuchUpload" | "NoSuchBucket") | (404, _) => ErrorKind::NotFound,
                // The body arrived damaged (S3's checksum headers, Content-MD5, a signed payload hash).
                (_, "BadDigest" | "XAmzContentSHA256Mismatch") => ErrorKind::Integrity,
                (_, "RequestTimeTooSkewed") => ErrorKind::ServerBusy,
                (401 | 403, _) => ErrorKind::Auth,
                (409, _) => ErrorKind::Conflict,
                (408 | 429, _) | (500.., _) => ErrorKind::ServerBusy,
                (_, "BadRequest") => ErrorKind::ServerBusy,
                _ => ErrorKind::Rejected,
            },
            RemoteError::Transport { .. } => ErrorKind::Transport,
            RemoteError::ChecksumMismatch { .. } | RemoteError::DigestMismatch(_) => ErrorKind::Integrity,
            RemoteError::BadResponse { .. } => ErrorKind::Transport,
            RemoteError::LocalRead { .. } => ErrorKind::LocalIo,
            RemoteError::InvalidInput { .. } => ErrorKind::Input,
            RemoteError::Cancelled { .. } => ErrorKind::Cancelled,
            RemoteError::RetriesExhausted { .. } => unreachable!("root() unwraps RetriesExhausted"),
        }
    }

    /// Worth sending again (after a backoff)? Decided once, here.
    pub fn is_retryable(&self) -> bool {
        match self {
            RemoteError::Service(s) => {
                s.status >= 500
                    || matches!(s.status, 401 | 408 | 429)
                    || matches!(
                        s.code.as_str(),
                        // A body damaged on the way is sent again, like a local CRC mismatch.
                        "RequestTimeTooSkewed" | "BadRequest" | "BadDigest" | "XAmzContentSHA256Mismatch"
                    )
            }
            RemoteError::Transport { .. } | RemoteError::ChecksumMismatch { .. } | RemoteError::DigestMismatch(_) => {
                true
            }
            // A 2xx/4xx answer that is not OSS (an HTML page, a captive portal, the wrong service) will not
            // improve by asking again; 5xx gateway pages are classified as service errors and retried.
            RemoteError::BadResponse { .. }
            | RemoteError::LocalRead { .. }
            | RemoteError::InvalidInput { .. }
            | RemoteError::RetriesExhausted { .. }
            | RemoteError::Cancelled { .. } => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// `NoSuchUpload`: the upload id is gone (aborted, completed or expired).
    pub fn is_no_such_upload(&self) -> bool {
        self.code() == Some("NoSuchUpload")
    }
}

impl From<ServiceError> for RemoteError {
    fn from(e: ServiceError) -> Self {
        RemoteError::Service(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(status: u16, code: &str) -> RemoteError {
        ServiceError {
            op: "PutObject",
            status,
            code: code.into(),
            message: "m".into(),
            request_id: Some("RID".into()),
            host_id: Some("host".into()),
            ec: Some("0002-00000001".into()),
            server_time: None,
        }
        .into()
    }

    #[test]
    fn classification_follows_the_sdks() {
        assert!(svc(500, "InternalError").is_retryable());
        assert!(svc(503, "ServiceUnavailable").is_retryable());
        assert!(svc(429, "").is_retryable());
        assert!(svc(403, "RequestTimeTooSkewed").is_retryable());
        assert!(svc(400, "BadRequest").is_retryable());
        assert!(!svc(403, "SignatureDoesNotMatch").is_retryable());
        assert!(!svc(404, "NoSuchUpload").is_retryable());
        assert!(!svc(400, "InvalidPart").is_retryable());
        assert_eq!(svc(404, "NoSuchUpload").kind(), ErrorKind::NotFound);
        assert!(svc(404, "NoSuchUpload").is_no_such_upload());
        assert_eq!(svc(403, "InvalidAccessKeyId").kind(), ErrorKind::Auth);
        assert_eq!(svc(409, "FileAlreadyExists").kind(), ErrorKind::Conflict);
        assert_eq!(svc(400, "EntityTooSmall").kind(), ErrorKind::Rejected);
        assert_eq!(svc(400, "BadDigest").kind(), ErrorKind::Integrity);
        assert!(svc(400, "BadDigest").is_retryable());
    }

    #[test]
    fn display_carries_ids_and_hint() {
        let text = svc(403, "SignatureDoesNotMatch").to_string();
        for needle in [
            "PutObject",
            "403",
            "SignatureDoesNotMatch",
            "RequestId: RID",
            "HostId: host",
            "OSS_ACCESS_KEY_SECRET",
            "EC: 0002-00000001",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }

    #[test]
    fn exhausted_unwraps_to_root() {
        let e = RemoteError::RetriesExhausted {
            op: "UploadPart",
            attempts: 3,
            elapsed: Duration::from_secs(1),
            last: Box::new(svc(503, "ServiceUnavailable")),
        };
        assert_eq!(e.code(), Some("ServiceUnavailable"));
        assert_eq!(e.kind(), ErrorKind::ServerBusy);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("3 attempts"));
    }
}
