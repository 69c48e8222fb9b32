//! Server-side encryption: what a copy must be encrypted with, and whether the copy S3
//! made needs encrypting again.
//!
//! `CopyObject` does not keep the source's encryption: without encryption headers the
//! copy takes the destination bucket's default (SSE-S3 unless the bucket names a KMS
//! key). A move keeps what the object is, so a copy whose encryption differs from its
//! source's is encrypted again, in place, with the source's; a run that names a KMS key
//! has every copy encrypted with it instead.

/// How an object is encrypted at rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    /// SSE-S3 (`AES256`), or no encryption reported.
    S3Managed,
    /// SSE-KMS (`aws:kms`), or DSSE-KMS (`aws:kms:dsse`, `dual_layer`), with the key S3
    /// reports (an ARN) or the run names.
    Kms { dual_layer: bool, key_id: String },
    /// SSE-C: S3 keeps no key; only the holder of the key can read or copy the object.
    CustomerKey,
}

impl Encryption {
    /// The encryption S3 reports for an object: its `x-amz-server-side-encryption`, the
    /// KMS key, and whether a customer key's algorithm is named.
    pub fn reported(sse: Option<&str>, kms_key_id: Option<&str>, customer_key: bool) -> Self {
        if customer_key {
            return Encryption::CustomerKey;
        }
        match sse {
            Some(kind @ ("aws:kms" | "aws:kms:dsse")) => Encryption::Kms {
                dual_layer: kind == "aws:kms:dsse",
                key_id: kms_key_id.unwrap_or_default().to_string(),
            },
            _ => Encryption::S3Managed,
        }
    }

    /// The `x-amz-server-side-encryption` value that asks for it (none for SSE-C).
    pub fn header(&self) -> Option<&'static str> {
        match self {
            Encryption::S3Managed => Some("AES256"),
            Encryption::Kms {
                dual_layer: false, ..
            } => Some("aws:kms"),
            Encryption::Kms {
                dual_layer: true, ..
            } => Some("aws:kms:dsse"),
            Encryption::CustomerKey => None,
        }
    }

    /// The KMS key that asks for it, if any.
    pub fn kms_key_id(&self) -> Option<&str> {
        match self {
            Encryption::Kms { key_id, .. } if !key_id.is_empty() => Some(key_id),
            _ => None,
        }
    }
}

/// The encryption a copy is asked for up front: the run's KMS key if it names one, else
/// the source's where it is already known (a copy in parts reads its source first);
/// `None` leaves the copy to the destination bucket's default, to be checked afterwards.
pub fn requested(run_key: Option<&str>, source: Option<&Encryption>) -> Option<Encryption> {
    match (run_key, source) {
        (Some(key), _) => Some(Encryption::Kms {
            dual_layer: false,
            key_id: key.to_string(),
        }),
        (None, Some(Encryption::CustomerKey)) | (None, None) => None,
        (None, Some(source)) => Some(source.clone()),
    }
}

/// The encryption a whole copy made with the bucket's default must be given afterwards
/// to be its source's, or `None` when it already is (or the run named a key, which the
/// copy was made with).
pub fn to_encrypt_again(
    run_key: Option<&str>,
    source: &Encryption,
    copied: &Encryption,
) -> Option<Encryption> {
    if run_key.is_some() || *source == Encryption::CustomerKey {
        return None;
    }
    let same = match (source, copied) {
        (
            Encryption::Kms {
                dual_layer: a,
                key_id: wanted,
            },
            Encryption::Kms {
                dual_layer: b,
                key_id: found,
            },
        ) => a == b && same_key(wanted, found),
        (source, copied) => source == copied,
    };
    (!same).then(|| source.clone())
}

/// Whether two names of a KMS key name the same key: equal, or one a key ARN ending in
/// the other's key id.
fn same_key(a: &str, b: &str) -> bool {
    a == b || a.ends_with(&format!("/{b}")) || b.ends_with(&format!("/{a}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "arn:aws:kms:us-east-1:111122223333:key/aaaa";
    const KEY_B: &str = "arn:aws:kms:us-east-1:111122223333:key/bbbb";

    fn kms(key: &str) -> Encryption {
        Encryption::Kms {
            dual_layer: false,
            key_id: key.into(),
        }
    }

    #[test]
    fn encryption_is_read_as_s3_reports_it() {
        assert_eq!(
            Encryption::reported(None, None, false),
            Encryption::S3Managed
        );
        assert_eq!(
            Encryption::reported(Some("AES256"), None, false),
            Encryption::S3Managed
        );
        assert_eq!(
            Encryption::reported(Some("aws:kms"), Some(KEY_A), false),
            kms(KEY_A)
        );
        assert_eq!(
            Encryption::reported(Some("aws:kms:dsse"), Some(KEY_A), false),
            Encryption::Kms {
                dual_layer: true,
                key_id: KEY_A.into()
            }
        );
        assert_eq!(
            Encryption::reported(Some("AES256"), None, true),
            Encryption::CustomerKey
        );
        assert_eq!(kms(KEY_A).header(), Some("aws:kms"));
        assert_eq!(kms(KEY_A).kms_key_id(), Some(KEY_A));
        assert_eq!(Encryption::S3Managed.header(), Some("AES256"));
        assert_eq!(Encryption::S3Managed.kms_key_id(), None);
    }

    #[test]
    fn a_run_key_is_asked_for_up_front_and_a_known_source_encryption_is_kept() {
        assert_eq!(requested(Some(KEY_B), Some(&kms(KEY_A))), Some(kms(KEY_B)));
        assert_eq!(requested(None, Some(&kms(KEY_A))), Some(kms(KEY_A)));
        assert_eq!(
            requested(None, Some(&Encryption::S3Managed)),
            Some(Encryption::S3Managed)
        );
        assert_eq!(requested(None, None), None);
        assert_eq!(requested(None, Some(&Encryption::CustomerKey)), None);
    }

    #[test]
    fn a_copy_is_encrypted_again_only_where_it_differs_from_its_source() {
        // the bucket's default gave an SSE-KMS source's copy SSE-S3, or another key
        assert_eq!(
            to_encrypt_again(None, &kms(KEY_A), &Encryption::S3Managed),
            Some(kms(KEY_A))
        );
        assert_eq!(
            to_encrypt_again(None, &kms(KEY_A), &kms(KEY_B)),
            Some(kms(KEY_A))
        );
        // an SSE-S3 source whose copy took a bucket's KMS default
        assert_eq!(
            to_encrypt_again(None, &Encryption::S3Managed, &kms(KEY_B)),
            Some(Encryption::S3Managed)
        );
        // already the same: by ARN, or by key id against its ARN
        assert_eq!(to_encrypt_again(None, &kms(KEY_A), &kms(KEY_A)), None);
        assert_eq!(to_encrypt_again(None, &kms("aaaa"), &kms(KEY_A)), None);
        assert_eq!(
            to_encrypt_again(None, &Encryption::S3Managed, &Encryption::S3Managed),
            None
        );
        // a run that names a key made the copy with it
        assert_eq!(
            to_encrypt_again(Some(KEY_B), &kms(KEY_A), &kms(KEY_B)),
            None
        );
    }
}
