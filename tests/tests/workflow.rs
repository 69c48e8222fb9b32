//! The whole workflow on the local stack: the real state machine, run by Step Functions'
//! engine, calling the real master, slave and status binaries through the Lambda
//! runtime API, against S3 and DynamoDB. Each test checks the bucket, the status table
//! and the execution's history.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::StorageClass;
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEventType};
use common::run::RunId;
use common::store::Store;
use futures::{StreamExt, TryStreamExt, stream};
use integration_tests::stack::{LocalStack, lambda_failures, local_stack};
use integration_tests::{body_of, md5_hex, unique};
use serde_json::{Value, json};

/// The waits a test does not need.
fn input(bucket: &str, extra: Value) -> Value {
    let mut input = json!({
        "source_bucket": bucket,
        "wait_before_master_seconds": 0,
        "wait_before_status_seconds": 1,
    });
    input
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    input
}

async fn bucket_with(stack: &LocalStack, keys: &[String]) -> String {
    let s3 = stack.s3().await;
    let bucket = unique("wf");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    put(stack, &bucket, keys, None).await;
    bucket
}

async fn put(stack: &LocalStack, bucket: &str, keys: &[String], class: Option<StorageClass>) {
    let s3 = stack.s3().await;
    stream::iter(keys)
        .map(|key| {
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .set_storage_class(class.clone())
                .body(ByteStream::from(body_of(key)))
                .send()
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

/// Key → ETag (the MD5 of the bytes, for single-part objects) of everything in the bucket.
async fn contents(stack: &LocalStack, bucket: &str) -> BTreeMap<String, String> {
    let s3 = stack.s3().await;
    let mut pages = s3.list_objects_v2().bucket(bucket).into_paginator().send();
    let mut out = BTreeMap::new();
    while let Some(page) = pages.next().await {
        for object in page.unwrap().contents() {
            out.insert(
                object.key().unwrap().to_string(),
                object.e_tag().unwrap().trim_matches('"').to_string(),
            );
        }
    }
    out
}

async fn store(stack: &LocalStack) -> Store {
    Store::new(
        stack.dynamodb().await,
        stack.var("TABLE_NAME"),
        Duration::from_secs(3600),
    )
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{:05}.csv", i)).collect()
}

fn output(
    described: &aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput,
) -> Value {
    serde_json::from_str(described.output.as_deref().expect("an output")).unwrap()
}

#[tokio::test]
async fn a_run_of_1200_files_moves_every_one_and_leaves_the_rest() {
    // GIVEN 1,200 CSV files under raw/ (some in nested folders, some with awkward
    // names) and files the run must leave alone
    let stack = local_stack();
    let mut selected = keys("raw/2026/11/part-", 1190);
    selected.extend((0..10).map(|i| format!("raw/odd names/ä+b %{i} (copy).csv")));
    let left_alone = vec![
        "raw/notes.txt".to_string(),
        "raw/2026/11/part-00001.csv.gz".to_string(),
        "elsewhere/x.csv".to_string(),
    ];
    let bucket = bucket_with(stack, &[selected.clone(), left_alone.clone()].concat()).await;

    // WHEN an execution runs with the default prefixes and suffixes
    let execution = stack.start("big-run", &input(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;

    // THEN it succeeds with the run summary as its output
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    let bytes: usize = selected.iter().map(|k| body_of(k).len()).sum();
    assert_eq!(
        output(&described),
        json!({"run_id": "big-run", "source": format!("s3://{bucket}/raw/"),
               "destination": format!("s3://{bucket}/refined/"), "files": 1200,
               "completed": 1200, "failed": 0, "bytes": bytes})
    );
    // every selected file is at the destination with its bytes, none at the source,
    // and the other files are untouched
    let mut expected: BTreeMap<String, String> = selected
        .iter()
        .map(|k| (k.replacen("raw/", "refined/", 1), md5_hex(&body_of(k))))
        .collect();
    expected.extend(left_alone.iter().map(|k| (k.clone(), md5_hex(&body_of(k)))));
    assert_eq!(contents(stack, &bucket).await, expected);
    // the table has every file completed and exact counters
    let store = store(stack).await;
    let run = RunId::parse("big-run").unwrap();
    let view = store.run_view(&run).await.unwrap().unwrap();
    assert_eq!(
        (
            view.progress.selected,
            view.progress.completed,
            view.progress.failed,
            view.progress.bytes
        ),
        (1200, 1200, 0, bytes as u64)
    );
    // and the activity task was completed by status
    let history = stack.history(&execution).await;
    assert!(
        history
            .iter()
            .any(|e| e.r#type == HistoryEventType::ActivitySucceeded)
    );
}

#[tokio::test]
async fn files_that_cannot_be_copied_fail_the_run_by_name_and_the_rest_move() {
    // GIVEN 40 files, 3 of them archived (S3 refuses to copy them)
    let stack = local_stack();
    let movable = keys("raw/ok-", 37);
    let bucket = bucket_with(stack, &movable).await;
    let archived = keys("raw/archived-", 3);
    put(stack, &bucket, &archived, Some(StorageClass::Glacier)).await;

    let execution = stack
        .start("partly-failed", &input(&bucket, json!({})))
        .await;
    let described = stack.finished(&execution).await;

    // THEN the execution fails with TransferFailed, its cause naming exactly those files
    assert_eq!(described.status, ExecutionStatus::Failed);
    assert_eq!(described.error.as_deref(), Some("TransferFailed"));
    let cause = described.cause.unwrap();
    let named: Vec<&str> = cause
        .lines()
        .skip(1)
        .map(|l| l.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        named,
        archived.iter().map(String::as_str).collect::<Vec<_>>(),
        "{cause}"
    );
    assert!(cause.starts_with("3 of 40 files failed to move"), "{cause}");
    // the others moved; the 3 are untouched at the source
    let now = contents(stack, &bucket).await;
    for key in &movable {
        assert!(
            now.contains_key(&key.replacen("raw/", "refined/", 1)),
            "{key} not moved"
        );
        assert!(!now.contains_key(key), "{key} left at the source");
    }
    for key in &archived {
        assert_eq!(now.get(key), Some(&md5_hex(&body_of(key))), "{key} changed");
        assert!(!now.contains_key(&key.replacen("raw/", "refined/", 1)));
    }
    let store = store(stack).await;
    let run = RunId::parse("partly-failed").unwrap();
    let failed = store.failed_files(&run, 100).await.unwrap();
    assert_eq!(
        failed.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        archived
    );
    for (key, reason) in &failed {
        assert!(
            reason.contains("ObjectNotInActiveTierError"),
            "{key}: {reason}"
        );
        assert!(
            reason.len() < 400,
            "{key}: a reason is a line, not a dump: {reason}"
        );
    }
    let history = stack.history(&execution).await;
    assert!(
        history
            .iter()
            .any(|e| e.r#type == HistoryEventType::ActivityFailed)
    );
}

#[tokio::test]
async fn two_executions_at_once_each_complete_their_own_activity_task() {
    let stack = local_stack();
    let first = keys("raw/a/f-", 150);
    let second = keys("raw/b/f-", 90);
    let bucket = bucket_with(stack, &[first.clone(), second.clone()].concat()).await;

    let run_a = stack
        .start(
            "run-a",
            &input(
                &bucket,
                json!({"source_prefix": "raw/a/", "destination_prefix": "out/a/"}),
            ),
        )
        .await;
    let run_b = stack
        .start(
            "run-b",
            &input(
                &bucket,
                json!({"source_prefix": "raw/b/", "destination_prefix": "out/b/"}),
            ),
        )
        .await;
    let (a, b) = tokio::join!(stack.finished(&run_a), stack.finished(&run_b));

    assert_eq!(a.status, ExecutionStatus::Succeeded, "{a:?}");
    assert_eq!(b.status, ExecutionStatus::Succeeded, "{b:?}");
    assert_eq!(output(&a)["files"], 150);
    assert_eq!(output(&a)["run_id"], "run-a");
    assert_eq!(output(&b)["files"], 90);
    assert_eq!(output(&b)["run_id"], "run-b");
    let now = contents(stack, &bucket).await;
    assert_eq!(now.keys().filter(|k| k.starts_with("out/a/")).count(), 150);
    assert_eq!(now.keys().filter(|k| k.starts_with("out/b/")).count(), 90);
    assert_eq!(now.keys().filter(|k| k.starts_with("raw/")).count(), 0);
    for execution in [&run_a, &run_b] {
        let history = stack.history(execution).await;
        let succeeded = history
            .iter()
            .filter(|e| e.r#type == HistoryEventType::ActivitySucceeded)
            .count();
        assert_eq!(succeeded, 1, "{execution}");
    }
    // each run's rows and counters hold its own files only
    let store = store(stack).await;
    for (run, files) in [("run-a", 150), ("run-b", 90)] {
        let view = store
            .run_view(&RunId::parse(run).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                view.progress.selected,
                view.progress.completed,
                view.progress.failed
            ),
            (files, files, 0),
            "{run}"
        );
    }
}

#[tokio::test]
async fn status_retries_while_files_are_still_moving() {
    // GIVEN enough files that slaves are still at work when status first looks
    let stack = local_stack();
    let files = keys("raw/busy-", 800);
    let bucket = bucket_with(stack, &files).await;

    let execution = stack
        .start(
            "still-moving",
            &input(&bucket, json!({"wait_before_status_seconds": 0})),
        )
        .await;
    let described = stack.finished(&execution).await;

    // THEN status answered TransferIncomplete at least once, was retried, and the run
    // still succeeded with every file
    let history = stack.history(&execution).await;
    let failures = lambda_failures(&history);
    assert!(
        failures.iter().any(|e| e == "TransferIncomplete"),
        "{failures:?}"
    );
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    assert_eq!(output(&described)["completed"], 800);
    let now = contents(stack, &bucket).await;
    assert_eq!(
        now.keys()
            .filter(|k| k.starts_with("refined/busy-"))
            .count(),
        800
    );
    let view = store(stack)
        .await
        .run_view(&RunId::parse("still-moving").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((view.progress.completed, view.progress.failed), (800, 0));
}

#[tokio::test]
async fn an_empty_prefix_is_a_successful_run_of_nothing() {
    let stack = local_stack();
    let bucket = bucket_with(stack, &["raw/readme.txt".to_string()]).await;
    let execution = stack
        .start("nothing-to-do", &input(&bucket, json!({})))
        .await;
    let described = stack.finished(&execution).await;
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    assert_eq!(output(&described)["files"], 0);
    assert_eq!(
        contents(stack, &bucket)
            .await
            .into_keys()
            .collect::<Vec<_>>(),
        ["raw/readme.txt"]
    );
    let store = store(stack).await;
    let view = store
        .run_view(&RunId::parse("nothing-to-do").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(view.progress.listing_complete);
    assert_eq!(view.progress.selected, 0);
    let history = stack.history(&execution).await;
    assert!(
        history
            .iter()
            .any(|e| e.r#type == HistoryEventType::ActivitySucceeded)
    );
}

#[tokio::test]
async fn a_misspelt_input_field_fails_the_execution_by_name_and_moves_nothing() {
    let stack = local_stack();
    let files = keys("raw/f-", 3);
    let bucket = bucket_with(stack, &files).await;
    let execution = stack
        .start("typo", &input(&bucket, json!({"source_prefx": "raw/"})))
        .await;
    let described = stack.finished(&execution).await;
    assert_eq!(described.status, ExecutionStatus::Failed);
    assert_eq!(described.error.as_deref(), Some("InvalidEvent"));
    assert!(described.cause.unwrap().contains("source_prefx"));
    assert_eq!(
        contents(stack, &bucket)
            .await
            .into_keys()
            .collect::<Vec<_>>(),
        files
    );
    // refused before anything was recorded
    let store = store(stack).await;
    assert!(
        store
            .run_view(&RunId::parse("typo").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}
