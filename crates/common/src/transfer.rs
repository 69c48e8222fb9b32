//! Moving objects on S3: copy, verify, and only then delete the source.

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption,
};
use futures::{StreamExt, TryStreamExt, stream};

use crate::batch::ListedFile;
use crate::config::SlaveSettings;
use crate::error::AwsError;
use crate::keys::copy_source;
use crate::run::RunSpec;

/// `DeleteObjects` takes at most this many keys.
const DELETE_BATCH: usize = 1000;
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;

/// Why a file could not be moved. The source is untouched unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct MoveFailure {
    pub reason: String,
    /// Whether a later attempt may succeed.
    pub transient: bool,
}

impl From<AwsError> for MoveFailure {
    fn from(e: AwsError) -> Self {
        MoveFailure {
            reason: e.to_string(),
            transient: e.transient,
        }
    }
}

fn permanent(reason: String) -> MoveFailure {
    MoveFailure {
        reason,
        transient: false,
    }
}

/// A file whose destination is verified to hold what the listing saw, and what is left
/// to do with its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The source is still there, to be deleted.
    SourceToDelete,
    /// An earlier attempt already deleted the source.
    SourceGone,
}

/// The quotes S3 puts around ETags are not part of the value.
fn bare(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// A multipart ETag (`<md5>-<parts>`) is not the MD5 of the content.
fn is_content_md5(etag: &str) -> bool {
    !bare(etag).contains('-') && !bare(etag).is_empty()
}

/// The part size for an object: the configured size, grown if the object would need
/// more than S3's 10,000 parts.
pub fn part_size(object_size: u64, configured: u64) -> u64 {
    configured.max(object_size.div_ceil(MAX_PARTS))
}

/// Byte ranges (`start`, inclusive `end`) of each part.
pub fn part_ranges(object_size: u64, part_size: u64) -> Vec<(u64, u64)> {
    (0..object_size.div_ceil(part_size))
        .map(|i| {
            let start = i * part_size;
            (start, (start + part_size).min(object_size) - 1)
        })
        .collect()
}

/// What the destination holds after a copy; its ETag is what the copy reported.
enum Copied {
    Done {
        etag: String,
        /// Whether S3 wrote the copy so that its ETag is the MD5 of its bytes (no SSE-KMS
        /// or SSE-C encryption, and not a multipart copy).
        etag_is_md5: bool,
    },
    SourceMissing,
}

/// Whether an object written with this encryption has its content MD5 as ETag.
fn encryption_keeps_md5(sse: Option<&ServerSideEncryption>, customer_key: bool) -> bool {
    !customer_key && matches!(sse, None | Some(ServerSideEncryption::Aes256))
}

pub struct Mover<'a> {
    s3: &'a Client,
    settings: &'a SlaveSettings,
}

impl<'a> Mover<'a> {
    pub fn new(s3: &'a Client, settings: &'a SlaveSettings) -> Self {
        Mover { s3, settings }
    }

    /// Copies one file to its destination and verifies it there. The source stays.
    ///
    /// The copy is conditional on the listed ETag, so S3 copies exactly the listed
    /// version. Verification then costs no request when the copy reports the listed
    /// ETag. When the two differ and both should be content MD5s (neither object is
    /// SSE-KMS or SSE-C encrypted, neither was written in parts), the destination does
    /// not hold the listed bytes and the file fails with its source kept; finding out
    /// whether the source's ETag is an MD5 costs one `HeadObject`. In every other case
    /// (multipart sources, KMS, multipart copies) a `HeadObject` of the destination must
    /// show the listed size and the copy's ETag. A source that is gone counts as moved
    /// only if the destination holds the listed size.
    pub async fn copy_verified(
        &self,
        spec: &RunSpec,
        file: &ListedFile,
    ) -> Result<Verified, MoveFailure> {
        let destination_key = spec
            .destination_key(&file.key)
            .map_err(|e| permanent(e.to_string()))?;
        let copied = if file.size >= self.settings.multipart_threshold {
            self.copy_in_parts(spec, file, &destination_key).await?
        } else {
            self.copy_whole(spec, file, &destination_key).await?
        };
        match copied {
            Copied::Done { etag, .. } if bare(&etag) == bare(&file.etag) => {
                Ok(Verified::SourceToDelete)
            }
            Copied::Done { etag, etag_is_md5 } => {
                if etag_is_md5
                    && is_content_md5(&file.etag)
                    && self.source_etag_is_md5(spec, file).await?
                {
                    return Err(permanent(format!(
                        "the destination {destination_key:?} does not hold the listed bytes: its MD5 is {}, the source's {}; the source was left in place",
                        bare(&etag),
                        bare(&file.etag)
                    )));
                }
                self.check_destination(spec, &destination_key, file.size, Some(&etag))
                    .await?;
                Ok(Verified::SourceToDelete)
            }
            Copied::SourceMissing => {
                self.check_destination(spec, &destination_key, file.size, None)
                    .await
                    .map_err(|e| permanent(format!("the source is gone and {}", e.reason)))?;
                Ok(Verified::SourceGone)
            }
        }
    }

    /// Whether the listed source's ETag is the MD5 of its bytes (it is not encrypted
    /// with SSE-KMS or SSE-C).
    async fn source_etag_is_md5(
        &self,
        spec: &RunSpec,
        file: &ListedFile,
    ) -> Result<bool, MoveFailure> {
        let head = self
            .s3
            .head_object()
            .bucket(&spec.source.bucket)
            .key(&file.key)
            .if_match(&file.etag)
            .send()
            .await
            .map_err(|e| {
                // A HEAD answer has no body: a rewritten source shows only as status 412.
                if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) {
                    source_changed(file)
                } else {
                    AwsError::from_sdk("HeadObject", e).into()
                }
            })?;
        Ok(encryption_keeps_md5(
            head.server_side_encryption.as_ref(),
            head.sse_customer_algorithm.is_some(),
        ))
    }

    async fn copy_whole(
        &self,
        spec: &RunSpec,
        file: &ListedFile,
        destination_key: &str,
    ) -> Result<Copied, MoveFailure> {
        let sent = self
            .s3
            .copy_object()
            .bucket(&spec.destination.bucket)
            .key(destination_key)
            .copy_source(copy_source(&spec.source.bucket, &file.key))
            .copy_source_if_match(&file.etag)
            .send()
            .await;
        match sent {
            Ok(out) => {
                let etag_is_md5 = encryption_keeps_md5(
                    out.server_side_encryption.as_ref(),
                    out.sse_customer_algorithm.is_some(),
                );
                let etag = out
                    .copy_object_result
                    .and_then(|r| r.e_tag)
                    .unwrap_or_default();
                Ok(Copied::Done { etag, etag_is_md5 })
            }
            Err(err) => source_problem(AwsError::from_sdk("CopyObject", err), file),
        }
    }

    /// A multipart copy: the object's metadata and tags are read from the source and
    /// given to the new upload (S3 does not carry them over), parts copy in parallel,
    /// and a failed upload is aborted so no parts are left to pay for.
    async fn copy_in_parts(
        &self,
        spec: &RunSpec,
        file: &ListedFile,
        destination_key: &str,
    ) -> Result<Copied, MoveFailure> {
        let source = copy_source(&spec.source.bucket, &file.key);
        let head = self
            .s3
            .head_object()
            .bucket(&spec.source.bucket)
            .key(&file.key)
            .if_match(&file.etag)
            .send()
            .await;
        let head = match head {
            Ok(h) => h,
            Err(err) => return source_problem(AwsError::from_sdk("HeadObject", err), file),
        };
        let tags = self
            .s3
            .get_object_tagging()
            .bucket(&spec.source.bucket)
            .key(&file.key)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetObjectTagging", e))?
            .tag_set;
        let tagging = tags
            .iter()
            .map(|t| format!("{}={}", urlencode(t.key()), urlencode(t.value())))
            .collect::<Vec<_>>()
            .join("&");

        let upload = self
            .s3
            .create_multipart_upload()
            .bucket(&spec.destination.bucket)
            .key(destination_key)
            .set_metadata(head.metadata)
            .set_content_type(head.content_type)
            .set_content_encoding(head.content_encoding)
            .set_content_disposition(head.content_disposition)
            .set_content_language(head.content_language)
            .set_cache_control(head.cache_control)
            .set_expires(head.expires_string.as_deref().and_then(|raw| {
                aws_smithy_types::DateTime::from_str(
                    raw,
                    aws_smithy_types::date_time::Format::HttpDate,
                )
                .ok()
            }))
            .set_tagging((!tagging.is_empty()).then_some(tagging))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateMultipartUpload", e))?;
        let upload_id = upload.upload_id.unwrap_or_default();

        let size = part_size(file.size, self.settings.part_size);
        let parts = stream::iter(part_ranges(file.size, size).into_iter().enumerate())
            .map(|(i, (start, end))| {
                let number = i as i32 + 1;
                let request = self
                    .s3
                    .upload_part_copy()
                    .bucket(&spec.destination.bucket)
                    .key(destination_key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .copy_source(&source)
                    .copy_source_if_match(&file.etag)
                    .copy_source_range(format!("bytes={start}-{end}"));
                async move {
                    let out = request
                        .send()
                        .await
                        .map_err(|e| AwsError::from_sdk("UploadPartCopy", e))?;
                    let etag = out
                        .copy_part_result
                        .and_then(|r| r.e_tag)
                        .unwrap_or_default();
                    Ok::<_, AwsError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .e_tag(etag)
                            .build(),
                    )
                }
            })
            .buffer_unordered(self.settings.part_concurrency)
            .try_collect::<Vec<_>>()
            .await;
        let completed = match parts {
            Ok(mut parts) => {
                parts.sort_by_key(|p| p.part_number);
                self.s3
                    .complete_multipart_upload()
                    .bucket(&spec.destination.bucket)
                    .key(destination_key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("CompleteMultipartUpload", e))
            }
            Err(e) => Err(e),
        };
        match completed {
            Ok(out) => Ok(Copied::Done {
                etag: out.e_tag.unwrap_or_default(),
                etag_is_md5: false,
            }),
            Err(e) => {
                // Best effort: a left-over upload is also removed by a bucket lifecycle rule.
                let _ = self
                    .s3
                    .abort_multipart_upload()
                    .bucket(&spec.destination.bucket)
                    .key(destination_key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                source_problem(e, file)
            }
        }
    }

    /// Checks that the destination holds `size` bytes and, when given, the ETag the copy reported.
    async fn check_destination(
        &self,
        spec: &RunSpec,
        destination_key: &str,
        size: u64,
        etag: Option<&str>,
    ) -> Result<(), MoveFailure> {
        let head = self
            .s3
            .head_object()
            .bucket(&spec.destination.bucket)
            .key(destination_key)
            .send()
            .await;
        let head = match head {
            Ok(h) => h,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => {
                return Err(permanent(format!(
                    "the destination {destination_key:?} does not exist"
                )));
            }
            Err(err) => {
                return Err(AwsError::from_sdk("HeadObject", err).into());
            }
        };
        let found_size = head.content_length.unwrap_or(-1);
        let found_etag = head.e_tag.unwrap_or_default();
        if found_size != size as i64 {
            return Err(permanent(format!(
                "the destination {destination_key:?} holds {found_size} bytes, not the {size} listed"
            )));
        }
        if let Some(expected) = etag
            && bare(&found_etag) != bare(expected)
        {
            return Err(permanent(format!(
                "the destination {destination_key:?} has ETag {found_etag}, not the copy's {expected}"
            )));
        }
        Ok(())
    }

    /// Deletes verified sources, 1,000 to a `DeleteObjects`, each only while it still
    /// has the listed ETag (where S3 supports conditional deletes), so a source rewritten
    /// after the copy is kept. Returns each file's result, in the order given.
    pub async fn delete_sources(
        &self,
        bucket: &str,
        files: &[&ListedFile],
    ) -> Vec<Result<(), MoveFailure>> {
        let mut results = Vec::with_capacity(files.len());
        for chunk in files.chunks(DELETE_BATCH) {
            let objects: Vec<ObjectIdentifier> = chunk
                .iter()
                .map(|f| {
                    ObjectIdentifier::builder()
                        .key(&f.key)
                        .e_tag(&f.etag)
                        .build()
                        .expect("key is set")
                })
                .collect();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .expect("objects are set");
            match self
                .s3
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
            {
                Ok(out) => {
                    let mut errors: std::collections::HashMap<String, MoveFailure> = out
                        .errors
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|e| {
                            let code = e.code.unwrap_or_default();
                            // Gone already (an earlier, unanswered attempt deleted it): the
                            // destination is verified, so that is the outcome wanted.
                            if code == "NoSuchKey" {
                                return None;
                            }
                            let failure = MoveFailure {
                                transient: crate::error::is_transient_code(&code),
                                reason: match code.as_str() {
                                    "PreconditionFailed" => {
                                        "the source was rewritten after it was copied; the new version is kept".into()
                                    }
                                    _ => format!(
                                        "copied and verified, but deleting the source failed: {code}: {}",
                                        e.message.unwrap_or_default()
                                    ),
                                },
                            };
                            Some((e.key?, failure))
                        })
                        .collect();
                    results.extend(
                        chunk
                            .iter()
                            .map(|f| errors.remove(&f.key).map_or(Ok(()), Err)),
                    );
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
                    results.extend(chunk.iter().map(|_| Err(failure.clone())));
                }
            }
        }
        results
    }
}

/// Turns a copy error into what it says about the source.
fn source_problem(err: AwsError, file: &ListedFile) -> Result<Copied, MoveFailure> {
    if err.code_is("NoSuchKey") || err.code_is("NotFound") {
        return Ok(Copied::SourceMissing);
    }
    if err.code_is("PreconditionFailed") {
        return Err(source_changed(file));
    }
    Err(err.into())
}

fn source_changed(file: &ListedFile) -> MoveFailure {
    permanent(format!(
        "the source changed after it was listed (its ETag is no longer {}); it was left in place",
        file.etag
    ))
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_object_exactly() {
        assert_eq!(part_ranges(10, 4), [(0, 3), (4, 7), (8, 9)]);
        assert_eq!(part_ranges(8, 4), [(0, 3), (4, 7)]);
        let mib = 1024 * 1024;
        let ranges = part_ranges(11 * mib, 5 * mib);
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges.last(), Some(&(10 * mib, 11 * mib - 1)));
    }

    #[test]
    fn part_size_grows_to_stay_within_10000_parts() {
        let mib = 1024 * 1024;
        assert_eq!(part_size(100 * mib, 64 * mib), 64 * mib);
        let huge = 5 * 1024 * 1024 * mib; // 5 TiB, S3's largest object
        let size = part_size(huge, 64 * mib);
        assert!(huge.div_ceil(size) <= MAX_PARTS);
    }

    #[test]
    fn only_unencrypted_and_sse_s3_objects_have_md5_etags() {
        assert!(encryption_keeps_md5(None, false));
        assert!(encryption_keeps_md5(
            Some(&ServerSideEncryption::Aes256),
            false
        ));
        assert!(!encryption_keeps_md5(
            Some(&ServerSideEncryption::AwsKms),
            false
        ));
        assert!(!encryption_keeps_md5(
            Some(&ServerSideEncryption::AwsKmsDsse),
            false
        ));
        assert!(!encryption_keeps_md5(None, true), "SSE-C");
    }

    #[test]
    fn only_plain_etags_are_content_md5() {
        assert!(is_content_md5("\"9b2cf535f27731c974343645a3985328\""));
        assert!(!is_content_md5("\"9b2cf535f27731c974343645a3985328-3\""));
        assert!(!is_content_md5("\"\""));
    }
}
