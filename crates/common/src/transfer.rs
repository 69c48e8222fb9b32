//! Moving objects on S3: copy, verify, and only then delete the source.

use std::collections::BTreeMap;

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, EncodingType, ObjectIdentifier,
    ServerSideEncryption,
};

use crate::batch::ListedFile;
use crate::config::{MAX_PART_SIZE, SlaveSettings};
use crate::deadline::{Deadlines, bounded};
use crate::error::AwsError;
use crate::keys::{copy_source, decode_listed_key, too_long, xml_can_carry};
use crate::run::{RunId, RunSpec};
use crate::store::{Store, StoreError, UploadRecord};

/// `DeleteObjects` takes at most this many keys.
const DELETE_BATCH: usize = 1000;
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;
/// `CopyObject` copies objects of at most 5 GiB; larger ones must be copied in parts.
const MAX_SINGLE_COPY: u64 = MAX_PART_SIZE;

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

impl From<StoreError> for MoveFailure {
    fn from(e: StoreError) -> Self {
        let transient = match &e {
            StoreError::Aws(aws) => aws.transient,
            _ => false,
        };
        MoveFailure {
            reason: format!("status table: {e}"),
            transient,
        }
    }
}

fn permanent(reason: String) -> MoveFailure {
    MoveFailure {
        reason,
        transient: false,
    }
}

/// What a copy achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copy {
    /// The destination is verified to hold the listed object, whose copy has this ETag;
    /// the source is still there, to be deleted.
    Verified { etag: String },
    /// The source is gone (an earlier attempt may have moved it): whether the file counts
    /// as moved is for [`Mover::verify_moved`] to say, with the copy's ETag recorded for it.
    SourceGone,
    /// Time ran out first. A multipart copy's finished parts are kept for the next
    /// invocation; `progressed` when this invocation copied some of them.
    Unfinished { progressed: bool },
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

/// The ETag S3 gives an object completed from these parts: the MD5 of the parts' MD5s
/// followed by `-` and their number. `None` when a part's ETag is not an MD5.
pub fn multipart_etag(part_etags: &[&str]) -> Option<String> {
    use md5::{Digest, Md5};
    let mut digests = Vec::with_capacity(part_etags.len() * 16);
    for etag in part_etags {
        let hex = bare(etag);
        if hex.len() != 32 {
            return None;
        }
        for pair in hex.as_bytes().chunks(2) {
            digests.push(u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?);
        }
    }
    let digest = Md5::digest(&digests);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("\"{hex}-{}\"", part_etags.len()))
}

/// How a file is to be copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyMethod {
    Whole,
    InParts,
}

/// Whole up to the multipart threshold; in parts from there, and always beyond 5 GiB.
/// A multipart upload names its key in the XML of its answers, so a destination key
/// that XML cannot carry is copied whole if it can be, and otherwise fails.
fn copy_method(size: u64, destination_key: &str, threshold: u64) -> Result<CopyMethod, String> {
    let in_parts = size >= threshold || size > MAX_SINGLE_COPY;
    if !in_parts {
        return Ok(CopyMethod::Whole);
    }
    if xml_can_carry(destination_key) {
        return Ok(CopyMethod::InParts);
    }
    if size <= MAX_SINGLE_COPY {
        return Ok(CopyMethod::Whole);
    }
    Err(
        "the object is larger than the 5 GiB CopyObject copies, and its key has characters \
         XML cannot carry, which S3's multipart upload names in its answers; the source was \
         left in place"
            .into(),
    )
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
    Unfinished {
        progressed: bool,
    },
}

/// Whether an object written with this encryption has its content MD5 as ETag.
fn encryption_keeps_md5(sse: Option<&ServerSideEncryption>, customer_key: bool) -> bool {
    !customer_key && matches!(sse, None | Some(ServerSideEncryption::Aes256))
}

/// Whether the destination, as HEAD shows it, holds the listed object after its source
/// is gone: its size is the listed one and its ETag the one the copy recorded before
/// deleting the source, or, without such a record, the listed ETag (a copy of a
/// single-part unencrypted object keeps it). `Err` says what is wrong.
pub fn holds_listed_object(
    file: &ListedFile,
    recorded_copy: Option<&str>,
    found_size: i64,
    found_etag: &str,
) -> Result<(), String> {
    let expected = recorded_copy.unwrap_or(&file.etag);
    if found_size != file.size as i64 {
        return Err(format!(
            "holds {found_size} bytes, not the {} listed",
            file.size
        ));
    }
    if bare(found_etag) != bare(expected) {
        let whose = if recorded_copy.is_some() {
            "its verified copy's"
        } else {
            "the listed object's"
        };
        return Err(format!(
            "has ETag {}, not {whose} {}",
            bare(found_etag),
            bare(expected)
        ));
    }
    Ok(())
}

pub struct Mover<'a> {
    s3: &'a Client,
    settings: &'a SlaveSettings,
    store: &'a Store,
    run: &'a RunId,
    deadlines: Deadlines,
}

impl<'a> Mover<'a> {
    /// A mover for `run`'s files, which keeps its multipart copies' progress in `store`.
    pub fn new(
        s3: &'a Client,
        settings: &'a SlaveSettings,
        store: &'a Store,
        run: &'a RunId,
        deadlines: Deadlines,
    ) -> Self {
        Mover {
            s3,
            settings,
            store,
            run,
            deadlines,
        }
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
    /// show the listed size and the copy's ETag. A source that is gone is answered as
    /// such, for [`Mover::verify_moved`].
    pub async fn copy_verified(
        &self,
        spec: &RunSpec,
        file: &ListedFile,
    ) -> Result<Copy, MoveFailure> {
        let destination_key = spec
            .destination_key(&file.key)
            .map_err(|e| permanent(e.to_string()))?;
        if let Some(reason) = too_long(&destination_key) {
            return Err(permanent(reason));
        }
        let method = copy_method(
            file.size,
            &destination_key,
            self.settings.multipart_threshold,
        )
        .map_err(permanent)?;
        let copied = match method {
            CopyMethod::Whole => self.copy_whole(spec, file, &destination_key).await?,
            CopyMethod::InParts => self.copy_in_parts(spec, file, &destination_key).await?,
        };
        match copied {
            Copied::Unfinished { progressed } => Ok(Copy::Unfinished { progressed }),
            Copied::Done { etag, .. } if bare(&etag) == bare(&file.etag) => {
                Ok(Copy::Verified { etag })
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
                self.check_destination(spec, &destination_key, file.size, &etag)
                    .await?;
                Ok(Copy::Verified { etag })
            }
            Copied::SourceMissing => Ok(Copy::SourceGone),
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

    /// A multipart copy that survives the invocation: its upload id is recorded in the
    /// status table before any part is copied, so a later invocation (a continuation
    /// after the deadline, a retry after a crash) finds the parts already copied with
    /// `ListParts` and copies only the rest. Parts are copied in parallel, none started
    /// after the soft deadline; then the upload is completed, and a failed one aborted,
    /// so that no parts are left to pay for.
    async fn copy_in_parts(
        &self,
        spec: &RunSpec,
        file: &ListedFile,
        destination_key: &str,
    ) -> Result<Copied, MoveFailure> {
        // An upload that vanishes under us (aborted by a lifecycle rule, say) is started
        // once more.
        for _ in 0..2 {
            let upload = match self.recorded_upload(file).await? {
                Some(upload) => upload,
                None => match self.begin_upload(spec, file, destination_key).await? {
                    Ok(upload) => upload,
                    Err(copied) => return Ok(copied),
                },
            };
            let parts = match self.copy_parts(spec, file, destination_key, &upload).await {
                Ok(PartsCopied::All(parts)) => parts,
                Ok(PartsCopied::Unfinished { progressed }) => {
                    return Ok(Copied::Unfinished { progressed });
                }
                Ok(PartsCopied::UploadGone) => {
                    match self
                        .after_upload_gone(spec, file, destination_key, &upload)
                        .await?
                    {
                        Some(copied) => return Ok(copied),
                        None => continue,
                    }
                }
                Ok(PartsCopied::SourceMissing) => {
                    // No part can be copied any more: the upload goes.
                    let gone = permanent("the source is gone".into());
                    self.give_up(spec, destination_key, file, &upload, gone)
                        .await;
                    return Ok(Copied::SourceMissing);
                }
                Err(failure) => {
                    return Err(self
                        .give_up(spec, destination_key, file, &upload, failure)
                        .await);
                }
            };
            let etags: Vec<&str> = parts.iter().filter_map(|p| p.e_tag()).collect();
            let expected = multipart_etag(&etags);
            if let Some(expected) = &expected {
                self.store
                    .completing_upload(self.run, &file.key, &upload.upload_id, expected)
                    .await?;
            }
            let completed = self
                .s3
                .complete_multipart_upload()
                .bucket(&spec.destination.bucket)
                .key(destination_key)
                .upload_id(&upload.upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("CompleteMultipartUpload", e));
            match completed {
                Ok(out) => {
                    self.abort_others(spec, destination_key, None).await;
                    return Ok(Copied::Done {
                        etag: out.e_tag.unwrap_or_default(),
                        etag_is_md5: false,
                    });
                }
                Err(e) if e.code_is("NoSuchUpload") => {
                    let upload = UploadRecord {
                        completing_etag: expected,
                        ..upload
                    };
                    match self
                        .after_upload_gone(spec, file, destination_key, &upload)
                        .await?
                    {
                        Some(copied) => return Ok(copied),
                        None => continue,
                    }
                }
                Err(e) if e.transient => return Err(e.into()),
                Err(e) => {
                    return Err(self
                        .give_up(spec, destination_key, file, &upload, e.into())
                        .await);
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
        let recorded = self.store.upload(self.run, &file.key).await?;
        Ok(recorded.filter(|u| bare(&u.source_etag) == bare(&file.etag)))
    }

    /// Starts and records a multipart upload with the source's metadata, content headers
    /// and tags (S3 does not carry them over to an upload). When another delivery has
    /// recorded one first, this one is aborted and theirs is used.
    async fn begin_upload(
        &self,
        spec: &RunSpec,
        file: &ListedFile,
        destination_key: &str,
    ) -> Result<Result<UploadRecord, Copied>, MoveFailure> {
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
            Err(err) => {
                if err
                    .raw_response()
                    .is_some_and(|r| r.status().as_u16() == 412)
                {
                    return Err(source_changed(file));
                }
                return source_problem(AwsError::from_sdk("HeadObject", err), file).map(Err);
            }
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
        let created = self
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
        let upload = UploadRecord {
            upload_id: created.upload_id.unwrap_or_default(),
            part_size: part_size(file.size, self.settings.part_size),
            source_etag: file.etag.clone(),
            completing_etag: None,
        };
        match self.store.begin_upload(self.run, &file.key, &upload).await {
            Ok(None) => Ok(Ok(upload)),
            Ok(Some(theirs)) => {
                self.abort(spec, destination_key, &upload.upload_id).await;
                Ok(Ok(theirs))
            }
            Err(e) => {
                self.abort(spec, destination_key, &upload.upload_id).await;
                Err(e.into())
            }
        }
    }

    /// Copies the parts the upload does not have yet.
    async fn copy_parts(
        &self,
        spec: &RunSpec,
        file: &ListedFile,
        destination_key: &str,
        upload: &UploadRecord,
    ) -> Result<PartsCopied, MoveFailure> {
        let Some(mut done) = self.listed_parts(spec, destination_key, upload).await? else {
            return Ok(PartsCopied::UploadGone);
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
                    let etag = out
                        .copy_part_result
                        .and_then(|r| r.e_tag)
                        .unwrap_or_default();
                    done.insert(number, etag);
                }
                Err(err) => {
                    let err = AwsError::from_sdk("UploadPartCopy", err);
                    if err.code_is("NoSuchUpload") {
                        return Ok(PartsCopied::UploadGone);
                    }
                    if err.code_is("NoSuchKey") {
                        return Ok(PartsCopied::SourceMissing);
                    }
                    if err.code_is("PreconditionFailed") {
                        return Err(source_changed(file));
                    }
                    return Err(err.into());
                }
            }
        }
        if finished < wanted {
            return Ok(PartsCopied::Unfinished {
                progressed: finished > 0,
            });
        }
        Ok(PartsCopied::All(
            done.into_iter()
                .map(|(number, etag)| {
                    CompletedPart::builder()
                        .part_number(number)
                        .e_tag(etag)
                        .build()
                })
                .collect(),
        ))
    }

    /// The parts the upload has, by number, with their ETags; `None` if the upload is
    /// gone.
    async fn listed_parts(
        &self,
        spec: &RunSpec,
        destination_key: &str,
        upload: &UploadRecord,
    ) -> Result<Option<BTreeMap<i32, String>>, MoveFailure> {
        let mut parts = BTreeMap::new();
        let mut marker = None;
        loop {
            let page = self
                .s3
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
                    parts.insert(number, etag.to_string());
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
        file: &ListedFile,
        destination_key: &str,
        upload: &UploadRecord,
    ) -> Result<Option<Copied>, MoveFailure> {
        if let Some(expected) = &upload.completing_etag {
            let found = match self.head_destination(spec, destination_key).await {
                Ok(found) => Some(found),
                Err(failure) if failure.transient => return Err(failure),
                Err(_) => None,
            };
            if let Some((size, etag)) = found
                && size == file.size as i64
                && bare(&etag) == bare(expected)
            {
                self.abort_others(spec, destination_key, None).await;
                return Ok(Some(Copied::Done {
                    etag: expected.clone(),
                    etag_is_md5: false,
                }));
            }
        }
        self.store
            .forget_upload(self.run, &file.key, Some(&upload.upload_id))
            .await?;
        Ok(None)
    }

    /// A multipart copy that cannot succeed: its upload (and any other left for the key)
    /// is aborted and forgotten, and the failure answered.
    async fn give_up(
        &self,
        spec: &RunSpec,
        destination_key: &str,
        file: &ListedFile,
        upload: &UploadRecord,
        failure: MoveFailure,
    ) -> MoveFailure {
        if failure.transient {
            return failure;
        }
        self.abort(spec, destination_key, &upload.upload_id).await;
        self.abort_others(spec, destination_key, Some(&upload.upload_id))
            .await;
        let forgotten = self
            .store
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

    /// Files about to be recorded failed: the multipart upload of each that might have one
    /// is aborted and forgotten, before the outcome is recorded, since no later delivery
    /// tries a file with an outcome. Best effort, within `deadlines`: what is left is
    /// aborted by the bucket's lifecycle rule.
    pub async fn abandon_uploads(
        &self,
        spec: &RunSpec,
        files: &[&ListedFile],
        deadlines: Deadlines,
    ) {
        let large: Vec<&ListedFile> = files
            .iter()
            .copied()
            .filter(|file| might_copy_in_parts(file, self.settings))
            .collect();
        bounded(large, self.settings.move_concurrency, deadlines, |file| {
            self.abandon_upload(spec, file)
        })
        .await;
    }

    /// Files recorded moved: the record of each one's completed multipart upload goes.
    /// Best effort, within `deadlines`: what is left goes with the run's other items.
    pub async fn forget_uploads(&self, files: &[&ListedFile], deadlines: Deadlines) {
        let large: Vec<&ListedFile> = files
            .iter()
            .copied()
            .filter(|file| might_copy_in_parts(file, self.settings))
            .collect();
        bounded(
            large,
            self.settings.move_concurrency,
            deadlines,
            |file| async move {
                if let Err(e) = self.store.forget_upload(self.run, &file.key, None).await {
                    tracing::warn!(key = %file.key, error = %e, "could not forget a finished upload");
                }
            },
        )
        .await;
    }

    /// The file failed or is given up on: its multipart upload, if it has one, is aborted
    /// and forgotten.
    async fn abandon_upload(&self, spec: &RunSpec, file: &ListedFile) {
        let Ok(Some(upload)) = self.store.upload(self.run, &file.key).await else {
            return;
        };
        let Ok(destination_key) = spec.destination_key(&file.key) else {
            return;
        };
        let failure = permanent(String::new());
        self.give_up(spec, &destination_key, file, &upload, failure)
            .await;
    }

    /// Checks that the destination holds `size` bytes and the ETag the copy reported.
    async fn check_destination(
        &self,
        spec: &RunSpec,
        destination_key: &str,
        size: u64,
        etag: &str,
    ) -> Result<(), MoveFailure> {
        let (found_size, found_etag) = self.head_destination(spec, destination_key).await?;
        if found_size != size as i64 {
            return Err(permanent(format!(
                "the destination {destination_key:?} holds {found_size} bytes, not the {size} listed"
            )));
        }
        if bare(&found_etag) != bare(etag) {
            return Err(permanent(format!(
                "the destination {destination_key:?} has ETag {found_etag}, not the copy's {etag}"
            )));
        }
        Ok(())
    }

    /// The source is gone: the file counts as moved only if the destination holds the
    /// listed object ([`holds_listed_object`]). `recorded_copy` is the ETag of the copy
    /// that a delivery recorded before deleting the source, read after the source was
    /// found gone.
    pub async fn verify_moved(
        &self,
        spec: &RunSpec,
        file: &ListedFile,
        recorded_copy: Option<&str>,
    ) -> Result<(), MoveFailure> {
        let destination_key = spec
            .destination_key(&file.key)
            .map_err(|e| permanent(e.to_string()))?;
        let destination_key = destination_key.as_str();
        let gone = |what: String| {
            permanent(format!(
                "the source is gone (deleted after it was listed) and the destination {destination_key:?} {what}"
            ))
        };
        let (size, etag) = match self.head_destination(spec, destination_key).await {
            Ok(found) => found,
            Err(failure) if failure.transient => return Err(failure),
            Err(failure) => return Err(gone(failure.reason)),
        };
        holds_listed_object(file, recorded_copy, size, &etag).map_err(gone)
    }

    /// The destination's size and ETag; a missing destination is a permanent failure
    /// that says so.
    async fn head_destination(
        &self,
        spec: &RunSpec,
        destination_key: &str,
    ) -> Result<(i64, String), MoveFailure> {
        let head = self
            .s3
            .head_object()
            .bucket(&spec.destination.bucket)
            .key(destination_key)
            .send()
            .await;
        match head {
            Ok(h) => Ok((h.content_length.unwrap_or(-1), h.e_tag.unwrap_or_default())),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => {
                Err(permanent("does not exist".into()))
            }
            Err(err) => Err(AwsError::from_sdk("HeadObject", err).into()),
        }
    }

    /// Deletes verified sources, each only while it still has the listed ETag, so a
    /// source rewritten after the copy is kept. Keys XML can carry go 1,000 to a
    /// `DeleteObjects`; the others, whose key must travel in the URL, one `DeleteObject`
    /// each. Returns each file's result, in the order given.
    pub async fn delete_sources(
        &self,
        bucket: &str,
        files: &[&ListedFile],
    ) -> Vec<Result<(), MoveFailure>> {
        let (carried, in_url): (Vec<usize>, Vec<usize>) =
            (0..files.len()).partition(|&i| xml_can_carry(&files[i].key));
        let mut results: Vec<Option<Result<(), MoveFailure>>> = vec![None; files.len()];
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
    ) -> Vec<Result<(), MoveFailure>> {
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
                        let failure = delete_failure(&code, e.message.as_deref().unwrap_or(""))?;
                        Some((e.key?, failure))
                    })
                    .collect();
                files
                    .iter()
                    .map(|f| errors.remove(&f.key).map_or(Ok(()), Err))
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

    async fn delete_object(&self, bucket: &str, file: &ListedFile) -> Result<(), MoveFailure> {
        let sent = self
            .s3
            .delete_object()
            .bucket(bucket)
            .key(&file.key)
            .if_match(&file.etag)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(err) => {
                let status = err.raw_response().map(|r| r.status().as_u16());
                let err = AwsError::from_sdk("DeleteObject", err);
                let code = match status {
                    Some(412) => "PreconditionFailed",
                    Some(404) => "NoSuchKey",
                    _ => err.code.as_deref().unwrap_or_default(),
                };
                match delete_failure(code, &err.message) {
                    None => Ok(()),
                    Some(failure) => Err(MoveFailure {
                        transient: failure.transient || err.transient,
                        ..failure
                    }),
                }
            }
        }
    }
}

/// Whether a file is large enough to have a multipart upload recorded.
fn might_copy_in_parts(file: &ListedFile, settings: &SlaveSettings) -> bool {
    file.size >= settings.multipart_threshold || file.size > MAX_SINGLE_COPY
}

/// The parts of a multipart copy after one invocation's work on them.
enum PartsCopied {
    All(Vec<CompletedPart>),
    Unfinished { progressed: bool },
    UploadGone,
    SourceMissing,
}

/// What a failed conditional delete of a verified source means; `None` when the source
/// is gone already (an earlier, unanswered attempt deleted it), which is what was wanted.
fn delete_failure(code: &str, message: &str) -> Option<MoveFailure> {
    match code {
        "NoSuchKey" => None,
        // Two conditional deletes of one key at once (duplicate deliveries): the other
        // one is deleting it; the next round finds it gone.
        "ConditionalRequestConflict" => Some(MoveFailure {
            transient: true,
            reason: "copied and verified; another delete of the source was under way".into(),
        }),
        "PreconditionFailed" => Some(permanent(
            "the source was rewritten after it was copied; the new version is kept".into(),
        )),
        _ => Some(MoveFailure {
            transient: crate::error::is_transient_code(code),
            reason: format!(
                "copied and verified, but deleting the source failed: {code}: {message}"
            ),
        }),
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
        assert!(size <= MAX_PART_SIZE);
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

    #[test]
    fn a_multipart_etag_is_the_md5_of_the_parts_md5s() {
        // Two parts whose MD5s are those of "a" and "b": the ETag S3 (and moto) give.
        let parts = [
            "\"0cc175b9c0f1b6a831c399e269772661\"",
            "\"92eb5ffee6ae2fec3ad71c777531578f\"",
        ];
        assert_eq!(
            multipart_etag(&parts).as_deref(),
            Some("\"96e024ba2074fe77e8e965ba43a704be-2\"")
        );
        assert_eq!(multipart_etag(&["\"not-an-md5\""]), None);
    }

    #[test]
    fn large_objects_go_in_parts_unless_xml_cannot_carry_their_key() {
        let gib = 1 << 30;
        let threshold = 256 << 20;
        assert_eq!(copy_method(1, "k", threshold), Ok(CopyMethod::Whole));
        assert_eq!(
            copy_method(threshold, "k", threshold),
            Ok(CopyMethod::InParts)
        );
        assert_eq!(copy_method(6 * gib, "k", u64::MAX), Ok(CopyMethod::InParts));
        assert_eq!(
            copy_method(threshold, "k\u{1}", threshold),
            Ok(CopyMethod::Whole)
        );
        assert!(
            copy_method(6 * gib, "k\u{1}", threshold)
                .unwrap_err()
                .contains("5 GiB")
        );
    }

    #[test]
    fn a_destination_holds_the_listed_object_only_with_its_size_and_etag() {
        let file = ListedFile {
            key: "raw/a.csv".into(),
            size: 10,
            etag: "\"aaaa\"".into(),
        };
        assert_eq!(holds_listed_object(&file, None, 10, "\"aaaa\""), Ok(()));
        let other = holds_listed_object(&file, None, 10, "\"bbbb\"").unwrap_err();
        assert_eq!(other, "has ETag bbbb, not the listed object's aaaa");
        assert_eq!(
            holds_listed_object(&file, None, 11, "\"aaaa\"").unwrap_err(),
            "holds 11 bytes, not the 10 listed"
        );
        // a copy whose ETag differs from the listed one (multipart, KMS) is proven by the
        // ETag recorded before the source was deleted
        assert_eq!(
            holds_listed_object(&file, Some("\"cc-2\""), 10, "\"cc-2\""),
            Ok(())
        );
        assert!(holds_listed_object(&file, Some("\"cc-2\""), 10, "\"aaaa\"").is_err());
    }

    #[test]
    fn a_conditional_delete_that_finds_the_source_gone_has_done_its_work() {
        assert_eq!(delete_failure("NoSuchKey", ""), None);
        assert!(!delete_failure("PreconditionFailed", "").unwrap().transient);
        assert!(delete_failure("SlowDown", "slow").unwrap().transient);
        assert!(
            delete_failure("ConditionalRequestConflict", "")
                .unwrap()
                .transient
        );
        assert!(!delete_failure("AccessDenied", "no").unwrap().transient);
    }
}
