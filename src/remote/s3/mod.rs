//! The S3 dialect (placeholder, filled in below).
pub mod sign;
