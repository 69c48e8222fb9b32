//! Master and slave against the local S3 and DynamoDB APIs: what moves, what stays,
//! and what the status table says afterwards.

use common::rules::outcomes::FileState;
use integration_tests::{Fixture, body_of, md5_hex};
use serde_json::json;

#[tokio::test]
async fn a_run_moves_every_selected_file_and_leaves_the_rest() {
    // GIVEN csv files with awkward names, and files the run must not take
    let f = Fixture::new().await;
    let moved = [
        "raw/plain.csv",
        "raw/with space.csv",
        "raw/plus+sign.csv",
        "raw/per%cent.csv",
        "raw/equals=sign.csv",
        "raw/ünïcødé 日本.csv",
        "raw/raw/nested raw/raw.csv",
        "raw/a?b#c&d.csv",
    ];
    let untouched = [
        "raw/notes.txt",
        "raw/data.csv.bak",
        "raw/folder.csv/",
        "elsewhere/x.csv",
        "rawish/y.csv",
    ];
    for key in moved.iter().chain(&untouched) {
        f.put(key, body_of(key)).await;
    }

    // WHEN master runs and every batch is delivered
    let out = f.run_master("run-1").await;
    assert!(out.listing_complete);
    assert_eq!(out.selected, moved.len() as u64);
    f.deliver_all(4).await;

    // THEN each csv is at its destination with its bytes, its source is gone,
    // and everything else is exactly as it was
    let objects = f.objects().await;
    for key in moved {
        let destination = format!("refined/{}", key.strip_prefix("raw/").unwrap());
        assert_eq!(
            objects.get(&destination),
            Some(&body_of(key)),
            "{destination}"
        );
        assert!(!objects.contains_key(key), "source {key} still there");
    }
    for key in untouched {
        assert_eq!(objects.get(key), Some(&body_of(key)), "{key} was touched");
    }
    assert_eq!(objects.len(), moved.len() + untouched.len());

    // AND the table records each file completed, and the counters agree
    let files = f.files("run-1").await;
    assert_eq!(files.len(), moved.len());
    for key in moved {
        let file = &files[key];
        assert_eq!(file.state, FileState::Completed, "{key}");
        assert_eq!(file.file.size, body_of(key).len() as u64);
        assert_eq!(file.reason, None);
    }
    let progress = f.progress("run-1").await;
    assert!(progress.listing_complete);
    assert_eq!(
        (progress.selected, progress.completed, progress.failed),
        (8, 8, 0)
    );
    let bytes: usize = moved.iter().map(|k| body_of(k).len()).sum();
    assert_eq!(progress.bytes, bytes as u64);
}

#[tokio::test]
async fn thousands_of_files_across_listing_pages_are_each_moved_once() {
    // GIVEN 3,100 selected files (four listing pages) and 50 others
    let f = Fixture::new().await;
    let selected: Vec<String> = (0..3100)
        .map(|i| format!("raw/day={:02}/part-{i:05}.csv", i % 31))
        .collect();
    let others: Vec<String> = (0..50).map(|i| format!("raw/skip-{i}.json")).collect();
    f.put_many(&selected).await;
    f.put_many(&others).await;

    // WHEN master hands them out in batches of 100 and the slaves run 8 at a time
    let out = f.run_master("big-run").await;
    assert_eq!((out.listing_complete, out.selected), (true, 3100));
    let events = f.deliver_all(8).await;

    // THEN 31 batches were handed out, each once, and together they record every
    // selected key exactly once
    assert_eq!(events.len(), 31);
    let batches: std::collections::BTreeSet<&common::rules::batch::BatchId> =
        events.iter().map(|e| &e.batch).collect();
    assert_eq!(batches.len(), 31);
    let files = f.files("big-run").await;
    let mut expected = selected.clone();
    expected.sort();
    assert_eq!(files.keys().cloned().collect::<Vec<_>>(), expected);
    assert!(files.values().all(|f| f.state == FileState::Completed));

    // AND every file is at its destination with its bytes (by MD5), none left at the source
    let checksums = f.checksums("refined/").await;
    assert_eq!(checksums.len(), selected.len());
    for key in &selected {
        assert_eq!(
            checksums.get(&key.replacen("raw/", "refined/", 1)),
            Some(&md5_hex(&body_of(key))),
            "{key}"
        );
    }
    assert_eq!(f.keys("raw/").await, {
        let mut o = others.clone();
        o.sort();
        o
    });
    let progress = f.progress("big-run").await;
    assert_eq!(
        (progress.selected, progress.completed, progress.failed),
        (3100, 3100, 0)
    );
}

#[tokio::test]
async fn an_empty_prefix_is_a_finished_run_with_nothing_to_do() {
    let f = Fixture::new().await;
    f.put("raw/readme.txt", "not csv").await;
    let out = f.run_master("empty").await;
    assert_eq!(
        (out.listing_complete, out.selected, out.invocations),
        (true, 0, 0)
    );
    assert!(f.inbox.take().is_empty());
    let progress = f.progress("empty").await;
    assert_eq!(
        progress.verdict(),
        common::rules::progress::Verdict::Succeeded
    );
}

#[tokio::test]
async fn the_event_chooses_buckets_prefixes_and_suffixes() {
    // GIVEN files in a second bucket under in/, and a destination bucket
    let f = Fixture::new().await;
    let (input, output) = (
        integration_tests::unique("in"),
        integration_tests::unique("out"),
    );
    for b in [&input, &output] {
        f.clients.s3.create_bucket().bucket(b).send().await.unwrap();
    }
    for key in ["in/a.txt", "in/b.gz", "in/c.csv"] {
        f.clients
            .s3
            .put_object()
            .bucket(&input)
            .key(key)
            .body(body_of(key).into())
            .send()
            .await
            .unwrap();
    }
    // WHEN the event names them
    let out = f
        .master()
        .handle(
            json!({"run_id": "r", "source_bucket": input, "source_prefix": "in/",
                   "destination_bucket": output, "destination_prefix": "", "suffixes": [".txt", ".gz"]}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.selected, 2);
    f.deliver_all(2).await;
    // THEN .txt and .gz land at the root of the destination bucket; the csv stays
    let list = |bucket: String| {
        let s3 = f.clients.s3.clone();
        async move {
            let out = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
            out.contents()
                .iter()
                .filter_map(|o| o.key.clone())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(output).await, ["a.txt", "b.gz"]);
    assert_eq!(list(input).await, ["in/c.csv"]);
}

#[tokio::test]
async fn large_objects_are_copied_in_parts_with_metadata_and_tags() {
    // GIVEN an 11 MiB object with metadata, content type and tags, and a small one likewise,
    // and a slave that copies objects of 5 MiB and more in 5 MiB parts
    let mut f = Fixture::new().await;
    f.slave_settings.multipart_threshold = 5 * 1024 * 1024;
    f.slave_settings.part_size = 5 * 1024 * 1024;
    let big: Vec<u8> = (0..11 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    for (key, body) in [
        ("raw/big.csv", big.clone()),
        ("raw/small.csv", b"a,b\n".to_vec()),
    ] {
        f.clients
            .s3
            .put_object()
            .bucket(&f.bucket)
            .key(key)
            .body(body.into())
            .content_type("text/csv")
            .metadata("origin", "sensor-7")
            .tagging("team=data&class=raw")
            .send()
            .await
            .unwrap();
    }

    // WHEN the run moves them
    f.run_master("parts").await;
    f.deliver_all(1).await;

    // THEN both arrive whole, with their metadata, content type and tags
    assert_eq!(f.get("refined/big.csv").await.unwrap(), big);
    for key in ["refined/big.csv", "refined/small.csv"] {
        let head = f
            .clients
            .s3
            .head_object()
            .bucket(&f.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(head.content_type(), Some("text/csv"), "{key}");
        assert_eq!(
            head.metadata().unwrap().get("origin").map(String::as_str),
            Some("sensor-7"),
            "{key}"
        );
        let tags = f
            .clients
            .s3
            .get_object_tagging()
            .bucket(&f.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let mut tags: Vec<(String, String)> = tags
            .tag_set()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect();
        tags.sort();
        assert_eq!(
            tags,
            [
                ("class".into(), "raw".into()),
                ("team".into(), "data".into())
            ],
            "{key}"
        );
    }
    let head = f
        .clients
        .s3
        .head_object()
        .bucket(&f.bucket)
        .key("refined/big.csv")
        .send()
        .await
        .unwrap();
    assert!(
        head.e_tag().unwrap().ends_with("-3\""),
        "three parts: {:?}",
        head.e_tag()
    );
    assert!(f.keys("raw/").await.is_empty());
    let progress = f.progress("parts").await;
    assert_eq!(
        (progress.completed, progress.bytes),
        (2, big.len() as u64 + 4)
    );
}
