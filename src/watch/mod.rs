//! The file-system side of the agent (work in progress).

pub mod filter;
pub mod key;
