//! The OSS dialect: signing (V1 and V4), addressing, XML, and the [`crate::remote::Remote`] implementation.

pub mod sign;
