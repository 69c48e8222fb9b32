//! `status`: decides from a run's counters whether it is finished, and if so completes
//! the run's activity task: task success with the run summary, or task failure naming
//! the files that failed. While the run is not finished it reads the counters again,
//! for up to `STATUS_WAIT_SECONDS`: about when the files still moving should be done at
//! the rate they are finishing, at most every `STATUS_CHECK_INTERVAL_MS`, so that the
//! execution ends shortly after the last file instead of at the state machine's next
//! retry.
//!
//! The activity task's token is never lost. `GetActivityTask` hands out whichever
//! execution's task comes next, once: every token status receives, its own run's or
//! another's, is recorded on its run's item before it is used, and status heartbeats
//! the tokens recorded for its run while it waits. A token whose holder died before
//! recording it, or that nobody heartbeats, times out after `TASK_HEARTBEAT_SECONDS`,
//! and the state machine schedules the task again with a new token. Delivery can be
//! repeated: when Step Functions no longer takes a recorded token, the execution's
//! history tells whether the result was delivered (a lost answer, a crash before it was
//! noted) or the token lapsed (then a new one comes).

use std::time::{Duration, Instant, SystemTime};

mod activity;

use common::crash::crash_point;
use common::lambda::remaining;
use common::rules::activity::{ActivityState, may_poll, run_deadline};
use common::rules::events::{RunSummary, StatusEvent, parse_event};
use common::rules::progress::{RunProgress, Verdict, failure_cause, may_wait, next_check};
use common::rules::records::{Delivered, RunRecord, RunView};
use common::store::StatusRecords;
use common::{
    Aws, AwsError, Clients, Config, ConfigError, EventError, RunId, RunSpec, StatusSettings, Store,
    StoreError,
};
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use tracing::{info, warn};

/// Time kept in hand beyond one poll: the call must return before the Lambda deadline.
const POLL_MARGIN: Duration = Duration::from_secs(5);
/// Polls one call makes when it has no deadline (a hand-built `Context`).
const POLLS_WITHOUT_DEADLINE: u32 = 2;
/// Failed files listed in a task failure's cause (which is cut to 32 KiB anyway).
const FAILED_FILES_LISTED: usize = 500;
/// The `error` of the task failure sent for a failed run, and this function's error for it.
pub const TRANSFER_FAILED: &str = "TransferFailed";
/// The `error` of the task failure sent for an activity task whose input names no run.
pub const INVALID_ACTIVITY_INPUT: &str = "InvalidActivityInput";
/// What Step Functions answers for a token it no longer takes an answer for.
const TOKEN_GONE: &[&str] = &["TaskTimedOut", "InvalidToken", "TaskDoesNotExist"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    InvalidEvent(#[from] EventError),
    #[error("status table: {0}")]
    Store(#[from] StoreError),
    #[error("run {run} is not finished: {detail}")]
    TransferIncomplete { run: RunId, detail: String },
    #[error("run {run} did not finish within its run_timeout_seconds: {detail}")]
    RunTimedOut { run: RunId, detail: String },
    #[error("{cause}")]
    TransferFailed { cause: String },
    #[error("run {run} is finished, but its activity task has not been handed out yet")]
    ActivityTaskPending { run: RunId },
    #[error(
        "the activity task of run {run} can no longer be completed (the execution timed out or stopped): {source}"
    )]
    ActivityTaskGone { run: RunId, source: AwsError },
    #[error("activity: {0}")]
    Activity(AwsError),
}

impl Error {
    /// The stable `errorType` Step Functions sees; `Retry` and `Catch` match these names.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::Config(_) => "ConfigError",
            Error::InvalidEvent(_) => "InvalidEvent",
            Error::Store(e) => e.error_type(),
            Error::TransferIncomplete { .. } => "TransferIncomplete",
            Error::RunTimedOut { .. } => "RunTimedOut",
            Error::TransferFailed { .. } => TRANSFER_FAILED,
            Error::ActivityTaskPending { .. } => "ActivityTaskPending",
            Error::ActivityTaskGone { .. } => "ActivityTaskGone",
            Error::Activity(e) if e.transient => "ActivityError",
            Error::Activity(_) => "ActivityRefused",
        }
    }
}

/// Every `errorType` this function can raise, for checking the state machine against.
pub const ERROR_TYPES: &[&str] = &[
    "ConfigError",
    "InvalidEvent",
    "StatusTableError",
    "StatusTableRefused",
    "TransferIncomplete",
    "RunTimedOut",
    "TransferFailed",
    "ActivityTaskPending",
    "ActivityTaskGone",
    "ActivityError",
    "ActivityRefused",
];

common::diagnostic!(Error);

pub struct Status {
    sfn: aws_sdk_sfn::Client,
    records: StatusRecords,
    settings: StatusSettings,
    /// How often the tokens recorded for a run are heartbeaten while its status waits.
    heartbeat_every: Duration,
}

/// A run's result, ready to deliver.
struct RunResult {
    summary: RunSummary,
    /// The task failure's cause when files failed; `None` when every file moved.
    cause: Option<String>,
}

impl RunResult {
    fn delivered(&self) -> Delivered {
        match self.cause {
            None => Delivered::Succeeded,
            Some(_) => Delivered::Failed,
        }
    }
}

impl Status {
    /// Reads the configuration and builds the clients, once per cold start.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let config = Config::from_env()?;
        let settings = StatusSettings::from_env()?;
        let aws = Aws::from_env(&config, "status").await;
        Ok(Self::with_clients(
            aws.sfn(),
            aws.dynamodb(),
            &config,
            settings,
        ))
    }

    pub fn new(clients: &Clients, config: &Config, settings: StatusSettings) -> Self {
        Self::with_clients(
            clients.sfn.clone(),
            clients.dynamodb.clone(),
            config,
            settings,
        )
    }

    /// Built from only the clients status uses, so that its binary links no other.
    fn with_clients(
        sfn: aws_sdk_sfn::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        config: &Config,
        settings: StatusSettings,
    ) -> Self {
        Status {
            sfn,
            records: StatusRecords::new(Store::new(dynamodb, &config.table_name, config.run_ttl)),
            settings,
            heartbeat_every: config.task_heartbeat / 3,
        }
    }

    #[tracing::instrument(skip_all)]
    pub async fn handle(
        &self,
        payload: Value,
        deadline: Option<SystemTime>,
    ) -> Result<RunSummary, Error> {
        crash_point("status-on-entry");
        let event: StatusEvent = parse_event(payload)?;
        let run = &event.run_id;
        let started = event.started_at.as_deref().and_then(parse_time);
        let must_end_by = run_deadline(started, event.run_timeout_seconds);
        let (spec, record, progress) = self.finished_run(run, deadline, must_end_by).await?;
        let summary = RunSummary {
            run_id: run.clone(),
            source: spec.source.to_string(),
            destination: spec.destination.to_string(),
            files: progress.selected,
            completed: progress.completed,
            failed: progress.failed,
            skipped: progress.skipped,
            bytes: progress.bytes,
            verified_by_checksum: progress.by_checksum.min(progress.completed),
            verified_by_etag: progress.completed.saturating_sub(progress.by_checksum),
            plan: spec
                .dry_run
                .then(|| record.plan.clone().unwrap_or_default().into()),
        };
        let cause = if progress.verdict() == Verdict::Failed {
            let listed = self.records.failed_files(run, FAILED_FILES_LISTED).await?;
            Some(failure_cause(&progress, &listed))
        } else {
            None
        };
        let verdict = RunResult { summary, cause };
        // A repeated call after delivery answers the same without touching the activity.
        if record.delivered.is_none() {
            self.deliver(&event, record.task_tokens, &verdict, deadline)
                .await?;
        }
        let RunResult { summary, cause } = verdict;
        info!(run_id = %run, files = summary.files, completed = summary.completed, failed = summary.failed,
              bytes = summary.bytes, "run finished");
        match cause {
            Some(cause) => Err(Error::TransferFailed { cause }),
            None => Ok(summary),
        }
    }

    /// The run once every selected file has an outcome. While it has not, its counters
    /// are read again after a pause (`next_check`: about when the files still moving
    /// should be done, at most the check interval), as long as this call may still wait (and
    /// then poll for the activity task before its deadline), and the run's tokens are
    /// kept alive; after that the answer is `TransferIncomplete`, which the state machine
    /// retries, or `RunTimedOut` once the run is past its own deadline.
    async fn finished_run(
        &self,
        run: &RunId,
        deadline: Option<SystemTime>,
        must_end_by: Option<SystemTime>,
    ) -> Result<(RunSpec, RunRecord, RunProgress), Error> {
        let started = Instant::now();
        let mut heartbeaten: Option<Instant> = None;
        // What the last read found still moving, and when.
        let mut earlier: Option<(u64, Instant)> = None;
        loop {
            let view = self.records.run_view(run).await?;
            let read_at = Instant::now();
            let mut still_moving = None;
            let (tokens, detail) = match view.map(|v| (v.record.spec.clone(), v)) {
                Some((Some(spec), RunView { record, progress })) => match progress.verdict() {
                    Verdict::Succeeded | Verdict::Failed => return Ok((spec, record, progress)),
                    Verdict::Listing => (
                        record.task_tokens,
                        format!(
                            "master is still listing; {} files selected so far, {} done",
                            progress.selected,
                            progress.completed + progress.failed + progress.skipped
                        ),
                    ),
                    Verdict::Moving { remaining: moving } => {
                        still_moving = Some(moving);
                        (
                            record.task_tokens,
                            format!("{moving} of {} files are still moving", progress.selected),
                        )
                    }
                },
                Some((None, RunView { record, .. })) => (
                    record.task_tokens,
                    "master has not recorded the run yet".into(),
                ),
                None => (Vec::new(), "master has not recorded the run yet".into()),
            };
            // The run goes on: the tokens kept for it must stay alive until it ends.
            if heartbeaten.is_none_or(|at| at.elapsed() >= self.heartbeat_every) {
                self.heartbeat(run, &tokens).await;
                heartbeaten = Some(Instant::now());
            }
            if must_end_by.is_some_and(|end| SystemTime::now() >= end) {
                return Err(Error::RunTimedOut {
                    run: run.clone(),
                    detail,
                });
            }
            let interval = next_check(
                self.settings.check_interval,
                still_moving,
                earlier.map(|(before, at)| (before, read_at.duration_since(at))),
            );
            earlier = still_moving.map(|moving| (moving, read_at));
            if !may_wait(
                started.elapsed(),
                interval,
                self.settings.run_wait,
                deadline.map(remaining),
                self.settings.activity_poll + POLL_MARGIN,
            ) {
                return Err(Error::TransferIncomplete {
                    run: run.clone(),
                    detail,
                });
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Completes the run's activity task with the verdict: with a token recorded for the
    /// run, or else one polled for (and recorded before it is used).
    async fn deliver(
        &self,
        event: &StatusEvent,
        recorded: Vec<String>,
        verdict: &RunResult,
        deadline: Option<SystemTime>,
    ) -> Result<(), Error> {
        let run = &event.run_id;
        let mut tokens = recorded;
        let mut polls = 0;
        loop {
            for token in std::mem::take(&mut tokens) {
                match self.send(&token, verdict).await {
                    Ok(()) => {
                        crash_point("status-after-delivery");
                        self.note_delivered(run, verdict.delivered()).await;
                        return Ok(());
                    }
                    Err(e) if TOKEN_GONE.iter().any(|code| e.code_is(code)) => {
                        match self.activity_state(event, &e).await? {
                            ActivityState::Delivered { succeeded } => {
                                info!(run_id = %run, "the run's result was delivered before");
                                self.note_delivered(run, delivered(succeeded)).await;
                                return Ok(());
                            }
                            ActivityState::Waiting => {
                                info!(run_id = %run, "a recorded task token lapsed; waiting for its successor");
                                self.records.forget_token(run, &token).await?;
                            }
                            ActivityState::Ended => {
                                return Err(Error::ActivityTaskGone {
                                    run: run.clone(),
                                    source: e,
                                });
                            }
                        }
                    }
                    Err(e) => return Err(Error::Activity(e)),
                }
            }
            if !may_poll(
                deadline.map(remaining),
                self.settings.activity_poll + POLL_MARGIN,
                polls,
                POLLS_WITHOUT_DEADLINE,
            ) {
                return self.no_token_yet(event).await;
            }
            polls += 1;
            if let Some(token) = self.poll(run).await? {
                tokens.push(token);
                continue;
            }
            // Another run's status check may have recorded this run's token meanwhile.
            tokens = self
                .records
                .run_record(run)
                .await?
                .map(|r| r.task_tokens)
                .unwrap_or_default();
        }
    }

    /// No token of the run's task came within this call. Unless the execution's history
    /// shows the result delivered already (by a call whose token was since forgotten),
    /// the answer is `ActivityTaskPending`, which the state machine retries.
    async fn no_token_yet(&self, event: &StatusEvent) -> Result<(), Error> {
        let run = &event.run_id;
        let pending = || Error::ActivityTaskPending { run: run.clone() };
        if event.execution.is_none() {
            return Err(pending());
        }
        let nothing = AwsError::permanent("GetActivityTask", "no task token came");
        match self.activity_state(event, &nothing).await? {
            ActivityState::Delivered { succeeded } => {
                self.note_delivered(run, delivered(succeeded)).await;
                Ok(())
            }
            ActivityState::Waiting => Err(pending()),
            ActivityState::Ended => Err(Error::ActivityTaskGone {
                run: run.clone(),
                source: nothing,
            }),
        }
    }

    /// Notes on the run's item that its result was delivered. The delivery stands even if
    /// this fails: a later call would find its token closed and the history would tell.
    async fn note_delivered(&self, run: &RunId, how: Delivered) {
        if let Err(e) = self.records.mark_delivered(run, how).await {
            warn!(run_id = %run, error = %e, "the result was delivered but could not be noted");
        }
    }
}

/// A time as Step Functions writes it (`$$.Execution.StartTime`, RFC 3339); `None` if
/// it is not one.
fn parse_time(raw: &str) -> Option<SystemTime> {
    let time =
        aws_smithy_types::DateTime::from_str(raw, aws_smithy_types::date_time::Format::DateTime)
            .ok()?;
    SystemTime::try_from(time).ok()
}

fn delivered(succeeded: bool) -> Delivered {
    if succeeded {
        Delivered::Succeeded
    } else {
        Delivered::Failed
    }
}

/// The Lambda handler: a configuration error read at cold start is every invocation's answer.
pub async fn handle(
    status: &Result<Status, ConfigError>,
    event: LambdaEvent<Value>,
) -> Result<RunSummary, Error> {
    let status = common::lambda::configured::<_, Error>(status)?;
    status
        .handle(event.payload, common::lambda::deadline(&event.context))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executions_start_is_read_as_step_functions_writes_it() {
        let start = parse_time("2026-11-28T10:00:00.250Z").unwrap();
        assert_eq!(
            start.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
            Duration::from_millis(1_795_860_000_250)
        );
        assert_eq!(
            parse_time("2026-11-28T10:00:00Z"),
            Some(start - Duration::from_millis(250))
        );
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn a_delivery_is_noted_as_what_the_history_says_it_was() {
        assert_eq!(delivered(true), Delivered::Succeeded);
        assert_eq!(delivered(false), Delivered::Failed);
    }

    #[test]
    fn every_error_type_is_listed() {
        let run = RunId::parse("r").unwrap();
        let samples = [
            Error::Config(ConfigError {
                variable: "V",
                problem: "p".into(),
            }),
            Error::InvalidEvent(EventError("e".into())),
            Error::Store(StoreError::Aws(AwsError::permanent("Op", "m"))),
            Error::Store(StoreError::Aws(AwsError {
                transient: true,
                ..AwsError::permanent("Op", "m")
            })),
            Error::TransferIncomplete {
                run: run.clone(),
                detail: "d".into(),
            },
            Error::RunTimedOut {
                run: run.clone(),
                detail: "d".into(),
            },
            Error::TransferFailed { cause: "c".into() },
            Error::ActivityTaskPending { run: run.clone() },
            Error::ActivityTaskGone {
                run,
                source: AwsError::permanent("Op", "m"),
            },
            Error::Activity(AwsError::permanent("Op", "m")),
            Error::Activity(AwsError {
                transient: true,
                ..AwsError::permanent("Op", "m")
            }),
        ];
        let seen: std::collections::BTreeSet<_> = samples.iter().map(Error::error_type).collect();
        let listed: std::collections::BTreeSet<_> = ERROR_TYPES.iter().copied().collect();
        assert_eq!(seen, listed);
    }
}
