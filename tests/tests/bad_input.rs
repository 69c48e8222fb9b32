//! Malformed events of every kind, generated: master and slave answer each one with
//! `InvalidEvent` (never a panic, never another error), and nothing changes in the
//! bucket, in the status table, or in what master hands to slaves.

use integration_tests::{Fixture, body_of};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

/// Fields a master event may have.
const MASTER_FIELDS: &[&str] = &[
    "run_id",
    "source_bucket",
    "source_prefix",
    "destination_bucket",
    "destination_prefix",
    "suffixes",
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
