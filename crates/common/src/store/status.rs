//! What status and the command line read and write: a run with its counters, the run's
//! activity task tokens and whether its result was delivered, and its files with their
//! states.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::codec::{get_n, get_s, join, parse_run};
use super::dynamo::BATCH_GET_KEYS;
use super::layout::{
    Item, RUN_SK, batch_pk, failed_pk, is_counter, key, outcome_pk, run_key, run_pk, s,
};
use super::{Store, StoreError};
use crate::error::AwsError;
use crate::rules::outcomes::FileState;
use crate::rules::progress::RunProgress;
use crate::rules::records::{Delivered, FileStatus, RunRecord, RunView};
use crate::rules::run::RunId;

/// The records status and the command line read, and the run's task tokens.
#[derive(Clone, Debug)]
pub struct StatusRecords {
    store: Store,
}

impl StatusRecords {
    pub fn new(store: Store) -> Self {
        StatusRecords { store }
    }

    /// The run item and its counters, in one strongly consistent query; `None` for a run
    /// the table has never seen.
    pub async fn run_view(&self, run: &RunId) -> Result<Option<RunView>, StoreError> {
        let items = self.store.query_all(&run_pk(run), |q| q).await?;
        let Some(run_item) = items.iter().find(|i| get_s(i, "sk") == Some(RUN_SK)) else {
            return Ok(None);
        };
        let record = parse_run(run, run_item)?;
        let mut progress = RunProgress {
            listing_complete: record.listing_complete,
            selected: record.selected,
            dry_run: record.spec.as_ref().is_some_and(|spec| spec.dry_run),
            ..RunProgress::default()
        };
        for counter in items
            .iter()
            .filter(|i| get_s(i, "sk").is_some_and(is_counter))
        {
            let read = |name| get_n(counter, name).unwrap_or(0).max(0) as u64;
            progress.completed += read("completed");
            progress.failed += read("failed");
            progress.skipped += read("skipped");
            progress.bytes += read("bytes");
            progress.by_checksum += read("by_checksum");
        }
        Ok(Some(RunView { record, progress }))
    }

    /// The run item; `None` for a run the table has never seen.
    pub async fn run_record(&self, run: &RunId) -> Result<Option<RunRecord>, StoreError> {
        self.store.run_record(run).await
    }

    /// Records an activity task token of `run` on its run item, creating the item if
    /// the run's master has not started yet; the token is durable before anyone uses it.
    pub async fn record_token(&self, run: &RunId, token: &str) -> Result<(), StoreError> {
        self.store
            .client
            .update_item()
            .table_name(&self.store.table)
            .set_key(Some(run_key(run)))
            .update_expression(
                "ADD task_tokens :t SET expires_at = if_not_exists(expires_at, :exp)",
            )
            .expression_attribute_values(":t", AttributeValue::Ss(vec![token.to_string()]))
            .expression_attribute_values(":exp", self.store.expires_at())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateItem", e))?;
        Ok(())
    }

    /// Forgets a token Step Functions no longer takes an answer for.
    pub async fn forget_token(&self, run: &RunId, token: &str) -> Result<(), StoreError> {
        self.store
            .set_run_fields(
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
        self.store
            .set_run_fields(run, "SET delivered = :v REMOVE task_tokens", s(how))
            .await
    }

    /// Up to `limit` failed files of the run with their reasons, in key order.
    pub async fn failed_files(
        &self,
        run: &RunId,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let marked = self
            .store
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
        let items = self.store.batch_get(wanted).await?;
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
        let batches = self.store.query_all(&batch_pk(run), |q| q).await?;
        let outcomes: HashMap<String, Item> = self
            .store
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
