//! Project commands that read the repository's deployment files: the state machine
//! diagram in the README, and the definition rendered for validators.

pub mod async_invoke;
pub mod bench;
pub mod definition;
pub mod demo;
pub mod diagram;
pub mod local;
pub mod policy;
pub mod template;

/// Something wrong with a deployment file, said so a reader can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Problem(pub String);
