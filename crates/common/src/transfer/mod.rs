//! Moving objects on S3: copy, verify, and only then delete the source. What each
//! answer means is for [`crate::rules::copy`] to say; this module makes the requests.

mod checksums;
mod delete;
mod multipart;
mod regions;
#[cfg(test)]
mod tests;

pub use delete::Deleted;
pub use regions::{RunClients, S3Clients};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::head_object::{HeadObjectError, HeadObjectOutput};
use aws_sdk_s3::types::{ChecksumMode, CopyObjectResult, ServerSideEncryption, StorageClass};

use crate::config::SlaveSettings;
use crate::deadline::{Deadlines, bounded};
use crate::error::AwsError;
use crate::rules::batch::ListedFile;
use crate::rules::checksum::{Checksum, Reported, Verification, check_checksum};
use crate::rules::copy::{
    CopyCheck, CopyMethod, Refused, SourceRefusal, check_copy, copy_differs, copy_method,
    destination_class, encryption_keeps_md5, gone_without_copy, holds_copy, holds_listed_object,
    might_copy_in_parts, refused_copy, source_changed, source_refusal, whole_copy_reads_source,
};
use crate::rules::encryption::{Encryption, requested};
use crate::rules::failure::MoveFailure;
use crate::rules::keys::{copy_source, too_long};
use crate::rules::manifest::NOT_FOUND;
use crate::rules::run::{PlannedMove, RunId, RunSpec};
use crate::store::{SlaveRecords, StoreError};

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

/// What a copy achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutcome {
    /// The destination is verified to hold the listed object, whose copy has this ETag;
    /// the source is still there, to be deleted. `source_version` is the version copied,
    /// in a bucket that keeps versions.
    Verified {
        etag: String,
        source_version: Option<String>,
        verification: Verification,
    },
    /// The source is gone (an earlier attempt may have moved it): whether the file counts
    /// as moved is for [`Mover::verify_moved`] to say, with the copy's ETag recorded for it.
    SourceGone,
    /// Time ran out first. A multipart copy's finished parts are kept for the next
    /// invocation; `progressed` when this invocation copied some of them.
    Unfinished { progressed: bool },
    /// The destination holds another object, and the run does not overwrite
    /// (`if_destination_exists`): the source stays.
    DestinationExists,
}

/// The encryption headers a copy is sent with ([`requested`]).
#[derive(Default)]
struct EncryptionHeaders {
    server_side_encryption: Option<ServerSideEncryption>,
    kms_key_id: Option<String>,
    bucket_key_enabled: Option<bool>,
}

/// What a copy asks to be encrypted with: the run's KMS key, else, in a stack that keeps
/// SSE-KMS keys (`read_source_encryption`), the source's KMS key and Bucket Key setting
/// as its `HeadObject` shows them; otherwise nothing (the destination bucket's default).
fn encryption_headers(
    spec: &RunSpec,
    read_source_encryption: bool,
    source: Option<&HeadObjectOutput>,
) -> EncryptionHeaders {
    let source = source.filter(|_| read_source_encryption && spec.kms_key_id.is_none());
    let reported = source.map(|head| {
        Encryption::reported(
            head.server_side_encryption.as_ref().map(|s| s.as_str()),
            head.ssekms_key_id.as_deref(),
            head.sse_customer_algorithm.is_some(),
        )
    });
    let Some(asked) = requested(spec.kms_key_id.as_deref(), reported.as_ref()) else {
        return EncryptionHeaders::default();
    };
    EncryptionHeaders {
        server_side_encryption: asked.header().map(ServerSideEncryption::from),
        kms_key_id: asked.kms_key_id().map(String::from),
        bucket_key_enabled: source.and_then(|head| head.bucket_key_enabled),
    }
}

/// `If-None-Match: *` when the run keeps existing destinations.
fn if_none_match(spec: &RunSpec) -> Option<String> {
    spec.if_destination_exists
        .keeps_existing()
        .then(|| "*".to_string())
}

/// The storage class a copy of `file` is written in ([`destination_class`]).
fn storage_class(spec: &RunSpec, file: &ListedFile) -> Option<StorageClass> {
    destination_class(spec.storage_class.as_deref(), file.storage_class.as_deref())
        .map(StorageClass::from)
}

/// A refused `HeadObject` of the listed source: what it means, and the error itself.
struct RefusedSource {
    refusal: SourceRefusal,
    error: AwsError,
}

/// What the destination holds after a copy; its ETag is what the copy reported.
enum Copied {
    Done {
        etag: String,
        /// Whether S3 wrote the copy so that its ETag is the MD5 of its bytes (no SSE-KMS
        /// or SSE-C encryption, and not a multipart copy).
        etag_is_md5: bool,
        /// The source version copied, when the source bucket keeps versions.
        source_version: Option<String>,
        /// What proves the copy's content beyond its ETag.
        proof: ChecksumProof,
        /// Whether the source's ETag is the MD5 of its bytes, when its `HeadObject` was
        /// read before the copy (see [`encryption_keeps_md5`]).
        source_etag_is_md5: Option<bool>,
    },
    SourceMissing,
    Unfinished {
        progressed: bool,
    },
    /// A copy conditional on the destination not existing was refused.
    DestinationTaken,
}

/// What proves a copy's content beyond its ETag: the source's full-object checksum,
/// which S3 computed the copy's from the bytes it wrote.
enum ChecksumProof {
    /// Nothing: size and ETag judge the copy.
    None,
    /// A whole copy made naming the source's checksum algorithm reported the source's
    /// value for the copy. AWS documents that a copy naming it has S3 compute the
    /// checksum; a store that carries the source's value over would report it too, so
    /// the destination's size and ETag are still checked.
    Reported,
    /// A copy in parts completed against the source's full-object CRC, which S3 computed
    /// from the copied parts before it would complete; the destination must report it.
    AtDestination(Checksum),
}

impl ChecksumProof {
    fn at_destination(checksum: Option<Checksum>) -> Self {
        checksum.map_or(ChecksumProof::None, ChecksumProof::AtDestination)
    }
}

/// Whether a `HeadObject` was refused access (403), as one with checksum mode is on an
/// SSE-KMS object by a role without kms:Decrypt of its key.
fn refused_access(
    head: &Result<HeadObjectOutput, SdkError<HeadObjectError, HttpResponse>>,
) -> bool {
    head.as_ref()
        .err()
        .and_then(|err| err.raw_response())
        .is_some_and(|r| r.status().as_u16() == 403)
}

/// Whether the object `head` shows has the MD5 of its bytes as ETag ([`encryption_keeps_md5`]).
fn has_md5_etag(head: &HeadObjectOutput) -> bool {
    encryption_keeps_md5(
        head.server_side_encryption.as_ref().map(|s| s.as_str()),
        head.sse_customer_algorithm.is_some(),
    )
}

/// A destination object as `HeadObject` shows it.
pub(super) struct Found {
    size: i64,
    etag: String,
    checksums: Reported,
}

pub struct Mover<'a> {
    s3: &'a RunClients,
    settings: &'a SlaveSettings,
    records: &'a SlaveRecords,
    run: &'a RunId,
    deadlines: Deadlines,
}

impl<'a> Mover<'a> {
    /// A mover for `run`'s files, which keeps its multipart copies' progress in `records`.
    pub fn new(
        s3: &'a RunClients,
        settings: &'a SlaveSettings,
        records: &'a SlaveRecords,
        run: &'a RunId,
        deadlines: Deadlines,
    ) -> Self {
        Mover {
            s3,
            settings,
            records,
            run,
            deadlines,
        }
    }

    /// Copies one file to its destination and verifies it there. The source stays.
    ///
    /// The copy is conditional on the listed ETag, so S3 copies exactly the listed
    /// version. Verification then costs no request when the copy reports the listed
    /// ETag, and otherwise one `HeadObject` ([`check_copy`] says which). A source that
    /// is gone is answered as such, for [`Mover::verify_moved`].
    ///
    /// `recorded_copy` is the ETag an earlier delivery recorded for its verified copy of
    /// this file, if any: a copy refused because the destination exists may be that one.
    pub async fn copy_verified(
        &self,
        spec: &RunSpec,
        planned: &PlannedMove,
        recorded_copy: Option<&str>,
    ) -> Result<CopyOutcome, MoveFailure> {
        let (file, destination_key) = (&planned.file, planned.destination_key.as_str());
        if file.is_not_found() {
            return Err(MoveFailure::permanent(NOT_FOUND));
        }
        if let Some(reason) = too_long(destination_key) {
            return Err(MoveFailure::permanent(reason));
        }
        let method = copy_method(
            file.size,
            destination_key,
            self.settings.multipart_threshold,
        )
        .map_err(MoveFailure::permanent)?;
        let copied = match method {
            CopyMethod::Whole => self.copy_whole(spec, planned).await?,
            CopyMethod::InParts => self.copy_in_parts(spec, planned).await?,
        };
        let (etag, etag_is_md5, source_version, proof, source_etag_is_md5) = match copied {
            Copied::Unfinished { progressed } => return Ok(CopyOutcome::Unfinished { progressed }),
            Copied::SourceMissing => return Ok(CopyOutcome::SourceGone),
            Copied::DestinationTaken => {
                return self.after_refused_copy(spec, planned, recorded_copy).await;
            }
            Copied::Done {
                etag,
                etag_is_md5,
                source_version,
                proof,
                source_etag_is_md5,
            } => (etag, etag_is_md5, source_version, proof, source_etag_is_md5),
        };
        // The ETag first: an MD5 of the bytes S3 wrote that differs from the listed one
        // fails the copy whatever its checksum says.
        let verification = match check_copy(&file.etag, &etag, etag_is_md5) {
            // The copy's ETag is the listed MD5 of the bytes.
            CopyCheck::Verified => Verification::Etag,
            CopyCheck::DiffersUnlessSourceEncrypted
                if match source_etag_is_md5 {
                    Some(known) => known,
                    None => self.source_etag_is_md5(spec, file).await?,
                } =>
            {
                return Err(copy_differs(destination_key, &etag, &file.etag));
            }
            CopyCheck::DiffersUnlessSourceEncrypted | CopyCheck::CheckDestination => {
                let at_destination = matches!(proof, ChecksumProof::AtDestination(_));
                let found = self
                    .head_destination(spec, destination_key, at_destination)
                    .await?;
                holds_copy(destination_key, file.size, &etag, found.size, &found.etag)?;
                match &proof {
                    ChecksumProof::Reported => Verification::Checksum,
                    ChecksumProof::AtDestination(checksum) => {
                        check_checksum(destination_key, checksum, &found.checksums)?
                    }
                    ChecksumProof::None => Verification::Etag,
                }
            }
        };
        Ok(CopyOutcome::Verified {
            etag,
            source_version,
            verification,
        })
    }

    /// A copy conditional on the destination not existing was refused: what the
    /// destination holds says whose it is ([`refused_copy`]).
    async fn after_refused_copy(
        &self,
        spec: &RunSpec,
        planned: &PlannedMove,
        recorded_copy: Option<&str>,
    ) -> Result<CopyOutcome, MoveFailure> {
        let found = self
            .find_destination(spec, &planned.destination_key)
            .await?;
        let found_ref = found.as_ref().map(|(s, e)| (*s, e.as_str()));
        match refused_copy(&planned.file, recorded_copy, found_ref) {
            // The earlier copy's answer, with the version it copied, was lost: the source's
            // versions are left as they are.
            Refused::HoldsTheListedObject => Ok(CopyOutcome::Verified {
                etag: found.map(|(_, etag)| etag).unwrap_or_default(),
                source_version: None,
                verification: Verification::Etag,
            }),
            Refused::Occupied => Ok(CopyOutcome::DestinationExists),
            Refused::SourceChanged => Err(source_changed(&planned.file)),
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
            .head_listed_source(spec, file, false)
            .await
            .map_err(|refused| {
                match refused.refusal {
                    SourceRefusal::Fails(failure) => failure,
                    // Gone since the copy: the copy's MD5 still differs from the listed one.
                    SourceRefusal::Gone => refused.error.into(),
                }
            })?;
        Ok(has_md5_etag(&head))
    }

    /// The listed version of the source, as `HeadObject` shows it with its checksums:
    /// conditional on the listed ETag, so that a rewritten source is refused.
    /// `checksums` asks for its checksums too (on an SSE-KMS object, a use of its key).
    async fn head_listed_source(
        &self,
        spec: &RunSpec,
        file: &ListedFile,
        checksums: bool,
    ) -> Result<HeadObjectOutput, RefusedSource> {
        let head = self
            .s3
            .source
            .head_object()
            .bucket(&spec.source.bucket)
            .key(&file.key)
            .if_match(&file.etag)
            .set_checksum_mode(checksums.then_some(ChecksumMode::Enabled))
            .send()
            .await;
        // Checksum mode on an SSE-KMS object also needs kms:Decrypt of its key: refused,
        // the object is asked for again without its checksums, and the copy itself then
        // says what it is refused, as it would without checksums.
        if checksums && refused_access(&head) {
            return Box::pin(self.head_listed_source(spec, file, false)).await;
        }
        head.map_err(|e| {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let error = AwsError::from_sdk("HeadObject", e);
            RefusedSource {
                refusal: source_refusal(error.clone(), status, file),
                error,
            }
        })
    }

    async fn copy_whole(
        &self,
        spec: &RunSpec,
        planned: &PlannedMove,
    ) -> Result<Copied, MoveFailure> {
        let file = &planned.file;
        // The source's encryption and checksum, read first where the copy needs them
        // ([`whole_copy_reads_source`]), so that the one copy is made with them.
        let reads_source = whole_copy_reads_source(
            &file.etag,
            spec.kms_key_id.is_some(),
            spec.kms_key_id.is_none() && self.settings.read_source_encryption,
        );
        let source = if reads_source {
            match self.head_listed_source(spec, file, true).await {
                Ok(head) => Some(head),
                Err(refused) => {
                    return match refused.refusal {
                        SourceRefusal::Gone => Ok(Copied::SourceMissing),
                        SourceRefusal::Fails(failure) => Err(failure),
                    };
                }
            }
        } else {
            None
        };
        let encryption =
            encryption_headers(spec, self.settings.read_source_encryption, source.as_ref());
        let source_checksum = source
            .as_ref()
            .and_then(|head| checksums::of_head(head).full_object());
        let sent = self
            .s3
            .destination
            .copy_object()
            .bucket(&spec.destination.bucket)
            .key(&planned.destination_key)
            .copy_source(copy_source(&spec.source.bucket, &file.key))
            .copy_source_if_match(&file.etag)
            .set_storage_class(storage_class(spec, file))
            .set_server_side_encryption(encryption.server_side_encryption)
            .set_ssekms_key_id(encryption.kms_key_id)
            .set_bucket_key_enabled(encryption.bucket_key_enabled)
            .set_if_none_match(if_none_match(spec))
            .set_checksum_algorithm(
                source_checksum
                    .as_ref()
                    .map(|c| checksums::sdk_algorithm(c.algorithm)),
            )
            .send()
            .await;
        match sent {
            Ok(out) => {
                let etag_is_md5 = encryption_keeps_md5(
                    out.server_side_encryption.as_ref().map(|s| s.as_str()),
                    out.sse_customer_algorithm.is_some(),
                );
                let result = out
                    .copy_object_result
                    .unwrap_or_else(|| CopyObjectResult::builder().build());
                // A store that reports no checksum of the copy leaves it to size and ETag.
                let proof = match &source_checksum {
                    Some(source) => match check_checksum(
                        &planned.destination_key,
                        source,
                        &checksums::of_copy(&result),
                    )? {
                        Verification::Checksum => ChecksumProof::Reported,
                        Verification::Etag => ChecksumProof::None,
                    },
                    None => ChecksumProof::None,
                };
                Ok(Copied::Done {
                    etag: result.e_tag.unwrap_or_default(),
                    etag_is_md5,
                    source_version: out.copy_source_version_id,
                    proof,
                    source_etag_is_md5: source.as_ref().map(has_md5_etag),
                })
            }
            Err(err) => {
                let err = AwsError::from_sdk("CopyObject", err);
                // Both conditions answer 412: which one held is for the destination to say.
                if spec.if_destination_exists.keeps_existing() && err.code_is("PreconditionFailed")
                {
                    return Ok(Copied::DestinationTaken);
                }
                match source_refusal(err, None, file) {
                    SourceRefusal::Gone => Ok(Copied::SourceMissing),
                    SourceRefusal::Fails(failure) => Err(failure),
                }
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
        planned: &[&PlannedMove],
        deadlines: Deadlines,
    ) {
        let large = self.large(planned);
        bounded(
            large,
            self.settings.move_concurrency,
            deadlines,
            |planned| self.abandon_upload(spec, planned),
        )
        .await;
    }

    /// Files recorded moved: the record of each one's completed multipart upload goes.
    /// Best effort, within `deadlines`: what is left goes with the run's other items.
    pub async fn forget_uploads(&self, planned: &[&PlannedMove], deadlines: Deadlines) {
        let large = self.large(planned);
        bounded(
            large,
            self.settings.move_concurrency,
            deadlines,
            |planned| async move {
                let key = &planned.file.key;
                if let Err(e) = self.records.forget_upload(self.run, key, None).await {
                    tracing::warn!(key = %key, error = %e, "could not forget a finished upload");
                }
            },
        )
        .await;
    }

    /// The files large enough to have had a multipart upload recorded.
    fn large<'p>(&self, planned: &[&'p PlannedMove]) -> Vec<&'p PlannedMove> {
        let threshold = self.settings.multipart_threshold;
        planned
            .iter()
            .copied()
            .filter(|p| might_copy_in_parts(p.file.size, threshold))
            .collect()
    }

    /// The source is gone: the file counts as moved only if the destination holds the
    /// listed object ([`holds_listed_object`]). `recorded_copy` is the ETag of the copy
    /// that a delivery recorded before deleting the source, read after the source was
    /// found gone.
    pub async fn verify_moved(
        &self,
        spec: &RunSpec,
        planned: &PlannedMove,
        recorded_copy: Option<&str>,
    ) -> Result<(), MoveFailure> {
        let destination_key = planned.destination_key.as_str();
        let Found { size, etag, .. } =
            match self.head_destination(spec, destination_key, false).await {
                Ok(found) => found,
                Err(failure) if failure.transient => return Err(failure),
                Err(failure) => return Err(gone_without_copy(destination_key, &failure.reason)),
            };
        holds_listed_object(&planned.file, recorded_copy, size, &etag)
            .map_err(|what| gone_without_copy(destination_key, &what))
    }

    /// The destination's size and ETag, `None` when it does not exist; any other
    /// refusal is the failure.
    pub(super) async fn find_destination(
        &self,
        spec: &RunSpec,
        destination_key: &str,
    ) -> Result<Option<(i64, String)>, MoveFailure> {
        Ok(self
            .head_found(spec, destination_key, false)
            .await?
            .map(|found| (found.size, found.etag)))
    }

    /// The destination, with its checksums when `checksums` asks for them, `None` when
    /// it does not exist; any other refusal is the failure.
    async fn head_found(
        &self,
        spec: &RunSpec,
        destination_key: &str,
        checksums: bool,
    ) -> Result<Option<Found>, MoveFailure> {
        let head = self
            .s3
            .destination
            .head_object()
            .bucket(&spec.destination.bucket)
            .key(destination_key)
            .set_checksum_mode(checksums.then_some(ChecksumMode::Enabled))
            .send()
            .await;
        // Checksum mode on an SSE-KMS object also needs kms:Decrypt, which a role that
        // only writes with the destination key lacks: without the checksum, size and
        // ETag still judge the copy.
        if checksums && refused_access(&head) {
            return Box::pin(self.head_found(spec, destination_key, false)).await;
        }
        match head {
            Ok(h) => Ok(Some(Found {
                size: h.content_length.unwrap_or(-1),
                etag: h.e_tag.clone().unwrap_or_default(),
                checksums: checksums::of_head(&h),
            })),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(err) => Err(AwsError::from_sdk("HeadObject", err).into()),
        }
    }

    /// The destination's size, ETag and, when `checksums` asks, checksums; a missing
    /// destination is a permanent failure that says so.
    pub(super) async fn head_destination(
        &self,
        spec: &RunSpec,
        destination_key: &str,
        checksums: bool,
    ) -> Result<Found, MoveFailure> {
        self.head_found(spec, destination_key, checksums)
            .await?
            .ok_or_else(|| MoveFailure::permanent("does not exist"))
    }
}
