//! Status's calls to the Step Functions activity: polling for task tokens, heartbeats,
//! delivering a run's result, and reading the execution's history when a token is
//! refused.

use common::AwsError;
use common::crash::crash_point;
use common::rules::activity::{ActivityState, TaskRoute, activity_state, route_task};
use common::rules::events::StatusEvent;
use common::rules::run::RunId;
use tracing::{info, warn};

use crate::{Error, INVALID_ACTIVITY_INPUT, RunResult, Status, TRANSFER_FAILED};

impl Status {
    /// Tells Step Functions that the holders of these tokens are alive. A token it no
    /// longer takes is left for delivery to sort out.
    pub(crate) async fn heartbeat(&self, run: &RunId, tokens: &[String]) {
        for token in tokens {
            let sent = self
                .sfn
                .send_task_heartbeat()
                .task_token(token)
                .send()
                .await;
            if let Err(e) = sent {
                let e = AwsError::from_sdk("SendTaskHeartbeat", e);
                info!(run_id = %run, error = %e, "a recorded task token takes no heartbeat");
            }
        }
    }

    /// Polls the activity once. A task of this run is recorded on its item and
    /// returned; another run's is recorded on that run's item; one that names no run is
    /// failed so that its execution ends.
    pub(crate) async fn poll(&self, run: &RunId) -> Result<Option<String>, Error> {
        let task = self
            .sfn
            .get_activity_task()
            .activity_arn(&self.settings.activity_arn)
            .worker_name(&self.settings.worker_name)
            .send()
            .await
            .map_err(|e| Error::Activity(AwsError::from_sdk("GetActivityTask", e)))?;
        let Some(token) = task.task_token.filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        match route_task(task.input.as_deref(), run) {
            TaskRoute::Mine => {
                crash_point("status-after-own-token");
                self.records.record_token(run, &token).await?;
                Ok(Some(token))
            }
            TaskRoute::Other(owner) => {
                crash_point("status-before-recording-another-runs-token");
                self.records.record_token(&owner, &token).await?;
                info!(run_id = %run, owner = %owner, "recorded another run's task token");
                Ok(None)
            }
            TaskRoute::Unroutable(problem) => {
                self.refuse(&token, &problem).await;
                Ok(None)
            }
        }
    }

    /// Where the run's activity task stands, from its execution's history, after a
    /// token was refused with `refused`. Without the execution's ARN (a hand-made event)
    /// there is no telling, and the task counts as gone.
    pub(crate) async fn activity_state(
        &self,
        event: &StatusEvent,
        refused: &AwsError,
    ) -> Result<ActivityState, Error> {
        let Some(execution) = &event.execution else {
            return Err(Error::ActivityTaskGone {
                run: event.run_id.clone(),
                source: refused.clone(),
            });
        };
        let mut token = None;
        let mut newest_first: Vec<String> = Vec::new();
        loop {
            let page = self
                .sfn
                .get_execution_history()
                .execution_arn(execution)
                .reverse_order(true)
                .max_results(200)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| Error::Activity(AwsError::from_sdk("GetExecutionHistory", e)))?;
            newest_first.extend(page.events.iter().map(|e| e.r#type.as_str().to_string()));
            if let Some(state) = activity_state(newest_first.iter().map(String::as_str)) {
                return Ok(state);
            }
            if page.next_token.is_none() {
                return Ok(ActivityState::Waiting);
            }
            token = page.next_token;
        }
    }

    /// Sends the verdict with one token.
    pub(crate) async fn send(&self, token: &str, verdict: &RunResult) -> Result<(), AwsError> {
        match &verdict.cause {
            None => {
                let output =
                    serde_json::to_string(&verdict.summary).expect("a summary always serializes");
                self.sfn
                    .send_task_success()
                    .task_token(token)
                    .output(output)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| AwsError::from_sdk("SendTaskSuccess", e))
            }
            Some(cause) => self
                .sfn
                .send_task_failure()
                .task_token(token)
                .error(TRANSFER_FAILED)
                .cause(cause)
                .send()
                .await
                .map(drop)
                .map_err(|e| AwsError::from_sdk("SendTaskFailure", e)),
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
}
