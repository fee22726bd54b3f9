//! The default chain after the static keys (see the module docs of [`crate::credentials`] for the order and
//! its sources): OIDC from the environment, the aliyun CLI profile, the shared credentials file, the ECS
//! instance role, the credentials URI.
//!
//! [`resolve`] works on a [`ChainEnv`], a snapshot of the variables it reads, so it can run on any
//! thread and tests can give it any environment. Every source it looks at is recorded in a [`Tried`]; if
//! none has credentials, [`ChainError::NotFound`] lists them all with the reason each gave nothing.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::ecs::EcsRole;
use super::profiles::{self, Lookup, RoleSpec, Spec};
use super::refresh::Refreshing;
use super::sts::{self, AssumeRole, AssumeRoleWithOidc, RoleRequest};
use super::uri::CredentialsUri;
use super::{CredentialsError, CredentialsProvider, FailureKind, StaticProvider};

/// Every variable the chain reads.
const VARIABLES: &[&str] = &[
    "HOME",
    "ALIBABA_CLOUD_ROLE_ARN",
    "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
    "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
    "ALIBABA_CLOUD_ROLE_SESSION_NAME",
    "ALIBABA_CLOUD_CONFIG_FILE",
    "ALIBABA_CLOUD_CLI_PROFILE_DISABLED",
    "ALIBABA_CLOUD_PROFILE",
    "ALIBABA_CLOUD_CREDENTIALS_FILE",
    "ALIBABA_CLOUD_ECS_METADATA",
    "ALIBABA_CLOUD_ECS_METADATA_DISABLED",
    "ALIBABA_CLOUD_IMDSV1_DISABLED",
    "ALIBABA_CLOUD_CREDENTIALS_URI",
    "ALIBABA_CLOUD_STS_REGION",
    "ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED",
    super::ecs::ENDPOINT_VAR,
    super::sts::ENDPOINT_VAR,
];

/// The environment the chain reads, captured once.
#[derive(Debug, Clone, Default)]
pub struct ChainEnv {
    vars: HashMap<&'static str, String>,
}

impl ChainEnv {
    /// Capture the chain's variables through `get` (empty values count as unset).
    pub fn capture(get: impl Fn(&str) -> Option<String>) -> ChainEnv {
        let vars =
            VARIABLES.iter().filter_map(|name| get(name).filter(|v| !v.is_empty()).map(|v| (*name, v))).collect();
        ChainEnv { vars }
    }

    /// The process environment.
    pub fn process() -> ChainEnv {
        Self::capture(|name| std::env::var(name).ok())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The SDKs compare with `"true"`, case-insensitively.
    fn is_true(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    fn home(&self) -> Option<PathBuf> {
        self.get("HOME").map(PathBuf::from)
    }

    fn sts_endpoint(&self, role: &RoleSpec) -> String {
        let region = role.sts_region.as_deref().or(self.get("ALIBABA_CLOUD_STS_REGION"));
        let vpc = role.enable_vpc || self.is_true("ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED");
        sts::endpoint(self.get(sts::ENDPOINT_VAR), region, vpc)
    }

    fn metadata_endpoint(&self) -> &str {
        self.get(super::ecs::ENDPOINT_VAR).unwrap_or(super::ecs::DEFAULT_ENDPOINT)
    }
}

/// A source the chain looked at and why it gave nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    pub source: String,
    pub outcome: String,
}

impl Tried {
    pub fn new(source: impl Into<String>, outcome: impl Into<String>) -> Tried {
        Tried { source: source.into(), outcome: outcome.into() }
    }
}

/// The credentials found, and what was looked at before.
#[derive(Debug)]
pub struct Resolved {
    pub provider: Arc<dyn CredentialsProvider>,
    pub tried: Vec<Tried>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// No source had credentials.
    NotFound { tried: Vec<Tried> },
    /// A source is there but failed: misconfigured (`FailureKind::Invalid`) or failing for now.
    Failed(CredentialsError),
}

impl ChainError {
    /// A configuration problem (exit 2), not a failure that may pass (exit 1).
    pub fn is_configuration(&self) -> bool {
        match self {
            ChainError::NotFound { .. } => true,
            ChainError::Failed(e) => e.kind != FailureKind::Unavailable,
        }
    }
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::NotFound { tried } => {
                writeln!(f, "no credentials found; looked at, in order:")?;
                for (i, t) in tried.iter().enumerate() {
                    writeln!(f, "  {}. {}: {}", i + 1, t.source, t.outcome)?;
                }
                write!(
                    f,
                    "Give credentials through one of these (README: Credentials), or --anonymous for a public bucket"
                )
            }
            ChainError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// Walk the chain. `tried` holds what the caller looked at already (flags, environment, config file).
pub async fn resolve(env: &ChainEnv, mut tried: Vec<Tried>) -> Result<Resolved, ChainError> {
    let steps: [(&str, StepFn); 5] = [
        (
            "OIDC (ALIBABA_CLOUD_ROLE_ARN, ALIBABA_CLOUD_OIDC_PROVIDER_ARN, ALIBABA_CLOUD_OIDC_TOKEN_FILE)",
            oidc_from_env,
        ),
        ("aliyun CLI profile", cli_profile),
        ("credentials file", credentials_file),
        ("ECS instance RAM role", ecs_role),
        ("ALIBABA_CLOUD_CREDENTIALS_URI", credentials_uri),
    ];
    for (source, step) in steps {
        match step(env).await {
            Step::Found(provider) => {
                tracing::info!(source = %provider.source(), "credentials found");
                return Ok(Resolved { provider, tried });
            }
            Step::Skip(source_detail, outcome) => {
                tried.push(Tried::new(source_detail.unwrap_or(source.to_string()), outcome))
            }
            Step::Fail(e) => return Err(ChainError::Failed(e)),
        }
    }
    Err(ChainError::NotFound { tried })
}

/// The outcome of one step: credentials, nothing here (with a more precise name for the source, and why),
/// or a failure that stops the chain.
enum Step {
    Found(Arc<dyn CredentialsProvider>),
    Skip(Option<String>, String),
    Fail(CredentialsError),
}

type StepFn = for<'a> fn(&'a ChainEnv) -> BoxFuture<'a, Step>;

fn skip(outcome: impl Into<String>) -> Step {
    Step::Skip(None, outcome.into())
}

fn from(result: Result<Arc<dyn CredentialsProvider>, CredentialsError>) -> Step {
    match result {
        Ok(p) => Step::Found(p),
        Err(e) => Step::Fail(e),
    }
}

fn oidc_from_env(env: &ChainEnv) -> BoxFuture<'_, Step> {
    Box::pin(async move {
        let role = env.get("ALIBABA_CLOUD_ROLE_ARN");
        let provider = env.get("ALIBABA_CLOUD_OIDC_PROVIDER_ARN");
        let token = env.get("ALIBABA_CLOUD_OIDC_TOKEN_FILE");
        let (role, provider, token) = match (role, provider, token) {
            (Some(r), Some(p), Some(t)) => (r, p, t),
            (_, None, None) => return skip("not set"),
            _ => {
                let missing: Vec<&str> = [
                    ("ALIBABA_CLOUD_ROLE_ARN", role),
                    ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", provider),
                    ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token),
                ]
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(n, _)| *n)
                .collect();
                return Step::Fail(CredentialsError::invalid(format!(
                    "OIDC credentials are half configured: set {} too (RRSA in ACK sets all three)",
                    missing.join(" and ")
                )));
            }
        };
        let spec = Spec::Oidc {
            role: RoleSpec { role_arn: role.to_string(), ..RoleSpec::default() },
            provider_arn: provider.to_string(),
            token_file: token.to_string(),
        };
        from(build(spec, format!("OIDC role {role} (ALIBABA_CLOUD_ROLE_ARN and ALIBABA_CLOUD_OIDC_*)"), env).await)
    })
}

fn cli_profile(env: &ChainEnv) -> BoxFuture<'_, Step> {
    Box::pin(async move {
        if env.is_true("ALIBABA_CLOUD_CLI_PROFILE_DISABLED") {
            return skip("disabled by ALIBABA_CLOUD_CLI_PROFILE_DISABLED=true");
        }
        let (path, explicit) = match (env.get("ALIBABA_CLOUD_CONFIG_FILE"), env.home()) {
            (Some(p), _) => (PathBuf::from(p), true),
            (None, Some(home)) => (home.join(".aliyun/config.json"), false),
            (None, None) => return skip("HOME is not set, so there is no ~/.aliyun/config.json"),
        };
        let shown = Some(format!("aliyun CLI profile ({})", path.display()));
        let text = match read_file(&path, explicit, "ALIBABA_CLOUD_CONFIG_FILE").await {
            Ok(Some(t)) => t,
            Ok(None) => return Step::Skip(shown, "no such file".into()),
            Err(e) => return Step::Fail(e),
        };
        match profiles::cli_profile(&text, &path, env.get("ALIBABA_CLOUD_PROFILE")) {
            Ok(Lookup::Found { name, kind, spec }) => {
                let label = format!("aliyun CLI profile {name:?} ({}, {kind})", path.display());
                from(build(*spec, label, env).await)
            }
            Ok(Lookup::Missing(why)) => Step::Skip(shown, why),
            Err(e) => Step::Fail(e),
        }
    })
}

fn credentials_file(env: &ChainEnv) -> BoxFuture<'_, Step> {
    Box::pin(async move {
        let name = env.get("ALIBABA_CLOUD_PROFILE").unwrap_or("default");
        let candidates: Vec<(PathBuf, bool)> = match (env.get("ALIBABA_CLOUD_CREDENTIALS_FILE"), env.home()) {
            (Some(p), _) => vec![(PathBuf::from(p), true)],
            // credentials-go reads `credentials`, the Python SDK `credentials.ini`.
            (None, Some(home)) => vec![
                (home.join(".alibabacloud/credentials"), false),
                (home.join(".alibabacloud/credentials.ini"), false),
            ],
            (None, None) => return skip("HOME is not set, so there is no ~/.alibabacloud/credentials"),
        };
        let mut outcomes = Vec::new();
        for (path, explicit) in &candidates {
            let text = match read_file(path, *explicit, "ALIBABA_CLOUD_CREDENTIALS_FILE").await {
                Ok(Some(t)) => t,
                Ok(None) => {
                    outcomes.push(format!("{}: no such file", path.display()));
                    continue;
                }
                Err(e) => return Step::Fail(e),
            };
            match profiles::ini_profile(&text, path, name) {
                Ok(Lookup::Found { name, kind, spec }) => {
                    let label = format!("credentials file {} [{name}] ({kind})", path.display());
                    return from(build(*spec, label, env).await);
                }
                Ok(Lookup::Missing(why)) => outcomes.push(why),
                Err(e) => return Step::Fail(e),
            }
        }
        Step::Skip(Some(format!("credentials file, profile [{name}]")), outcomes.join("; "))
    })
}

fn ecs_role(env: &ChainEnv) -> BoxFuture<'_, Step> {
    Box::pin(async move {
        if env.is_true("ALIBABA_CLOUD_ECS_METADATA_DISABLED") {
            return skip("disabled by ALIBABA_CLOUD_ECS_METADATA_DISABLED=true");
        }
        match ecs_provider(env, env.get("ALIBABA_CLOUD_ECS_METADATA").map(str::to_string)).await {
            Ok(p) => Step::Found(p),
            // Not an ECS instance, or no role attached: the chain goes on.
            Err(e) if e.kind == FailureKind::Absent => {
                Step::Skip(Some(format!("ECS instance RAM role ({})", env.metadata_endpoint())), e.message)
            }
            Err(e) => Step::Fail(e),
        }
    })
}

fn credentials_uri(env: &ChainEnv) -> BoxFuture<'_, Step> {
    Box::pin(async move {
        let Some(url) = env.get("ALIBABA_CLOUD_CREDENTIALS_URI") else { return skip("not set") };
        let result = async {
            let fetch = CredentialsUri::new(url)?;
            let label = format!("credentials URI {} (ALIBABA_CLOUD_CREDENTIALS_URI)", fetch.shown());
            let provider: Arc<dyn CredentialsProvider> = Refreshing::start(label, fetch).await?;
            Ok(provider)
        };
        from(result.await)
    })
}

async fn ecs_provider(env: &ChainEnv, role: Option<String>) -> Result<Arc<dyn CredentialsProvider>, CredentialsError> {
    let role = EcsRole::discover(env.metadata_endpoint(), role, env.is_true("ALIBABA_CLOUD_IMDSV1_DISABLED")).await?;
    let label = format!("ECS instance RAM role {:?} (metadata service {})", role.role(), role.endpoint());
    Ok(Refreshing::start(label, role).await?)
}

/// Read a profile file: `None` when it is not there (an error when the user named it explicitly).
async fn read_file(path: &std::path::Path, explicit: bool, variable: &str) -> Result<Option<String>, CredentialsError> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(None),
        Err(e) => Err(CredentialsError::invalid(format!(
            "{} cannot be read: {e}{}",
            path.display(),
            if explicit { format!(" (it is named by {variable})") } else { String::new() }
        ))),
    }
}

/// Build the provider a profile asks for. The profile asked for it explicitly, so a source that turns out
/// absent (no metadata service) is an error here, not a reason to move on.
fn build<'a>(
    spec: Spec,
    label: String,
    env: &'a ChainEnv,
) -> BoxFuture<'a, Result<Arc<dyn CredentialsProvider>, CredentialsError>> {
    Box::pin(async move {
        let in_label = |e: CredentialsError| {
            let kind = if e.kind == FailureKind::Absent { FailureKind::Invalid } else { e.kind };
            CredentialsError { kind, message: format!("{label}: {}", e.message) }
        };
        match spec {
            Spec::Keys(credentials) => {
                credentials.check_sendable().map_err(|e| CredentialsError::invalid(format!("{label}: {e}")))?;
                Ok(StaticProvider::shared(credentials, label.clone()))
            }
            Spec::RamRoleArn { caller, role } => {
                let caller = build(*caller, format!("{label}, caller"), env).await?;
                let endpoint = env.sts_endpoint(&role);
                let request = role_request(&role, env).map_err(in_label)?;
                let label = format!("{label}: role {} via STS AssumeRole at {endpoint}", role.role_arn);
                let fetch = AssumeRole::new(endpoint, request, caller)?;
                let provider: Arc<dyn CredentialsProvider> = Refreshing::start(label, fetch).await.map_err(in_label)?;
                Ok(provider)
            }
            Spec::Oidc { role, provider_arn, token_file } => {
                let endpoint = env.sts_endpoint(&role);
                let request = role_request(&role, env).map_err(in_label)?;
                let label = format!("{label} via STS AssumeRoleWithOIDC at {endpoint}");
                let fetch = AssumeRoleWithOidc::new(endpoint, request, provider_arn, PathBuf::from(token_file))?;
                let provider: Arc<dyn CredentialsProvider> = Refreshing::start(label, fetch).await.map_err(in_label)?;
                Ok(provider)
            }
            Spec::EcsRamRole { role_name } => {
                if env.is_true("ALIBABA_CLOUD_ECS_METADATA_DISABLED") {
                    return Err(CredentialsError::invalid(format!(
                        "{label} asks for the ECS instance RAM role, but ALIBABA_CLOUD_ECS_METADATA_DISABLED=true"
                    )));
                }
                ecs_provider(env, role_name).await.map_err(in_label)
            }
        }
    })
}

fn role_request(role: &RoleSpec, env: &ChainEnv) -> Result<RoleRequest, CredentialsError> {
    let session = role.session_name.clone().or_else(|| env.get("ALIBABA_CLOUD_ROLE_SESSION_NAME").map(str::to_string));
    let mut request = RoleRequest::new(role.role_arn.clone(), session, role.duration_secs)?;
    request.policy = role.policy.clone();
    request.external_id = role.external_id.clone();
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> ChainEnv {
        ChainEnv::capture(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    /// With nothing configured, every source is listed with its reason, in the SDKs' order. (The metadata
    /// service defaults to a closed loopback port in unit tests.)
    #[tokio::test]
    async fn nothing_found_names_every_source() {
        let home = tempfile::tempdir().unwrap();
        let e = resolve(&env(&[("HOME", home.path().to_str().unwrap())]), vec![Tried::new("flags", "not given")])
            .await
            .unwrap_err();
        assert!(e.is_configuration());
        let text = e.to_string();
        let order = [
            "flags",
            "OIDC",
            "aliyun CLI profile",
            "credentials file",
            "ECS instance RAM role",
            "ALIBABA_CLOUD_CREDENTIALS_URI",
            "--anonymous",
        ];
        let mut at = 0;
        for needle in order {
            let found =
                text[at..].find(needle).unwrap_or_else(|| panic!("{needle:?} missing or out of order in:\n{text}"));
            at += found;
        }
        assert!(text.contains("no ECS metadata service at http://127.0.0.1:9"), "{text}");
    }

    #[tokio::test]
    async fn disabled_and_half_configured_sources() {
        let e = env(&[("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "TRUE"), ("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", "true")]);
        let text = resolve(&e, vec![]).await.unwrap_err().to_string();
        assert!(text.contains("disabled by ALIBABA_CLOUD_ECS_METADATA_DISABLED=true"), "{text}");
        assert!(text.contains("disabled by ALIBABA_CLOUD_CLI_PROFILE_DISABLED=true"), "{text}");
        assert!(text.contains("HOME is not set"), "{text}");

        let e = env(&[("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/r"), ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", "/t")]);
        let err = resolve(&e, vec![]).await.unwrap_err();
        assert!(err.is_configuration());
        assert!(err.to_string().contains("set ALIBABA_CLOUD_OIDC_PROVIDER_ARN too"), "{err}");

        let e = env(&[("ALIBABA_CLOUD_CREDENTIALS_FILE", "/nonexistent/credentials")]);
        let err = resolve(&e, vec![]).await.unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/credentials cannot be read") && err.contains("ALIBABA_CLOUD_CREDENTIALS_FILE"),
            "{err}"
        );
    }

    /// Static profiles resolve without any network; the CLI profile comes before the credentials file.
    #[tokio::test]
    async fn profiles_in_order() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".aliyun")).unwrap();
        std::fs::create_dir_all(home.path().join(".alibabacloud")).unwrap();
        std::fs::write(
            home.path().join(".alibabacloud/credentials.ini"),
            "[default]\ntype = sts\naccess_key_id = INI\naccess_key_secret = s\nsecurity_token = t\n",
        )
        .unwrap();
        let vars = [("HOME", home.path().to_str().unwrap())];
        let found = resolve(&env(&vars), vec![]).await.unwrap();
        assert_eq!(found.provider.current().access_key_id, "INI");
        assert!(
            found.provider.source().contains("credentials.ini [default] (type sts)"),
            "{}",
            found.provider.source()
        );
        assert_eq!(found.tried.len(), 2, "OIDC and the CLI profile were looked at first: {:?}", found.tried);

        std::fs::write(
            home.path().join(".aliyun/config.json"),
            r#"{"current":"p","profiles":[{"name":"p","mode":"AK","access_key_id":"CLI","access_key_secret":"s"}]}"#,
        )
        .unwrap();
        let found = resolve(&env(&vars), vec![]).await.unwrap();
        assert_eq!(found.provider.current().access_key_id, "CLI");
        // ALIBABA_CLOUD_PROFILE names a profile only the credentials file has: the CLI file is passed over.
        let vars = [("HOME", home.path().to_str().unwrap()), ("ALIBABA_CLOUD_PROFILE", "default")];
        let found = resolve(&env(&vars), vec![]).await.unwrap();
        assert_eq!(found.provider.current().access_key_id, "INI");
        assert!(found.tried.iter().any(|t| t.outcome.contains("no profile \"default\"")), "{:?}", found.tried);
    }

    #[tokio::test]
    async fn an_explicit_ecs_profile_without_a_metadata_service_is_an_error() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".alibabacloud")).unwrap();
        std::fs::write(
            home.path().join(".alibabacloud/credentials"),
            "[default]\ntype = ecs_ram_role\nrole_name = r\n",
        )
        .unwrap();
        let e = resolve(&env(&[("HOME", home.path().to_str().unwrap())]), vec![]).await.unwrap_err();
        assert!(e.is_configuration());
        let text = e.to_string();
        assert!(text.contains("[default] (type ecs_ram_role)") && text.contains("no ECS metadata service"), "{text}");
    }
}
