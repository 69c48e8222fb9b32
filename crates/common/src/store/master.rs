//! What master writes: the run with its spec, each listing page's batches together with
//! the listing position they reach, and how far the batches have been handed out.

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

use super::codec::{describe, encode_selection, get_s};
use super::dynamo::{ATTEMPTS, backoff, is_condition_failure, now_rfc3339, transaction_answer};
use super::layout::{batch_pk, key, n, run_key, s};
use super::{Store, StoreError};
use crate::error::AwsError;
use crate::rules::batch::{BatchId, PageBatch, encode_files};
use crate::rules::plan::Plan;
use crate::rules::records::{PendingBatches, RunRecord};
use crate::rules::run::{RunId, RunSpec};
use crate::rules::table::{Cancelled, transaction_groups};

/// The records master keeps.
#[derive(Clone, Debug)]
pub struct MasterRecords {
    store: Store,
}

impl MasterRecords {
    pub fn new(store: Store) -> Self {
        MasterRecords { store }
    }

    /// Creates the run with its spec, or checks that an existing run has the same spec:
    /// an execution name reused for other buckets or prefixes is refused.
    /// A run with a manifest records the manifest's ETag as `manifest_etag` sees it now.
    pub async fn start_run(
        &self,
        run: &RunId,
        spec: &RunSpec,
        manifest_etag: Option<&str>,
    ) -> Result<RunRecord, StoreError> {
        for _ in 0..ATTEMPTS {
            if let Some(existing) = self.store.run_record(run).await? {
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
            // Attributes a run has only when it names them.
            let optional: Vec<(&str, AttributeValue)> = [
                ("storage_class", spec.storage_class.as_deref().map(s)),
                ("kms_key_id", spec.kms_key_id.as_deref().map(s)),
                (
                    "manifest",
                    spec.manifest.as_ref().map(|manifest| {
                        s(serde_json::to_string(manifest).expect("a manifest always serializes"))
                    }),
                ),
                (
                    "manifest_etag",
                    spec.manifest
                        .as_ref()
                        .map(|_| s(manifest_etag.unwrap_or_default())),
                ),
                ("source_owner", spec.source_owner.as_deref().map(s)),
                (
                    "destination_owner",
                    spec.destination_owner.as_deref().map(s),
                ),
            ]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?)))
            .collect();
            let set_optional: String = optional
                .iter()
                .map(|(name, _)| format!(", {name} = :{name}"))
                .collect();
            let mut created = self
                .store
                .client
                .update_item()
                .table_name(&self.store.table)
                .set_key(Some(run_key(run)))
                .update_expression(format!(
                    "SET source_bucket = :sb, source_prefix = :sp, destination_bucket = :db, \
                     destination_prefix = :dp, suffixes = :sx, selection = :sel, \
                     if_destination_exists = :ide, keep_source_versions = :ksv, dry_run = :dry, \
                     listing_complete = :f, selected = :zero, \
                     created_at = :now, expires_at = :exp{set_optional}"
                ))
                .expression_attribute_values(":ide", s(spec.if_destination_exists.as_str()))
                .expression_attribute_values(
                    ":ksv",
                    AttributeValue::Bool(spec.keep_source_versions),
                )
                .expression_attribute_values(":dry", AttributeValue::Bool(spec.dry_run))
                .condition_expression("attribute_not_exists(source_bucket)")
                .expression_attribute_values(":sb", s(&spec.source.bucket))
                .expression_attribute_values(":sp", s(&spec.source.prefix))
                .expression_attribute_values(":db", s(&spec.destination.bucket))
                .expression_attribute_values(":dp", s(&spec.destination.prefix))
                .expression_attribute_values(":sx", AttributeValue::L(suffixes))
                .expression_attribute_values(":sel", s(encode_selection(&spec.selection)))
                .expression_attribute_values(":f", AttributeValue::Bool(false))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":now", s(now_rfc3339()))
                .expression_attribute_values(":exp", self.store.expires_at());
            for (name, value) in optional {
                created = created.expression_attribute_values(format!(":{name}"), value);
            }
            let created = created.send().await;
            match created {
                Ok(_) => {}
                // Another master created it first: read it again and compare.
                Err(e) if is_condition_failure(&e) => continue,
                Err(e) => return Err(AwsError::from_sdk("UpdateItem", e).into()),
            }
        }
        self.store
            .run_record(run)
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
        batches: &[PageBatch<'_>],
        through: &str,
    ) -> Result<(), StoreError> {
        let groups = transaction_groups(batches);
        let mut position = previous.map(str::to_string);
        for (i, group) in groups.iter().enumerate() {
            let reaches = if i + 1 == groups.len() {
                through
            } else {
                group.last().expect("groups are not empty").last
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
        batches: &[PageBatch<'_>],
        through: &str,
    ) -> Result<(), StoreError> {
        let expires = self.store.expires_at();
        let mut items: Vec<TransactWriteItem> = batches
            .iter()
            .map(|batch| {
                let mut item = key(batch_pk(run), batch.id.as_str());
                item.insert("files".into(), s(encode_files(batch.files)));
                item.insert("expires_at".into(), expires.clone());
                let put = Put::builder()
                    .table_name(&self.store.table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .expect("put is complete");
                TransactWriteItem::builder().put(put).build()
            })
            .collect();
        let files: usize = batches.iter().map(|b| b.files.len()).sum();
        let position = Update::builder()
            .table_name(&self.store.table)
            .set_key(Some(run_key(run)))
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
                .store
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            match transaction_answer(sent)? {
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

    /// A dry run's page: the plan so far replaces the one recorded, together with the
    /// listing position it covers (recorded and handed out at once, as there is nothing
    /// to hand out), on condition that no other call moved the position, so a page is
    /// never counted twice.
    pub async fn record_plan_page(
        &self,
        run: &RunId,
        previous: Option<&str>,
        through: &str,
        plan: &Plan,
    ) -> Result<(), StoreError> {
        let update = self
            .store
            .client
            .update_item()
            .table_name(&self.store.table)
            .set_key(Some(run_key(run)))
            .update_expression(
                "SET recorded_through = :t, handed_through = :t, #plan = :plan, selected = :n",
            )
            .expression_attribute_names("#plan", "plan")
            .expression_attribute_values(":t", s(through))
            .expression_attribute_values(
                ":plan",
                s(serde_json::to_string(plan).expect("a plan always serializes")),
            )
            .expression_attribute_values(":n", n(plan.files));
        let update = match previous {
            None => update.condition_expression("attribute_not_exists(recorded_through)"),
            Some(p) => update
                .condition_expression("recorded_through = :p")
                .expression_attribute_values(":p", s(p)),
        };
        match update.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => {
                Err(StoreError::ProgressConflict { run: run.clone() })
            }
            Err(e) => Err(AwsError::from_sdk("UpdateItem", e).into()),
        }
    }

    /// The run item, if the run has been started.
    pub async fn run(&self, run: &RunId) -> Result<Option<RunRecord>, StoreError> {
        self.store.run_record(run).await
    }

    pub async fn advance_handed(&self, run: &RunId, through: &str) -> Result<(), StoreError> {
        self.store
            .set_run_fields(run, "SET handed_through = :v", s(through))
            .await
    }

    pub async fn complete_listing(&self, run: &RunId) -> Result<(), StoreError> {
        self.store
            .set_run_fields(run, "SET listing_complete = :v", AttributeValue::Bool(true))
            .await
    }

    /// The batches an earlier call recorded but did not hand out, in order.
    pub async fn pending_batches(
        &self,
        run: &RunId,
        pending: &PendingBatches,
    ) -> Result<Vec<BatchId>, StoreError> {
        let (after, through) = (pending.after.as_deref(), pending.through.as_str());
        let condition = match after {
            Some(_) => "pk = :pk AND sk BETWEEN :from AND :through",
            None => "pk = :pk AND sk <= :through",
        };
        let items = self
            .store
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
            .map(BatchId::recorded)
            .collect())
    }
}
