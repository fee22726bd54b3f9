//! The file-system side of the agent (work in progress).

pub mod filter;
pub mod key;
pub mod root;
pub mod scan;
pub mod settle;
#[cfg(test)]
mod testutil;
