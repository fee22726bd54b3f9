//! The S3 dialect: SigV4 signing, S3 XML, and the [`crate::remote::Remote`] implementation, for S3-compatible
//! stores (OSS's own S3 API, MinIO, Ceph, SeaweedFS, AWS).
//!
//! - `sign`: AWS Signature V4 canonicalization and the header signer (golden-tested with AWS's suite).
//! - `xml`: the S3 decoders that differ from OSS (form-encoded listings, checksums in Complete) and the
//!   request bodies; documents shaped like OSS's reuse `oss::xml`.
//! - `client`: [`S3Client`], its integrity modes (CRC-64/NVME, Content-MD5 fallback, automatic probe) and
//!   every operation. The HTTP machinery (progress timeouts, retries, clock skew) is shared with the OSS
//!   client in `remote::transport`; endpoints and URLs come from `oss::endpoint`, which already writes
//!   request URLs exactly as they are signed.
//!
//! What OSS's S3 API needs (OSS-PROTOCOL.md §10): virtual-hosted addressing (the client uses it for any
//! named host unless path style is forced), SigV4 with `UNSIGNED-PAYLOAD` or the real SHA-256 (both
//! supported, never `aws-chunked`), Content-MD5 on DeleteObjects (always sent). Whether it verifies
//! `x-amz-checksum-crc64nvme` is unknown: the automatic mode finds out and falls back to Content-MD5.

pub mod client;
pub mod sign;
pub mod xml;

pub use client::{Integrity, IntegrityMode, S3Client, S3Config};
#[cfg(test)]
mod tests;
