//! The file-system side of the agent: what changed under the watched directory, and when it is stable.
//!
//! Knows nothing of HTTP or SQLite. The agent consumes its output and owns the index.
//!
//! # Pieces
//! - [`key`]: paths relative to the root (raw bytes, never lossily converted) and their object keys, with a
//!   typed [`KeyError`] for names that cannot be keys.
//! - [`filter`]: `--exclude` globs, the [`DEFAULT_IGNORES`] list of editor/browser temporaries, and the
//!   agent's own files.
//! - [`root`]: the identity of the watched root, so a deleted or unmounted root is never taken for
//!   "everything was deleted".
//! - [`scan`]: streaming scans of the tree or a subtree (bounded memory), which say whether they are
//!   complete.
//! - [`settle`]: the gate that releases a path only when its snapshot has held still for `--settle`.
//! - [`watcher`]: the running [`Watch`]: notify (inotify, or polling past the inotify limit) → gate →
//!   [`WatchEvent`]s, plus root monitoring and the periodic-rescan timer.
//!
//! # Using it (the agent)
//! ```no_run
//! # async fn agent() -> Result<(), Box<dyn std::error::Error>> {
//! use ossmirror::watch::{ScanItem, Watch, WatchConfig, WatchEvent};
//! let (watch, mut events) = Watch::start(WatchConfig::new("/data")).await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         WatchEvent::Rescan { rel, .. } => {
//!             let mut scan = watch.scanner().stream(&rel);
//!             while let Some(item) = scan.next().await {
//!                 match item {
//!                     // Differs from the index? Act now if the kernel vouches it is settled (old files:
//!                     // keeps the gate small), else let it settle first.
//!                     ScanItem::File { rel, snapshot } => {
//!                         if watch.is_settled(&snapshot) { /* upload */ } else { watch.settle(rel) }
//!                     }
//!                     // Only a complete scan may turn "indexed under `rel` but not seen" into deletions.
//!                     ScanItem::Done(report) if report.complete => { /* reconcile deletions under rel */ }
//!                     _ => {}
//!                 }
//!             }
//!         }
//!         WatchEvent::Stable { rel, snapshot, renamed_from } => { /* upload (or copy from renamed_from) */ }
//!         WatchEvent::Removed { rel } => { /* delete rel and rel/… if --delete */ }
//!         _ => {}
//!     }
//! }
//! watch.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Event semantics
//! Paths are relative to the root; "" is the root itself. Events are in a meaningful order, but several
//! may concern one path over time (the latest wins).
//! - `Rescan { rel, reason }` — scan `rel` (a file or a directory; "" = everything) and reconcile the
//!   index entries at and under `rel` with it. The first event is always `Rescan("", Initial)`; then on
//!   the `--rescan-interval` timer, after event loss (queue overflow), after a directory appeared, after the
//!   root came back, and when asked. Scanned files that differ from the index are acted on at once if
//!   [`Watch::is_settled`] says so, and go through [`Watch::settle`] otherwise; an incomplete scan must
//!   not cause deletions. Rescans may repeat or nest; a rescan
//!   of a directory covers those of its descendants.
//! - `Stable { rel, snapshot, renamed_from }` — a regular file whose snapshot held still for the settle
//!   window (and is not racy). Upload it; the engine checks the snapshot again around the upload. With
//!   `renamed_from: Some(from)`, the kernel reported a rename `from → rel`: if the index's record of
//!   `from` matches `snapshot` on (dev, inode, size, mtime) — a rename changes ctime — a server-side copy
//!   can replace the upload. A `Removed { from }` follows later if `from` is still gone.
//! - `Removed { rel }` — verified over the settle window that nothing uploadable is at `rel` (deleted,
//!   moved out, replaced by a FIFO or a symlink). Applies to `rel` *and everything under `rel/`*: a deleted
//!   directory arrives as one `Removed` of the directory, not one per file. Never sent because the root
//!   was lost, or because watching failed.
//! - `DirRenamed { from, to }` — a directory was renamed inside the tree; followed by `Rescan { to }`
//!   and, later, `Removed { from }`. The agent may copy the objects under `from/` to `to/` server-side for
//!   files the rescan then finds unchanged.
//! - `Unreadable { rel, error }` — `stat` failed for another reason than absence; report, retry at the
//!   next rescan.
//! - `RootMissing { error }` / `RootBack` — the root was deleted, unmounted or replaced / an acceptable
//!   directory is back (a full `Rescan` follows). In between, nothing else is sent and nothing must be
//!   deleted.
//! - `PollingFallback { reason }` — inotify could not watch the tree (limit reached); polling instead.

pub mod filter;
pub mod key;
pub mod root;
pub mod scan;
pub mod settle;
pub mod watcher;

#[cfg(test)]
mod testutil;

pub use filter::{DEFAULT_IGNORES, Filter, FilterConfig, FilterError};
pub use key::{KeyError, MAX_KEY_BYTES, escape_path, object_key, rel_path_of_key};
pub use root::{RootError, RootGuard, RootId};
pub use scan::{ScanError, ScanItem, ScanReport, ScanStream, Scanner, SkipReason};
pub use settle::{DEFAULT_SETTLE, Release, SettleGate, Touch, is_settled};
pub use watcher::{Backend, DEFAULT_RESCAN_INTERVAL, RescanReason, Watch, WatchConfig, WatchError, WatchEvent};
