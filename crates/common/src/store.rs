//! The DynamoDB status table.
//!
//! One table, key `pk` (string) + `sk` (string), TTL on `expires_at`. A run owns three
//! partitions; `#` cannot occur in a run id, so they never collide with another run's:
//!
//! | `pk`            | `sk`             | what                                                    |
//! |-----------------|------------------|---------------------------------------------------------|
//! | `{run}#run`     | `run`            | the run: spec, listing progress, `selected`, task token |
//! | `{run}#run`     | `counter#00`–`15`| outcome counters: `completed`, `failed`, `bytes`        |
//! | `{run}`         | the source key   | one file: `status`, `size`, `etag`, `destination_key`, `reason` |
//! | `{run}#failed`  | the source key   | a failed file and its `reason`, so failures are listed without a scan |
//!
//! Master alone writes the run item's listing fields; slaves alone write the counters,
//! spread over shards so concurrent batches rarely contend for one item; status reads
//! the whole run partition in one query.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, KeysAndAttributes, Put, PutRequest, TransactWriteItem, Update,
    WriteRequest,
};
use futures::{StreamExt, TryStreamExt, stream};

use crate::error::{AwsError, is_transient_code};
use crate::progress::RunProgress;
use crate::run::{Location, RunId, RunSpec, Suffixes};

/// Counter shards per run.
pub const COUNTER_SHARDS: u64 = 16;
/// Items per `TransactWriteItems`. DynamoDB accepts 100; moto, the local stack, 25.
const TRANSACTION_ITEMS: usize = 25;
const BATCH_WRITE_ITEMS: usize = 25;
const BATCH_GET_KEYS: usize = 100;
/// Attempts at unprocessed items, transaction conflicts and races before giving up.
const ATTEMPTS: u32 = 10;
const RUN_SK: &str = "run";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileState {
    Started,
    Completed,
    Failed,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Started => "started",
            FileState::Completed => "completed",
            FileState::Failed => "failed",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "started" => Some(FileState::Started),
            "completed" => Some(FileState::Completed),
            "failed" => Some(FileState::Failed),
            _ => None,
        }
    }
}

/// A file as the listing saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    pub key: String,
    pub size: u64,
    pub etag: String,
}

/// A file's row in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub listed: ListedFile,
    pub state: FileState,
}

/// How a finished run's activity task was completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Succeeded,
    Failed,
}

/// The run item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunRecord {
    /// Absent when only a task token has been parked on the run so far.
    pub spec: Option<RunSpec>,
    pub listing_complete: bool,
    pub selected: u64,
    /// Listing position up to which every selected file is recorded and counted.
    pub recorded_through: Option<String>,
    /// Listing position up to which every selected file has been handed to a slave.
    pub handed_through: Option<String>,
    pub task_token: Option<String>,
    pub delivered: Option<Delivered>,
}

/// The run item and its counters, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunView {
    pub record: RunRecord,
    pub progress: RunProgress,
}

/// What became of one file in a slave batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed { destination_key: String, size: u64 },
    Failed { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOutcome {
    pub key: String,
    pub outcome: Outcome,
}

/// Counter changes, as applied in one transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub completed: i64,
    pub failed: i64,
    pub bytes: i64,
}

impl std::ops::AddAssign for Delta {
    fn add_assign(&mut self, o: Delta) {
        self.completed += o.completed;
        self.failed += o.failed;
        self.bytes += o.bytes;
    }
}

/// The counter change when a file in state `from` gets `outcome`, or `None` when the
/// row must not change: a completed file stays completed (a duplicate delivery), and a
/// failed file that fails again is already counted.
pub fn transition(from: FileState, outcome: &Outcome) -> Option<Delta> {
    match (from, outcome) {
        (FileState::Completed, _) | (FileState::Failed, Outcome::Failed { .. }) => None,
        (FileState::Started, Outcome::Failed { .. }) => Some(Delta {
            failed: 1,
            ..Delta::default()
        }),
        (from, Outcome::Completed { size, .. }) => Some(Delta {
            completed: 1,
            failed: if from == FileState::Failed { -1 } else { 0 },
            bytes: *size as i64,
        }),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(
        "run {run} already exists with a different spec ({existing}); use a new execution name"
    )]
    SpecMismatch { run: RunId, existing: String },
    #[error("run {run}: another master call moved the listing position; this call stops")]
    ProgressConflict { run: RunId },
    #[error("run {run}: the table holds an item it cannot read: {problem}")]
    Corrupt { run: RunId, problem: String },
}

#[derive(Clone, Debug)]
pub struct Store {
    client: Client,
    table: String,
    ttl: Duration,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: String, sk: impl Into<String>) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

fn run_pk(run: &RunId) -> String {
    format!("{run}#run")
}

fn file_pk(run: &RunId) -> String {
    run.to_string()
}

fn failed_pk(run: &RunId) -> String {
    format!("{run}#failed")
}

fn get_s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn now_rfc3339() -> String {
    aws_smithy_types::DateTime::from(SystemTime::now())
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

/// Which counter shard a transaction updates: spread by key, the same for a retry.
fn shard_for(key: &str) -> String {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let hash = key.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    format!("counter#{:02}", hash % COUNTER_SHARDS)
}

/// Whether an `UpdateItem` failed only because its condition did not hold.
fn is_condition_failure<R>(err: &aws_sdk_dynamodb::error::SdkError<UpdateItemError, R>) -> bool {
    err.as_service_error()
        .is_some_and(UpdateItemError::is_conditional_check_failed_exception)
}

async fn backoff(attempt: u32) {
    let millis = 25u64 << attempt.min(7);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

impl Store {
    pub fn new(client: Client, table: impl Into<String>, ttl: Duration) -> Self {
        Store {
            client,
            table: table.into(),
            ttl,
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn expires_at(&self) -> AttributeValue {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        n((now + self.ttl).as_secs())
    }

    // ---- the run item -------------------------------------------------------------

    /// The run item and its counters, in one strongly consistent query; `None` for a run
    /// the table has never seen.
    pub async fn run_view(&self, run: &RunId) -> Result<Option<RunView>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(run_pk(run)))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("Query", e))?;
            items.extend(page.items.unwrap_or_default());
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        let Some(run_item) = items.iter().find(|i| get_s(i, "sk") == Some(RUN_SK)) else {
            return Ok(None);
        };
        let record = parse_run(run, run_item)?;
        let mut progress = RunProgress {
            listing_complete: record.listing_complete,
            selected: record.selected,
            ..RunProgress::default()
        };
        for counter in items
            .iter()
            .filter(|i| get_s(i, "sk").is_some_and(|sk| sk.starts_with("counter#")))
        {
            let read = |name| get_n(counter, name).unwrap_or(0).max(0) as u64;
            progress.completed += read("completed");
            progress.failed += read("failed");
            progress.bytes += read("bytes");
        }
        Ok(Some(RunView { record, progress }))
    }

    pub async fn run_record(&self, run: &RunId) -> Result<Option<RunRecord>, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(run), RUN_SK)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetItem", e))?
            .item;
        item.map(|i| parse_run(run, &i)).transpose()
    }

    /// Creates the run with its spec, or checks that an existing run has the same spec:
    /// an execution name reused for other buckets or prefixes is refused.
    pub async fn start_run(&self, run: &RunId, spec: &RunSpec) -> Result<RunRecord, StoreError> {
        for _ in 0..ATTEMPTS {
            if let Some(existing) = self.run_record(run).await? {
                match &existing.spec {
                    Some(have) if have == spec => return Ok(existing),
                    Some(have) => {
                        return Err(StoreError::SpecMismatch {
                            run: run.clone(),
                            existing: describe(have),
                        });
                    }
                    None => {}
                }
            }
            let suffixes = spec
                .suffixes
                .as_slice()
                .iter()
                .map(|x| s(x.as_str()))
                .collect();
            let created = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(run_pk(run), RUN_SK)))
                .update_expression(
                    "SET source_bucket = :sb, source_prefix = :sp, destination_bucket = :db, \
                     destination_prefix = :dp, suffixes = :sx, listing_complete = :f, selected = :zero, \
                     created_at = :now, expires_at = :exp",
                )
                .condition_expression("attribute_not_exists(source_bucket)")
                .expression_attribute_values(":sb", s(&spec.source.bucket))
                .expression_attribute_values(":sp", s(&spec.source.prefix))
                .expression_attribute_values(":db", s(&spec.destination.bucket))
                .expression_attribute_values(":dp", s(&spec.destination.prefix))
                .expression_attribute_values(":sx", AttributeValue::L(suffixes))
                .expression_attribute_values(":f", AttributeValue::Bool(false))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":now", s(now_rfc3339()))
                .expression_attribute_values(":exp", self.expires_at())
                .send()
                .await;
            match created {
                Ok(_) => {}
                // Another master created it first: read it again and compare.
                Err(e) if is_condition_failure(&e) => continue,
                Err(e) => return Err(AwsError::from_sdk("UpdateItem", e).into()),
            }
        }
        self.run_record(run)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                run: run.clone(),
                problem: "the run item vanished while it was being created".into(),
            })
    }

    /// Moves the recorded position from `previous` to `through` and counts `added` more
    /// selected files, only if no other call has moved it meanwhile.
    pub async fn advance_recorded(
        &self,
        run: &RunId,
        previous: Option<&str>,
        through: &str,
        added: u64,
    ) -> Result<(), StoreError> {
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(run), RUN_SK)))
            .update_expression("SET recorded_through = :t ADD selected :n")
            .expression_attribute_values(":t", s(through))
            .expression_attribute_values(":n", n(added));
        let request = match previous {
            None => request.condition_expression("attribute_not_exists(recorded_through)"),
            Some(p) => request
                .condition_expression("recorded_through = :p")
                .expression_attribute_values(":p", s(p)),
        };
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => {
                Err(StoreError::ProgressConflict { run: run.clone() })
            }
            Err(e) => Err(AwsError::from_sdk("UpdateItem", e).into()),
        }
    }

    pub async fn advance_handed(&self, run: &RunId, through: &str) -> Result<(), StoreError> {
        self.set_run_fields(run, "SET handed_through = :v", s(through))
            .await
    }

    pub async fn complete_listing(&self, run: &RunId) -> Result<(), StoreError> {
        self.set_run_fields(run, "SET listing_complete = :v", AttributeValue::Bool(true))
            .await
    }

    /// Parks a task token handed out for `run` on its run item, creating the item if
    /// the run's master has not started yet.
    pub async fn park_token(&self, run: &RunId, token: &str) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(run), RUN_SK)))
            .update_expression("SET task_token = :t, expires_at = if_not_exists(expires_at, :exp)")
            .expression_attribute_values(":t", s(token))
            .expression_attribute_values(":exp", self.expires_at())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateItem", e))?;
        Ok(())
    }

    /// Records that the run's task was completed, and forgets its token.
    pub async fn mark_delivered(&self, run: &RunId, how: Delivered) -> Result<(), StoreError> {
        let how = match how {
            Delivered::Succeeded => "succeeded",
            Delivered::Failed => "failed",
        };
        self.set_run_fields(run, "SET delivered = :v REMOVE task_token", s(how))
            .await
    }

    async fn set_run_fields(
        &self,
        run: &RunId,
        expression: &str,
        value: AttributeValue,
    ) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(run), RUN_SK)))
            .update_expression(expression)
            .expression_attribute_values(":v", value)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateItem", e))?;
        Ok(())
    }

    // ---- file rows ----------------------------------------------------------------

    /// Records files as `started`, 25 to a `BatchWriteItem`, `concurrency` requests at once.
    pub async fn put_started(
        &self,
        run: &RunId,
        files: &[ListedFile],
        concurrency: usize,
    ) -> Result<(), StoreError> {
        let now = s(now_rfc3339());
        let expires = self.expires_at();
        let requests: Vec<WriteRequest> = files
            .iter()
            .map(|f| {
                let mut item = key(file_pk(run), &f.key);
                item.insert("status".into(), s(FileState::Started.as_str()));
                item.insert("size".into(), n(f.size));
                item.insert("etag".into(), s(&f.etag));
                item.insert("updated_at".into(), now.clone());
                item.insert("expires_at".into(), expires.clone());
                let put = PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .expect("item is set");
                WriteRequest::builder().put_request(put).build()
            })
            .collect();
        stream::iter(
            requests
                .chunks(BATCH_WRITE_ITEMS)
                .map(|chunk| self.batch_write(chunk.to_vec())),
        )
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await
    }

    async fn batch_write(&self, mut requests: Vec<WriteRequest>) -> Result<(), StoreError> {
        for attempt in 0..ATTEMPTS {
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("BatchWriteItem", e))?;
            requests = out
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            if requests.is_empty() {
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(AwsError {
            operation: "BatchWriteItem",
            code: Some("UnprocessedItems".into()),
            message: format!(
                "{} items still unprocessed after {ATTEMPTS} attempts",
                requests.len()
            ),
            transient: true,
        }
        .into())
    }

    /// The run's spec and the rows of `keys`; a key with no row is absent from the map.
    pub async fn load_batch(
        &self,
        run: &RunId,
        keys: &[String],
    ) -> Result<(Option<RunRecord>, HashMap<String, FileRecord>), StoreError> {
        let mut wanted = vec![key(run_pk(run), RUN_SK)];
        wanted.extend(keys.iter().map(|k| key(file_pk(run), k)));
        let items = self.batch_get(wanted).await?;
        let mut record = None;
        let mut files = HashMap::with_capacity(keys.len());
        for item in items {
            if get_s(&item, "pk") == Some(run_pk(run).as_str()) {
                record = Some(parse_run(run, &item)?);
            } else {
                let file = parse_file(run, &item)?;
                files.insert(file.listed.key.clone(), file);
            }
        }
        Ok((record, files))
    }

    async fn batch_get(
        &self,
        keys: Vec<HashMap<String, AttributeValue>>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_GET_KEYS) {
            let mut pending = chunk.to_vec();
            let mut attempt = 0;
            while !pending.is_empty() {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(pending))
                    .consistent_read(true)
                    .build()
                    .expect("keys are set");
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("BatchGetItem", e))?;
                found.extend(
                    out.responses
                        .and_then(|mut r| r.remove(&self.table))
                        .unwrap_or_default(),
                );
                pending = out
                    .unprocessed_keys
                    .and_then(|mut m| m.remove(&self.table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                if !pending.is_empty() {
                    attempt += 1;
                    if attempt >= ATTEMPTS {
                        return Err(AwsError {
                            operation: "BatchGetItem",
                            code: Some("UnprocessedKeys".into()),
                            message: format!(
                                "{} keys still unprocessed after {ATTEMPTS} attempts",
                                pending.len()
                            ),
                            transient: true,
                        }
                        .into());
                    }
                    backoff(attempt).await;
                }
            }
        }
        Ok(found)
    }

    /// Records outcomes of files last seen in the given states. Each file's row changes
    /// only if it is still in the state it was seen in, in the same transaction as the
    /// counter change, so no outcome is ever counted twice, whatever runs concurrently.
    /// Returns the counter change this call made.
    pub async fn record_outcomes(
        &self,
        run: &RunId,
        outcomes: Vec<(FileOutcome, FileState)>,
    ) -> Result<Delta, StoreError> {
        let mut total = Delta::default();
        let mut pending: Vec<(FileOutcome, FileState)> = outcomes
            .into_iter()
            .filter(|(o, from)| transition(*from, &o.outcome).is_some())
            .collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            let split = chunk_len(&pending);
            let chunk: Vec<_> = pending.drain(..split).collect();
            match self.transact(run, &chunk).await? {
                Ok(delta) => total += delta,
                Err(Cancelled::Raced) => {
                    // A concurrent delivery changed some rows: look again and retry what is left.
                    attempt += 1;
                    let keys: Vec<String> = chunk.iter().map(|(o, _)| o.key.clone()).collect();
                    let (_, rows) = self.load_batch(run, &keys).await?;
                    let again = chunk.into_iter().filter_map(|(o, _)| {
                        let now = rows.get(&o.key)?.state;
                        transition(now, &o.outcome).map(|_| (o, now))
                    });
                    pending.splice(0..0, again);
                }
                Err(Cancelled::Contended(reason)) => {
                    attempt += 1;
                    if attempt >= ATTEMPTS {
                        return Err(AwsError {
                            operation: "TransactWriteItems",
                            code: Some(reason.clone()),
                            message: format!(
                                "still cancelled ({reason}) after {ATTEMPTS} attempts"
                            ),
                            transient: true,
                        }
                        .into());
                    }
                    backoff(attempt).await;
                    pending.splice(0..0, chunk);
                }
            }
            if attempt > ATTEMPTS * 2 {
                return Err(StoreError::Corrupt {
                    run: run.clone(),
                    problem: "file rows keep changing under concurrent writers".into(),
                });
            }
        }
        Ok(total)
    }

    async fn transact(
        &self,
        run: &RunId,
        chunk: &[(FileOutcome, FileState)],
    ) -> Result<Result<Delta, Cancelled>, StoreError> {
        let now = s(now_rfc3339());
        let expires = self.expires_at();
        let mut delta = Delta::default();
        let mut items = Vec::with_capacity(TRANSACTION_ITEMS);
        for (file, from) in chunk {
            delta += transition(*from, &file.outcome).expect("only transitions are recorded");
            let row = key(file_pk(run), &file.key);
            let marker = key(failed_pk(run), &file.key);
            let update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(row))
                .condition_expression("#status = :from")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":from", s(from.as_str()))
                .expression_attribute_values(":now", now.clone());
            match &file.outcome {
                Outcome::Completed {
                    destination_key, ..
                } => {
                    items.push(
                        update
                            .update_expression("SET #status = :to, destination_key = :dk, updated_at = :now REMOVE reason")
                            .expression_attribute_values(":to", s(FileState::Completed.as_str()))
                            .expression_attribute_values(":dk", s(destination_key))
                            .build()
                            .map(|u| TransactWriteItem::builder().update(u).build())
                            .expect("update is complete"),
                    );
                    if *from == FileState::Failed {
                        let delete = Delete::builder()
                            .table_name(&self.table)
                            .set_key(Some(marker))
                            .build();
                        items.push(
                            TransactWriteItem::builder()
                                .delete(delete.expect("delete is complete"))
                                .build(),
                        );
                    }
                }
                Outcome::Failed { reason } => {
                    items.push(
                        update
                            .update_expression(
                                "SET #status = :to, reason = :why, updated_at = :now",
                            )
                            .expression_attribute_values(":to", s(FileState::Failed.as_str()))
                            .expression_attribute_values(":why", s(reason))
                            .build()
                            .map(|u| TransactWriteItem::builder().update(u).build())
                            .expect("update is complete"),
                    );
                    let mut item = marker;
                    item.insert("reason".into(), s(reason));
                    item.insert("expires_at".into(), expires.clone());
                    let put = Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .build();
                    items.push(
                        TransactWriteItem::builder()
                            .put(put.expect("put is complete"))
                            .build(),
                    );
                }
            }
        }
        let counters = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(run), shard_for(&chunk[0].0.key))))
            .update_expression("ADD completed :c, failed :f, #bytes :b SET expires_at = :exp")
            .expression_attribute_names("#bytes", "bytes")
            .expression_attribute_values(":c", n(delta.completed))
            .expression_attribute_values(":f", n(delta.failed))
            .expression_attribute_values(":b", n(delta.bytes))
            .expression_attribute_values(":exp", expires)
            .build()
            .expect("update is complete");
        items.push(TransactWriteItem::builder().update(counters).build());

        let sent = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(Ok(delta)),
            Err(err) => {
                let reasons: Vec<String> = err
                    .as_service_error()
                    .and_then(|e| match e {
                        TransactWriteItemsError::TransactionCanceledException(c) => {
                            c.cancellation_reasons.as_ref()
                        }
                        _ => None,
                    })
                    .map(|r| {
                        r.iter()
                            .filter_map(|r| r.code.clone())
                            .filter(|c| c != "None")
                            .collect()
                    })
                    .unwrap_or_default();
                if reasons.iter().any(|c| c == "ConditionalCheckFailed") {
                    Ok(Err(Cancelled::Raced))
                } else if let Some(code) = reasons
                    .iter()
                    .find(|c| is_transient_code(c) || *c == "ThrottlingError")
                {
                    Ok(Err(Cancelled::Contended(code.clone())))
                } else {
                    Err(AwsError::from_sdk("TransactWriteItems", err).into())
                }
            }
        }
    }

    /// Up to `limit` failed files of the run with their reasons, in key order.
    pub async fn failed_files(
        &self,
        run: &RunId,
        limit: i32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(failed_pk(run)))
            .consistent_read(true)
            .limit(limit)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("Query", e))?;
        Ok(out
            .items
            .unwrap_or_default()
            .iter()
            .filter_map(|i| {
                Some((
                    get_s(i, "sk")?.to_string(),
                    get_s(i, "reason").unwrap_or("").to_string(),
                ))
            })
            .collect())
    }
}

enum Cancelled {
    /// A row was no longer in the state it was seen in.
    Raced,
    /// DynamoDB refused for now (conflict with another transaction, throttling).
    Contended(String),
}

/// How many of the pending outcomes fit in one transaction beside the counter update.
fn chunk_len(pending: &[(FileOutcome, FileState)]) -> usize {
    let mut used = 1; // the counter update
    let mut count = 0;
    for (file, from) in pending {
        let writes = match (&file.outcome, from) {
            (Outcome::Completed { .. }, FileState::Failed) | (Outcome::Failed { .. }, _) => 2,
            _ => 1,
        };
        if used + writes > TRANSACTION_ITEMS {
            break;
        }
        used += writes;
        count += 1;
    }
    count.max(1)
}

fn describe(spec: &RunSpec) -> String {
    format!(
        "{} -> {}, suffixes {:?}",
        spec.source,
        spec.destination,
        spec.suffixes.as_slice()
    )
}

fn parse_run(run: &RunId, item: &HashMap<String, AttributeValue>) -> Result<RunRecord, StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt {
        run: run.clone(),
        problem,
    };
    let spec = match get_s(item, "source_bucket") {
        None => None,
        Some(source_bucket) => {
            let field =
                |name| get_s(item, name).ok_or_else(|| corrupt(format!("run item has no {name}")));
            let suffixes = item
                .get("suffixes")
                .and_then(|v| v.as_l().ok())
                .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
                .ok_or_else(|| corrupt("run item has no suffixes".into()))?;
            let source = Location::new(source_bucket, field("source_prefix")?).map_err(corrupt)?;
            let destination =
                Location::new(field("destination_bucket")?, field("destination_prefix")?)
                    .map_err(corrupt)?;
            let suffixes = Suffixes::new(suffixes).map_err(corrupt)?;
            Some(RunSpec::new(source, destination, suffixes).map_err(|e| corrupt(e.0))?)
        }
    };
    let delivered = match get_s(item, "delivered") {
        None => None,
        Some("succeeded") => Some(Delivered::Succeeded),
        Some("failed") => Some(Delivered::Failed),
        Some(other) => return Err(corrupt(format!("unknown delivered value {other:?}"))),
    };
    Ok(RunRecord {
        spec,
        listing_complete: item
            .get("listing_complete")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        selected: get_n(item, "selected").unwrap_or(0).max(0) as u64,
        recorded_through: get_s(item, "recorded_through").map(String::from),
        handed_through: get_s(item, "handed_through").map(String::from),
        task_token: get_s(item, "task_token").map(String::from),
        delivered,
    })
}

fn parse_file(
    run: &RunId,
    item: &HashMap<String, AttributeValue>,
) -> Result<FileRecord, StoreError> {
    let corrupt = |problem: &str| StoreError::Corrupt {
        run: run.clone(),
        problem: problem.to_string(),
    };
    let key = get_s(item, "sk").ok_or_else(|| corrupt("file row has no sk"))?;
    let state = get_s(item, "status")
        .and_then(FileState::parse)
        .ok_or_else(|| corrupt("file row has no valid status"))?;
    Ok(FileRecord {
        listed: ListedFile {
            key: key.to_string(),
            size: get_n(item, "size")
                .ok_or_else(|| corrupt("file row has no size"))?
                .max(0) as u64,
            etag: get_s(item, "etag").unwrap_or("").to_string(),
        },
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(size: u64) -> Outcome {
        Outcome::Completed {
            destination_key: "refined/x".into(),
            size,
        }
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            reason: "denied".into(),
        }
    }

    #[test]
    fn each_outcome_is_counted_once() {
        use FileState::*;
        assert_eq!(
            transition(Started, &completed(7)),
            Some(Delta {
                completed: 1,
                failed: 0,
                bytes: 7
            })
        );
        assert_eq!(
            transition(Completed, &completed(7)),
            None,
            "a duplicate delivery counts nothing"
        );
        assert_eq!(
            transition(Completed, &failed()),
            None,
            "a completed file never turns failed"
        );
        assert_eq!(
            transition(Started, &failed()),
            Some(Delta {
                completed: 0,
                failed: 1,
                bytes: 0
            })
        );
        assert_eq!(transition(Failed, &failed()), None);
        assert_eq!(
            transition(Failed, &completed(3)),
            Some(Delta {
                completed: 1,
                failed: -1,
                bytes: 3
            }),
            "a retried failure that succeeds moves from one counter to the other"
        );
    }

    #[test]
    fn transactions_hold_at_most_25_writes() {
        let file = |o: Outcome| FileOutcome {
            key: "k".into(),
            outcome: o,
        };
        let all_completed: Vec<_> = (0..60)
            .map(|_| (file(completed(1)), FileState::Started))
            .collect();
        assert_eq!(chunk_len(&all_completed), 24);
        let all_failed: Vec<_> = (0..60)
            .map(|_| (file(failed()), FileState::Started))
            .collect();
        assert_eq!(chunk_len(&all_failed), 12);
        assert_eq!(chunk_len(&all_failed[..3]), 3);
    }

    mod sdk_error_paths {
        use super::*;
        use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemOutput;
        use aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemOutput;
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsOutput;
        use aws_sdk_dynamodb::operation::update_item::UpdateItemOutput;
        use aws_sdk_dynamodb::types::CancellationReason;
        use aws_sdk_dynamodb::types::error::TransactionCanceledException;
        use aws_smithy_mocks::{RuleMode, mock, mock_client};

        fn store(client: Client) -> Store {
            Store::new(client, "table", Duration::from_secs(60))
        }

        fn run() -> RunId {
            RunId::parse("r").unwrap()
        }

        fn cancelled(codes: &[&str]) -> TransactWriteItemsError {
            let reasons = codes
                .iter()
                .map(|c| CancellationReason::builder().code(*c).build())
                .collect();
            TransactWriteItemsError::TransactionCanceledException(
                TransactionCanceledException::builder()
                    .set_cancellation_reasons(Some(reasons))
                    .build(),
            )
        }

        fn outcome(key: &str) -> (FileOutcome, FileState) {
            (
                FileOutcome {
                    key: key.into(),
                    outcome: completed(10),
                },
                FileState::Started,
            )
        }

        #[tokio::test]
        async fn unprocessed_items_are_sent_again() {
            let unprocessed = mock!(Client::batch_write_item)
                .match_requests(|r| r.request_items().unwrap()["table"].len() == 3)
                .then_compute_output(|r| {
                    let mut left = r.request_items().unwrap().clone();
                    left.get_mut("table").unwrap().truncate(1);
                    BatchWriteItemOutput::builder()
                        .set_unprocessed_items(Some(left))
                        .build()
                });
            let rest = mock!(Client::batch_write_item)
                .match_requests(|r| r.request_items().unwrap()["table"].len() == 1)
                .then_output(|| BatchWriteItemOutput::builder().build());
            let client = mock_client!(
                aws_sdk_dynamodb,
                RuleMode::Sequential,
                [&unprocessed, &rest]
            );
            let files: Vec<ListedFile> = (0..3)
                .map(|i| ListedFile {
                    key: format!("raw/{i}"),
                    size: 1,
                    etag: "e".into(),
                })
                .collect();
            store(client).put_started(&run(), &files, 2).await.unwrap();
            assert_eq!((unprocessed.num_calls(), rest.num_calls()), (1, 1));
        }

        #[tokio::test]
        async fn a_throttled_service_is_retried_by_the_sdk() {
            let flaky = mock!(Client::update_item)
                .sequence()
                .http_status(503, None)
                .times(2)
                .output(|| UpdateItemOutput::builder().build())
                .build();
            let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&flaky]);
            store(client).complete_listing(&run()).await.unwrap();
            assert_eq!(flaky.num_calls(), 3);
        }

        #[tokio::test]
        async fn a_conflicting_transaction_is_tried_again() {
            let conflict = mock!(Client::transact_write_items)
                .sequence()
                .error(|| cancelled(&["None", "TransactionConflict"]))
                .output(|| TransactWriteItemsOutput::builder().build())
                .build();
            let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&conflict]);
            let delta = store(client)
                .record_outcomes(&run(), vec![outcome("raw/a")])
                .await
                .unwrap();
            assert_eq!(delta.completed, 1);
            assert_eq!(conflict.num_calls(), 2);
        }

        #[tokio::test]
        async fn a_row_changed_by_another_delivery_is_read_again_and_not_counted() {
            // The transaction is cancelled because the row is no longer `started`; reading
            // it again shows `completed`, so nothing is left to record.
            let raced = mock!(Client::transact_write_items)
                .then_error(|| cancelled(&["ConditionalCheckFailed", "None"]));
            let reread = mock!(Client::batch_get_item).then_output(|| {
                let row = HashMap::from([
                    ("pk".to_string(), s("r")),
                    ("sk".to_string(), s("raw/a")),
                    ("status".to_string(), s("completed")),
                    ("size".to_string(), n(10)),
                ]);
                BatchGetItemOutput::builder()
                    .responses("table", vec![row])
                    .build()
            });
            let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&raced, &reread]);
            let delta = store(client)
                .record_outcomes(&run(), vec![outcome("raw/a")])
                .await
                .unwrap();
            assert_eq!(delta, Delta::default());
            assert_eq!((raced.num_calls(), reread.num_calls()), (1, 1));
        }

        #[tokio::test]
        async fn a_moved_listing_position_is_a_progress_conflict() {
            let moved = mock!(Client::update_item).then_error(|| {
                aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(
                    aws_sdk_dynamodb::types::error::ConditionalCheckFailedException::builder().build(),
                )
            });
            let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&moved]);
            let err = store(client)
                .advance_recorded(&run(), Some("raw/a"), "raw/b", 1)
                .await
                .unwrap_err();
            assert!(
                matches!(err, StoreError::ProgressConflict { .. }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn counter_shards_are_stable_and_spread() {
        assert_eq!(shard_for("raw/a.csv"), shard_for("raw/a.csv"));
        let shards: std::collections::HashSet<String> = (0..200)
            .map(|i| shard_for(&format!("raw/{i}.csv")))
            .collect();
        assert_eq!(shards.len(), COUNTER_SHARDS as usize);
    }
}
