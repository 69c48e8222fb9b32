//! Key encodings: how a key is named in a copy and read from a listing, which keys
//! S3's XML can carry, and how a key is shown in messages.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// S3's limit on an object key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// Characters left as they are in an `x-amz-copy-source` value: RFC 3986's unreserved
/// characters and the `/` separating bucket and key segments. Everything else,
/// `+`, `%`, `?`, `#`, spaces and non-ASCII included, is percent-encoded, because the
/// SDK sends the header as given (awslabs/aws-sdk-rust#1357) and S3 decodes it.
const COPY_SOURCE_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The `x-amz-copy-source` value for `key` in `bucket`.
pub fn copy_source(bucket: &str, key: &str) -> String {
    format!("{}/{}", bucket, utf8_percent_encode(key, COPY_SOURCE_KEEP))
}

/// A key as `ListObjectsV2` with `encoding-type=url` names it. S3 writes a space as `+`
/// (and a `+` as `%2B`), so `+` is read as a space before the percent-decoding.
pub fn decode_listed_key(encoded: &str) -> Result<String, String> {
    percent_decode_str(&encoded.replace('+', " "))
        .decode_utf8()
        .map(|key| key.into_owned())
        .map_err(|_| format!("the listing named a key that is not UTF-8: {encoded:?}"))
}

/// Whether every character of `key` can travel in an XML 1.0 document, such as a
/// `DeleteObjects` request or a multipart upload's answers, which name their key. XML 1.0
/// has no way at all to write most ASCII control characters (`&#1;` is not allowed
/// either), so such keys must travel in a URL instead.
pub fn xml_can_carry(key: &str) -> bool {
    key.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
            || c >= '\u{10000}'
    })
}

/// Why S3 would refuse `key` as an object key, if it would.
pub fn too_long(key: &str) -> Option<String> {
    (key.len() > MAX_KEY_BYTES).then(|| {
        format!(
            "the destination key would be {} bytes, longer than the {MAX_KEY_BYTES} S3 allows; \
             the source was left in place",
            key.len()
        )
    })
}

/// How a key is shown in messages: control characters escaped, so a key with a newline
/// cannot break a list of keys into lines that are not keys.
pub fn shown(key: &str) -> String {
    if !key.chars().any(char::is_control) {
        return key.to_string();
    }
    key.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn listed_keys_decode_as_s3_encodes_them() {
        assert_eq!(
            decode_listed_key("raw/a+b%2Bc%25d.csv").unwrap(),
            "raw/a b+c%d.csv"
        );
        assert_eq!(
            decode_listed_key("raw/a%01%0A%E6%97%A5.csv").unwrap(),
            "raw/a\u{1}\n日.csv"
        );
        assert!(decode_listed_key("raw/%FF.csv").is_err());
    }

    #[test]
    fn xml_carries_text_but_not_most_control_characters() {
        assert!(xml_can_carry("raw/a b\t\r\n<&>\"日本語😀.csv"));
        for bad in [
            "raw/\u{0}",
            "raw/a\u{1}.csv",
            "raw/\u{b}",
            "raw/\u{1f}",
            "raw/\u{fffe}",
        ] {
            assert!(!xml_can_carry(bad), "{bad:?}");
        }
    }

    #[test]
    fn keys_longer_than_s3_allows_are_named_with_their_length() {
        assert_eq!(too_long(&"k".repeat(MAX_KEY_BYTES)), None);
        let reason = too_long(&"é".repeat(513)).unwrap();
        assert!(
            reason.starts_with("the destination key would be 1026 bytes"),
            "{reason}"
        );
    }

    #[test]
    fn keys_are_shown_with_control_characters_escaped() {
        assert_eq!(shown("raw/plain é.csv"), "raw/plain é.csv");
        assert_eq!(shown("raw/a\u{1}\nb.csv"), "raw/a\\u{1}\\u{a}b.csv");
    }

    #[test]
    fn copy_source_encodes_everything_s3_would_misread() {
        assert_eq!(
            copy_source("b", "raw/a b+c%d=e.csv"),
            "b/raw/a%20b%2Bc%25d%3De.csv"
        );
        assert_eq!(copy_source("b", "raw/é?#.csv"), "b/raw/%C3%A9%3F%23.csv");
        assert_eq!(
            copy_source("b", "raw/a-b_c.d~e/f.csv"),
            "b/raw/a-b_c.d~e/f.csv"
        );
    }

    proptest! {
        #[test]
        fn keys_encoded_as_s3_lists_them_decode_to_themselves(key in "\\PC{0,40}|[\\x00-\\x1f +%]{0,10}") {
            // S3's url encoding: %XX for everything but unreserved characters and '/',
            // '+' for a space.
            let encoded: String = utf8_percent_encode(&key, COPY_SOURCE_KEEP)
                .to_string()
                .replace("%20", "+");
            prop_assert_eq!(decode_listed_key(&encoded).unwrap(), key);
        }

        #[test]
        fn copy_sources_decode_to_exactly_the_key(key in "\\PC{1,60}") {
            let encoded = copy_source("bucket", &key);
            prop_assert!(encoded.bytes().all(|c| c.is_ascii_graphic()));
            let decoded = percent_encoding::percent_decode_str(&encoded).decode_utf8().unwrap();
            prop_assert_eq!(decoded, format!("bucket/{key}"));
        }
    }
}
