//! Batches, objects and manifests too large for one invocation, on the local stack
//! through the real state machine. The slaves here start no new copy 10 s into an
//! invocation (`HANDOFF_MARGIN_MS` against their 900 s timeout), and the front slows
//! their copies, so a batch takes several invocations: each records what it finished and
//! hands the rest on, and a multipart copy keeps its upload and finished parts across
//! them. Master here keeps all its 900 s in hand (`DEADLINE_MARGIN_MS`), so each call
//! reads one page and returns a continuation.
//!
//! Faults apply to the whole stack, so the tests take turns.

use std::sync::OnceLock;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sfn::types::ExecutionStatus;
use common::RunId;
use common::rules::outcomes::FileState;
use integration_tests::stack::{
    LocalStack, bucket_with, contents, input, keys, moved_and_kept, output, put_bytes, records,
};
use serde_json::{Value, json};

fn local_stack() -> &'static LocalStack {
    static STACK: OnceLock<LocalStack> = OnceLock::new();
    STACK.get_or_init(|| {
        LocalStack::up(&[
            // 890 s of 900 kept in hand: an invocation starts copies for 10 s only.
            ("HANDOFF_MARGIN_MS", "890000"),
            // One batch for a whole run, two parts of an object at once.
            ("BATCH_SIZE", "1000"),
            ("PART_CONCURRENCY", "2"),
            ("DEADLINE_MARGIN_MS", "900000"),
        ])
    })
}

/// How many of the functions' recorded calls match `caller`, `service` and `operation`.
fn count(calls: &[Value], caller: &str, service: &str, operation: &str) -> u64 {
    calls
        .iter()
        .filter(|c| c["caller"] == caller && c["service"] == service && c["operation"] == operation)
        .map(|c| c["count"].as_u64().unwrap())
        .sum()
}

/// When the front first saw a call of this kind (seconds since the epoch).
fn first_at(calls: &[Value], caller: &str, service: &str, operation: &str) -> f64 {
    calls
        .iter()
        .filter(|c| c["caller"] == caller && c["service"] == service && c["operation"] == operation)
        .map(|c| c["first_at"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min)
}

#[tokio::test]
async fn a_batch_whose_copies_outlast_an_invocation_is_handed_on_and_moved_once() {
    // GIVEN one batch of 160 files whose copies take 1.5 s each, 16 at a time: about 15 s
    // of copying, where an invocation copies for 10 s
    let stack = local_stack();
    let files = keys("raw/f-", 160);
    let bucket = bucket_with(stack, &files).await;
    let _turn = stack
        .turn(json!({"record_calls": true, "rules": [
            {"service": "s3", "operations": ["CopyObject"], "callers": ["slave"], "latency_ms": 1500}
        ]}))
        .await;

    // WHEN the execution moves them
    let execution = stack.start("handed-on", &input(&bucket, json!({}))).await;
    let described = stack.finished(&execution).await;
    let calls = stack.calls();
    stack.set_faults(&json!({}));

    // THEN the first invocation handed the rest of the batch to another, and between them
    // every file moved once: one copy each, exact counters, every file completed
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    assert!(
        count(&calls, "slave", "lambda", "Invoke") >= 1,
        "never handed on"
    );
    assert_eq!(count(&calls, "slave", "s3", "CopyObject"), 160);
    assert_eq!(contents(stack, &bucket).await, moved_and_kept(&files, &[]));
    let run = RunId::parse("handed-on").unwrap();
    let store = records(stack).await;
    let progress = store.run_view(&run).await.unwrap().unwrap().progress;
    assert_eq!(
        (progress.selected, progress.completed, progress.failed),
        (160, 160, 0)
    );
    assert_eq!(output(&described)["completed"], json!(160));
    assert!(
        store
            .files(&run)
            .await
            .unwrap()
            .iter()
            .all(|f| f.state == FileState::Completed)
    );
}

#[tokio::test]
async fn a_multipart_copy_that_outlasts_an_invocation_resumes_with_its_parts_and_leaves_no_upload()
{
    // GIVEN a 60 MiB object with tags, copied in 12 parts of 5 MiB, two at a time, each
    // part taking 3 s: about 18 s of copying, where an invocation starts parts for 10 s
    let stack = local_stack();
    let bucket = bucket_with(stack, &keys("raw/small-", 3)).await;
    let large: Vec<u8> = (0..60 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let s3 = stack.s3().await;
    s3.put_object()
        .bucket(&bucket)
        .key("raw/large.bin.csv")
        .tagging("size=large")
        .metadata("origin", "sensor-9")
        .body(ByteStream::from(large.clone()))
        .send()
        .await
        .unwrap();
    let _turn = stack
        .turn(json!({"record_calls": true, "rules": [
            {"service": "s3", "operations": ["UploadPartCopy"], "latency_ms": 3000}
        ]}))
        .await;

    // WHEN the execution moves it
    let execution = stack
        .start("parts-resumed", &input(&bucket, json!({})))
        .await;
    let described = stack.finished(&execution).await;
    let calls = stack.calls();
    stack.set_faults(&json!({}));

    // THEN it took more than one invocation, each part was copied exactly once (the next
    // invocation found the first one's parts, and only invocations that took the upload
    // over listed them, never the one that began it), and the object arrived whole with
    // its metadata and tags
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    assert!(
        count(&calls, "slave", "lambda", "Invoke") >= 1,
        "never handed on"
    );
    assert_eq!(count(&calls, "slave", "s3", "UploadPartCopy"), 12);
    assert_eq!(count(&calls, "slave", "s3", "CreateMultipartUpload"), 1);
    let listed = count(&calls, "slave", "s3", "ListParts");
    assert!(
        (1..=count(&calls, "slave", "lambda", "Invoke")).contains(&listed),
        "{listed} ListParts"
    );
    assert!(
        first_at(&calls, "slave", "s3", "ListParts")
            > first_at(&calls, "slave", "lambda", "Invoke"),
        "the invocation that began the upload listed its parts"
    );
    let copied = s3
        .get_object()
        .bucket(&bucket)
        .key("refined/large.bin.csv")
        .send()
        .await
        .unwrap();
    assert_eq!(copied.metadata().unwrap()["origin"], "sensor-9");
    assert_eq!(copied.body.collect().await.unwrap().to_vec(), large);
    let tags = s3
        .get_object_tagging()
        .bucket(&bucket)
        .key("refined/large.bin.csv")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (tags.tag_set()[0].key(), tags.tag_set()[0].value()),
        ("size", "large")
    );
    let now = contents(stack, &bucket).await;
    assert!(!now.contains_key("raw/large.bin.csv"));
    // AND no multipart upload is left open, and no upload record is left in the table
    let open = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(open.uploads().is_empty(), "{:?}", open.uploads());
    let uploads = stack
        .dynamodb()
        .await
        .query()
        .table_name(stack.var("TABLE_NAME"))
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(
            ":pk",
            aws_sdk_dynamodb::types::AttributeValue::S("parts-resumed#upload".into()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(uploads.count(), 0);
    let run = RunId::parse("parts-resumed").unwrap();
    let progress = records(stack)
        .await
        .run_view(&run)
        .await
        .unwrap()
        .unwrap()
        .progress;
    assert_eq!((progress.completed, progress.failed), (4, 0));
}

#[tokio::test]
async fn an_s3_inventory_of_3000_lines_is_read_across_master_calls_and_moves_its_current_objects() {
    // GIVEN 2,100 files and an S3 Inventory report of them in two gzip files: 3,360 lines,
    // with lines of noncurrent versions, delete markers and keys of another prefix
    let stack = local_stack();
    let files = keys("raw/inv/f-", 2100);
    let bucket = bucket_with(stack, &files).await;
    let line = |key: &str, latest: bool, marker: bool| {
        format!("\"{bucket}\",\"{key}\",\"v\",\"{latest}\",\"{marker}\",\"1\"")
    };
    let mut lines = Vec::new();
    for (i, key) in files.iter().enumerate() {
        if i % 2 == 0 {
            lines.push(line(key, false, false));
        }
        if i % 20 == 0 {
            lines.push(line(&format!("raw/inv/deleted-{i}.csv"), true, true));
            lines.push(line(&format!("logs/{i}.log"), true, false));
        }
        lines.push(line(key, true, false));
    }
    assert_eq!(lines.len(), 3360);
    let second = lines.split_off(1600);
    let mut parts = Vec::new();
    for (i, part) in [lines, second].iter().enumerate() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for line in part {
            writeln!(gz, "{line}").unwrap();
        }
        let key = format!("manifests/inv/data/{i}.csv.gz");
        put_bytes(stack, &bucket, &key, gz.finish().unwrap()).await;
        parts.push(json!({"key": key, "size": 1, "MD5checksum": "unchecked"}));
    }
    let report = json!({
        "sourceBucket": bucket, "destinationBucket": format!("arn:aws:s3:::{bucket}"),
        "version": "2016-11-30", "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size", "files": parts,
    });
    let manifest = "manifests/inv/2026-11-28T00-00Z/manifest.json";
    put_bytes(stack, &bucket, manifest, report.to_string().into_bytes()).await;
    let before = contents(stack, &bucket).await;

    // WHEN an execution moves what it names
    let execution = stack
        .start(
            "inventory",
            &input(
                &bucket,
                json!({"manifest": {"bucket": bucket, "key": manifest, "format": "s3-inventory"}}),
            ),
        )
        .await;
    let described = stack.finished(&execution).await;

    // THEN master read it in three calls, every current object moved once, and the
    // reports themselves stayed
    assert_eq!(
        described.status,
        ExecutionStatus::Succeeded,
        "{described:?}"
    );
    let summary = output(&described);
    assert_eq!(
        (summary["files"].clone(), summary["completed"].clone()),
        (json!(2100), json!(2100))
    );
    let master_calls = stack
        .history(&execution)
        .await
        .iter()
        .filter_map(|e| e.state_entered_event_details())
        .filter(|d| d.name() == "Master")
        .count();
    assert_eq!(master_calls, 3);
    let mut expected = before.clone();
    for key in &files {
        let etag = expected.remove(key).unwrap();
        expected.insert(key.replacen("raw/", "refined/", 1), etag);
    }
    assert_eq!(contents(stack, &bucket).await, expected);
}
