//! `status` against the local DynamoDB API, with Step Functions' activity calls mocked
//! so each call and its arguments can be checked.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_sfn::operation::get_activity_task::GetActivityTaskOutput;
use aws_sdk_sfn::operation::send_task_failure::SendTaskFailureOutput;
use aws_sdk_sfn::operation::send_task_success::SendTaskSuccessOutput;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use common::StatusSettings;
use integration_tests::{Fixture, body_of};
use serde_json::{Value, json};

const ACTIVITY: &str = "arn:aws:states:us-east-1:123456789012:activity:file-transfer";

/// What the mocked Step Functions API was asked.
#[derive(Default, Clone)]
struct Calls(Arc<Mutex<Vec<String>>>);

impl Calls {
    fn push(&self, call: String) {
        self.0.lock().unwrap().push(call);
    }
    fn list(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A status function whose `GetActivityTask` hands out `tasks` in order (then nothing).
fn status_with(f: &Fixture, tasks: Vec<(&str, Value)>, calls: &Calls) -> status::Status {
    let settings = StatusSettings::from_lookup(&[("ACTIVITY_ARN", ACTIVITY)]).unwrap();
    status_with_settings(f, tasks, calls, settings)
}

fn status_with_settings(
    f: &Fixture,
    tasks: Vec<(&str, Value)>,
    calls: &Calls,
    settings: StatusSettings,
) -> status::Status {
    let tasks = Arc::new(Mutex::new(
        tasks
            .into_iter()
            .map(|(t, i)| (t.to_string(), i.to_string()))
            .collect::<Vec<_>>(),
    ));
    let (c1, c2, c3) = (calls.clone(), calls.clone(), calls.clone());
    let get = mock!(aws_sdk_sfn::Client::get_activity_task)
        .match_requests(|r| r.activity_arn() == Some(ACTIVITY))
        .then_compute_output(move |_| {
            c1.push("GetActivityTask".into());
            let mut tasks = tasks.lock().unwrap();
            if tasks.is_empty() {
                return GetActivityTaskOutput::builder().build();
            }
            let (token, input) = tasks.remove(0);
            GetActivityTaskOutput::builder()
                .task_token(token)
                .input(input)
                .build()
        });
    let success = mock!(aws_sdk_sfn::Client::send_task_success).then_compute_output(move |r| {
        c2.push(format!(
            "SendTaskSuccess {} {}",
            r.task_token().unwrap(),
            r.output().unwrap()
        ));
        SendTaskSuccessOutput::builder().build()
    });
    let failure = mock!(aws_sdk_sfn::Client::send_task_failure).then_compute_output(move |r| {
        c3.push(format!(
            "SendTaskFailure {} {} {}",
            r.task_token().unwrap(),
            r.error().unwrap_or(""),
            r.cause().unwrap_or("")
        ));
        SendTaskFailureOutput::builder().build()
    });
    let mut clients = f.clients.clone();
    clients.sfn = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, [&get, &success, &failure]);
    status::Status::new(&clients, &f.config, settings)
}

async fn moved_run(f: &Fixture, run: &str, prefix: &str, keys: &[&str]) {
    for key in keys {
        f.put(&format!("{prefix}{key}"), body_of(key)).await;
    }
    f.master()
        .handle(json!({"run_id": run, "source_prefix": prefix, "destination_prefix": format!("out-{prefix}")}), None)
        .await
        .unwrap();
    f.deliver_all(2).await;
}

#[tokio::test]
async fn an_unfinished_run_is_transfer_incomplete_and_touches_no_activity() {
    let f = Fixture::new().await;
    let calls = Calls::default();
    let status = status_with(&f, vec![], &calls);

    // never started
    let err = status
        .handle(json!({"run_id": "later"}), None)
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "TransferIncomplete");
    assert!(
        err.to_string().contains("master has not recorded the run"),
        "{err}"
    );

    // listed, not moved
    for key in ["raw/a.csv", "raw/b.csv"] {
        f.put(key, body_of(key)).await;
    }
    f.run_master("half").await;
    let err = status
        .handle(json!({"run_id": "half"}), None)
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "TransferIncomplete");
    assert!(
        err.to_string().contains("2 of 2 files are still moving"),
        "{err}"
    );
    assert!(calls.list().is_empty(), "{:?}", calls.list());

    // bad event
    let err = status.handle(json!({"run": "x"}), None).await.unwrap_err();
    assert_eq!(err.error_type(), "InvalidEvent");
}

#[tokio::test]
async fn a_call_waits_for_files_still_moving_and_answers_as_soon_as_they_are_done() {
    // GIVEN a run whose files are listed but not yet moved, and status calls that may
    // wait up to 30 s (or 1 s), reading the counters every 100 ms
    let f = Fixture::new().await;
    for key in ["raw/a.csv", "raw/b.csv"] {
        f.put(key, body_of(key)).await;
    }
    f.run_master("slow").await;
    let calls = Calls::default();
    let settings = |wait| {
        StatusSettings::from_lookup(&[
            ("ACTIVITY_ARN", ACTIVITY),
            ("ACTIVITY_POLL_SECONDS", "1"),
            ("STATUS_WAIT_SECONDS", wait),
            ("STATUS_CHECK_INTERVAL_MS", "100"),
        ])
        .unwrap()
    };
    let deadline = Some(SystemTime::now() + Duration::from_secs(120));

    // WHEN a call that may wait 1 s finds the files still moving
    let short = status_with_settings(&f, vec![], &calls, settings("1"));
    let started = Instant::now();
    let err = short
        .handle(json!({"run_id": "slow"}), deadline)
        .await
        .unwrap_err();
    // THEN it waited its second, then answered TransferIncomplete
    assert_eq!(err.error_type(), "TransferIncomplete");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // WHEN a call that may wait 30 s starts, and the slaves finish two seconds later
    let status = status_with_settings(
        &f,
        vec![("token-slow", json!({"run_id": "slow"}))],
        &calls,
        settings("30"),
    );
    let (answer, done) = tokio::join!(status.handle(json!({"run_id": "slow"}), deadline), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        f.deliver_all(1).await;
        Instant::now()
    });

    // THEN it answers with the summary within a few intervals of the last file, having
    // completed the activity task once
    let summary = answer.unwrap();
    assert!(
        done.elapsed() < Duration::from_millis(900),
        "{:?}",
        done.elapsed()
    );
    assert_eq!(
        (summary.files, summary.completed, summary.failed),
        (2, 2, 0)
    );
    let calls = calls.list();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0], "GetActivityTask");
    assert!(
        calls[1].starts_with("SendTaskSuccess token-slow "),
        "{calls:?}"
    );
}

/// Counts the requests a DynamoDB client sends.
#[derive(Debug, Default, Clone)]
struct RequestCount(Arc<Mutex<usize>>);

impl aws_sdk_dynamodb::config::Intercept for RequestCount {
    fn name(&self) -> &'static str {
        "RequestCount"
    }

    fn read_before_execution(
        &self,
        _context: &aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef<
            '_,
        >,
        _config: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        *self.0.lock().unwrap() += 1;
        Ok(())
    }
}

#[tokio::test]
async fn a_run_in_which_no_file_finishes_is_read_once_a_check_interval() {
    // GIVEN a run whose two files never get an outcome, and a status call that may wait
    // 3 s, reading the counters at most every second
    let mut f = Fixture::new().await;
    for key in ["raw/a.csv", "raw/b.csv"] {
        f.put(key, body_of(key)).await;
    }
    f.run_master("stalled").await;
    let reads = RequestCount::default();
    f.clients.dynamodb = aws_sdk_dynamodb::Client::from_conf(
        f.clients
            .dynamodb
            .config()
            .to_builder()
            .interceptor(reads.clone())
            .build(),
    );
    let settings = StatusSettings::from_lookup(&[
        ("ACTIVITY_ARN", ACTIVITY),
        ("ACTIVITY_POLL_SECONDS", "1"),
        ("STATUS_WAIT_SECONDS", "3"),
        ("STATUS_CHECK_INTERVAL_MS", "1000"),
    ])
    .unwrap();
    let calls = Calls::default();
    let status = status_with_settings(&f, vec![], &calls, settings);

    // WHEN the call waits out its 3 s
    let err = status
        .handle(
            json!({"run_id": "stalled"}),
            Some(SystemTime::now() + Duration::from_secs(120)),
        )
        .await
        .unwrap_err();

    // THEN it answered TransferIncomplete having read the run a few times (once, again
    // 0.1 s later to see the rate, then once a second since nothing finished), not ten
    // times a second, and it touched no activity task
    assert_eq!(err.error_type(), "TransferIncomplete");
    let reads = *reads.0.lock().unwrap();
    assert!((3..=6).contains(&reads), "{reads} reads");
    assert!(calls.list().is_empty(), "{:?}", calls.list());
}

#[tokio::test]
async fn a_token_for_another_run_is_recorded_there_and_delivered_by_that_run() {
    // GIVEN two finished runs; the activity hands out run-b's task before run-a's
    let f = Fixture::new().await;
    moved_run(&f, "run-a", "a/", &["1.csv", "2.csv"]).await;
    moved_run(&f, "run-b", "b/", &["3.csv"]).await;
    let calls = Calls::default();
    let status = status_with(
        &f,
        vec![
            ("token-b", json!({"run_id": "run-b"})),
            ("token-a", json!({"run_id": "run-a"})),
        ],
        &calls,
    );

    // WHEN run-a checks its status
    let summary = status
        .handle(json!({"run_id": "run-a"}), None)
        .await
        .unwrap();

    // THEN run-a's own token gets the success with its summary, and run-b's token is
    // kept on run-b, not used
    assert_eq!(
        (summary.files, summary.completed, summary.failed),
        (2, 2, 0)
    );
    let bytes = (body_of("1.csv").len() + body_of("2.csv").len()) as u64;
    assert_eq!(summary.bytes, bytes);
    let output = serde_json::to_string(&summary).unwrap();
    assert_eq!(
        calls.list(),
        [
            "GetActivityTask".to_string(),
            "GetActivityTask".to_string(),
            format!("SendTaskSuccess token-a {output}")
        ]
    );
    let f = &f;
    let recorded = |run: &'static str| async move {
        f.records()
            .run_record(&common::RunId::parse(run).unwrap())
            .await
            .unwrap()
            .unwrap()
            .task_tokens
    };
    assert_eq!(recorded("run-b").await, ["token-b"]);
    assert_eq!(
        f.item("run-a#run", "run").await.unwrap()["delivered"],
        "succeeded"
    );

    // WHEN run-b checks its status
    let summary_b = status
        .handle(json!({"run_id": "run-b"}), None)
        .await
        .unwrap();

    // THEN it delivers the recorded token without polling
    assert_eq!(summary_b.files, 1);
    let calls_b = &calls.list()[3..];
    assert_eq!(calls_b.len(), 1);
    assert!(
        calls_b[0].starts_with("SendTaskSuccess token-b "),
        "{calls_b:?}"
    );
    assert!(
        recorded("run-b").await.is_empty(),
        "forgotten once delivered"
    );

    // AND asking again answers the same without touching the activity
    let again = status
        .handle(json!({"run_id": "run-a"}), None)
        .await
        .unwrap();
    assert_eq!(again, summary);
    assert_eq!(calls.list().len(), 4);
}

#[tokio::test]
async fn a_failed_run_sends_task_failure_naming_each_failed_file() {
    // GIVEN a run where one file vanished before its slave ran
    let f = Fixture::new().await;
    for key in ["raw/good.csv", "raw/gone.csv"] {
        f.put(key, body_of(key)).await;
    }
    f.run_master("bad-run").await;
    f.clients
        .s3
        .delete_object()
        .bucket(&f.bucket)
        .key("raw/gone.csv")
        .send()
        .await
        .unwrap();
    f.deliver_all(1).await;
    let calls = Calls::default();
    let status = status_with(&f, vec![("tok", json!({"run_id": "bad-run"}))], &calls);

    // WHEN status checks it
    let err = status
        .handle(json!({"run_id": "bad-run"}), None)
        .await
        .unwrap_err();

    // THEN the activity fails with TransferFailed and a cause naming the file and why,
    // and status itself fails with the same name and cause
    assert_eq!(err.error_type(), "TransferFailed");
    let cause = err.to_string();
    assert!(cause.starts_with("1 of 2 files failed to move"), "{cause}");
    assert!(
        cause.contains("raw/gone.csv: the source is gone"),
        "{cause}"
    );
    assert!(!cause.contains("good.csv"), "{cause}");
    assert_eq!(
        calls.list()[1],
        format!("SendTaskFailure tok TransferFailed {cause}")
    );
    assert_eq!(
        f.item("bad-run#run", "run").await.unwrap()["delivered"],
        "failed"
    );
}

#[tokio::test]
async fn a_task_without_a_run_id_is_failed_and_a_missing_token_is_pending() {
    // GIVEN a finished run and an activity that hands out only a task with no run_id
    let f = Fixture::new().await;
    moved_run(&f, "lonely", "l/", &["x.csv"]).await;
    let calls = Calls::default();
    let status = status_with(&f, vec![("orphan", json!({"something": "else"}))], &calls);

    // WHEN status polls and never sees its own task
    let err = status
        .handle(json!({"run_id": "lonely"}), None)
        .await
        .unwrap_err();

    // THEN the unroutable task is failed so its execution ends, and status answers
    // ActivityTaskPending so the state machine asks again
    assert_eq!(err.error_type(), "ActivityTaskPending");
    let list = calls.list();
    assert!(
        list[1].starts_with("SendTaskFailure orphan InvalidActivityInput "),
        "{list:?}"
    );
    assert_eq!(list.iter().filter(|c| *c == "GetActivityTask").count(), 2);
    assert!(
        !f.item("lonely#run", "run")
            .await
            .unwrap()
            .contains_key("delivered")
    );
}
