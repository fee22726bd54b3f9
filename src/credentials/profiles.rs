//! The two profile files of Alibaba Cloud's tools, read into a [`Spec`] (what to build, no I/O here).
//!
//! **The aliyun CLI's `~/.aliyun/config.json`** (credentials-go `providers/cli_profile.go`):
//! `{"current": "default", "profiles": [{"name": "default", "mode": "AK", "access_key_id": …}]}`. Modes:
//! `AK` (`access_key_id`, `access_key_secret`), `StsToken` (plus `sts_token`), `RamRoleArn` (an AK plus
//! `ram_role_arn`, `ram_session_name`, `expired_seconds`, `sts_region`, `enable_vpc`, `policy`,
//! `external_id`), `EcsRamRole` (`ram_role_name`, empty to discover), `OIDC` (`oidc_provider_arn`,
//! `oidc_token_file`, `ram_role_arn`, …) and `ChainableRamRoleArn` (`source_profile`, whose credentials
//! assume the role). CloudSSO, OAuth and External need interactive logins or programs: refused with a
//! message, never skipped.
//!
//! **The shared credentials file `~/.alibabacloud/credentials`** (credentials-go `providers/profile.go`
//! and the older `profile_provider.go`; alibabacloud_credentials `provider/profile.py`), INI:
//! ```ini
//! [default]
//! type = access_key              # access_key_id, access_key_secret
//! [sts]
//! type = sts                     # plus security_token
//! [role]
//! type = ram_role_arn            # access_key_id, access_key_secret, role_arn, role_session_name, policy
//! [ecs]
//! type = ecs_ram_role            # role_name (optional)
//! [oidc]
//! type = oidc_role_arn           # role_arn, oidc_provider_arn, oidc_token_file_path, role_session_name
//! ```

use std::path::Path;

use serde::Deserialize;

use super::{Credentials, CredentialsError};

/// What a profile asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// Fixed keys (with an STS token for StsToken / sts).
    Keys(Credentials),
    /// `AssumeRole` with the credentials of `caller`.
    RamRoleArn { caller: Box<Spec>, role: RoleSpec },
    /// The ECS instance's role (`None`: the one attached).
    EcsRamRole { role_name: Option<String> },
    /// `AssumeRoleWithOIDC`.
    Oidc { role: RoleSpec, provider_arn: String, token_file: String },
}

/// The role half of RamRoleArn and OIDC profiles.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoleSpec {
    pub role_arn: String,
    pub session_name: Option<String>,
    pub duration_secs: Option<u32>,
    pub policy: Option<String>,
    pub external_id: Option<String>,
    pub sts_region: Option<String>,
    pub enable_vpc: bool,
}

/// A profile looked up in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found {
        name: String,
        kind: String,
        spec: Box<Spec>,
    },
    /// The file has no such profile (the chain moves on: `ALIBABA_CLOUD_PROFILE` names profiles of both
    /// files, so a profile may well be in the other one).
    Missing(String),
}

// -- ~/.aliyun/config.json -----------------------------------------------------------------------------------

#[derive(Deserialize)]
struct CliConfig {
    #[serde(default)]
    current: String,
    #[serde(default)]
    profiles: Vec<CliProfile>,
}

/// The fields we read; the CLI writes many more (region, output format, language…).
#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct CliProfile {
    name: String,
    mode: String,
    access_key_id: String,
    access_key_secret: String,
    sts_token: String,
    ram_role_arn: String,
    ram_session_name: String,
    expired_seconds: u32,
    sts_region: String,
    enable_vpc: bool,
    source_profile: String,
    ram_role_name: String,
    oidc_token_file: String,
    oidc_provider_arn: String,
    policy: String,
    external_id: String,
}

/// The profile `wanted` (`ALIBABA_CLOUD_PROFILE`), else the file's `current`.
pub fn cli_profile(text: &str, path: &Path, wanted: Option<&str>) -> Result<Lookup, CredentialsError> {
    let file = path.display();
    let config: CliConfig = serde_json::from_str(text).map_err(|e| {
        CredentialsError::invalid(format!(
            "the aliyun CLI config {file} is not valid JSON ({e}): fix it (`aliyun configure`), or set \
             ALIBABA_CLOUD_CLI_PROFILE_DISABLED=true to skip it"
        ))
    })?;
    let name = match wanted {
        Some(n) => n.to_string(),
        None if !config.current.is_empty() => config.current.clone(),
        None => return Ok(Lookup::Missing(format!("{file} names no current profile"))),
    };
    let Some(profile) = config.profiles.iter().find(|p| p.name == name) else {
        return Ok(Lookup::Missing(format!("{file} has no profile {name:?}")));
    };
    let spec = cli_spec(&config, profile, 0).map_err(|problem| {
        CredentialsError::invalid(format!(
            "aliyun CLI profile {name:?} in {file}: {problem} (or set ALIBABA_CLOUD_CLI_PROFILE_DISABLED=true to \
             skip the CLI's profiles)"
        ))
    })?;
    Ok(Lookup::Found { name, kind: format!("mode {}", profile.mode), spec: Box::new(spec) })
}

/// How deep ChainableRamRoleArn may nest (a loop would never end).
const MAX_CHAIN: usize = 5;

fn cli_spec(config: &CliConfig, p: &CliProfile, depth: usize) -> Result<Spec, String> {
    let role = || -> Result<RoleSpec, String> {
        Ok(RoleSpec {
            role_arn: required("ram_role_arn", &p.ram_role_arn)?,
            session_name: optional(&p.ram_session_name),
            duration_secs: Some(p.expired_seconds).filter(|d| *d > 0),
            policy: optional(&p.policy),
            external_id: optional(&p.external_id),
            sts_region: optional(&p.sts_region),
            enable_vpc: p.enable_vpc,
        })
    };
    let keys = |token: Option<&str>| -> Result<Credentials, String> {
        let c = Credentials::new(
            required("access_key_id", &p.access_key_id)?,
            required("access_key_secret", &p.access_key_secret)?,
        );
        Ok(match token {
            Some(t) => c.with_session_token(required("sts_token", t)?),
            None => c,
        })
    };
    Ok(match p.mode.as_str() {
        "AK" => Spec::Keys(keys(None)?),
        "StsToken" => Spec::Keys(keys(Some(&p.sts_token))?),
        "RamRoleArn" => Spec::RamRoleArn { caller: Box::new(Spec::Keys(keys(None)?)), role: role()? },
        "EcsRamRole" => Spec::EcsRamRole { role_name: optional(&p.ram_role_name) },
        "OIDC" => Spec::Oidc {
            role: role()?,
            provider_arn: required("oidc_provider_arn", &p.oidc_provider_arn)?,
            token_file: required("oidc_token_file", &p.oidc_token_file)?,
        },
        "ChainableRamRoleArn" => {
            if depth >= MAX_CHAIN {
                return Err(format!("source_profile chains more than {MAX_CHAIN} deep (a loop?)"));
            }
            let source_name = required("source_profile", &p.source_profile)?;
            let source = config
                .profiles
                .iter()
                .find(|s| s.name == source_name)
                .ok_or_else(|| format!("its source_profile {source_name:?} does not exist"))?;
            let caller =
                cli_spec(config, source, depth + 1).map_err(|e| format!("source_profile {source_name:?}: {e}"))?;
            Spec::RamRoleArn { caller: Box::new(caller), role: role()? }
        }
        "CloudSSO" | "OAuth" | "External" | "CredentialsURI" | "RsaKeyPair" => {
            return Err(format!(
                "mode {} is not supported by ossmirror: use an AK, StsToken, RamRoleArn, EcsRamRole, OIDC or \
                 ChainableRamRoleArn profile",
                p.mode
            ));
        }
        "" => return Err("the profile has no mode".to_string()),
        other => return Err(format!("unknown mode {other:?}")),
    })
}

fn required(key: &str, value: &str) -> Result<String, String> {
    if value.trim().is_empty() { Err(format!("{key} is empty")) } else { Ok(value.trim().to_string()) }
}

fn optional(value: &str) -> Option<String> {
    Some(value.trim().to_string()).filter(|v| !v.is_empty())
}

// -- ~/.alibabacloud/credentials -----------------------------------------------------------------------------

/// The section `name` of an INI credentials file.
pub fn ini_profile(text: &str, path: &Path, name: &str) -> Result<Lookup, CredentialsError> {
    let file = path.display();
    let sections = parse_ini(text).map_err(|e| CredentialsError::invalid(format!("credentials file {file}: {e}")))?;
    let Some((_, section)) = sections.iter().find(|(n, _)| n == name) else {
        return Ok(Lookup::Missing(format!("{file} has no [{name}] section")));
    };
    let get = |key: &str| section.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or("");
    let problem = |p: String| CredentialsError::invalid(format!("credentials file {file}, section [{name}]: {p}"));
    let kind = get("type").to_string();
    let keys = |token: Option<&str>| -> Result<Credentials, String> {
        let c = Credentials::new(
            required("access_key_id", get("access_key_id"))?,
            required("access_key_secret", get("access_key_secret"))?,
        );
        Ok(match token {
            Some(key) => c.with_session_token(required(key, get(key))?),
            None => c,
        })
    };
    let role = || -> Result<RoleSpec, String> {
        let duration = match optional(get("role_session_expiration")) {
            Some(d) => Some(
                d.parse::<u32>().map_err(|_| format!("role_session_expiration {d:?} is not a number of seconds"))?,
            ),
            None => None,
        };
        Ok(RoleSpec {
            role_arn: required("role_arn", get("role_arn"))?,
            session_name: optional(get("role_session_name")),
            duration_secs: duration,
            policy: optional(get("policy")),
            external_id: optional(get("external_id")),
            sts_region: optional(get("sts_region")),
            enable_vpc: get("enable_vpc").eq_ignore_ascii_case("true"),
        })
    };
    let spec = match kind.as_str() {
        "access_key" => Spec::Keys(keys(None).map_err(problem)?),
        "sts" => Spec::Keys(keys(Some("security_token")).map_err(problem)?),
        "ram_role_arn" => Spec::RamRoleArn {
            caller: Box::new(Spec::Keys(keys(None).map_err(problem)?)),
            role: role().map_err(problem)?,
        },
        "ecs_ram_role" => Spec::EcsRamRole { role_name: optional(get("role_name")) },
        "oidc_role_arn" => Spec::Oidc {
            role: role().map_err(problem)?,
            provider_arn: required("oidc_provider_arn", get("oidc_provider_arn")).map_err(problem)?,
            token_file: required("oidc_token_file_path", get("oidc_token_file_path")).map_err(problem)?,
        },
        "" => return Err(problem("no `type` (access_key, sts, ram_role_arn, ecs_ram_role or oidc_role_arn)".into())),
        other => {
            return Err(problem(format!(
                "type {other:?} is not supported: use access_key, sts, ram_role_arn, ecs_ram_role or oidc_role_arn"
            )));
        }
    };
    Ok(Lookup::Found { name: name.to_string(), kind: format!("type {kind}"), spec: Box::new(spec) })
}

type Section = (String, Vec<(String, String)>);

/// INI as the SDKs' parsers read it: `[section]`, `key = value`, `#`/`;` comment lines, a comment after a
/// value when preceded by whitespace, optional quotes around a value. Keys before any section go to
/// `DEFAULT` (go-ini's convention).
fn parse_ini(text: &str) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: a section header must look like [name]", number + 1))?;
            sections.push((name.trim().to_string(), Vec::new()));
            continue;
        }
        let (key, value) =
            line.split_once('=').ok_or_else(|| format!("line {}: expected `key = value` or [section]", number + 1))?;
        let mut value = value.trim();
        for marker in [" #", "\t#", " ;", "\t;"] {
            if let Some(at) = value.find(marker) {
                value = value[..at].trim_end();
            }
        }
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        if sections.is_empty() {
            sections.push(("DEFAULT".to_string(), Vec::new()));
        }
        if let Some((_, entries)) = sections.last_mut() {
            entries.push((key.trim().to_string(), value.to_string()));
        }
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("/home/u/.aliyun/config.json")
    }

    fn found(lookup: Lookup) -> (String, Spec) {
        match lookup {
            Lookup::Found { name, spec, .. } => (name, *spec),
            Lookup::Missing(why) => panic!("missing: {why}"),
        }
    }

    /// The shape `aliyun configure` writes (credentials-go `providers/fixtures/.aliyun/config.json`).
    const CLI: &str = r#"{
        "current": "default",
        "profiles": [
            {"name": "default", "mode": "AK", "access_key_id": "akid", "access_key_secret": "secret",
             "region_id": "cn-hangzhou", "output_format": "json", "language": "en"},
            {"name": "sts", "mode": "StsToken", "access_key_id": "STS.id", "access_key_secret": "s",
             "sts_token": "CAIS"},
            {"name": "role", "mode": "RamRoleArn", "access_key_id": "akid", "access_key_secret": "secret",
             "ram_role_arn": "acs:ram::1:role/r", "ram_session_name": "sess", "expired_seconds": 1800,
             "sts_region": "cn-shanghai", "enable_vpc": true},
            {"name": "ecs", "mode": "EcsRamRole", "ram_role_name": "my-role"},
            {"name": "chain", "mode": "ChainableRamRoleArn", "source_profile": "ecs",
             "ram_role_arn": "acs:ram::1:role/other"},
            {"name": "loop", "mode": "ChainableRamRoleArn", "source_profile": "loop", "ram_role_arn": "a"},
            {"name": "sso", "mode": "CloudSSO"},
            {"name": "broken", "mode": "AK", "access_key_id": "akid"}
        ]
    }"#;

    #[test]
    fn cli_profiles_by_mode() {
        let (name, spec) = found(cli_profile(CLI, path(), None).unwrap());
        assert_eq!(name, "default", "the current profile");
        assert_eq!(spec, Spec::Keys(Credentials::new("akid", "secret")));
        let (_, spec) = found(cli_profile(CLI, path(), Some("sts")).unwrap());
        assert_eq!(spec, Spec::Keys(Credentials::new("STS.id", "s").with_session_token("CAIS")));
        let (_, spec) = found(cli_profile(CLI, path(), Some("role")).unwrap());
        let Spec::RamRoleArn { caller, role } = spec else { panic!("{spec:?}") };
        assert_eq!(*caller, Spec::Keys(Credentials::new("akid", "secret")));
        assert_eq!(role.role_arn, "acs:ram::1:role/r");
        assert_eq!(role.session_name.as_deref(), Some("sess"));
        assert_eq!(role.duration_secs, Some(1800));
        assert_eq!(role.sts_region.as_deref(), Some("cn-shanghai"));
        assert!(role.enable_vpc);
        let (_, spec) = found(cli_profile(CLI, path(), Some("chain")).unwrap());
        let Spec::RamRoleArn { caller, .. } = spec else { panic!("{spec:?}") };
        assert_eq!(*caller, Spec::EcsRamRole { role_name: Some("my-role".into()) });
    }

    #[test]
    fn cli_problems_are_named_and_absent_profiles_skipped() {
        assert!(
            matches!(cli_profile(CLI, path(), Some("nope")).unwrap(), Lookup::Missing(m) if m.contains("\"nope\""))
        );
        for (profile, needle) in
            [("loop", "a loop"), ("sso", "CloudSSO is not supported"), ("broken", "access_key_secret is empty")]
        {
            let e = cli_profile(CLI, path(), Some(profile)).unwrap_err();
            assert_eq!(e.kind, super::super::FailureKind::Invalid);
            assert!(e.message.contains(needle) && e.message.contains("config.json"), "{profile}: {e}");
            assert!(!e.message.contains("secret\""), "{e}");
        }
        let e = cli_profile("{not json", path(), None).unwrap_err();
        assert!(
            e.message.contains("not valid JSON") && e.message.contains("ALIBABA_CLOUD_CLI_PROFILE_DISABLED"),
            "{e}"
        );
        assert!(matches!(cli_profile(r#"{"profiles": []}"#, path(), None).unwrap(), Lookup::Missing(_)));
    }

    const INI: &str = "\
# shared credentials
[default]
type = access_key
access_key_id = akid
access_key_secret = \"quoted#secret\"   # a comment

[sts]
type = sts
access_key_id = STS.id
access_key_secret = s
security_token = CAIS

; role
[role]
type = ram_role_arn
access_key_id = akid
access_key_secret = secret
role_arn = acs:ram::1:role/r
role_session_name = sess
role_session_expiration = 1200

[ecs]
type = ecs_ram_role

[oidc]
type = oidc_role_arn
role_arn = acs:ram::1:role/r
oidc_provider_arn = acs:ram::1:oidc-provider/ack
oidc_token_file_path = /var/run/token

[rsa]
type = rsa_key_pair
";

    #[test]
    fn ini_profiles_by_type() {
        let p = Path::new("/home/u/.alibabacloud/credentials");
        let (_, spec) = found(ini_profile(INI, p, "default").unwrap());
        assert_eq!(spec, Spec::Keys(Credentials::new("akid", "quoted#secret")));
        let (_, spec) = found(ini_profile(INI, p, "sts").unwrap());
        assert_eq!(spec, Spec::Keys(Credentials::new("STS.id", "s").with_session_token("CAIS")));
        let (_, spec) = found(ini_profile(INI, p, "role").unwrap());
        let Spec::RamRoleArn { role, .. } = spec else { panic!("{spec:?}") };
        assert_eq!((role.session_name.as_deref(), role.duration_secs), (Some("sess"), Some(1200)));
        assert_eq!(found(ini_profile(INI, p, "ecs").unwrap()).1, Spec::EcsRamRole { role_name: None });
        let (_, spec) = found(ini_profile(INI, p, "oidc").unwrap());
        assert!(matches!(spec, Spec::Oidc { ref token_file, .. } if token_file == "/var/run/token"), "{spec:?}");
        assert!(matches!(ini_profile(INI, p, "absent").unwrap(), Lookup::Missing(_)));
        let e = ini_profile(INI, p, "rsa").unwrap_err();
        assert!(e.message.contains("rsa_key_pair") && e.message.contains("[rsa]"), "{e}");
        let e = ini_profile("[default]\ntype = access_key\naccess_key_id = a\n", p, "default").unwrap_err();
        assert!(e.message.contains("access_key_secret is empty"), "{e}");
        let e = ini_profile("[default\n", p, "default").unwrap_err();
        assert!(e.message.contains("line 1"), "{e}");
        assert!(matches!(ini_profile("", p, "default").unwrap(), Lookup::Missing(_)), "an empty file has no profile");
    }
}
