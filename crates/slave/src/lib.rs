//! `slave`: moves one batch of a run's files. Each file is copied, verified at the
//! destination, and only then deleted at the source; each outcome is recorded once.
//!
//! The event names a batch that master recorded; its files are read from the status
//! table, so an event can only move what master listed for the run, and only under the
//! run's source prefix. Files an earlier delivery completed or failed are skipped, so a
//! batch delivered twice moves and counts nothing twice, and a recorded outcome is final. Transient failures (throttling, 5xx,
//! timeouts) are tried again a few rounds within the invocation; what still fails is
//! recorded `failed` with its reason.
//!
//! A slave keeps to its deadline: with less than `HANDOFF_MARGIN_MS` left it starts no
//! new copy, and shortly before the end it abandons copies in flight; then it records
//! what it finished and invokes itself with the same event for the rest. A multipart
//! copy keeps its finished parts across invocations, so no batch and no object is too
//! large for the function's timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
mod rounds;

use common::deadline::Deadlines;
use common::rules::batch::ListedFile;
use common::rules::checksum::Verification;
use common::rules::copy::{copied_version_to_delete, existing_destination};
use common::rules::events::{SlaveEvent, SlaveOutput, parse_event};
use common::rules::failure::MoveFailure;
use common::rules::handoff::{handoff_stalls, stalled_for_good, stalled_reason};
use common::rules::outcomes::{FileState, Outcome};
use common::rules::records::BatchView;
use common::rules::run::PlannedMove;
use common::store::SlaveRecords;
use common::transfer::{CopyOutcome, Deleted, Mover, S3Clients};
use common::{
    Aws, AwsError, Clients, Config, ConfigError, EventError, RunId, RunSpec, SlaveSettings, Store,
    StoreError,
};
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use tracing::{info, warn};

use crate::rounds::in_rounds;

/// Time kept for recording outcomes and invoking the continuation: copies still in
/// flight this long before the deadline are abandoned.
const HARD_MARGIN: Duration = Duration::from_secs(10);
/// Time kept after aborting the uploads of failed files, to record the outcomes and hand
/// the batch on. An upload left open is aborted by the bucket's lifecycle rule.
const RECORD_MARGIN: Duration = Duration::from_secs(6);
/// Time kept after forgetting the upload records of moved files, to end in time.
const END_MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    InvalidEvent(#[from] EventError),
    #[error("status table: {0}")]
    Store(#[from] StoreError),
    #[error("handing the rest of the batch to a new invocation failed: {0}")]
    Handoff(AwsError),
}

impl Error {
    /// The stable `errorType` Lambda reports.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::Config(_) => "ConfigError",
            Error::InvalidEvent(_) => "InvalidEvent",
            Error::Store(e) => e.error_type(),
            Error::Handoff(_) => "HandoffFailed",
        }
    }
}

/// Every `errorType` this function can raise, for checking the state machine against.
pub const ERROR_TYPES: &[&str] = &[
    "ConfigError",
    "InvalidEvent",
    "StatusTableError",
    "StatusTableRefused",
    "HandoffFailed",
];

common::diagnostic!(Error);

pub struct Slave {
    s3: S3Clients,
    lambda: aws_sdk_lambda::Client,
    records: SlaveRecords,
    settings: SlaveSettings,
}

/// One invocation's work on a batch: the run, each file's planned move, and the mover
/// that keeps to the invocation's deadlines.
#[derive(Clone, Copy)]
struct Work<'a> {
    run: &'a RunId,
    spec: &'a RunSpec,
    planned: &'a [PlannedMove],
    mover: &'a Mover<'a>,
    deadlines: Deadlines,
}

/// What became of each file this invocation took on.
struct Moved {
    /// Completed or failed, by position.
    outcomes: Vec<(usize, Outcome)>,
    /// Files left for the next invocation, by position.
    unfinished: Vec<usize>,
    /// Whether a multipart copy left unfinished got some of its parts copied.
    parts_copied: bool,
    /// Unfinished files whose source is gone and whose destination could not be checked
    /// yet, with why not.
    unchecked: BTreeMap<usize, String>,
}

impl Slave {
    /// Reads the configuration and builds the clients, once per cold start.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let config = Config::from_env()?;
        let settings = SlaveSettings::from_env()?;
        let aws = Aws::from_env(&config, "slave").await;
        Ok(Self::with_clients(
            aws.s3(),
            aws.lambda(),
            aws.dynamodb(),
            &config,
            settings,
        ))
    }

    pub fn new(clients: &Clients, config: &Config, settings: SlaveSettings) -> Self {
        Self::with_clients(
            clients.s3.clone(),
            clients.lambda.clone(),
            clients.dynamodb.clone(),
            config,
            settings,
        )
    }

    /// Built from only the clients slave uses, so that its binary links no other.
    fn with_clients(
        s3: aws_sdk_s3::Client,
        lambda: aws_sdk_lambda::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        config: &Config,
        settings: SlaveSettings,
    ) -> Self {
        Slave {
            s3: S3Clients::new(s3),
            lambda,
            records: SlaveRecords::new(Store::new(dynamodb, &config.table_name, config.run_ttl)),
            settings,
        }
    }

    /// Moves the batch the event names; with a `deadline`, hands what it cannot finish
    /// in time to a new invocation.
    #[tracing::instrument(skip_all)]
    pub async fn handle(
        &self,
        payload: Value,
        deadline: Option<SystemTime>,
    ) -> Result<SlaveOutput, Error> {
        let event: SlaveEvent = parse_event(payload)?;
        let run = &event.run_id;
        let (record, batch) = self.records.load_batch(run, &event.batch).await?;
        let spec = record.and_then(|r| r.spec).ok_or_else(|| {
            EventError(format!("run {run} is unknown: master has not recorded it"))
        })?;
        let mut batch = batch.ok_or_else(|| {
            EventError(format!(
                "no batch {:?} was recorded for run {run}",
                event.batch.as_str()
            ))
        })?;
        // Each file's destination, once. The files come from the table, but a run's files
        // are only ever under its prefix.
        let planned: Vec<PlannedMove> = batch
            .files
            .iter()
            .map(|file| spec.plan(file))
            .collect::<Result<_, _>>()
            .map_err(|e| EventError(e.to_string()))?;

        // Only files without an outcome (a late duplicate of master's event, say).
        let todo = batch.outcomes.open();
        let already_done = batch.outcomes.completed() as u64;
        let deadlines = Deadlines::before(deadline, self.settings.handoff_margin, HARD_MARGIN);
        let clients = match self.s3.for_run(&spec).await {
            Ok(clients) => clients,
            Err(problem) => {
                return self
                    .without_region(&event, &batch, todo, already_done, problem)
                    .await;
            }
        };
        let mover = Mover::new(&clients, &self.settings, &self.records, run, deadlines);
        let mut moved = self
            .move_files(
                &Work {
                    run,
                    spec: &spec,
                    planned: &planned,
                    mover: &mover,
                    deadlines,
                },
                &mut batch,
                todo,
            )
            .await?;
        // Progress is an outcome (every file tried had none), or parts copied.
        let stalls = handoff_stalls(
            !moved.outcomes.is_empty() || moved.parts_copied,
            !moved.unfinished.is_empty(),
            event.handed_on,
        );
        if stalled_for_good(stalls) {
            let stalled = std::mem::take(&mut moved.unfinished);
            moved.outcomes.extend(stalled.into_iter().map(|i| {
                let reason = stalled_reason(stalls, moved.unchecked.get(&i).map(String::as_str));
                (i, Outcome::Failed { reason })
            }));
        }
        for (i, outcome) in &moved.outcomes {
            let key = &batch.files[*i].key;
            match outcome {
                Outcome::Completed { size, verification } => {
                    info!(run_id = %run, key = %key, size, verified_by = ?verification, "completed")
                }
                Outcome::Failed { reason } => {
                    warn!(run_id = %run, key = %key, reason = %reason, "failed")
                }
                Outcome::Skipped { reason } => {
                    info!(run_id = %run, key = %key, reason = %reason, "skipped")
                }
            }
        }
        // No later delivery tries a file with an outcome: the multipart upload of a failed
        // or skipped file is aborted now, before its outcome is recorded, while time is
        // left to record.
        let (failed, completed): (Vec<_>, Vec<_>) = moved
            .outcomes
            .iter()
            .map(|(i, outcome)| (&planned[*i], outcome))
            .partition(|(_, outcome)| !matches!(outcome, Outcome::Completed { .. }));
        let failed: Vec<&PlannedMove> = failed.into_iter().map(|(planned, _)| planned).collect();
        let to_record = Deadlines::before(deadline, Duration::ZERO, RECORD_MARGIN);
        mover.abandon_uploads(&spec, &failed, to_record).await;
        let delta = self
            .records
            .record_outcomes(run, &batch, &moved.outcomes)
            .await?;
        if !moved.unfinished.is_empty() {
            let next = SlaveEvent {
                handed_on: Some(stalls),
                ..event.clone()
            };
            self.hand_off(&next).await?;
        }
        // Last, and only while time is left: the records of moved files' uploads.
        let completed: Vec<&PlannedMove> =
            completed.into_iter().map(|(planned, _)| planned).collect();
        let to_end = Deadlines::before(deadline, Duration::ZERO, END_MARGIN);
        mover.forget_uploads(&completed, to_end).await;
        let output = SlaveOutput {
            completed: delta.completed.max(0) as u64,
            failed: delta.failed.max(0) as u64,
            skipped: delta.skipped.max(0) as u64,
            already_done,
            bytes: delta.bytes.max(0) as u64,
            handed_on: moved.unfinished.len() as u64,
        };
        info!(run_id = %run, batch = %batch.id, files = batch.files.len(), completed = output.completed,
              failed = output.failed, skipped = output.skipped, already_done = output.already_done, bytes = output.bytes,
              handed_on = output.handed_on, "batch done");
        Ok(output)
    }

    /// A batch one of whose buckets S3 did not say where it is (after the SDK's own
    /// retries): nothing is asked of S3 for its files, since a request sent to another
    /// region than the bucket's is refused. The batch is handed on, and when invocations
    /// in a row got no answer ([`stalled_for_good`]) its open files fail with the reason,
    /// sources left in place, so that each file's fate is recorded rather than left to the
    /// run's timeout.
    async fn without_region(
        &self,
        event: &SlaveEvent,
        batch: &BatchView,
        todo: Vec<usize>,
        already_done: u64,
        problem: AwsError,
    ) -> Result<SlaveOutput, Error> {
        let run = &event.run_id;
        warn!(run_id = %run, batch = %batch.id, error = %problem, "S3 did not say where a bucket is");
        let stalls = handoff_stalls(false, !todo.is_empty(), event.handed_on);
        if todo.is_empty() {
            return Ok(SlaveOutput {
                already_done,
                ..SlaveOutput::default()
            });
        }
        if stalled_for_good(stalls) {
            let reason = format!(
                "S3 did not say where the run's bucket is in {stalls} invocations of the slave \
                 in a row, so these did not try the file; check the source and the \
                 destination, as an earlier one may have moved it ({problem})"
            );
            let outcomes: Vec<(usize, Outcome)> = todo
                .into_iter()
                .map(|i| {
                    (
                        i,
                        Outcome::Failed {
                            reason: reason.clone(),
                        },
                    )
                })
                .collect();
            let delta = self.records.record_outcomes(run, batch, &outcomes).await?;
            return Ok(SlaveOutput {
                failed: delta.failed.max(0) as u64,
                already_done,
                ..SlaveOutput::default()
            });
        }
        // A pause, longer each time, so that a short spell of throttling passes before the
        // invocations in a row are used up (2, 4, then 8 s).
        tokio::time::sleep(Duration::from_secs(1 << stalls.min(3))).await;
        self.hand_off(&SlaveEvent {
            handed_on: Some(stalls),
            ..event.clone()
        })
        .await?;
        Ok(SlaveOutput {
            already_done,
            handed_on: todo.len() as u64,
            ..SlaveOutput::default()
        })
    }

    /// Copies and verifies the files at positions `todo`, records the copies whose ETag
    /// differs from the listed one, then deletes the verified sources; answers each
    /// finished file's outcome by position, and how many are left for later.
    async fn move_files(
        &self,
        work: &Work<'_>,
        batch: &mut BatchView,
        todo: Vec<usize>,
    ) -> Result<Moved, Error> {
        let Work {
            run,
            spec,
            planned,
            mover,
            deadlines,
        } = *work;
        let files = &batch.files;
        let recorded_copies = &batch.outcomes.copied;
        let concurrency = self.settings.move_concurrency;
        let mut unfinished: BTreeSet<usize> = todo.iter().copied().collect();
        let copied = in_rounds(todo, deadlines, |round| async move {
            common::deadline::bounded(round, concurrency, deadlines, |i| {
                mover.copy_verified(
                    spec,
                    &planned[i],
                    recorded_copies.get(&i).map(String::as_str),
                )
            })
            .await
        })
        .await;

        let mut outcomes = Vec::with_capacity(copied.len());
        let mut to_delete = Vec::new();
        let mut copied_versions = BTreeMap::new();
        let mut verifications = BTreeMap::new();
        let mut copies = Vec::new();
        let mut gone = Vec::new();
        let mut parts_copied = false;
        for (i, result) in copied {
            match result {
                Ok(CopyOutcome::Verified {
                    etag,
                    source_version,
                    verification,
                }) => {
                    verifications.insert(i, verification);
                    if etag.trim_matches('"') != files[i].etag.trim_matches('"') {
                        copies.push((i, etag));
                    }
                    if let Some(version) = source_version {
                        copied_versions.insert(i, version);
                    }
                    to_delete.push(i);
                    continue;
                }
                Ok(CopyOutcome::SourceGone) => {
                    gone.push(i);
                    continue;
                }
                Ok(CopyOutcome::Unfinished { progressed }) => {
                    parts_copied |= progressed;
                    continue;
                }
                Ok(CopyOutcome::DestinationExists) => outcomes.push((
                    i,
                    existing_destination(spec.if_destination_exists, &planned[i].destination_key),
                )),
                Err(failure) => outcomes.push((i, failed(failure))),
            }
            unfinished.remove(&i);
        }
        let mut unchecked = BTreeMap::new();
        if !gone.is_empty() {
            for (i, answer) in self.after_sources_gone(work, batch, gone).await? {
                match answer {
                    GoneSource::Answered(outcome) => outcomes.push((i, outcome)),
                    GoneSource::CompletedBefore => {}
                    GoneSource::Unchecked(why) => {
                        unchecked.insert(i, why);
                        continue;
                    }
                }
                unfinished.remove(&i);
            }
        }
        // What identifies a copy whose ETag is not the listed one is durable before its
        // source goes: a later delivery that finds the source gone can still verify it.
        if !copies.is_empty() {
            self.records.record_copies(run, batch, &copies).await?;
        }
        // A duplicate delivery may have given some of these files an outcome meanwhile,
        // and the run may have been reported with it: a failed file keeps its source.
        if !to_delete.is_empty() {
            batch.outcomes = self
                .records
                .outcomes(run, &batch.id, batch.files.len())
                .await?;
            let now = &batch.outcomes;
            to_delete.retain(|&i| {
                let open = now.states[i] == FileState::Started;
                if !open {
                    unfinished.remove(&i);
                }
                open
            });
        }
        let files = &batch.files;
        if !to_delete.is_empty() {
            common::crash::crash_point("slave-between-copy-and-delete");
        }
        let deleted = in_rounds(to_delete, deadlines, |round| async move {
            let sources: Vec<&ListedFile> = round.iter().map(|&i| &files[i]).collect();
            let results = mover.delete_sources(&spec.source.bucket, &sources).await;
            round.into_iter().zip(results).collect()
        })
        .await;
        if !deleted.is_empty() {
            common::crash::crash_point("slave-between-delete-and-record");
        }
        // A deleted key carries a delete marker in a bucket that keeps versions (or has no
        // current object after an earlier attempt): the version copied can go without an
        // older one becoming current again.
        let versions: Vec<(&str, &str)> = deleted
            .iter()
            .filter_map(|(i, result)| {
                let marker = match result {
                    Ok(Deleted::Marked { marker }) => marker.as_deref(),
                    Ok(Deleted::Absent) => None,
                    Ok(Deleted::Gone) | Err(_) => return None,
                };
                let copied = copied_versions.get(i).map(String::as_str);
                let version = copied_version_to_delete(spec.keep_source_versions, copied, marker)?;
                Some((files[*i].key.as_str(), version))
            })
            .collect();
        if !versions.is_empty() {
            mover
                .delete_copied_versions(&spec.source.bucket, &versions)
                .await;
        }
        for (i, result) in deleted {
            unfinished.remove(&i);
            outcomes.push(match result {
                Ok(_) => (
                    i,
                    completed(&files[i], verifications.remove(&i).unwrap_or_default()),
                ),
                Err(failure) => (i, failed(failure)),
            });
        }
        Ok(Moved {
            outcomes,
            unfinished: unfinished.into_iter().collect(),
            parts_copied,
            unchecked,
        })
    }

    /// Files whose sources are gone: another delivery may have moved them meanwhile, so
    /// the batch's outcomes are read again, now that the sources are seen gone (a
    /// delivery records its copies before deleting). A file that delivery completed is
    /// done, with no outcome of this invocation's; any other counts as moved only if its
    /// destination holds the listed object, as the copy recorded for it says. A file
    /// whose destination cannot be checked for now is left for later.
    async fn after_sources_gone(
        &self,
        work: &Work<'_>,
        batch: &mut BatchView,
        gone: Vec<usize>,
    ) -> Result<Vec<(usize, GoneSource)>, Error> {
        let Work {
            run,
            spec,
            planned,
            mover,
            deadlines,
        } = *work;
        batch.outcomes = self
            .records
            .outcomes(run, &batch.id, batch.files.len())
            .await?;
        let (files, now) = (&batch.files, &batch.outcomes);
        let (done, left): (Vec<usize>, Vec<usize>) = gone
            .into_iter()
            .partition(|&i| now.states[i] == FileState::Completed);
        let concurrency = self.settings.move_concurrency;
        let verified = in_rounds(left, deadlines, |round| async move {
            common::deadline::bounded(round, concurrency, deadlines, |i| {
                mover.verify_moved(spec, &planned[i], now.copied.get(&i).map(String::as_str))
            })
            .await
        })
        .await;
        let answered = verified.into_iter().map(|(i, result)| match result {
            Ok(()) => (
                i,
                GoneSource::Answered(completed(&files[i], Verification::Etag)),
            ),
            Err(failure) if failure.transient => (i, GoneSource::Unchecked(failure.reason)),
            Err(failure) => (i, GoneSource::Answered(failed(failure))),
        });
        Ok(done
            .into_iter()
            .map(|i| (i, GoneSource::CompletedBefore))
            .chain(answered)
            .collect())
    }

    /// Invokes this function again with the same event, for the files left.
    async fn hand_off(&self, event: &SlaveEvent) -> Result<(), Error> {
        let function = self.settings.own_function.as_deref().ok_or_else(|| {
            Error::Handoff(AwsError::permanent(
                "Invoke",
                "AWS_LAMBDA_FUNCTION_NAME is not set, so the slave cannot invoke itself",
            ))
        })?;
        let payload = serde_json::to_vec(event).expect("a slave event always serializes");
        self.lambda
            .invoke()
            .function_name(function)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload))
            .send()
            .await
            .map_err(|e| Error::Handoff(AwsError::from_sdk("Invoke", e)))?;
        info!(run_id = %event.run_id, batch = %event.batch, "handed the rest of the batch on");
        Ok(())
    }
}

/// What became of a file whose source was found gone.
enum GoneSource {
    /// Verified at its destination, or failed for good.
    Answered(Outcome),
    /// Another delivery completed it; this invocation has nothing to record.
    CompletedBefore,
    /// Its destination could not be checked for now, for this reason: it is left for later.
    Unchecked(String),
}

fn completed(file: &ListedFile, verification: Verification) -> Outcome {
    Outcome::Completed {
        size: file.size,
        verification,
    }
}

fn failed(failure: MoveFailure) -> Outcome {
    Outcome::Failed {
        reason: failure.reason,
    }
}

/// The Lambda handler: a configuration error read at cold start is every invocation's answer.
pub async fn handle(
    slave: &Result<Slave, ConfigError>,
    event: LambdaEvent<Value>,
) -> Result<SlaveOutput, Error> {
    let slave = common::lambda::configured::<_, Error>(slave)?;
    slave
        .handle(event.payload, common::lambda::deadline(&event.context))
        .await
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
            Error::Store(StoreError::Aws(aws.clone())),
            Error::Store(StoreError::Aws(common::error::AwsError {
                transient: true,
                ..aws.clone()
            })),
            Error::Handoff(aws),
        ];
        let seen: std::collections::BTreeSet<_> = samples.iter().map(Error::error_type).collect();
        let listed: std::collections::BTreeSet<_> = ERROR_TYPES.iter().copied().collect();
        assert_eq!(seen, listed);
    }
}
