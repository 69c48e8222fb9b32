//! The whole workflow on the local stack while its front injects faults into the
//! functions' own AWS calls: throttling and 5xx answers, dropped connections, slave
//! events delivered twice, a slave that crashes between copy and delete, requests
//! denied, and copies that do not hold the source's bytes. Each test checks the bucket
//! byte for byte, the status table and the execution's outcome.
//!
//! The front's faults apply to the whole stack, so the tests of this binary take turns.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::StorageClass;
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEventType};
use common::RunId;
use common::rules::outcomes::FileState;
use deployment::policy::{Deployment, Need};
use deployment::template::{Reference, Template};
use integration_tests::stack::{
    LocalStack, bucket_with, contents, input, keys, lambda_failures, local_stack, moved_and_kept,
    output, put, put_bytes, put_in_parts, records, run_progress, table,
};
use integration_tests::{body_of, md5_hex, workspace_root};
use serde_json::{Value, json};
use xtask::local::{ACCOUNT, LocalNames, REGION};

const DYNAMODB_WRITES: [&str; 5] = [
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "BatchWriteItem",
    "TransactWriteItems",
];

#[tokio::test]
async fn five_thousand_files_survive_throttling_errors_duplicates_and_a_crash() {
    // GIVEN 5,000 files
    let stack = local_stack();
    let files = keys("raw/load/part-", 5000);
    let bucket = bucket_with(stack, &files).await;
    // AND about 10% of the functions' S3 requests answered with retryable errors, 1%
    // more dropped after taking effect, 5% of DynamoDB writes throttled, every slave
    // event delivered twice, and the first slave batch to copy crashing before it deletes
    let _turn = stack
        .turn(
            json!({"seed": 5000, "duplicate_events": ["slave"], "rules": [
                {"service": "s3", "rate": 0.05, "answer": "SlowDown"},
                {"service": "s3", "rate": 0.053, "answer": "InternalError"},
                {"service": "s3", "rate": 0.01, "answer": "drop-after"},
                {"service": "s3", "latency_ms": 2},
                {"service": "dynamodb", "operations": DYNAMODB_WRITES, "rate": 0.05,
                 "answer": "ThrottlingException"},
            ]}),
        )
        .await;
    stack.arm_crash("slave-between-copy-and-delete");

    // WHEN an execution moves them
    let execution = stack
        .start("under-faults", &input(&bucket, json!({})))
        .await;
    let described = stack.finished(&execution).await;
    let injected = stack.injected();
    stack.set_faults(&json!({}));

    // THEN it succeeds, having met every fault on the way
    assert!(
        stack.crashed("slave-between-copy-and-delete"),
        "the armed crash did not happen"
    );
    for fault in [
        "s3 SlowDown",
        "s3 InternalError",
        "s3 drop-after",
        "dynamodb ThrottlingException",
        "duplicate events",
    ] {
        assert!(
            injected.get(fault).copied().unwrap_or(0) > 0,
            "no {fault}: {injected:?}"
        );
    }
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    let bytes: usize = files.iter().map(|k| body_of(k).len()).sum();
    assert_eq!(
        (
            &output(&described)["files"],
            &output(&described)["completed"],
            &output(&described)["failed"],
            &output(&described)["bytes"]
        ),
        (&json!(5000), &json!(5000), &json!(0), &json!(bytes))
    );
    // every file is at the destination with its bytes, and none is left at the source
    assert_eq!(contents(stack, &bucket).await, moved_and_kept(&files, &[]));
    // no file was counted twice, and every row says completed
    let store = records(stack).await;
    let run = RunId::parse("under-faults").unwrap();
    let progress = store.run_view(&run).await.unwrap().unwrap().progress;
    assert_eq!(
        (
            progress.selected,
            progress.completed,
            progress.failed,
            progress.bytes
        ),
        (5000, 5000, 0, bytes as u64)
    );
    let recorded = store.files(&run).await.unwrap();
    assert_eq!(
        recorded.iter().map(|f| &f.file.key).collect::<Vec<_>>(),
        files.iter().collect::<Vec<_>>(),
        "each file recorded once"
    );
    assert!(recorded.iter().all(|f| f.state == FileState::Completed));
    assert!(store.failed_files(&run, 10).await.unwrap().is_empty());
    let succeeded = stack
        .history(&execution)
        .await
        .iter()
        .filter(|e| e.r#type == HistoryEventType::ActivitySucceeded)
        .count();
    assert_eq!(succeeded, 1);
}

#[tokio::test]
async fn a_page_whose_recording_answer_was_lost_is_never_recorded_twice_when_the_listing_changes() {
    // GIVEN 2,500 files, and master's first transaction taking effect with its answer
    // lost, so the call fails and the state machine calls master again
    let stack = local_stack();
    let files = keys("raw/pages/f-", 2500);
    let bucket = bucket_with(stack, &files).await;
    let _turn = stack
        .turn(
            json!({"rules": [{"service": "dynamodb", "operations": ["TransactWriteItems"],
                                "callers": ["master"], "answer": "drop-after", "count": 1}]}),
        )
        .await;
    let execution = stack.start("lost-page", &input(&bucket, json!({}))).await;

    // WHEN new files land among the listed ones before master is called again
    while !stack.injected().contains_key("dynamodb drop-after") {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let landed: Vec<String> = (0..2500)
        .step_by(25)
        .map(|i| format!("raw/pages/f-{i:05}-late.csv"))
        .collect();
    put(stack, &bucket, &landed, None).await;
    let described = stack.finished(&execution).await;
    stack.set_faults(&json!({}));

    // THEN the retried call resumed after the page recorded: every file is in exactly one
    // batch, the counters are exact, and the run succeeded once every recorded file moved
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    assert!(
        lambda_failures(&stack.history(&execution).await)
            .iter()
            .any(|e| e == "ListingConflict")
    );
    let store = records(stack).await;
    let run = RunId::parse("lost-page").unwrap();
    let recorded: Vec<String> = store
        .files(&run)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.file.key)
        .collect();
    let distinct: std::collections::BTreeSet<&String> = recorded.iter().collect();
    assert_eq!(distinct.len(), recorded.len(), "a file recorded twice");
    assert!(
        files.iter().all(|k| distinct.contains(k)),
        "a listed file is missing"
    );
    let progress = store.run_view(&run).await.unwrap().unwrap().progress;
    assert_eq!(progress.selected, recorded.len() as u64);
    assert_eq!(
        (progress.completed, progress.failed),
        (progress.selected, 0)
    );
    assert_eq!(output(&described)["files"], json!(recorded.len()));
    // a file landed after its place in the listing was recorded stays where it is; every
    // recorded file moved
    let (moved, kept): (Vec<String>, Vec<String>) = files
        .iter()
        .chain(&landed)
        .cloned()
        .partition(|k| distinct.contains(k));
    assert_eq!(
        contents(stack, &bucket).await,
        moved_and_kept(&moved, &kept)
    );
}

#[tokio::test]
async fn status_waits_for_slow_files_is_retried_and_ends_the_run_soon_after_the_last() {
    // GIVEN 64 files in one batch whose copies each take 2 s (the front delays the
    // slave's CopyObject), so the batch takes about 8 s: longer than one status call
    // waits on the test stack (STATUS_WAIT_SECONDS=5)
    let stack = local_stack();
    let files = keys("raw/slow-", 64);
    let bucket = bucket_with(stack, &files).await;
    let _turn = stack
        .turn(
            json!({"rules": [{"service": "s3", "operations": ["CopyObject"], "callers": ["slave"],
                          "latency_ms": 2000}]}),
        )
        .await;

    // WHEN an execution moves them, status starting at once
    let execution = stack
        .start(
            "slow-files",
            &input(&bucket, json!({"wait_before_status_seconds": 0})),
        )
        .await;
    let store = records(stack).await;
    let run = RunId::parse("slow-files").unwrap();
    let last_file_done = loop {
        let view = store.run_view(&run).await.unwrap();
        if view.is_some_and(|v| v.progress.completed == 64) {
            break std::time::SystemTime::now();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let described = stack.finished(&execution).await;
    stack.set_faults(&json!({}));

    // THEN the first status call waited, answered TransferIncomplete and was retried,
    // and the run succeeded with every file moved
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
    assert_eq!(output(&described)["completed"], 64);
    assert_eq!(contents(stack, &bucket).await, moved_and_kept(&files, &[]));
    // AND the waiting call saw the last file and ended the run within seconds of it,
    // not at a later retry
    let stopped = std::time::SystemTime::try_from(described.stop_date.unwrap()).unwrap();
    let lag = stopped.duration_since(last_file_done).unwrap_or_default();
    assert!(
        lag < std::time::Duration::from_secs(3),
        "ended {lag:?} after the last file"
    );
}

#[tokio::test]
async fn three_denied_files_fail_the_run_by_name_and_stay_where_they_are() {
    // GIVEN 60 files, 3 of which the functions are denied to copy
    let stack = local_stack();
    let movable = keys("raw/fine-", 60);
    let denied: Vec<String> = (1..=3).map(|i| format!("raw/forbidden-{i}.csv")).collect();
    let bucket = bucket_with(stack, &[movable.clone(), denied.clone()].concat()).await;
    let _turn = stack
        .turn(
            json!({"rules": [{"service": "s3", "operations": ["CopyObject"],
                          "key_contains": "forbidden-", "answer": "AccessDenied"}]}),
        )
        .await;

    let execution = stack.start("denied", &input(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;
    stack.set_faults(&json!({}));

    // THEN the execution fails with TransferFailed naming exactly those files and why
    assert_eq!(described.status, ExecutionStatus::Failed, "{described:?}");
    assert_eq!(described.error.as_deref(), Some("TransferFailed"));
    let cause = described.cause.unwrap();
    assert!(cause.starts_with("3 of 63 files failed to move"), "{cause}");
    let named: Vec<(&str, &str)> = cause
        .lines()
        .skip(1)
        .map(|l| l.split_once(": ").unwrap())
        .collect();
    assert_eq!(
        named.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        denied.iter().map(String::as_str).collect::<Vec<_>>(),
        "{cause}"
    );
    assert!(
        named.iter().all(|(_, why)| why.contains("AccessDenied")),
        "{cause}"
    );
    // every other file moved, and the 3 are untouched at the source
    assert_eq!(
        contents(stack, &bucket).await,
        moved_and_kept(&movable, &denied)
    );
    let store = records(stack).await;
    let run = RunId::parse("denied").unwrap();
    let failed = store.failed_files(&run, 100).await.unwrap();
    assert_eq!(
        failed.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        denied
    );
    let progress = store.run_view(&run).await.unwrap().unwrap().progress;
    assert_eq!(
        (progress.selected, progress.completed, progress.failed),
        (63, 60, 3)
    );
}

#[tokio::test]
async fn a_duplicate_that_copied_a_file_its_twin_failed_keeps_the_source_the_run_reported() {
    // GIVEN a one-file run whose slave event is delivered twice at once: the first copy
    // to arrive is denied, so one delivery fails the file; the other's copy succeeds,
    // and it reads the batch again (slowly) before it would delete the source
    let stack = local_stack();
    let file = vec!["raw/contested.csv".to_string()];
    let bucket = bucket_with(stack, &file).await;
    let _turn = stack
        .turn(json!({"duplicate_events": ["slave"], "rules": [
            {"service": "s3", "operations": ["CopyObject"], "key_contains": "contested",
             "count": 1, "answer": "AccessDenied"},
            {"service": "s3", "operations": ["CopyObject"], "key_contains": "contested",
             "latency_ms": 1000},
            {"service": "dynamodb", "operations": ["GetItem"], "callers": ["slave"],
             "latency_ms": 2000}
        ]}))
        .await;

    // WHEN the execution runs, and both deliveries have ended
    let execution = stack.start("contested", &input(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    stack.set_faults(&json!({}));

    // THEN the run was reported with the file failed, and that report still holds: the
    // source is where it was, and the file is failed, counted once
    assert_eq!(described.status, ExecutionStatus::Failed, "{described:?}");
    assert_eq!(described.error.as_deref(), Some("TransferFailed"));
    let cause = described.cause.unwrap();
    assert!(cause.starts_with("1 of 1 files failed to move"), "{cause}");
    assert!(cause.contains("raw/contested.csv: "), "{cause}");
    let listed = contents(stack, &bucket).await;
    assert_eq!(
        listed.get("raw/contested.csv").map(String::as_str),
        Some(md5_hex(&body_of("raw/contested.csv")).as_str()),
        "{listed:?}"
    );
    let store = records(stack).await;
    let run = RunId::parse("contested").unwrap();
    let progress = store.run_view(&run).await.unwrap().unwrap().progress;
    assert_eq!(
        (progress.selected, progress.completed, progress.failed),
        (1, 0, 1)
    );
    let files = store.files(&run).await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].state, FileState::Failed);
}

#[tokio::test]
async fn a_destination_that_does_not_hold_the_source_bytes_never_costs_the_source() {
    // GIVEN 20 files, and two whose copies come out wrong: other bytes of the same
    // size, and one byte more
    let stack = local_stack();
    let movable = keys("raw/good-", 20);
    let tampered = vec![
        "raw/tampered-same-size.csv".to_string(),
        "raw/tampered-longer.csv".to_string(),
    ];
    let bucket = bucket_with(stack, &[movable.clone(), tampered.clone()].concat()).await;
    let _turn = stack
        .turn(json!({"rules": [
            {"service": "s3", "operations": ["CopyObject"], "key_contains": "tampered-same",
             "answer": "tamper"},
            {"service": "s3", "operations": ["CopyObject"], "key_contains": "tampered-longer",
             "answer": "tamper-size"},
        ]}))
        .await;

    let execution = stack.start("tampered", &input(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;
    stack.set_faults(&json!({}));

    // THEN both sources are still there with their bytes, both files failed naming
    // the mismatch, and the others moved
    assert_eq!(described.status, ExecutionStatus::Failed, "{described:?}");
    assert_eq!(described.error.as_deref(), Some("TransferFailed"));
    let now = contents(stack, &bucket).await;
    for key in &tampered {
        assert_eq!(now.get(key), Some(&md5_hex(&body_of(key))), "{key}");
    }
    for key in &movable {
        let destination = key.replacen("raw/", "refined/", 1);
        assert_eq!(now.get(&destination), Some(&md5_hex(&body_of(key))));
        assert!(!now.contains_key(key));
    }
    let failed = records(stack)
        .await
        .failed_files(&RunId::parse("tampered").unwrap(), 10)
        .await
        .unwrap();
    let mut expected = tampered.clone();
    expected.sort();
    assert_eq!(
        failed.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        expected
    );
    for (key, reason) in &failed {
        assert!(
            reason.contains("does not hold the listed bytes"),
            "{key}: {reason}"
        );
    }
}

#[tokio::test]
async fn a_copy_in_parts_on_a_server_without_object_tagging_moves_its_file() {
    // GIVEN a file above the stack's 6 MiB multipart threshold, and a server that answers
    // every GetObjectTagging NotImplemented, as S3-compatible servers without tagging do
    let stack = local_stack();
    let bucket = bucket_with(stack, &[]).await;
    let large: Vec<u8> = (0..7 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
    put_bytes(stack, &bucket, "raw/untagged.csv", large.clone()).await;
    let _turn = stack
        .turn(
            json!({"rules": [{"service": "s3", "operations": ["GetObjectTagging"],
                                 "answer": "NotImplemented"}]}),
        )
        .await;

    // WHEN it is moved
    let execution = stack.start("no-tagging", &input(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;
    let injected = stack.injected();
    stack.set_faults(&json!({}));

    // THEN the answer meant "no tags to carry": the copy was made in parts, verified,
    // and the source deleted
    assert!(
        injected.get("s3 NotImplemented").is_some_and(|n| *n >= 1),
        "{injected:?}"
    );
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    let copied = stack
        .s3()
        .await
        .get_object()
        .bucket(&bucket)
        .key("refined/untagged.csv")
        .send()
        .await
        .unwrap();
    assert_eq!(
        copied.e_tag.as_deref().map(|e| e.ends_with("-2\"")),
        Some(true)
    );
    assert_eq!(copied.body.collect().await.unwrap().into_bytes(), large);
    assert_eq!(
        contents(stack, &bucket)
            .await
            .into_keys()
            .collect::<Vec<_>>(),
        ["refined/untagged.csv"]
    );
}

#[tokio::test]
async fn files_whose_bucket_s3_never_locates_fail_by_that_reason_and_stay_where_they_are() {
    // GIVEN files, and a server that answers the slaves' HeadBucket 503 every time
    let stack = local_stack();
    let files = keys("raw/where-", 6);
    let bucket = bucket_with(stack, &files).await;
    let before = contents(stack, &bucket).await;
    let _turn = stack
        .turn(
            json!({"rules": [{"service": "s3", "operations": ["HeadBucket"],
                                 "callers": ["slave"], "answer": "ServiceUnavailable"}]}),
        )
        .await;

    // WHEN they are moved
    let execution = stack.start("no-region", &input(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;
    let calls = stack.injected();
    stack.set_faults(&json!({}));

    // THEN no request was sent to a region S3 did not name: the batch was handed on,
    // with pauses, until invocations in a row got no answer, and then each file failed
    // by that reason, its source untouched and nothing copied
    assert!(
        calls.get("s3 ServiceUnavailable").is_some_and(|n| *n >= 4),
        "{calls:?}"
    );
    assert_eq!(
        described.error.as_deref(),
        Some("TransferFailed"),
        "{described:?}"
    );
    let failed = records(stack)
        .await
        .failed_files(&RunId::parse("no-region").unwrap(), 100)
        .await
        .unwrap();
    assert_eq!(failed.len(), 6);
    for (key, reason) in &failed {
        assert!(
            reason.starts_with("S3 did not say where the run's bucket is in 4 invocations"),
            "{key}: {reason}"
        );
        assert!(
            reason.contains(
                "so these did not try the file; check the source and the destination, as an \
                 earlier one may have moved it (HeadBucket: HTTP 503)"
            ),
            "{key}: {reason}"
        );
    }
    assert_eq!(contents(stack, &bucket).await, before);
}

#[tokio::test]
async fn a_multipart_copy_under_faults_is_whole_and_verified() {
    // GIVEN one file above the stack's 6 MiB multipart threshold, with tags
    let stack = local_stack();
    let bucket = bucket_with(stack, &keys("raw/small-", 5)).await;
    let large: Vec<u8> = (0..7 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    stack
        .s3()
        .await
        .put_object()
        .bucket(&bucket)
        .key("raw/large.csv")
        .tagging("kind=large")
        .body(ByteStream::from(large.clone()))
        .send()
        .await
        .unwrap();
    // AND a third of the part copies throttled
    let _turn = stack
        .turn(
            json!({"seed": 3, "rules": [{"service": "s3", "operations": ["UploadPartCopy"],
                                     "rate": 0.33, "answer": "SlowDown"}]}),
        )
        .await;

    let execution = stack.start("large", &input(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;
    stack.set_faults(&json!({}));

    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    let s3 = stack.s3().await;
    let copied = s3
        .get_object()
        .bucket(&bucket)
        .key("refined/large.csv")
        .send()
        .await
        .unwrap();
    assert_eq!(copied.body.collect().await.unwrap().to_vec(), large);
    let tags = s3
        .get_object_tagging()
        .bucket(&bucket)
        .key("refined/large.csv")
        .send()
        .await
        .unwrap();
    assert_eq!(tags.tag_set()[0].key(), "kind");
    assert!(!contents(stack, &bucket).await.contains_key("raw/large.csv"));
}

#[tokio::test]
async fn a_multipart_copy_that_keeps_failing_leaves_no_upload_open() {
    // GIVEN a 7 MiB file (copied in parts) whose part copies S3 keeps answering with
    // InternalError, after every SDK attempt and round, and small files
    let stack = local_stack();
    let small = keys("raw/small-", 4);
    let bucket = bucket_with(stack, &small).await;
    let s3 = stack.s3().await;
    s3.put_object()
        .bucket(&bucket)
        .key("raw/doomed.csv")
        .body(ByteStream::from(vec![9u8; 7 * 1024 * 1024]))
        .send()
        .await
        .unwrap();
    let _turn = stack
        .turn(
            json!({"rules": [{"service": "s3", "operations": ["UploadPartCopy"],
                                "key_contains": "doomed", "answer": "InternalError"}]}),
        )
        .await;

    let execution = stack.start("doomed", &input(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;
    stack.set_faults(&json!({}));

    // THEN the file failed and stays at its source, the rest moved, and its upload was
    // aborted: nothing is left open to pay for, and no record of it is left
    assert_eq!(described.status, ExecutionStatus::Failed, "{described:?}");
    let cause = described.cause.unwrap();
    assert!(cause.starts_with("1 of 5 files failed to move:"), "{cause}");
    assert!(
        cause.contains("raw/doomed.csv: UploadPartCopy: InternalError"),
        "{cause}"
    );
    let now = contents(stack, &bucket).await;
    assert!(now.contains_key("raw/doomed.csv"));
    assert!(!now.contains_key("refined/doomed.csv"));
    for key in &small {
        assert!(
            now.contains_key(&key.replacen("raw/", "refined/", 1)),
            "{key}"
        );
    }
    let open = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(open.uploads().is_empty(), "{:?}", open.uploads());
    let run = RunId::parse("doomed").unwrap();
    assert_eq!(
        common::store::SlaveRecords::new(table(stack).await)
            .upload(&run, "raw/doomed.csv")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn copies_whose_etag_is_not_the_listed_one_are_proven_by_the_record_kept_before_the_delete() {
    // GIVEN small files, a 7 MiB file (copied in parts, so its copy has a multipart ETag)
    // and a 5.5 MiB file uploaded in two parts (its listed ETag is a multipart one, its
    // whole copy's an MD5): neither copy's ETag is the listed one
    let stack = local_stack();
    let small = keys("raw/small-", 5);
    let bucket = bucket_with(stack, &small).await;
    let s3 = stack.s3().await;
    let seven: Vec<u8> = (0..7 * 1024 * 1024u32).map(|i| (i % 249) as u8).collect();
    s3.put_object()
        .bucket(&bucket)
        .key("raw/seven.csv")
        .body(ByteStream::from(seven.clone()))
        .send()
        .await
        .unwrap();
    let mib = 1024 * 1024;
    let parted: Vec<u8> = (0..(5 * mib + mib / 2) as u32)
        .map(|i| (i % 241) as u8)
        .collect();
    put_in_parts(stack, &bucket, "raw/parted.csv", &parted, 5 * mib, None).await;
    // AND a slave that dies after deleting the sources and before recording anything
    let _turn = stack.turn(json!({})).await;
    stack.arm_crash("slave-between-delete-and-record");

    // WHEN the execution moves them (the slave's event is retried after the crash)
    let execution = stack
        .start("proven-copies", &input(&bucket, json!({})))
        .await;
    let described = stack.finished(&execution).await;

    // THEN the retry found every source gone, recognised each destination as the copy
    // recorded before the delete, and counted each file once
    assert!(stack.crashed("slave-between-delete-and-record"));
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    assert_eq!(output(&described)["completed"], json!(7));
    for (key, bytes) in [("seven.csv", &seven), ("parted.csv", &parted)] {
        let copied = s3
            .get_object()
            .bucket(&bucket)
            .key(format!("refined/{key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            &copied.body.collect().await.unwrap().to_vec(),
            bytes,
            "{key}"
        );
    }
    let now = contents(stack, &bucket).await;
    assert!(now.keys().all(|k| k.starts_with("refined/")), "{now:?}");
    let progress = run_progress(stack, "proven-copies").await;
    assert_eq!(
        (progress.selected, progress.completed, progress.failed),
        (7, 7, 0)
    );
}

#[tokio::test]
async fn copies_in_parts_are_verified_by_the_source_checksum_and_a_corrupted_one_keeps_its_source()
{
    // GIVEN small files; two 7 MiB files (copied in parts) whose S3 checksum is the CRC32
    // the SDK sent with them; a 5.5 MiB file uploaded in two parts with a full-object
    // CRC64NVME, copied whole; and one part copy of the second 7 MiB file writing other
    // bytes of the same size
    let stack = local_stack();
    let small = keys("raw/small-", 3);
    let bucket = bucket_with(stack, &small).await;
    let s3 = stack.s3().await;
    let mib = 1024 * 1024;
    let seven = |seed: u32| -> Vec<u8> {
        (0..7 * mib as u32)
            .map(|i| (i.wrapping_mul(seed) % 251) as u8)
            .collect()
    };
    let (good, corrupted) = (seven(3), seven(5));
    for (key, bytes) in [("raw/good.csv", &good), ("raw/corrupted.csv", &corrupted)] {
        s3.put_object()
            .bucket(&bucket)
            .key(key)
            .body(ByteStream::from(bytes.clone()))
            .send()
            .await
            .unwrap();
    }
    let parted: Vec<u8> = (0..(5 * mib + mib / 2) as u32)
        .map(|i| (i % 241) as u8)
        .collect();
    put_in_parts(
        stack,
        &bucket,
        "raw/parted.csv",
        &parted,
        5 * mib,
        Some(aws_sdk_s3::types::ChecksumAlgorithm::Crc64Nvme),
    )
    .await;
    let checksum = |key: &'static str| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            let head = s3
                .head_object()
                .bucket(&bucket)
                .key(key)
                .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                .send()
                .await
                .unwrap();
            (
                head.checksum_crc32().map(String::from),
                head.checksum_crc64_nvme().map(String::from),
            )
        }
    };
    let good_crc = checksum("raw/good.csv").await;
    let parted_crc = checksum("raw/parted.csv").await;
    assert!(
        good_crc.0.is_some() && parted_crc.1.is_some(),
        "{good_crc:?} {parted_crc:?}"
    );
    let _turn = stack
        .turn(
            json!({"rules": [{"service": "s3", "operations": ["UploadPartCopy"],
                                "key_contains": "corrupted", "count": 1, "answer": "tamper"}]}),
        )
        .await;

    let execution = stack.start("checksums", &input(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;
    stack.set_faults(&json!({}));

    // THEN the corrupted copy failed: S3 refused to complete an object whose checksum is
    // not the source's, the source stays with its bytes, and no upload is left open
    assert_eq!(described.status, ExecutionStatus::Failed, "{described:?}");
    let cause = described.cause.unwrap();
    assert!(cause.starts_with("1 of 6 files failed to move:"), "{cause}");
    assert!(
        cause.contains("raw/corrupted.csv: CompleteMultipartUpload: BadDigest"),
        "{cause}"
    );
    let now = contents(stack, &bucket).await;
    assert_eq!(now.get("raw/corrupted.csv"), Some(&md5_hex(&corrupted)));
    assert!(!now.contains_key("refined/corrupted.csv"), "{now:?}");
    let open = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(open.uploads().is_empty(), "{:?}", open.uploads());
    // AND the others moved with their bytes, each copy reporting its source's checksum
    for (key, bytes) in [("good.csv", &good), ("parted.csv", &parted)] {
        let copied = s3
            .get_object()
            .bucket(&bucket)
            .key(format!("refined/{key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            &copied.body.collect().await.unwrap().to_vec(),
            bytes,
            "{key}"
        );
        assert!(!now.contains_key(&format!("raw/{key}")), "{key}");
    }
    assert_eq!(checksum("refined/good.csv").await.0, good_crc.0);
    assert_eq!(checksum("refined/parted.csv").await.1, parted_crc.1);
    // AND the run counts the copy in parts and the whole copy of the file uploaded in
    // parts (whose ETag proves nothing: it was read first, and copied with its
    // checksum's algorithm) as verified by checksum; the small files, whose copies
    // report their listed MD5, count as verified by size and ETag
    let progress = run_progress(stack, "checksums").await;
    assert_eq!(
        (
            progress.selected,
            progress.completed,
            progress.failed,
            progress.by_checksum
        ),
        (6, 5, 1, 2)
    );
}

/// What IAM checks for one recorded call (see `local/faults.py` for the fields).
fn needs(call: &Value, stack: &LocalStack) -> Vec<Need> {
    let field = |name: &str| call[name].as_str().unwrap_or_default().to_string();
    let need = |action: &str, resource: String| Need {
        action: action.to_string(),
        resource,
        s3_prefix: None,
    };
    let object = |bucket_and_key: String| format!("arn:aws:s3:::{bucket_and_key}");
    let (bucket, key, source) = (field("bucket"), field("key"), field("source"));
    // Deleting a version id, not just the current object, is a permission of its own.
    let delete_action = if call["versioned"] == json!(true) {
        "s3:DeleteObjectVersion"
    } else {
        "s3:DeleteObject"
    };
    let destination = object(format!("{bucket}/{key}"));
    let table = format!(
        "arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{}",
        stack.var("TABLE_NAME")
    );
    match (field("service").as_str(), field("operation").as_str()) {
        ("s3", "ListObjectsV2" | "ListObjects") => vec![Need {
            s3_prefix: Some(field("prefix")),
            ..need("s3:ListBucket", format!("arn:aws:s3:::{bucket}"))
        }],
        // Tags travel with a copy: reading them at the source, writing them at the destination.
        ("s3", "CopyObject") => vec![
            need("s3:GetObject", object(source.clone())),
            need("s3:GetObjectTagging", object(source)),
            need("s3:PutObject", destination.clone()),
            need("s3:PutObjectTagging", destination),
        ],
        ("s3", "UploadPartCopy") => vec![
            need("s3:GetObject", object(source)),
            need("s3:PutObject", destination),
        ],
        ("s3", "CreateMultipartUpload") => vec![
            need("s3:PutObject", destination.clone()),
            need("s3:PutObjectTagging", destination),
        ],
        ("s3", "CompleteMultipartUpload" | "UploadPart" | "PutObject") => {
            vec![need("s3:PutObject", destination)]
        }
        ("s3", "AbortMultipartUpload") => vec![need("s3:AbortMultipartUpload", destination)],
        ("s3", "ListParts") => vec![need("s3:ListMultipartUploadParts", destination)],
        ("s3", "ListMultipartUploads") => vec![need(
            "s3:ListBucketMultipartUploads",
            format!("arn:aws:s3:::{bucket}"),
        )],
        ("s3", "HeadObject" | "GetObject") => vec![need("s3:GetObject", destination)],
        ("s3", "GetObjectTagging") => vec![need("s3:GetObjectTagging", destination)],
        // Asked once per bucket for its region, which S3 answers (x-amz-bucket-region)
        // whatever the caller may do with the bucket, a 403 included: it needs nothing.
        ("s3", "HeadBucket") => vec![],
        ("s3", "DeleteObject") => vec![need(delete_action, destination)],
        ("s3", "DeleteObjects") => call["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                need(
                    delete_action,
                    object(format!("{bucket}/{}", k.as_str().unwrap())),
                )
            })
            .collect(),
        // A transaction needs the permission of each kind of write in it.
        ("dynamodb", "TransactWriteItems") => call["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kind| match kind.as_str().unwrap() {
                "ConditionCheck" => need("dynamodb:ConditionCheckItem", table.clone()),
                other => need(&format!("dynamodb:{other}Item"), table.clone()),
            })
            .collect(),
        ("dynamodb", operation) => vec![need(&format!("dynamodb:{operation}"), table)],
        // An execution's history is the execution's; task tokens belong to the activity.
        ("states", "GetExecutionHistory") => {
            vec![need("states:GetExecutionHistory", field("target"))]
        }
        ("states", operation) => vec![need(
            &format!("states:{operation}"),
            stack.var("ACTIVITY_ARN").to_string(),
        )],
        ("lambda", "Invoke") => {
            let target = field("target");
            let arn = if target.starts_with("arn:") {
                target
            } else {
                LocalNames::function_arn(&target)
            };
            vec![need("lambda:InvokeFunction", arn)]
        }
        other => panic!("no IAM mapping for {other:?}: {call}"),
    }
}

/// Actions a policy grants for paths a run on the local stack does not take.
const GRANTED_FOR_RARE_PATHS: &[(&str, &str, &str)] = &[
    (
        "slave",
        "s3:AbortMultipartUpload",
        "a multipart copy that fails is aborted, so no parts are left to pay for",
    ),
    (
        "slave",
        "s3:ListBucket",
        "HeadObject of a missing key answers 404, not 403, only to a caller that may list",
    ),
    (
        "slave",
        "s3:ListMultipartUploadParts",
        "a copy in parts lists the parts of an upload an earlier invocation began, to copy only the rest",
    ),
    (
        "master",
        "dynamodb:Query",
        "a call that stopped between recording batches and handing them out reads them back",
    ),
    (
        "slave",
        "dynamodb:DeleteItem",
        "a batch whose failed files complete on a later delivery loses its failure marker",
    ),
    (
        "slave",
        "dynamodb:GetItem",
        "a delivery that loses the race to record a batch reads what the other recorded",
    ),
    (
        "status",
        "dynamodb:GetItem",
        "after a poll that brought no task, or another run's, status reads whether a \
         concurrent check recorded this run's token",
    ),
    (
        "status",
        "states:SendTaskHeartbeat",
        "keeps the task tokens recorded for a run alive while the run finishes",
    ),
    (
        "status",
        "states:GetExecutionHistory",
        "when a recorded token is refused, tells a result already delivered from a lapsed token",
    ),
    (
        "slave",
        "s3:DeleteObjectVersion",
        "in a bucket that keeps versions, the version copied is deleted once its key has a \
         delete marker, so moved data is not kept twice",
    ),
    (
        "slave",
        "lambda:InvokeFunction",
        "a slave short of time hands the rest of its batch to a new invocation",
    ),
];

#[tokio::test]
async fn each_function_makes_only_calls_its_policy_allows() {
    // GIVEN a run that takes the usual paths (small files, a multipart copy with tags)
    // and one whose files fail
    let stack = local_stack();
    let bucket = bucket_with(stack, &keys("raw/ok/f-", 30)).await;
    let s3 = stack.s3().await;
    s3.put_object()
        .bucket(&bucket)
        .key("raw/ok/large.csv")
        .tagging("kind=large")
        .body(ByteStream::from(vec![7u8; 7 * 1024 * 1024]))
        .send()
        .await
        .unwrap();
    put(
        stack,
        &bucket,
        &keys("raw/bad/f-", 2),
        Some(StorageClass::Glacier),
    )
    .await;
    let named = keys("raw/named/f-", 3);
    put(stack, &bucket, &named, None).await;
    let manifest: String = named.iter().map(|k| format!("{bucket},{k}\n")).collect();
    put_bytes(
        stack,
        &bucket,
        "manifests/policy.csv",
        manifest.into_bytes(),
    )
    .await;
    let _turn = stack.turn(json!({"record_calls": true})).await;

    // WHEN a dry run and then both run with every call recorded
    let plan = stack
        .start(
            "policy-plan",
            &input(
                &bucket,
                json!({"source_prefix": "raw/ok/", "dry_run": true}),
            ),
        )
        .await;
    let plan = stack.finished(&plan).await;
    assert_eq!(plan.status, ExecutionStatus::Succeeded, "{plan:?}");
    let ok = stack
        .start(
            "policy-ok",
            &input(&bucket, json!({"source_prefix": "raw/ok/"})),
        )
        .await;
    let bad = stack
        .start(
            "policy-bad",
            &input(&bucket, json!({"source_prefix": "raw/bad/"})),
        )
        .await;
    let named = stack
        .start(
            "policy-manifest",
            &input(
                &bucket,
                json!({"source_prefix": "raw/named/", "manifest": {
                    "bucket": bucket, "key": "manifests/policy.csv", "format": "csv"}}),
            ),
        )
        .await;
    let (ok, bad, named) = tokio::join!(
        stack.finished(&ok),
        stack.finished(&bad),
        stack.finished(&named)
    );
    assert_eq!(ok.status, ExecutionStatus::Succeeded, "{ok:?}");
    assert_eq!(bad.error.as_deref(), Some("TransferFailed"), "{bad:?}");
    assert_eq!(named.status, ExecutionStatus::Succeeded, "{named:?}");
    let calls = stack.calls();
    stack.set_faults(&json!({}));

    // THEN every call of each function is allowed by the template's policy for it, as
    // deployed with this bucket and the default prefixes
    let template =
        Template::parse(&std::fs::read_to_string(workspace_root().join("template.yaml")).unwrap())
            .unwrap();
    let functions = template.functions();
    let resolve = |reference: &Reference| match reference {
        Reference::Parameter { name, .. } if name == "SourceBucketName" => Some(bucket.clone()),
        Reference::Parameter { default, .. } => default.clone(),
        Reference::Resource {
            id,
            resource_type,
            arn,
        } => match resource_type.as_str() {
            "AWS::DynamoDB::Table" if *arn => Some(format!(
                "arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{}",
                stack.var("TABLE_NAME")
            )),
            "AWS::StepFunctions::Activity" => Some(stack.var("ACTIVITY_ARN").to_string()),
            "AWS::Serverless::StateMachine" => stack
                .var("STATE_MACHINE_ARN")
                .rsplit(':')
                .next()
                .map(String::from),
            "AWS::Serverless::Function" => functions
                .iter()
                .find(|f| &f.resource == id)
                .map(|f| LocalNames::function_arn(&f.binary)),
            _ => None,
        },
    };
    let deployment = Deployment {
        partition: "aws",
        region: REGION,
        account: ACCOUNT,
        resolve: &resolve,
        condition: &|name| ["DestinationIsSourceBucket", "ManifestInSourceBucket"].contains(&name),
    };
    let mut refused = Vec::new();
    let mut unused = Vec::new();
    for function in &functions {
        let statements = template.policy(&function.resource, &deployment).unwrap();
        let made: Vec<Need> = calls
            .iter()
            .filter(|c| c["caller"] == function.binary.as_str())
            .flat_map(|c| needs(c, stack))
            .collect();
        assert!(
            !made.is_empty(),
            "no calls recorded for {}",
            function.binary
        );
        for need in &made {
            if !statements.iter().any(|s| s.allows(need)) {
                refused.push(format!("{}: {need:?}", function.binary));
            }
        }
        // AND nothing is granted that no call needs, unless a rare path needs it
        for statement in &statements {
            for action in &statement.actions {
                let used = made
                    .iter()
                    .any(|n| &n.action == action && statement.allows(n));
                let rare = GRANTED_FOR_RARE_PATHS
                    .iter()
                    .any(|(f, a, _)| *f == function.binary && a == action);
                if !used && !rare {
                    unused.push(format!("{} {}: {action}", function.binary, statement.sid));
                }
            }
        }
    }
    assert!(
        refused.is_empty(),
        "calls the policies refuse:\n{}",
        refused.join("\n")
    );
    assert!(
        unused.is_empty(),
        "granted but never needed:\n{}",
        unused.join("\n")
    );
}

#[tokio::test]
async fn a_retried_copy_refused_by_its_own_earlier_copy_is_recognised_and_moves_the_file() {
    // GIVEN a run that does not overwrite, and a slave that dies after copying and before
    // deleting, so the retry finds its own copies at the destinations
    let stack = local_stack();
    let files = keys("raw/mine-", 4);
    let bucket = bucket_with(stack, &files).await;
    let _turn = stack.turn(json!({})).await;
    stack.arm_crash("slave-between-copy-and-delete");

    // WHEN the execution moves them (the slave's event is retried after the crash)
    let execution = stack
        .start(
            "own-copies",
            &input(&bucket, json!({"if_destination_exists": "skip"})),
        )
        .await;
    let described = stack.finished(&execution).await;

    // THEN the retry's conditional copies were refused, each destination was recognised
    // as holding the listed object, and every file moved: none skipped
    assert!(stack.crashed("slave-between-copy-and-delete"));
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    let summary = output(&described);
    assert_eq!(summary["completed"], json!(4), "{summary}");
    assert!(summary.get("skipped").is_none(), "{summary}");
    assert_eq!(contents(stack, &bucket).await, moved_and_kept(&files, &[]));
}
