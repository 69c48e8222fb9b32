//! The local Step Functions (moto plus `local/moto_server.py`'s adaptations) runs
//! activity tasks as AWS does: executions schedule them, `GetActivityTask` long-polls and
//! hands each to one worker, and `SendTaskSuccess`/`SendTaskFailure` end the task with
//! the worker's output, or its error and cause. As on AWS, and unlike moto alone, a closed
//! task's token answers `TaskTimedOut`, a missed heartbeat is `States.HeartbeatTimeout`,
//! and payloads over the service's limits are refused.

use std::time::Duration;

use aws_sdk_sfn::Client;
use aws_sdk_sfn::types::ExecutionStatus;
use integration_tests::{moto_url, sdk_config, unique};
use serde_json::{Value, json};

const ROLE: &str = "arn:aws:iam::123456789012:role/local";

async fn client() -> Client {
    Client::new(&sdk_config(moto_url()).await)
}

/// An activity and a state machine whose one state is a task on it, given the run id.
async fn activity_machine(sfn: &Client) -> (String, String) {
    let activity = sfn
        .create_activity()
        .name(unique("activity"))
        .send()
        .await
        .unwrap()
        .activity_arn;
    let definition = json!({
        "StartAt": "Await",
        "States": {"Await": {
            "Type": "Task", "Resource": activity,
            "Parameters": {"run_id.$": "$$.Execution.Name"},
            "TimeoutSeconds": 60, "End": true
        }}
    });
    let machine = sfn
        .create_state_machine()
        .name(unique("machine"))
        .role_arn(ROLE)
        .definition(definition.to_string())
        .send()
        .await
        .unwrap()
        .state_machine_arn;
    (activity, machine)
}

async fn start(sfn: &Client, machine: &str, name: &str) -> String {
    sfn.start_execution()
        .state_machine_arn(machine)
        .name(name)
        .input("{}")
        .send()
        .await
        .unwrap()
        .execution_arn
}

/// The next task of the activity: (token, input).
async fn next_task(sfn: &Client, activity: &str) -> Option<(String, Value)> {
    let task = sfn
        .get_activity_task()
        .activity_arn(activity)
        .worker_name("test")
        .send()
        .await
        .unwrap();
    let token = task.task_token.filter(|t| !t.is_empty())?;
    Some((token, serde_json::from_str(task.input.as_deref()?).unwrap()))
}

/// Waits for the execution to end; its status, output, error and cause.
async fn outcome(
    sfn: &Client,
    execution: &str,
) -> (
    ExecutionStatus,
    Option<String>,
    Option<String>,
    Option<String>,
) {
    for _ in 0..200 {
        let described = sfn
            .describe_execution()
            .execution_arn(execution)
            .send()
            .await
            .unwrap();
        if described.status != ExecutionStatus::Running {
            return (
                described.status,
                described.output,
                described.error,
                described.cause,
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{execution} is still running after 20 s");
}

#[tokio::test]
async fn an_execution_schedules_its_task_and_the_workers_output_ends_it() {
    // GIVEN an execution waiting on an activity task
    let sfn = client().await;
    let (activity, machine) = activity_machine(&sfn).await;
    let execution = start(&sfn, &machine, "run-ok").await;

    // WHEN a worker takes the task and succeeds it
    let (token, input) = next_task(&sfn, &activity).await.expect("a task");
    assert_eq!(input, json!({"run_id": "run-ok"}));
    sfn.send_task_success()
        .task_token(&token)
        .output(r#"{"files": 3}"#)
        .send()
        .await
        .unwrap();

    // THEN the execution succeeds with the worker's output
    let (status, output, _, _) = outcome(&sfn, &execution).await;
    assert_eq!(status, ExecutionStatus::Succeeded);
    assert_eq!(
        serde_json::from_str::<Value>(&output.unwrap()).unwrap(),
        json!({"files": 3})
    );
}

#[tokio::test]
async fn a_task_failure_ends_the_execution_with_its_error_and_cause() {
    let sfn = client().await;
    let (activity, machine) = activity_machine(&sfn).await;
    let execution = start(&sfn, &machine, "run-bad").await;
    let (token, _) = next_task(&sfn, &activity).await.expect("a task");
    sfn.send_task_failure()
        .task_token(&token)
        .error("TransferFailed")
        .cause("1 of 2 files failed to move:\nraw/a.csv: AccessDenied")
        .send()
        .await
        .unwrap();
    let (status, _, error, cause) = outcome(&sfn, &execution).await;
    assert_eq!(status, ExecutionStatus::Failed);
    assert_eq!(error.as_deref(), Some("TransferFailed"));
    assert_eq!(
        cause.as_deref(),
        Some("1 of 2 files failed to move:\nraw/a.csv: AccessDenied")
    );
}

#[tokio::test]
async fn a_waiting_poll_gets_the_task_scheduled_after_it_started() {
    let sfn = client().await;
    let (activity, machine) = activity_machine(&sfn).await;
    let poll = tokio::spawn({
        let (sfn, activity) = (sfn.clone(), activity.clone());
        async move { next_task(&sfn, &activity).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let execution = start(&sfn, &machine, "run-late").await;
    let (token, input) = poll.await.unwrap().expect("the poll receives the task");
    assert_eq!(input["run_id"], "run-late");
    sfn.send_task_success()
        .task_token(&token)
        .output("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        outcome(&sfn, &execution).await.0,
        ExecutionStatus::Succeeded
    );
}

#[tokio::test]
async fn each_task_goes_to_one_worker_and_an_empty_poll_answers_no_task() {
    let sfn = client().await;
    let (activity, machine) = activity_machine(&sfn).await;
    let first = start(&sfn, &machine, "run-a").await;
    let second = start(&sfn, &machine, "run-b").await;
    let (token_a, input_a) = next_task(&sfn, &activity).await.expect("a task");
    let (token_b, input_b) = next_task(&sfn, &activity).await.expect("a task");
    assert_ne!(token_a, token_b);
    let mut runs = [input_a["run_id"].clone(), input_b["run_id"].clone()];
    runs.sort_by_key(|v| v.to_string());
    assert_eq!(runs, [json!("run-a"), json!("run-b")]);
    // Both tasks are handed out: the next poll waits its time and answers nothing.
    assert!(next_task(&sfn, &activity).await.is_none());
    for token in [token_a, token_b] {
        sfn.send_task_success()
            .task_token(token)
            .output("{}")
            .send()
            .await
            .unwrap();
    }
    assert_eq!(outcome(&sfn, &first).await.0, ExecutionStatus::Succeeded);
    assert_eq!(outcome(&sfn, &second).await.0, ExecutionStatus::Succeeded);
}

#[tokio::test]
async fn an_execution_started_without_a_name_gets_one() {
    let sfn = client().await;
    let (activity, machine) = activity_machine(&sfn).await;
    let execution = sfn
        .start_execution()
        .state_machine_arn(&machine)
        .send()
        .await
        .unwrap()
        .execution_arn;
    let name = execution.rsplit(':').next().unwrap().to_string();
    assert_ne!(name, "None");
    assert_eq!(name.len(), 36, "a generated id, as AWS gives: {name}");
    let (token, input) = next_task(&sfn, &activity).await.expect("a task");
    assert_eq!(input["run_id"], name.as_str());
    sfn.send_task_success()
        .task_token(token)
        .output("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        outcome(&sfn, &execution).await.0,
        ExecutionStatus::Succeeded
    );
}

/// A state machine whose one state is a task on `activity` with a heartbeat of
/// `heartbeat` seconds, retried when the heartbeat is missed.
async fn heartbeat_machine(sfn: &Client, activity: &str, heartbeat: u32) -> String {
    let definition = json!({
        "StartAt": "Await",
        "States": {"Await": {
            "Type": "Task", "Resource": activity,
            "Parameters": {"run_id.$": "$$.Execution.Name"},
            "TimeoutSeconds": 60, "HeartbeatSeconds": heartbeat,
            "Retry": [{"ErrorEquals": ["States.HeartbeatTimeout"], "IntervalSeconds": 1,
                       "MaxAttempts": 3}],
            "End": true
        }}
    });
    sfn.create_state_machine()
        .name(unique("heartbeat"))
        .role_arn(ROLE)
        .definition(definition.to_string())
        .send()
        .await
        .unwrap()
        .state_machine_arn
}

fn error_code<T, E: aws_smithy_types::error::metadata::ProvideErrorMetadata>(
    result: Result<T, E>,
) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e.code().unwrap_or("(no code)").to_string(),
    }
}

#[tokio::test]
async fn an_answered_task_answers_task_timed_out_to_any_later_call() {
    // GIVEN a task answered once
    let sfn = client().await;
    let (activity, machine) = activity_machine(&sfn).await;
    let execution = start(&sfn, &machine, "answered").await;
    let (token, _) = next_task(&sfn, &activity).await.expect("a task");
    sfn.send_task_success()
        .task_token(&token)
        .output("{}")
        .send()
        .await
        .unwrap();

    // THEN a second answer, a failure or a heartbeat with its token is TaskTimedOut, as
    // on AWS, and a token never handed out is InvalidToken
    let again = sfn
        .send_task_success()
        .task_token(&token)
        .output("{}")
        .send()
        .await;
    let failure = sfn
        .send_task_failure()
        .task_token(&token)
        .error("E")
        .send()
        .await;
    let heartbeat = sfn.send_task_heartbeat().task_token(&token).send().await;
    assert_eq!(error_code(again), "TaskTimedOut");
    assert_eq!(error_code(failure), "TaskTimedOut");
    assert_eq!(error_code(heartbeat), "TaskTimedOut");
    let unknown = sfn
        .send_task_success()
        .task_token("not-a-token")
        .output("{}")
        .send()
        .await;
    assert_eq!(error_code(unknown), "InvalidToken");
    assert_eq!(
        outcome(&sfn, &execution).await.0,
        ExecutionStatus::Succeeded
    );
}

#[tokio::test]
async fn a_missed_heartbeat_is_a_heartbeat_timeout_and_the_retry_hands_out_a_new_token() {
    // GIVEN a task with a 1 s heartbeat, taken by a worker that then goes silent
    let sfn = client().await;
    let (activity, _) = activity_machine(&sfn).await;
    let machine = heartbeat_machine(&sfn, &activity, 1).await;
    let execution = start(&sfn, &machine, "silent-worker").await;
    let (lost, _) = next_task(&sfn, &activity).await.expect("a task");

    // WHEN the heartbeat is missed
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // THEN the lost token is closed, the retry schedules the task again with a new token,
    // and answering that one ends the execution
    let late = sfn
        .send_task_success()
        .task_token(&lost)
        .output("{}")
        .send()
        .await;
    assert_eq!(error_code(late), "TaskTimedOut");
    let (fresh, input) = next_task(&sfn, &activity).await.expect("a new task");
    assert_ne!(fresh, lost);
    assert_eq!(input["run_id"], "silent-worker");
    sfn.send_task_heartbeat()
        .task_token(&fresh)
        .send()
        .await
        .unwrap();
    sfn.send_task_success()
        .task_token(&fresh)
        .output(r#"{"done": true}"#)
        .send()
        .await
        .unwrap();
    let (status, output, _, _) = outcome(&sfn, &execution).await;
    assert_eq!(status, ExecutionStatus::Succeeded);
    assert_eq!(output.as_deref(), Some(r#"{"done": true}"#));
    // AND the history names the missed heartbeat as AWS does, and lists its newest
    // events first when asked
    let history = sfn
        .get_execution_history()
        .execution_arn(&execution)
        .send()
        .await
        .unwrap();
    let newest_first = sfn
        .get_execution_history()
        .execution_arn(&execution)
        .reverse_order(true)
        .send()
        .await
        .unwrap();
    let kinds = |h: &aws_sdk_sfn::operation::get_execution_history::GetExecutionHistoryOutput| {
        h.events()
            .iter()
            .map(|e| e.r#type.as_str().to_string())
            .collect::<Vec<_>>()
    };
    let mut reversed = kinds(&history);
    reversed.reverse();
    assert_eq!(kinds(&newest_first), reversed);
    assert_eq!(reversed[0], "ExecutionSucceeded");
    let timed_out: Vec<_> = history
        .events()
        .iter()
        .filter_map(|e| e.activity_timed_out_event_details())
        .map(|d| d.error().unwrap_or_default().to_string())
        .collect();
    assert_eq!(timed_out, ["States.HeartbeatTimeout"]);
}

#[tokio::test]
async fn payloads_over_the_step_functions_limits_are_refused() {
    let sfn = client().await;
    let (activity, machine) = activity_machine(&sfn).await;
    // 256 KiB of input or task output, 32,768 characters of failure cause
    let over = format!("\"{}\"", "x".repeat(256 * 1024));
    let input = sfn
        .start_execution()
        .state_machine_arn(&machine)
        .name("too-big")
        .input(&over)
        .send()
        .await;
    assert_eq!(error_code(input), "ValidationException");
    let execution = start(&sfn, &machine, "limits").await;
    let (token, _) = next_task(&sfn, &activity).await.expect("a task");
    let output = sfn
        .send_task_success()
        .task_token(&token)
        .output(&over)
        .send()
        .await;
    assert_eq!(error_code(output), "ValidationException");
    let cause = sfn
        .send_task_failure()
        .task_token(&token)
        .error("E")
        .cause("c".repeat(32_769))
        .send()
        .await;
    assert_eq!(error_code(cause), "ValidationException");
    sfn.send_task_failure()
        .task_token(&token)
        .error("E")
        .cause("c".repeat(32_768))
        .send()
        .await
        .unwrap();
    assert_eq!(outcome(&sfn, &execution).await.0, ExecutionStatus::Failed);
}

#[tokio::test]
async fn a_state_whose_result_exceeds_256_kib_fails_with_data_limit_exceeded() {
    // GIVEN a state that doubles its 150 KiB input, and one that passes it on
    let sfn = client().await;
    let machine = |parameters: Value| {
        let definition = json!({
            "StartAt": "Grow",
            "States": {"Grow": {"Type": "Pass", "Parameters": parameters, "End": true}}
        });
        let sfn = sfn.clone();
        async move {
            sfn.create_state_machine()
                .name(unique("grow"))
                .role_arn(ROLE)
                .definition(definition.to_string())
                .send()
                .await
                .unwrap()
                .state_machine_arn
        }
    };
    let doubling = machine(json!({"a.$": "$.big", "b.$": "$.big"})).await;
    let passing = machine(json!({"a.$": "$.big"})).await;
    let input = json!({"big": "x".repeat(150 * 1024)}).to_string();
    let run = |machine: String, name: &'static str| {
        let (sfn, input) = (sfn.clone(), input.clone());
        async move {
            let execution = sfn
                .start_execution()
                .state_machine_arn(machine)
                .name(name)
                .input(input)
                .send()
                .await
                .unwrap()
                .execution_arn;
            outcome(&sfn, &execution).await
        }
    };

    // THEN the 300 KiB result fails the execution as AWS fails it; 150 KiB passes
    let (status, _, error, _) = run(doubling, "doubles").await;
    assert_eq!(status, ExecutionStatus::Failed);
    assert_eq!(error.as_deref(), Some("States.DataLimitExceeded"));
    assert_eq!(run(passing, "passes").await.0, ExecutionStatus::Succeeded);
}
