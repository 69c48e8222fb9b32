//! Copies in parts (`UploadPartCopy`) that survive the invocation: the upload is
//! recorded before any part is copied, resumed with `ListParts`, completed with the
//! ETag it will have recorded first, and aborted when it cannot succeed.

use std::collections::BTreeMap;

use aws_sdk_s3::types::{ChecksumType, CompletedMultipartUpload, CompletedPart, EncodingType};

use super::{ChecksumProof, Copied, Mover, checksums};
use crate::deadline::bounded;
use crate::error::AwsError;
use crate::rules::batch::ListedFile;
use crate::rules::checksum::{Checksum, for_copy_in_parts};
use crate::rules::copy::{
    PartRefusal, SourceRefusal, bare, has_no_tagging, holds_listed_object, multipart_etag,
    part_ranges, part_refusal, part_size,
};
use crate::rules::failure::MoveFailure;
use crate::rules::keys::{copy_source, decode_listed_key};
use crate::rules::records::UploadRecord;
use crate::rules::run::{PlannedMove, RunSpec};

impl Mover<'_> {
    /// A multipart copy that survives the invocation: its upload id is recorded in the
    /// status table before any part is copied, so a later invocation (a continuation
    /// after the deadline, a retry after a crash) finds the parts already copied with
    /// `ListParts` and copies only the rest. Parts are copied in parallel, none started
    /// after the soft deadline; then the upload is completed, and a failed one aborted,
    /// so that no parts are left to pay for.
    pub(super) async fn copy_in_parts(
        &self,
        spec: &RunSpec,
        planned: &PlannedMove,
    ) -> Result<Copied, MoveFailure> {
        let (file, destination_key) = (&planned.file, planned.destination_key.as_str());
        // An upload that vanishes under us (aborted by a lifecycle rule, say) is started
        // once more.
        for _ in 0..2 {
            // An upload this call began holds no part yet: it is not listed.
            let (upload, fresh) = match self.recorded_upload(file).await? {
                Some(upload) => (upload, false),
                // A run that keeps existing destinations copies no part toward one that
                // exists; the conditional completion still guards against a racing writer.
                None if spec.if_destination_exists.keeps_existing()
                    && self
                        .find_destination(spec, destination_key)
                        .await?
                        .is_some() =>
                {
                    return Ok(Copied::DestinationTaken);
                }
                None => match self.begin_upload(spec, planned).await? {
                    Ok(begun) => begun,
                    Err(copied) => return Ok(copied),
                },
            };
            let parts = match self.copy_parts(spec, planned, &upload, fresh).await {
                Ok(PartsCopied::All(parts)) => parts,
                Ok(PartsCopied::Unfinished { progressed }) => {
                    return Ok(Copied::Unfinished { progressed });
                }
                Ok(PartsCopied::UploadGone) => {
                    match self.after_upload_gone(spec, planned, &upload).await? {
                        Some(copied) => return Ok(copied),
                        None => continue,
                    }
                }
                Ok(PartsCopied::SourceMissing) => {
                    // No part can be copied any more: the upload goes.
                    let gone = MoveFailure::permanent("the source is gone");
                    self.give_up(spec, planned, &upload, gone).await;
                    return Ok(Copied::SourceMissing);
                }
                Err(failure) => {
                    return Err(self.give_up(spec, planned, &upload, failure).await);
                }
            };
            let etags: Vec<&str> = parts.iter().filter_map(|p| p.e_tag()).collect();
            let expected = multipart_etag(&etags);
            if let Some(expected) = &expected {
                self.records
                    .completing_upload(self.run, &file.key, &upload.upload_id, expected)
                    .await?;
            }
            let request = self
                .s3
                .destination
                .complete_multipart_upload()
                .bucket(&spec.destination.bucket)
                .key(destination_key)
                .upload_id(&upload.upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .set_if_none_match(super::if_none_match(spec));
            let completed = checksums::expecting(request, upload.source_checksum.as_ref())
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("CompleteMultipartUpload", e));
            match completed {
                Ok(out) => {
                    self.abort_others(spec, destination_key, None).await;
                    return Ok(Copied::Done {
                        etag: out.e_tag.unwrap_or_default(),
                        etag_is_md5: false,
                        proof: ChecksumProof::at_destination(upload.source_checksum.clone()),
                        source_etag_is_md5: None,
                        source_version: upload.source_version,
                    });
                }
                // The destination was written meanwhile and the run does not overwrite: the
                // upload goes, and whose object is there decides the file.
                Err(e)
                    if e.code_is("PreconditionFailed")
                        && spec.if_destination_exists.keeps_existing() =>
                {
                    // An earlier completion of this very upload whose answer was lost
                    // holds the ETag recorded before completing; anything else is the
                    // other writer's, whose own uploads to the key are left alone.
                    let found = self.find_destination(spec, destination_key).await?;
                    if let (Some((size, etag)), Some(expected)) = (found, &expected)
                        && holds_listed_object(file, Some(expected), size, &etag).is_ok()
                    {
                        self.abort_others(spec, destination_key, None).await;
                        return Ok(Copied::Done {
                            etag: expected.clone(),
                            etag_is_md5: false,
                            proof: ChecksumProof::at_destination(upload.source_checksum.clone()),
                            source_etag_is_md5: None,
                            source_version: upload.source_version,
                        });
                    }
                    self.abort(spec, destination_key, &upload.upload_id).await;
                    self.records
                        .forget_upload(self.run, &file.key, Some(&upload.upload_id))
                        .await?;
                    return Ok(Copied::DestinationTaken);
                }
                Err(e) if e.code_is("NoSuchUpload") => {
                    let upload = UploadRecord {
                        completing_etag: expected,
                        ..upload
                    };
                    match self.after_upload_gone(spec, planned, &upload).await? {
                        Some(copied) => return Ok(copied),
                        None => continue,
                    }
                }
                Err(e) if e.transient => return Err(e.into()),
                Err(e) => {
                    return Err(self.give_up(spec, planned, &upload, e.into()).await);
                }
            }
        }
        Err(MoveFailure {
            reason: "the multipart upload vanished twice while it was being copied".into(),
            transient: true,
        })
    }

    /// The upload recorded for this file, if it copies the listed version.
    async fn recorded_upload(
        &self,
        file: &ListedFile,
    ) -> Result<Option<UploadRecord>, MoveFailure> {
        let recorded = self.records.upload(self.run, &file.key).await?;
        Ok(recorded.filter(|u| bare(&u.source_etag) == bare(&file.etag)))
    }

    /// Starts and records a multipart upload with the source's metadata, content headers
    /// and tags (S3 does not carry them over to an upload), and with the source's
    /// full-object checksum where its algorithm combines across parts. When another
    /// delivery has recorded one first, this one is aborted and theirs is used. The
    /// upload comes with whether this call began it (then it holds no part yet).
    async fn begin_upload(
        &self,
        spec: &RunSpec,
        planned: &PlannedMove,
    ) -> Result<Result<(UploadRecord, bool), Copied>, MoveFailure> {
        let (file, destination_key) = (&planned.file, planned.destination_key.as_str());
        let head = match self.head_listed_source(spec, file, true).await {
            Ok(head) => head,
            Err(refused) => {
                return match refused.refusal {
                    SourceRefusal::Gone => Ok(Err(Copied::SourceMissing)),
                    SourceRefusal::Fails(failure) => Err(failure),
                };
            }
        };
        let tags = match self
            .s3
            .source
            .get_object_tagging()
            .bucket(&spec.source.bucket)
            .key(&file.key)
            .send()
            .await
        {
            Ok(answer) => answer.tag_set,
            Err(e) => {
                let err = AwsError::from_sdk("GetObjectTagging", e);
                if !has_no_tagging(&err) {
                    return Err(err.into());
                }
                tracing::info!(bucket = %spec.source.bucket, "the server keeps no object tags; none to carry");
                Vec::new()
            }
        };
        let in_parts = for_copy_in_parts(checksums::of_head(&head).full_object());
        let encryption =
            super::encryption_headers(spec, self.settings.read_source_encryption, Some(&head));
        let tagging = tags
            .iter()
            .map(|t| format!("{}={}", urlencode(t.key()), urlencode(t.value())))
            .collect::<Vec<_>>()
            .join("&");
        let request = self
            .s3
            .destination
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
            .set_storage_class(super::storage_class(spec, file))
            .set_server_side_encryption(encryption.server_side_encryption)
            .set_ssekms_key_id(encryption.kms_key_id)
            .set_bucket_key_enabled(encryption.bucket_key_enabled);
        let with_checksum = request
            .clone()
            .set_checksum_algorithm(
                in_parts
                    .as_ref()
                    .map(|c| checksums::sdk_algorithm(c.algorithm)),
            )
            .set_checksum_type(in_parts.as_ref().map(|_| ChecksumType::FullObject));
        let (created, in_parts) = match with_checksum.send().await {
            Ok(created) => (created, in_parts),
            Err(e) => {
                let e = AwsError::from_sdk("CreateMultipartUpload", e);
                // An S3-compatible store that makes no full-object checksums of uploads
                // refuses the request: the copy is made without one, and its size and
                // ETag judge it.
                let refused_checksum = in_parts.is_some()
                    && !e.transient
                    && ["InvalidRequest", "InvalidArgument", "NotImplemented"]
                        .iter()
                        .any(|code| e.code_is(code));
                if !refused_checksum {
                    return Err(e.into());
                }
                tracing::warn!(key = %destination_key, error = %e,
                    "the store refused a full-object checksum: this copy in parts is verified by size and ETag");
                let created = request
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("CreateMultipartUpload", e))?;
                (created, None)
            }
        };
        let upload = UploadRecord {
            upload_id: created.upload_id.unwrap_or_default(),
            part_size: part_size(file.size, self.settings.part_size),
            source_etag: file.etag.clone(),
            source_version: head.version_id.clone(),
            source_checksum: in_parts,
            completing_etag: None,
        };
        match self
            .records
            .begin_upload(self.run, &file.key, &upload)
            .await
        {
            Ok(None) => Ok(Ok((upload, true))),
            Ok(Some(theirs)) => {
                self.abort(spec, destination_key, &upload.upload_id).await;
                Ok(Ok((theirs, false)))
            }
            Err(e) => {
                self.abort(spec, destination_key, &upload.upload_id).await;
                Err(e.into())
            }
        }
    }

    /// Copies the parts the upload does not have yet: all of them for a `fresh` upload,
    /// which this call began; otherwise those `ListParts` does not show.
    async fn copy_parts(
        &self,
        spec: &RunSpec,
        planned: &PlannedMove,
        upload: &UploadRecord,
        fresh: bool,
    ) -> Result<PartsCopied, MoveFailure> {
        let (file, destination_key) = (&planned.file, planned.destination_key.as_str());
        let mut done = if fresh {
            BTreeMap::new()
        } else {
            match self.listed_parts(spec, destination_key, upload).await? {
                Some(done) => done,
                None => return Ok(PartsCopied::UploadGone),
            }
        };
        let missing: Vec<(i32, (u64, u64))> = part_ranges(file.size, upload.part_size)
            .into_iter()
            .enumerate()
            .map(|(i, range)| (i as i32 + 1, range))
            .filter(|(number, _)| !done.contains_key(number))
            .collect();
        let wanted = missing.len();
        let source = copy_source(&spec.source.bucket, &file.key);
        let copied = bounded(
            missing,
            self.settings.part_concurrency,
            self.deadlines,
            |(number, (start, end))| {
                self.s3
                    .destination
                    .upload_part_copy()
                    .bucket(&spec.destination.bucket)
                    .key(destination_key)
                    .upload_id(&upload.upload_id)
                    .part_number(number)
                    .copy_source(&source)
                    .copy_source_if_match(&file.etag)
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .send()
            },
        )
        .await;
        let finished = copied.len();
        for ((number, _), sent) in copied {
            match sent {
                Ok(out) => {
                    let result = out.copy_part_result;
                    let checksum = upload
                        .source_checksum
                        .as_ref()
                        .zip(result.as_ref())
                        .and_then(|(c, result)| {
                            checksums::of_part(
                                c.algorithm,
                                result.checksum_crc64_nvme(),
                                result.checksum_crc32_c(),
                                result.checksum_crc32(),
                            )
                        });
                    let etag = result.and_then(|r| r.e_tag).unwrap_or_default();
                    done.insert(number, (etag, checksum));
                }
                Err(err) => {
                    return match part_refusal(AwsError::from_sdk("UploadPartCopy", err), file) {
                        PartRefusal::UploadGone => Ok(PartsCopied::UploadGone),
                        PartRefusal::SourceGone => Ok(PartsCopied::SourceMissing),
                        PartRefusal::Fails(failure) => Err(failure),
                    };
                }
            }
        }
        if finished < wanted {
            return Ok(PartsCopied::Unfinished {
                progressed: finished > 0,
            });
        }
        let algorithm = upload.source_checksum.as_ref().map(|c| c.algorithm);
        Ok(PartsCopied::All(
            done.into_iter()
                .map(|(number, (etag, checksum))| {
                    let checksum = algorithm
                        .zip(checksum)
                        .map(|(algorithm, value)| Checksum { algorithm, value });
                    checksums::completed_part(number, &etag, checksum.as_ref())
                })
                .collect(),
        ))
    }

    /// The parts the upload has, by number, with their ETags and, for an upload with a
    /// checksum, their checksums; `None` if the upload is gone.
    async fn listed_parts(
        &self,
        spec: &RunSpec,
        destination_key: &str,
        upload: &UploadRecord,
    ) -> Result<Option<BTreeMap<i32, (String, Option<String>)>>, MoveFailure> {
        let mut parts = BTreeMap::new();
        let mut marker = None;
        loop {
            let page = self
                .s3
                .destination
                .list_parts()
                .bucket(&spec.destination.bucket)
                .key(destination_key)
                .upload_id(&upload.upload_id)
                .set_part_number_marker(marker)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("ListParts", e));
            let page = match page {
                Ok(page) => page,
                Err(e) if e.code_is("NoSuchUpload") => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            for part in page.parts() {
                if let (Some(number), Some(etag)) = (part.part_number, part.e_tag()) {
                    let checksum = upload.source_checksum.as_ref().and_then(|c| {
                        checksums::of_part(
                            c.algorithm,
                            part.checksum_crc64_nvme(),
                            part.checksum_crc32_c(),
                            part.checksum_crc32(),
                        )
                    });
                    parts.insert(number, (etag.to_string(), checksum));
                }
            }
            marker = page
                .next_part_number_marker
                .filter(|_| page.is_truncated == Some(true));
            if marker.is_none() {
                return Ok(Some(parts));
            }
        }
    }

    /// The recorded upload is gone: completed by an earlier attempt whose answer was
    /// lost (the destination then has the ETag recorded before completing), or aborted.
    /// `Some` when the destination holds the completed copy; `None` to start over.
    async fn after_upload_gone(
        &self,
        spec: &RunSpec,
        planned: &PlannedMove,
        upload: &UploadRecord,
    ) -> Result<Option<Copied>, MoveFailure> {
        let (file, destination_key) = (&planned.file, planned.destination_key.as_str());
        if let Some(expected) = &upload.completing_etag {
            let found = match self.head_destination(spec, destination_key, false).await {
                Ok(found) => Some(found),
                Err(failure) if failure.transient => return Err(failure),
                Err(_) => None,
            };
            if let Some(super::Found { size, etag, .. }) = found
                && holds_listed_object(file, Some(expected), size, &etag).is_ok()
            {
                self.abort_others(spec, destination_key, None).await;
                return Ok(Some(Copied::Done {
                    etag: expected.clone(),
                    etag_is_md5: false,
                    source_version: upload.source_version.clone(),
                    proof: ChecksumProof::at_destination(upload.source_checksum.clone()),
                    source_etag_is_md5: None,
                }));
            }
        }
        self.records
            .forget_upload(self.run, &file.key, Some(&upload.upload_id))
            .await?;
        Ok(None)
    }

    /// A multipart copy that cannot succeed: its upload (and any other left for the key)
    /// is aborted and forgotten, and the failure answered.
    async fn give_up(
        &self,
        spec: &RunSpec,
        planned: &PlannedMove,
        upload: &UploadRecord,
        failure: MoveFailure,
    ) -> MoveFailure {
        let (file, destination_key) = (&planned.file, planned.destination_key.as_str());
        if failure.transient {
            return failure;
        }
        self.abort(spec, destination_key, &upload.upload_id).await;
        self.abort_others(spec, destination_key, Some(&upload.upload_id))
            .await;
        let forgotten = self
            .records
            .forget_upload(self.run, &file.key, Some(&upload.upload_id))
            .await;
        if let Err(e) = forgotten {
            tracing::warn!(key = %file.key, error = %e, "could not forget an aborted upload");
        }
        failure
    }

    async fn abort(&self, spec: &RunSpec, destination_key: &str, upload_id: &str) {
        let aborted = self
            .s3
            .destination
            .abort_multipart_upload()
            .bucket(&spec.destination.bucket)
            .key(destination_key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(e) = aborted {
            let e = AwsError::from_sdk("AbortMultipartUpload", e);
            if !e.code_is("NoSuchUpload") {
                tracing::warn!(key = %destination_key, error = %e, "could not abort an upload");
            }
        }
    }

    /// Aborts every upload left for the destination key but `except`: one whose
    /// creator died before recording it would otherwise be billed until a lifecycle
    /// rule removes it.
    async fn abort_others(&self, spec: &RunSpec, destination_key: &str, except: Option<&str>) {
        let listed = self
            .s3
            .destination
            .list_multipart_uploads()
            .bucket(&spec.destination.bucket)
            .prefix(destination_key)
            .encoding_type(EncodingType::Url)
            .send()
            .await;
        let uploads = match listed {
            Ok(out) => out.uploads.unwrap_or_default(),
            Err(e) => {
                let e = AwsError::from_sdk("ListMultipartUploads", e);
                tracing::warn!(key = %destination_key, error = %e, "could not list leftover uploads");
                return;
            }
        };
        for upload in uploads {
            let key = upload.key.as_deref().map(decode_listed_key);
            if let (Some(Ok(key)), Some(id)) = (key, upload.upload_id.as_deref())
                && key == destination_key
                && Some(id) != except
            {
                self.abort(spec, destination_key, id).await;
            }
        }
    }

    /// The file failed or is given up on: its multipart upload, if it has one, is aborted
    /// and forgotten.
    pub(super) async fn abandon_upload(&self, spec: &RunSpec, planned: &PlannedMove) {
        let Ok(Some(upload)) = self.records.upload(self.run, &planned.file.key).await else {
            return;
        };
        let failure = MoveFailure::permanent(String::new());
        self.give_up(spec, planned, &upload, failure).await;
    }
}

/// The parts of a multipart copy after one invocation's work on them.
enum PartsCopied {
    All(Vec<CompletedPart>),
    Unfinished { progressed: bool },
    UploadGone,
    SourceMissing,
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
