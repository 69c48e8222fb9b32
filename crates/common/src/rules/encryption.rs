//! Server-side encryption: what a copy is asked to be encrypted with.
//!
//! `CopyObject` does not keep the source's encryption: without encryption headers the
//! copy takes the destination bucket's default (SSE-S3 unless the bucket names a KMS
//! key). A move keeps an SSE-KMS object's key, so the copy is asked for it, where the
//! source's encryption is known before the copy; a run that names a KMS key has every
//! copy encrypted with it instead.

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

/// The encryption a copy is asked for: the run's KMS key if it names one, else the
/// source's KMS key where the source's encryption is known. `None` leaves the copy to the
/// destination bucket's default, which is what an SSE-S3 source gets: the destination's
/// owner may require its own default there, and SSE-S3 asks for no key.
pub fn requested(run_key: Option<&str>, source: Option<&Encryption>) -> Option<Encryption> {
    match (run_key, source) {
        (Some(key), _) => Some(Encryption::Kms {
            dual_layer: false,
            key_id: key.to_string(),
        }),
        (None, Some(kms @ Encryption::Kms { .. })) => Some(kms.clone()),
        (None, _) => None,
    }
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
    fn a_run_key_is_asked_for_and_a_source_kms_key_is_kept() {
        assert_eq!(requested(Some(KEY_B), Some(&kms(KEY_A))), Some(kms(KEY_B)));
        assert_eq!(requested(Some(KEY_B), None), Some(kms(KEY_B)));
        assert_eq!(requested(None, Some(&kms(KEY_A))), Some(kms(KEY_A)));
        let dual = Encryption::Kms {
            dual_layer: true,
            key_id: KEY_A.into(),
        };
        assert_eq!(requested(None, Some(&dual)), Some(dual.clone()));
        // SSE-S3, SSE-C or unknown: the destination bucket's default
        assert_eq!(requested(None, Some(&Encryption::S3Managed)), None);
        assert_eq!(requested(None, Some(&Encryption::CustomerKey)), None);
        assert_eq!(requested(None, None), None);
    }
}
