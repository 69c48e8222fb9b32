//! The whole workflow on the local stack: the real state machine, run by Step Functions'
//! engine, calling the real master, slave and status binaries through the Lambda
//! runtime API, against S3 and DynamoDB. Each test checks the bucket, the status table
//! and the execution's history.

use std::collections::BTreeMap;

use aws_sdk_s3::types::StorageClass;
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEventType};
use common::RunId;
use common::rules::outcomes::FileState;
use integration_tests::stack::{
    bucket_with, contents, input, keys, local_stack, output, put, put_bytes, records,
};
use integration_tests::{body_of, md5_hex};
use serde_json::{Value, json};

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
               "completed": 1200, "failed": 0, "bytes": bytes, "verified_by_etag": 1200})
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
    let store = records(stack).await;
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
    // each with what to do about it
    assert!(
        cause
            .lines()
            .skip(1)
            .all(|l| l.contains("the object is archived (GLACIER)") && l.contains("restore it")),
        "{cause}"
    );
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
    let store = records(stack).await;
    let run = RunId::parse("partly-failed").unwrap();
    let failed = store.failed_files(&run, 100).await.unwrap();
    assert_eq!(
        failed.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        archived
    );
    for (key, reason) in &failed {
        assert!(
            reason.starts_with("the object is archived (GLACIER)"),
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
async fn eight_executions_at_once_each_complete_their_own_activity_task() {
    // GIVEN 8 prefixes of 500 files each in one bucket
    let stack = local_stack();
    let runs: Vec<(String, Vec<String>)> = (0..8)
        .map(|i| (format!("run-{i}"), keys(&format!("raw/p{i}/f-"), 500)))
        .collect();
    let all: Vec<String> = runs.iter().flat_map(|(_, files)| files.clone()).collect();
    let bucket = bucket_with(stack, &all).await;

    // WHEN 8 executions start at once, each on its own prefix
    let executions = futures::future::join_all(runs.iter().enumerate().map(|(i, (run, _))| {
        let input = input(
            &bucket,
            json!({"source_prefix": format!("raw/p{i}/"), "destination_prefix": format!("out/p{i}/")}),
        );
        async move { stack.start(run, &input).await }
    }))
    .await;
    let described = futures::future::join_all(executions.iter().map(|e| stack.finished(e))).await;

    // THEN each succeeds with its own files, run id and activity task
    let store = records(stack).await;
    let now = contents(stack, &bucket).await;
    assert_eq!(now.keys().filter(|k| k.starts_with("raw/")).count(), 0);
    for (i, ((run, files), described)) in runs.iter().zip(&described).enumerate() {
        assert_eq!(
            described.status,
            ExecutionStatus::Succeeded,
            "{run}: {described:?}"
        );
        let out = output(described);
        assert_eq!(
            (&out["run_id"], &out["files"], &out["completed"]),
            (&json!(run), &json!(500), &json!(500))
        );
        for key in files {
            let destination = key.replacen(&format!("raw/p{i}/"), &format!("out/p{i}/"), 1);
            assert_eq!(
                now.get(&destination),
                Some(&md5_hex(&body_of(key))),
                "{run}: {key}"
            );
        }
        let history = stack.history(&executions[i]).await;
        let activity_results: Vec<_> = history
            .iter()
            .filter(|e| {
                matches!(
                    e.r#type,
                    HistoryEventType::ActivitySucceeded | HistoryEventType::ActivityFailed
                )
            })
            .collect();
        assert_eq!(activity_results.len(), 1, "{run}");
        // the activity's result is this run's summary: its token went to its own status
        let result: serde_json::Value = serde_json::from_str(
            activity_results[0]
                .activity_succeeded_event_details
                .as_ref()
                .and_then(|d| d.output.as_deref())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(result["run_id"], json!(run));
        // and the run's records and counters hold its own files only
        let run_id = RunId::parse(run).unwrap();
        let view = store.run_view(&run_id).await.unwrap().unwrap();
        assert_eq!(
            (
                view.progress.selected,
                view.progress.completed,
                view.progress.failed
            ),
            (500, 500, 0),
            "{run}"
        );
        let recorded: Vec<String> = store
            .files(&run_id)
            .await
            .unwrap()
            .into_iter()
            .map(|f| {
                assert_eq!(f.state, FileState::Completed, "{run}: {}", f.file.key);
                f.file.key
            })
            .collect();
        assert_eq!(&recorded, files, "{run} records exactly its own files");
    }
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
    let store = records(stack).await;
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
    let store = records(stack).await;
    assert!(
        store
            .run_view(&RunId::parse("typo").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn keys_with_characters_xml_cannot_carry_move_like_any_other() {
    // GIVEN ordinary keys among keys with ASCII control characters (which make an
    // unencoded listing page unreadable and cannot travel in DeleteObjects), a carriage
    // return, a tab and DEL (moto cannot store a key with a newline, which S3 can)
    let stack = local_stack();
    let odd = vec![
        "raw/a\u{1}.csv".to_string(),
        "raw/b\u{1f}\u{b}c.csv".to_string(),
        "raw/cr\rx.csv".to_string(),
        "raw/tab\there.csv".to_string(),
        "raw/del\u{7f}.csv".to_string(),
    ];
    let ordinary = keys("raw/plain-", 30);
    let all = [odd.clone(), ordinary.clone()].concat();
    let bucket = bucket_with(stack, &all).await;

    // WHEN an execution moves them
    let execution = stack.start("odd-keys", &input(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;

    // THEN every one arrived with its bytes and left its source
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    assert_eq!(output(&described)["completed"], json!(all.len()));
    let expected: BTreeMap<String, String> = all
        .iter()
        .map(|k| (k.replacen("raw/", "refined/", 1), md5_hex(&body_of(k))))
        .collect();
    assert_eq!(contents(stack, &bucket).await, expected);
    let recorded: Vec<String> = records(stack)
        .await
        .files(&RunId::parse("odd-keys").unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.file.key)
        .collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(recorded, sorted, "each key recorded exactly as S3 has it");
}

#[tokio::test]
async fn a_destination_key_longer_than_s3_allows_fails_its_file_and_keeps_its_source() {
    // GIVEN a destination prefix 204 bytes longer than the source prefix, a file whose
    // key fits at the source (900 bytes) but would not at the destination (1,104), and
    // ordinary files
    let stack = local_stack();
    let long = format!("raw/{}.csv", "k".repeat(892));
    assert_eq!(long.len(), 900);
    let ordinary = keys("raw/short-", 10);
    let bucket = bucket_with(stack, &[ordinary.clone(), vec![long.clone()]].concat()).await;
    let destination = format!("refined/{}/", "d".repeat(199));

    // WHEN an execution moves them
    let execution = stack
        .start(
            "long-destination",
            &input(&bucket, json!({"destination_prefix": destination})),
        )
        .await;
    let described = stack.finished(&execution).await;

    // THEN the long one failed with the reason before any copy, its source kept, and the
    // rest moved
    assert_eq!(described.status, ExecutionStatus::Failed, "{described:?}");
    assert_eq!(described.error.as_deref(), Some("TransferFailed"));
    let cause = described.cause.unwrap();
    assert!(
        cause.starts_with("1 of 11 files failed to move:"),
        "{cause}"
    );
    let bytes = destination.len() + long.len() - "raw/".len();
    assert_eq!(bytes, 1104);
    assert!(
        cause.contains(&format!(
            "{long}: the destination key would be {bytes} bytes, longer than the 1024 S3 \
             allows; the source was left in place"
        )),
        "{cause}"
    );
    let now = contents(stack, &bucket).await;
    assert_eq!(now.get(&long), Some(&md5_hex(&body_of(&long))));
    for key in &ordinary {
        let moved = key.replacen("raw/", &destination, 1);
        assert_eq!(now.get(&moved), Some(&md5_hex(&body_of(key))), "{key}");
        assert!(!now.contains_key(key));
    }
    assert_eq!(now.len(), 11, "nothing else was written");
}

#[tokio::test]
async fn malformed_input_and_unlistable_buckets_end_the_execution_at_once_by_name() {
    // GIVEN files to move, and inputs that are wrong in one field each
    let stack = local_stack();
    let files = keys("raw/f-", 3);
    let bucket = bucket_with(stack, &files).await;
    let manifests = [
        (
            "manifests/outside.csv",
            format!("{bucket},raw/f-00000.csv\n{bucket},elsewhere/x.csv\n"),
        ),
        (
            "manifests/twice.csv",
            format!(
                "{bucket},raw/f-00000.csv\n{bucket},raw/f-00001.csv\n{bucket},raw/f-00000.csv\n"
            ),
        ),
        (
            "manifests/versions.csv",
            format!("{bucket},raw/f-00000.csv,3HL4kqtJvjVBH40Nrjfkd\n"),
        ),
    ];
    for (key, body) in &manifests {
        put_bytes(stack, &bucket, key, body.clone().into_bytes()).await;
    }
    let manifest = |key: &str| json!({"manifest": {"bucket": bucket, "key": key, "format": "csv"}});
    let cases = [
        (
            "negative-wait",
            json!({"wait_before_master_seconds": -1}),
            "wait_before_master_seconds",
        ),
        (
            "zero-timeout",
            json!({"run_timeout_seconds": 0}),
            "run_timeout_seconds",
        ),
        (
            "text-wait",
            json!({"wait_before_status_seconds": "soon"}),
            "wait_before_status_seconds",
        ),
        ("own-run-id", json!({"run_id": "other"}), "run_id"),
        (
            "null-wait",
            json!({"wait_before_status_seconds": null}),
            "wait_before_status_seconds: null",
        ),
        (
            "three-days-and-one",
            json!({"run_timeout_seconds": 259_201}),
            "run_timeout_seconds",
        ),
        (
            "bad-pattern",
            json!({"include": ["**/*.csv"], "exclude": ["[tmp]"]}),
            "exclude[0]",
        ),
        (
            "no-bucket",
            json!({"source_bucket": "no-such-bucket-here"}),
            "source s3://no-such-bucket-here/raw/",
        ),
        (
            "no-destination",
            json!({"destination_bucket": "no-such-target-here"}),
            "destination s3://no-such-target-here/refined/",
        ),
        (
            "manifest-outside",
            manifest("manifests/outside.csv"),
            "manifests/outside.csv line 2 names the key \\\"elsewhere/x.csv\\\", which is not \
             under the run's source prefix",
        ),
        (
            "manifest-twice",
            manifest("manifests/twice.csv"),
            "manifests/twice.csv line 3 names the key \\\"raw/f-00000.csv\\\" again (line 1 named \
             it first)",
        ),
        (
            "manifest-versions",
            manifest("manifests/versions.csv"),
            "manifests/versions.csv line 1 names a version",
        ),
        (
            "manifest-missing",
            manifest("manifests/none.csv"),
            "manifests/none.csv does not exist",
        ),
        (
            "manifest-format",
            json!({"manifest": {"bucket": bucket, "key": "m.csv", "format": "xlsx"}}),
            "manifest.format: unknown variant `xlsx`",
        ),
    ];

    // WHEN each runs, and one whose input is not an object
    let mut executions = Vec::new();
    for (name, extra, _) in &cases {
        executions.push(stack.start(name, &input(&bucket, extra.clone())).await);
    }
    executions.push(stack.start("not-an-object", &json!([1, 2])).await);
    let described = futures::future::join_all(executions.iter().map(|e| stack.finished(e))).await;

    // THEN each fails with InvalidEvent naming what is wrong within seconds, before
    // anything was recorded or moved
    let store = records(stack).await;
    let expectations = cases
        .iter()
        .map(|(name, _, named)| (*name, *named))
        .chain([("not-an-object", "must be a JSON object")]);
    for ((name, named), described) in expectations.zip(&described) {
        assert_eq!(described.status, ExecutionStatus::Failed, "{name}");
        assert_eq!(described.error.as_deref(), Some("InvalidEvent"), "{name}");
        let cause = described.cause.clone().unwrap();
        assert!(cause.contains(named), "{name}: {cause}");
        let took = integration_tests::stack::duration(described);
        assert!(
            took < std::time::Duration::from_secs(5),
            "{name} took {took:?}"
        );
        assert!(
            store
                .run_view(&RunId::parse(name).unwrap())
                .await
                .unwrap()
                .is_none(),
            "{name} recorded a run"
        );
    }
    let mut kept = files.clone();
    kept.extend(manifests.iter().map(|(key, _)| key.to_string()));
    kept.sort();
    assert_eq!(
        contents(stack, &bucket)
            .await
            .into_keys()
            .collect::<Vec<_>>(),
        kept
    );
}

#[tokio::test]
async fn a_selection_moves_exactly_the_keys_its_patterns_sizes_and_times_take() {
    // GIVEN a mixed tree: one object written before a moment, then objects after it
    // that each fail one condition of the selection but two
    let stack = local_stack();
    let bucket = bucket_with(stack, &[]).await;
    let write = |key: &'static str, size: usize| put_bytes(stack, &bucket, key, vec![b'x'; size]);
    write("raw/2026/11/old.parquet", 100).await;
    // S3 keeps modification times to the second
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let boundary = aws_smithy_types::DateTime::from(std::time::SystemTime::now())
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let taken = ["raw/2026/11/a.parquet", "raw/2026/11/deep/b.parquet"];
    let left = [
        ("raw/2026/11/tmp/c.parquet", 100), // excluded
        ("raw/2026/11/tiny.parquet", 5),    // smaller than min_size
        ("raw/2026/11/huge.parquet", 2000), // larger than max_size
        ("raw/2026/11/d.csv", 100),         // not included
        ("raw/2025/e.parquet", 100),        // not included
    ];
    for key in taken {
        write(key, 100).await;
    }
    for (key, size) in left {
        write(key, size).await;
    }
    let before = contents(stack, &bucket).await;

    // WHEN a run selects parquet files under 2026/, outside tmp/, of 10 to 1,000 bytes,
    // written after the moment (no suffixes given: the patterns say which keys)
    let selection = json!({
        "include": ["2026/**/*.parquet"], "exclude": ["**/tmp/**"],
        "min_size": 10, "max_size": 1000, "modified_after": boundary,
    });
    let execution = stack
        .start("selected", &input(&bucket, selection.clone()))
        .await;
    let described = stack.finished(&execution).await;

    // THEN exactly the two objects that meet every condition moved, and nothing else
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    assert_eq!(output(&described)["files"], json!(2));
    assert_eq!(output(&described)["completed"], json!(2));
    assert_eq!(output(&described)["bytes"], json!(200));
    let mut expected = before.clone();
    for key in taken {
        let etag = expected.remove(key).unwrap();
        expected.insert(key.replacen("raw/", "refined/", 1), etag);
    }
    assert_eq!(contents(stack, &bucket).await, expected);
    let run = RunId::parse("selected").unwrap();
    let files: Vec<String> = records(stack)
        .await
        .files(&run)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.file.key)
        .collect();
    assert_eq!(files, taken);
}

#[tokio::test]
async fn a_manifest_moves_exactly_the_keys_it_names_and_a_key_with_no_object_fails_by_name() {
    // GIVEN files under raw/m/ and raw/j/, a CSV manifest naming three of them (one
    // URL-encoded, one quoted, one not a .csv) and a key with no object, and a JSONL
    // manifest naming two others
    let stack = local_stack();
    let named = ["raw/m/a.csv", "raw/m/with space.csv", "raw/m/sub/b.txt"];
    let jsonl_named = ["raw/j/x+y.csv", "raw/j/z.csv"];
    let unnamed = ["raw/m/c.csv", "raw/j/w.csv"];
    let all: Vec<String> = named
        .iter()
        .chain(&jsonl_named)
        .chain(&unnamed)
        .map(|k| k.to_string())
        .collect();
    let bucket = bucket_with(stack, &all).await;
    let csv = format!(
        "{bucket},raw/m/a.csv\r\n\"{bucket}\",\"raw/m/with+space.csv\"\n\n{bucket},raw/m/gone.csv\n\
         {bucket},raw/m/sub/b.txt"
    );
    put_bytes(stack, &bucket, "manifests/m.csv", csv.into_bytes()).await;
    let jsonl = format!(
        "{{\"key\": \"raw/j/x+y.csv\"}}\n{{\"bucket\": \"{bucket}\", \"key\": \"raw/j/z.csv\"}}\n"
    );
    put_bytes(stack, &bucket, "manifests/j.jsonl", jsonl.into_bytes()).await;
    let before = contents(stack, &bucket).await;

    // WHEN an execution runs with each manifest
    let manifest = |key: &str, format: &str| json!({"manifest": {"bucket": bucket, "key": key, "format": format}});
    let from_csv = stack
        .start(
            "from-csv",
            &input(&bucket, manifest("manifests/m.csv", "csv")),
        )
        .await;
    let from_jsonl = stack
        .start(
            "from-jsonl",
            &input(&bucket, manifest("manifests/j.jsonl", "jsonl")),
        )
        .await;
    let (from_csv, from_jsonl) =
        tokio::join!(stack.finished(&from_csv), stack.finished(&from_jsonl));

    // THEN the named keys moved, whatever their suffix, and nothing else did
    let mut expected = before.clone();
    for key in named.iter().chain(&jsonl_named) {
        let etag = expected.remove(*key).unwrap();
        expected.insert(key.replacen("raw/", "refined/", 1), etag);
    }
    assert_eq!(contents(stack, &bucket).await, expected);
    // AND the JSONL run succeeded; the CSV run failed by the name of the key with no
    // object, recorded as not found with the others completed
    assert_eq!(
        from_jsonl.status,
        ExecutionStatus::Succeeded,
        "{from_jsonl:?}"
    );
    assert_eq!(output(&from_jsonl)["completed"], json!(2));
    assert_eq!(
        from_csv.error.as_deref(),
        Some("TransferFailed"),
        "{from_csv:?}"
    );
    let cause = from_csv.cause.clone().unwrap();
    assert!(cause.starts_with("1 of 4 files failed to move"), "{cause}");
    assert!(cause.contains("raw/m/gone.csv: not found"), "{cause}");
    let run = RunId::parse("from-csv").unwrap();
    let states: BTreeMap<String, FileState> = records(stack)
        .await
        .files(&run)
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.file.key, f.state))
        .collect();
    assert_eq!(
        states,
        BTreeMap::from([
            ("raw/m/a.csv".to_string(), FileState::Completed),
            ("raw/m/gone.csv".to_string(), FileState::Failed),
            ("raw/m/sub/b.txt".to_string(), FileState::Completed),
            ("raw/m/with space.csv".to_string(), FileState::Completed),
        ])
    );
}

#[tokio::test]
async fn a_manifest_replaced_after_the_input_check_ends_the_run_and_moves_nothing() {
    // GIVEN files and a manifest naming them
    let stack = local_stack();
    let files = keys("raw/pinned-", 3);
    let bucket = bucket_with(stack, &files).await;
    let lines = |keys: &[String]| -> Vec<u8> {
        keys.iter()
            .map(|k| format!("{bucket},{k}\n"))
            .collect::<String>()
            .into_bytes()
    };
    put_bytes(stack, &bucket, "manifests/pinned.csv", lines(&files)).await;
    let before = contents(stack, &bucket).await;

    // WHEN an execution checks it, and it is replaced while the execution waits to start
    // master
    let execution = stack
        .start(
            "pinned",
            &input(
                &bucket,
                json!({"wait_before_master_seconds": 2, "manifest": {
                    "bucket": bucket, "key": "manifests/pinned.csv", "format": "csv"}}),
            ),
        )
        .await;
    loop {
        let history = stack.history(&execution).await;
        if history
            .iter()
            .any(|e| e.r#type == HistoryEventType::LambdaFunctionSucceeded)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let replacement = lines(&files[..1]);
    put_bytes(stack, &bucket, "manifests/pinned.csv", replacement).await;
    let described = stack.finished(&execution).await;

    // THEN the run reads only the manifest that was checked: it ends with InvalidEvent
    // saying so, and nothing moved
    assert_eq!(
        described.error.as_deref(),
        Some("InvalidEvent"),
        "{described:?}"
    );
    let cause = described.cause.clone().unwrap();
    assert!(
        cause.contains("manifests/pinned.csv is no longer the object the run reads"),
        "{cause}"
    );
    let mut expected = before;
    expected.insert("manifests/pinned.csv".into(), md5_hex(&lines(&files[..1])));
    assert_eq!(contents(stack, &bucket).await, expected);
}

#[tokio::test]
async fn a_move_into_a_bucket_of_another_region_and_its_expected_owner_is_checked() {
    // GIVEN files in the stack's region, and a destination bucket in eu-west-1
    let stack = local_stack();
    let files = keys("raw/far-", 12);
    let bucket = bucket_with(stack, &files).await;
    let far = format!("{bucket}-eu");
    integration_tests::create_bucket_in(&stack.s3().await, &far, "eu-west-1").await;
    let before = contents(stack, &bucket).await;

    // WHEN a run names another account as the destination's owner, and then one names
    // the owners as they are
    let owner = xtask::local::ACCOUNT;
    let elsewhere = stack
        .start(
            "far-other-owner",
            &input(
                &bucket,
                json!({"destination_bucket": far, "destination_bucket_owner": "111122223333"}),
            ),
        )
        .await;
    let elsewhere = stack.finished(&elsewhere).await;
    let moved = stack
        .start(
            "far-move",
            &input(
                &bucket,
                json!({"destination_bucket": far, "source_bucket_owner": owner,
                       "destination_bucket_owner": owner}),
            ),
        )
        .await;
    let moved = stack.finished(&moved).await;

    // THEN the first is refused at once, naming the destination, and moves nothing
    assert_eq!(
        elsewhere.error.as_deref(),
        Some("InvalidEvent"),
        "{elsewhere:?}"
    );
    let cause = elsewhere.cause.clone().unwrap();
    assert!(
        cause.contains(&format!("destination s3://{far}/refined/ cannot be listed")),
        "{cause}"
    );
    // AND the second moves every file into the bucket in eu-west-1, its requests sent to
    // that region (the local front redirects any other, as S3 does)
    assert_eq!(moved.status, ExecutionStatus::Succeeded, "{moved:?}");
    assert_eq!(output(&moved)["completed"], json!(12));
    assert!(contents(stack, &bucket).await.is_empty());
    let ireland = integration_tests::client_in(&stack.s3().await, "eu-west-1");
    let arrived = integration_tests::listing(&ireland, &far, "").await;
    let expected: BTreeMap<String, String> = before
        .iter()
        .map(|(key, etag)| (key.replacen("raw/", "refined/", 1), etag.clone()))
        .collect();
    assert_eq!(arrived, expected);
}

#[tokio::test]
async fn copies_keep_their_source_storage_class_unless_the_run_names_one() {
    // GIVEN objects in four storage classes, one of them large enough to be copied in
    // parts, and others for a run that names a class
    let stack = local_stack();
    let standard = keys("raw/standard-", 2);
    let bucket = bucket_with(stack, &standard).await;
    let classed = [
        (keys("raw/ia-", 2), StorageClass::StandardIa),
        (keys("raw/tiering-", 2), StorageClass::IntelligentTiering),
        (keys("raw/instant-", 2), StorageClass::GlacierIr),
    ];
    for (keys, class) in &classed {
        put(stack, &bucket, keys, Some(class.clone())).await;
    }
    let s3 = stack.s3().await;
    s3.put_object()
        .bucket(&bucket)
        .key("raw/large-ia.csv")
        .body(vec![b'l'; 7 << 20].into())
        .storage_class(StorageClass::StandardIa)
        .send()
        .await
        .unwrap();
    let forced = keys("again/", 3);
    put(stack, &bucket, &forced[..1], Some(StorageClass::StandardIa)).await;
    put(stack, &bucket, &forced[1..], None).await;
    let classes = |prefix: &'static str| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            let listed = s3
                .list_objects_v2()
                .bucket(&bucket)
                .prefix(prefix)
                .send()
                .await
                .unwrap();
            listed
                .contents()
                .iter()
                .map(|o| {
                    let class = o.storage_class().map_or("STANDARD", |c| c.as_str());
                    (o.key().unwrap().to_string(), class.to_string())
                })
                .collect::<BTreeMap<String, String>>()
        }
    };

    // WHEN a run moves raw/ without naming a class, and another moves again/ to forced/
    // naming ONEZONE_IA
    let kept = stack
        .start("keep-classes", &input(&bucket, json!({})))
        .await;
    let named = stack
        .start(
            "name-a-class",
            &input(
                &bucket,
                json!({"source_prefix": "again/", "destination_prefix": "forced/",
                       "storage_class": "ONEZONE_IA"}),
            ),
        )
        .await;
    for execution in [&kept, &named] {
        let described = stack.finished(execution).await;
        assert_eq!(
            described.status,
            ExecutionStatus::Succeeded,
            "{described:?}"
        );
    }

    // THEN each copy of the first run is in its source's class, multipart copy included
    let mut expected: BTreeMap<String, String> = standard
        .iter()
        .map(|k| (k.replacen("raw/", "refined/", 1), "STANDARD".to_string()))
        .collect();
    for (keys, class) in &classed {
        expected.extend(keys.iter().map(|k| {
            (
                k.replacen("raw/", "refined/", 1),
                class.as_str().to_string(),
            )
        }));
    }
    expected.insert("refined/large-ia.csv".into(), "STANDARD_IA".into());
    assert_eq!(classes("refined/").await, expected);
    assert!(classes("raw/").await.is_empty(), "every source was moved");
    // AND every copy of the second run is in the class it named
    let expected: BTreeMap<String, String> = forced
        .iter()
        .map(|k| (k.replacen("again/", "forced/", 1), "ONEZONE_IA".to_string()))
        .collect();
    assert_eq!(classes("forced/").await, expected);
}

#[tokio::test]
async fn an_existing_destination_is_skipped_or_fails_the_file_as_the_run_asks() {
    // GIVEN sources whose destinations partly exist already with other bytes, one of
    // them large enough to be copied in parts
    let stack = local_stack();
    let sources = vec![
        "raw/a.csv".to_string(),
        "raw/b.csv".to_string(),
        "raw/c.csv".to_string(),
        "in2/x.csv".to_string(),
        "in2/y.csv".to_string(),
    ];
    let bucket = bucket_with(stack, &sources).await;
    let s3 = stack.s3().await;
    let theirs = |key: &'static str, size: usize| put_bytes(stack, &bucket, key, vec![b't'; size]);
    put_bytes(stack, &bucket, "raw/big.csv", vec![b'b'; 7 << 20]).await;
    theirs("refined/b.csv", 10).await;
    theirs("refined/big.csv", 20).await;
    theirs("out2/x.csv", 30).await;
    let before = contents(stack, &bucket).await;

    // WHEN one run skips existing destinations and another fails them
    let skip = stack
        .start(
            "skip-existing",
            &input(&bucket, json!({"if_destination_exists": "skip"})),
        )
        .await;
    let fail = stack
        .start(
            "fail-existing",
            &input(
                &bucket,
                json!({"source_prefix": "in2/", "destination_prefix": "out2/",
                       "if_destination_exists": "fail"}),
            ),
        )
        .await;
    let skipped = stack.finished(&skip).await;
    let failed = stack.finished(&fail).await;

    // THEN the first succeeds, moving what had no destination and keeping both sides of
    // the others as they were, each recorded skipped with the reason
    assert_eq!(skipped.status, ExecutionStatus::Succeeded, "{skipped:?}");
    let summary = output(&skipped);
    assert_eq!(
        (
            &summary["files"],
            &summary["completed"],
            &summary["skipped"],
            &summary["failed"]
        ),
        (&json!(4), &json!(2), &json!(2), &json!(0)),
        "{summary}"
    );
    let now = contents(stack, &bucket).await;
    for kept in [
        "raw/b.csv",
        "raw/big.csv",
        "refined/b.csv",
        "refined/big.csv",
    ] {
        assert_eq!(now.get(kept), before.get(kept), "{kept} changed");
    }
    for moved in ["a.csv", "c.csv"] {
        assert_eq!(
            now.get(&format!("refined/{moved}")),
            before.get(&format!("raw/{moved}"))
        );
        assert!(!now.contains_key(&format!("raw/{moved}")));
    }
    let run = RunId::parse("skip-existing").unwrap();
    let states: BTreeMap<String, (FileState, Option<String>)> = records(stack)
        .await
        .files(&run)
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.file.key, (f.state, f.reason)))
        .collect();
    for key in ["raw/b.csv", "raw/big.csv"] {
        let (state, reason) = &states[key];
        assert_eq!(*state, FileState::Skipped, "{key}");
        assert!(
            reason.as_deref().unwrap().contains("exists"),
            "{key}: {reason:?}"
        );
    }
    // the large file's upload was aborted, not left to pay for
    let open = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(open.uploads().is_empty(), "{:?}", open.uploads());

    // AND the second fails naming exactly the file whose destination exists, which
    // stays at its source while the other moves
    assert_eq!(failed.status, ExecutionStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("TransferFailed"));
    let cause = failed.cause.unwrap_or_default();
    assert!(cause.starts_with("1 of 2 files failed to move"), "{cause}");
    assert!(
        cause.contains("in2/x.csv: the destination \"out2/x.csv\" exists"),
        "{cause}"
    );
    assert_eq!(now.get("in2/x.csv"), before.get("in2/x.csv"));
    assert_eq!(now.get("out2/x.csv"), before.get("out2/x.csv"));
    assert_eq!(now.get("out2/y.csv"), before.get("in2/y.csv"));
    assert!(!now.contains_key("in2/y.csv"));
}

#[tokio::test]
async fn a_move_in_a_versioned_bucket_keeps_no_copy_of_moved_data_and_nothing_reappears() {
    // GIVEN a bucket that keeps versions: a key written twice (its older version is not
    // what the run moves), a key written once, one copied in parts, and a key for a run
    // that keeps source versions
    let stack = local_stack();
    let bucket = bucket_with(stack, &[]).await;
    let s3 = stack.s3().await;
    s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let bucket_name = bucket.as_str();
    let write = |key: &'static str, body: Vec<u8>| async move {
        put_bytes(stack, bucket_name, key, body).await.unwrap()
    };
    let older = write("raw/a.csv", b"one".to_vec()).await;
    write("raw/a.csv", b"two".to_vec()).await;
    write("raw/b.csv", b"bee".to_vec()).await;
    write("raw/big.csv", vec![b'v'; 7 << 20]).await;
    let kept = write("in2/e.csv", b"eee".to_vec()).await;
    let versions = |prefix: &'static str| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            let listed = s3
                .list_object_versions()
                .bucket(&bucket)
                .prefix(prefix)
                .send()
                .await
                .unwrap();
            let versions: Vec<(String, String)> = listed
                .versions()
                .iter()
                .map(|v| (v.key().unwrap().into(), v.version_id().unwrap().into()))
                .collect();
            let mut markers: Vec<String> = listed
                .delete_markers()
                .iter()
                .filter(|m| m.is_latest() == Some(true))
                .map(|m| m.key().unwrap().into())
                .collect();
            markers.sort();
            (versions, markers)
        }
    };

    // WHEN a run moves raw/, and another moves in2/ keeping source versions
    let moved = stack.start("versioned", &input(&bucket, json!({}))).await;
    let keeping = stack
        .start(
            "versioned-keep",
            &input(
                &bucket,
                json!({"source_prefix": "in2/", "destination_prefix": "out2/",
                       "suffixes": [".csv"], "keep_source_versions": true}),
            ),
        )
        .await;
    for execution in [&moved, &keeping] {
        let described = stack.finished(execution).await;
        assert_eq!(
            described.status,
            ExecutionStatus::Succeeded,
            "{described:?}"
        );
    }

    // THEN nothing is current under raw/, the versions copied are gone (the older
    // version of a.csv, never moved, stays), and each moved key has a delete marker
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("raw/")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.key_count(), Some(0), "a key reappeared");
    let (left, markers) = versions("raw/").await;
    assert_eq!(left, [("raw/a.csv".to_string(), older)]);
    assert_eq!(markers, ["raw/a.csv", "raw/b.csv", "raw/big.csv"]);
    let now = contents(stack, &bucket).await;
    assert_eq!(now.get("refined/a.csv"), Some(&md5_hex(b"two")));
    assert_eq!(now.get("refined/b.csv"), Some(&md5_hex(b"bee")));
    // copied in parts, so its ETag is not an MD5: its bytes are compared instead
    let big = s3
        .get_object()
        .bucket(&bucket)
        .key("refined/big.csv")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert!(big.len() == 7 << 20 && big.iter().all(|b| *b == b'v'));
    // AND the run that keeps versions left its copied version as a noncurrent version
    let (left, markers) = versions("in2/").await;
    assert_eq!(left, [("in2/e.csv".to_string(), kept)]);
    assert_eq!(markers, ["in2/e.csv"]);
    assert_eq!(now.get("out2/e.csv"), Some(&md5_hex(b"eee")));
}

#[tokio::test]
async fn a_dry_run_says_what_existing_destinations_would_do_in_each_mode() {
    // GIVEN three files: one whose destination is free, one whose destination holds
    // other bytes, and one whose destination already holds its bytes (an earlier copy)
    let stack = local_stack();
    let files = keys("raw/f-", 3);
    let bucket = bucket_with(stack, &files).await;
    put_bytes(
        stack,
        &bucket,
        "refined/f-00001.csv",
        b"other bytes".to_vec(),
    )
    .await;
    put_bytes(
        stack,
        &bucket,
        "refined/f-00002.csv",
        body_of("raw/f-00002.csv"),
    )
    .await;
    let before = contents(stack, &bucket).await;

    // WHEN a dry run runs in each mode
    let mut plans = BTreeMap::new();
    for mode in ["skip", "fail", "overwrite"] {
        let execution = stack
            .start(
                &format!("plan-{mode}"),
                &input(
                    &bucket,
                    json!({"dry_run": true, "if_destination_exists": mode}),
                ),
            )
            .await;
        let described = stack.finished(&execution).await;
        assert_eq!(
            described.status,
            ExecutionStatus::Succeeded,
            "{described:?}"
        );
        plans.insert(mode, output(&described)["plan"].clone());
    }

    // THEN the file over other bytes would be skipped, fail, or move over them; the
    // one whose destination holds its bytes would move in every mode
    let size = body_of("raw/f-00000.csv").len() as u64;
    let counts = |plan: &Value| {
        (
            plan["files"].clone(),
            plan["would_skip"].clone(),
            plan["would_overwrite"].clone(),
        )
    };
    assert_eq!(counts(&plans["skip"]), (json!(2), json!(1), json!(0)));
    assert_eq!(plans["skip"]["would_fail"], json!({}));
    assert_eq!(counts(&plans["fail"]), (json!(2), json!(0), json!(0)));
    assert_eq!(
        plans["fail"]["would_fail"],
        json!({"the destination exists and the run may not overwrite it (if_destination_exists: fail)": 1})
    );
    assert_eq!(counts(&plans["overwrite"]), (json!(3), json!(0), json!(1)));
    assert_eq!(plans["overwrite"]["bytes"], json!(3 * size));
    // AND nothing changed
    assert_eq!(contents(stack, &bucket).await, before);
}

#[tokio::test]
async fn a_dry_run_reports_its_plan_exactly_and_changes_nothing() {
    // GIVEN files in two storage classes, an archived one, and one the run does not take
    let stack = local_stack();
    let standard = vec!["raw/a.csv".to_string()];
    let bucket = bucket_with(stack, &standard).await;
    let infrequent = vec!["raw/b.csv".to_string(), "raw/deep/c.csv".to_string()];
    put(stack, &bucket, &infrequent, Some(StorageClass::StandardIa)).await;
    put(
        stack,
        &bucket,
        &["raw/cold.csv".to_string()],
        Some(StorageClass::Glacier),
    )
    .await;
    put(stack, &bucket, &["raw/notes.txt".to_string()], None).await;
    let before = contents(stack, &bucket).await;

    // WHEN a dry run of the default selection runs
    let execution = stack
        .start("planned", &input(&bucket, json!({"dry_run": true})))
        .await;
    let described = stack.finished(&execution).await;

    // THEN it succeeds with the plan: what would move by class, what would fail and why
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    let size = |keys: &[String]| keys.iter().map(|k| body_of(k).len() as u64).sum::<u64>();
    let (a, b) = (size(&standard), size(&infrequent));
    let summary = output(&described);
    assert_eq!(
        (&summary["files"], &summary["completed"], &summary["failed"]),
        (&json!(3), &json!(0), &json!(0)),
        "{summary}"
    );
    let plan = &summary["plan"];
    assert_eq!(plan["files"], json!(3), "{plan}");
    assert_eq!(plan["bytes"], json!(a + b), "{plan}");
    assert_eq!(
        plan["by_storage_class"],
        json!({"STANDARD": {"files": 1, "bytes": a}, "STANDARD_IA": {"files": 2, "bytes": b}})
    );
    assert_eq!(
        plan["would_fail"],
        json!({"archived: S3 copies only restored objects (restore them first)": 1})
    );
    assert_eq!(plan["estimated_cost_usd"], json!(0.0));
    // AND nothing moved, and no file was recorded
    assert_eq!(contents(stack, &bucket).await, before);
    let run = RunId::parse("planned").unwrap();
    assert!(records(stack).await.files(&run).await.unwrap().is_empty());
}
