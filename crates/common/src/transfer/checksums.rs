//! The SDK's checksum fields, to and from [`crate::rules::checksum`]'s types.

use aws_sdk_s3::operation::complete_multipart_upload::builders::CompleteMultipartUploadFluentBuilder;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::types::{self, ChecksumType, CompletedPart, CopyObjectResult};

use crate::rules::checksum::{Checksum, ChecksumAlgorithm, Reported};

/// What S3 reports, given its five checksum fields and the checksum type.
fn reported(
    crc64nvme: Option<&str>,
    crc32c: Option<&str>,
    crc32: Option<&str>,
    sha256: Option<&str>,
    sha1: Option<&str>,
    checksum_type: Option<&ChecksumType>,
) -> Reported {
    use ChecksumAlgorithm::*;
    Reported::new(
        [
            (Crc64Nvme, crc64nvme),
            (Crc32c, crc32c),
            (Crc32, crc32),
            (Sha256, sha256),
            (Sha1, sha1),
        ],
        checksum_type.map(|t| t.as_str()),
    )
}

/// The checksums a `HeadObject` sent with checksum mode reports.
pub(super) fn of_head(head: &HeadObjectOutput) -> Reported {
    reported(
        head.checksum_crc64_nvme(),
        head.checksum_crc32_c(),
        head.checksum_crc32(),
        head.checksum_sha256(),
        head.checksum_sha1(),
        head.checksum_type(),
    )
}

/// The checksums a `CopyObject` reports of the object it wrote.
pub(super) fn of_copy(result: &CopyObjectResult) -> Reported {
    reported(
        result.checksum_crc64_nvme(),
        result.checksum_crc32_c(),
        result.checksum_crc32(),
        result.checksum_sha256(),
        result.checksum_sha1(),
        result.checksum_type(),
    )
}

/// A part's checksum of `algorithm`, as `UploadPartCopy` or `ListParts` reports it.
pub(super) fn of_part(
    algorithm: ChecksumAlgorithm,
    crc64nvme: Option<&str>,
    crc32c: Option<&str>,
    crc32: Option<&str>,
) -> Option<String> {
    let value = match algorithm {
        ChecksumAlgorithm::Crc64Nvme => crc64nvme,
        ChecksumAlgorithm::Crc32c => crc32c,
        ChecksumAlgorithm::Crc32 => crc32,
        // A copy in parts is made only with a CRC.
        ChecksumAlgorithm::Sha256 | ChecksumAlgorithm::Sha1 => None,
    };
    value.map(String::from)
}

pub(super) fn sdk_algorithm(algorithm: ChecksumAlgorithm) -> types::ChecksumAlgorithm {
    match algorithm {
        ChecksumAlgorithm::Crc64Nvme => types::ChecksumAlgorithm::Crc64Nvme,
        ChecksumAlgorithm::Crc32c => types::ChecksumAlgorithm::Crc32C,
        ChecksumAlgorithm::Crc32 => types::ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Sha256 => types::ChecksumAlgorithm::Sha256,
        ChecksumAlgorithm::Sha1 => types::ChecksumAlgorithm::Sha1,
    }
}

/// A part of a completed upload, with its checksum when the upload has one.
pub(super) fn completed_part(
    number: i32,
    etag: &str,
    checksum: Option<&Checksum>,
) -> CompletedPart {
    let part = CompletedPart::builder().part_number(number).e_tag(etag);
    let part = match checksum {
        None => part,
        Some(c) => match c.algorithm {
            ChecksumAlgorithm::Crc64Nvme => part.checksum_crc64_nvme(&c.value),
            ChecksumAlgorithm::Crc32c => part.checksum_crc32_c(&c.value),
            ChecksumAlgorithm::Crc32 => part.checksum_crc32(&c.value),
            ChecksumAlgorithm::Sha256 => part.checksum_sha256(&c.value),
            ChecksumAlgorithm::Sha1 => part.checksum_sha1(&c.value),
        },
    };
    part.build()
}

/// A completion that gives S3 the whole object's expected checksum, which S3 checks
/// against the checksum it computes from the parts before it completes.
pub(super) fn expecting(
    request: CompleteMultipartUploadFluentBuilder,
    checksum: Option<&Checksum>,
) -> CompleteMultipartUploadFluentBuilder {
    let Some(c) = checksum else {
        return request;
    };
    let request = request.checksum_type(ChecksumType::FullObject);
    match c.algorithm {
        ChecksumAlgorithm::Crc64Nvme => request.checksum_crc64_nvme(&c.value),
        ChecksumAlgorithm::Crc32c => request.checksum_crc32_c(&c.value),
        ChecksumAlgorithm::Crc32 => request.checksum_crc32(&c.value),
        ChecksumAlgorithm::Sha256 => request.checksum_sha256(&c.value),
        ChecksumAlgorithm::Sha1 => request.checksum_sha1(&c.value),
    }
}
