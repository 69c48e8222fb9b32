//! The whole local stack (`local/stack.py`): moto, the three functions under local
//! Lambda, the front that makes them answer as on AWS, and the state machine deployed
//! from `statemachine.asl.json`. One per test binary.
//!
//! The functions are the debug binaries of this workspace, built with the tests'
//! features, so a test run builds every crate once. A debug function can be crashed at
//! its crash points ([`LocalStack::arm_crash`], `common::crash`); the front injects
//! faults into the functions' AWS calls and records them ([`LocalStack::set_faults`],
//! [`LocalStack::calls`]). The activity task's heartbeat is
//! [`TASK_HEARTBEAT_SECONDS`], so that a lost token comes back within seconds.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::StorageClass;
use aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput;
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEvent};
use common::RunId;
use common::rules::progress::RunProgress;
use common::store::{StatusRecords, Store};
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};

use xtask::local::{REGION, RunningStack};

use crate::{body_of, sdk_config, unique, workspace_root};

/// The test stack's `TaskHeartbeatSeconds`.
pub const TASK_HEARTBEAT_SECONDS: u64 = 8;

pub struct LocalStack {
    pub endpoint: String,
    running: RunningStack,
    crash_dir: PathBuf,
}

/// The stack of this test binary, started on first use and stopped when it exits.
pub fn local_stack() -> &'static LocalStack {
    static STACK: OnceLock<LocalStack> = OnceLock::new();
    STACK.get_or_init(|| LocalStack::up(&[]))
}

impl LocalStack {
    /// Starts a stack whose functions also get `function_env`, over the test stack's own
    /// settings; a test binary keeps it in a `OnceLock` as [`local_stack`] does.
    pub fn up(function_env: &[(&str, &str)]) -> LocalStack {
        let dir = std::env::temp_dir().join(unique("local-stack"));
        let crash_dir = dir.join("crashes-armed");
        std::fs::create_dir_all(&crash_dir).unwrap();
        build_binaries();
        let settings = [
            ("CRASH_ARMED_DIR", crash_dir.display().to_string()),
            // Small enough that a test's 7 MiB file is copied in parts.
            ("MULTIPART_THRESHOLD_BYTES", "6291456".into()),
            ("MULTIPART_PART_SIZE_BYTES", "5242880".into()),
            // A status call waits for the run at most 5 s, so slow runs go through the
            // state machine's retry.
            ("STATUS_WAIT_SECONDS", "5".into()),
            ("STATUS_CHECK_INTERVAL_MS", "250".into()),
        ];
        let mut options = vec![
            "--no-build".to_string(),
            "--parameter".to_string(),
            format!("TaskHeartbeatSeconds={TASK_HEARTBEAT_SECONDS}"),
        ];
        let extra = function_env.iter().map(|(k, v)| (*k, v.to_string()));
        for (name, value) in settings.into_iter().chain(extra) {
            options.push("--function-env".into());
            options.push(format!("{name}={value}"));
        }
        let running = RunningStack::start(
            &workspace_root(),
            &dir,
            "s3-transfer-tests",
            "s3-transfer-tests",
            &options,
        )
        .unwrap_or_else(|problem| panic!("{problem}"));
        LocalStack {
            endpoint: running.var("AWS_ENDPOINT_URL").unwrap().to_string(),
            running,
            crash_dir,
        }
    }
}

/// Builds the workspace's binaries as `make test` builds everything (`--workspace
/// --bins --tests`), so that the features the tests enable in shared crates are the
/// same and nothing is built twice; a no-op when `make test` built them already.
fn build_binaries() {
    let mut cargo = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
    cargo.current_dir(workspace_root()).args([
        "build",
        "--locked",
        "--workspace",
        "--bins",
        "--tests",
    ]);
    // cargo gives a test the variables it gives build scripts (CARGO_PKG_NAME, ...); some
    // build scripts (ring's) rerun when they change, which would rebuild half the tree.
    for (name, _) in std::env::vars() {
        if xtask::local::set_by_cargo_for_a_package(&name) {
            cargo.env_remove(name);
        }
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "building the functions failed");
}

impl LocalStack {
    pub fn var(&self, name: &str) -> &str {
        self.running
            .var(name)
            .unwrap_or_else(|problem| panic!("{problem}"))
    }

    /// Makes the first function to reach the crash point `point` abort there.
    pub fn arm_crash(&self, point: &str) {
        std::fs::write(self.crash_dir.join(point), b"").unwrap();
    }

    /// Makes the next `times` arrivals at the crash point `point` abort there, for a
    /// point one function at a time reaches.
    pub fn arm_crashes(&self, point: &str, times: u32) {
        std::fs::write(self.crash_dir.join(point), times.to_string()).unwrap();
    }

    /// Whether the crashes armed at `point` have all happened.
    pub fn crashed(&self, point: &str) -> bool {
        !self.crash_dir.join(point).exists()
    }

    /// Waits for this test's turn at the stack, then sets the front's faults: faults
    /// and armed crashes apply to the whole stack, so tests that set them take turns.
    pub async fn turn(&self, faults: Value) -> tokio::sync::MutexGuard<'static, ()> {
        static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let guard = TURN.lock().await;
        self.set_faults(&faults);
        guard
    }

    /// Replaces the front's fault configuration (see `local/faults.py`).
    pub fn set_faults(&self, config: &Value) {
        let (status, body) = self.control("PUT", "/_local/faults", &config.to_string());
        assert_eq!(status, 200, "the front refused the faults: {body}");
    }

    /// How many of each fault the front injected since the faults were last set, by
    /// "service answer" (`"s3 SlowDown"`) and `"duplicate events"`.
    pub fn injected(&self) -> BTreeMap<String, u64> {
        let (status, body) = self.control("GET", "/_local/faults", "");
        assert_eq!(status, 200, "{body}");
        let report: Value = serde_json::from_str(&body).unwrap();
        serde_json::from_value(report["injected"].clone()).unwrap()
    }

    /// The functions' AWS calls recorded since `record_calls` was set.
    pub fn calls(&self) -> Vec<Value> {
        let (status, body) = self.control("GET", "/_local/calls", "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// A new symmetric key in the local stack's KMS, by its ARN.
    pub fn create_kms_key(&self) -> String {
        let address = self.endpoint.trim_start_matches("http://");
        let mut connection = std::net::TcpStream::connect(address).unwrap();
        let body = "{}";
        // moto reads the service and region from the credential scope and checks no
        // signature.
        write!(
            connection,
            "POST / HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-amz-json-1.1\r\n\
             X-Amz-Target: TrentService.CreateKey\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/kms/aws4_request, \
             SignedHeaders=host, Signature=0\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        connection.read_to_string(&mut response).unwrap();
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        let created: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        created["KeyMetadata"]["Arn"].as_str().unwrap().to_string()
    }

    /// One request to the front's control paths.
    fn control(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let address = self.endpoint.trim_start_matches("http://");
        let mut connection = std::net::TcpStream::connect(address).unwrap();
        write!(
            connection,
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        connection.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    }

    pub async fn sfn(&self) -> aws_sdk_sfn::Client {
        aws_sdk_sfn::Client::new(&sdk_config(&self.endpoint).await)
    }

    pub async fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk_config(&self.endpoint).await)
                .force_path_style(true)
                .build(),
        )
    }

    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&sdk_config(&self.endpoint).await)
    }

    /// Starts an execution of the deployed state machine.
    pub async fn start(&self, name: &str, input: &Value) -> String {
        self.sfn()
            .await
            .start_execution()
            .state_machine_arn(self.var("STATE_MACHINE_ARN"))
            .name(name)
            .input(input.to_string())
            .send()
            .await
            .unwrap()
            .execution_arn
    }

    /// Waits for the execution to end.
    pub async fn finished(&self, execution: &str) -> DescribeExecutionOutput {
        let sfn = self.sfn().await;
        let started = Instant::now();
        loop {
            let described = sfn
                .describe_execution()
                .execution_arn(execution)
                .send()
                .await
                .unwrap();
            if described.status != ExecutionStatus::Running {
                return described;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "{execution} still runs after 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn history(&self, execution: &str) -> Vec<HistoryEvent> {
        let sfn = self.sfn().await;
        let mut events = Vec::new();
        let mut token = None;
        loop {
            let page = sfn
                .get_execution_history()
                .execution_arn(execution)
                .set_next_token(token)
                .send()
                .await
                .unwrap();
            events.extend(page.events);
            token = page.next_token;
            if token.is_none() {
                return events;
            }
        }
    }
}

/// The error names of the Lambda failures in a history, in order.
pub fn lambda_failures(history: &[HistoryEvent]) -> Vec<String> {
    history
        .iter()
        .filter_map(|e| e.lambda_function_failed_event_details.as_ref())
        .filter_map(|d| d.error.clone())
        .collect()
}

/// The waits a test does not need.
pub fn input(bucket: &str, extra: Value) -> Value {
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

pub async fn bucket_with(stack: &LocalStack, keys: &[String]) -> String {
    let s3 = stack.s3().await;
    let bucket = unique("wf");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    put(stack, &bucket, keys, None).await;
    bucket
}

/// Uploads `data` to `key` in parts of `part` bytes, as a multipart upload; with
/// `checksum`, S3 keeps a full-object checksum of that algorithm for it (as AWS gives
/// every new object one, CRC64NVME by default, and moto gives none unless asked).
pub async fn put_in_parts(
    stack: &LocalStack,
    bucket: &str,
    key: &str,
    data: &[u8],
    part: usize,
    checksum: Option<aws_sdk_s3::types::ChecksumAlgorithm>,
) {
    let s3 = stack.s3().await;
    let upload = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .set_checksum_algorithm(checksum.clone())
        .set_checksum_type(
            checksum
                .as_ref()
                .map(|_| aws_sdk_s3::types::ChecksumType::FullObject),
        )
        .send()
        .await
        .unwrap();
    let mut parts = Vec::new();
    for (number, chunk) in data.chunks(part).enumerate() {
        let number = number as i32 + 1;
        let uploaded = s3
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload.upload_id().unwrap())
            .part_number(number)
            .set_checksum_algorithm(checksum.clone())
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .unwrap();
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .e_tag(uploaded.e_tag().unwrap())
                .build(),
        );
    }
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload.upload_id().unwrap())
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
}

pub async fn put(stack: &LocalStack, bucket: &str, keys: &[String], class: Option<StorageClass>) {
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

/// Writes one object with these bytes; answers its version id, in a bucket that keeps
/// versions.
pub async fn put_bytes(
    stack: &LocalStack,
    bucket: &str,
    key: &str,
    body: Vec<u8>,
) -> Option<String> {
    stack
        .s3()
        .await
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .unwrap()
        .version_id
}

/// Key → ETag (the MD5 of the bytes, for single-part objects) of everything in the bucket.
pub async fn contents(stack: &LocalStack, bucket: &str) -> BTreeMap<String, String> {
    crate::listing(&stack.s3().await, bucket, "").await
}

/// The stack's status table.
pub async fn table(stack: &LocalStack) -> Store {
    Store::new(
        stack.dynamodb().await,
        stack.var("TABLE_NAME"),
        Duration::from_secs(3600),
    )
}

/// The runs as status and the command line read them.
pub async fn records(stack: &LocalStack) -> StatusRecords {
    StatusRecords::new(table(stack).await)
}

/// The progress the status table records for `run`, which must exist.
pub async fn run_progress(stack: &LocalStack, run: &str) -> RunProgress {
    records(stack)
        .await
        .run_view(&RunId::parse(run).unwrap())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("the status table has no run {run:?}"))
        .progress
}

/// What the bucket must hold once `moved` went from raw/ to refined/ and `kept` stayed.
pub fn moved_and_kept(moved: &[String], kept: &[String]) -> BTreeMap<String, String> {
    let mut expected: BTreeMap<String, String> = moved
        .iter()
        .map(|k| {
            (
                k.replacen("raw/", "refined/", 1),
                crate::md5_hex(&body_of(k)),
            )
        })
        .collect();
    expected.extend(
        kept.iter()
            .map(|k| (k.clone(), crate::md5_hex(&body_of(k)))),
    );
    expected
}

/// The activity events of an execution's history, oldest first: (type, error).
pub fn activity_events(history: &[HistoryEvent]) -> Vec<(String, Option<String>)> {
    history
        .iter()
        .filter(|e| e.r#type.as_str().starts_with("Activity"))
        .map(|e| {
            let error = e
                .activity_timed_out_event_details()
                .and_then(|d| d.error())
                .or_else(|| e.activity_failed_event_details().and_then(|d| d.error()));
            (e.r#type.as_str().to_string(), error.map(String::from))
        })
        .collect()
}

/// How long the execution ran.
pub fn duration(described: &DescribeExecutionOutput) -> Duration {
    let start = std::time::SystemTime::try_from(described.start_date).unwrap();
    let stop = std::time::SystemTime::try_from(described.stop_date.expect("it ended")).unwrap();
    stop.duration_since(start).unwrap_or_default()
}

pub fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{:05}.csv", i)).collect()
}

pub fn output(
    described: &aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput,
) -> Value {
    serde_json::from_str(described.output.as_deref().expect("an output")).unwrap()
}
