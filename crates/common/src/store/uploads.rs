//! A slave's multipart copies in progress, one item per file, so that an invocation
//! that runs out of time hands its upload on instead of starting over.

use std::collections::HashMap;

use super::StoreError;
use super::codec::{get_n, get_s};
use super::dynamo::is_condition_failure;
use super::layout::{key, n, s, upload_pk};
use super::slave::SlaveRecords;
use crate::error::AwsError;
use crate::rules::checksum::{Checksum, ChecksumAlgorithm};
use crate::rules::records::UploadRecord;
use crate::rules::run::RunId;

impl SlaveRecords {
    /// The multipart copy recorded for the file `file_key`, if any.
    pub async fn upload(
        &self,
        run: &RunId,
        file_key: &str,
    ) -> Result<Option<UploadRecord>, StoreError> {
        let Some(item) = self.store.get(key(upload_pk(run), file_key)).await? else {
            return Ok(None);
        };
        let corrupt = |what: &str| StoreError::Corrupt {
            run: run.clone(),
            problem: format!("the upload item of {file_key:?} has no {what}"),
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
            source_version: get_s(&item, "source_version")
                .filter(|v| !v.is_empty())
                .map(String::from),
            source_checksum: get_s(&item, "source_checksum").and_then(read_checksum),
            completing_etag: get_s(&item, "completing_etag").map(String::from),
        }))
    }

    /// Records a multipart copy of the file `file_key`, unless one is recorded already:
    /// then answers that one, which the caller adopts.
    pub async fn begin_upload(
        &self,
        run: &RunId,
        file_key: &str,
        upload: &UploadRecord,
    ) -> Result<Option<UploadRecord>, StoreError> {
        let written = self
            .store
            .client
            .update_item()
            .table_name(&self.store.table)
            .set_key(Some(key(upload_pk(run), file_key)))
            .update_expression(
                "SET upload_id = :u, part_size = :p, source_etag = :e, source_version = :v, \
                 source_checksum = :c, expires_at = :exp",
            )
            .condition_expression("attribute_not_exists(upload_id)")
            .expression_attribute_values(":u", s(&upload.upload_id))
            .expression_attribute_values(":p", n(upload.part_size))
            .expression_attribute_values(":e", s(&upload.source_etag))
            // An unversioned source is recorded as "" (DynamoDB has no empty set of values
            // to leave out conditionally here), and read back as none.
            .expression_attribute_values(":v", s(upload.source_version.as_deref().unwrap_or("")))
            .expression_attribute_values(
                ":c",
                s(upload
                    .source_checksum
                    .as_ref()
                    .map(write_checksum)
                    .unwrap_or_default()),
            )
            .expression_attribute_values(":exp", self.store.expires_at())
            .send()
            .await;
        match written {
            Ok(_) => Ok(None),
            Err(e) if is_condition_failure(&e) => self.upload(run, file_key).await,
            Err(e) => Err(AwsError::from_sdk("UpdateItem", e).into()),
        }
    }

    /// Records the ETag the upload of `file_key` will have once completed.
    pub async fn completing_upload(
        &self,
        run: &RunId,
        file_key: &str,
        upload_id: &str,
        etag: &str,
    ) -> Result<(), StoreError> {
        let written = self
            .store
            .client
            .update_item()
            .table_name(&self.store.table)
            .set_key(Some(key(upload_pk(run), file_key)))
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

    /// Forgets the multipart copy of `file_key`: it was completed and recorded, or aborted.
    /// With `upload_id`, only if the record is still of that upload: another delivery may
    /// have replaced it with one of its own meanwhile.
    pub async fn forget_upload(
        &self,
        run: &RunId,
        file_key: &str,
        upload_id: Option<&str>,
    ) -> Result<(), StoreError> {
        let deleted = self
            .store
            .client
            .delete_item()
            .table_name(&self.store.table)
            .set_key(Some(key(upload_pk(run), file_key)))
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
}

/// A checksum as an upload item keeps it: `<algorithm>:<value>`; "" for none, as for
/// the source version.
fn write_checksum(checksum: &Checksum) -> String {
    format!("{}:{}", checksum.algorithm, checksum.value)
}

fn read_checksum(written: &str) -> Option<Checksum> {
    let (algorithm, value) = written.split_once(':')?;
    Some(Checksum {
        algorithm: ChecksumAlgorithm::parse(algorithm)?,
        value: value.to_string(),
    })
}
