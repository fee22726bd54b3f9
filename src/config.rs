//! Runtime settings from flags, environment and config file, with precedence flags > env > file > defaults.
//!
//! The config file is TOML with the flag names as keys (underscores for dashes):
//!
//! ```toml
//! watch = "/data"
//! bucket = "backups"
//! prefix = "host1/"
//! endpoint = "https://oss-cn-hangzhou.aliyuncs.com"
//! region = "cn-hangzhou"
//! signature = "v4"          # v1 | v4
//! protocol = "oss"          # oss | s3
//! s3_integrity = "auto"     # auto | crc64nvme | md5 (S3 only: how uploads are verified)
//! exclude = ["*.log.tmp", "cache/"]
//! settle = "2s"
//! part_size = "8M"
//! ```
//!
//! Unknown keys and bad values are rejected with a message naming the file and the key. Credentials are
//! best kept out of the file (use an EnvironmentFile with mode 0600 under systemd, or no keys at all on ECS
//! and ACK: the chain of [`crate::credentials`] finds the instance role or the pod's OIDC token); if the
//! file holds a secret and other users can read it, we warn.
//!
//! Credentials are resolved in two steps: [`RemoteSettings::resolve`] reads the static keys (flags, then
//! environment, then file, per field, as before the chain existed) without any I/O beyond the config file;
//! [`RemoteSettings::resolve_credentials`] then, with an endpoint and no static keys, walks the rest of the
//! chain (profiles, ECS, STS), which may talk to the network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{AgentArgs, LogFormat, ObjectArgs, RemoteArgs};
use crate::credentials::{ChainEnv, ChainError, CredentialsProvider, StaticProvider, Tried};
use crate::remote::oss::sign::SignatureVersion;
use crate::remote::{Credentials, Dialect};
use crate::units::{parse_duration, parse_size};

/// Default location of the config file, read when present and no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ossmirror/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Value { path: PathBuf, key: &'static str, message: String },
    #[error("{0}")]
    Missing(String),
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
}

/// The config file as written: every value optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub watch: Option<PathBuf>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub signature: Option<String>,
    pub protocol: Option<String>,
    pub access_key_id: Option<String>,
    pub access_key_secret: Option<String>,
    pub session_token: Option<String>,
    /// Send unsigned requests (a public bucket): no credentials are looked for.
    pub anonymous: Option<bool>,
    pub path_style: Option<bool>,
    pub s3_integrity: Option<String>,
    pub s3_sign_payload: Option<bool>,
    pub state_db: Option<PathBuf>,
    pub delete: Option<bool>,
    pub allow_mass_delete: Option<bool>,
    pub exclude: Option<Vec<String>>,
    pub default_excludes: Option<bool>,
    pub settle: Option<String>,
    pub jobs: Option<usize>,
    pub part_size: Option<String>,
    pub threads: Option<usize>,
    pub bwlimit: Option<String>,
    pub follow_symlinks: Option<bool>,
    pub orphan_age: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub rescan_interval: Option<String>,
    pub remote_check_interval: Option<String>,
    pub log_format: Option<String>,
    pub metrics_listen: Option<String>,
    pub endpoint_kind: Option<String>,
    pub traffic_limit: Option<String>,
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub tags: Option<Vec<String>>,
    pub callback_url: Option<String>,
    pub callback_body: Option<String>,
    pub callback_body_json: Option<bool>,
    pub callback_host: Option<String>,
    pub callback_vars: Option<Vec<String>>,
}

impl FileConfig {
    /// Load `explicit`, or the default path if it exists, or nothing.
    pub fn load(explicit: Option<&Path>) -> Result<(FileConfig, Option<PathBuf>), ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => PathBuf::from(DEFAULT_CONFIG_PATH),
            None => return Ok((FileConfig::default(), None)),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let config = Self::parse(&text, &path)?;
        if config.access_key_secret.is_some() || config.session_token.is_some() {
            warn_if_readable_by_others(&path);
        }
        Ok((config, Some(path)))
    }

    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "config file holds a secret but other users can read it: chmod 600 it");
        }
    }
}

/// Where the environment comes from (a trait so tests need not touch the process environment).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }
}

/// How to reach the remote.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub protocol: Dialect,
    /// `None`: no endpoint configured anywhere (the agent then runs its embedded server).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub signature: SignatureVersion,
    /// Static keys from flags, environment or config file, if any.
    pub credentials: Option<Credentials>,
    /// Where `credentials` came from (variable or flag names, never values).
    pub credentials_source: Option<String>,
    /// `--anonymous`: unsigned requests, no credentials looked for.
    pub anonymous: bool,
    /// What the clients sign with, once [`RemoteSettings::resolve_credentials`] ran.
    pub provider: Option<Arc<dyn CredentialsProvider>>,
    /// The config file read, for messages.
    pub config_file: Option<PathBuf>,
    pub path_style: bool,
    /// S3 only: how uploads are verified.
    pub s3_integrity: crate::remote::s3::IntegrityMode,
    /// S3 only: sign the payload's SHA-256 instead of `UNSIGNED-PAYLOAD`.
    pub s3_sign_payload: bool,
    /// True when the secret came from a command-line flag (visible in `ps`): worth a warning.
    pub secret_from_flag: bool,
    /// `--traffic-limit`, as `x-oss-traffic-limit` bits per second (OSS only).
    pub traffic_limit: Option<u64>,
}

fn first<T>(options: impl IntoIterator<Item = Option<T>>) -> Option<T> {
    options.into_iter().flatten().next()
}

/// The first value given, with the name of where it came from.
fn first_named(options: impl IntoIterator<Item = (&'static str, Option<String>)>) -> Option<(&'static str, String)> {
    options.into_iter().find_map(|(name, value)| value.map(|v| (name, v)))
}

/// The names the static keys are read from, per dialect, in precedence order.
struct StaticSources {
    ids: [&'static str; 4],
    secrets: [&'static str; 4],
    tokens: [&'static str; 2],
}

const FILE_ID: &str = "config file `access_key_id`";
const FILE_SECRET: &str = "config file `access_key_secret`";
const FILE_TOKEN: &str = "config file `session_token`";

fn static_sources(protocol: Dialect) -> StaticSources {
    match protocol {
        // The OSS SDKs' variables, then the credentials SDKs' (their `env` provider).
        Dialect::Oss => StaticSources {
            ids: ["--access-key-id", "OSS_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_ID", FILE_ID],
            secrets: ["--access-key-secret", "OSS_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_ACCESS_KEY_SECRET", FILE_SECRET],
            tokens: ["OSS_SESSION_TOKEN", "ALIBABA_CLOUD_SECURITY_TOKEN"],
        },
        Dialect::S3 => StaticSources {
            ids: ["--access-key-id", "AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID", FILE_ID],
            secrets: ["--access-key-secret", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", FILE_SECRET],
            tokens: ["AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN"],
        },
    }
}

fn file_value<T>(
    path: &Option<PathBuf>,
    key: &'static str,
    value: Option<&str>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    value
        .map(|v| {
            parse(v).map_err(|message| ConfigError::Value { path: path.clone().unwrap_or_default(), key, message })
        })
        .transpose()
}

impl RemoteSettings {
    pub fn resolve(
        flags: &RemoteArgs,
        file: &FileConfig,
        file_path: &Option<PathBuf>,
        env: &dyn Env,
    ) -> Result<RemoteSettings, ConfigError> {
        let protocol = match flags.protocol {
            Some(p) => p.into(),
            None => file_value(file_path, "protocol", file.protocol.as_deref(), |v| match v {
                "oss" => Ok(Dialect::Oss),
                "s3" => Ok(Dialect::S3),
                _ => Err(format!("{v:?} is not a protocol: use \"oss\" or \"s3\"")),
            })?
            .unwrap_or(Dialect::Oss),
        };
        let signature = match flags.signature {
            Some(s) => s.into(),
            None => file_value(file_path, "signature", file.signature.as_deref(), |v| v.parse())?
                .unwrap_or(SignatureVersion::V4),
        };
        let (region_var, endpoint_var) = match protocol {
            Dialect::Oss => ("OSS_REGION", "OSS_ENDPOINT"),
            Dialect::S3 => ("AWS_REGION", "AWS_ENDPOINT_URL"),
        };
        let endpoint = first([flags.endpoint.clone(), env.var(endpoint_var), file.endpoint.clone()]);
        let region = first([flags.region.clone(), env.var(region_var), file.region.clone()]);
        let kind = match flags.endpoint_kind {
            Some(k) => Some(k),
            None => file_value(file_path, "endpoint_kind", file.endpoint_kind.as_deref(), |v| {
                <crate::cli::EndpointKindArg as clap::ValueEnum>::from_str(v, true).map_err(|_| {
                    format!("{v:?} is not an endpoint kind: use \"public\", \"internal\" or \"accelerate\"")
                })
            })?,
        };
        let endpoint = match kind {
            None => endpoint,
            Some(kind) => {
                use crate::remote::oss::endpoint::{EndpointKind, endpoint_of_kind};
                let kind = match kind {
                    crate::cli::EndpointKindArg::Public => EndpointKind::Public,
                    crate::cli::EndpointKindArg::Internal => EndpointKind::Internal,
                    crate::cli::EndpointKindArg::Accelerate => EndpointKind::Accelerate,
                };
                if protocol != Dialect::Oss {
                    return Err(ConfigError::Missing(
                        "--endpoint-kind names Alibaba Cloud OSS endpoints: use it with --protocol oss".into(),
                    ));
                }
                Some(
                    endpoint_of_kind(endpoint.as_deref(), region.as_deref(), kind)
                        .map_err(|e| ConfigError::Missing(e.to_string()))?,
                )
            }
        };
        let traffic_limit = match flags.traffic_limit {
            Some(size) => Some(size.0),
            None => file_value(file_path, "traffic_limit", file.traffic_limit.as_deref(), |v| {
                parse_size(v).map_err(|e| e.to_string())
            })?,
        };
        let traffic_limit = traffic_limit
            .map(crate::remote::options::traffic_limit_bits)
            .transpose()
            .map_err(|e| ConfigError::Missing(e.to_string()))?;
        if traffic_limit.is_some() && protocol != Dialect::Oss {
            return Err(ConfigError::Missing(
                "--traffic-limit is OSS's x-oss-traffic-limit, which the S3 API does not have: drop it with \
                 --protocol s3 (or use --bwlimit, which paces on this side)"
                    .into(),
            ));
        }
        let names = static_sources(protocol);
        let [flag_id, env_id, env2_id, _] = names.ids;
        let [flag_secret, env_secret, env2_secret, _] = names.secrets;
        let id = first_named([
            (flag_id, flags.access_key_id.clone()),
            (env_id, env.var(env_id)),
            (env2_id, env.var(env2_id)),
            (FILE_ID, file.access_key_id.clone()),
        ]);
        let secret_from_flag = flags.access_key_secret.is_some();
        let secret = first_named([
            (flag_secret, flags.access_key_secret.clone()),
            (env_secret, env.var(env_secret)),
            (env2_secret, env.var(env2_secret)),
            (FILE_SECRET, file.access_key_secret.clone()),
        ]);
        let token = first_named([
            (names.tokens[0], env.var(names.tokens[0])),
            (names.tokens[1], env.var(names.tokens[1])),
            (FILE_TOKEN, file.session_token.clone()),
        ]);
        let anonymous = flags.anonymous || file.anonymous.unwrap_or(false);
        let (credentials, credentials_source) = match (id, secret) {
            (Some((id_from, id)), Some((secret_from, secret))) => {
                let mut from = vec![id_from, secret_from];
                let mut c = Credentials::new(id, secret);
                if let Some((token_from, t)) = token {
                    c = c.with_session_token(t);
                    from.push(token_from);
                }
                from.dedup();
                (Some(c), Some(from.join(", ")))
            }
            (None, None) => {
                if let Some((token_from, _)) = token {
                    return Err(ConfigError::Missing(format!(
                        "a session token is set ({token_from}) but no access key id and secret: set {env_id} and \
                         {env_secret} with it"
                    )));
                }
                (None, None)
            }
            (Some((from, _)), None) => {
                return Err(ConfigError::Missing(format!(
                    "an access key id is set ({from}) but no secret: set {env_secret} (or --access-key-secret)"
                )));
            }
            (None, Some((from, _))) => {
                return Err(ConfigError::Missing(format!(
                    "an access key secret is set ({from}) but no id: set {env_id} (or --access-key-id)"
                )));
            }
        };
        if anonymous && credentials.is_some() {
            return Err(ConfigError::Missing(format!(
                "--anonymous sends unsigned requests, but credentials are given too ({}): drop one or the other",
                credentials_source.as_deref().unwrap_or("")
            )));
        }
        let s3_integrity = match &flags.s3_integrity {
            Some(v) => v.parse().map_err(ConfigError::Missing)?,
            None => {
                file_value(file_path, "s3_integrity", file.s3_integrity.as_deref(), |v| v.parse())?.unwrap_or_default()
            }
        };
        Ok(RemoteSettings {
            protocol,
            s3_integrity,
            s3_sign_payload: flags.s3_sign_payload || file.s3_sign_payload.unwrap_or(false),
            endpoint,
            region,
            signature,
            credentials,
            credentials_source,
            anonymous,
            provider: None,
            config_file: file_path.clone(),
            path_style: flags.path_style || file.path_style.unwrap_or(false),
            secret_from_flag,
            traffic_limit,
        })
    }

    /// Decide what the clients sign with: nothing without an endpoint (the embedded store has its own
    /// keys) or with `--anonymous`; the static keys when given; else, for OSS, the rest of the chain of
    /// [`crate::credentials`], which may fetch temporary credentials (and keeps refreshing them). No
    /// credentials anywhere is [`ChainError::NotFound`], listing every source looked at.
    pub async fn resolve_credentials(&mut self, env: ChainEnv) -> Result<(), ChainError> {
        if self.endpoint.is_none() || self.anonymous {
            return Ok(());
        }
        if let Some(c) = &self.credentials {
            let source = self.credentials_source.clone().unwrap_or_else(|| "configured access key".into());
            tracing::info!(source = %source, "credentials found");
            self.provider = Some(StaticProvider::shared(c.clone(), source));
            return Ok(());
        }
        let tried = self.static_sources_tried();
        let resolved = match self.protocol {
            Dialect::Oss => crate::credentials::chain::resolve(&env, tried).await?,
            // The Alibaba chain serves OSS; an S3 store (SeaweedFS, MinIO…) takes keys only.
            Dialect::S3 => return Err(ChainError::NotFound { tried }),
        };
        self.provider = Some(resolved.provider);
        Ok(())
    }

    /// The static sources, all found empty (else there would be keys, or an error about half a pair).
    fn static_sources_tried(&self) -> Vec<Tried> {
        let names = static_sources(self.protocol);
        let mut tried = vec![Tried::new("--access-key-id / --access-key-secret", "not given")];
        let mut pairs: Vec<(&str, &str)> = vec![(names.ids[1], names.secrets[1]), (names.ids[2], names.secrets[2])];
        pairs.dedup();
        for (id, secret) in pairs {
            tried.push(Tried::new(format!("{id} / {secret}"), "not set"));
        }
        let file = match &self.config_file {
            Some(path) => format!("not in {}", path.display()),
            None => "no config file".to_string(),
        };
        tried.push(Tried::new("config file access_key_id / access_key_secret", file));
        tried
    }
}

impl RemoteSettings {
    /// Build the remote these settings describe. `None` when no endpoint is configured.
    pub fn connect(&self) -> Result<Option<std::sync::Arc<dyn crate::remote::Remote>>, ConfigError> {
        self.connect_with(None)
    }

    /// [`RemoteSettings::connect`], with every request body paced by `throttle` (`--bwlimit`).
    pub fn connect_with(
        &self,
        throttle: Option<std::sync::Arc<crate::remote::Throttle>>,
    ) -> Result<Option<std::sync::Arc<dyn crate::remote::Remote>>, ConfigError> {
        let Some(endpoint) = &self.endpoint else { return Ok(None) };
        match self.protocol {
            Dialect::Oss => {
                let mut config = crate::remote::oss::OssConfig::new(endpoint.clone());
                config.region = self.region.clone();
                config.signature = self.signature;
                config.credentials = self.credentials.clone();
                config.credentials_provider = self.provider.clone();
                config.path_style = self.path_style;
                config.throttle = throttle;
                config.traffic_limit = self.traffic_limit;
                let client =
                    crate::remote::oss::OssClient::new(config).map_err(|e| ConfigError::Missing(e.to_string()))?;
                Ok(Some(std::sync::Arc::new(client)))
            }
            Dialect::S3 => {
                let mut config = crate::remote::s3::S3Config::new(endpoint.clone());
                config.region = self.region.clone();
                config.credentials = self.credentials.clone();
                config.credentials_provider = self.provider.clone();
                config.path_style = self.path_style;
                config.integrity = self.s3_integrity;
                config.throttle = throttle;
                config.sign_payload = self.s3_sign_payload;
                let client =
                    crate::remote::s3::S3Client::new(config).map_err(|e| ConfigError::Missing(e.to_string()))?;
                Ok(Some(std::sync::Arc::new(client)))
            }
        }
    }
}

/// What new objects carry beyond content type and metadata: `--sse`, `--tag` and the upload callback
/// (flags, else the config file). The fields of [`ObjectOptions`] these flags do not set stay default.
pub fn object_extras(
    flags: &ObjectArgs,
    file: &FileConfig,
    path: &Option<PathBuf>,
) -> Result<crate::remote::ObjectOptions, ConfigError> {
    use crate::remote::options::{DEFAULT_CALLBACK_BODY, Encryption, UploadCallback, parse_tag};
    let invalid = |e: crate::remote::RemoteError| ConfigError::Missing(e.to_string());
    let sse = flags.sse.clone().or(file.sse.clone());
    let kms_key = flags.sse_kms_key_id.clone().or(file.sse_kms_key_id.clone());
    let encryption = match sse {
        Some(algorithm) => Some(Encryption::parse(&algorithm, kms_key.as_deref()).map_err(invalid)?),
        None if kms_key.is_some() => {
            return Err(ConfigError::Missing("sse_kms_key_id is set without sse = \"KMS\": add it".into()));
        }
        None => None,
    };
    let tag_pairs = if flags.tags.is_empty() { file.tags.clone().unwrap_or_default() } else { flags.tags.clone() };
    let tags = tag_pairs.iter().map(|t| parse_tag(t)).collect::<Result<Vec<_>, _>>().map_err(invalid)?;
    crate::remote::options::tagging_header(&tags).map_err(invalid)?;
    let callback = match flags.callback_url.clone().or(file.callback_url.clone()) {
        None => {
            let stray = flags.callback_body.is_some() || file.callback_body.is_some() || file.callback_host.is_some();
            if stray || file.callback_vars.as_ref().is_some_and(|v| !v.is_empty()) {
                return Err(ConfigError::Missing(format!(
                    "{}: callback settings without callback_url: add callback_url or remove them",
                    path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "config".into())
                )));
            }
            None
        }
        Some(url) => {
            let url = url.trim().to_string();
            if url.is_empty()
                || !url.split(';').all(|u| u.trim().starts_with("http://") || u.trim().starts_with("https://"))
            {
                return Err(ConfigError::Missing(format!(
                    "--callback-url {url:?}: give one to five http:// or https:// URLs separated by ';'"
                )));
            }
            let var_pairs = if flags.callback_vars.is_empty() {
                file.callback_vars.clone().unwrap_or_default()
            } else {
                flags.callback_vars.clone()
            };
            let vars = var_pairs
                .iter()
                .map(|v| UploadCallback::parse_var(v))
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            Some(UploadCallback {
                url,
                body: flags
                    .callback_body
                    .clone()
                    .or(file.callback_body.clone())
                    .unwrap_or_else(|| DEFAULT_CALLBACK_BODY.to_string()),
                host: flags.callback_host.clone().or(file.callback_host.clone()),
                json_body: flags.callback_body_json || file.callback_body_json.unwrap_or(false),
                vars,
            })
        }
    };
    Ok(crate::remote::ObjectOptions { encryption, tags, callback, ..Default::default() })
}

/// Everything the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub watch: PathBuf,
    pub bucket: String,
    pub prefix: String,
    pub remote: RemoteSettings,
    pub state_db: Option<PathBuf>,
    pub delete: bool,
    pub allow_mass_delete: bool,
    pub exclude: Vec<String>,
    pub default_excludes: bool,
    pub settle: Duration,
    pub jobs: usize,
    pub part_size: u64,
    pub threads: usize,
    pub bwlimit: Option<u64>,
    pub follow_symlinks: bool,
    pub orphan_age: Duration,
    pub shutdown_timeout: Duration,
    pub rescan_interval: Duration,
    /// Zero: no periodic remote check (the one at start still runs).
    pub remote_check_interval: Duration,
    pub once: bool,
    /// `--once --dry-run`: plan, print, change nothing.
    pub dry_run: bool,
    pub log_format: LogFormat,
    pub metrics_listen: Option<SocketAddr>,
    pub config_file: Option<PathBuf>,
    /// Encryption, tags and callback of every object the agent writes.
    pub object: crate::remote::ObjectOptions,
}

impl AgentSettings {
    pub fn resolve(flags: &AgentArgs, env: &dyn Env) -> Result<AgentSettings, ConfigError> {
        let (file, path) = FileConfig::load(flags.config.as_deref())?;
        Self::resolve_with(flags, &file, path, env)
    }

    pub fn resolve_with(
        flags: &AgentArgs,
        file: &FileConfig,
        path: Option<PathBuf>,
        env: &dyn Env,
    ) -> Result<AgentSettings, ConfigError> {
        let remote = RemoteSettings::resolve(&flags.remote, file, &path, env)?;
        let object = object_extras(&flags.object, file, &path)?;
        if remote.protocol == Dialect::S3 && object.callback.is_some() {
            return Err(ConfigError::Missing(
                "upload callbacks are an OSS feature the S3 API does not have: drop --callback-url with --protocol s3"
                    .into(),
            ));
        }
        let dur =
            |key: &'static str, flag: Option<crate::units::HumanDuration>, v: &Option<String>, default: Duration| {
                Ok::<_, ConfigError>(match flag {
                    Some(d) => d.0,
                    None => file_value(&path, key, v.as_deref(), |s| parse_duration(s).map_err(|e| e.to_string()))?
                        .unwrap_or(default),
                })
            };
        let size = |key: &'static str, flag: Option<crate::units::ByteSize>, v: &Option<String>| {
            Ok::<_, ConfigError>(match flag {
                Some(s) => Some(s.0),
                None => file_value(&path, key, v.as_deref(), |s| parse_size(s).map_err(|e| e.to_string()))?,
            })
        };
        let positive = |key: &'static str, v: Option<usize>| -> Result<Option<usize>, ConfigError> {
            match v {
                Some(0) => Err(ConfigError::Value {
                    path: path.clone().unwrap_or_default(),
                    key,
                    message: "must be at least 1".into(),
                }),
                other => Ok(other),
            }
        };
        let watch = flags.watch.clone().or(file.watch.clone()).ok_or_else(|| {
            ConfigError::Missing("nothing to watch: give --watch DIR (or `watch` in the config file)".into())
        })?;
        let bucket = flags.bucket.clone().or(file.bucket.clone()).ok_or_else(|| {
            ConfigError::Missing("no bucket: give --bucket NAME (or `bucket` in the config file)".into())
        })?;
        let log_format = match flags.log_format {
            Some(f) => f,
            None => file_value(&path, "log_format", file.log_format.as_deref(), |v| match v {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(format!("{v:?} is not a log format: use \"text\" or \"json\"")),
            })?
            .unwrap_or(LogFormat::Text),
        };
        let metrics_listen = match flags.metrics_listen {
            Some(a) => Some(a),
            None => file_value(&path, "metrics_listen", file.metrics_listen.as_deref(), |v| {
                v.parse::<SocketAddr>().map_err(|e| format!("{v:?} is not an address like 127.0.0.1:9464: {e}"))
            })?,
        };
        let mut exclude = file.exclude.clone().unwrap_or_default();
        exclude.extend(flags.exclude.iter().cloned());
        Ok(AgentSettings {
            watch,
            bucket,
            prefix: normalize_prefix(flags.prefix.as_deref().or(file.prefix.as_deref()).unwrap_or_default()),
            remote,
            state_db: flags.state_db.clone().or(file.state_db.clone()),
            delete: flags.delete || file.delete.unwrap_or(false),
            allow_mass_delete: flags.allow_mass_delete || file.allow_mass_delete.unwrap_or(false),
            exclude,
            default_excludes: !flags.no_default_excludes && file.default_excludes.unwrap_or(true),
            settle: dur("settle", flags.settle, &file.settle, Duration::from_secs(2))?,
            jobs: positive("jobs", flags.jobs.or(file.jobs))?.unwrap_or(4),
            part_size: size("part_size", flags.part_size, &file.part_size)?.unwrap_or(crate::engine::DEFAULT_PART_SIZE),
            threads: positive("threads", flags.threads.or(file.threads))?.unwrap_or(4),
            bwlimit: size("bwlimit", flags.bwlimit, &file.bwlimit)?.filter(|b| *b > 0),
            follow_symlinks: flags.follow_symlinks || file.follow_symlinks.unwrap_or(false),
            orphan_age: dur("orphan_age", flags.orphan_age, &file.orphan_age, Duration::from_secs(24 * 3600))?,
            shutdown_timeout: dur(
                "shutdown_timeout",
                flags.shutdown_timeout,
                &file.shutdown_timeout,
                Duration::from_secs(10),
            )?,
            rescan_interval: dur(
                "rescan_interval",
                flags.rescan_interval,
                &file.rescan_interval,
                Duration::from_secs(3600),
            )?,
            remote_check_interval: dur(
                "remote_check_interval",
                flags.remote_check_interval,
                &file.remote_check_interval,
                Duration::from_secs(24 * 3600),
            )?,
            once: flags.once,
            dry_run: flags.dry_run,
            log_format,
            metrics_listen,
            config_file: path,
            object,
        })
    }
}

/// `$XDG_STATE_HOME/ossmirror`, else `~/.local/state/ossmirror`, else `/var/lib/ossmirror` (root, no HOME).
pub fn state_dir(env: &dyn Env) -> PathBuf {
    if let Some(dir) = env.var("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("ossmirror");
    }
    if let Some(home) = env.var("HOME") {
        return PathBuf::from(home).join(".local/state/ossmirror");
    }
    PathBuf::from("/var/lib/ossmirror")
}

/// `--prefix` names a folder: `host1`, `host1/` and `/host1/` all mean the keys under `host1/`. (Taken
/// literally, `host1` would also cover `host10/…`, another machine's objects, in deletions and sweeps.)
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_start_matches('/');
    if trimmed.is_empty() || trimmed.ends_with('/') { trimmed.to_string() } else { format!("{trimmed}/") }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefix_is_a_folder() {
        for (given, used) in [("", ""), ("/", ""), ("host1", "host1/"), ("host1/", "host1/"), ("/a/b", "a/b/")] {
            assert_eq!(super::normalize_prefix(given), used, "{given:?}");
        }
    }

    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn args(extra: &[&str]) -> AgentArgs {
        let mut argv = vec!["ossmirror"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().agent
    }

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(text, Path::new("/etc/ossmirror/config.toml")).unwrap()
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let f = file(
            r#"watch = "/from-file"
               bucket = "file-bucket"
               endpoint = "http://file:1"
               region = "file-region"
               access_key_id = "FILEID"
               access_key_secret = "FILESECRET"
               settle = "5s"
               jobs = 7"#,
        );
        let env =
            [("OSS_ENDPOINT", "http://env:2"), ("OSS_ACCESS_KEY_ID", "ENVID"), ("OSS_ACCESS_KEY_SECRET", "ENVSECRET")];
        let s =
            AgentSettings::resolve_with(&args(&["--bucket", "flag-bucket", "--settle", "1s"]), &f, None, &env).unwrap();
        assert_eq!(s.watch, PathBuf::from("/from-file"));
        assert_eq!(s.bucket, "flag-bucket");
        assert_eq!(s.remote.endpoint.as_deref(), Some("http://env:2"));
        assert_eq!(s.remote.region.as_deref(), Some("file-region"));
        let creds = s.remote.credentials.unwrap();
        assert_eq!(creds.access_key_id, "ENVID");
        assert_eq!(creds.access_key_secret.expose(), "ENVSECRET");
        assert_eq!(s.settle, Duration::from_secs(1));
        assert_eq!(s.jobs, 7);
        assert_eq!(s.threads, 4);
        assert_eq!(s.part_size, 8 << 20);
        assert_eq!(s.orphan_age, Duration::from_secs(86400));
        assert!(!s.remote.secret_from_flag);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = FileConfig::parse("watch = \"/d\"\nsetle = \"2s\"", Path::new("/c.toml")).unwrap_err().to_string();
        assert!(e.contains("setle") && e.contains("/c.toml"), "{e}");
        for (text, key) in [
            ("settle = \"2x\"", "settle"),
            ("part_size = \"huge\"", "part_size"),
            ("signature = \"v9\"", "signature"),
            ("jobs = 0", "jobs"),
            ("metrics_listen = \"nope\"", "metrics_listen"),
        ] {
            let f = file(&format!("watch = \"/d\"\nbucket = \"b\"\n{text}"));
            let e = AgentSettings::resolve_with(&args(&[]), &f, Some(PathBuf::from("/c.toml")), &[("X", "")])
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
    }

    #[test]
    fn missing_pieces_are_explained() {
        let e = AgentSettings::resolve_with(&args(&["--bucket", "b"]), &FileConfig::default(), None, &[("X", "")])
            .unwrap_err();
        assert!(e.to_string().contains("--watch"), "{e}");
        let e = AgentSettings::resolve_with(
            &args(&["--watch", "/d", "--bucket", "b"]),
            &FileConfig::default(),
            None,
            &[("OSS_ACCESS_KEY_ID", "x")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("OSS_ACCESS_KEY_SECRET"), "{e}");
    }

    #[test]
    fn s3_reads_aws_variables_and_flag_secrets_are_noted() {
        let env = [
            ("AWS_ACCESS_KEY_ID", "A"),
            ("AWS_SECRET_ACCESS_KEY", "S"),
            ("AWS_REGION", "us-east-1"),
            ("OSS_ACCESS_KEY_ID", "no"),
        ];
        let s = AgentSettings::resolve_with(
            &args(&["--watch", "/d", "--bucket", "b", "--protocol", "s3"]),
            &FileConfig::default(),
            None,
            &env,
        )
        .unwrap();
        assert_eq!(s.remote.protocol, Dialect::S3);
        assert_eq!(s.remote.credentials.unwrap().access_key_id, "A");
        assert_eq!(s.remote.region.as_deref(), Some("us-east-1"));
        assert_eq!(s.remote.s3_integrity, crate::remote::s3::IntegrityMode::Auto);
        let env =
            [("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "S"), ("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")];
        let s = AgentSettings::resolve_with(
            &args(&["--watch", "/d", "--bucket", "b", "--protocol", "s3", "--s3-integrity", "md5"]),
            &FileConfig::default(),
            None,
            &env,
        )
        .unwrap();
        assert_eq!(s.remote.s3_integrity, crate::remote::s3::IntegrityMode::ContentMd5);
        let remote = s.remote.connect().unwrap().expect("an endpoint is configured");
        assert_eq!(remote.dialect(), Dialect::S3);
        assert_eq!(remote.endpoint_display(), "http://127.0.0.1:8333");
        let f = file("s3_integrity = \"sha1\"\nwatch = \"/d\"\nbucket = \"b\"");
        let e = AgentSettings::resolve_with(&args(&[]), &f, Some(PathBuf::from("/c.toml")), &[("X", "")]).unwrap_err();
        assert!(e.to_string().contains("`s3_integrity`"), "{e}");
        let s = AgentSettings::resolve_with(
            &args(&["--watch", "/d", "--bucket", "b", "--access-key-id", "I", "--access-key-secret", "S"]),
            &FileConfig::default(),
            None,
            &[("X", "")],
        )
        .unwrap();
        assert!(s.remote.secret_from_flag);
        assert!(!format!("{:?}", s.remote).contains("\"S\""), "secrets are redacted in Debug");
    }

    #[test]
    fn packaged_example_config_is_valid() {
        let f = file(include_str!("../packaging/config.toml"));
        let s = AgentSettings::resolve_with(&args(&[]), &f, None, &[("X", "")]).unwrap();
        assert_eq!(s.bucket, "my-backups");
        assert_eq!(s.remote.region.as_deref(), Some("cn-hangzhou"));
    }

    #[test]
    fn state_dir_follows_xdg() {
        assert_eq!(state_dir(&[("XDG_STATE_HOME", "/x")]), PathBuf::from("/x/ossmirror"));
        assert_eq!(state_dir(&[("HOME", "/home/u")]), PathBuf::from("/home/u/.local/state/ossmirror"));
        assert_eq!(state_dir(&[("X", "")]), PathBuf::from("/var/lib/ossmirror"));
    }
}
