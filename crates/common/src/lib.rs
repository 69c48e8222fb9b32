//! What the transfer functions share: configuration, the rules every decision follows,
//! the status table, the S3 move, the AWS clients and the Lambda glue.
//!
//! - [`rules`]: every decision, as pure functions over the project's own types;
//! - [`config`]: every setting, read once from the environment;
//! - [`store`]: the status table, one module per role that reads or writes it;
//! - [`transfer`]: the S3 requests of a move;
//! - [`aws`], [`error`], [`lambda`], [`deadline`], [`crash`]: clients, SDK errors, the
//!   Lambda runtime, invocation deadlines, and the crash points debug builds have.

pub mod aws;
pub mod config;
pub mod crash;
pub mod deadline;
pub mod error;
pub mod lambda;
pub mod rules;
pub mod store;
pub mod transfer;

pub use aws::{Aws, Clients};
pub use config::{Config, ConfigError, MasterSettings, SlaveSettings, StatusSettings};
pub use error::AwsError;
pub use rules::run::{EventError, RunId, RunSpec};
pub use store::{Store, StoreError};
