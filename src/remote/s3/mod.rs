//! The S3 dialect (placeholder, filled in below).
pub mod sign;
pub mod xml;
