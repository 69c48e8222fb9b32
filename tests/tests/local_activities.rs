//! The local Step Functions (moto plus `local/moto_server.py`'s adaptations) runs
//! activity tasks as AWS does: executions schedule them, `GetActivityTask` long-polls and
//! hands each to one worker, and `SendTaskSuccess`/`SendTaskFailure` end the task with
//! the worker's output, or its error and cause.

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
