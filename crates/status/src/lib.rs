//! `status`: decides from a run's counters whether it is finished, and if so completes
//! the run's activity task: task success with the run summary, or task failure naming
//! the files that failed. While the run is not finished it reads the counters again
//! every `STATUS_CHECK_INTERVAL_MS`, for up to `STATUS_WAIT_SECONDS`, so that the
//! execution ends within about one interval of the last file instead of at the state
//! machine's next retry.
//!
//! `GetActivityTask` hands out whichever execution's task comes next. A task for
//! another run is parked on that run's item, where that run's own status check finds
//! it; a token is never used for the wrong run and never dropped.

use std::time::{Duration, Instant, SystemTime};

use common::lambda::remaining;
use common::progress::{RunProgress, TaskRoute, Verdict, failure_cause, route_task};
use common::run::{RunSummary, StatusEvent, parse_event};
use common::store::{Delivered, RunRecord, RunView};
use common::{
    AwsError, Clients, Config, ConfigError, EventError, RunId, RunSpec, StatusSettings, Store,
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
            Error::Store(_) => "StatusTableError",
            Error::TransferIncomplete { .. } => "TransferIncomplete",
            Error::TransferFailed { .. } => TRANSFER_FAILED,
            Error::ActivityTaskPending { .. } => "ActivityTaskPending",
            Error::ActivityTaskGone { .. } => "ActivityTaskGone",
            Error::Activity(_) => "ActivityError",
        }
    }
}

/// Every `errorType` this function can raise, for checking the state machine against.
pub const ERROR_TYPES: &[&str] = &[
    "ConfigError",
    "InvalidEvent",
    "StatusTableError",
    "TransferIncomplete",
    "TransferFailed",
    "ActivityTaskPending",
    "ActivityTaskGone",
    "ActivityError",
];

common::diagnostic!(Error);

pub struct Status {
    sfn: aws_sdk_sfn::Client,
    store: Store,
    settings: StatusSettings,
}

impl Status {
    /// Reads the configuration and builds the clients, once per cold start.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let config = Config::from_env()?;
        let settings = StatusSettings::from_env()?;
        let clients = Clients::from_env(&config, "status").await;
        Ok(Self::new(&clients, &config, settings))
    }

    pub fn new(clients: &Clients, config: &Config, settings: StatusSettings) -> Self {
        Status {
            sfn: clients.sfn.clone(),
            store: Store::new(clients.dynamodb.clone(), &config.table_name, config.run_ttl),
            settings,
        }
    }

    #[tracing::instrument(skip_all)]
    pub async fn handle(
        &self,
        payload: Value,
        deadline: Option<SystemTime>,
    ) -> Result<RunSummary, Error> {
        let StatusEvent { run_id: run } = parse_event(payload)?;
        let (spec, record, progress) = self.finished_run(&run, deadline).await?;
        let summary = RunSummary {
            run_id: run.clone(),
            source: spec.source.to_string(),
            destination: spec.destination.to_string(),
            files: progress.selected,
            completed: progress.completed,
            failed: progress.failed,
            bytes: progress.bytes,
        };
        let failed = progress.verdict() == Verdict::Failed;
        let cause = if failed {
            let listed = self.store.failed_files(&run, FAILED_FILES_LISTED).await?;
            Some(failure_cause(&progress, &listed))
        } else {
            None
        };
        // A repeated call after delivery answers the same without touching the activity.
        if record.delivered.is_none() {
            let token = self.task_token(&run, record.task_token, deadline).await?;
            self.deliver(&run, &token, &summary, cause.as_deref())
                .await?;
        }
        info!(run_id = %run, files = summary.files, completed = summary.completed, failed = summary.failed,
              bytes = summary.bytes, "run finished");
        match cause {
            Some(cause) => Err(Error::TransferFailed { cause }),
            None => Ok(summary),
        }
    }

    /// The run once every selected file has an outcome. While it has not, its counters
    /// are read again every check interval, as long as this call may still wait (and
    /// then poll for the activity task before its deadline); after that the answer is
    /// `TransferIncomplete`, which the state machine retries.
    async fn finished_run(
        &self,
        run: &RunId,
        deadline: Option<SystemTime>,
    ) -> Result<(RunSpec, RunRecord, RunProgress), Error> {
        let started = Instant::now();
        loop {
            let view = self.store.run_view(run).await?;
            let detail = match view.map(|v| (v.record.spec.clone(), v)) {
                Some((Some(spec), RunView { record, progress })) => match progress.verdict() {
                    Verdict::Succeeded | Verdict::Failed => return Ok((spec, record, progress)),
                    Verdict::Listing => format!(
                        "master is still listing; {} files selected so far, {} done",
                        progress.selected,
                        progress.completed + progress.failed
                    ),
                    Verdict::Moving { remaining } => format!(
                        "{remaining} of {} files are still moving",
                        progress.selected
                    ),
                },
                _ => "master has not recorded the run yet".into(),
            };
            let interval = self.settings.check_interval;
            let may_wait = started.elapsed() + interval <= self.settings.run_wait
                && deadline.is_some_and(|d| {
                    remaining(d) > interval + self.settings.activity_poll + POLL_MARGIN
                });
            if !may_wait {
                return Err(Error::TransferIncomplete {
                    run: run.clone(),
                    detail,
                });
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// This run's task token: parked on the run by an earlier poll, or polled for now.
    async fn task_token(
        &self,
        run: &RunId,
        parked: Option<String>,
        deadline: Option<SystemTime>,
    ) -> Result<String, Error> {
        let mut parked = parked;
        let mut polls = 0;
        loop {
            if let Some(token) = parked {
                return Ok(token);
            }
            let may_poll = match deadline {
                Some(d) => remaining(d) > self.settings.activity_poll + POLL_MARGIN,
                None => polls < POLLS_WITHOUT_DEADLINE,
            };
            if !may_poll {
                return Err(Error::ActivityTaskPending { run: run.clone() });
            }
            polls += 1;
            let task = self
                .sfn
                .get_activity_task()
                .activity_arn(&self.settings.activity_arn)
                .worker_name(&self.settings.worker_name)
                .send()
                .await
                .map_err(|e| Error::Activity(AwsError::from_sdk("GetActivityTask", e)))?;
            if let Some(token) = task.task_token.filter(|t| !t.is_empty()) {
                match route_task(task.input.as_deref(), run) {
                    TaskRoute::Mine => return Ok(token),
                    TaskRoute::Other(owner) => {
                        self.store.park_token(&owner, &token).await?;
                        info!(run_id = %run, owner = %owner, "parked another run's task token");
                    }
                    TaskRoute::Unroutable(problem) => self.refuse(&token, &problem).await,
                }
            }
            // Another run's status check may have parked this run's token meanwhile.
            parked = self.store.run_record(run).await?.and_then(|r| r.task_token);
        }
    }

    /// Fails a task that no run can claim, so its execution ends now instead of at its timeout.
    async fn refuse(&self, token: &str, problem: &str) {
        warn!(problem, "refusing an activity task with no valid run_id");
        let sent = self
            .sfn
            .send_task_failure()
            .task_token(token)
            .error(INVALID_ACTIVITY_INPUT)
            .cause(format!(
                "{problem}; the activity task's input must be {{\"run_id\": \"<execution name>\"}}"
            ))
            .send()
            .await;
        if let Err(e) = sent {
            warn!(error = %AwsError::from_sdk("SendTaskFailure", e), "could not refuse the activity task");
        }
    }

    async fn deliver(
        &self,
        run: &RunId,
        token: &str,
        summary: &RunSummary,
        cause: Option<&str>,
    ) -> Result<(), Error> {
        let (sent, how) = match cause {
            None => {
                let output = serde_json::to_string(summary).expect("a summary always serializes");
                let sent = self
                    .sfn
                    .send_task_success()
                    .task_token(token)
                    .output(output)
                    .send()
                    .await;
                (
                    sent.map(drop)
                        .map_err(|e| AwsError::from_sdk("SendTaskSuccess", e)),
                    Delivered::Succeeded,
                )
            }
            Some(cause) => {
                let sent = self
                    .sfn
                    .send_task_failure()
                    .task_token(token)
                    .error(TRANSFER_FAILED)
                    .cause(cause)
                    .send()
                    .await;
                (
                    sent.map(drop)
                        .map_err(|e| AwsError::from_sdk("SendTaskFailure", e)),
                    Delivered::Failed,
                )
            }
        };
        match sent {
            Ok(()) => {}
            Err(e)
                if e.code_is("TaskTimedOut")
                    || e.code_is("InvalidToken")
                    || e.code_is("TaskDoesNotExist") =>
            {
                self.store.mark_delivered(run, how).await?;
                return Err(Error::ActivityTaskGone {
                    run: run.clone(),
                    source: e,
                });
            }
            Err(e) => return Err(Error::Activity(e)),
        }
        self.store.mark_delivered(run, how).await?;
        Ok(())
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
    fn every_error_type_is_listed() {
        let run = RunId::parse("r").unwrap();
        let samples = [
            Error::Config(ConfigError {
                variable: "V",
                problem: "p".into(),
            }),
            Error::InvalidEvent(EventError("e".into())),
            Error::Store(StoreError::Aws(AwsError::permanent("Op", "m"))),
            Error::TransferIncomplete {
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
        ];
        let seen: std::collections::BTreeSet<_> = samples.iter().map(Error::error_type).collect();
        let listed: std::collections::BTreeSet<_> = ERROR_TYPES.iter().copied().collect();
        assert_eq!(seen, listed);
    }
}
