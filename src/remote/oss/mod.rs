//! The OSS dialect: signing (V1 and V4), addressing, XML, and the [`crate::remote::Remote`] implementation.
//!
//! - `sign`: the pure V1/V4 canonicalization and signatures (shared with `ossmirror serve`).
//! - `endpoint`: endpoint parsing, region guessing, and URLs written exactly as signed.
//! - `xml`: response decoding and request bodies.
//! - `response`: one attempt's answer and the error-decoding rules.
//! - `client`: [`OssClient`], the retry loop and every operation.

pub mod client;
pub mod endpoint;
pub mod response;
pub mod sign;
pub mod xml;

pub use client::{OssClient, OssConfig};
pub use sign::SignatureVersion;

#[cfg(test)]
mod tests;
