//! The way back: downloads and restores.
//!
//! - [`download`]: one object to one local file — parallel ranged GETs pinned to the ETag, a temporary file
//!   beside the target, a resumable [`checkpoint`], the whole-file CRC-64 checked before the rename, the
//!   file's mtime and mode put back from the object's metadata ([`meta`]).
//! - [`tree`]: a whole prefix into a directory, never writing outside it ([`keys`] decides which keys may
//!   become paths).

pub mod checkpoint;
pub mod download;
pub mod keys;
pub mod meta;
pub mod tree;

pub use checkpoint::Checkpoint;
pub use download::{DownloadConfig, DownloadError, Downloader, Outcome, Progress, Target, Verified};
pub use tree::{Event, RestoreOptions, Restorer, Summary};
