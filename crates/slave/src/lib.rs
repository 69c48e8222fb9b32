//! `slave`: moves one batch of a run's files. Each file is copied, verified at the
//! destination, and only then deleted at the source; each outcome is recorded once.
//!
//! The event names a batch that master recorded; its files are read from the status
//! table, so an event can only move what master listed for the run, and only under the
//! run's source prefix. Files an earlier delivery completed are skipped, so a batch
//! delivered twice moves and counts nothing twice. Transient failures (throttling, 5xx,
//! timeouts) are tried again a few rounds within the invocation; what still fails is
//! recorded `failed` with its reason.

use std::time::Duration;

use common::batch::{FileState, ListedFile, Outcome};
use common::run::{SlaveEvent, SlaveOutput, parse_event};
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
        let SlaveEvent {
            run_id: run,
            batch: batch_id,
        } = parse_event(payload)?;
        let (record, batch) = self.store.load_batch(&run, &batch_id).await?;
        let spec = record.and_then(|r| r.spec).ok_or_else(|| {
            EventError(format!("run {run} is unknown: master has not recorded it"))
        })?;
        let batch = batch.ok_or_else(|| {
            EventError(format!("no batch {batch_id:?} was recorded for run {run}"))
        })?;
        // The files come from the table, but a run's files are only ever under its prefix.
        for file in &batch.files {
            spec.destination_key(&file.key)
                .map_err(|e| EventError(e.to_string()))?;
        }

        let todo: Vec<usize> = (0..batch.files.len())
            .filter(|&i| batch.outcomes.states[i] != FileState::Completed)
            .collect();
        let mut output = SlaveOutput {
            already_done: (batch.files.len() - todo.len()) as u64,
            ..SlaveOutput::default()
        };
        let outcomes = self.move_files(&spec, &batch.files, todo).await;
        for (i, outcome) in &outcomes {
            let key = &batch.files[*i].key;
            match outcome {
                Outcome::Completed { size } => info!(run_id = %run, key = %key, size, "completed"),
                Outcome::Failed { reason } => {
                    warn!(run_id = %run, key = %key, reason = %reason, "failed")
                }
            }
        }
        let delta = self.store.record_outcomes(&run, &batch, &outcomes).await?;
        output.completed = delta.completed.max(0) as u64;
        output.failed = delta.failed.max(0) as u64;
        output.bytes = delta.bytes.max(0) as u64;
        info!(run_id = %run, batch = %batch.id, files = batch.files.len(), completed = output.completed,
              failed = output.failed, already_done = output.already_done, bytes = output.bytes, "batch done");
        Ok(output)
    }

    /// Copies and verifies the files at positions `todo`, then deletes the verified
    /// sources in batches; returns each file's outcome by position.
    async fn move_files(
        &self,
        spec: &RunSpec,
        files: &[ListedFile],
        todo: Vec<usize>,
    ) -> Vec<(usize, Outcome)> {
        let mover = &Mover::new(&self.s3, &self.settings);
        let concurrency = self.settings.move_concurrency;
        let copied = in_rounds(todo, |round| async move {
            stream::iter(round)
                .map(|i| async move { (i, mover.copy_verified(spec, &files[i]).await) })
                .buffer_unordered(concurrency)
                .collect::<Vec<_>>()
                .await
        })
        .await;

        let mut outcomes = Vec::with_capacity(copied.len());
        let mut to_delete = Vec::new();
        for (i, result) in copied {
            match result {
                Ok(Verified::SourceToDelete) => to_delete.push(i),
                Ok(Verified::SourceGone) => outcomes.push((i, completed(&files[i]))),
                Err(failure) => outcomes.push((i, failed(failure))),
            }
        }
        #[cfg(debug_assertions)]
        if !to_delete.is_empty() {
            fault_injection::crash_if_armed();
        }
        let deleted = in_rounds(to_delete, |round| async move {
            let sources: Vec<&ListedFile> = round.iter().map(|&i| &files[i]).collect();
            let results = mover.delete_sources(&spec.source.bucket, &sources).await;
            round.into_iter().zip(results).collect()
        })
        .await;
        outcomes.extend(deleted.into_iter().map(|(i, result)| match result {
            Ok(()) => (i, completed(&files[i])),
            Err(failure) => (i, failed(failure)),
        }));
        outcomes
    }
}

fn completed(file: &ListedFile) -> Outcome {
    Outcome::Completed { size: file.size }
}

fn failed(failure: MoveFailure) -> Outcome {
    Outcome::Failed {
        reason: failure.reason,
    }
}

/// Runs `attempt` over the files (by position), then again over those that failed
/// transiently, up to [`ROUNDS`] times with a growing pause; returns every file's last
/// result.
async fn in_rounds<T, F, Fut>(
    mut todo: Vec<usize>,
    attempt: F,
) -> Vec<(usize, Result<T, MoveFailure>)>
where
    F: Fn(Vec<usize>) -> Fut,
    Fut: std::future::Future<Output = Vec<(usize, Result<T, MoveFailure>)>>,
{
    let mut settled = Vec::with_capacity(todo.len());
    for round in 0..ROUNDS {
        if todo.is_empty() {
            break;
        }
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(500 << round)).await;
        }
        let mut retry = Vec::new();
        for (i, result) in attempt(std::mem::take(&mut todo)).await {
            match result {
                Err(f) if f.transient && round + 1 < ROUNDS => retry.push(i),
                result => settled.push((i, result)),
            }
        }
        todo = retry;
    }
    settled
}

/// Faults a test can ask of a debug build; release builds, which are what `sam build`
/// deploys, do not have them.
#[cfg(debug_assertions)]
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
