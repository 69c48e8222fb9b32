//! Batches: the files master hands to one slave invocation, and what became of each.
//!
//! A batch is a run of consecutive selected files from one listing page, named by its
//! first key. Its files are recorded once, by master, as one JSON list; their outcomes
//! are kept apart, as one character per file, so that recording a batch's outcomes
//! rewrites a few hundred bytes instead of every file's row. These are the pure parts:
//! splitting, encoding, and how outcomes change a file's state and the run's counters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A file as the listing saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(String, u64, String)", into = "(String, u64, String)")]
pub struct ListedFile {
    pub key: String,
    pub size: u64,
    pub etag: String,
}

impl From<(String, u64, String)> for ListedFile {
    fn from((key, size, etag): (String, u64, String)) -> Self {
        ListedFile { key, size, etag }
    }
}

impl From<ListedFile> for (String, u64, String) {
    fn from(f: ListedFile) -> Self {
        (f.key, f.size, f.etag)
    }
}

/// Where a file of a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileState {
    /// Recorded by master; no slave has recorded an outcome yet.
    Started,
    Completed,
    Failed,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Started => "started",
            FileState::Completed => "completed",
            FileState::Failed => "failed",
        }
    }

    /// The character that stands for this state in a batch's `states`.
    fn code(self) -> char {
        match self {
            FileState::Started => 's',
            FileState::Completed => 'c',
            FileState::Failed => 'f',
        }
    }

    fn from_code(code: char) -> Option<Self> {
        match code {
            's' => Some(FileState::Started),
            'c' => Some(FileState::Completed),
            'f' => Some(FileState::Failed),
            _ => None,
        }
    }
}

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed { size: u64 },
    Failed { reason: String },
}

/// Counter changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub completed: i64,
    pub failed: i64,
    pub bytes: i64,
}

impl std::ops::AddAssign for Delta {
    fn add_assign(&mut self, o: Delta) {
        self.completed += o.completed;
        self.failed += o.failed;
        self.bytes += o.bytes;
    }
}

impl Delta {
    pub fn is_zero(&self) -> bool {
        *self == Delta::default()
    }
}

/// The counter change when a file in state `from` gets `outcome`, or `None` when the
/// file must not change: a completed file stays completed (a duplicate delivery), and a
/// failed file that fails again is already counted.
pub fn transition(from: FileState, outcome: &Outcome) -> Option<Delta> {
    match (from, outcome) {
        (FileState::Completed, _) | (FileState::Failed, Outcome::Failed { .. }) => None,
        (FileState::Started, Outcome::Failed { .. }) => Some(Delta {
            failed: 1,
            ..Delta::default()
        }),
        (from, Outcome::Completed { size }) => Some(Delta {
            completed: 1,
            failed: if from == FileState::Failed { -1 } else { 0 },
            bytes: *size as i64,
        }),
    }
}

/// A recorded reason is cut to this many bytes, so that a batch whose every file failed
/// still fits in one DynamoDB item (400 KB); the slave's log keeps the whole reason.
pub const MAX_REASON_BYTES: usize = 256;

/// The outcomes of a batch's files, and the version they were read at: a write succeeds
/// only if nobody else wrote since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcomes {
    pub states: Vec<FileState>,
    /// The reason of each failed file, by its position in the batch.
    pub reasons: BTreeMap<usize, String>,
    /// 0 while no outcome has been recorded.
    pub version: u64,
}

impl Outcomes {
    /// A batch of `files` files, none with an outcome yet.
    pub fn started(files: usize) -> Self {
        Outcomes {
            states: vec![FileState::Started; files],
            reasons: BTreeMap::new(),
            version: 0,
        }
    }

    /// Reads `states` (one character per file) as recorded for a batch of `files` files.
    pub fn decode(
        states: &str,
        reasons: BTreeMap<usize, String>,
        version: u64,
        files: usize,
    ) -> Result<Self, String> {
        let states: Vec<FileState> = states
            .chars()
            .map(|c| FileState::from_code(c).ok_or_else(|| format!("unknown file state {c:?}")))
            .collect::<Result<_, _>>()?;
        if states.len() != files {
            return Err(format!(
                "{} file states recorded for a batch of {files} files",
                states.len()
            ));
        }
        Ok(Outcomes {
            states,
            reasons,
            version,
        })
    }

    /// The states as recorded: one character per file, `s`, `c` or `f`.
    pub fn encode_states(&self) -> String {
        self.states.iter().map(|s| s.code()).collect()
    }

    pub fn failed(&self) -> usize {
        self.states
            .iter()
            .filter(|s| **s == FileState::Failed)
            .count()
    }

    /// Applies outcomes by file position; returns the counter change. A file changes
    /// only as [`transition`] allows, so applying the same outcomes twice changes nothing
    /// the second time.
    pub fn apply(&mut self, outcomes: &[(usize, Outcome)]) -> Delta {
        let mut delta = Delta::default();
        for (i, outcome) in outcomes {
            let Some(change) = transition(self.states[*i], outcome) else {
                continue;
            };
            delta += change;
            match outcome {
                Outcome::Completed { .. } => {
                    self.states[*i] = FileState::Completed;
                    self.reasons.remove(i);
                }
                Outcome::Failed { reason } => {
                    self.states[*i] = FileState::Failed;
                    self.reasons.insert(*i, short_reason(reason));
                }
            }
        }
        delta
    }
}

/// `reason`, cut to [`MAX_REASON_BYTES`] on a character boundary.
pub fn short_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_string();
    }
    let mut end = MAX_REASON_BYTES - '…'.len_utf8();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

/// A batch's files as recorded: a JSON list of `[key, size, etag]`.
pub fn encode_files(files: &[ListedFile]) -> String {
    serde_json::to_string(files).expect("files always serialize")
}

pub fn decode_files(raw: &str) -> Result<Vec<ListedFile>, String> {
    serde_json::from_str(raw).map_err(|e| format!("a batch's files are not readable: {e}"))
}

/// Splits a page's selected files into batches of at most `max_files` files and at most
/// `max_bytes` of encoded files (a file larger than that travels alone). The order is
/// kept, so each batch is named by its first key and batches never overlap.
pub fn split(files: &[ListedFile], max_files: usize, max_bytes: usize) -> Vec<&[ListedFile]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, file) in files.iter().enumerate() {
        let cost = encoded_len(file);
        let count = i - start;
        if count > 0 && (count == max_files || bytes + cost > max_bytes) {
            out.push(&files[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += cost;
    }
    if start < files.len() {
        out.push(&files[start..]);
    }
    out
}

/// The bytes one file adds to [`encode_files`]: `["key",size,"etag"],`.
fn encoded_len(file: &ListedFile) -> usize {
    json_string_len(&file.key) + json_string_len(&file.etag) + digits(file.size) + 5
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
        }
    }

    fn completed(size: u64) -> Outcome {
        Outcome::Completed { size }
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            reason: "denied".into(),
        }
    }

    #[test]
    fn each_outcome_is_counted_once() {
        use FileState::*;
        assert_eq!(
            transition(Started, &completed(7)),
            Some(Delta {
                completed: 1,
                failed: 0,
                bytes: 7
            })
        );
        assert_eq!(
            transition(Completed, &completed(7)),
            None,
            "a duplicate delivery counts nothing"
        );
        assert_eq!(
            transition(Completed, &failed()),
            None,
            "a completed file never turns failed"
        );
        assert_eq!(
            transition(Started, &failed()),
            Some(Delta {
                completed: 0,
                failed: 1,
                bytes: 0
            })
        );
        assert_eq!(transition(Failed, &failed()), None);
        assert_eq!(
            transition(Failed, &completed(3)),
            Some(Delta {
                completed: 1,
                failed: -1,
                bytes: 3
            }),
            "a retried failure that succeeds moves from one counter to the other"
        );
    }

    #[test]
    fn outcomes_apply_once_and_keep_reasons_of_failed_files_only() {
        let mut outcomes = Outcomes::started(3);
        let first = [(0, completed(5)), (1, failed()), (2, completed(7))];
        assert_eq!(
            outcomes.apply(&first),
            Delta {
                completed: 2,
                failed: 1,
                bytes: 12
            }
        );
        assert_eq!(outcomes.encode_states(), "cfc");
        assert_eq!(
            outcomes.reasons,
            BTreeMap::from([(1, "denied".to_string())])
        );
        assert!(outcomes.apply(&first).is_zero(), "a second delivery");
        assert_eq!(
            outcomes.apply(&[(1, completed(9))]),
            Delta {
                completed: 1,
                failed: -1,
                bytes: 9
            }
        );
        assert_eq!(outcomes.encode_states(), "ccc");
        assert!(outcomes.reasons.is_empty());
    }

    #[test]
    fn recorded_states_are_read_back_or_named_as_unreadable() {
        let read = Outcomes::decode("scf", BTreeMap::new(), 4, 3).unwrap();
        assert_eq!(
            read.states,
            [FileState::Started, FileState::Completed, FileState::Failed]
        );
        assert_eq!(read.failed(), 1);
        assert!(
            Outcomes::decode("scx", BTreeMap::new(), 1, 3)
                .unwrap_err()
                .contains("'x'")
        );
        assert!(
            Outcomes::decode("sc", BTreeMap::new(), 1, 3)
                .unwrap_err()
                .contains("2 file states")
        );
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(short_reason("short"), "short");
        let long = "é".repeat(200);
        let cut = short_reason(&long);
        assert!(cut.len() <= MAX_REASON_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn files_round_trip_through_their_encoding() {
        let files = vec![
            file("raw/a \"quoted\"\n.csv", 0),
            file("raw/日本語.csv", 123),
        ];
        let encoded = encode_files(&files);
        assert_eq!(decode_files(&encoded).unwrap(), files);
        assert!(decode_files("{").is_err());
    }

    #[test]
    fn batches_respect_count_and_size() {
        let files: Vec<ListedFile> = (0..10).map(|i| file(&format!("raw/{i}.csv"), 10)).collect();
        let sizes: Vec<usize> = split(&files, 4, 1 << 20).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let two = encoded_len(&files[0]) * 2;
        let sizes: Vec<usize> = split(&files, 100, two).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 2, 2, 2, 2]);
        assert!(split(&[], 4, 100).is_empty());
        let huge = vec![file(&"x".repeat(500), 1)];
        assert_eq!(
            split(&huge, 4, 100).len(),
            1,
            "a file larger than the budget still travels alone"
        );
    }

    proptest! {
        #[test]
        fn encoded_length_is_exact(key in "\\PC{0,30}", size: u64) {
            let f = ListedFile { key, size, etag: "\"e\\\"t\"".into() };
            // `[` and `]` around the list replace the one entry's trailing comma.
            prop_assert_eq!(encode_files(std::slice::from_ref(&f)).len(), encoded_len(&f) + 1);
        }

        #[test]
        fn batches_keep_every_file_in_order(n in 0usize..300, max_files in 1usize..50, budget in 1usize..400) {
            let files: Vec<ListedFile> = (0..n)
                .map(|i| file(&format!("raw/{}\"{}.csv", "k".repeat(i % 7), i), i as u64))
                .collect();
            let out = split(&files, max_files, budget);
            let flat: Vec<ListedFile> = out.iter().flat_map(|b| b.iter().cloned()).collect();
            prop_assert_eq!(&flat, &files);
            for b in out {
                prop_assert!(!b.is_empty() && b.len() <= max_files);
                let bytes: usize = b.iter().map(encoded_len).sum();
                prop_assert!(b.len() == 1 || bytes <= budget);
            }
        }
    }
}
