//! The DynamoDB status table.
//!
//! One table, key `pk` (string) + `sk` (string), TTL on `expires_at`. A run owns these
//! partitions; `#` cannot occur in a run id, so they never collide with another run's:
//!
//! | `pk`            | `sk`              | what                                                     |
//! |-----------------|-------------------|----------------------------------------------------------|
//! | `{run}#run`     | `run`             | the run: spec, listing progress, `selected`, task token  |
//! | `{run}#run`     | `counter#00`–`15` | outcome counters: `completed`, `failed`, `bytes`         |
//! | `{run}#batch`   | the batch's first key | `files`: the batch's files as master listed them, all `started` |
//! | `{run}#outcome` | the batch's first key | `states`, `reasons`, `version`: what slaves recorded |
//! | `{run}#failed`  | the batch's first key | present while the batch has failed files         |
//! | `{run}#upload`  | a file's source key | a multipart copy in progress: upload id, part size |
//!
//! Master alone writes the run item's listing fields and the batches, each page's
//! batches in the same transaction as the listing position they cover, so a batch,
//! once recorded, is the only one for its files; slaves alone write outcomes and
//! counters, the counters spread over shards so concurrent batches rarely contend for
//! one item; status reads the whole run partition in one query and keeps the run's
//! activity task tokens on its item. A batch's files are written once and never
//! rewritten: recording outcomes rewrites only the small outcome item, together with
//! the counters, in one transaction.

use std::time::Duration;

use aws_sdk_dynamodb::Client;

use crate::error::AwsError;
use crate::rules::run::RunId;

mod codec;
mod dynamo;
mod layout;
mod master;
mod slave;
mod status;
#[cfg(test)]
mod tests;
mod uploads;

pub use master::MasterRecords;
pub use slave::SlaveRecords;
pub use status::StatusRecords;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(
        "run {run} already exists with a different spec ({existing}); use a new execution name"
    )]
    SpecMismatch { run: RunId, existing: String },
    #[error("run {run}: another master call moved the listing position; this call stops")]
    ProgressConflict { run: RunId },
    #[error("run {run}: the table holds an item it cannot read: {problem}")]
    Corrupt { run: RunId, problem: String },
}

impl StoreError {
    /// The `errorType` of a status table failure, in every function: `StatusTableError`
    /// when trying again later may succeed (throttling, 5xx, timeouts), and
    /// `StatusTableRefused` when it cannot (access denied, no such table, an item that
    /// cannot be read), so that a state machine retries only the first.
    pub fn error_type(&self) -> &'static str {
        match self {
            StoreError::Aws(e) if e.transient => "StatusTableError",
            _ => "StatusTableRefused",
        }
    }
}

/// The status table: a DynamoDB client and the table's name, from which each role's
/// records are made.
#[derive(Clone, Debug)]
pub struct Store {
    client: Client,
    table: String,
    ttl: Duration,
}

impl Store {
    pub fn new(client: Client, table: impl Into<String>, ttl: Duration) -> Self {
        Store {
            client,
            table: table.into(),
            ttl,
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}
