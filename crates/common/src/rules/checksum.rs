//! Content checksums: which checksum S3 reports for a whole object, whether a copy in
//! parts can be made with it, and whether a destination's checksum proves the copy.
//!
//! S3 keeps a checksum for every object written since its default integrity protections
//! (December 2024), CRC64NVME unless the writer chose another. A checksum is of the
//! whole object (`FULL_OBJECT`) unless the object was uploaded in parts with a
//! `COMPOSITE` checksum, a checksum of the parts' checksums (its value ends `-<parts>`),
//! which says nothing about a copy cut into other parts. An ETag is an MD5 of the bytes
//! only for objects written in one piece without SSE-KMS or SSE-C; a full-object checksum
//! verifies the others by content too, where S3 computes the copy's: a whole copy made
//! naming the algorithm, or a copy in parts completed naming the value.

use std::fmt;

use crate::rules::failure::MoveFailure;

/// The checksum algorithms whose values this project compares (S3 also keeps others,
/// such as SHA-512 and the XXHASH family; objects with only those are verified by size
/// and ETag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    Crc64Nvme,
    Crc32c,
    Crc32,
    Sha256,
    Sha1,
}

impl ChecksumAlgorithm {
    /// In the order a full-object checksum is preferred, when S3 reports several.
    pub const ALL: [ChecksumAlgorithm; 5] = [
        ChecksumAlgorithm::Crc64Nvme,
        ChecksumAlgorithm::Crc32c,
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Sha256,
        ChecksumAlgorithm::Sha1,
    ];

    /// S3's name of the algorithm.
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc64Nvme => "CRC64NVME",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Crc32 => "CRC32",
            ChecksumAlgorithm::Sha256 => "SHA256",
            ChecksumAlgorithm::Sha1 => "SHA1",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Whether S3 can give an object uploaded in parts a full-object checksum of this
    /// algorithm: only the CRCs combine across parts.
    pub fn combines_across_parts(self) -> bool {
        matches!(
            self,
            ChecksumAlgorithm::Crc64Nvme | ChecksumAlgorithm::Crc32c | ChecksumAlgorithm::Crc32
        )
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checksum of a whole object, as S3 reports it (base64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: ChecksumAlgorithm,
    pub value: String,
}

/// The checksums an answer of S3 (`HeadObject` with checksum mode, `CopyObject`,
/// `CompleteMultipartUpload`) reports, by algorithm, and the checksum type if it says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported {
    pub values: Vec<(ChecksumAlgorithm, String)>,
    pub checksum_type: Option<String>,
}

impl Reported {
    /// The values an answer carries, by algorithm (absent ones left out).
    pub fn new<'a>(
        values: impl IntoIterator<Item = (ChecksumAlgorithm, Option<&'a str>)>,
        checksum_type: Option<&str>,
    ) -> Self {
        Reported {
            values: values
                .into_iter()
                .filter_map(|(algorithm, value)| Some((algorithm, value?.to_string())))
                .collect(),
            checksum_type: checksum_type.map(String::from),
        }
    }

    /// The checksum of the whole object among those reported, if any: none for a
    /// `COMPOSITE` checksum, or a value that ends `-<parts>` (a checksum of checksums).
    pub fn full_object(&self) -> Option<Checksum> {
        if self.checksum_type.as_deref() == Some("COMPOSITE") {
            return None;
        }
        ChecksumAlgorithm::ALL.into_iter().find_map(|algorithm| {
            self.values
                .iter()
                .find(|(a, value)| *a == algorithm && !value.is_empty() && !value.contains('-'))
                .map(|(_, value)| Checksum {
                    algorithm,
                    value: value.clone(),
                })
        })
    }

    fn value_of(&self, algorithm: ChecksumAlgorithm) -> Option<&str> {
        self.values
            .iter()
            .find(|(a, _)| *a == algorithm)
            .map(|(_, value)| value.as_str())
    }
}

/// The checksum a copy in parts is made with and checked against: the source's, when
/// its algorithm combines across parts. S3 then computes the destination's full-object
/// checksum from the copied bytes and refuses to complete an upload whose checksum
/// differs from the one given.
pub fn for_copy_in_parts(source: Option<Checksum>) -> Option<Checksum> {
    source.filter(|c| c.algorithm.combines_across_parts())
}

/// How a copy was verified, for the run's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verification {
    /// By size and ETag (an MD5 of the bytes where S3 makes it one).
    #[default]
    Etag,
    /// By the source's full-object checksum, which the destination reports too.
    Checksum,
}

/// What the destination's checksums (as a whole copy made naming `source`'s algorithm
/// reports them, or `HeadObject` of a copy in parts completed with `source`) say of the
/// copy: `Ok(Verification::Checksum)` when the destination reports the same algorithm
/// with the same value, `Ok(Verification::Etag)` when it reports no full-object checksum
/// of that algorithm (an S3-compatible store that keeps none, or made a composite one of
/// the parts: the size and ETag checks stand alone), and `Err` when the value differs,
/// which means the destination does not hold the source's bytes.
pub fn check_checksum(
    destination_key: &str,
    source: &Checksum,
    destination: &Reported,
) -> Result<Verification, MoveFailure> {
    if destination.checksum_type.as_deref() == Some("COMPOSITE") {
        return Ok(Verification::Etag);
    }
    match destination.value_of(source.algorithm) {
        None | Some("") => Ok(Verification::Etag),
        Some(composite) if composite.contains('-') => Ok(Verification::Etag),
        Some(found) if found == source.value => Ok(Verification::Checksum),
        Some(found) => Err(MoveFailure::permanent(format!(
            "the destination {destination_key:?} does not hold the listed bytes: its {} checksum is {found}, the source's {}; the source was left in place",
            source.algorithm, source.value
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChecksumAlgorithm::*;

    fn reported(values: &[(ChecksumAlgorithm, &str)], kind: Option<&str>) -> Reported {
        Reported::new(values.iter().map(|(a, v)| (*a, Some(*v))), kind)
    }

    #[test]
    fn a_full_object_checksum_is_found_and_a_composite_one_is_not() {
        let crc = Checksum {
            algorithm: Crc32,
            value: "AAAAAA==".into(),
        };
        assert_eq!(
            reported(&[(Crc32, "AAAAAA==")], None).full_object(),
            Some(crc.clone())
        );
        assert_eq!(
            reported(&[(Crc32, "AAAAAA==")], Some("FULL_OBJECT")).full_object(),
            Some(crc)
        );
        assert_eq!(
            reported(&[(Crc32, "AAAAAA==")], Some("COMPOSITE")).full_object(),
            None
        );
        assert_eq!(reported(&[(Sha256, "abc=-3")], None).full_object(), None);
        assert_eq!(reported(&[(Crc32, "")], None).full_object(), None);
        assert_eq!(reported(&[], None).full_object(), None);
        // several: the preferred algorithm wins
        assert_eq!(
            reported(&[(Sha1, "s"), (Crc64Nvme, "c")], None)
                .full_object()
                .map(|c| c.algorithm),
            Some(Crc64Nvme)
        );
    }

    #[test]
    fn only_a_crc_is_carried_into_a_copy_in_parts() {
        for algorithm in ChecksumAlgorithm::ALL {
            let source = Checksum {
                algorithm,
                value: "v".into(),
            };
            assert_eq!(
                for_copy_in_parts(Some(source.clone())).is_some(),
                matches!(algorithm, Crc64Nvme | Crc32c | Crc32),
                "{algorithm}"
            );
        }
        assert_eq!(for_copy_in_parts(None), None);
    }

    #[test]
    fn names_read_back() {
        for algorithm in ChecksumAlgorithm::ALL {
            assert_eq!(
                ChecksumAlgorithm::parse(algorithm.as_str()),
                Some(algorithm)
            );
        }
        assert_eq!(ChecksumAlgorithm::parse("MD5"), None);
    }

    #[test]
    fn a_copy_is_verified_by_checksum_only_when_the_destination_reports_the_same_value() {
        let source = Checksum {
            algorithm: Crc32,
            value: "q83vEg==".into(),
        };
        assert_eq!(
            check_checksum("k", &source, &reported(&[(Crc32, "q83vEg==")], None)),
            Ok(Verification::Checksum)
        );
        // another algorithm, or none: size and ETag decide alone
        assert_eq!(
            check_checksum("k", &source, &reported(&[(Crc64Nvme, "x")], None)),
            Ok(Verification::Etag)
        );
        assert_eq!(
            check_checksum("k", &source, &reported(&[], None)),
            Ok(Verification::Etag)
        );
        // a composite checksum of the destination's parts compares with nothing
        assert_eq!(
            check_checksum("k", &source, &reported(&[(Crc32, "AAAAAA==-2")], None)),
            Ok(Verification::Etag)
        );
        assert_eq!(
            check_checksum(
                "k",
                &source,
                &reported(&[(Crc32, "AAAAAA==")], Some("COMPOSITE"))
            ),
            Ok(Verification::Etag)
        );
        let differs = check_checksum(
            "refined/k",
            &source,
            &reported(&[(Crc32, "AAAAAA==")], None),
        )
        .unwrap_err();
        assert!(!differs.transient);
        assert!(
            differs.reason.contains("does not hold the listed bytes")
                && differs.reason.contains("CRC32 checksum is AAAAAA==")
                && differs.reason.contains("q83vEg=="),
            "{}",
            differs.reason
        );
    }
}
