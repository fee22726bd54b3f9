//! The interop suite: Alibaba's official Python SDKs (oss2 with V1 and V4, alibabacloud-oss-v2) drive the
//! real `ossmirror serve` binary. Each test runs one pytest file, so nextest runs the files in parallel
//! (each pytest process starts its own server).
//!
//! The Python environment comes from `$OSSMIRROR_TEST_VENV`, or `<repo>/.venv`; `./scripts/test` creates it
//! from `tests/requirements.txt`. A missing environment is a failure, never a silent skip.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn pytest(file: &str) {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(common::python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-r", "fE"])
        .arg(manifest.join("tests").join("interop").join(file))
        .current_dir(&manifest)
        .env("OSSMIRROR_BIN", env!("CARGO_BIN_EXE_ossmirror"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .expect("run pytest");
    assert!(status.success(), "pytest tests/interop/{file} failed ({status}); its output is above");
}

#[test]
fn interop_objects() {
    pytest("test_objects.py");
}

#[test]
fn interop_listing() {
    pytest("test_listing.py");
}

#[test]
fn interop_multipart() {
    pytest("test_multipart.py");
}

#[test]
fn interop_resumable() {
    pytest("test_resumable.py");
}

#[test]
fn interop_auth() {
    pytest("test_auth.py");
}

#[test]
fn interop_versioning() {
    pytest("test_versioning.py");
}

#[test]
fn interop_lifecycle() {
    pytest("test_lifecycle.py");
}

#[test]
fn interop_options() {
    pytest("test_options.py");
}
