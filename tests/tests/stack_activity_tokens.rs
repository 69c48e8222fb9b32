//! The activity task's token is never lost, on the local stack through the real state
//! machine: status dies or its calls fail at each step of handling a token, once, or
//! dies past every retry, and every execution still ends as it should (succeeded with
//! the summary, or `TransferFailed` naming the files) well before its run timeout. The
//! test stack's activity heartbeat is a few seconds, so a token lost with its holder
//! comes back fast.
//!
//! Faults and armed crashes apply to the whole stack, so the tests take turns.

use std::time::Duration;

use aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput;
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEventType};
use common::RunId;
use common::rules::records::Delivered;
use integration_tests::stack::{
    LocalStack, TASK_HEARTBEAT_SECONDS, activity_events, bucket_with, contents, duration, input,
    keys, lambda_failures, local_stack, moved_and_kept, output, records,
};
use serde_json::{Value, json};

/// Far longer than any of these runs may take: each must end well before it.
const RUN_TIMEOUT_SECONDS: u64 = 300;

fn timed(bucket: &str, extra: Value) -> Value {
    let mut extra = extra;
    extra["run_timeout_seconds"] = json!(RUN_TIMEOUT_SECONDS);
    input(bucket, extra)
}

/// The execution succeeded with every file moved, its activity task completed once, well
/// before its run timeout; answers its activity events.
async fn succeeded(
    stack: &LocalStack,
    execution: &str,
    described: &DescribeExecutionOutput,
    bucket: &str,
    files: &[String],
) -> Vec<(String, Option<String>)> {
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    let out = output(described);
    assert_eq!(
        (&out["files"], &out["completed"], &out["failed"]),
        (&json!(files.len()), &json!(files.len()), &json!(0))
    );
    assert_eq!(contents(stack, bucket).await, moved_and_kept(files, &[]));
    let events = activity_events(&stack.history(execution).await);
    let answered: Vec<_> = events
        .iter()
        .filter(|(kind, _)| kind == "ActivitySucceeded" || kind == "ActivityFailed")
        .collect();
    assert_eq!(answered.len(), 1, "{events:?}");
    assert_eq!(answered[0].0, "ActivitySucceeded");
    assert!(
        duration(described) < Duration::from_secs(RUN_TIMEOUT_SECONDS / 5),
        "took {:?}",
        duration(described)
    );
    let run = RunId::parse(described.name.as_deref().unwrap()).unwrap();
    let record = records(stack)
        .await
        .run_record(&run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.delivered, Some(Delivered::Succeeded));
    assert!(record.task_tokens.is_empty(), "{:?}", record.task_tokens);
    events
}

fn heartbeat_timeouts(events: &[(String, Option<String>)]) -> usize {
    events
        .iter()
        .filter(|(kind, error)| {
            kind == "ActivityTimedOut" && error.as_deref() == Some("States.HeartbeatTimeout")
        })
        .count()
}

#[tokio::test]
async fn a_status_that_dies_holding_its_own_unrecorded_token_costs_one_heartbeat() {
    // GIVEN a run whose status dies right after GetActivityTask hands it its own token,
    // before it records it anywhere
    let stack = local_stack();
    let files = keys("raw/f-", 20);
    let bucket = bucket_with(stack, &files).await;
    let _turn = stack.turn(json!({})).await;
    stack.arm_crash("status-after-own-token");

    // WHEN the execution runs
    let execution = stack
        .start("own-token-lost", &timed(&bucket, json!({})))
        .await;
    let described = stack.finished(&execution).await;

    // THEN the lost token timed out after its heartbeat, the task came back with a new
    // one, and the run ended with its summary
    assert!(stack.crashed("status-after-own-token"));
    let events = succeeded(stack, &execution, &described, &bucket, &files).await;
    assert_eq!(heartbeat_timeouts(&events), 1, "{events:?}");
    assert!(duration(&described) >= Duration::from_secs(TASK_HEARTBEAT_SECONDS));
}

#[tokio::test]
async fn a_status_that_dies_holding_another_runs_token_costs_that_run_one_heartbeat() {
    // GIVEN a slow run whose activity task is scheduled first, and a quick run whose
    // status takes the slow run's token and dies before recording it
    let stack = local_stack();
    let slow = keys("raw/slow/f-", 32);
    let quick = keys("raw/quick/f-", 4);
    let bucket = bucket_with(stack, &[slow.clone(), quick.clone()].concat()).await;
    let _turn = stack
        .turn(
            json!({"rules": [{"service": "s3", "operations": ["CopyObject"],
                                "key_contains": "raw/slow/", "latency_ms": 1500}]}),
        )
        .await;
    stack.arm_crash("status-before-recording-another-runs-token");
    let slow_run = stack
        .start(
            "slow-owner",
            &timed(
                &bucket,
                json!({"source_prefix": "raw/slow/",
                                   "destination_prefix": "refined/slow/"}),
            ),
        )
        .await;
    while !stack
        .history(&slow_run)
        .await
        .iter()
        .any(|e| e.r#type == HistoryEventType::ActivityScheduled)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // WHEN the quick run starts and finishes first
    let quick_run = stack
        .start(
            "quick-finder",
            &timed(
                &bucket,
                json!({"source_prefix": "raw/quick/",
                                   "destination_prefix": "refined/quick/"}),
            ),
        )
        .await;
    let (slow_done, quick_done) =
        tokio::join!(stack.finished(&slow_run), stack.finished(&quick_run));
    stack.set_faults(&json!({}));

    // THEN both succeed: the quick run's status was retried after it died, and the slow
    // run's lost token timed out and came back with a new one
    assert!(stack.crashed("status-before-recording-another-runs-token"));
    for (execution, described, files) in [
        (&slow_run, &slow_done, &slow),
        (&quick_run, &quick_done, &quick),
    ] {
        assert_eq!(
            described.status,
            ExecutionStatus::Succeeded,
            "{described:?}"
        );
        assert_eq!(output(described)["completed"], json!(files.len()));
        let events = activity_events(&stack.history(execution).await);
        let lost = if execution == &slow_run { 1 } else { 0 };
        assert_eq!(heartbeat_timeouts(&events), lost, "{execution}: {events:?}");
    }
    let failures = lambda_failures(&stack.history(&quick_run).await);
    assert!(
        failures.iter().any(|e| e == "Runtime.ExitError"),
        "{failures:?}"
    );
    let now = contents(stack, &bucket).await;
    for key in slow.iter().chain(&quick) {
        assert!(!now.contains_key(key), "{key} left at the source");
        assert!(now.contains_key(&key.replacen("raw/", "refined/", 1)));
    }
}

#[tokio::test]
async fn task_answers_that_fail_after_every_sdk_attempt_are_sent_again_by_the_next_call() {
    // GIVEN two runs, one whose files all move and one with a file that cannot be
    // copied, and Step Functions failing the first six SendTaskSuccess and the first six
    // SendTaskFailure (every attempt the SDK makes within one call)
    let stack = local_stack();
    let good = keys("raw/answer-ok/f-", 10);
    let mut partly = keys("raw/answer-bad/f-", 5);
    partly.push("raw/answer-bad/denied-1.csv".into());
    let bucket = bucket_with(stack, &[good.clone(), partly.clone()].concat()).await;
    let _turn = stack
        .turn(json!({"rules": [
            {"service": "states", "operations": ["SendTaskSuccess"], "callers": ["status"],
             "answer": "InternalServerError", "count": 6},
            {"service": "states", "operations": ["SendTaskFailure"], "callers": ["status"],
             "answer": "InternalServerError", "count": 6},
            {"service": "s3", "operations": ["CopyObject"], "key_contains": "denied-",
             "answer": "AccessDenied"},
        ]}))
        .await;

    // WHEN both run
    let run = |name: &'static str| {
        let input = timed(
            &bucket,
            json!({"source_prefix": format!("raw/{name}/"),
                   "destination_prefix": format!("refined/{name}/")}),
        );
        async move { stack.start(name, &input).await }
    };
    let (ok, bad) = tokio::join!(run("answer-ok"), run("answer-bad"));
    let (ok_done, bad_done) = tokio::join!(stack.finished(&ok), stack.finished(&bad));
    let injected = stack.injected();
    stack.set_faults(&json!({}));

    // THEN the first status call of each failed, the next one delivered the result:
    // the summary, or TransferFailed naming the file that could not be copied
    assert_eq!(injected.get("states InternalServerError"), Some(&12));
    assert_eq!(ok_done.status, ExecutionStatus::Succeeded, "{ok_done:?}");
    assert_eq!(output(&ok_done)["completed"], json!(10));
    assert_eq!(bad_done.status, ExecutionStatus::Failed, "{bad_done:?}");
    assert_eq!(bad_done.error.as_deref(), Some("TransferFailed"));
    let cause = bad_done.cause.clone().unwrap();
    assert!(cause.starts_with("1 of 6 files failed to move:"), "{cause}");
    assert!(
        cause.contains("raw/answer-bad/denied-1.csv: CopyObject: AccessDenied"),
        "{cause}"
    );
    for (execution, described) in [(&ok, &ok_done), (&bad, &bad_done)] {
        assert!(duration(described) < Duration::from_secs(RUN_TIMEOUT_SECONDS / 5));
        let failures = lambda_failures(&stack.history(execution).await);
        assert!(
            failures.iter().any(|e| e == "ActivityError"),
            "{failures:?}"
        );
    }
    let store = records(stack).await;
    let record = |run: &str| {
        let store = store.clone();
        let run = RunId::parse(run).unwrap();
        async move { store.run_record(&run).await.unwrap().unwrap() }
    };
    assert_eq!(
        record("answer-ok").await.delivered,
        Some(Delivered::Succeeded)
    );
    assert_eq!(
        record("answer-bad").await.delivered,
        Some(Delivered::Failed)
    );
    // every file but the denied one moved; that one stayed at its source
    let (moved, denied): (Vec<String>, Vec<String>) = good
        .iter()
        .chain(&partly)
        .cloned()
        .partition(|k| !k.contains("denied-"));
    assert_eq!(
        contents(stack, &bucket).await,
        moved_and_kept(&moved, &denied)
    );
}

#[tokio::test]
async fn a_task_success_whose_answer_is_lost_is_known_delivered_from_the_history() {
    // GIVEN a run whose SendTaskSuccess takes effect but whose answer never arrives,
    // so the SDK sends it again and Step Functions answers TaskTimedOut
    let stack = local_stack();
    let files = keys("raw/f-", 12);
    let bucket = bucket_with(stack, &files).await;
    let _turn = stack
        .turn(
            json!({"rules": [{"service": "states", "operations": ["SendTaskSuccess"],
                                "answer": "drop-after", "count": 1}]}),
        )
        .await;

    let execution = stack.start("lost-answer", &timed(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;
    let injected = stack.injected();
    stack.set_faults(&json!({}));

    // THEN status read the history, saw its result delivered, and the run succeeded
    // instead of failing with ActivityTaskGone
    assert_eq!(injected.get("states drop-after"), Some(&1));
    succeeded(stack, &execution, &described, &bucket, &files).await;
    let failures = lambda_failures(&stack.history(&execution).await);
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test]
async fn a_delivered_result_stands_when_noting_it_fails() {
    // GIVEN a run whose status delivers its result and then cannot note it: the
    // DynamoDB update fails after every SDK attempt
    let stack = local_stack();
    let files = keys("raw/f-", 8);
    let bucket = bucket_with(stack, &files).await;
    let _turn = stack
        .turn(
            json!({"rules": [{"service": "dynamodb", "operations": ["UpdateItem"],
                                "callers": ["status"], "body_contains": "delivered",
                                "answer": "InternalServerError", "count": 6}]}),
        )
        .await;

    let execution = stack.start("note-failed", &timed(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;
    let injected = stack.injected();
    stack.set_faults(&json!({}));

    // THEN status answered with the summary all the same, so the execution succeeded
    // on that call, its activity task answered once; only the note is missing
    assert_eq!(injected.get("dynamodb InternalServerError"), Some(&6));
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    assert_eq!(output(&described)["completed"], json!(files.len()));
    assert_eq!(contents(stack, &bucket).await, moved_and_kept(&files, &[]));
    let history = stack.history(&execution).await;
    assert!(
        lambda_failures(&history).is_empty(),
        "{:?}",
        lambda_failures(&history)
    );
    let answered = activity_events(&history)
        .into_iter()
        .filter(|(kind, _)| kind == "ActivitySucceeded")
        .count();
    assert_eq!(answered, 1);
    let run = RunId::parse("note-failed").unwrap();
    let record = records(stack)
        .await
        .run_record(&run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.delivered, None);
}

#[tokio::test]
async fn a_status_that_dies_right_after_delivering_is_answered_the_same_by_its_retry() {
    // GIVEN a run whose status dies just after SendTaskSuccess took effect
    let stack = local_stack();
    let files = keys("raw/f-", 8);
    let bucket = bucket_with(stack, &files).await;
    let _turn = stack.turn(json!({})).await;
    stack.arm_crash("status-after-delivery");

    let execution = stack.start("died-after", &timed(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;

    // THEN the retried call answered the summary and the result stands, delivered once
    assert!(stack.crashed("status-after-delivery"));
    let failures = lambda_failures(&stack.history(&execution).await);
    assert!(
        failures.iter().any(|e| e == "Runtime.ExitError"),
        "{failures:?}"
    );
    let events = succeeded(stack, &execution, &described, &bucket, &files).await;
    assert_eq!(heartbeat_timeouts(&events), 0, "{events:?}");
}

#[tokio::test]
async fn a_status_that_keeps_dying_past_its_retries_is_entered_afresh_after_a_pause() {
    // GIVEN a run whose status dies on entry four times in a row: one more than the
    // state machine's retrier of Lambda errors allows
    let stack = local_stack();
    let files = keys("raw/f-", 8);
    let bucket = bucket_with(stack, &files).await;
    let _turn = stack.turn(json!({})).await;
    stack.arm_crashes("status-on-entry", 4);

    // WHEN the execution runs
    let execution = stack
        .start("status-keeps-dying", &timed(&bucket, json!({})))
        .await;
    let described = stack.finished(&execution).await;

    // THEN the retrier gave up, the catcher paused and entered Status again with the
    // request intact, and the run ended with its summary
    assert!(stack.crashed("status-on-entry"));
    let history = stack.history(&execution).await;
    let exits = lambda_failures(&history)
        .into_iter()
        .filter(|e| e == "Runtime.ExitError")
        .count();
    assert_eq!(exits, 4, "{:?}", lambda_failures(&history));
    let pauses = history
        .iter()
        .filter_map(|e| e.state_entered_event_details())
        .filter(|d| d.name() == "PauseBeforeStatus")
        .count();
    assert_eq!(pauses, 1);
    let events = succeeded(stack, &execution, &described, &bucket, &files).await;
    assert_eq!(heartbeat_timeouts(&events), 0, "{events:?}");
}
