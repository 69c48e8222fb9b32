//! Deleting verified sources, each only while it still has the listed ETag.

use std::collections::HashMap;

use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::Mover;
use crate::deadline::{Deadlines, bounded};
use crate::error::AwsError;
use crate::rules::batch::ListedFile;
use crate::rules::copy::delete_refusal;
use crate::rules::failure::MoveFailure;
use crate::rules::keys::xml_can_carry;

/// A key and one of its version ids.
type KeyVersion<'a> = (&'a str, &'a str);

/// `DeleteObjects` takes at most this many keys.
const DELETE_BATCH: usize = 1000;

/// What deleting a verified source did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// The key is gone.
    Gone,
    /// The bucket keeps versions: the key has a delete marker on top now (whose version
    /// id is `marker`), and the copied bytes stay as a noncurrent version until that
    /// version is deleted.
    Marked { marker: Option<String> },
    /// The key had no current object already: an earlier attempt whose answer was lost
    /// deleted it.
    Absent,
}

impl Mover<'_> {
    /// Deletes verified sources, each only while it still has the listed ETag, so a
    /// source rewritten after the copy is kept. Keys XML can carry go 1,000 to a
    /// `DeleteObjects`; the others, whose key must travel in the URL, one `DeleteObject`
    /// each. Returns each file's result, in the order given.
    pub async fn delete_sources(
        &self,
        bucket: &str,
        files: &[&ListedFile],
    ) -> Vec<Result<Deleted, MoveFailure>> {
        let (carried, in_url): (Vec<usize>, Vec<usize>) =
            (0..files.len()).partition(|&i| xml_can_carry(&files[i].key));
        let mut results: Vec<Option<Result<Deleted, MoveFailure>>> = vec![None; files.len()];
        for chunk in carried.chunks(DELETE_BATCH) {
            let batch: Vec<&ListedFile> = chunk.iter().map(|&i| files[i]).collect();
            for (&i, result) in chunk.iter().zip(self.delete_objects(bucket, &batch).await) {
                results[i] = Some(result);
            }
        }
        let single = bounded(
            in_url,
            self.settings.move_concurrency,
            Deadlines::none(),
            |i| self.delete_object(bucket, files[i]),
        )
        .await;
        for (i, result) in single {
            results[i] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.expect("every file has a result"))
            .collect()
    }

    async fn delete_objects(
        &self,
        bucket: &str,
        files: &[&ListedFile],
    ) -> Vec<Result<Deleted, MoveFailure>> {
        let objects: Vec<ObjectIdentifier> = files
            .iter()
            .map(|f| {
                ObjectIdentifier::builder()
                    .key(&f.key)
                    .e_tag(&f.etag)
                    .build()
                    .expect("key is set")
            })
            .collect();
        // Not quiet: each deleted key says whether it got a delete marker.
        match self.send_delete_objects(bucket, objects, false).await {
            Ok(out) => {
                // Every key is answered, deleted or refused; one that is not counts as
                // not deleted.
                let mut answers: HashMap<String, Result<Deleted, MoveFailure>> = out
                    .deleted()
                    .iter()
                    .filter_map(|d| {
                        let deleted = if d.delete_marker() == Some(true) {
                            Deleted::Marked {
                                marker: d.delete_marker_version_id().map(String::from),
                            }
                        } else {
                            Deleted::Gone
                        };
                        Some((d.key()?.to_string(), Ok(deleted)))
                    })
                    .collect();
                for e in out.errors() {
                    let Some(key) = e.key() else { continue };
                    let code = e.code().unwrap_or_default();
                    let answer = match delete_refusal(None, code, e.message().unwrap_or("")) {
                        Some(failure) => Err(failure),
                        None => Ok(Deleted::Absent),
                    };
                    answers.insert(key.to_string(), answer);
                }
                files
                    .iter()
                    .map(|f| {
                        answers.remove(&f.key).unwrap_or_else(|| {
                            Err(MoveFailure {
                                reason: "DeleteObjects gave no answer for the source".into(),
                                transient: true,
                            })
                        })
                    })
                    .collect()
            }
            Err(err) => {
                let failure = MoveFailure::from(AwsError::from_sdk("DeleteObjects", err));
                let failure = MoveFailure {
                    reason: format!(
                        "copied and verified, but deleting the source failed: {}",
                        failure.reason
                    ),
                    ..failure
                };
                files.iter().map(|_| Err(failure.clone())).collect()
            }
        }
    }

    /// One `DeleteObjects`; a quiet one answers only the keys it could not delete.
    async fn send_delete_objects(
        &self,
        bucket: &str,
        objects: Vec<ObjectIdentifier>,
        quiet: bool,
    ) -> Result<
        aws_sdk_s3::operation::delete_objects::DeleteObjectsOutput,
        aws_sdk_s3::error::SdkError<
            aws_sdk_s3::operation::delete_objects::DeleteObjectsError,
            aws_sdk_s3::config::http::HttpResponse,
        >,
    > {
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(quiet)
            .build()
            .expect("objects are set");
        self.s3
            .source
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
    }

    async fn delete_object(&self, bucket: &str, file: &ListedFile) -> Result<Deleted, MoveFailure> {
        let sent = self
            .s3
            .source
            .delete_object()
            .bucket(bucket)
            .key(&file.key)
            .if_match(&file.etag)
            .send()
            .await;
        match sent {
            Ok(out) if out.delete_marker == Some(true) => Ok(Deleted::Marked {
                marker: out.version_id,
            }),
            Ok(_) => Ok(Deleted::Gone),
            Err(err) => {
                let status = err.raw_response().map(|r| r.status().as_u16());
                let err = AwsError::from_sdk("DeleteObject", err);
                let code = err.code.as_deref().unwrap_or_default();
                match delete_refusal(status, code, &err.message) {
                    None => Ok(Deleted::Absent),
                    Some(failure) => Err(MoveFailure {
                        transient: failure.transient || err.transient,
                        ..failure
                    }),
                }
            }
        }
    }

    /// Deletes the source versions that were copied, once their keys carry a delete
    /// marker, so that no noncurrent copy of moved data stays behind to pay for, and no
    /// older version becomes current under the source prefix. Best effort: a version left
    /// is logged, as the file is moved either way. Answers how many were left.
    pub async fn delete_copied_versions(&self, bucket: &str, versions: &[(&str, &str)]) -> usize {
        let (carried, in_url): (Vec<KeyVersion>, Vec<KeyVersion>) =
            versions.iter().partition(|(key, _)| xml_can_carry(key));
        let mut left = 0;
        for chunk in carried.chunks(DELETE_BATCH) {
            let objects: Vec<ObjectIdentifier> = chunk
                .iter()
                .map(|(key, version)| {
                    ObjectIdentifier::builder()
                        .key(*key)
                        .version_id(*version)
                        .build()
                        .expect("key is set")
                })
                .collect();
            match self.send_delete_objects(bucket, objects, true).await {
                Ok(out) => {
                    for error in out.errors() {
                        if !matches!(error.code(), Some("NoSuchVersion" | "NoSuchKey")) {
                            left += 1;
                            tracing::warn!(key = ?error.key(), code = ?error.code(),
                                "could not delete a copied source version");
                        }
                    }
                }
                Err(e) => {
                    left += chunk.len();
                    let e = AwsError::from_sdk("DeleteObjects", e);
                    tracing::warn!(error = %e, "could not delete copied source versions");
                }
            }
        }
        let single = bounded(
            in_url,
            self.settings.move_concurrency,
            Deadlines::none(),
            |(key, version)| async move {
                self.s3
                    .source
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .version_id(version)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("DeleteObject", e))
            },
        )
        .await;
        for ((key, _), result) in single {
            if let Err(e) = result
                && !e.code_is("NoSuchVersion")
            {
                left += 1;
                tracing::warn!(key = %key, error = %e, "could not delete a copied source version");
            }
        }
        left
    }
}
