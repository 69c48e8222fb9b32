//! Key rules: which keys a run takes, where each one goes, how a key is named in a copy,
//! and which keys S3's XML can carry.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::run::{Location, RunSpec};

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

/// A key handed to a run that lies outside the run's source prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {key:?} is not under the run's source prefix {prefix:?}")]
pub struct OutsidePrefix {
    pub key: String,
    pub prefix: String,
}

impl RunSpec {
    /// Whether the run moves this key: under the source prefix, not a folder marker,
    /// and ending with one of the suffixes (compared on the end of the key, exactly).
    pub fn selects(&self, key: &str) -> bool {
        key.starts_with(&self.source.prefix)
            && !key.ends_with('/')
            && self
                .suffixes
                .as_slice()
                .iter()
                .any(|s| key.ends_with(s.as_str()))
    }

    /// Where `key` goes: the destination prefix followed by the part of the key after
    /// the source prefix. Only the leading prefix is rewritten, so the mapping is
    /// injective and never leaves the destination prefix.
    pub fn destination_key(&self, key: &str) -> Result<String, OutsidePrefix> {
        map_key(&self.source, &self.destination, key)
    }
}

fn map_key(source: &Location, destination: &Location, key: &str) -> Result<String, OutsidePrefix> {
    let rest = key
        .strip_prefix(&source.prefix)
        .ok_or_else(|| OutsidePrefix {
            key: key.to_string(),
            prefix: source.prefix.clone(),
        })?;
    Ok(format!("{}{}", destination.prefix, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Suffixes;
    use proptest::prelude::*;

    fn spec(src: &str, dst: &str, suffixes: &[&str]) -> RunSpec {
        RunSpec::new(
            Location::new("bucket", src).unwrap(),
            Location::new("bucket", dst).unwrap(),
            Suffixes::new(suffixes.iter().map(|s| s.to_string()).collect()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn selection_matches_the_end_of_the_key_not_a_substring() {
        let s = spec("raw/", "refined/", &[".csv"]);
        assert!(s.selects("raw/a.csv"));
        assert!(s.selects("raw/deep/er/b.csv"));
        assert!(
            !s.selects("raw/a.csv.bak"),
            "the original matched '.csv' anywhere"
        );
        assert!(!s.selects("raw/a.CSV"), "suffixes are compared exactly");
        assert!(
            !s.selects("raw/folder.csv/"),
            "folder markers are not files"
        );
        assert!(!s.selects("other/a.csv"));
    }

    #[test]
    fn several_suffixes_and_the_empty_suffix() {
        let s = spec("raw/", "refined/", &[".csv", ".txt"]);
        assert!(s.selects("raw/a.txt") && s.selects("raw/a.csv") && !s.selects("raw/a.json"));
        let all = spec("raw/", "refined/", &[""]);
        assert!(all.selects("raw/anything") && !all.selects("raw/dir/"));
    }

    #[test]
    fn only_the_leading_prefix_is_rewritten() {
        let s = spec("raw/", "refined/", &[".csv"]);
        assert_eq!(
            s.destination_key("raw/raw/x-raw/raw.csv").unwrap(),
            "refined/raw/x-raw/raw.csv"
        );
        let s = spec("raw", "refined", &[".csv"]);
        assert_eq!(s.destination_key("raw/raw.csv").unwrap(), "refined/raw.csv");
    }

    #[test]
    fn keys_outside_the_prefix_are_refused() {
        let s = spec("raw/", "refined/", &[".csv"]);
        let err = s.destination_key("elsewhere/a.csv").unwrap_err();
        assert_eq!(
            err.to_string(),
            "key \"elsewhere/a.csv\" is not under the run's source prefix \"raw/\""
        );
    }

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
        fn mapped_keys_stay_under_the_destination_and_are_distinct(
            a in "[a-z/ +%=é.]{0,20}", b in "[a-z/ +%=é.]{0,20}",
        ) {
            let s = spec("raw/", "refined/", &[""]);
            let (ka, kb) = (format!("raw/{a}"), format!("raw/{b}"));
            let (da, db) = (s.destination_key(&ka).unwrap(), s.destination_key(&kb).unwrap());
            prop_assert!(da.starts_with("refined/"));
            prop_assert_eq!(da == db, ka == kb);
        }

        #[test]
        fn any_run_maps_its_keys_injectively_into_its_destination(
            src in "\\PC{0,12}", dst in "\\PC{0,12}", same_bucket: bool,
            a in "\\PC{0,40}", b in "\\PC{0,40}",
        ) {
            // Whatever the prefixes (unicode, empty, with or without '/'), a run that
            // RunSpec accepts maps each of its keys under its destination prefix, and
            // two different keys never to the same destination.
            let source = Location::new("bucket", &src).unwrap();
            let destination =
                Location::new(if same_bucket { "bucket" } else { "other" }, &dst).unwrap();
            if let Ok(s) = RunSpec::new(source, destination, Suffixes::new(vec![String::new()]).unwrap()) {
                let (ka, kb) = (format!("{src}{a}"), format!("{src}{b}"));
                let (da, db) = (s.destination_key(&ka).unwrap(), s.destination_key(&kb).unwrap());
                prop_assert!(da.starts_with(&dst) && db.starts_with(&dst));
                prop_assert_eq!(da == db, ka == kb);
                if same_bucket {
                    // a destination is never itself a key the run would take
                    prop_assert!(!da.starts_with(&src));
                }
            }
        }

        #[test]
        fn keys_outside_the_source_prefix_are_refused(src in "[a-z]{1,5}/", key in "\\PC{0,20}") {
            let s = spec(&src, "zzz-out/", &[""]);
            prop_assume!(!key.starts_with(&src));
            prop_assert!(s.destination_key(&key).is_err());
        }

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
