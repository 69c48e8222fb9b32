//! What the transfer functions share: configuration, the run model, key rules, the S3
//! move, the status table and error types.

pub mod aws;
pub mod batch;
pub mod config;
pub mod crash;
pub mod deadline;
pub mod error;
pub mod keys;
pub mod lambda;
pub mod progress;
pub mod run;
pub mod store;
pub mod transfer;

pub use aws::Clients;
pub use config::{Config, ConfigError, MasterSettings, SlaveSettings, StatusSettings};
pub use error::AwsError;
pub use run::{EventError, RunId, RunSpec};
pub use store::{Store, StoreError};
