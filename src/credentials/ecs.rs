//! The ECS instance RAM role, from the instance metadata service.
//!
//! IMDSv2, as aliyun/credentials-go (`providers/ecs_ram_role.go`) and alibabacloud_credentials
//! (`provider/ecs_ram_role.py`) do it:
//! 1. `PUT /latest/api/token` with `X-aliyun-ecs-metadata-token-ttl-seconds: 21600` → a metadata token;
//! 2. the role: `ALIBABA_CLOUD_ECS_METADATA` (or a profile's `ram_role_name` / `role_name`), else
//!    `GET /latest/meta-data/ram/security-credentials/` names the role attached to the instance;
//! 3. `GET /latest/meta-data/ram/security-credentials/<role>` with `X-aliyun-ecs-metadata-token` →
//!    `{"Code": "Success", "AccessKeyId", "AccessKeySecret", "SecurityToken", "Expiration":
//!    "2006-01-02T15:04:05Z", "LastUpdated"}`.
//!
//! When the token cannot be had (an old metadata service), the SDKs go on without it (IMDSv1) unless
//! `ALIBABA_CLOUD_IMDSV1_DISABLED=true`; so do we. A connection that cannot be made at all means this is
//! not an ECS instance, and the chain moves on; that costs at most the 1 s connect timeout the SDKs use.
//! The service's address is `OSSMIRROR_ECS_METADATA_ENDPOINT` (tests point it at a loopback fake).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use super::http::{self, Answer, NoAnswer};
use super::refresh::{Fetch, Temporary};
use super::{Credentials, CredentialsError};

/// Overrides the metadata service's address (tests: a loopback fake).
pub const ENDPOINT_VAR: &str = "OSSMIRROR_ECS_METADATA_ENDPOINT";
/// The metadata service. This library's own unit tests use a closed loopback port instead, so that no
/// test can reach the real address even by mistake.
pub const DEFAULT_ENDPOINT: &str = if cfg!(test) { "http://127.0.0.1:9" } else { "http://100.100.100.200" };

const TOKEN_PATH: &str = "/latest/api/token";
const ROLES_PATH: &str = "/latest/meta-data/ram/security-credentials/";
const TOKEN_TTL_HEADER: &str = "X-aliyun-ecs-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aliyun-ecs-metadata-token";
/// The SDKs' `defaultMetadataTokenDuration`: 6 hours.
const TOKEN_TTL_SECS: u32 = 21600;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(3);

/// The role of this instance, ready to fetch its credentials.
pub struct EcsRole {
    endpoint: String,
    role: String,
    imds_v1_disabled: bool,
    http: reqwest::Client,
}

impl EcsRole {
    /// Find the metadata service and the role (`role`, or the one attached to the instance). `Absent` when
    /// there is no metadata service or no role.
    pub async fn discover(
        endpoint: &str,
        role: Option<String>,
        imds_v1_disabled: bool,
    ) -> Result<EcsRole, CredentialsError> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let http = http::client(&endpoint, CONNECT_TIMEOUT, TOTAL_TIMEOUT)?;
        let mut this = EcsRole { endpoint, role: role.unwrap_or_default(), imds_v1_disabled, http };
        if this.role.is_empty() {
            let token = this.token().await?;
            let answer = this.get(ROLES_PATH, token.as_deref()).await?;
            let role = answer.body.lines().next().unwrap_or("").trim().to_string();
            match answer.status {
                200 if !role.is_empty() => this.role = role,
                200 | 404 => {
                    return Err(CredentialsError::absent(format!(
                        "the metadata service at {} reports no RAM role attached to this instance",
                        this.endpoint
                    )));
                }
                status => {
                    return Err(CredentialsError::unavailable(format!(
                        "the metadata service at {} answered HTTP {status} when asked for the instance's RAM role",
                        this.endpoint
                    )));
                }
            }
        }
        Ok(this)
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// An IMDSv2 token, or `None` to go on with IMDSv1.
    async fn token(&self) -> Result<Option<String>, CredentialsError> {
        let url = format!("{}{TOKEN_PATH}", self.endpoint);
        let request = self.http.put(&url).header(TOKEN_TTL_HEADER, TOKEN_TTL_SECS.to_string());
        let why = match http::send(request).await {
            Ok(Answer { status: 200, body }) if !body.trim().is_empty() => return Ok(Some(body.trim().to_string())),
            Ok(answer) => format!("HTTP {}", answer.status),
            Err(NoAnswer::Connect(detail)) => {
                return Err(CredentialsError::absent(format!(
                    "no ECS metadata service at {} ({detail})",
                    self.endpoint
                )));
            }
            Err(NoAnswer::Exchange(detail)) => detail,
        };
        if self.imds_v1_disabled {
            return Err(CredentialsError::unavailable(format!(
                "the metadata service at {} gave no IMDSv2 token ({why}), and ALIBABA_CLOUD_IMDSV1_DISABLED=true \
                 forbids going on without one",
                self.endpoint
            )));
        }
        tracing::debug!(endpoint = %self.endpoint, why, "no IMDSv2 token; using IMDSv1");
        Ok(None)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Result<Answer, CredentialsError> {
        let url = format!("{}{path}", self.endpoint);
        let mut request = self.http.get(&url);
        if let Some(t) = token {
            request = request.header(TOKEN_HEADER, t);
        }
        http::send(request).await.map_err(|e| match e {
            NoAnswer::Connect(detail) => {
                CredentialsError::absent(format!("no ECS metadata service at {} ({detail})", self.endpoint))
            }
            NoAnswer::Exchange(detail) => {
                CredentialsError::unavailable(format!("the metadata service at {}: {detail}", self.endpoint))
            }
        })
    }
}

#[async_trait]
impl Fetch for EcsRole {
    async fn fetch(&self) -> Result<Temporary, CredentialsError> {
        let token = self.token().await?;
        let answer = self.get(&format!("{ROLES_PATH}{}", self.role), token.as_deref()).await?;
        let what = format!("the metadata service at {} (role {})", self.endpoint, self.role);
        match answer.status {
            200 => session_credentials(&answer.body, true)
                .map_err(|e| CredentialsError::unavailable(format!("{what}: {e}"))),
            404 => Err(CredentialsError::invalid(format!(
                "{what}: no such role on this instance (HTTP 404): check ALIBABA_CLOUD_ECS_METADATA or the \
                 profile's role name, or attach the role to the instance"
            ))),
            status => Err(CredentialsError::unavailable(format!("{what}: HTTP {status}"))),
        }
    }
}

/// The JSON of the metadata service (and of a credentials URI).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SessionAnswer {
    code: Option<String>,
    access_key_id: Option<String>,
    access_key_secret: Option<String>,
    security_token: Option<String>,
    expiration: Option<String>,
}

/// Parse the metadata service's JSON. `code_required`: the metadata service always sends `"Code":
/// "Success"` (credentials-go checks it); a credentials URI may leave it out (credentials-go does not
/// check it there, the Python SDK does), but if it is there it must say `Success`. Errors never quote the
/// body: it holds secrets.
pub(crate) fn session_credentials(body: &str, code_required: bool) -> Result<Temporary, String> {
    let answer: SessionAnswer =
        serde_json::from_str(body).map_err(|e| format!("the answer is not the expected JSON ({e})"))?;
    match answer.code.as_deref() {
        Some("Success") => {}
        None if !code_required => {}
        Some(other) => return Err(format!("the answer's Code is {other:?}, not \"Success\"")),
        None => return Err("the answer has no Code".to_string()),
    }
    let (Some(id), Some(secret), Some(token), Some(expiration)) =
        (answer.access_key_id, answer.access_key_secret, answer.security_token, answer.expiration)
    else {
        return Err("the answer lacks AccessKeyId, AccessKeySecret, SecurityToken or Expiration".to_string());
    };
    let credentials = Credentials::new(id, secret).with_session_token(token);
    credentials.check_sendable().map_err(|e| format!("unusable credentials: {e}"))?;
    Ok(Temporary { credentials, expiration: parse_expiration(&expiration)? })
}

/// `2006-01-02T15:04:05Z`, the form every Alibaba credential source uses.
pub(crate) fn parse_expiration(text: &str) -> Result<SystemTime, String> {
    crate::timefmt::parse_xml_date(text)
        .ok_or_else(|| format!("Expiration {text:?} is not a time like 2006-01-02T15:04:05Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_answers_are_checked() {
        let ok = r#"{"AccessKeyId":"STS.id","AccessKeySecret":"s3cr3t","Expiration":"2030-01-02T03:04:05Z",
                     "SecurityToken":"CAIStoken","LastUpdated":"2030-01-02T02:04:05Z","Code":"Success"}"#;
        let t = session_credentials(ok, true).unwrap();
        assert_eq!(t.credentials.access_key_id, "STS.id");
        assert_eq!(t.credentials.session_token.as_ref().map(|s| s.expose()), Some("CAIStoken"));
        assert_eq!(crate::timefmt::xml_date(t.expiration), "2030-01-02T03:04:05.000Z");

        let no_code = ok.replace(r#","Code":"Success""#, "");
        assert!(session_credentials(&no_code, true).unwrap_err().contains("no Code"));
        assert!(session_credentials(&no_code, false).is_ok(), "a credentials URI may leave Code out");
        let failed = ok.replace("Success", "Failed");
        assert!(session_credentials(&failed, false).unwrap_err().contains("Failed"));
        let partial = r#"{"Code":"Success","AccessKeyId":"x","AccessKeySecret":"s3cr3t"}"#;
        let e = session_credentials(partial, true).unwrap_err();
        assert!(e.contains("SecurityToken") && !e.contains("s3cr3t"), "{e}");
        let bad_time = ok.replace("2030-01-02T03:04:05Z", "tomorrow");
        assert!(session_credentials(&bad_time, true).unwrap_err().contains("tomorrow"));
        let garbage = session_credentials("<html>s3cr3t</html>", true).unwrap_err();
        assert!(!garbage.contains("s3cr3t"), "{garbage}");
    }

    #[test]
    fn unit_tests_cannot_reach_the_real_metadata_service() {
        assert_eq!(DEFAULT_ENDPOINT, "http://127.0.0.1:9");
    }
}
