//! Test harness: local S3, DynamoDB and Step Functions APIs (moto's server), a Lambda
//! Invoke endpoint that captures async invocations, and fixtures with a fresh bucket
//! and status table per test.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_s3::primitives::ByteStream;
use common::rules::events::{MasterOutput, SlaveEvent, SlaveOutput};
use common::rules::records::FileStatus;
use common::store::StatusRecords;
use common::{Clients, Config, MasterSettings, SlaveSettings};
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::json;

pub mod stack;

/// The workspace root, where `.tools/` and `local/` live.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Moto {
    url: String,
    _process: Child,
}

/// One moto server per test binary, started on first use.
fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let python = std::env::var("MOTO_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join(".tools/venv/bin/python"));
        assert!(
            python.exists(),
            "{} not found: run `make test` (or `make tools`) to install the local AWS stack",
            python.display()
        );
        let port = free_port();
        let process = Command::new(&python)
            .current_dir(workspace_root())
            .args(["-m", "local.moto_server"])
            .arg(port.to_string())
            .env("MOTO_PORT", port.to_string())
            // An empty GetActivityTask answers after this long instead of AWS's 60 s.
            .env("MOTO_ACTIVITY_POLL_SECONDS", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto starts");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto {
            url: format!("http://127.0.0.1:{port}"),
            _process: process,
        }
    })
}

/// The endpoint of this test binary's moto server.
pub fn moto_url() -> &'static str {
    &moto().url
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A unique lowercase name for a test's bucket or table.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Clients' configuration for a local endpoint: the same as the local stack's.
pub use xtask::local::sdk_config;

/// A Lambda Invoke endpoint that accepts every invocation as AWS accepts an async one
/// (202, at once) and keeps the payloads for the test to deliver.
#[derive(Clone)]
pub struct LambdaInbox {
    // The endpoint queues an invocation before it answers 202, so whatever master has
    // seen accepted is here.
    received: Arc<Mutex<UnboundedReceiver<xtask::async_invoke::Invocation>>>,
}

impl LambdaInbox {
    /// Starts the endpoint; returns it with its URL.
    pub async fn start() -> (Self, String) {
        let (sink, received) = tokio::sync::mpsc::unbounded_channel();
        let url = xtask::async_invoke::start(sink).await.unwrap();
        let inbox = LambdaInbox {
            received: Arc::new(Mutex::new(received)),
        };
        (inbox, url)
    }

    /// Takes every invocation received so far, as slave events.
    pub fn take(&self) -> Vec<SlaveEvent> {
        let mut received = self.received.lock().unwrap();
        std::iter::from_fn(|| received.try_recv().ok())
            .map(|(function, payload)| {
                assert_eq!(function, "slave-fn", "master invoked {function}");
                serde_json::from_value(payload).expect("master sends slave events")
            })
            .collect()
    }
}

/// A fresh bucket and status table on the local stack, with the functions wired to them.
pub struct Fixture {
    pub clients: Clients,
    pub bucket: String,
    pub table: String,
    pub inbox: LambdaInbox,
    pub config: Config,
    pub master_settings: MasterSettings,
    pub slave_settings: SlaveSettings,
}

impl Fixture {
    pub async fn new() -> Self {
        let sdk = sdk_config(&moto().url).await;
        let mut clients = Clients::from_sdk_config(&sdk, true);
        let (inbox, inbox_url) = LambdaInbox::start().await;
        clients.lambda = aws_sdk_lambda::Client::from_conf(
            aws_sdk_lambda::config::Builder::from(&sdk)
                .endpoint_url(inbox_url)
                .build(),
        );
        let bucket = unique("bucket");
        let table = unique("status");
        clients
            .s3
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        create_table(&clients.dynamodb, &table).await;
        let config = Config::from_lookup(&[
            ("TABLE_NAME", table.as_str()),
            ("SOURCE_BUCKET", bucket.as_str()),
            ("S3_FORCE_PATH_STYLE", "true"),
        ])
        .unwrap();
        let master_settings =
            MasterSettings::from_lookup(&[("SLAVE_FUNCTION", "slave-fn")]).unwrap();
        let slave_settings =
            SlaveSettings::from_lookup(&[("AWS_LAMBDA_FUNCTION_NAME", "slave-fn")]).unwrap();
        Fixture {
            clients,
            bucket,
            table,
            inbox,
            config,
            master_settings,
            slave_settings,
        }
    }

    pub fn master(&self) -> master::Master {
        master::Master::new(
            &self.clients,
            self.config.clone(),
            self.master_settings.clone(),
        )
    }

    pub fn slave(&self) -> slave::Slave {
        slave::Slave::new(&self.clients, &self.config, self.slave_settings.clone())
    }

    pub async fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        self.clients
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body.into()))
            .send()
            .await
            .unwrap();
    }

    /// Uploads many objects, 32 at a time; each body names its key.
    pub async fn put_many(&self, keys: &[String]) {
        stream::iter(keys)
            .map(|k| self.put(k, body_of(k)))
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
    }

    /// Every object in the bucket with its bytes, in key order.
    pub async fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        let keys = self.keys("").await;
        stream::iter(keys)
            .map(|k| async move {
                let body = self.get(&k).await.unwrap();
                Ok::<_, ()>((k, body))
            })
            .buffer_unordered(32)
            .try_collect()
            .await
            .unwrap()
    }

    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        self.checksums(prefix).await.into_keys().collect()
    }

    /// Every key under `prefix` with the MD5 of its bytes, from the listing's ETags:
    /// one request per 1,000 objects instead of one download each. Only for objects
    /// written whole (a multipart ETag is not the content's MD5).
    pub async fn checksums(&self, prefix: &str) -> BTreeMap<String, String> {
        listing(&self.clients.s3, &self.bucket, prefix).await
    }

    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let out = self
            .clients
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        Some(out.body.collect().await.unwrap().to_vec())
    }

    pub async fn run_master(&self, run: &str) -> MasterOutput {
        self.master()
            .handle(json!({ "run_id": run }), None)
            .await
            .unwrap_or_else(|e| panic!("master failed: {e}"))
    }

    /// Delivers every captured slave invocation once, `concurrency` at a time.
    pub async fn deliver_all(&self, concurrency: usize) -> Vec<SlaveEvent> {
        let events = self.inbox.take();
        let slave = self.slave();
        let slave = &slave;
        stream::iter(events.clone())
            .map(|e| async move { deliver(slave, &e).await })
            .buffer_unordered(concurrency)
            .collect::<Vec<_>>()
            .await;
        events
    }

    /// An item of the status table, as attribute name → string value.
    pub async fn item(&self, pk: &str, sk: &str) -> Option<BTreeMap<String, String>> {
        let item = self
            .clients
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk.into()))
            .key("sk", AttributeValue::S(sk.into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item?;
        Some(item.into_iter().map(|(k, v)| (k, plain(&v))).collect())
    }

    /// Every item of the table, each as its attributes, in order.
    pub async fn table_items(&self) -> Vec<BTreeMap<String, String>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .clients
                .dynamodb
                .scan()
                .table_name(&self.table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .unwrap();
            items.extend(
                out.items
                    .unwrap_or_default()
                    .into_iter()
                    .map(|item| item.into_iter().map(|(k, v)| (k, plain(&v))).collect()),
            );
            start = out.last_evaluated_key;
            if start.is_none() {
                items.sort();
                return items;
            }
        }
    }

    /// The status table, as the functions see it.
    pub fn table(&self) -> common::Store {
        common::Store::new(
            self.clients.dynamodb.clone(),
            &self.table,
            Duration::from_secs(3600),
        )
    }

    /// The runs as status and the command line read them.
    pub fn records(&self) -> StatusRecords {
        StatusRecords::new(self.table())
    }

    /// The run's progress as status reads it.
    pub async fn progress(&self, run: &str) -> common::rules::progress::RunProgress {
        let run = common::RunId::parse(run).unwrap();
        self.records()
            .run_view(&run)
            .await
            .unwrap()
            .expect("run exists")
            .progress
    }

    /// Every file recorded for the run, by key, with its state and reason.
    pub async fn files(&self, run: &str) -> BTreeMap<String, FileStatus> {
        let run = common::RunId::parse(run).unwrap();
        self.records()
            .files(&run)
            .await
            .unwrap()
            .into_iter()
            .map(|f| (f.file.key.clone(), f))
            .collect()
    }

    /// One recorded file of the run.
    pub async fn file(&self, run: &str, key: &str) -> FileStatus {
        self.files(run)
            .await
            .remove(key)
            .unwrap_or_else(|| panic!("{key} is not recorded for run {run}"))
    }

    /// The run's failed files with their reasons, as status lists them.
    pub async fn failed_files(&self, run: &str) -> Vec<(String, String)> {
        let run = common::RunId::parse(run).unwrap();
        self.records().failed_files(&run, 1000).await.unwrap()
    }
}

/// Every key under `prefix` in `bucket` with its ETag, unquoted (the MD5 of its bytes for
/// an object written whole). Keys come URL-encoded, so that any key S3 can store is listed.
pub async fn listing(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> BTreeMap<String, String> {
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .encoding_type(aws_sdk_s3::types::EncodingType::Url)
        .into_paginator()
        .send();
    let mut keys = BTreeMap::new();
    while let Some(page) = pages.next().await {
        for object in page.unwrap().contents.unwrap_or_default() {
            let etag = object
                .e_tag
                .unwrap_or_default()
                .trim_matches('"')
                .to_string();
            let key = common::rules::keys::decode_listed_key(&object.key.unwrap()).unwrap();
            keys.insert(key, etag);
        }
    }
    keys
}

pub async fn deliver(slave: &slave::Slave, event: &SlaveEvent) -> SlaveOutput {
    slave
        .handle(serde_json::to_value(event).unwrap(), None)
        .await
        .unwrap_or_else(|e| panic!("slave failed: {e}"))
}

/// The body the fixtures upload for `key`: distinct per key, a little longer for some.
pub fn body_of(key: &str) -> Vec<u8> {
    format!("id,key\n1,{key}\n{}", "x".repeat(key.len() % 97)).into_bytes()
}

pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn plain(v: &AttributeValue) -> String {
    match v {
        AttributeValue::S(s) | AttributeValue::N(s) => s.clone(),
        AttributeValue::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

pub async fn create_table(dynamodb: &aws_sdk_dynamodb::Client, table: &str) {
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .unwrap()
    };
    dynamodb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("pk"))
        .attribute_definitions(attribute("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .send()
        .await
        .unwrap();
}

/// A client like `client`, signing its requests for `region`.
pub fn client_in(client: &aws_sdk_s3::Client, region: &str) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        client
            .config()
            .to_builder()
            .region(aws_sdk_s3::config::Region::new(region.to_string()))
            .build(),
    )
}

/// Creates `bucket` in `region`.
pub async fn create_bucket_in(client: &aws_sdk_s3::Client, bucket: &str, region: &str) {
    client
        .create_bucket()
        .bucket(bucket)
        .create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(region))
                .build(),
        )
        .send()
        .await
        .unwrap();
}
