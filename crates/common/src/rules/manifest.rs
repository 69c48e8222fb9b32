//! Manifests: a run that takes its files from a list instead of listing its source
//! prefix. What a manifest is, how each of its lines is read, and where a reading of it
//! stands.
//!
//! Three formats are read:
//! - `csv`, as S3 Batch Operations takes it: `bucket,key` per line, the key URL-encoded
//!   (`+` or `%20` for a space, `%2B` for a plus), fields optionally in double quotes;
//! - `jsonl`: one JSON object per line, `{"key": "raw/a.csv"}`, with an optional
//!   `"bucket"`; the key as it is, not encoded;
//! - `s3-inventory`: an S3 Inventory report's `manifest.json`, whose CSV files (gzip)
//!   are read in the order it names them, columns as its `fileSchema` says.
//!
//! A line names a key of the run's source bucket under its source prefix, or it is
//! refused with its line number (an inventory's lines of keys outside the prefix are
//! passed over: an inventory lists a whole bucket). A move takes each key's current object, so a line
//! naming a version is refused too; in an inventory that lists versions, only lines of
//! current objects count. Blank lines are passed over. A manifest or part whose name
//! ends in `.gz` is read through gzip.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::rules::keys::{MAX_KEY_BYTES, decode_listed_key, shown};
use crate::rules::run::Location;

/// The longest manifest line read, in bytes: a key of 1,024 bytes URL-encoded is at
/// most 3,072, and an inventory line adds a few hundred. Anything longer is not a
/// manifest line (a binary object named by mistake, say).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// The longest `manifest.json` of an inventory report read: it names its files, a few
/// hundred bytes each.
pub const MAX_INVENTORY_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

/// Why a file named by a manifest was not moved when its object was not there as the
/// manifest was read.
pub const NOT_FOUND: &str = "not found: the manifest names this key, but the source bucket had \
     no object under it when the manifest was read";

/// Where a run's manifest is, and how it is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub bucket: String,
    pub key: String,
    pub format: ManifestFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManifestFormat {
    #[serde(rename = "csv")]
    Csv,
    #[serde(rename = "jsonl")]
    Jsonl,
    #[serde(rename = "s3-inventory")]
    S3Inventory,
}

impl Manifest {
    /// Checks the manifest's own location: a valid bucket name and a key S3 can have.
    pub fn check(&self) -> Result<(), String> {
        Location::new(&self.bucket, "")?;
        if self.key.is_empty() || self.key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "key {:?} must be 1 to {MAX_KEY_BYTES} bytes",
                shown(&self.key)
            ));
        }
        Ok(())
    }

    pub fn gzip(key: &str) -> bool {
        key.ends_with(".gz")
    }
}

impl std::fmt::Display for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, shown(&self.key))
    }
}

/// How the lines of a manifest (or of one of an inventory's files) are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineFormat {
    Csv,
    Jsonl,
    Inventory(InventoryColumns),
}

impl LineFormat {
    /// The line format of a `csv` or `jsonl` manifest; an inventory's comes from its
    /// `manifest.json` ([`InventoryReport::parse`]).
    pub fn of(format: ManifestFormat) -> Option<Self> {
        match format {
            ManifestFormat::Csv => Some(LineFormat::Csv),
            ManifestFormat::Jsonl => Some(LineFormat::Jsonl),
            ManifestFormat::S3Inventory => None,
        }
    }
}

/// Where an inventory's columns are, by its `fileSchema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryColumns {
    bucket: usize,
    key: usize,
    is_latest: Option<usize>,
    is_delete_marker: Option<usize>,
    count: usize,
}

/// What an inventory report's `manifest.json` says (once its listed bucket is found to be
/// the run's source bucket): where its files are, and their columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryReport {
    /// The bucket holding its files: the `destinationBucket` the report names.
    pub files_bucket: String,
    pub files: Vec<String>,
    pub columns: InventoryColumns,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InventoryManifestJson {
    source_bucket: String,
    destination_bucket: String,
    file_format: String,
    file_schema: String,
    files: Vec<InventoryFileJson>,
}

#[derive(Deserialize)]
struct InventoryFileJson {
    key: String,
}

impl InventoryReport {
    /// Reads an inventory report's `manifest.json`. Only CSV reports are read (ORC and
    /// Parquet are refused with what to do), and the schema must have `Bucket` and `Key`.
    pub fn parse(raw: &[u8], source: &Location) -> Result<Self, String> {
        let manifest: InventoryManifestJson = serde_json::from_slice(raw)
            .map_err(|e| format!("is not an S3 Inventory manifest.json: {e}"))?;
        if !manifest.file_format.eq_ignore_ascii_case("CSV") {
            return Err(format!(
                "is an inventory in {} format; only CSV inventories are read (configure the \
                 inventory with the CSV format)",
                manifest.file_format
            ));
        }
        if manifest.source_bucket != source.bucket {
            return Err(format!(
                "is an inventory of bucket {:?}, not of the run's source bucket {:?}",
                manifest.source_bucket, source.bucket
            ));
        }
        let names: Vec<&str> = manifest.file_schema.split(',').map(str::trim).collect();
        let at = |name: &str| names.iter().position(|n| *n == name);
        let (Some(bucket), Some(key)) = (at("Bucket"), at("Key")) else {
            return Err(format!(
                "has the schema {:?}, without the Bucket and Key columns",
                manifest.file_schema
            ));
        };
        let files_bucket = manifest
            .destination_bucket
            .rsplit(":::")
            .next()
            .unwrap_or_default()
            .to_string();
        Location::new(&files_bucket, "")
            .map_err(|e| format!("names its files' bucket badly: {e}"))?;
        Ok(InventoryReport {
            files_bucket,
            files: manifest.files.into_iter().map(|f| f.key).collect(),
            columns: InventoryColumns {
                bucket,
                key,
                is_latest: at("IsLatest"),
                is_delete_marker: at("IsDeleteMarker"),
                count: names.len(),
            },
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    bucket: Option<String>,
    key: String,
}

/// The key a manifest line names, `None` for a line that names nothing the run takes (a
/// blank line, or an inventory's line of a noncurrent version or a delete marker), or
/// why the line is refused.
pub fn parse_line(
    format: &LineFormat,
    raw: &[u8],
    source: &Location,
) -> Result<Option<String>, String> {
    let line = std::str::from_utf8(raw).map_err(|_| "is not UTF-8 text".to_string())?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (bucket, key) = match format {
        LineFormat::Jsonl => {
            let parsed: JsonLine = serde_json::from_str(line)
                .map_err(|e| format!("is not a JSON object with a \"key\": {e}"))?;
            (parsed.bucket, parsed.key)
        }
        LineFormat::Csv => {
            let fields = csv_fields(line)?;
            match fields.as_slice() {
                [bucket, key] => (Some(bucket.clone()), decode_key(key)?),
                [_, _, version] if !version.is_empty() => {
                    return Err(
                        "names a version; a move takes each key's current object, so a \
                         manifest names bucket and key only"
                            .into(),
                    );
                }
                [bucket, key, _] => (Some(bucket.clone()), decode_key(key)?),
                _ => {
                    return Err(format!(
                        "has {} fields; a CSV manifest line is bucket,key",
                        fields.len()
                    ));
                }
            }
        }
        LineFormat::Inventory(columns) => {
            let fields = csv_fields(line)?;
            if fields.len() != columns.count {
                return Err(format!(
                    "has {} fields where the inventory's schema has {}",
                    fields.len(),
                    columns.count
                ));
            }
            let flag = |column: Option<usize>| column.map(|c| fields[c].as_str());
            if flag(columns.is_latest) == Some("false")
                || flag(columns.is_delete_marker) == Some("true")
            {
                return Ok(None);
            }
            (
                Some(fields[columns.bucket].clone()),
                decode_key(&fields[columns.key])?,
            )
        }
    };
    if let Some(bucket) = bucket
        && bucket != source.bucket
    {
        return Err(format!(
            "names bucket {bucket:?}, not the run's source bucket {:?}",
            source.bucket
        ));
    }
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "names the key {:?}, which is not 1 to {MAX_KEY_BYTES} bytes",
            shown(&key)
        ));
    }
    if !key.starts_with(&source.prefix) {
        // An inventory lists its whole bucket (or its own filter's prefix): its keys
        // outside the run's prefix are simply not the run's.
        if matches!(format, LineFormat::Inventory(_)) {
            return Ok(None);
        }
        return Err(format!(
            "names the key {:?}, which is not under the run's source prefix {:?}",
            shown(&key),
            source.prefix
        ));
    }
    Ok(Some(key))
}

fn decode_key(encoded: &str) -> Result<String, String> {
    decode_listed_key(encoded)
        .map_err(|_| format!("names a key {encoded:?} that is not URL-encoded UTF-8"))
}

/// The fields of one CSV line (RFC 4180: a field in double quotes may hold commas, and
/// `""` within it is a quote).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("has a quoted field that is not closed".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("has {c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("has a quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// A place in a manifest: the end of a line, as the index of the file it is in (0 for a
/// `csv` or `jsonl` manifest, the inventory's file otherwise) and the offset in that
/// file's text (after gzip) just after the line. It stands for the line in the status
/// table, as a listed key does for a listing: written with fixed widths, positions sort
/// as the lines come, so a batch is named by its first line's position and a master call
/// resumes after the last position recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub file: u32,
    pub offset: u64,
}

impl Position {
    pub fn encode(&self) -> String {
        format!("{:06}:{:016}", self.file, self.offset)
    }

    pub fn parse(raw: &str) -> Option<Self> {
        let (file, offset) = raw.split_once(':')?;
        if file.len() != 6 || offset.len() != 16 {
            return None;
        }
        Some(Position {
            file: file.parse().ok()?,
            offset: offset.parse().ok()?,
        })
    }
}

/// The keys a manifest names, to refuse a manifest that names one key twice: the second
/// line's move would find its source gone and count the file again. A first reading
/// keeps one 64-bit hash per key (8 bytes a line: 80 MB for ten million lines, where a
/// map of keys would take gigabytes); hashes that occur twice are only candidates, as
/// two keys may share one, and a second reading compares the keys themselves
/// ([`Repeats`]).
#[derive(Debug, Default)]
pub struct KeyHashes(Vec<u64>);

/// The hash a key is kept as: FNV-1a, stable across processes and versions.
pub fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

impl KeyHashes {
    pub fn add(&mut self, key: &str) {
        self.0.push(key_hash(key));
    }

    /// The hashes more than one key had, sorted; empty when every key is named once.
    pub fn repeated(mut self) -> Vec<u64> {
        self.0.sort_unstable();
        let mut repeated: Vec<u64> = self
            .0
            .windows(2)
            .filter(|pair| pair[0] == pair[1])
            .map(|pair| pair[0])
            .collect();
        repeated.dedup();
        repeated
    }
}

/// The second reading: the keys whose hash is among the repeated ones, each with where
/// it was first named, to find a key named twice.
#[derive(Debug)]
pub struct Repeats {
    repeated: Vec<u64>,
    first: HashMap<String, (String, String)>,
}

impl Repeats {
    pub fn new(repeated: Vec<u64>) -> Self {
        Repeats {
            repeated,
            first: HashMap::new(),
        }
    }

    /// Notes `key`, named at `place` of `object`; where it was named first (object and
    /// place), if it was before.
    pub fn first_named(
        &mut self,
        key: &str,
        object: &str,
        place: &str,
    ) -> Option<(String, String)> {
        if self.repeated.binary_search(&key_hash(key)).is_err() {
            return None;
        }
        match self.first.get(key) {
            Some(first) => Some(first.clone()),
            None => {
                self.first
                    .insert(key.to_string(), (object.to_string(), place.to_string()));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn source() -> Location {
        Location::new("bucket", "raw/").unwrap()
    }

    fn read(format: &LineFormat, line: &str) -> Result<Option<String>, String> {
        parse_line(format, line.as_bytes(), &source())
    }

    fn inventory(schema: &str) -> LineFormat {
        let raw = serde_json::json!({
            "sourceBucket": "bucket",
            "destinationBucket": "arn:aws:s3:::reports",
            "version": "2016-11-30",
            "fileFormat": "CSV",
            "fileSchema": schema,
            "files": [{"key": "inv/data/a.csv.gz", "size": 10, "MD5checksum": "x"}],
        });
        let report = InventoryReport::parse(raw.to_string().as_bytes(), &source()).unwrap();
        assert_eq!(report.files, ["inv/data/a.csv.gz"]);
        assert_eq!(report.files_bucket, "reports");
        LineFormat::Inventory(report.columns)
    }

    #[test]
    fn csv_lines_name_url_encoded_keys_of_the_source_bucket() {
        let csv = LineFormat::Csv;
        assert_eq!(read(&csv, "bucket,raw/a.csv"), Ok(Some("raw/a.csv".into())));
        assert_eq!(
            read(&csv, "bucket,raw/with+space%2Bplus%2C.csv\r"),
            Ok(Some("raw/with space+plus,.csv".into()))
        );
        assert_eq!(
            read(&csv, "\"bucket\",\"raw/q\"\"uote.csv\""),
            Ok(Some("raw/q\"uote.csv".into()))
        );
        assert_eq!(
            read(&csv, "bucket,raw/a.csv,"),
            Ok(Some("raw/a.csv".into()))
        );
        assert_eq!(read(&csv, "   "), Ok(None));
        for (line, problem) in [
            ("other,raw/a.csv", "not the run's source bucket"),
            (
                "bucket,elsewhere/a.csv",
                "not under the run's source prefix",
            ),
            ("bucket,raw/a.csv,3HL4kqtJlcpXroDTDmJ", "names a version"),
            ("raw/a.csv", "has 1 fields"),
            ("bucket,\"raw/a.csv", "not closed"),
            ("bucket,raw/%FF.csv", "not URL-encoded UTF-8"),
            ("bucket,", "not 1 to 1024 bytes"),
        ] {
            let refused = read(&csv, line).unwrap_err();
            assert!(refused.contains(problem), "{line}: {refused}");
        }
    }

    #[test]
    fn json_lines_name_keys_as_they_are() {
        let jsonl = LineFormat::Jsonl;
        assert_eq!(
            read(&jsonl, r#"{"key": "raw/a+b %.csv"}"#),
            Ok(Some("raw/a+b %.csv".into()))
        );
        assert_eq!(
            read(&jsonl, r#"{"bucket": "bucket", "key": "raw/b.csv"}"#),
            Ok(Some("raw/b.csv".into()))
        );
        for (line, problem) in [
            (
                r#"{"key": "raw/a.csv", "version_id": "v"}"#,
                "unknown field `version_id`",
            ),
            (r#"{"Key": "raw/a.csv"}"#, "unknown field `Key`"),
            (r#"["raw/a.csv"]"#, "not a JSON object"),
            (
                r#"{"bucket": "other", "key": "raw/a.csv"}"#,
                "not the run's source bucket",
            ),
        ] {
            let refused = read(&jsonl, line).unwrap_err();
            assert!(refused.contains(problem), "{line}: {refused}");
        }
    }

    #[test]
    fn an_inventory_line_counts_only_for_a_current_object() {
        let format = inventory("Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size");
        assert_eq!(
            read(
                &format,
                r#""bucket","raw/a%20b.csv","v1","true","false","3""#
            ),
            Ok(Some("raw/a b.csv".into()))
        );
        assert_eq!(
            read(&format, r#""bucket","raw/a.csv","v0","false","false","3""#),
            Ok(None)
        );
        assert_eq!(
            read(&format, r#""bucket","raw/a.csv","v2","true","true","""#),
            Ok(None)
        );
        assert_eq!(
            read(&format, r#""bucket","logs/a.csv","v3","true","false","3""#),
            Ok(None)
        );
        let refused = read(&format, r#""bucket","raw/a.csv""#).unwrap_err();
        assert!(
            refused.contains("has 2 fields where the inventory's schema has 6"),
            "{refused}"
        );
        let plain = inventory("Bucket, Key, Size, LastModifiedDate, ETag, StorageClass");
        assert_eq!(
            read(
                &plain,
                r#""bucket","raw/c.csv","1","2026-11-01T00:00:00.000Z","e","STANDARD""#
            ),
            Ok(Some("raw/c.csv".into()))
        );
    }

    #[test]
    fn an_inventory_the_run_cannot_read_is_refused_with_what_to_do() {
        let manifest = |format: &str, bucket: &str, schema: &str| {
            serde_json::json!({
                "sourceBucket": bucket, "destinationBucket": "arn:aws:s3:::reports",
                "fileFormat": format, "fileSchema": schema, "files": [],
            })
            .to_string()
        };
        for (raw, problem) in [
            (
                manifest("Parquet", "bucket", "Bucket, Key"),
                "only CSV inventories are read",
            ),
            (
                manifest("CSV", "other", "Bucket, Key"),
                "not of the run's source bucket",
            ),
            (
                manifest("CSV", "bucket", "Bucket, Size"),
                "without the Bucket and Key columns",
            ),
            ("{}".to_string(), "is not an S3 Inventory manifest.json"),
        ] {
            let refused = InventoryReport::parse(raw.as_bytes(), &source()).unwrap_err();
            assert!(refused.contains(problem), "{raw}: {refused}");
        }
    }

    #[test]
    fn positions_sort_as_the_lines_come() {
        let positions = [
            Position { file: 0, offset: 9 },
            Position {
                file: 0,
                offset: 10,
            },
            Position {
                file: 0,
                offset: 1 << 40,
            },
            Position { file: 1, offset: 2 },
            Position {
                file: 12,
                offset: 0,
            },
        ];
        let encoded: Vec<String> = positions.iter().map(Position::encode).collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]), "{encoded:?}");
        for (position, raw) in positions.iter().zip(&encoded) {
            assert_eq!(Position::parse(raw), Some(*position));
        }
        assert_eq!(Position::parse("raw/a.csv"), None);
    }

    #[test]
    fn a_key_named_twice_is_found_where_it_was_first_named() {
        let keys = ["raw/a.csv", "raw/b.csv", "raw/c.csv", "raw/a.csv"];
        let mut hashes = KeyHashes::default();
        for key in keys {
            hashes.add(key);
        }
        let repeated = hashes.repeated();
        assert_eq!(repeated, [key_hash("raw/a.csv")]);
        let mut repeats = Repeats::new(repeated);
        let found: Vec<Option<(String, String)>> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| repeats.first_named(key, "m.csv", &format!("line {}", i + 1)))
            .collect();
        let first = Some(("m.csv".to_string(), "line 1".to_string()));
        assert_eq!(found, [None, None, None, first]);
        // Two keys that share a hash are not a key named twice.
        let mut shared = Repeats::new(vec![key_hash("raw/x.csv"), key_hash("raw/y.csv")]);
        assert_eq!(shared.first_named("raw/x.csv", "m.csv", "line 1"), None);
        assert_eq!(shared.first_named("raw/y.csv", "m.csv", "line 2"), None);
        let mut none = KeyHashes::default();
        none.add("raw/a.csv");
        none.add("raw/b.csv");
        assert!(none.repeated().is_empty());
    }

    proptest! {
        #[test]
        fn any_line_is_read_or_refused_without_panicking(line in ".{0,200}") {
            for format in [LineFormat::Csv, LineFormat::Jsonl, inventory("Bucket, Key, IsLatest")] {
                let _ = parse_line(&format, line.as_bytes(), &source());
            }
        }

        #[test]
        fn a_csv_line_written_for_a_key_reads_back_as_that_key(rest in "[^\r\n]{1,100}") {
            let key = format!("raw/{rest}");
            let encoded: String =
                percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            let line = format!("bucket,{encoded}");
            prop_assert_eq!(read(&LineFormat::Csv, &line), Ok(Some(key.clone())));
            let json = serde_json::json!({"key": key}).to_string();
            prop_assert_eq!(read(&LineFormat::Jsonl, &json), Ok(Some(key)));
        }
    }
}
