//! `slave`: moves one batch of a run's files. Each file is copied, verified at the
//! destination, and only then deleted at the source; each outcome is recorded once.
//!
//! The batch is checked whole before anything moves: the run must exist and every key
//! must be one that master recorded for it, under the run's source prefix. Files an
//! earlier delivery completed are skipped, so a batch delivered twice moves and counts
//! nothing twice. Transient failures (throttling, 5xx, timeouts) are tried again a few
//! rounds within the invocation; what still fails is recorded `failed` with its reason.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::run::{SlaveEvent, SlaveOutput, parse_event};
use common::store::{FileOutcome, FileRecord, FileState, ListedFile, Outcome};
use common::transfer::{MoveFailure, Mover, Verified};
use common::{Clients, Config, ConfigError, EventError, RunSpec, SlaveSettings, Store, StoreError};
use futures::{StreamExt, stream};
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use tracing::{info, warn};

/// Rounds of attempts at a file whose failure is transient (each after the SDK's own retries).
const ROUNDS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    InvalidEvent(#[from] EventError),
    #[error("status table: {0}")]
    Store(#[from] StoreError),
}

impl Error {
    /// The stable `errorType` Lambda reports.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::Config(_) => "ConfigError",
            Error::InvalidEvent(_) => "InvalidEvent",
            Error::Store(_) => "StatusTableError",
        }
    }
}

/// Every `errorType` this function can raise, for checking the state machine against.
pub const ERROR_TYPES: &[&str] = &["ConfigError", "InvalidEvent", "StatusTableError"];

common::diagnostic!(Error);

pub struct Slave {
    s3: aws_sdk_s3::Client,
    store: Store,
    settings: SlaveSettings,
}

impl Slave {
    /// Reads the configuration and builds the clients, once per cold start.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let config = Config::from_env()?;
        let settings = SlaveSettings::from_env()?;
        let clients = Clients::from_env(&config, "slave").await;
        Ok(Self::new(&clients, &config, settings))
    }

    pub fn new(clients: &Clients, config: &Config, settings: SlaveSettings) -> Self {
        Slave {
            s3: clients.s3.clone(),
            store: Store::new(clients.dynamodb.clone(), &config.table_name, config.run_ttl),
            settings,
        }
    }

    #[tracing::instrument(skip_all)]
    pub async fn handle(&self, payload: Value) -> Result<SlaveOutput, Error> {
        let event: SlaveEvent = parse_event(payload)?;
        let run = &event.run_id;
        self.check_shape(&event)?;
        let (record, mut rows) = self.store.load_batch(run, &event.keys).await?;
        let spec = record.and_then(|r| r.spec).ok_or_else(|| {
            EventError(format!("run {run} is unknown: master has not recorded it"))
        })?;
        for key in &event.keys {
            spec.destination_key(key)
                .map_err(|e| EventError(e.to_string()))?;
            if !rows.contains_key(key) {
                return Err(
                    EventError(format!("key {key:?} was not recorded for run {run}")).into(),
                );
            }
        }

        let mut output = SlaveOutput::default();
        let todo: Vec<FileRecord> = event
            .keys
            .iter()
            .filter_map(|k| rows.remove(k))
            .filter(|row| {
                let done = row.state == FileState::Completed;
                output.already_done += done as u64;
                !done
            })
            .collect();
        let states: HashMap<String, FileState> = todo
            .iter()
            .map(|r| (r.listed.key.clone(), r.state))
            .collect();

        let outcomes = self.move_files(&spec, todo).await;
        for file in &outcomes {
            match &file.outcome {
                Outcome::Completed {
                    destination_key,
                    size,
                } => {
                    info!(run_id = %run, key = %file.key, destination_key = %destination_key, size, "completed")
                }
                Outcome::Failed { reason } => {
                    warn!(run_id = %run, key = %file.key, reason = %reason, "failed")
                }
            }
        }
        let recorded = outcomes.into_iter().map(|o| {
            let from = states[&o.key];
            (o, from)
        });
        let delta = self.store.record_outcomes(run, recorded.collect()).await?;
        output.completed = delta.completed.max(0) as u64;
        output.failed = delta.failed.max(0) as u64;
        output.bytes = delta.bytes.max(0) as u64;
        info!(run_id = %run, keys = event.keys.len(), completed = output.completed, failed = output.failed,
              already_done = output.already_done, bytes = output.bytes, "batch done");
        Ok(output)
    }

    fn check_shape(&self, event: &SlaveEvent) -> Result<(), EventError> {
        if event.keys.is_empty() {
            return Err(EventError("keys is empty".into()));
        }
        if event.keys.len() > self.settings.max_batch_keys {
            return Err(EventError(format!(
                "{} keys exceed MAX_BATCH_KEYS ({})",
                event.keys.len(),
                self.settings.max_batch_keys
            )));
        }
        let mut seen = HashSet::with_capacity(event.keys.len());
        if let Some(dup) = event.keys.iter().find(|k| !seen.insert(k.as_str())) {
            return Err(EventError(format!("key {dup:?} appears twice")));
        }
        Ok(())
    }

    /// Copies and verifies every file, then deletes the verified sources in batches.
    async fn move_files(&self, spec: &RunSpec, files: Vec<FileRecord>) -> Vec<FileOutcome> {
        let mover = &Mover::new(&self.s3, &self.settings);
        let concurrency = self.settings.move_concurrency;
        let copied = in_rounds(
            files.into_iter().map(|r| r.listed).collect(),
            |batch| async move {
                stream::iter(batch)
                    .map(|file| async {
                        let result = mover.copy_verified(spec, &file).await;
                        (file, result)
                    })
                    .buffer_unordered(concurrency)
                    .collect::<Vec<_>>()
                    .await
            },
        )
        .await;

        let mut outcomes = Vec::with_capacity(copied.len());
        let mut to_delete: Vec<Verified> = Vec::new();
        for (file, result) in copied {
            match result {
                Ok(v) if v.source_present => to_delete.push(v),
                Ok(v) => outcomes.push(completed(v)),
                Err(failure) => outcomes.push(failed(file.key, failure)),
            }
        }
        #[cfg(feature = "fault-injection")]
        if !to_delete.is_empty() {
            fault_injection::crash_if_armed();
        }
        let verified: HashMap<String, Verified> = to_delete
            .into_iter()
            .map(|v| (v.listed.key.clone(), v))
            .collect();
        let deleted = in_rounds(
            verified.values().map(|v| v.listed.clone()).collect(),
            |batch| async move {
                let refs: Vec<&ListedFile> = batch.iter().collect();
                let results = mover.delete_sources(&spec.source.bucket, &refs).await;
                let by_key: HashMap<String, ListedFile> =
                    batch.iter().map(|f| (f.key.clone(), f.clone())).collect();
                results
                    .into_iter()
                    .map(|(key, r)| (by_key[&key].clone(), r))
                    .collect()
            },
        )
        .await;
        for (file, result) in deleted {
            let v = verified[&file.key].clone();
            outcomes.push(match result {
                Ok(()) => completed(v),
                Err(failure) => failed(file.key, failure),
            });
        }
        outcomes
    }
}

fn completed(v: Verified) -> FileOutcome {
    FileOutcome {
        key: v.listed.key,
        outcome: Outcome::Completed {
            destination_key: v.destination_key,
            size: v.listed.size,
        },
    }
}

fn failed(key: String, failure: MoveFailure) -> FileOutcome {
    FileOutcome {
        key,
        outcome: Outcome::Failed {
            reason: failure.reason,
        },
    }
}

/// Runs `attempt` over the files, then again over those that failed transiently, up to
/// [`ROUNDS`] times with a growing pause; returns every file's last result.
async fn in_rounds<T, F, Fut>(
    mut files: Vec<ListedFile>,
    attempt: F,
) -> Vec<(ListedFile, Result<T, MoveFailure>)>
where
    F: Fn(Vec<ListedFile>) -> Fut,
    Fut: std::future::Future<Output = Vec<(ListedFile, Result<T, MoveFailure>)>>,
{
    let mut settled = Vec::with_capacity(files.len());
    for round in 0..ROUNDS {
        if files.is_empty() {
            break;
        }
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(500 << round)).await;
        }
        let mut retry = Vec::new();
        for (file, result) in attempt(std::mem::take(&mut files)).await {
            match result {
                Err(f) if f.transient && round + 1 < ROUNDS => retry.push(file),
                result => settled.push((file, result)),
            }
        }
        files = retry;
    }
    settled
}

/// Faults a test can ask of a build with the `fault-injection` feature; release builds
/// and the deployed functions do not have it.
#[cfg(feature = "fault-injection")]
mod fault_injection {
    /// The file `CRASH_AFTER_COPY_FILE` names arms one crash: the first invocation to
    /// find it removes it and aborts the process after copying its files and before
    /// deleting any source, as a Lambda that runs out of time or memory there would.
    pub fn crash_if_armed() {
        let Some(armed) = std::env::var_os("CRASH_AFTER_COPY_FILE") else {
            return;
        };
        if std::fs::remove_file(&armed).is_ok() {
            tracing::error!("crashing between copy and delete, as armed by {armed:?}");
            std::process::abort();
        }
    }
}

/// The Lambda handler: a configuration error read at cold start is every invocation's answer.
pub async fn handle(
    slave: &Result<Slave, ConfigError>,
    event: LambdaEvent<Value>,
) -> Result<SlaveOutput, Error> {
    let slave = common::lambda::configured::<_, Error>(slave)?;
    slave.handle(event.payload).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_type_is_listed() {
        let aws = common::error::AwsError::permanent("Op", "m");
        let samples = [
            Error::Config(ConfigError {
                variable: "V",
                problem: "p".into(),
            }),
            Error::InvalidEvent(EventError("e".into())),
            Error::Store(StoreError::Aws(aws)),
        ];
        let seen: std::collections::BTreeSet<_> = samples.iter().map(Error::error_type).collect();
        let listed: std::collections::BTreeSet<_> = ERROR_TYPES.iter().copied().collect();
        assert_eq!(seen, listed);
    }
}
