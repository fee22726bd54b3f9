//! Access keys: defined with their providers in [`crate::credentials`], re-exported here for the clients.

pub use crate::credentials::{Credentials, CredentialsProvider, Secret, StaticProvider};
