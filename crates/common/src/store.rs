//! The DynamoDB status table.
//!
//! One table, key `pk` (string) + `sk` (string), TTL on `expires_at`. A run owns these
//! partitions; `#` cannot occur in a run id, so they never collide with another run's:
//!
//! | `pk`            | `sk`              | what                                                     |
//! |-----------------|-------------------|----------------------------------------------------------|
//! | `{run}#run`     | `run`             | the run: spec, listing progress, `selected`, task token  |
//! | `{run}#run`     | `counter#00`–`15` | outcome counters: `completed`, `failed`, `bytes`         |
//! | `{run}#batch`   | the batch's first key | `files`: the batch's files as master listed them, all `started` |
//! | `{run}#outcome` | the batch's first key | `states`, `reasons`, `version`: what slaves recorded |
//! | `{run}#failed`  | the batch's first key | present while the batch has failed files         |
//! | `{run}#upload`  | a file's source key | a multipart copy in progress: upload id, part size |
//!
//! Master alone writes the run item's listing fields and the batches, each page's
//! batches in the same transaction as the listing position they cover, so a batch,
//! once recorded, is the only one for its files; slaves alone write outcomes and
//! counters, the counters spread over shards so concurrent batches rarely contend for
//! one item; status reads the whole run partition in one query and keeps the run's
//! activity task tokens on its item. A batch's files are written once and never
//! rewritten: recording outcomes rewrites only the small outcome item, together with
//! the counters, in one transaction.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, KeysAndAttributes, Put, TransactWriteItem, Update,
};

use crate::batch::{
    Delta, FileState, ListedFile, Outcome, Outcomes, decode_files, encode_files, encoded_size,
};
use crate::error::{AwsError, is_transient_code};
use crate::progress::RunProgress;
use crate::run::{Location, RunId, RunSpec, Suffixes};

/// Counter shards per run.
pub const COUNTER_SHARDS: u64 = 16;
const BATCH_GET_KEYS: usize = 100;
/// DynamoDB's limits on one `TransactWriteItems`: 100 actions and 4 MB. A page's
/// batches go in transactions of at most 99 batch items and the run item's update,
/// and at most this many bytes of batch items, well within the 4 MB.
const BATCHES_PER_TRANSACTION: usize = 99;
const TRANSACTION_BATCH_BYTES: usize = 3 * 1024 * 1024;
/// Attempts at unprocessed items, transaction conflicts and races before giving up.
const ATTEMPTS: u32 = 10;
const RUN_SK: &str = "run";

/// How a finished run's activity task was completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Succeeded,
    Failed,
}

/// The run item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunRecord {
    /// Absent when only a task token has been recorded on the run so far.
    pub spec: Option<RunSpec>,
    pub listing_complete: bool,
    pub selected: u64,
    /// Listing position up to which every selected file is recorded in a batch and counted.
    pub recorded_through: Option<String>,
    /// Listing position up to which every recorded batch has been handed to a slave.
    pub handed_through: Option<String>,
    /// The run's activity task tokens that status calls have received (its own, or
    /// another run's status on its behalf), kept until the run's result is delivered.
    /// Usually one; a token whose heartbeat lapsed is replaced by a new one.
    pub task_tokens: Vec<String>,
    pub delivered: Option<Delivered>,
}

/// The run item and its counters, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunView {
    pub record: RunRecord,
    pub progress: RunProgress,
}

/// One batch as a slave reads it: its files and their outcomes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchView {
    /// The batch's first key.
    pub id: String,
    pub files: Vec<ListedFile>,
    pub outcomes: Outcomes,
}

/// A multipart copy in progress, as recorded for its file, so that an invocation that
/// runs out of time hands it on instead of starting over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub upload_id: String,
    pub part_size: u64,
    /// The listed ETag of the source the parts are copied from.
    pub source_etag: String,
    /// The ETag the completed object will have, recorded just before the upload is
    /// completed: a later invocation that finds the upload gone compares the
    /// destination with it.
    pub completing_etag: Option<String>,
}

/// One file of a run and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    pub file: ListedFile,
    pub state: FileState,
    /// Why it failed, for a failed file.
    pub reason: Option<String>,
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

impl StoreError {
    /// The `errorType` of a status table failure, in every function: `StatusTableError`
    /// when trying again later may succeed (throttling, 5xx, timeouts), and
    /// `StatusTableRefused` when it cannot (access denied, no such table, an item that
    /// cannot be read), so that a state machine retries only the first.
    pub fn error_type(&self) -> &'static str {
        match self {
            StoreError::Aws(e) if e.transient => "StatusTableError",
            _ => "StatusTableRefused",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    client: Client,
    table: String,
    ttl: Duration,
}

type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: String, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

fn run_pk(run: &RunId) -> String {
    format!("{run}#run")
}

fn batch_pk(run: &RunId) -> String {
    format!("{run}#batch")
}

fn outcome_pk(run: &RunId) -> String {
    format!("{run}#outcome")
}

fn failed_pk(run: &RunId) -> String {
    format!("{run}#failed")
}

fn upload_pk(run: &RunId) -> String {
    format!("{run}#upload")
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &Item, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn now_rfc3339() -> String {
    aws_smithy_types::DateTime::from(SystemTime::now())
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

/// Which counter shard a batch's transactions update: spread by batch, the same for a retry.
fn shard_for(batch: &str) -> String {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let hash = batch.bytes().fold(0xcbf29ce484222325u64, |h, b| {
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
        let items = self.query_all(&run_pk(run), |q| q).await?;
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
        let item = self.get(key(run_pk(run), RUN_SK)).await?;
        item.map(|i| parse_run(run, &i)).transpose()
    }

    /// One item, strongly consistent.
    async fn get(&self, key: Item) -> Result<Option<Item>, StoreError> {
        Ok(self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetItem", e))?
            .item)
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

    /// Records a listing page's batches, each file `started`, and moves the recorded
    /// position from `previous` to `through` (the page's last key), counting the files
    /// as selected. Each transaction writes some of the page's batches together with the
    /// position they reach, on condition that no other call has moved it and that no
    /// batch item exists under their ids: a batch, once recorded, is the only one for its
    /// files, and no failure or concurrent call can leave another behind.
    pub async fn record_page(
        &self,
        run: &RunId,
        previous: Option<&str>,
        batches: &[&[ListedFile]],
        through: &str,
    ) -> Result<(), StoreError> {
        let groups = transaction_groups(batches);
        let mut position = previous.map(str::to_string);
        for (i, group) in groups.iter().enumerate() {
            let reaches = if i + 1 == groups.len() {
                through
            } else {
                &group
                    .last()
                    .expect("groups are not empty")
                    .last()
                    .expect("batches are not empty")
                    .key
            };
            self.record_batches(run, position.as_deref(), group, reaches)
                .await?;
            position = Some(reaches.to_string());
        }
        Ok(())
    }

    async fn record_batches(
        &self,
        run: &RunId,
        previous: Option<&str>,
        batches: &[&[ListedFile]],
        through: &str,
    ) -> Result<(), StoreError> {
        let expires = self.expires_at();
        let mut items: Vec<TransactWriteItem> = batches
            .iter()
            .map(|files| {
                let mut item = key(batch_pk(run), &files[0].key);
                item.insert("files".into(), s(encode_files(files)));
                item.insert("expires_at".into(), expires.clone());
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .expect("put is complete");
                TransactWriteItem::builder().put(put).build()
            })
            .collect();
        let files: usize = batches.iter().map(|b| b.len()).sum();
        let position = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(run), RUN_SK)))
            .update_expression("SET recorded_through = :t ADD selected :n")
            .expression_attribute_values(":t", s(through))
            .expression_attribute_values(":n", n(files));
        let position = match previous {
            None => position.condition_expression("attribute_not_exists(recorded_through)"),
            Some(p) => position
                .condition_expression("recorded_through = :p")
                .expression_attribute_values(":p", s(p)),
        };
        items.push(
            TransactWriteItem::builder()
                .update(position.build().expect("update is complete"))
                .build(),
        );
        for attempt in 0..ATTEMPTS {
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            match cancellation(sent)? {
                None => return Ok(()),
                // The position moved, or a batch exists: another call recorded this page
                // (or this call's earlier attempt did, its answer lost).
                Some(Cancelled::Raced) => {
                    return Err(StoreError::ProgressConflict { run: run.clone() });
                }
                Some(Cancelled::Contended(_)) => backoff(attempt).await,
            }
        }
        Err(AwsError {
            operation: "TransactWriteItems",
            code: Some("TransactionConflict".into()),
            message: format!("recording a page still conflicts after {ATTEMPTS} attempts"),
            transient: true,
        }
        .into())
    }

    pub async fn advance_handed(&self, run: &RunId, through: &str) -> Result<(), StoreError> {
        self.set_run_fields(run, "SET handed_through = :v", s(through))
            .await
    }

    pub async fn complete_listing(&self, run: &RunId) -> Result<(), StoreError> {
        self.set_run_fields(run, "SET listing_complete = :v", AttributeValue::Bool(true))
            .await
    }

    /// Records an activity task token of `run` on its run item, creating the item if
    /// the run's master has not started yet; the token is durable before anyone uses it.
    pub async fn record_token(&self, run: &RunId, token: &str) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(run), RUN_SK)))
            .update_expression(
                "ADD task_tokens :t SET expires_at = if_not_exists(expires_at, :exp)",
            )
            .expression_attribute_values(":t", AttributeValue::Ss(vec![token.to_string()]))
            .expression_attribute_values(":exp", self.expires_at())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateItem", e))?;
        Ok(())
    }

    /// Forgets a token Step Functions no longer takes an answer for.
    pub async fn forget_token(&self, run: &RunId, token: &str) -> Result<(), StoreError> {
        self.set_run_fields(
            run,
            "DELETE task_tokens :v",
            AttributeValue::Ss(vec![token.to_string()]),
        )
        .await
    }

    /// Records that the run's task was completed, and forgets its tokens.
    pub async fn mark_delivered(&self, run: &RunId, how: Delivered) -> Result<(), StoreError> {
        let how = match how {
            Delivered::Succeeded => "succeeded",
            Delivered::Failed => "failed",
        };
        self.set_run_fields(run, "SET delivered = :v REMOVE task_tokens", s(how))
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

    // ---- multipart copies in progress ---------------------------------------------

    /// The multipart copy recorded for the file `key`, if any.
    pub async fn upload(&self, run: &RunId, key: &str) -> Result<Option<UploadRecord>, StoreError> {
        let Some(item) = self.get(self::key(upload_pk(run), key)).await? else {
            return Ok(None);
        };
        let corrupt = |what: &str| StoreError::Corrupt {
            run: run.clone(),
            problem: format!("the upload item of {key:?} has no {what}"),
        };
        Ok(Some(UploadRecord {
            upload_id: get_s(&item, "upload_id")
                .ok_or_else(|| corrupt("upload_id"))?
                .into(),
            part_size: get_n(&item, "part_size")
                .ok_or_else(|| corrupt("part_size"))?
                .max(0) as u64,
            source_etag: get_s(&item, "source_etag")
                .ok_or_else(|| corrupt("source_etag"))?
                .into(),
            completing_etag: get_s(&item, "completing_etag").map(String::from),
        }))
    }

    /// Records a multipart copy of the file `key`, unless one is recorded already:
    /// then answers that one, which the caller adopts.
    pub async fn begin_upload(
        &self,
        run: &RunId,
        key: &str,
        upload: &UploadRecord,
    ) -> Result<Option<UploadRecord>, StoreError> {
        let written = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self::key(upload_pk(run), key)))
            .update_expression(
                "SET upload_id = :u, part_size = :p, source_etag = :e, expires_at = :exp",
            )
            .condition_expression("attribute_not_exists(upload_id)")
            .expression_attribute_values(":u", s(&upload.upload_id))
            .expression_attribute_values(":p", n(upload.part_size))
            .expression_attribute_values(":e", s(&upload.source_etag))
            .expression_attribute_values(":exp", self.expires_at())
            .send()
            .await;
        match written {
            Ok(_) => Ok(None),
            Err(e) if is_condition_failure(&e) => self.upload(run, key).await,
            Err(e) => Err(AwsError::from_sdk("UpdateItem", e).into()),
        }
    }

    /// Records the ETag the upload of `key` will have once completed.
    pub async fn completing_upload(
        &self,
        run: &RunId,
        key: &str,
        upload_id: &str,
        etag: &str,
    ) -> Result<(), StoreError> {
        let written = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self::key(upload_pk(run), key)))
            .update_expression("SET completing_etag = :e")
            .condition_expression("upload_id = :u")
            .expression_attribute_values(":e", s(etag))
            .expression_attribute_values(":u", s(upload_id))
            .send()
            .await;
        match written {
            // Someone else finished or replaced the upload: its record is theirs now.
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(AwsError::from_sdk("UpdateItem", e).into()),
        }
    }

    /// Forgets the multipart copy of `key`: it was completed and recorded, or aborted.
    /// With `upload_id`, only if the record is still of that upload: another delivery may
    /// have replaced it with one of its own meanwhile.
    pub async fn forget_upload(
        &self,
        run: &RunId,
        key: &str,
        upload_id: Option<&str>,
    ) -> Result<(), StoreError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(self::key(upload_pk(run), key)))
            .set_condition_expression(upload_id.map(|_| "upload_id = :u".to_string()))
            .set_expression_attribute_values(
                upload_id.map(|id| HashMap::from([(":u".to_string(), s(id))])),
            )
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(
                    aws_sdk_dynamodb::operation::delete_item::DeleteItemError::is_conditional_check_failed_exception,
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(AwsError::from_sdk("DeleteItem", e).into()),
        }
    }

    // ---- batches ------------------------------------------------------------------

    /// The ids of the run's batches whose first key is after `after` and at most
    /// `through`, in order: those recorded but not yet handed out when a master call
    /// stopped.
    pub async fn batch_ids(
        &self,
        run: &RunId,
        after: Option<&str>,
        through: &str,
    ) -> Result<Vec<String>, StoreError> {
        let condition = match after {
            Some(_) => "pk = :pk AND sk BETWEEN :from AND :through",
            None => "pk = :pk AND sk <= :through",
        };
        let items = self
            .query_all(&batch_pk(run), |q| {
                let q = q
                    .key_condition_expression(condition)
                    .expression_attribute_values(":through", s(through))
                    .projection_expression("sk");
                match after {
                    Some(after) => q.expression_attribute_values(":from", s(after)),
                    None => q,
                }
            })
            .await?;
        Ok(items
            .iter()
            .filter_map(|i| get_s(i, "sk"))
            .filter(|sk| after.is_none_or(|a| *sk > a))
            .map(String::from)
            .collect())
    }

    /// The run item and one batch with its outcomes so far, in one strongly consistent
    /// read; either is `None` when the table does not have it.
    pub async fn load_batch(
        &self,
        run: &RunId,
        id: &str,
    ) -> Result<(Option<RunRecord>, Option<BatchView>), StoreError> {
        let wanted = vec![
            key(run_pk(run), RUN_SK),
            key(batch_pk(run), id),
            key(outcome_pk(run), id),
        ];
        let mut items = self.batch_get(wanted).await?;
        let take = |pk: &str, items: &mut Vec<Item>| {
            let at = items.iter().position(|i| get_s(i, "pk") == Some(pk))?;
            Some(items.swap_remove(at))
        };
        let record = take(&run_pk(run), &mut items)
            .map(|i| parse_run(run, &i))
            .transpose()?;
        let Some(files) = take(&batch_pk(run), &mut items) else {
            return Ok((record, None));
        };
        let files = parse_files(run, &files)?;
        let outcomes = parse_outcomes(
            run,
            take(&outcome_pk(run), &mut items).as_ref(),
            files.len(),
        )?;
        Ok((
            record,
            Some(BatchView {
                id: id.to_string(),
                files,
                outcomes,
            }),
        ))
    }

    async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
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

    /// Every item of the partition `pk`, strongly consistent, in key order. `shape` may
    /// narrow the key condition (it must keep `pk = :pk`) and set a projection.
    async fn query_all(
        &self,
        pk: &str,
        shape: impl Fn(
            aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let request = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(pk))
                .consistent_read(true)
                .set_exclusive_start_key(start);
            let page = shape(request)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("Query", e))?;
            items.extend(page.items.unwrap_or_default());
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    /// Records outcomes (by file position) of a batch as it was read. The outcome item
    /// is written only if no other delivery wrote it since it was read, in the same
    /// transaction as the counter change, so no outcome is ever counted twice, whatever
    /// runs concurrently; when another delivery got there first, the batch is read
    /// again and only what is still left is recorded. Returns the counter change this
    /// call made.
    pub async fn record_outcomes(
        &self,
        run: &RunId,
        batch: &BatchView,
        outcomes: &[(usize, Outcome)],
    ) -> Result<Delta, StoreError> {
        let (delta, _) = self
            .change_outcomes(run, batch, |next| {
                let delta = next.apply(outcomes);
                (!delta.is_zero()).then_some(delta)
            })
            .await?;
        Ok(delta)
    }

    /// Records, before the sources are deleted, the ETags of verified copies that differ
    /// from the listed ETags (see [`Outcomes::copied`]); a plain conditional write, as no
    /// counter changes. `batch` then holds the outcomes as written.
    pub async fn record_copies(
        &self,
        run: &RunId,
        batch: &mut BatchView,
        copies: &[(usize, String)],
    ) -> Result<(), StoreError> {
        let (_, written) = self
            .change_outcomes(run, batch, |next| {
                next.record_copies(copies).then_some(Delta::default())
            })
            .await?;
        batch.outcomes = written;
        Ok(())
    }

    /// Applies `change` to the batch's outcomes as last read, and writes the result on
    /// condition that nobody wrote since; after a race, reads them again and applies
    /// `change` to what the other writer left. `change` answers the counter change, or
    /// `None` when there is nothing to write. Answers the counter change made and the
    /// outcomes as they now stand.
    async fn change_outcomes(
        &self,
        run: &RunId,
        batch: &BatchView,
        change: impl Fn(&mut Outcomes) -> Option<Delta>,
    ) -> Result<(Delta, Outcomes), StoreError> {
        let mut seen = batch.outcomes.clone();
        let mut contended = 0;
        for _ in 0..ATTEMPTS * 2 {
            let mut next = seen.clone();
            let Some(delta) = change(&mut next) else {
                return Ok((Delta::default(), seen));
            };
            next.version = seen.version + 1;
            match self
                .write_outcomes(run, &batch.id, &seen, &next, delta)
                .await?
            {
                None => return Ok((delta, next)),
                Some(Cancelled::Raced) => {
                    // Another delivery recorded first: start again from what it wrote.
                    seen = self.outcomes(run, &batch.id, batch.files.len()).await?;
                }
                Some(Cancelled::Contended(reason)) => {
                    contended += 1;
                    if contended >= ATTEMPTS {
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
                    backoff(contended).await;
                }
            }
        }
        // Contention, not damage: a later attempt, with fewer writers, succeeds.
        Err(AwsError {
            operation: "TransactWriteItems",
            code: None,
            message: format!(
                "run {run}: batch {:?} kept changing under concurrent writers",
                batch.id
            ),
            transient: true,
        }
        .into())
    }

    /// A batch's outcomes as they stand now, strongly consistent.
    pub async fn outcomes(
        &self,
        run: &RunId,
        id: &str,
        files: usize,
    ) -> Result<Outcomes, StoreError> {
        let item = self.get(key(outcome_pk(run), id)).await?;
        parse_outcomes(run, item.as_ref(), files)
    }

    /// The batch's outcome item goes from `seen` to `next`. With a counter change, in
    /// one transaction with the counters and with the batch's failed marker, which
    /// appears or goes when the batch starts or stops having failed files; without one,
    /// alone. `None` when written.
    async fn write_outcomes(
        &self,
        run: &RunId,
        id: &str,
        seen: &Outcomes,
        next: &Outcomes,
        delta: Delta,
    ) -> Result<Option<Cancelled>, StoreError> {
        let expires = self.expires_at();
        let mut item = key(outcome_pk(run), id);
        item.insert("states".into(), s(next.encode_states()));
        item.insert("version".into(), n(next.version));
        item.insert("updated_at".into(), s(now_rfc3339()));
        item.insert("expires_at".into(), expires.clone());
        let by_position = |map: &BTreeMap<usize, String>| {
            AttributeValue::M(map.iter().map(|(i, v)| (i.to_string(), s(v))).collect())
        };
        if !next.reasons.is_empty() {
            item.insert("reasons".into(), by_position(&next.reasons));
        }
        if !next.copied.is_empty() {
            item.insert("copied".into(), by_position(&next.copied));
        }
        let (condition, seen_version) = if seen.version == 0 {
            ("attribute_not_exists(pk)", None)
        } else {
            ("version = :seen", Some(n(seen.version)))
        };
        if delta.is_zero() {
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression(condition)
                .set_expression_attribute_values(
                    seen_version.map(|v| HashMap::from([(":seen".to_string(), v)])),
                )
                .send()
                .await;
            return match put {
                Ok(_) => Ok(None),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                {
                    Ok(Some(Cancelled::Raced))
                }
                Err(e) => {
                    let e = AwsError::from_sdk("PutItem", e);
                    match &e.code {
                        Some(code) if e.transient => Ok(Some(Cancelled::Contended(code.clone()))),
                        _ => Err(e.into()),
                    }
                }
            };
        }
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_values(
                seen_version.map(|v| HashMap::from([(":seen".to_string(), v)])),
            );
        let mut items = vec![
            TransactWriteItem::builder()
                .put(put.build().expect("put is complete"))
                .build(),
        ];
        let counters = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(run), shard_for(id))))
            .update_expression("ADD completed :c, failed :f, #bytes :b SET expires_at = :exp")
            .expression_attribute_names("#bytes", "bytes")
            .expression_attribute_values(":c", n(delta.completed))
            .expression_attribute_values(":f", n(delta.failed))
            .expression_attribute_values(":b", n(delta.bytes))
            .expression_attribute_values(":exp", expires.clone())
            .build()
            .expect("update is complete");
        items.push(TransactWriteItem::builder().update(counters).build());
        match (seen.failed() > 0, next.failed() > 0) {
            (false, true) => {
                let mut marker = key(failed_pk(run), id);
                marker.insert("expires_at".into(), expires);
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(marker));
                items.push(
                    TransactWriteItem::builder()
                        .put(put.build().expect("put is complete"))
                        .build(),
                );
            }
            (true, false) => {
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(key(failed_pk(run), id)))
                    .build()
                    .expect("delete is complete");
                items.push(TransactWriteItem::builder().delete(delete).build());
            }
            _ => {}
        }
        let sent = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        cancellation(sent)
    }

    /// Up to `limit` failed files of the run with their reasons, in key order.
    pub async fn failed_files(
        &self,
        run: &RunId,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let marked = self
            .query_all(&failed_pk(run), |q| q.projection_expression("sk"))
            .await?;
        let mut failed = Vec::new();
        // A batch has at least one failed file, so `limit` batches are enough.
        for ids in marked
            .iter()
            .filter_map(|i| get_s(i, "sk"))
            .take(limit)
            .collect::<Vec<_>>()
            .chunks(BATCH_GET_KEYS / 2)
        {
            let batches = self.batches(run, ids).await?;
            for status in batches.into_iter().flatten() {
                if status.state == FileState::Failed && failed.len() < limit {
                    failed.push((status.file.key, status.reason.unwrap_or_default()));
                }
            }
        }
        Ok(failed)
    }

    /// The files of the named batches with their states, batch by batch, in the order given.
    async fn batches(&self, run: &RunId, ids: &[&str]) -> Result<Vec<Vec<FileStatus>>, StoreError> {
        let wanted = ids
            .iter()
            .flat_map(|id| [key(batch_pk(run), *id), key(outcome_pk(run), *id)])
            .collect();
        let items = self.batch_get(wanted).await?;
        let mut files = HashMap::new();
        let mut outcomes = HashMap::new();
        for item in items {
            let sk = get_s(&item, "sk").unwrap_or_default().to_string();
            if get_s(&item, "pk") == Some(batch_pk(run).as_str()) {
                files.insert(sk, item);
            } else {
                outcomes.insert(sk, item);
            }
        }
        ids.iter()
            .map(|id| {
                let item = files.get(*id).ok_or_else(|| StoreError::Corrupt {
                    run: run.clone(),
                    problem: format!("batch {id:?} is marked but not recorded"),
                })?;
                join(run, item, outcomes.get(*id))
            })
            .collect()
    }

    /// Every file of the run with its state and reason, in key order.
    pub async fn files(&self, run: &RunId) -> Result<Vec<FileStatus>, StoreError> {
        let batches = self.query_all(&batch_pk(run), |q| q).await?;
        let outcomes: HashMap<String, Item> = self
            .query_all(&outcome_pk(run), |q| q)
            .await?
            .into_iter()
            .filter_map(|i| Some((get_s(&i, "sk")?.to_string(), i)))
            .collect();
        let mut all = Vec::new();
        for batch in &batches {
            let id = get_s(batch, "sk").unwrap_or_default();
            all.extend(join(run, batch, outcomes.get(id))?);
        }
        Ok(all)
    }
}

enum Cancelled {
    /// A condition did not hold: someone else wrote the item since it was read.
    Raced,
    /// DynamoDB refused for now (conflict with another transaction, throttling).
    Contended(String),
}

/// What a `TransactWriteItems` answer means: `None` when it was written, or why it was
/// cancelled; an error that is neither is the caller's error.
fn cancellation(
    sent: Result<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsOutput,
        aws_sdk_dynamodb::error::SdkError<
            TransactWriteItemsError,
            aws_sdk_dynamodb::config::http::HttpResponse,
        >,
    >,
) -> Result<Option<Cancelled>, StoreError> {
    let err = match sent {
        Ok(_) => return Ok(None),
        Err(err) => err,
    };
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
        Ok(Some(Cancelled::Raced))
    } else if let Some(code) = reasons
        .iter()
        .find(|c| is_transient_code(c) || *c == "ThrottlingError")
    {
        Ok(Some(Cancelled::Contended(code.clone())))
    } else {
        Err(AwsError::from_sdk("TransactWriteItems", err).into())
    }
}

/// A page's batches in groups of one transaction each: at most
/// [`BATCHES_PER_TRANSACTION`] batches (with the run item's update, within DynamoDB's 100
/// actions) and [`TRANSACTION_BATCH_BYTES`] of batch items (within its 4 MB). Always at
/// least one group, which may be empty: a page with nothing selected still moves the
/// listing position.
fn transaction_groups<'a>(batches: &'a [&'a [ListedFile]]) -> Vec<&'a [&'a [ListedFile]]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, files) in batches.iter().enumerate() {
        // The batch item: its key (the first key twice, as sk and in the item) and files.
        let size = encoded_size(files) + files[0].key.len() + 64;
        if i > start
            && (i - start == BATCHES_PER_TRANSACTION || bytes + size > TRANSACTION_BATCH_BYTES)
        {
            groups.push(&batches[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    groups.push(&batches[start..]);
    groups
}

/// A batch item and its outcome item (if any), as one file status each.
fn join(run: &RunId, batch: &Item, outcome: Option<&Item>) -> Result<Vec<FileStatus>, StoreError> {
    let files = parse_files(run, batch)?;
    let mut outcomes = parse_outcomes(run, outcome, files.len())?;
    Ok(files
        .into_iter()
        .zip(outcomes.states)
        .enumerate()
        .map(|(i, (file, state))| FileStatus {
            file,
            state,
            reason: outcomes.reasons.remove(&i),
        })
        .collect())
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
        task_tokens: item
            .get("task_tokens")
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default(),
        delivered,
    })
}

fn parse_files(run: &RunId, item: &Item) -> Result<Vec<ListedFile>, StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt {
        run: run.clone(),
        problem,
    };
    let raw = get_s(item, "files").ok_or_else(|| corrupt("a batch item has no files".into()))?;
    let files = decode_files(raw).map_err(corrupt)?;
    if files.is_empty() {
        return Err(corrupt("a batch item has an empty file list".into()));
    }
    Ok(files)
}

/// A batch's outcomes from its outcome item; a batch without one has none yet.
fn parse_outcomes(run: &RunId, item: Option<&Item>, files: usize) -> Result<Outcomes, StoreError> {
    let Some(item) = item else {
        return Ok(Outcomes::started(files));
    };
    let corrupt = |problem: String| StoreError::Corrupt {
        run: run.clone(),
        problem,
    };
    let by_position = |name: &str| match item.get(name).map(|v| v.as_m()) {
        None => Ok(BTreeMap::new()),
        Some(Ok(map)) => map
            .iter()
            .map(|(i, value)| {
                let i = i.parse().map_err(|_| format!("{name} index {i:?}"))?;
                let value = value
                    .as_s()
                    .map_err(|_| format!("{name} {i} is not a string"))?;
                Ok((i, value.clone()))
            })
            .collect::<Result<_, String>>()
            .map_err(corrupt),
        Some(Err(_)) => Err(corrupt(format!("an outcome item's {name} are not a map"))),
    };
    let states =
        get_s(item, "states").ok_or_else(|| corrupt("an outcome item has no states".into()))?;
    let version = get_n(item, "version").unwrap_or(0).max(0) as u64;
    Outcomes::decode(
        states,
        by_position("reasons")?,
        by_position("copied")?,
        version,
        files,
    )
    .map_err(corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    mod sdk_error_paths {
        use super::*;
        use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
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

        fn file(key: &str) -> ListedFile {
            ListedFile {
                key: key.into(),
                size: 10,
                etag: "e".into(),
            }
        }

        fn batch_of(keys: &[&str]) -> BatchView {
            BatchView {
                id: keys[0].into(),
                files: keys.iter().map(|k| file(k)).collect(),
                outcomes: Outcomes::started(keys.len()),
            }
        }

        #[tokio::test]
        async fn a_page_is_recorded_with_its_position_in_one_transaction() {
            // GIVEN three batches of a page, the first transaction meeting a conflict
            let files: Vec<ListedFile> = (0..3).map(|i| file(&format!("raw/{i}"))).collect();
            let batches: Vec<&[ListedFile]> = files.chunks(1).collect();
            let recorded = mock!(Client::transact_write_items)
                .match_requests(|r| {
                    let items = r.transact_items();
                    let puts = items.iter().filter(|i| i.put().is_some()).count();
                    let position = items.last().and_then(|i| i.update());
                    puts == 3
                        && items.iter().take(3).all(|i| {
                            i.put().and_then(|p| p.condition_expression())
                                == Some("attribute_not_exists(pk)")
                        })
                        && position.is_some_and(|u| {
                            u.expression_attribute_values().unwrap()[":t"]
                                == AttributeValue::S("raw/9".into())
                                && u.expression_attribute_values().unwrap()[":n"]
                                    == AttributeValue::N("3".into())
                        })
                })
                .sequence()
                .error(|| cancelled(&["None", "None", "None", "TransactionConflict"]))
                .output(|| TransactWriteItemsOutput::builder().build())
                .build();
            let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&recorded]);

            // WHEN it is recorded through its last key
            store(client)
                .record_page(&run(), Some("raw/0-before"), &batches, "raw/9")
                .await
                .unwrap();

            // THEN one transaction held the batches and the position, tried again
            assert_eq!(recorded.num_calls(), 2);
        }

        #[tokio::test]
        async fn a_page_someone_else_recorded_is_a_progress_conflict() {
            let moved = mock!(Client::transact_write_items)
                .then_error(|| cancelled(&["None", "ConditionalCheckFailed"]));
            let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&moved]);
            let files = [file("raw/a")];
            let err = store(client)
                .record_page(&run(), Some("raw/0"), &[&files[..]], "raw/b")
                .await
                .unwrap_err();
            assert!(
                matches!(err, StoreError::ProgressConflict { .. }),
                "{err:?}"
            );
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
                .record_outcomes(
                    &run(),
                    &batch_of(&["raw/a"]),
                    &[(0, Outcome::Completed { size: 10 })],
                )
                .await
                .unwrap();
            assert_eq!(delta.completed, 1);
            assert_eq!(conflict.num_calls(), 2);
        }

        #[tokio::test]
        async fn a_batch_recorded_by_another_delivery_is_read_again_and_not_counted_twice() {
            // The transaction is cancelled because another delivery wrote the outcome
            // item first; reading it again shows the file completed, so nothing is left
            // to record.
            let raced = mock!(Client::transact_write_items)
                .then_error(|| cancelled(&["ConditionalCheckFailed", "None"]));
            let reread = mock!(Client::get_item).then_output(|| {
                let item = HashMap::from([
                    ("pk".to_string(), s("r#outcome")),
                    ("sk".to_string(), s("raw/a")),
                    ("states".to_string(), s("c")),
                    ("version".to_string(), n(1)),
                ]);
                GetItemOutput::builder().set_item(Some(item)).build()
            });
            let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&raced, &reread]);
            let delta = store(client)
                .record_outcomes(
                    &run(),
                    &batch_of(&["raw/a"]),
                    &[(0, Outcome::Completed { size: 10 })],
                )
                .await
                .unwrap();
            assert_eq!(delta, Delta::default());
            assert_eq!((raced.num_calls(), reread.num_calls()), (1, 1));
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

    #[test]
    fn pages_go_in_transactions_within_dynamodbs_limits() {
        let small: Vec<ListedFile> = (0..250)
            .map(|i| ListedFile {
                key: format!("raw/{i:04}"),
                size: 1,
                etag: "e".into(),
            })
            .collect();
        let batches: Vec<&[ListedFile]> = small.chunks(1).collect();
        let sizes: Vec<usize> = transaction_groups(&batches)
            .iter()
            .map(|g| g.len())
            .collect();
        assert_eq!(sizes, [99, 99, 52], "99 batches and the position each");
        let long: Vec<ListedFile> = (0..40)
            .map(|i| ListedFile {
                key: format!("raw/{i:04}{}", "k".repeat(90 * 1024)),
                size: 1,
                etag: "e".into(),
            })
            .collect();
        let batches: Vec<&[ListedFile]> = long.chunks(1).collect();
        for group in transaction_groups(&batches) {
            let bytes: usize = group.iter().map(|b| encoded_size(b)).sum();
            assert!(bytes <= TRANSACTION_BATCH_BYTES, "{bytes}");
        }
        assert_eq!(
            transaction_groups(&[]).len(),
            1,
            "an empty page still moves the position"
        );
    }

    #[test]
    fn outcome_items_read_back_with_their_reasons() {
        let run = RunId::parse("r").unwrap();
        assert_eq!(parse_outcomes(&run, None, 2).unwrap(), Outcomes::started(2));
        let item = HashMap::from([
            ("states".to_string(), s("cf")),
            ("version".to_string(), n(3)),
            (
                "reasons".to_string(),
                AttributeValue::M(HashMap::from([("1".to_string(), s("denied"))])),
            ),
        ]);
        let read = parse_outcomes(&run, Some(&item), 2).unwrap();
        assert_eq!(read.version, 3);
        assert_eq!(read.states, [FileState::Completed, FileState::Failed]);
        assert_eq!(read.reasons, BTreeMap::from([(1, "denied".to_string())]));
        let err = parse_outcomes(&run, Some(&item), 3).unwrap_err();
        assert!(err.to_string().contains("batch of 3 files"), "{err}");
    }
}
