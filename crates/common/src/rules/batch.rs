//! Batches: the files master hands to one slave invocation.
//!
//! A batch is a run of consecutive selected files from one listing page, named by its
//! first key ([`BatchId`]). Its files are recorded once, by master, as one JSON list;
//! what became of them is kept apart ([`crate::rules::outcomes`]).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A file as the listing saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    pub key: String,
    pub size: u64,
    pub etag: String,
    /// The storage class the listing named, when it is not S3's default, `STANDARD`.
    pub storage_class: Option<String>,
}

impl ListedFile {
    /// A key a manifest names whose object was not there when the manifest was read. It
    /// is recorded with the run's other files, with no ETag (S3 gives every object one),
    /// so that its fate is recorded too: it fails with [`NOT_FOUND`] and nothing is
    /// asked of S3 for it.
    ///
    /// [`NOT_FOUND`]: crate::rules::manifest::NOT_FOUND
    pub fn not_found(key: String) -> Self {
        ListedFile {
            key,
            size: 0,
            etag: String::new(),
            storage_class: None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.etag.is_empty()
    }
}

/// A file is recorded as `[key, size, etag]`, with its storage class as a fourth
/// element when it is not `STANDARD`, so a batch of ordinary files costs no more.
impl Serialize for ListedFile {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let len = if self.storage_class.is_some() { 4 } else { 3 };
        let mut tuple = serializer.serialize_tuple(len)?;
        tuple.serialize_element(&self.key)?;
        tuple.serialize_element(&self.size)?;
        tuple.serialize_element(&self.etag)?;
        if let Some(class) = &self.storage_class {
            tuple.serialize_element(class)?;
        }
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for ListedFile {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ListedFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("[key, size, etag] or [key, size, etag, storage class]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ListedFile, A::Error> {
                use serde::de::Error;
                let key = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let size = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                let etag = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(2, &self))?;
                let storage_class = seq.next_element()?;
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(5, &self));
                }
                Ok(ListedFile {
                    key,
                    size,
                    etag,
                    storage_class,
                })
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}

/// The name of a batch: its first file's position (its key in a listing, its line's
/// position in a manifest). It names the batch in slave events, in the
/// status table's sort keys and in what slaves read, and it orders batches as their
/// files were listed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BatchId(String);

impl BatchId {
    /// The id as recorded: a sort key read back from the table.
    pub fn recorded(raw: impl Into<String>) -> Self {
        BatchId(raw.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A batch of a page as master records it: its id, its files, and the position of its
/// last file, which a transaction recording it reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageBatch<'a> {
    pub id: BatchId,
    pub files: &'a [ListedFile],
    pub last: &'a str,
}

/// Names the batches [`split`] made of a page's files by position: `positions[i]` is
/// where file `i` is in what the run reads, its key in a listing or its line's
/// [`Position`](crate::rules::manifest::Position) in a manifest, so that ids sort as the
/// files came and a batch's id is its first file's position.
pub fn positioned<'a>(
    batches: Vec<&'a [ListedFile]>,
    positions: &'a [String],
) -> Vec<PageBatch<'a>> {
    let mut start = 0;
    batches
        .into_iter()
        .map(|files| {
            let batch = PageBatch {
                id: BatchId(positions[start].clone()),
                files,
                last: &positions[start + files.len() - 1],
            };
            start += files.len();
            batch
        })
        .collect()
}

/// A batch's files as recorded: a JSON list of `[key, size, etag]`.
pub fn encode_files(files: &[ListedFile]) -> String {
    serde_json::to_string(files).expect("files always serialize")
}

pub fn decode_files(raw: &str) -> Result<Vec<ListedFile>, String> {
    serde_json::from_str(raw).map_err(|e| format!("a batch's files are not readable: {e}"))
}

/// How much one batch may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Files in a batch: one slave invocation's share.
    pub files: usize,
    /// Bytes of the batch's encoded file list, so that it fits in one DynamoDB item.
    pub names_bytes: usize,
    /// Bytes of the objects themselves, so that a batch of large objects is spread over
    /// several slaves instead of queueing behind one.
    pub object_bytes: u64,
}

/// Splits a page's selected files into batches within `limits` (a file beyond a byte
/// limit on its own travels alone). The order is kept, so each batch is named by its
/// first key and batches never overlap.
pub fn split(files: &[ListedFile], limits: BatchLimits) -> Vec<&[ListedFile]> {
    let mut out = Vec::new();
    let mut start = 0;
    let (mut names, mut objects) = (0, 0u64);
    for (i, file) in files.iter().enumerate() {
        let cost = encoded_len(file);
        let count = i - start;
        let full = count == limits.files
            || names + cost > limits.names_bytes
            || objects.saturating_add(file.size) > limits.object_bytes;
        if count > 0 && full {
            out.push(&files[start..i]);
            start = i;
            (names, objects) = (0, 0);
        }
        names += cost;
        objects = objects.saturating_add(file.size);
    }
    if start < files.len() {
        out.push(&files[start..]);
    }
    out
}

/// The length of [`encode_files`] of `files`, without encoding them.
pub fn encoded_size(files: &[ListedFile]) -> usize {
    1 + files.iter().map(encoded_len).sum::<usize>().max(1)
}

/// The bytes one file adds to [`encode_files`]: `["key",size,"etag"],`.
fn encoded_len(file: &ListedFile) -> usize {
    let class = file
        .storage_class
        .as_deref()
        .map_or(0, |class| json_string_len(class) + 1);
    json_string_len(&file.key) + json_string_len(&file.etag) + digits(file.size) + 5 + class
}

/// The length of `s` as a JSON string, quotes included.
fn json_string_len(s: &str) -> usize {
    2 + s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(key: &str, size: u64) -> ListedFile {
        ListedFile {
            key: key.into(),
            size,
            etag: "\"9b2cf535f27731c974343645a3985328\"".into(),
            storage_class: None,
        }
    }

    #[test]
    fn files_round_trip_through_their_encoding() {
        let mut archived = file("raw/cold.csv", 7);
        archived.storage_class = Some("GLACIER_IR".into());
        let files = vec![
            file("raw/a \"quoted\"\n.csv", 0),
            file("raw/日本語.csv", 123),
            archived,
        ];
        let encoded = encode_files(&files);
        assert_eq!(decode_files(&encoded).unwrap(), files);
        // a file in the default class is recorded as before, three elements
        assert!(
            encoded.starts_with("[[\"raw/a \\\"quoted\\\"\\n.csv\",0,\"\\\"9b2"),
            "{encoded}"
        );
        assert!(encoded.ends_with(",\"GLACIER_IR\"]]"), "{encoded}");
        assert!(decode_files("{").is_err());
        assert!(decode_files("[[\"k\",1]]").is_err());
        assert!(decode_files("[[\"k\",1,\"e\",\"C\",\"extra\"]]").is_err());
    }

    fn limits(files: usize, names_bytes: usize, object_bytes: u64) -> BatchLimits {
        BatchLimits {
            files,
            names_bytes,
            object_bytes,
        }
    }

    #[test]
    fn batches_respect_count_names_and_object_bytes() {
        let files: Vec<ListedFile> = (0..10).map(|i| file(&format!("raw/{i}.csv"), 10)).collect();
        let sizes = |l| split(&files, l).iter().map(|b| b.len()).collect::<Vec<_>>();
        assert_eq!(sizes(limits(4, 1 << 20, u64::MAX)), [4, 4, 2]);
        let two = encoded_len(&files[0]) * 2;
        assert_eq!(sizes(limits(100, two, u64::MAX)), [2, 2, 2, 2, 2]);
        assert_eq!(sizes(limits(100, 1 << 20, 30)), [3, 3, 3, 1]);
        assert!(split(&[], limits(4, 100, 100)).is_empty());
        let huge = vec![file(&"x".repeat(500), u64::MAX)];
        assert_eq!(
            split(&huge, limits(4, 100, 10)).len(),
            1,
            "a file larger than the budget still travels alone"
        );
    }

    #[test]
    fn large_objects_are_spread_over_batches_of_their_own() {
        let gib = 1 << 30;
        let files = vec![
            file("raw/a.csv", 1),
            file("raw/b.bin", 6 * gib),
            file("raw/c.csv", 1),
            file("raw/d.bin", 3 * gib),
            file("raw/e.bin", 3 * gib),
        ];
        let batches: Vec<Vec<&str>> = split(&files, limits(100, 1 << 20, 5 * gib))
            .iter()
            .map(|b| b.iter().map(|f| f.key.as_str()).collect())
            .collect();
        assert_eq!(
            batches,
            [
                vec!["raw/a.csv"],
                vec!["raw/b.bin"],
                vec!["raw/c.csv", "raw/d.bin"],
                vec!["raw/e.bin"]
            ]
        );
    }

    proptest! {
        #[test]
        fn encoded_length_is_exact(
            key in "\\PC{0,30}", size: u64, class in proptest::option::of("[A-Z_]{1,20}"),
        ) {
            let f = ListedFile { key, size, etag: "\"e\\\"t\"".into(), storage_class: class };
            // `[` and `]` around the list replace the one entry's trailing comma.
            prop_assert_eq!(encode_files(std::slice::from_ref(&f)).len(), encoded_len(&f) + 1);
            let two = [f.clone(), f];
            prop_assert_eq!(encode_files(&two).len(), encoded_size(&two));
        }

        #[test]
        fn batches_keep_every_file_in_order(
            n in 0usize..300, max_files in 1usize..50, budget in 1usize..400, objects in 1u64..2000,
        ) {
            let files: Vec<ListedFile> = (0..n)
                .map(|i| file(&format!("raw/{}\"{}.csv", "k".repeat(i % 7), i), (i * 7 % 301) as u64))
                .collect();
            let out = split(&files, limits(max_files, budget, objects));
            let flat: Vec<ListedFile> = out.iter().flat_map(|b| b.iter().cloned()).collect();
            prop_assert_eq!(&flat, &files);
            for b in out {
                prop_assert!(!b.is_empty() && b.len() <= max_files);
                let bytes: usize = b.iter().map(encoded_len).sum();
                let sizes: u64 = b.iter().map(|f| f.size).sum();
                prop_assert!(b.len() == 1 || (bytes <= budget && sizes <= objects));
            }
        }
    }
}
