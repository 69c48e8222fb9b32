//! What slave reads and records: a batch with its outcomes so far, each outcome once
//! with the counters, and the copies it verified before deleting their sources.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem, Update};

use super::codec::{get_s, outcome_item, parse_files, parse_outcomes, parse_run};
use super::dynamo::{ATTEMPTS, backoff, now_rfc3339, transaction_answer};
use super::layout::{Item, batch_pk, counter_key, failed_pk, key, n, outcome_pk, run_key, run_pk};
use super::{Store, StoreError};
use crate::error::AwsError;
use crate::rules::batch::BatchId;
use crate::rules::outcomes::{Delta, Outcome, Outcomes};
use crate::rules::records::{BatchView, RunRecord};
use crate::rules::run::RunId;
use crate::rules::table::{Cancelled, MarkerChange, marker_change};

/// The records a slave keeps: outcomes, and its multipart copies in progress
/// ([`super::uploads`]).
#[derive(Clone, Debug)]
pub struct SlaveRecords {
    pub(super) store: Store,
}

impl SlaveRecords {
    pub fn new(store: Store) -> Self {
        SlaveRecords { store }
    }

    /// The run item and one batch with its outcomes so far, in one strongly consistent
    /// read; either is `None` when the table does not have it.
    pub async fn load_batch(
        &self,
        run: &RunId,
        id: &BatchId,
    ) -> Result<(Option<RunRecord>, Option<BatchView>), StoreError> {
        let wanted = vec![
            run_key(run),
            key(batch_pk(run), id.as_str()),
            key(outcome_pk(run), id.as_str()),
        ];
        let mut items = self.store.batch_get(wanted).await?;
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
                id: id.clone(),
                files,
                outcomes,
            }),
        ))
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
                batch.id.as_str()
            ),
            transient: true,
        }
        .into())
    }

    /// A batch's outcomes as they stand now, strongly consistent.
    pub async fn outcomes(
        &self,
        run: &RunId,
        id: &BatchId,
        files: usize,
    ) -> Result<Outcomes, StoreError> {
        let item = self.store.get(key(outcome_pk(run), id.as_str())).await?;
        parse_outcomes(run, item.as_ref(), files)
    }

    /// The batch's outcome item goes from `seen` to `next`. With a counter change, in
    /// one transaction with the counters and with the batch's failed marker, which
    /// appears or goes when the batch starts or stops having failed files; without one,
    /// alone. `None` when written.
    async fn write_outcomes(
        &self,
        run: &RunId,
        id: &BatchId,
        seen: &Outcomes,
        next: &Outcomes,
        delta: Delta,
    ) -> Result<Option<Cancelled>, StoreError> {
        let expires = self.store.expires_at();
        let item = outcome_item(run, id, next, now_rfc3339(), expires.clone());
        let (condition, seen_version) = if seen.version == 0 {
            ("attribute_not_exists(pk)", None)
        } else {
            ("version = :seen", Some(n(seen.version)))
        };
        if delta.is_zero() {
            let put = self
                .store
                .client
                .put_item()
                .table_name(&self.store.table)
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
            .table_name(&self.store.table)
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
            .table_name(&self.store.table)
            .set_key(Some(counter_key(run, id)))
            .update_expression(
                "ADD completed :c, failed :f, skipped :k, #bytes :b, by_checksum :v SET expires_at = :exp",
            )
            .expression_attribute_names("#bytes", "bytes")
            .expression_attribute_values(":c", n(delta.completed))
            .expression_attribute_values(":f", n(delta.failed))
            .expression_attribute_values(":k", n(delta.skipped))
            .expression_attribute_values(":b", n(delta.bytes))
            .expression_attribute_values(":v", n(delta.by_checksum))
            .expression_attribute_values(":exp", expires.clone())
            .build()
            .expect("update is complete");
        items.push(TransactWriteItem::builder().update(counters).build());
        match marker_change(seen, next) {
            Some(MarkerChange::Appears) => {
                let mut marker = key(failed_pk(run), id.as_str());
                marker.insert("expires_at".into(), expires);
                let put = Put::builder()
                    .table_name(&self.store.table)
                    .set_item(Some(marker));
                items.push(
                    TransactWriteItem::builder()
                        .put(put.build().expect("put is complete"))
                        .build(),
                );
            }
            Some(MarkerChange::Goes) => {
                let delete = Delete::builder()
                    .table_name(&self.store.table)
                    .set_key(Some(key(failed_pk(run), id.as_str())))
                    .build()
                    .expect("delete is complete");
                items.push(TransactWriteItem::builder().delete(delete).build());
            }
            None => {}
        }
        let sent = self
            .store
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        transaction_answer(sent)
    }
}
