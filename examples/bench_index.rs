//! Benchmark helper (`scripts/bench/agent.py`, figure (d)): record every file under ROOT as synced in an
//! agent's state database, exactly as the agent would after uploading it (same key mapping, snapshot,
//! CRC-64 and per-part BLAKE3 read from the file), without uploading anything. The agent started on ROOT
//! afterwards finds a million files it already tracks, which is what the figure measures.
//!
//! `cargo run --release --example bench_index -- STATE_DB ROOT BUCKET [PREFIX [REMOTE]]`
//!
//! REMOTE is the remote the agent will describe the database with (`oss http://127.0.0.1:PORT bucket=B
//! prefix=P`, as `agent::setup::remote_identity` writes it): an index that names no remote, or another one,
//! is not trusted by the agent and would be re-proven from scratch.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use ossmirror::agent::local::hash_file;
use ossmirror::snapshot::FileSnapshot;
use ossmirror::state::{StateDb, SyncedFile};
use ossmirror::watch::object_key;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, root, bucket, rest @ ..] = args.as_slice() else {
        return Err("usage: bench_index STATE_DB ROOT BUCKET [PREFIX [REMOTE]]".into());
    };
    let prefix = rest.first().cloned().unwrap_or_default();
    let remote = rest.get(1).cloned();
    // The agent canonicalizes --watch and records absolute paths under it.
    let root = std::fs::canonicalize(root)?;
    let (state, _) = StateDb::open(Path::new(db))?;
    if let Some(remote) = &remote {
        state.bind_remote(remote)?;
    }
    let started = Instant::now();
    let mut n = 0u64;
    for entry in walkdir::WalkDir::new(&root).sort_by_file_name() {
        let entry = entry?;
        if !entry.file_type().is_file() {
            continue;
        }
        let path: PathBuf = entry.path().to_path_buf();
        let rel = path.strip_prefix(&root)?;
        let snapshot = FileSnapshot::of_path(&path)?;
        // One piece per file: these are small files, uploaded with a single PutObject.
        let Some(h) = hash_file(&std::fs::File::open(&path)?, snapshot.size.max(1), &snapshot)? else {
            return Err(format!("{} changed while it was read", path.display()).into());
        };
        state.complete(
            None,
            &SyncedFile {
                bucket: bucket.clone(),
                key: object_key(&prefix, rel)?,
                local_path: path.clone(),
                snapshot,
                size: snapshot.size,
                crc64: h.crc64,
                etag: "\"bench\"".into(),
                part_size: snapshot.size.max(1),
                part_blake3: h.part_blake3,
                synced_at: SystemTime::now(),
                object_meta: Some(h.meta.encode()),
            },
        )?;
        n += 1;
        if n % 100_000 == 0 {
            eprintln!("bench_index: {n} rows, {:.0} rows/s", n as f64 / started.elapsed().as_secs_f64());
        }
    }
    eprintln!("bench_index: {n} rows in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
