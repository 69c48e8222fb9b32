//! DynamoDB mechanics the roles share: strongly consistent reads of one item, of many
//! (`BatchGetItem`, unprocessed keys retried) and of a whole partition (paginated
//! `Query`), run item updates, and what a refused write means.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::operation::transact_write_items::{
    TransactWriteItemsError, TransactWriteItemsOutput,
};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};

use super::codec::parse_run;
use super::layout::{Item, n, run_key, s};
use super::{Store, StoreError};
use crate::error::AwsError;
use crate::rules::records::RunRecord;
use crate::rules::run::RunId;
use crate::rules::table::{Cancelled, cancellation};

pub(super) const BATCH_GET_KEYS: usize = 100;
/// Attempts at unprocessed items, transaction conflicts and races before giving up.
pub(super) const ATTEMPTS: u32 = 10;

pub(super) fn now_rfc3339() -> String {
    aws_smithy_types::DateTime::from(SystemTime::now())
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

/// Whether an `UpdateItem` failed only because its condition did not hold.
pub(super) fn is_condition_failure<R>(
    err: &aws_sdk_dynamodb::error::SdkError<UpdateItemError, R>,
) -> bool {
    err.as_service_error()
        .is_some_and(UpdateItemError::is_conditional_check_failed_exception)
}

pub(super) async fn backoff(attempt: u32) {
    let millis = 25u64 << attempt.min(7);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

/// What a `TransactWriteItems` answer means: `None` when it was written, or why it was
/// cancelled ([`cancellation`]); an error that is neither is the caller's error.
pub(super) fn transaction_answer(
    sent: Result<
        TransactWriteItemsOutput,
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
        .map(|r| r.iter().filter_map(|r| r.code.clone()).collect())
        .unwrap_or_default();
    match cancellation(&reasons) {
        Some(cancelled) => Ok(Some(cancelled)),
        None => Err(AwsError::from_sdk("TransactWriteItems", err).into()),
    }
}

impl Store {
    pub(super) fn expires_at(&self) -> AttributeValue {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        n((now + self.ttl).as_secs())
    }

    /// One item, strongly consistent.
    pub(super) async fn get(&self, key: Item) -> Result<Option<Item>, StoreError> {
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

    /// The run item, strongly consistent; `None` for a run the table has never seen.
    pub(super) async fn run_record(&self, run: &RunId) -> Result<Option<RunRecord>, StoreError> {
        let item = self.get(run_key(run)).await?;
        item.map(|i| parse_run(run, &i)).transpose()
    }

    pub(super) async fn set_run_fields(
        &self,
        run: &RunId,
        expression: &str,
        value: AttributeValue,
    ) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(run_key(run)))
            .update_expression(expression)
            .expression_attribute_values(":v", value)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateItem", e))?;
        Ok(())
    }

    pub(super) async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
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
    pub(super) async fn query_all(
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
}
