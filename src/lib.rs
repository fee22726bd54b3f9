//! ossmirror: mirror a local folder into Alibaba Cloud OSS (or any S3-compatible store), resumably and
//! verifiably.
//!
//! Data flow (see DESIGN.md): `watch` finds files that changed and waits until they are stable, `agent`
//! schedules them, `engine` uploads one file resumably with every part checkpointed in `state`, and `remote`
//! speaks the object-store protocol. `server` is a local OSS-compatible store used by the tests and as the
//! embedded default when no endpoint is configured.

pub mod agent;
pub mod beneath;
pub mod checksum;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod engine;
pub mod filemeta;
pub mod remote;
pub mod restore;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod timefmt;
pub mod units;
pub mod watch;
