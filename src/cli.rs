//! Command-line definitions: plain data, parsed by clap, turned into runtime configuration elsewhere.
//!
//! Flags that also come from the environment or the config file are `Option`s here and carry no defaults:
//! `config.rs` applies the precedence flags > environment > config file > built-in defaults, which clap's own
//! `env` support cannot express (it would put the environment above the file but cannot see the file).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::remote::Dialect;
use crate::remote::oss::sign::SignatureVersion;
use crate::units::{ByteSize, HumanDuration};

#[derive(Debug, Parser)]
#[command(
    name = "ossmirror",
    version,
    about = "Mirror a local folder into Alibaba Cloud OSS (or an S3-compatible store), resumably and verifiably",
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    // Only the agent has an embedded store to fall back on.
    mut_arg("endpoint", |a| a.help(AGENT_ENDPOINT_HELP))
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub agent: AgentArgs,
}

const AGENT_ENDPOINT_HELP: &str = "Endpoint URL, e.g. https://oss-cn-hangzhou.aliyuncs.com [env: OSS_ENDPOINT]. \
     Without one, the agent runs an embedded local server and objects stay on this machine";
const VERIFY_ENDPOINT_HELP: &str = "Endpoint URL, e.g. https://oss-cn-hangzhou.aliyuncs.com [env: OSS_ENDPOINT]. \
     Without one, verify checks the agent's embedded local store (next to its state database)";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload one file resumably (the SDKs' resumable upload as a command).
    Cp(Box<CpArgs>),
    /// Run the local OSS-compatible server.
    Serve(ServeArgs),
    /// Show what the agent is doing (works while it runs).
    Status(StatusArgs),
    /// Compare the remote with the local tree by size and CRC-64.
    Verify(VerifyArgs),
    /// Check the setup: where the credentials come from, the endpoint, the clock, the bucket, inotify.
    Doctor(DoctorArgs),
    /// Restore a prefix of a bucket into a directory (verified, resumable, never writing outside it).
    Restore(RestoreArgs),
    /// List objects: size, mtime, storage class, key.
    Ls(LsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to standard output.
    Completions(CompletionsArgs),
    /// Print the man page (roff) to standard output (packaging runs it to install ossmirror(1)).
    #[command(hide = true)]
    Man,
}

/// `ossmirror completions SHELL`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell, e.g. bash: `ossmirror completions bash > /etc/bash_completion.d/ossmirror`.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SignatureArg {
    V1,
    V4,
}

impl From<SignatureArg> for SignatureVersion {
    fn from(v: SignatureArg) -> Self {
        match v {
            SignatureArg::V1 => SignatureVersion::V1,
            SignatureArg::V4 => SignatureVersion::V4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Oss,
    S3,
}

impl From<ProtocolArg> for Dialect {
    fn from(v: ProtocolArg) -> Self {
        match v {
            ProtocolArg::Oss => Dialect::Oss,
            ProtocolArg::S3 => Dialect::S3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where to send requests and how to sign them (shared by the agent, `cp` and `verify`).
#[derive(Debug, Clone, Default, Args)]
pub struct RemoteArgs {
    /// Endpoint URL, e.g. https://oss-cn-hangzhou.aliyuncs.com [env: OSS_ENDPOINT].
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,

    /// Region id for V4 signing, e.g. cn-hangzhou [env: OSS_REGION, AWS_REGION]; guessed from the endpoint.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Signature version (OSS dialect) [default: v4].
    #[arg(long, value_enum, value_name = "v1|v4")]
    pub signature: Option<SignatureArg>,

    /// Wire protocol [default: oss].
    #[arg(long, value_enum, value_name = "oss|s3")]
    pub protocol: Option<ProtocolArg>,

    /// Access key id [env: OSS_ACCESS_KEY_ID or AWS_ACCESS_KEY_ID].
    #[arg(long, value_name = "ID")]
    pub access_key_id: Option<String>,

    /// Access key secret [env: OSS_ACCESS_KEY_SECRET or AWS_SECRET_ACCESS_KEY]. Prefer the environment:
    /// a flag is visible to other users in `ps`.
    #[arg(long, value_name = "SECRET", hide_env_values = true)]
    pub access_key_secret: Option<String>,

    /// Use path-style URLs (http://endpoint/bucket/key) even for a named endpoint.
    #[arg(long)]
    pub path_style: bool,

    /// How S3 uploads are verified: auto (probe the server once), crc64nvme, or md5 [default: auto].
    #[arg(long, value_name = "auto|crc64nvme|md5")]
    pub s3_integrity: Option<String>,

    /// Sign each S3 request body's SHA-256 instead of UNSIGNED-PAYLOAD (for servers that require it).
    #[arg(long)]
    pub s3_sign_payload: bool,

    /// Send unsigned requests (a public bucket) instead of looking for credentials.
    #[arg(long, conflicts_with_all = ["access_key_id", "access_key_secret"])]
    pub anonymous: bool,

    /// Which of a region's OSS endpoints to use: internal (oss-REGION-internal.aliyuncs.com, free traffic
    /// from ECS in the region) or accelerate (oss-accelerate.aliyuncs.com); derived from --endpoint (or
    /// --region) [default: the endpoint as given].
    #[arg(long, value_enum, value_name = "public|internal|accelerate")]
    pub endpoint_kind: Option<EndpointKindArg>,

    /// Server-side pacing of each upload and download request, in bytes per second (OSS
    /// x-oss-traffic-limit; 30K to 100M) [default: none].
    #[arg(long, value_name = "RATE")]
    pub traffic_limit: Option<ByteSize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointKindArg {
    Public,
    Internal,
    Accelerate,
}

/// What new objects carry beyond their bytes (shared by the agent and `cp`): encryption, tags and the
/// OSS upload callback.
#[derive(Debug, Clone, Default, Args)]
pub struct ObjectArgs {
    /// Server-side encryption of new objects: AES256, KMS or SM4 (S3: AES256 or KMS).
    #[arg(long, value_name = "AES256|KMS|SM4")]
    pub sse: Option<String>,

    /// The KMS key (CMK id) for --sse KMS [default: the service's key].
    #[arg(long, value_name = "ID", requires = "sse")]
    pub sse_kms_key_id: Option<String>,

    /// Object tag (repeatable, at most 10): --tag project=alpha.
    #[arg(long = "tag", value_name = "K=V")]
    pub tags: Vec<String>,

    /// Upload callback (OSS): once an object is stored, OSS POSTs to this URL (up to five, separated by
    /// ';') and returns its answer.
    #[arg(long, value_name = "URL")]
    pub callback_url: Option<String>,

    /// The callback's body template [default: bucket=${bucket}&object=${object}&etag=${etag}&size=${size}&mimeType=${mimeType}].
    #[arg(long, value_name = "TEMPLATE", requires = "callback_url")]
    pub callback_body: Option<String>,

    /// Send the callback body as application/json (the template must then be JSON).
    #[arg(long, requires = "callback_url")]
    pub callback_body_json: bool,

    /// The Host header of the callback request [default: the URL's host].
    #[arg(long, value_name = "HOST", requires = "callback_url")]
    pub callback_host: Option<String>,

    /// A custom callback variable (repeatable): --callback-var x:uid=42, used as ${x:uid} in the body.
    #[arg(long = "callback-var", value_name = "KEY=VALUE", requires = "callback_url")]
    pub callback_vars: Vec<String>,
}

/// The agent: `ossmirror --watch DIR --bucket B`.
#[derive(Debug, Clone, Default, Args)]
pub struct AgentArgs {
    /// Directory to mirror.
    #[arg(long, value_name = "DIR")]
    pub watch: Option<PathBuf>,

    /// Destination bucket.
    #[arg(long, value_name = "BUCKET")]
    pub bucket: Option<String>,

    /// Key prefix for every object, as a folder (`backups/host1` means `backups/host1/`).
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,

    #[command(flatten)]
    pub remote: RemoteArgs,

    #[command(flatten)]
    pub object: ObjectArgs,

    /// State database [default: $XDG_STATE_HOME/ossmirror/<watch+bucket+prefix>.db].
    #[arg(long, value_name = "PATH")]
    pub state_db: Option<PathBuf>,

    /// Delete remote objects whose local file was deleted (never after a failed scan).
    #[arg(long)]
    pub delete: bool,

    /// Apply deletions even when most synced files vanish at once (by default that is taken for a lost or
    /// unmounted disk and nothing is deleted).
    #[arg(long)]
    pub allow_mass_delete: bool,

    /// Skip paths matching this glob (repeatable), relative to the watched directory.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,

    /// How long a file must stay unchanged before it is uploaded [default: 2s].
    #[arg(long, value_name = "DURATION")]
    pub settle: Option<HumanDuration>,

    /// Files uploaded in parallel [default: 4].
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,

    /// Multipart part size [default: 8M].
    #[arg(long, value_name = "SIZE")]
    pub part_size: Option<ByteSize>,

    /// Parts in flight per file [default: 4].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Upload bandwidth limit in bytes per second, e.g. 10M [default: unlimited].
    #[arg(long, value_name = "RATE")]
    pub bwlimit: Option<ByteSize>,

    /// Follow symbolic links (with loop protection) instead of skipping them.
    #[arg(long)]
    pub follow_symlinks: bool,

    /// Do not apply the built-in ignore list of editor and download temporaries (*.swp, *.tmp, …).
    #[arg(long)]
    pub no_default_excludes: bool,

    /// Abort unknown multipart uploads under the prefix older than this [default: 24h].
    #[arg(long, value_name = "DURATION")]
    pub orphan_age: Option<HumanDuration>,

    /// On SIGTERM/SIGINT, how long in-flight parts may take to finish [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub shutdown_timeout: Option<HumanDuration>,

    /// Full rescan interval, the safety net behind file-system events [default: 1h].
    #[arg(long, value_name = "DURATION")]
    pub rescan_interval: Option<HumanDuration>,

    /// How often the bucket is listed and compared with the index, so objects deleted or changed behind
    /// the agent's back are uploaded again [default: 24h; 0 turns the periodic check off; it still runs at
    /// start].
    #[arg(long, value_name = "DURATION")]
    pub remote_check_interval: Option<HumanDuration>,

    /// Upload everything pending, wait until converged, then exit.
    #[arg(long)]
    pub once: bool,

    /// With --once: print what would be uploaded, copied, metadata-updated or deleted, and change nothing
    /// (the state database is only read; nothing is sent to the remote).
    #[arg(long)]
    pub dry_run: bool,

    /// Config file (TOML) [default: /etc/ossmirror/config.toml if present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// `ossmirror cp LOCAL oss://BUCKET/KEY` (upload) or `ossmirror cp oss://BUCKET/KEY LOCAL` (download).
#[derive(Debug, Clone, Args)]
pub struct CpArgs {
    /// Local file to upload, or oss://BUCKET/KEY to download (oss://BUCKET/PREFIX/ downloads a tree).
    pub source: PathBuf,

    /// Destination: oss://BUCKET/KEY for an upload (a trailing '/' appends the file name), or a local file
    /// (or directory) for a download.
    pub destination: String,

    /// Part size [default: 8M, raised so no file needs more than 10,000 parts].
    #[arg(long, value_name = "SIZE")]
    pub part_size: Option<ByteSize>,

    /// Parts in flight [default: 4].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Checkpoint database [default: $XDG_STATE_HOME/ossmirror/cp.db].
    #[arg(long, value_name = "PATH")]
    pub checkpoint_db: Option<PathBuf>,

    /// Keep no checkpoint: an interrupted upload is aborted and starts over next time.
    #[arg(long, conflicts_with = "checkpoint_db")]
    pub no_checkpoint: bool,

    /// Content-Type [default: guessed from the file extension].
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,

    /// User metadata (repeatable): --meta author=alice.
    #[arg(long = "meta", value_name = "K=V")]
    pub meta: Vec<String>,

    /// Object ACL: default, private, public-read, public-read-write.
    #[arg(long, value_name = "ACL")]
    pub acl: Option<String>,

    /// Storage class: Standard, IA, Archive, ColdArchive, DeepColdArchive.
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,

    #[command(flatten)]
    pub object: ObjectArgs,

    /// On Ctrl-C, abort the server-side upload and delete the checkpoint (default: keep both to resume).
    #[arg(long)]
    pub abort_on_cancel: bool,

    /// Do not draw a progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,

    #[command(flatten)]
    pub remote: RemoteArgs,

    /// Config file (TOML) for endpoint and credentials.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `ossmirror serve --root DIR`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Directory holding buckets and objects.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,

    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,

    /// Require requests signed with this access key id (with --access-key-secret).
    #[arg(long, value_name = "ID", requires = "access_key_secret")]
    pub access_key_id: Option<String>,

    /// The secret for --access-key-id.
    #[arg(long, value_name = "SECRET", env = "OSSMIRROR_SERVE_SECRET", hide_env_values = true)]
    pub access_key_secret: Option<String>,

    /// Fraction of requests answered with 500/503 (0.0-1.0).
    #[arg(long, value_name = "RATE", default_value_t = 0.0, help_heading = FAULT_HEADING)]
    pub fault_error_rate: f64,

    /// Reset the connection after this many request-body bytes, on a --fault-reset-rate
    /// fraction of uploads.
    #[arg(long, value_name = "SIZE", help_heading = FAULT_HEADING)]
    pub fault_reset_after: Option<ByteSize>,

    /// Fraction of body-carrying requests whose connection is reset.
    #[arg(long, value_name = "RATE", default_value_t = 0.0, help_heading = FAULT_HEADING)]
    pub fault_reset_rate: f64,

    /// Latency added to every response.
    #[arg(long, value_name = "DURATION", help_heading = FAULT_HEADING)]
    pub fault_latency: Option<HumanDuration>,

    /// Seed of the random faults, so runs repeat.
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = FAULT_HEADING)]
    pub fault_seed: u64,

    /// Expose the test-only control API under /_ossmirror/ (fault settings, clock skew, outages, stats,
    /// the lifecycle clock).
    #[arg(long, help_heading = FAULT_HEADING)]
    pub enable_control_api: bool,

    /// Require this STS session token on every signed request (x-oss-security-token or the presign
    /// parameter).
    #[arg(
        long,
        value_name = "TOKEN",
        requires = "access_key_id",
        env = "OSSMIRROR_SERVE_SESSION_TOKEN",
        hide_env_values = true
    )]
    pub session_token: Option<String>,

    /// Require V4 signatures scoped to this region (e.g. cn-hangzhou); also the buckets' reported location.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Treat Host `<bucket>.<DOMAIN>` as virtual-hosted (repeatable). Without it, any host name with a dot
    /// that is not an IP is virtual-hosted by its first label; IPs and `localhost` are path style.
    #[arg(long = "virtual-host-domain", value_name = "DOMAIN")]
    pub virtual_host_domains: Vec<String>,

    /// Create this bucket at start if it does not exist (repeatable).
    #[arg(long = "bucket", value_name = "NAME")]
    pub buckets: Vec<String>,

    /// Do not fsync data and index commits: faster, and still safe against a killed process, but not
    /// against a power loss. For throwaway test data only.
    #[arg(long)]
    pub no_fsync: bool,

    /// Write the bound address to this file once listening (for tests and scripts).
    #[arg(long, value_name = "FILE")]
    pub address_file: Option<PathBuf>,

    /// Let upload callbacks (x-oss-callback) reach any address; without it they go only to localhost and
    /// loopback IPs.
    #[arg(long)]
    pub allow_remote_callbacks: bool,

    /// How often bucket lifecycle rules are applied (0s: never, except through the control API).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub lifecycle_interval: HumanDuration,
}

/// Where `serve --help` lists the flags only tests need.
const FAULT_HEADING: &str = "Fault injection and test hooks";

/// `ossmirror status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// State database of the agent [default: derived from --watch/--bucket/--prefix as the agent does, or
    /// the only agent database in the state directory].
    #[arg(long, value_name = "PATH")]
    pub state_db: Option<PathBuf>,

    /// The agent's --watch (with --bucket, and --prefix if it has one): finds its state database.
    #[arg(long, value_name = "DIR", requires = "bucket")]
    pub watch: Option<PathBuf>,
    /// The agent's --bucket.
    #[arg(long, value_name = "BUCKET", requires = "watch")]
    pub bucket: Option<String>,
    /// The agent's --prefix.
    #[arg(long, value_name = "PREFIX", requires = "watch")]
    pub prefix: Option<String>,

    /// The agent's config file (the service's is /etc/ossmirror/config.toml): its `state_db`, or its
    /// `watch`, `bucket` and `prefix`, find the database.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print one JSON document (fields documented in `ossmirror status --help`'s source, src/cmd/status.rs).
    #[arg(long)]
    pub json: bool,
}

/// `ossmirror verify --watch DIR --bucket B`.
#[derive(Debug, Clone, Args)]
#[command(mut_arg("endpoint", |a| a.help(VERIFY_ENDPOINT_HELP)))]
pub struct VerifyArgs {
    /// Local directory to compare.
    #[arg(long, value_name = "DIR")]
    pub watch: PathBuf,
    /// Bucket holding the mirror.
    #[arg(long, value_name = "BUCKET")]
    pub bucket: String,
    /// Key prefix of the mirror.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// The agent's state database, to find its embedded store when no endpoint is given [default: derived
    /// from --watch/--bucket/--prefix as the agent does].
    #[arg(long, value_name = "PATH")]
    pub state_db: Option<PathBuf>,
    /// Skip paths matching this glob (repeatable), as the agent's --exclude.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Do not apply the built-in ignore list (as the agent's --no-default-excludes).
    #[arg(long)]
    pub no_default_excludes: bool,
    /// Follow symbolic links (as the agent's --follow-symlinks).
    #[arg(long)]
    pub follow_symlinks: bool,
    /// HEAD requests (and file reads) in flight [default: 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Config file (TOML) for endpoint, credentials and excludes.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON Lines: one object per finding, then a summary object.
    #[arg(long)]
    pub json: bool,
}

/// `ossmirror restore --bucket B [--prefix P] --to DIR`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// Bucket to restore from [default: `bucket` in the config file].
    #[arg(long, value_name = "BUCKET")]
    pub bucket: Option<String>,
    /// Key prefix to restore, as a folder [default: `prefix` in the config file].
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Directory to restore into (created if missing). Nothing is written outside it.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// The agent's --watch directory: with no endpoint, restore from the agent's embedded local store
    /// (found from --watch, --bucket and --prefix as the agent derives its state database).
    #[arg(long, value_name = "DIR")]
    pub watch: Option<PathBuf>,
    /// Files downloaded in parallel [default: 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,
    /// Range size of large objects [default: 8M].
    #[arg(long, value_name = "SIZE")]
    pub part_size: Option<ByteSize>,
    /// Ranges in flight per file [default: 4].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Replace local files that differ from their object (by default they are left alone and reported).
    #[arg(long)]
    pub overwrite: bool,
    /// Show what would be downloaded; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Take a local file of the same size and mtime (from the object's metadata) as identical, instead of
    /// comparing its CRC-64.
    #[arg(long)]
    pub fast: bool,
    /// Print JSON Lines: one object per key, then a summary object.
    #[arg(long)]
    pub json: bool,
    /// Checkpoint database for resuming interrupted downloads [default: $XDG_STATE_HOME/ossmirror/download.db].
    #[arg(long, value_name = "PATH")]
    pub checkpoint_db: Option<PathBuf>,
    /// Keep no checkpoint: an interrupted file starts over.
    #[arg(long, conflicts_with = "checkpoint_db")]
    pub no_checkpoint: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Config file (TOML) for bucket, prefix, endpoint and credentials.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `ossmirror ls oss://BUCKET/[PREFIX]`.
#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    /// oss://BUCKET/[PREFIX] (s3:// also accepted).
    pub location: String,
    /// Every object below the prefix; without it, one level ("PRE dir/" for the folders).
    #[arg(long, short = 'r')]
    pub recursive: bool,
    /// Print JSON Lines: one object per entry.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Config file (TOML) for endpoint and credentials.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `ossmirror doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// The bucket to list [default: `bucket` in the config file].
    #[arg(long, value_name = "BUCKET")]
    pub bucket: Option<String>,
    /// The key prefix to list [default: `prefix` in the config file].
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Config file (TOML) [default: /etc/ossmirror/config.toml if present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON document: {"checks": [{"check", "status": "ok"|"warn"|"fail", "detail"}]}.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn contract_parses() {
        let cli = Cli::try_parse_from([
            "ossmirror",
            "--watch",
            "/data",
            "--bucket",
            "x",
            "--prefix",
            "p/",
            "--endpoint",
            "http://127.0.0.1:9000",
            "--signature",
            "v1",
            "--protocol",
            "oss",
            "--delete",
            "--exclude",
            "*.tmp",
            "--exclude",
            "*.swp",
            "--settle",
            "2s",
            "--jobs",
            "4",
            "--part-size",
            "8M",
            "--threads",
            "4",
            "--bwlimit",
            "10M",
            "--follow-symlinks",
            "--orphan-age",
            "24h",
            "--shutdown-timeout",
            "10s",
            "--once",
            "--log-format",
            "json",
            "--metrics-listen",
            "127.0.0.1:9464",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.agent.exclude.len(), 2);
        assert_eq!(cli.agent.part_size.unwrap().bytes(), 8 << 20);

        let cli = Cli::try_parse_from([
            "ossmirror",
            "cp",
            "f.bin",
            "oss://b/k",
            "--part-size",
            "1M",
            "--threads",
            "8",
            "--meta",
            "a=b",
            "--acl",
            "private",
            "--storage-class",
            "IA",
            "--abort-on-cancel",
            "--signature",
            "v4",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Cp(_))));

        let cli = Cli::try_parse_from(["ossmirror", "serve", "--root", "/tmp/x", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Serve(_))));
        assert!(
            Cli::try_parse_from(["ossmirror", "cp", "a", "oss://b/k", "--no-checkpoint", "--checkpoint-db", "x"])
                .is_err()
        );
    }
}
