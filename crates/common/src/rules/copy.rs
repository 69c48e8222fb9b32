//! What a copy, its parts and a delete answer mean for a file and its source: how a
//! file is copied, when a copy is verified, when a source counts as moved, and what
//! each refusal says.

use serde::{Deserialize, Serialize};

use crate::rules::batch::ListedFile;
use crate::rules::failure::{AwsError, MoveFailure, is_transient_code};
use crate::rules::keys::xml_can_carry;
use crate::rules::outcomes::Outcome;

/// S3's smallest part size for all parts but the last.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part size.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;
/// `CopyObject` copies objects of at most 5 GiB; larger ones must be copied in parts.
pub const MAX_SINGLE_COPY: u64 = MAX_PART_SIZE;

/// What a run does with a destination key that already holds an object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IfExists {
    /// Replace it, as `mv` does.
    #[default]
    Overwrite,
    /// Leave the file where it is, recorded `skipped` with the reason.
    Skip,
    /// Fail the file, its source kept.
    Fail,
}

impl IfExists {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "overwrite" => Ok(IfExists::Overwrite),
            "skip" => Ok(IfExists::Skip),
            "fail" => Ok(IfExists::Fail),
            other => Err(format!("{other:?} is not one of overwrite, skip, fail")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IfExists::Overwrite => "overwrite",
            IfExists::Skip => "skip",
            IfExists::Fail => "fail",
        }
    }

    /// Whether copies are written only where no object exists (`If-None-Match: *`), so
    /// that the decision holds even against a writer racing the copy.
    pub fn keeps_existing(self) -> bool {
        self != IfExists::Overwrite
    }
}

/// Whose object a destination holds after a copy conditional on it not existing was
/// refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// It holds the listed object (size and ETag): this run's own earlier copy, whose
    /// answer was lost, or the same bytes written by someone else. The file is moved
    /// once its source goes.
    HoldsTheListedObject,
    /// Another object: the run's `if_destination_exists` decides.
    Occupied,
    /// No object: the refusal was the source's condition (it changed after listing).
    SourceChanged,
}

/// Reads a refused conditional copy from what `HeadObject` found at the destination
/// (`None`: nothing there). `recorded_copy` is the ETag an earlier delivery recorded for
/// its verified copy, where that differs from the listed one (see
/// [`holds_listed_object`]).
pub fn refused_copy(
    file: &ListedFile,
    recorded_copy: Option<&str>,
    found: Option<(i64, &str)>,
) -> Refused {
    match found {
        None => Refused::SourceChanged,
        Some((size, etag)) if holds_listed_object(file, recorded_copy, size, etag).is_ok() => {
            Refused::HoldsTheListedObject
        }
        Some(_) => Refused::Occupied,
    }
}

/// The outcome of a file whose destination holds another object, as the run asked.
pub fn existing_destination(mode: IfExists, destination_key: &str) -> Outcome {
    match mode {
        IfExists::Skip => Outcome::Skipped {
            reason: format!(
                "the destination {destination_key:?} exists and the run does not overwrite \
                 (if_destination_exists: skip); the source was left in place"
            ),
        },
        IfExists::Fail | IfExists::Overwrite => Outcome::Failed {
            reason: format!(
                "the destination {destination_key:?} exists and the run may not overwrite it \
                 (if_destination_exists: fail); the source was left in place"
            ),
        },
    }
}

/// The source version a move deletes once the key has no current object: the version it
/// copied, in a bucket that keeps versions, unless the run keeps them
/// (`keep_source_versions`). A version written after the listing is never the one
/// copied (copies are conditional on the listed ETag), so it is never deleted.
///
/// The version `null` (an object written before versioning was enabled, or while it was
/// suspended) is deleted only when the delete marker on top has an id of its own
/// (`marker`): where versioning is suspended, the delete already removed the `null`
/// version, and the marker, or an object written since, now has that id.
pub fn copied_version_to_delete<'a>(
    keep_source_versions: bool,
    copied: Option<&'a str>,
    marker: Option<&str>,
) -> Option<&'a str> {
    copied.filter(|version| {
        !keep_source_versions && (*version != "null" || marker.is_some_and(|m| m != "null"))
    })
}

/// The storage classes a run may ask its copies to be written in.
pub const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
];

/// The storage class a copy is written in: the run's when it names one, else the
/// source's as listed, so that moving data never changes what it costs to keep. `None`
/// stands for S3's default, `STANDARD`, which needs no header.
pub fn destination_class<'a>(run: Option<&'a str>, listed: Option<&'a str>) -> Option<&'a str> {
    run.or(listed).filter(|class| *class != "STANDARD")
}

/// The quotes S3 puts around ETags are not part of the value.
pub fn bare(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// A multipart ETag (`<md5>-<parts>`) is not the MD5 of the content.
pub fn is_content_md5(etag: &str) -> bool {
    !bare(etag).contains('-') && !bare(etag).is_empty()
}

/// Whether an object written with this server-side encryption (`x-amz-server-side-encryption`,
/// and whether a customer key was used) has its content MD5 as ETag: unencrypted and
/// SSE-S3 objects do, SSE-KMS and SSE-C objects do not.
pub fn encryption_keeps_md5(sse: Option<&str>, customer_key: bool) -> bool {
    !customer_key && matches!(sse, None | Some("AES256"))
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
pub enum CopyMethod {
    Whole,
    InParts,
}

/// Whole up to the multipart threshold; in parts from there, and always beyond 5 GiB.
/// A multipart upload names its key in the XML of its answers, so a destination key
/// that XML cannot carry is copied whole if it can be, and otherwise fails.
pub fn copy_method(size: u64, destination_key: &str, threshold: u64) -> Result<CopyMethod, String> {
    if !might_copy_in_parts(size, threshold) {
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

/// Whether a file is large enough to be copied in parts, and so to have a multipart
/// upload recorded.
pub fn might_copy_in_parts(size: u64, threshold: u64) -> bool {
    size >= threshold || size > MAX_SINGLE_COPY
}

/// Whether a whole copy first reads its source's `HeadObject`, checksums included: when
/// the copy keeps the source's KMS key (`keeps_source_kms_key`: a stack that keeps SSE-KMS
/// keys, a run that names none), which only that answer names; and when the copy's ETag
/// cannot prove it, so that the source's full-object checksum does instead: a listed
/// ETag that is no MD5 of the bytes (a source written in parts), or a copy encrypted
/// with the run's KMS key, whose ETag is none either. Otherwise the copy reporting the
/// listed MD5 proves it at no further request.
pub fn whole_copy_reads_source(
    listed_etag: &str,
    run_names_kms_key: bool,
    keeps_source_kms_key: bool,
) -> bool {
    keeps_source_kms_key || run_names_kms_key || !is_content_md5(listed_etag)
}

/// What a finished copy's ETag says before anything more is asked of S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyCheck {
    /// The copy reports the listed ETag: the destination holds the listed object.
    Verified,
    /// Both ETags should be content MD5s and they differ: the destination does not hold
    /// the listed bytes, unless the source turns out to be encrypted with SSE-KMS or
    /// SSE-C (one `HeadObject` of the source tells).
    DiffersUnlessSourceEncrypted,
    /// The ETags cannot be compared (a multipart source or copy, SSE-KMS): a
    /// `HeadObject` of the destination must show the listed size and the copy's ETag.
    CheckDestination,
}

/// Judges a copy by its ETag against the listed one; `copy_etag_is_md5` when S3 wrote
/// the copy so that its ETag is the MD5 of its bytes.
pub fn check_copy(listed_etag: &str, copy_etag: &str, copy_etag_is_md5: bool) -> CopyCheck {
    if bare(copy_etag) == bare(listed_etag) {
        CopyCheck::Verified
    } else if copy_etag_is_md5 && is_content_md5(listed_etag) {
        CopyCheck::DiffersUnlessSourceEncrypted
    } else {
        CopyCheck::CheckDestination
    }
}

/// The failure of a copy whose MD5 differs from its unencrypted source's.
pub fn copy_differs(destination_key: &str, copy_etag: &str, listed_etag: &str) -> MoveFailure {
    MoveFailure::permanent(format!(
        "the destination {destination_key:?} does not hold the listed bytes: its MD5 is {}, the source's {}; the source was left in place",
        bare(copy_etag),
        bare(listed_etag)
    ))
}

/// Whether the destination, found with `found_size` bytes and `found_etag`, holds what
/// was copied: `size` bytes and the copy's ETag. `Err` says what is wrong.
pub fn holds_copy(
    destination_key: &str,
    size: u64,
    copy_etag: &str,
    found_size: i64,
    found_etag: &str,
) -> Result<(), MoveFailure> {
    if found_size != size as i64 {
        return Err(MoveFailure::permanent(format!(
            "the destination {destination_key:?} holds {found_size} bytes, not the {size} listed"
        )));
    }
    if bare(found_etag) != bare(copy_etag) {
        return Err(MoveFailure::permanent(format!(
            "the destination {destination_key:?} has ETag {found_etag}, not the copy's {copy_etag}"
        )));
    }
    Ok(())
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

/// The failure of a file found gone whose destination does not hold it (`what` says
/// what the destination holds instead).
pub fn gone_without_copy(destination_key: &str, what: &str) -> MoveFailure {
    MoveFailure::permanent(format!(
        "the source is gone (deleted after it was listed) and the destination {destination_key:?} {what}"
    ))
}

/// What a refused request about the listed source means for the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRefusal {
    /// The source is gone: an earlier attempt may have moved it.
    Gone,
    /// The file fails for this reason, its source kept.
    Fails(MoveFailure),
}

/// Whether a refused `GetObjectTagging` of the source only says the server keeps no tags
/// at all: an S3-compatible server without object tagging answers `NotImplemented`, and
/// its objects have no tags to carry to the copy. Any other refusal fails the file.
pub fn has_no_tagging(err: &AwsError) -> bool {
    err.code_is("NotImplemented")
}

/// What a refused copy (or `HeadObject`) of the source means. Every request on the
/// source is conditional on the listed ETag: a refused condition is a source rewritten
/// since it was listed. A `HeadObject` answer has no body, so its status 412 stands in
/// for the code of a refused condition.
pub fn source_refusal(err: AwsError, status: Option<u16>, file: &ListedFile) -> SourceRefusal {
    if status == Some(412) {
        return SourceRefusal::Fails(source_changed(file));
    }
    if is_archived(&err) {
        let class = file.storage_class.as_deref().unwrap_or("an archive tier");
        return SourceRefusal::Fails(MoveFailure::permanent(format!(
            "the object is archived ({class}) and S3 copies only restored objects: restore it \
             (RestoreObject, or the console's Initiate restore) and run again; the source was \
             left in place"
        )));
    }
    if err.code_is("NoSuchKey") || err.code_is("NotFound") {
        return SourceRefusal::Gone;
    }
    if err.code_is("PreconditionFailed") {
        return SourceRefusal::Fails(source_changed(file));
    }
    SourceRefusal::Fails(err.into())
}

/// Whether S3 refused to read the source because it is archived: `InvalidObjectState`
/// on AWS, `ObjectNotInActiveTierError` as the API models it.
fn is_archived(err: &AwsError) -> bool {
    err.code_is("InvalidObjectState") || err.code_is("ObjectNotInActiveTierError")
}

/// The failure of a source that changed after it was listed.
pub fn source_changed(file: &ListedFile) -> MoveFailure {
    MoveFailure::permanent(format!(
        "the source changed after it was listed (its ETag is no longer {}); it was left in place",
        file.etag
    ))
}

/// What a refused `UploadPartCopy` means for the multipart copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartRefusal {
    /// The upload is gone (completed by an earlier attempt, or aborted).
    UploadGone,
    /// The source is gone: no part can be copied any more.
    SourceGone,
    /// The copy fails for this reason.
    Fails(MoveFailure),
}

pub fn part_refusal(err: AwsError, file: &ListedFile) -> PartRefusal {
    if is_archived(&err) {
        return match source_refusal(err, None, file) {
            SourceRefusal::Fails(failure) => PartRefusal::Fails(failure),
            SourceRefusal::Gone => PartRefusal::SourceGone,
        };
    }
    if err.code_is("NoSuchUpload") {
        PartRefusal::UploadGone
    } else if err.code_is("NoSuchKey") {
        PartRefusal::SourceGone
    } else if err.code_is("PreconditionFailed") {
        PartRefusal::Fails(source_changed(file))
    } else {
        PartRefusal::Fails(err.into())
    }
}

/// What a refused conditional delete of a verified source means; `None` when the source
/// is gone already (an earlier, unanswered attempt deleted it), which is what was
/// wanted. A `DeleteObject` answer may carry only a status: 412 stands for a refused
/// condition and 404 for a missing key.
pub fn delete_refusal(status: Option<u16>, code: &str, message: &str) -> Option<MoveFailure> {
    let code = match status {
        Some(412) => "PreconditionFailed",
        Some(404) => "NoSuchKey",
        _ => code,
    };
    match code {
        "NoSuchKey" => None,
        // Two conditional deletes of one key at once (duplicate deliveries): the other
        // one is deleting it; the next round finds it gone.
        "ConditionalRequestConflict" => Some(MoveFailure {
            transient: true,
            reason: "copied and verified; another delete of the source was under way".into(),
        }),
        "PreconditionFailed" => Some(MoveFailure::permanent(
            "the source was rewritten after it was copied; the new version is kept",
        )),
        _ => Some(MoveFailure {
            transient: is_transient_code(code),
            reason: format!(
                "copied and verified, but deleting the source failed: {code}: {message}"
            ),
        }),
    }
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
        // as the SDK names them in a copy's or a HEAD's answer
        use aws_sdk_s3::types::ServerSideEncryption as Sse;
        assert!(encryption_keeps_md5(Some(Sse::Aes256.as_str()), false));
        assert!(!encryption_keeps_md5(Some(Sse::AwsKms.as_str()), false));
        assert!(!encryption_keeps_md5(Some(Sse::AwsKmsDsse.as_str()), false));
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
            storage_class: None,
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
        assert_eq!(delete_refusal(None, "NoSuchKey", ""), None);
        assert_eq!(delete_refusal(Some(404), "", ""), None);
        assert!(
            !delete_refusal(None, "PreconditionFailed", "")
                .unwrap()
                .transient
        );
        let rewritten = delete_refusal(Some(412), "", "").unwrap();
        assert!(rewritten.reason.contains("rewritten"), "{rewritten}");
        assert!(delete_refusal(None, "SlowDown", "slow").unwrap().transient);
        assert!(
            delete_refusal(None, "ConditionalRequestConflict", "")
                .unwrap()
                .transient
        );
        assert!(
            !delete_refusal(None, "AccessDenied", "no")
                .unwrap()
                .transient
        );
    }

    #[test]
    fn a_copy_is_verified_by_its_etag_or_checked_at_the_destination() {
        let md5 = "\"9b2cf535f27731c974343645a3985328\"";
        let other = "\"0cc175b9c0f1b6a831c399e269772661\"";
        assert_eq!(check_copy(md5, md5, true), CopyCheck::Verified);
        assert_eq!(
            check_copy(md5, other, true),
            CopyCheck::DiffersUnlessSourceEncrypted
        );
        // a copy encrypted with KMS, or of a multipart source: nothing to compare
        assert_eq!(check_copy(md5, other, false), CopyCheck::CheckDestination);
        assert_eq!(
            check_copy("\"abc-2\"", other, true),
            CopyCheck::CheckDestination
        );
        assert!(holds_copy("k", 10, other, 10, other).is_ok());
        assert!(holds_copy("k", 10, other, 9, other).is_err());
        assert!(holds_copy("k", 10, other, 10, md5).is_err());
    }

    #[test]
    fn a_whole_copy_reads_its_source_only_when_its_etag_cannot_prove_it_or_a_key_is_kept() {
        let md5 = "\"9b2cf535f27731c974343645a3985328\"";
        // an MD5 listed, nothing encrypted by key: the copy's ETag proves it
        assert!(!whole_copy_reads_source(md5, false, false));
        // a source written in parts, or a copy under the run's KMS key: its checksum does
        assert!(whole_copy_reads_source("\"abc-2\"", false, false));
        assert!(whole_copy_reads_source(md5, true, false));
        // the source's KMS key is kept: only its HeadObject names it
        assert!(whole_copy_reads_source(md5, false, true));
    }

    #[test]
    fn an_existing_destination_is_kept_as_the_run_asks_unless_it_holds_the_listed_object() {
        let file = ListedFile {
            key: "raw/a.csv".into(),
            size: 10,
            etag: "\"aaaa\"".into(),
            storage_class: None,
        };
        assert_eq!(
            refused_copy(&file, None, Some((10, "\"aaaa\""))),
            Refused::HoldsTheListedObject
        );
        assert_eq!(
            refused_copy(&file, None, Some((10, "\"bbbb\""))),
            Refused::Occupied
        );
        assert_eq!(
            refused_copy(&file, None, Some((11, "\"aaaa\""))),
            Refused::Occupied
        );
        assert_eq!(refused_copy(&file, None, None), Refused::SourceChanged);
        // a copy whose ETag is not the listed one (KMS, in parts) is known by its record
        assert_eq!(
            refused_copy(&file, Some("\"cc-2\""), Some((10, "\"cc-2\""))),
            Refused::HoldsTheListedObject
        );
        let Outcome::Skipped { reason } = existing_destination(IfExists::Skip, "refined/a.csv")
        else {
            panic!("skip skips")
        };
        assert!(reason.contains("\"refined/a.csv\" exists") && reason.ends_with("left in place"));
        assert!(matches!(
            existing_destination(IfExists::Fail, "refined/a.csv"),
            Outcome::Failed { reason } if reason.contains("if_destination_exists: fail")
        ));
        assert_eq!(IfExists::parse("skip"), Ok(IfExists::Skip));
        assert!(
            IfExists::parse("Skip")
                .unwrap_err()
                .contains("overwrite, skip, fail")
        );
        assert!(!IfExists::Overwrite.keeps_existing() && IfExists::Fail.keeps_existing());
    }

    #[test]
    fn the_copied_version_goes_unless_the_run_keeps_versions() {
        assert_eq!(
            copied_version_to_delete(false, Some("v2"), Some("m")),
            Some("v2")
        );
        assert_eq!(
            copied_version_to_delete(false, Some("v2"), None),
            Some("v2")
        );
        assert_eq!(copied_version_to_delete(true, Some("v2"), Some("m")), None);
        assert_eq!(
            copied_version_to_delete(false, None, Some("m")),
            None,
            "no versions"
        );
        // an object from before versioning was enabled: its marker has an id of its own
        assert_eq!(
            copied_version_to_delete(false, Some("null"), Some("m")),
            Some("null")
        );
        // versioning suspended: the marker or a newer object has that id
        assert_eq!(
            copied_version_to_delete(false, Some("null"), Some("null")),
            None
        );
        assert_eq!(copied_version_to_delete(false, Some("null"), None), None);
    }

    #[test]
    fn a_copy_keeps_the_source_class_unless_the_run_names_one() {
        assert_eq!(destination_class(None, None), None);
        assert_eq!(
            destination_class(None, Some("STANDARD_IA")),
            Some("STANDARD_IA")
        );
        assert_eq!(
            destination_class(Some("GLACIER_IR"), Some("STANDARD_IA")),
            Some("GLACIER_IR")
        );
        assert_eq!(
            destination_class(Some("STANDARD"), Some("STANDARD_IA")),
            None
        );
        assert!(STORAGE_CLASSES.contains(&"INTELLIGENT_TIERING"));
    }

    #[test]
    fn a_server_without_tagging_has_no_tags_to_carry_but_a_refusal_fails() {
        let refused = |code: &str| AwsError {
            operation: "GetObjectTagging",
            code: Some(code.into()),
            message: code.into(),
            transient: false,
        };
        assert!(has_no_tagging(&refused("NotImplemented")));
        assert!(!has_no_tagging(&refused("AccessDenied")));
        assert!(!has_no_tagging(&refused("NoSuchKey")));
    }

    #[test]
    fn an_archived_source_fails_with_what_to_do() {
        let mut file = ListedFile {
            key: "raw/cold.csv".into(),
            size: 1,
            etag: "\"e\"".into(),
            storage_class: Some("GLACIER".into()),
        };
        let refused = AwsError {
            operation: "CopyObject",
            code: Some("InvalidObjectState".into()),
            message:
                "InvalidObjectState: The operation is not valid for the object's storage class"
                    .into(),
            transient: false,
        };
        let SourceRefusal::Fails(failure) = source_refusal(refused.clone(), None, &file) else {
            panic!("an archived source is not gone");
        };
        assert!(!failure.transient);
        assert!(
            failure
                .reason
                .starts_with("the object is archived (GLACIER)"),
            "{failure}"
        );
        assert!(
            failure.reason.contains("RestoreObject") && failure.reason.ends_with("left in place")
        );
        file.storage_class = None;
        let SourceRefusal::Fails(failure) = source_refusal(refused, None, &file) else {
            panic!("an archived source is not gone");
        };
        assert!(failure.reason.contains("(an archive tier)"), "{failure}");
    }

    #[test]
    fn a_refused_request_on_the_source_says_whether_it_is_gone_or_changed() {
        let file = ListedFile {
            key: "raw/a.csv".into(),
            size: 1,
            etag: "\"e\"".into(),
            storage_class: None,
        };
        let refused = |code: &str| AwsError {
            operation: "CopyObject",
            code: Some(code.into()),
            message: code.into(),
            transient: false,
        };
        assert_eq!(
            source_refusal(refused("NoSuchKey"), None, &file),
            SourceRefusal::Gone
        );
        assert_eq!(
            source_refusal(refused("PreconditionFailed"), None, &file),
            SourceRefusal::Fails(source_changed(&file))
        );
        assert_eq!(
            source_refusal(AwsError::permanent("HeadObject", "412"), Some(412), &file),
            SourceRefusal::Fails(source_changed(&file))
        );
        assert!(matches!(
            source_refusal(refused("AccessDenied"), None, &file),
            SourceRefusal::Fails(f) if !f.transient && f.reason.contains("AccessDenied")
        ));
        assert_eq!(
            part_refusal(refused("NoSuchUpload"), &file),
            PartRefusal::UploadGone
        );
        assert_eq!(
            part_refusal(refused("NoSuchKey"), &file),
            PartRefusal::SourceGone
        );
    }
}
