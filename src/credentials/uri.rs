//! `ALIBABA_CLOUD_CREDENTIALS_URI`: a URL that answers the metadata service's JSON (`AccessKeyId`,
//! `AccessKeySecret`, `SecurityToken`, `Expiration`, optionally `Code: "Success"`), as credentials-go
//! `providers/uri.go` and alibabacloud_credentials `provider/uri.py` read it. A GET each refresh; 5 s to
//! connect, 10 s to answer (the SDKs' timeouts).

use std::time::Duration;

use async_trait::async_trait;

use super::CredentialsError;
use super::http::{self, NoAnswer};
use super::refresh::{Fetch, Temporary};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct CredentialsUri {
    url: String,
    http: reqwest::Client,
}

impl CredentialsUri {
    pub fn new(url: &str) -> Result<Self, CredentialsError> {
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(CredentialsError::invalid(format!(
                    "ALIBABA_CLOUD_CREDENTIALS_URI {} is not an http:// or https:// URL",
                    http::shown(url)
                )));
            }
        }
        Ok(CredentialsUri { url: url.to_string(), http: http::client(url, CONNECT_TIMEOUT, TOTAL_TIMEOUT)? })
    }

    /// The URL without its query (which may hold a token), for messages.
    pub fn shown(&self) -> String {
        http::shown(&self.url)
    }
}

#[async_trait]
impl Fetch for CredentialsUri {
    async fn fetch(&self) -> Result<Temporary, CredentialsError> {
        let what = format!("the credentials URI {}", self.shown());
        let answer = http::send(self.http.get(&self.url)).await.map_err(|e| match e {
            NoAnswer::Connect(d) | NoAnswer::Exchange(d) => CredentialsError::unavailable(format!("{what}: {d}")),
        })?;
        if answer.status != 200 {
            let message = format!("{what}: HTTP {}", answer.status);
            return Err(if answer.status >= 500 {
                CredentialsError::unavailable(message)
            } else {
                CredentialsError::invalid(message)
            });
        }
        super::ecs::session_credentials(&answer.body, false)
            .map_err(|e| CredentialsError::unavailable(format!("{what}: {e}")))
    }
}
