//! Errors: [`ServerError`] for the library API (starting, storage), and [`OssError`], an OSS error answer
//! (status, `Code`, `Message`, `EC` and error-specific elements) that the handlers return and
//! `handler` renders as the `<Error>` XML body (or, for HEAD, as the `x-oss-err` header).
//!
//! EC values are the documented ones where OSS-PROTOCOL.md or the Alibaba docs name them; the others are
//! `0000-00000000`. SDKs only display the EC, and OSS says not to build logic on it.

use std::path::PathBuf;

use http::StatusCode;

use super::xml::XmlWriter;

/// Why the server could not start or a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("index database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("the data directory {0} is in use by another `ossmirror serve`")]
    RootLocked(PathBuf),
    #[error("the index is damaged: {0}")]
    Corrupt(String),
    #[error("invalid server configuration: {0}")]
    Config(String),
    #[error("a storage task panicked or was cancelled")]
    TaskFailed,
}

impl ServerError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ServerError::Io { context: context.into(), source }
    }
}

/// An error answer in the OSS format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OssError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub ec: &'static str,
    /// Error-specific elements after `EC`, e.g. `Key`, `UploadId`, `StringToSign`.
    pub extra: Vec<(&'static str, String)>,
    /// Response headers the error answer carries, e.g. `x-oss-delete-marker` and `x-oss-version-id` when
    /// the key's current version is a delete marker.
    pub headers: Vec<(&'static str, String)>,
}

const EC_UNKNOWN: &str = "0000-00000000";

impl OssError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        OssError {
            status,
            code: code.into(),
            message: message.into(),
            ec: EC_UNKNOWN,
            extra: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn with_ec(mut self, ec: &'static str) -> Self {
        self.ec = ec;
        self
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((name, value.into()));
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidArgument", message)
    }

    pub fn invalid_argument_named(name: &str, value: &str, message: impl Into<String>) -> Self {
        Self::invalid_argument(message).with("ArgumentName", name).with("ArgumentValue", value)
    }

    pub fn missing_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "MissingArgument", message).with_ec("0016-00000502")
    }

    pub fn malformed_xml() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MalformedXML",
            "The XML you provided was not well-formed or did not validate against our published schema.",
        )
    }

    pub fn invalid_digest() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidDigest", "The Content-MD5 you specified was invalid.")
    }

    pub fn no_such_bucket(bucket: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NoSuchBucket", "The specified bucket does not exist.")
            .with_ec("0015-00000101")
            .with("BucketName", bucket)
    }

    pub fn no_such_key(key: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist.")
            .with_ec("0026-00000001")
            .with("Key", key)
    }

    pub fn no_such_upload(upload_id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchUpload",
            "The specified upload does not exist. The upload ID may be invalid, or the upload may have been \
             aborted or completed.",
        )
        .with_ec("0017-00000244")
        .with("UploadId", upload_id)
    }

    pub fn invalid_object_name(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidObjectName", message).with_ec("0016-00000005")
    }

    pub fn invalid_bucket_name(bucket: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidBucketName", "The specified bucket is not valid.")
            .with("BucketName", bucket)
    }

    pub fn file_already_exists() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "FileAlreadyExists",
            "The object you specified already exists and can not be overwritten.",
        )
        .with_ec("0026-00000002")
    }

    pub fn access_denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "AccessDenied", message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error. Please try again.",
        )
    }

    pub fn not_implemented(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            format!("{what} is not implemented by ossmirror serve."),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
        )
    }

    pub fn entity_too_large(what: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "EntityTooLarge",
            format!("Your proposed upload exceeds the maximum allowed size ({what})."),
        )
    }

    pub fn incomplete_body() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "IncompleteBody",
            "You did not provide the number of bytes specified by the Content-Length HTTP header.",
        )
    }

    pub fn precondition_failed(condition: &str) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold.",
        )
        .with("Condition", condition)
    }

    pub fn not_modified() -> Self {
        Self::new(StatusCode::NOT_MODIFIED, "NotModified", "The object has not been modified.")
    }

    /// A `versionId` that names no version of the key.
    pub fn no_such_version(key: &str, version_id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NoSuchVersion", "The specified version does not exist.")
            .with_ec("0012-00000203")
            .with("Key", key)
            .with("VersionId", version_id)
    }

    /// The key's current version is a delete marker: the key looks deleted (404 NoSuchKey), and the answer
    /// says which marker hides it.
    pub fn deleted_by_marker(key: &str, marker_version: &str) -> Self {
        Self::no_such_key(key)
            .with_header("x-oss-delete-marker", "true")
            .with_header("x-oss-version-id", marker_version)
    }

    /// The version asked for is a delete marker: it has no data to read (405, as S3 answers; OSS follows).
    pub fn version_is_delete_marker(version_id: &str) -> Self {
        Self::method_not_allowed()
            .with_header("x-oss-delete-marker", "true")
            .with_header("x-oss-version-id", version_id)
    }

    pub fn no_such_lifecycle(bucket: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NoSuchLifecycle", "No Row found in Lifecycle Table.")
            .with("BucketName", bucket)
    }

    pub fn invalid_range() -> Self {
        Self::new(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange", "The requested range cannot be satisfied.")
    }
}

impl OssError {
    /// The `<Error>` document.
    pub fn to_xml(&self, request_id: &str, host: &str) -> String {
        let mut w = XmlWriter::new("Error");
        w.elem("Code", &self.code).elem("Message", &self.message).elem("RequestId", request_id).elem("HostId", host);
        for (name, value) in &self.extra {
            w.elem(name, value);
        }
        w.elem("EC", self.ec);
        w.elem("RecommendDoc", &format!("https://api.aliyun.com/troubleshoot?q={}", self.ec));
        w.finish()
    }
}

impl From<ServerError> for OssError {
    fn from(e: ServerError) -> Self {
        tracing::error!(error = %e, "storage failure");
        OssError::internal()
    }
}

impl std::fmt::Display for OssError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}
