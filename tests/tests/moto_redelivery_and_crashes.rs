//! Master and slave in the test's process against the local AWS APIs, through
//! duplicate deliveries, crashes between steps, failures, resumed and racing calls: no
//! file lost, none counted twice, every fate recorded.

use common::deadline::Deadlines;
use common::rules::batch::ListedFile;
use common::rules::outcomes::FileState;
use common::transfer::Mover;
use integration_tests::{Fixture, body_of, deliver};
use serde_json::json;

async fn seeded(keys: &[&str]) -> Fixture {
    let f = Fixture::new().await;
    for key in keys {
        f.put(key, body_of(key)).await;
    }
    f
}

#[tokio::test]
async fn a_batch_delivered_twice_moves_and_counts_each_file_once() {
    // GIVEN a run whose one batch is delivered twice, the second time concurrently too
    let keys = ["raw/a.csv", "raw/b.csv", "raw/c.csv"];
    let f = seeded(&keys).await;
    f.run_master("dup").await;
    let events = f.inbox.take();
    assert_eq!(events.len(), 1);
    let slave = f.slave();

    let first = deliver(&slave, &events[0]).await;
    let (second, third) = tokio::join!(deliver(&slave, &events[0]), deliver(&slave, &events[0]));

    // THEN only the first delivery did anything
    assert_eq!((first.completed, first.already_done), (3, 0));
    assert_eq!((second.completed, second.already_done), (0, 3));
    assert_eq!((third.completed, third.already_done), (0, 3));
    let progress = f.progress("dup").await;
    assert_eq!((progress.completed, progress.failed), (3, 0));
    for key in keys {
        assert_eq!(
            f.get(&key.replace("raw/", "refined/")).await,
            Some(body_of(key))
        );
        assert_eq!(f.get(key).await, None);
    }
}

#[tokio::test]
async fn concurrent_first_deliveries_still_count_once() {
    // GIVEN two deliveries of the same fresh batch racing each other
    let keys: Vec<String> = (0..40).map(|i| format!("raw/f{i:02}.csv")).collect();
    let f = Fixture::new().await;
    f.put_many(&keys).await;
    f.run_master("race").await;
    let events = f.inbox.take();
    let slave = f.slave();
    let (a, b) = tokio::join!(deliver(&slave, &events[0]), deliver(&slave, &events[0]));

    // THEN between them each file was counted exactly once
    assert_eq!(a.completed + b.completed, 40, "{a:?} {b:?}");
    let progress = f.progress("race").await;
    assert_eq!(
        (progress.selected, progress.completed, progress.failed),
        (40, 40, 0)
    );
    let bytes: usize = keys.iter().map(|k| body_of(k).len()).sum();
    assert_eq!(progress.bytes, bytes as u64);
    assert!(f.keys("raw/").await.is_empty());
}

#[tokio::test]
async fn a_crash_between_copy_and_delete_is_finished_by_the_retry() {
    // GIVEN a slave that copied one file and died before deleting it or recording anything,
    // and one that got as far as deleting another before dying
    let keys = ["raw/copied.csv", "raw/deleted.csv", "raw/untouched.csv"];
    let f = seeded(&keys).await;
    f.run_master("crash").await;
    let events = f.inbox.take();
    let spec = common::RunSpec::new(
        common::rules::run::Location::new(&f.bucket, "raw/").unwrap(),
        common::rules::run::Location::new(&f.bucket, "refined/").unwrap(),
        Default::default(),
    )
    .unwrap();
    let (records, run) = (
        common::store::SlaveRecords::new(f.table()),
        common::RunId::parse("crash").unwrap(),
    );
    let clients = common::transfer::RunClients {
        source: f.clients.s3.clone(),
        destination: f.clients.s3.clone(),
    };
    let mover = Mover::new(
        &clients,
        &f.slave_settings,
        &records,
        &run,
        Deadlines::none(),
    );
    let f = &f;
    let listed = |key: &'static str| async move { f.file("crash", key).await.file };
    let (copied, deleted): (ListedFile, ListedFile) = (
        listed("raw/copied.csv").await,
        listed("raw/deleted.csv").await,
    );
    mover
        .copy_verified(&spec, &spec.plan(&copied).unwrap(), None)
        .await
        .unwrap();
    mover
        .copy_verified(&spec, &spec.plan(&deleted).unwrap(), None)
        .await
        .unwrap();
    let results = mover.delete_sources(&f.bucket, &[&deleted]).await;
    assert!(results[0].is_ok());
    assert_eq!(
        f.file("crash", "raw/copied.csv").await.state,
        FileState::Started
    );

    // WHEN Lambda delivers the batch again
    let out = deliver(&f.slave(), &events[0]).await;

    // THEN all three are moved and counted once; the one whose source was already gone
    // counts as done because its destination holds the listed bytes
    assert_eq!((out.completed, out.failed), (3, 0));
    for key in keys {
        assert_eq!(
            f.get(&key.replace("raw/", "refined/")).await,
            Some(body_of(key)),
            "{key}"
        );
        assert_eq!(f.get(key).await, None, "{key}");
        assert_eq!(f.file("crash", key).await.state, FileState::Completed);
    }
    let progress = f.progress("crash").await;
    assert_eq!((progress.completed, progress.failed), (3, 0));
}

#[tokio::test]
async fn failed_files_are_recorded_with_their_reason_and_left_in_place() {
    // GIVEN a run whose files change under it after listing: one rewritten with other
    // bytes, one deleted by someone else
    let keys = [
        "raw/ok-1.csv",
        "raw/rewritten.csv",
        "raw/vanished.csv",
        "raw/ok-2.csv",
    ];
    let f = seeded(&keys).await;
    f.run_master("fail").await;
    f.put("raw/rewritten.csv", "a different, longer body than before")
        .await;
    f.clients
        .s3
        .delete_object()
        .bucket(&f.bucket)
        .key("raw/vanished.csv")
        .send()
        .await
        .unwrap();

    // WHEN the batch runs
    let events = f.inbox.take();
    let out = deliver(&f.slave(), &events[0]).await;

    // THEN the good files move, the rewritten one stays at the source with its new bytes,
    // and both failures are recorded with a reason that says what happened
    assert_eq!((out.completed, out.failed), (2, 2));
    for key in ["raw/ok-1.csv", "raw/ok-2.csv"] {
        assert_eq!(
            f.get(&key.replace("raw/", "refined/")).await,
            Some(body_of(key))
        );
    }
    assert_eq!(
        f.get("raw/rewritten.csv").await.unwrap(),
        b"a different, longer body than before"
    );
    let files = f.files("fail").await;
    let rewritten = &files["raw/rewritten.csv"];
    assert_eq!(rewritten.state, FileState::Failed);
    let reason = rewritten.reason.as_deref().unwrap();
    assert!(
        reason.contains("changed after it was listed") || reason.contains("not the"),
        "{reason}"
    );
    let vanished = &files["raw/vanished.csv"];
    assert_eq!(vanished.state, FileState::Failed);
    assert_eq!(
        vanished.reason.as_deref(),
        Some(
            "the source is gone (deleted after it was listed) and the destination \"refined/vanished.csv\" does not exist"
        )
    );
    let failed: Vec<String> = f
        .failed_files("fail")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(failed, ["raw/rewritten.csv", "raw/vanished.csv"]);
    let progress = f.progress("fail").await;
    assert_eq!((progress.completed, progress.failed), (2, 2));
    assert_eq!(progress.verdict(), common::rules::progress::Verdict::Failed);

    // AND a redelivery, even once a failure's cause is gone (the vanished source put
    // back as listed), leaves the failed files as recorded and reported: at the source
    f.put("raw/vanished.csv", body_of("raw/vanished.csv")).await;
    let again = deliver(&f.slave(), &events[0]).await;
    assert_eq!(
        (again.completed, again.failed, again.already_done),
        (0, 0, 2)
    );
    assert_eq!(f.progress("fail").await, progress);
    assert_eq!(
        f.file("fail", "raw/vanished.csv").await.state,
        FileState::Failed
    );
    assert_eq!(
        f.get("raw/vanished.csv").await,
        Some(body_of("raw/vanished.csv"))
    );
    assert_eq!(f.get("refined/vanished.csv").await, None);
}

#[tokio::test]
async fn a_vanished_source_counts_as_moved_only_if_the_destination_holds_the_listed_object() {
    // GIVEN two listed files whose sources are deleted by someone else before their
    // slave runs: one whose destination holds the listed bytes (moved by hand), one
    // whose destination holds other bytes of the same size
    let keys = ["raw/moved-by-hand.csv", "raw/replaced.csv"];
    let f = seeded(&keys).await;
    f.run_master("vanished").await;
    for key in keys {
        f.clients
            .s3
            .delete_object()
            .bucket(&f.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
    }
    f.put(
        "refined/moved-by-hand.csv",
        body_of("raw/moved-by-hand.csv"),
    )
    .await;
    let mut other = body_of("raw/replaced.csv");
    other[0] ^= 0xff;
    f.put("refined/replaced.csv", other.clone()).await;

    // WHEN the batch runs
    let events = f.inbox.take();
    let out = deliver(&f.slave(), &events[0]).await;

    // THEN the first counts as moved; the second is failed with a reason that says its
    // source is gone, and its destination is left as it was
    assert_eq!((out.completed, out.failed), (1, 1));
    let files = f.files("vanished").await;
    assert_eq!(files["raw/moved-by-hand.csv"].state, FileState::Completed);
    let replaced = &files["raw/replaced.csv"];
    assert_eq!(replaced.state, FileState::Failed);
    let reason = replaced.reason.as_deref().unwrap();
    assert!(
        reason.starts_with(
            "the source is gone (deleted after it was listed) and the destination \"refined/replaced.csv\" has ETag "
        ),
        "{reason}"
    );
    assert!(reason.contains("not the listed object's"), "{reason}");
    assert_eq!(f.get("refined/replaced.csv").await.unwrap(), other);
}

#[tokio::test]
async fn master_resumes_where_it_stopped_without_recording_anything_twice() {
    // GIVEN 2,500 files and a master whose deadline has already passed, so each call
    // handles one listing page and returns a continuation
    let keys: Vec<String> = (0..2500).map(|i| format!("raw/{i:04}.csv")).collect();
    let f = Fixture::new().await;
    f.put_many(&keys).await;
    let past = Some(std::time::SystemTime::now());

    let first = f
        .master()
        .handle(json!({"run_id": "cont"}), past)
        .await
        .unwrap();
    assert_eq!((first.listing_complete, first.selected), (false, 1000));
    // The first page's slaves finish before master is called again.
    f.deliver_all(4).await;
    assert_eq!(f.progress("cont").await.completed, 1000);

    // WHEN master is called again until listing completes, and the slaves run
    let mut calls = 1;
    loop {
        let out = f
            .master()
            .handle(json!({"run_id": "cont"}), past)
            .await
            .unwrap();
        calls += 1;
        if out.listing_complete {
            assert_eq!(out.selected, 2500);
            break;
        }
    }
    f.deliver_all(4).await;

    // THEN three calls covered the listing, completed files were never reset to started,
    // and every counter is exact
    assert_eq!(calls, 3);
    let progress = f.progress("cont").await;
    assert_eq!(
        (progress.selected, progress.completed, progress.failed),
        (2500, 2500, 0)
    );
    let files = f.files("cont").await;
    assert_eq!(files.len(), 2500);
    assert!(files.values().all(|f| f.state == FileState::Completed));
    assert!(f.keys("raw/").await.is_empty());
    // AND a master call after the end changes nothing
    let after = f.run_master("cont").await;
    assert_eq!(
        (after.listing_complete, after.selected, after.invocations),
        (true, 2500, 0)
    );
}

#[tokio::test]
async fn a_retried_master_call_does_not_reset_completed_files() {
    // GIVEN a master call that handed out its files, whose slaves completed them, but
    // whose progress after handing was lost (as if it crashed just after invoking)
    let keys: Vec<String> = (0..30).map(|i| format!("raw/{i:02}.csv")).collect();
    let f = Fixture::new().await;
    f.put_many(&keys).await;
    let past = Some(std::time::SystemTime::now());
    f.master()
        .handle(json!({"run_id": "retry"}), past)
        .await
        .unwrap();
    f.deliver_all(2).await;
    f.clients
        .dynamodb
        .update_item()
        .table_name(&f.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("retry#run".into()),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("run".into()),
        )
        .update_expression("REMOVE handed_through SET listing_complete = :f")
        .expression_attribute_values(":f", aws_sdk_dynamodb::types::AttributeValue::Bool(false))
        .send()
        .await
        .unwrap();
    // A file the slaves had not reached yet is put back, as if its slave never ran.
    f.put("raw/late.csv", body_of("raw/late.csv")).await;

    // WHEN master runs again
    let out = f.run_master("retry").await;
    f.deliver_all(2).await;

    // THEN the completed files stay completed and counted once; nothing new was selected
    // for the keys already recorded, and the new key (after the recorded position) is moved
    assert_eq!(out.selected, 31);
    let progress = f.progress("retry").await;
    assert_eq!((progress.selected, progress.completed), (31, 31));
    let files = f.files("retry").await;
    assert_eq!(files.len(), 31, "no file recorded twice");
    assert!(files.values().all(|f| f.state == FileState::Completed));
}

#[tokio::test]
async fn two_master_calls_of_one_run_at_once_record_each_file_in_exactly_one_batch() {
    // GIVEN 3,500 files, and master called twice at once for the same run (a retry while
    // the first call still runs), each call stopping after one listing page
    let keys: Vec<String> = (0..3500).map(|i| format!("raw/{i:04}.csv")).collect();
    let f = Fixture::new().await;
    f.put_many(&keys).await;
    let past = Some(std::time::SystemTime::now());
    let master = f.master();

    // WHEN pairs of calls run until the listing is complete; a call that loses the race
    // to record a page answers ListingConflict, which the state machine retries
    let mut conflicts = 0;
    let mut complete = false;
    while !complete {
        let (a, b) = tokio::join!(
            master.handle(json!({"run_id": "twice"}), past),
            master.handle(json!({"run_id": "twice"}), past)
        );
        for answer in [a, b] {
            match answer {
                Ok(out) => complete |= out.listing_complete,
                Err(e) => {
                    assert_eq!(e.error_type(), "ListingConflict", "{e}");
                    conflicts += 1;
                }
            }
        }
    }
    f.deliver_all(4).await;

    // THEN the calls did race, yet each file is in exactly one batch, and the counters
    // are exact: no file is counted twice and the run ends when its files do
    assert!(conflicts > 0, "the two calls never raced");
    let recorded: Vec<String> = f
        .records()
        .files(&common::RunId::parse("twice").unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|status| {
            assert_eq!(status.state, FileState::Completed, "{}", status.file.key);
            status.file.key
        })
        .collect();
    assert_eq!(recorded, keys, "each file once, in key order");
    let progress = f.progress("twice").await;
    assert_eq!(
        (progress.selected, progress.completed, progress.failed),
        (3500, 3500, 0)
    );
    assert!(f.keys("raw/").await.is_empty());
}

#[tokio::test]
async fn two_runs_at_once_keep_to_their_own_files_and_counters() {
    // GIVEN two prefixes with different files, moved by two runs at the same time
    let a: Vec<String> = (0..120).map(|i| format!("in-a/{i}.csv")).collect();
    let b: Vec<String> = (0..80).map(|i| format!("in-b/{i}.csv")).collect();
    let f = Fixture::new().await;
    f.put_many(&a).await;
    f.put_many(&b).await;
    let master = f.master();
    let (ra, rb) = tokio::join!(
        master.handle(
            json!({"run_id": "run-a", "source_prefix": "in-a/", "destination_prefix": "out-a/"}),
            None
        ),
        master.handle(
            json!({"run_id": "run-b", "source_prefix": "in-b/", "destination_prefix": "out-b/"}),
            None
        ),
    );
    assert_eq!((ra.unwrap().selected, rb.unwrap().selected), (120, 80));
    f.deliver_all(6).await;

    // THEN each run moved exactly its files and counted only them
    assert_eq!(f.keys("out-a/").await.len(), 120);
    assert_eq!(f.keys("out-b/").await.len(), 80);
    assert!(f.keys("in-a/").await.is_empty() && f.keys("in-b/").await.is_empty());
    let (pa, pb) = (f.progress("run-a").await, f.progress("run-b").await);
    assert_eq!((pa.selected, pa.completed), (120, 120));
    assert_eq!((pb.selected, pb.completed), (80, 80));
    assert_eq!(
        f.files("run-a").await.keys().cloned().collect::<Vec<_>>(),
        {
            let mut a = a.clone();
            a.sort();
            a
        }
    );
    assert_eq!(
        f.files("run-b").await.keys().cloned().collect::<Vec<_>>(),
        {
            let mut b = b.clone();
            b.sort();
            b
        }
    );
}

/// An S3 Inventory report in `parts` gzip CSV files, as S3 writes one: each line
/// `"bucket","key","version","is latest","is delete marker","size"`.
async fn inventory(f: &Fixture, folder: &str, parts: &[Vec<String>]) -> String {
    use std::io::Write;
    let mut files = Vec::new();
    for (i, lines) in parts.iter().enumerate() {
        let key = format!("{folder}/data/part-{i}.csv.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for line in lines {
            writeln!(gz, "{line}").unwrap();
        }
        f.put(&key, gz.finish().unwrap()).await;
        files.push(json!({"key": key, "size": 1, "MD5checksum": "unchecked"}));
    }
    let manifest = json!({
        "sourceBucket": f.bucket, "destinationBucket": format!("arn:aws:s3:::{}", f.bucket),
        "version": "2016-11-30", "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size",
        "files": files,
    });
    let key = format!("{folder}/2026-11-28T00-00Z/manifest.json");
    f.put(&key, manifest.to_string()).await;
    key
}

#[tokio::test]
async fn master_reads_an_inventory_across_calls_and_moves_exactly_its_current_objects() {
    // GIVEN 2,400 files and an inventory of them in two gzip files, 3,281 lines with
    // lines of noncurrent versions and delete markers among them, and one line naming a
    // key that is not there
    let keys: Vec<String> = (0..2400).map(|i| format!("raw/inv/{i:04}.csv")).collect();
    let f = Fixture::new().await;
    f.put_many(&keys).await;
    f.put("raw/inv/not-named.csv", "stays").await;
    let line = |key: &str, latest: bool, marker: bool| {
        format!(
            "\"{}\",\"{}\",\"v\",\"{latest}\",\"{marker}\",\"1\"",
            f.bucket,
            key.replace(' ', "+")
        )
    };
    let mut lines: Vec<String> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        if i % 3 == 0 {
            lines.push(line(key, false, false));
        }
        if i % 30 == 0 {
            lines.push(line(&format!("raw/inv/deleted-{i}.csv"), true, true));
        }
        lines.push(line(key, true, false));
    }
    lines.push(line("raw/inv/gone missing.csv", true, false));
    assert_eq!(lines.len(), 3281);
    let second = lines.split_off(1700);
    let manifest = inventory(&f, "manifests/inv", &[lines, second]).await;
    let input = json!({"manifest": {
        "bucket": f.bucket, "key": manifest, "format": "s3-inventory"}});
    let mut event = input.clone();
    event["run_id"] = json!("inv");

    // WHEN its input is checked, and master is called with a deadline already past,
    // so that each call reads one page of 1,000 keys, until the manifest is read
    let check = json!({"check": {"run_id": "inv", "input": input}});
    let checked = master::handle(
        &Ok(f.master()),
        lambda_runtime::LambdaEvent::new(check, Default::default()),
    )
    .await
    .unwrap();
    assert_eq!(checked["manifest_keys"], json!(2401), "{checked}");
    let past = Some(std::time::SystemTime::now());
    let mut calls = 0;
    loop {
        let out = f.master().handle(event.clone(), past).await.unwrap();
        calls += 1;
        f.deliver_all(4).await;
        if out.listing_complete {
            assert_eq!(out.selected, 2401);
            break;
        }
    }

    // THEN three calls read it, no line was recorded twice, every current object moved,
    // the key with no object failed as not found, and the rest stayed
    assert_eq!(calls, 3);
    let progress = f.progress("inv").await;
    assert_eq!(
        (progress.selected, progress.completed, progress.failed),
        (2401, 2400, 1)
    );
    let files = f.files("inv").await;
    assert_eq!(files.len(), 2401);
    let missing = &files["raw/inv/gone missing.csv"];
    assert_eq!(missing.state, FileState::Failed);
    assert_eq!(
        missing.reason.as_deref(),
        Some(common::rules::manifest::NOT_FOUND)
    );
    assert_eq!(f.keys("raw/").await, ["raw/inv/not-named.csv"]);
    assert_eq!(f.keys("refined/").await.len(), 2400);
    let objects = f.objects().await;
    assert_eq!(objects["refined/inv/1234.csv"], body_of("raw/inv/1234.csv"));
}

#[tokio::test]
async fn master_resumes_a_plain_csv_manifest_where_it_stopped_and_fails_only_selected_missing_keys()
{
    // GIVEN 2,100 files and a plain (not gzip) CSV manifest naming them, a key with no
    // object that the run's patterns take, and one they do not
    let keys: Vec<String> = (0..2100).map(|i| format!("raw/csv/{i:04}.csv")).collect();
    let f = Fixture::new().await;
    f.put_many(&keys).await;
    let mut manifest: String = keys.iter().map(|k| format!("{},{k}\n", f.bucket)).collect();
    manifest.push_str(&format!("{},raw/csv/gone.csv\n", f.bucket));
    manifest.push_str(&format!("{},raw/elsewhere/gone.csv", f.bucket));
    f.put("manifests/plain.csv", manifest).await;
    let event = json!({"run_id": "plain", "include": ["csv/**"], "manifest": {
        "bucket": f.bucket, "key": "manifests/plain.csv", "format": "csv"}});

    // WHEN master is called with a deadline already past until the manifest is read,
    // each call resuming the object from the byte after its last line
    let past = Some(std::time::SystemTime::now());
    let mut calls = 0;
    loop {
        let out = f.master().handle(event.clone(), past).await.unwrap();
        calls += 1;
        f.deliver_all(4).await;
        if out.listing_complete {
            assert_eq!(out.selected, 2101);
            break;
        }
    }

    // THEN three calls read it, every line once: each file moved with its bytes, the
    // selected missing key failed as not found, the other one not recorded at all
    assert_eq!(calls, 3);
    let progress = f.progress("plain").await;
    assert_eq!(
        (progress.selected, progress.completed, progress.failed),
        (2101, 2100, 1)
    );
    let files = f.files("plain").await;
    assert_eq!(files.len(), 2101);
    assert_eq!(files["raw/csv/gone.csv"].state, FileState::Failed);
    assert!(!files.contains_key("raw/elsewhere/gone.csv"));
    assert!(f.keys("raw/").await.is_empty());
    let objects = f.objects().await;
    assert_eq!(
        objects.keys().filter(|k| k.starts_with("refined/")).count(),
        2100
    );
    assert_eq!(objects["refined/csv/2099.csv"], body_of("raw/csv/2099.csv"));
}
