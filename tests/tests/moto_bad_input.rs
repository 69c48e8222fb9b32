//! Bad input to master and slave in the test's process, against the local AWS APIs:
//! malformed events of every kind, generated, events naming what master never recorded,
//! and missing settings. Each is answered with a stable error naming what is wrong
//! (never a panic), and nothing changes in the bucket, in the status table, or in what
//! master hands to slaves.

use common::rules::batch::ListedFile;
use common::rules::events::SlaveEvent;
use common::rules::outcomes::FileState;
use integration_tests::{Fixture, body_of};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

async fn seeded(keys: &[&str]) -> Fixture {
    let f = Fixture::new().await;
    for key in keys {
        f.put(key, body_of(key)).await;
    }
    f
}

/// Fields a master event may have, but its flags (`keep_source_versions`, `dry_run`): a
/// value of the wrong type below may be a boolean, which a flag takes.
const MASTER_FIELDS: &[&str] = &[
    "run_id",
    "source_bucket",
    "source_prefix",
    "destination_bucket",
    "destination_prefix",
    "suffixes",
    "include",
    "exclude",
    "min_size",
    "max_size",
    "modified_after",
    "modified_before",
    "storage_class",
    "if_destination_exists",
    "wait_before_master_seconds",
    "wait_before_status_seconds",
    "run_timeout_seconds",
];

/// JSON that is not an object.
fn not_an_object() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
        prop::collection::vec(any::<u8>(), 0..4).prop_map(|v| json!(v)),
    ]
}

/// A run id no execution can have.
fn bad_run_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("")),
        "[a-z]{81,100}".prop_map(Value::from),
        "[a-z]{0,5}[ /:*?#%$&<>{}|~\t][a-z]{0,5}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(["r1"])),
    ]
}

/// A value of the wrong type for a string, list or number field.
fn wrong_type() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        Just(json!({"nested": true})),
        Just(json!(-1.5)),
    ]
}

fn malformed_master_event() -> impl Strategy<Value = Value> {
    let known = prop::sample::select(MASTER_FIELDS.to_vec());
    prop_oneof![
        not_an_object(),
        // no run id
        Just(json!({})),
        Just(json!({"source_prefix": "raw/"})),
        bad_run_id().prop_map(|id| json!({ "run_id": id })),
        // a field that does not exist (a misspelling, say)
        "[a-z_]{1,15}"
            .prop_filter("an unknown field", |f| !MASTER_FIELDS.contains(&f.as_str()))
            .prop_map(|field| json!({"run_id": "r-bad", field: "x"})),
        // a known field of the wrong type
        (known, wrong_type()).prop_map(|(field, value)| {
            let mut event = json!({"run_id": "r-bad"});
            event[field] = value;
            event
        }),
        "[A-Z_]{1,10}".prop_map(|b| json!({"run_id": "r-bad", "source_bucket": b})),
        // a destination inside the source (the run would move its own output)
        "[a-z]{1,5}/"
            .prop_map(|p| json!({"run_id": "r-bad", "destination_prefix": format!("raw/{p}")})),
        Just(json!({"run_id": "r-bad", "suffixes": []})),
        // selections that are malformed or leave nothing to select
        Just(json!({"run_id": "r-bad", "include": []})),
        Just(json!({"run_id": "r-bad", "include": ["data-[0-9].csv"]})),
        Just(json!({"run_id": "r-bad", "exclude": [""]})),
        Just(json!({"run_id": "r-bad", "min_size": 10, "max_size": 9})),
        Just(json!({"run_id": "r-bad", "min_size": -1})),
        Just(json!({"run_id": "r-bad", "modified_after": "yesterday"})),
        Just(
            json!({"run_id": "r-bad", "modified_after": "2026-11-28T10:00:00Z",
                    "modified_before": "2026-11-28T09:00:00Z"})
        ),
    ]
}

fn malformed_slave_event() -> impl Strategy<Value = Value> {
    // The run "recorded" has one batch, named by its first key, raw/a.csv.
    prop_oneof![
        not_an_object(),
        Just(json!({"batch": "raw/a.csv"})),
        bad_run_id().prop_map(|id| json!({"run_id": id, "batch": "raw/a.csv"})),
        Just(json!({"run_id": "recorded"})),
        wrong_type().prop_map(|batch| json!({"run_id": "recorded", "batch": batch})),
        Just(json!({"run_id": "recorded", "batch": ["raw/a.csv"]})),
        Just(json!({"run_id": "recorded", "keys": ["raw/a.csv"]})),
        // batches master never recorded for the run: a later key of the batch, or any other
        ".{0,30}"
            .prop_filter("not a recorded batch", |b| b != "raw/a.csv")
            .prop_map(|b| json!({"run_id": "recorded", "batch": b})),
        // a run nobody started
        Just(json!({"run_id": "never-started", "batch": "raw/a.csv"})),
        "[a-z_]{1,10}"
            .prop_filter("an unknown field", |f| f != "run_id" && f != "batch")
            .prop_map(|f| json!({"run_id": "recorded", "batch": "raw/a.csv", f: 1})),
    ]
}

#[test]
fn malformed_events_are_refused_as_invalid_and_change_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let f = runtime.block_on(async {
        let f = Fixture::new().await;
        for key in ["raw/a.csv", "raw/b.csv", "raw/c.txt", "elsewhere/d.csv"] {
            f.put(key, body_of(key)).await;
        }
        // One run is recorded, so slave events can name it.
        f.run_master("recorded").await;
        f
    });
    let handed = f.inbox.take();
    let (objects, items) = runtime.block_on(async { (f.objects().await, f.table_items().await) });
    let (master, slave) = (f.master(), f.slave());
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        ..Config::default()
    });

    runner
        .run(&malformed_master_event(), |event| {
            let refused = runtime.block_on(master.handle(event.clone(), None));
            let err = refused
                .err()
                .ok_or_else(|| TestCaseError::fail(format!("accepted {event}")))?;
            prop_assert_eq!(err.error_type(), "InvalidEvent", "{}: {}", event, err);
            Ok(())
        })
        .unwrap();
    runner
        .run(&malformed_slave_event(), |event| {
            let refused = runtime.block_on(slave.handle(event.clone(), None));
            let err = refused
                .err()
                .ok_or_else(|| TestCaseError::fail(format!("accepted {event}")))?;
            prop_assert_eq!(err.error_type(), "InvalidEvent", "{}: {}", event, err);
            Ok(())
        })
        .unwrap();

    // nothing moved, nothing recorded, nothing handed to a slave
    assert_eq!(handed.len(), 1);
    assert!(f.inbox.take().is_empty());
    runtime.block_on(async {
        assert_eq!(f.objects().await, objects);
        assert_eq!(f.table_items().await, items);
    });
}

#[tokio::test]
async fn bad_events_are_refused_by_name_and_nothing_moves() {
    let keys = ["raw/a.csv", "raw/b.csv", "elsewhere/c.csv"];
    let f = seeded(&keys).await;
    let before = f.objects().await;
    let master = f.master();

    // master: each bad event is InvalidEvent with a message naming the problem
    for (event, expected) in [
        (json!({}), "run_id is missing"),
        (
            json!({"run_id": "r", "source_prefx": "x/"}),
            "unknown field `source_prefx`",
        ),
        (json!({"run_id": "has space"}), "run_id"),
        (
            json!({"run_id": "r", "source_bucket": "Not_A_Bucket"}),
            "not a valid S3 bucket name",
        ),
        (
            json!({"run_id": "r", "destination_prefix": "raw/out/"}),
            "overlap",
        ),
        (
            json!({"run_id": "r", "suffixes": []}),
            "suffix list is empty",
        ),
        (json!({"run_id": "r", "suffixes": ".csv"}), "invalid type"),
    ] {
        let err = master.handle(event.clone(), None).await.unwrap_err();
        assert_eq!(err.error_type(), "InvalidEvent", "{event}");
        assert!(err.to_string().contains(expected), "{event}: {err}");
    }
    assert!(f.inbox.take().is_empty());

    // a run id reused for another prefix is refused
    f.run_master("once").await;
    let err = master
        .handle(
            json!({"run_id": "once", "source_prefix": "elsewhere/"}),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "InvalidEvent");
    assert!(err.to_string().contains("different spec"), "{err}");
    let handed = f.inbox.take();

    // slave: batches master never recorded, unknown runs, malformed events, and a
    // recorded batch whose files lie outside the run's prefix (the table tampered with)
    // are refused before anything moves
    let run = common::RunId::parse("once").unwrap();
    let outside = [ListedFile {
        key: "elsewhere/c.csv".into(),
        ..f.file("once", "raw/a.csv").await.file
    }];
    common::store::MasterRecords::new(f.table())
        .record_page(
            &run,
            Some("raw/b.csv"),
            &common::rules::batch::positioned(vec![&outside[..]], &["elsewhere/c.csv".into()]),
            "raw/c",
        )
        .await
        .unwrap();
    let slave = f.slave();
    let event = |run: &str, batch: &str| {
        serde_json::to_value(SlaveEvent {
            run_id: common::RunId::parse(run).unwrap(),
            batch: common::rules::batch::BatchId::recorded(batch),
            handed_on: None,
        })
        .unwrap()
    };
    for (payload, expected) in [
        (
            event("once", "elsewhere/c.csv"),
            "not under the run's source prefix",
        ),
        (
            event("once", "raw/b.csv"),
            "no batch \"raw/b.csv\" was recorded for run once",
        ),
        (event("nobody", "raw/a.csv"), "run nobody is unknown"),
        (
            json!({"run_id": "once", "batch": "raw/a.csv", "extra": 1}),
            "unknown field `extra`",
        ),
        (json!({"batch": "raw/a.csv"}), "missing field `run_id`"),
        (
            json!({"run_id": "once", "batch": ["raw/a.csv"]}),
            "batch: invalid type",
        ),
    ] {
        let err = slave.handle(payload.clone(), None).await.unwrap_err();
        assert_eq!(err.error_type(), "InvalidEvent", "{payload}");
        assert!(err.to_string().contains(expected), "{payload}: {err}");
    }
    assert_eq!(f.objects().await, before, "a refused event moved something");
    assert!(
        f.files("once")
            .await
            .values()
            .all(|f| f.state == FileState::Started)
    );
    assert_eq!(handed.len(), 1);
}

#[tokio::test]
async fn missing_settings_fail_every_invocation_naming_the_variable() {
    let err = common::Config::from_lookup(&[("SOURCE_BUCKET", "data-bucket")]).unwrap_err();
    let broken: Result<master::Master, _> = Err(err);
    let event = lambda_runtime::LambdaEvent::new(
        json!({"run_id": "r"}),
        lambda_runtime::Context::default(),
    );
    let err = master::handle(&broken, event).await.unwrap_err();
    let diagnostic = lambda_runtime::Diagnostic::from(err);
    assert_eq!(diagnostic.error_type, "ConfigError");
    assert_eq!(
        diagnostic.error_message,
        "environment variable TABLE_NAME: is not set"
    );
}
