//! The run model: what a run is (its id, its source and destination, the keys it
//! takes), and the one rule that maps a source key to its destination.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::rules::batch::ListedFile;
use crate::rules::copy::IfExists;
use crate::rules::manifest::Manifest;
use crate::rules::select::{Listed, Selection, Timestamp};

/// A problem with an event, named precisely enough for the user to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event: {0}")]
pub struct EventError(pub String);

/// The id of one run: the Step Functions execution name.
///
/// It follows the execution-name rules (1 to 80 characters, none of whitespace,
/// brackets, wildcards or `"#%\^|~`$&,;:/`), which also keeps `#` free for the
/// status table's key layout.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

impl RunId {
    pub fn parse(raw: &str) -> Result<Self, EventError> {
        const FORBIDDEN: &str = "<>{}[]?*\"#%\\^|~`$&,;:/";
        if raw.is_empty() || raw.chars().count() > 80 {
            return Err(EventError(format!(
                "run_id {raw:?} must be 1 to 80 characters"
            )));
        }
        if let Some(c) = raw
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || FORBIDDEN.contains(*c))
        {
            return Err(EventError(format!(
                "run_id {raw:?} contains {c:?}, which an execution name cannot contain"
            )));
        }
        Ok(RunId(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RunId {
    type Error = EventError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        RunId::parse(&raw)
    }
}

impl From<RunId> for String {
    fn from(id: RunId) -> String {
        id.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bucket and a key prefix in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub bucket: String,
    pub prefix: String,
}

impl Location {
    /// Checks the bucket name against S3's naming rules and the prefix against its key limit.
    pub fn new(bucket: &str, prefix: &str) -> Result<Self, String> {
        let valid_chars = bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        let valid_ends = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !(3..=63).contains(&bucket.len()) || !valid_chars || !valid_ends {
            return Err(format!("{bucket:?} is not a valid S3 bucket name"));
        }
        if prefix.len() >= 1024 {
            return Err(format!("prefix {prefix:?} is longer than an S3 key may be"));
        }
        Ok(Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// Whether some key could be under both locations. Moving between overlapping
    /// locations would list its own output.
    pub fn overlaps(&self, other: &Location) -> bool {
        self.bucket == other.bucket
            && (self.prefix.starts_with(&other.prefix) || other.prefix.starts_with(&self.prefix))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Which keys a run takes: those ending with one of these suffixes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Suffixes(Vec<String>);

impl Default for Suffixes {
    fn default() -> Self {
        Suffixes(vec![".csv".into()])
    }
}

impl Suffixes {
    pub fn new(list: Vec<String>) -> Result<Self, String> {
        if list.is_empty() {
            return Err(
                "the suffix list is empty; give at least one suffix (\"\" selects every file)"
                    .into(),
            );
        }
        Ok(Suffixes(list))
    }

    /// A comma-separated list, as in the `SUFFIXES` variable, where an empty entry (an
    /// empty list among them) selects every file.
    pub fn parse_list(raw: &str) -> Self {
        Suffixes(raw.split(',').map(|s| s.trim().to_string()).collect())
    }

    /// The empty suffix: every key.
    pub fn every_key() -> Self {
        Suffixes(vec![String::new()])
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl TryFrom<Vec<String>> for Suffixes {
    type Error = String;
    fn try_from(list: Vec<String>) -> Result<Self, String> {
        Suffixes::new(list)
    }
}

impl From<Suffixes> for Vec<String> {
    fn from(s: Suffixes) -> Self {
        s.0
    }
}

/// Everything that defines what a run moves. Fixed when the run starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub source: Location,
    pub destination: Location,
    pub suffixes: Suffixes,
    /// Patterns, sizes and times that narrow what the prefix and suffixes take.
    #[serde(default, skip_serializing_if = "Selection::is_everything")]
    pub selection: Selection,
    /// The storage class every copy is written in; by default each keeps its source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// The KMS key every copy is encrypted with; by default each keeps its source's
    /// encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// What happens to a destination key that already holds an object.
    #[serde(default, skip_serializing_if = "is_overwrite")]
    pub if_destination_exists: IfExists,
    /// In a bucket that keeps versions, leave the copied version as a noncurrent
    /// version (S3's own delete-marker behaviour) instead of deleting it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_source_versions: bool,
    /// List and plan only: nothing is copied, deleted or recorded per file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Where the run's files are named, instead of the listing of its source prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
    /// The accounts expected to own the source and destination buckets: every request
    /// about a bucket names its owner, and S3 refuses it if another account owns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_owner: Option<String>,
}

fn is_overwrite(mode: &IfExists) -> bool {
    *mode == IfExists::Overwrite
}

impl RunSpec {
    pub fn new(
        source: Location,
        destination: Location,
        suffixes: Suffixes,
    ) -> Result<Self, EventError> {
        if source.overlaps(&destination) {
            return Err(EventError(format!(
                "source {source} and destination {destination} overlap; a run would move its own output"
            )));
        }
        Ok(RunSpec {
            source,
            destination,
            suffixes,
            selection: Selection::default(),
            storage_class: None,
            kms_key_id: None,
            if_destination_exists: IfExists::Overwrite,
            keep_source_versions: false,
            dry_run: false,
            manifest: None,
            source_owner: None,
            destination_owner: None,
        })
    }

    /// The same run, narrowed by `selection`.
    pub fn with_selection(self, selection: Selection) -> Self {
        RunSpec { selection, ..self }
    }

    /// The same run, writing every copy in `storage_class` (`None`: each keeps its
    /// source's).
    pub fn with_storage_class(self, storage_class: Option<String>) -> Self {
        RunSpec {
            storage_class,
            ..self
        }
    }

    /// The same run, encrypting every copy with `kms_key_id` (`None`: each keeps its
    /// source's encryption).
    pub fn with_kms_key_id(self, kms_key_id: Option<String>) -> Self {
        RunSpec { kms_key_id, ..self }
    }

    /// The same run, keeping (or not) the copied versions of sources.
    pub fn with_keep_source_versions(self, keep_source_versions: bool) -> Self {
        RunSpec {
            keep_source_versions,
            ..self
        }
    }

    /// The same run, taking its files from `manifest` (`None`: from the listing).
    pub fn with_manifest(self, manifest: Option<Manifest>) -> Self {
        RunSpec { manifest, ..self }
    }

    /// The same run, expecting these accounts to own its source and destination buckets.
    pub fn with_owners(
        self,
        source_owner: Option<String>,
        destination_owner: Option<String>,
    ) -> Self {
        RunSpec {
            source_owner,
            destination_owner,
            ..self
        }
    }

    /// The same run, planned only (`dry_run`) or not.
    pub fn with_dry_run(self, dry_run: bool) -> Self {
        RunSpec { dry_run, ..self }
    }

    /// The same run, treating existing destinations as `mode` says.
    pub fn with_if_destination_exists(self, mode: IfExists) -> Self {
        RunSpec {
            if_destination_exists: mode,
            ..self
        }
    }
}

/// Where the defaults of a run come from when its event leaves them out (the stack's
/// settings, see [`crate::config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDefaults {
    /// `SOURCE_BUCKET`: optional; without it, every event must name its source bucket.
    pub source_bucket: Option<String>,
    /// `SOURCE_PREFIX`, default `raw/`.
    pub source_prefix: String,
    /// `DESTINATION_BUCKET`, default: the source bucket.
    pub destination_bucket: Option<String>,
    /// `DESTINATION_PREFIX`, default `refined/`.
    pub destination_prefix: String,
    /// `SUFFIXES`, comma-separated, default `.csv`.
    pub suffixes: Suffixes,
}

/// A key handed to a run that lies outside the run's source prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {key:?} is not under the run's source prefix {prefix:?}")]
pub struct OutsidePrefix {
    pub key: String,
    pub prefix: String,
}

impl RunSpec {
    /// Whether the run moves this listed object: under the source prefix, not a folder
    /// marker, ending with one of the suffixes (compared on the end of the key, exactly),
    /// and admitted by the run's selection ([`Selection::admits`]).
    pub fn selects(&self, key: &str, size: u64, last_modified: Option<Timestamp>) -> bool {
        self.named_key(key).is_some_and(|relative_key| {
            self.selection.admits(Listed {
                relative_key,
                size,
                last_modified,
            })
        })
    }

    /// Whether the run takes `key` whatever its object's size and time: the part of
    /// [`RunSpec::selects`] a key alone can answer, for a key a manifest names that has
    /// no object.
    pub fn selects_key(&self, key: &str) -> bool {
        self.named_key(key)
            .is_some_and(|relative_key| self.selection.admits_key(relative_key))
    }

    /// The key relative to the source prefix, when it is under it, not a folder marker,
    /// and ends with one of the suffixes.
    fn named_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        let relative_key = key.strip_prefix(&self.source.prefix)?;
        // With a prefix that does not end in '/' (`raw`), patterns still start at the
        // folder's first name (`2026/**`), not at the slash.
        let relative_key = if self.source.prefix.ends_with('/') || self.source.prefix.is_empty() {
            relative_key
        } else {
            relative_key.strip_prefix('/').unwrap_or(relative_key)
        };
        let suffixed = self
            .suffixes
            .as_slice()
            .iter()
            .any(|s| key.ends_with(s.as_str()));
        (!key.ends_with('/') && suffixed).then_some(relative_key)
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

/// One file of a run with the key it goes to: the key's journey after listing,
/// computed once, so every step of the move uses the same destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMove {
    pub file: ListedFile,
    pub destination_key: String,
}

impl RunSpec {
    /// The move of a listed file to its destination key; refused for a key outside
    /// the source prefix.
    pub fn plan(&self, file: &ListedFile) -> Result<PlannedMove, OutsidePrefix> {
        Ok(PlannedMove {
            destination_key: self.destination_key(&file.key)?,
            file: file.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whether the run takes a small, recent object under this key.
    fn takes(spec: &RunSpec, key: &str) -> bool {
        spec.selects(key, 1, Some(Timestamp(0)))
    }

    #[test]
    fn the_selection_narrows_what_prefix_and_suffixes_take() {
        use crate::rules::select::Glob;
        let s = spec("raw/", "refined/", &[".csv"]).with_selection(Selection {
            include: vec![Glob::new("2026/**").unwrap()],
            exclude: vec![Glob::new("**/tmp-*").unwrap()],
            max_size: Some(5),
            ..Selection::default()
        });
        assert!(s.selects("raw/2026/a.csv", 5, None));
        assert!(
            !s.selects("raw/2025/a.csv", 5, None),
            "patterns are relative to the prefix"
        );
        assert!(!s.selects("raw/2026/tmp-a.csv", 5, None));
        assert!(!s.selects("raw/2026/a.csv", 6, None));
        assert!(
            !s.selects("raw/2026/a.txt", 5, None),
            "suffixes still apply"
        );
        let bare = spec("raw", "refined/", &[".csv"]).with_selection(s.selection.clone());
        assert!(
            bare.selects("raw/2026/a.csv", 5, None),
            "patterns start after the slash"
        );
    }

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
        assert!(takes(&s, "raw/a.csv"));
        assert!(takes(&s, "raw/deep/er/b.csv"));
        assert!(
            !takes(&s, "raw/a.csv.bak"),
            "the original matched '.csv' anywhere"
        );
        assert!(!takes(&s, "raw/a.CSV"), "suffixes are compared exactly");
        assert!(
            !takes(&s, "raw/folder.csv/"),
            "folder markers are not files"
        );
        assert!(!takes(&s, "other/a.csv"));
    }

    #[test]
    fn several_suffixes_and_the_empty_suffix() {
        let s = spec("raw/", "refined/", &[".csv", ".txt"]);
        assert!(takes(&s, "raw/a.txt") && takes(&s, "raw/a.csv") && !takes(&s, "raw/a.json"));
        let all = spec("raw/", "refined/", &[""]);
        assert!(takes(&all, "raw/anything") && !takes(&all, "raw/dir/"));
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
    fn a_planned_move_carries_the_file_and_its_destination_key() {
        let s = spec("raw/", "refined/", &[".csv"]);
        let file = ListedFile {
            key: "raw/d/a.csv".into(),
            size: 3,
            etag: "\"e\"".into(),
            storage_class: None,
        };
        let planned = s.plan(&file).unwrap();
        assert_eq!(planned.destination_key, "refined/d/a.csv");
        assert_eq!(planned.file, file);
        let outside = ListedFile {
            key: "other/a.csv".into(),
            ..file
        };
        assert!(s.plan(&outside).is_err());
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

    }
}
