//! What became of a batch's files: each file's state, kept as one character per file,
//! so that recording a batch's outcomes rewrites a few hundred bytes instead of every
//! file's row, and how an outcome changes a file's state and the run's counters.

use std::collections::BTreeMap;

use crate::rules::checksum::Verification;

/// Where a file of a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileState {
    /// Recorded by master; no slave has recorded an outcome yet.
    Started,
    Completed,
    Failed,
    /// Left where it is on purpose: its destination exists and the run asked not to
    /// overwrite (`if_destination_exists: skip`).
    Skipped,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Started => "started",
            FileState::Completed => "completed",
            FileState::Failed => "failed",
            FileState::Skipped => "skipped",
        }
    }

    /// The character that stands for this state in a batch's `states`.
    fn code(self) -> char {
        match self {
            FileState::Started => 's',
            FileState::Completed => 'c',
            FileState::Failed => 'f',
            FileState::Skipped => 'k',
        }
    }

    fn from_code(code: char) -> Option<Self> {
        match code {
            's' => Some(FileState::Started),
            'c' => Some(FileState::Completed),
            'f' => Some(FileState::Failed),
            'k' => Some(FileState::Skipped),
            _ => None,
        }
    }
}

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed {
        size: u64,
        /// How the copy was verified before its source was deleted.
        verification: Verification,
    },
    Failed {
        reason: String,
    },
    /// Left in place on purpose, for this reason.
    Skipped {
        reason: String,
    },
}

/// Counter changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub completed: i64,
    pub failed: i64,
    pub skipped: i64,
    pub bytes: i64,
    /// Completed files whose copy was verified by a full-object checksum.
    pub by_checksum: i64,
}

impl std::ops::AddAssign for Delta {
    fn add_assign(&mut self, o: Delta) {
        self.completed += o.completed;
        self.failed += o.failed;
        self.skipped += o.skipped;
        self.bytes += o.bytes;
        self.by_checksum += o.by_checksum;
    }
}

impl Delta {
    pub fn is_zero(&self) -> bool {
        *self == Delta::default()
    }
}

/// The counter change when a file in state `from` gets `outcome`, or `None` when the
/// file must not change: a completed file stays completed (a duplicate delivery), and a
/// failed file that fails again is already counted; a skipped file stays skipped, and
/// only a file without an outcome can be skipped.
pub fn transition(from: FileState, outcome: &Outcome) -> Option<Delta> {
    match (from, outcome) {
        (FileState::Completed, _)
        | (FileState::Skipped, Outcome::Failed { .. } | Outcome::Skipped { .. })
        | (FileState::Failed, Outcome::Failed { .. } | Outcome::Skipped { .. }) => None,
        (FileState::Started, Outcome::Failed { .. }) => Some(Delta {
            failed: 1,
            ..Delta::default()
        }),
        (FileState::Started, Outcome::Skipped { .. }) => Some(Delta {
            skipped: 1,
            ..Delta::default()
        }),
        (from, Outcome::Completed { size, verification }) => Some(Delta {
            completed: 1,
            failed: if from == FileState::Failed { -1 } else { 0 },
            skipped: if from == FileState::Skipped { -1 } else { 0 },
            bytes: *size as i64,
            by_checksum: i64::from(*verification == Verification::Checksum),
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
    /// The reason of each failed or skipped file, by its position in the batch.
    pub reasons: BTreeMap<usize, String>,
    /// The ETag of the verified copy of each file whose source is about to be deleted,
    /// by position, where that ETag differs from the listed one (a multipart copy, an
    /// SSE-KMS object). It is recorded before the source is deleted, so that a later
    /// delivery that finds the source gone can still tell its copy from another object.
    pub copied: BTreeMap<usize, String>,
    /// 0 while no outcome has been recorded.
    pub version: u64,
}

impl Outcomes {
    /// A batch of `files` files, none with an outcome yet.
    pub fn started(files: usize) -> Self {
        Outcomes {
            states: vec![FileState::Started; files],
            reasons: BTreeMap::new(),
            copied: BTreeMap::new(),
            version: 0,
        }
    }

    /// Reads `states` (one character per file) as recorded for a batch of `files` files.
    pub fn decode(
        states: &str,
        reasons: BTreeMap<usize, String>,
        copied: BTreeMap<usize, String>,
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
        if let Some(i) = reasons.keys().chain(copied.keys()).find(|i| **i >= files) {
            return Err(format!(
                "an outcome names file {i} of a batch of {files} files"
            ));
        }
        Ok(Outcomes {
            states,
            reasons,
            copied,
            version,
        })
    }

    /// The states as recorded: one character per file, `s`, `c` or `f`.
    pub fn encode_states(&self) -> String {
        self.states.iter().map(|s| s.code()).collect()
    }

    /// The positions of the files without an outcome: the ones a delivery still moves.
    /// A recorded outcome is final, since the run may have been reported with it.
    pub fn open(&self) -> Vec<usize> {
        (0..self.states.len())
            .filter(|&i| self.states[i] == FileState::Started)
            .collect()
    }

    pub fn completed(&self) -> usize {
        self.states
            .iter()
            .filter(|s| **s == FileState::Completed)
            .count()
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
                    self.copied.remove(i);
                }
                Outcome::Failed { reason } => {
                    self.states[*i] = FileState::Failed;
                    self.reasons.insert(*i, short_reason(reason));
                }
                Outcome::Skipped { reason } => {
                    self.states[*i] = FileState::Skipped;
                    self.reasons.insert(*i, short_reason(reason));
                    self.copied.remove(i);
                }
            }
        }
        delta
    }
}

impl Outcomes {
    /// Records the ETags of verified copies whose sources are about to be deleted;
    /// whether anything changed (a completed file needs no record).
    pub fn record_copies(&mut self, copies: &[(usize, String)]) -> bool {
        let mut changed = false;
        for (i, etag) in copies {
            if self.states[*i] != FileState::Completed && self.copied.get(i) != Some(etag) {
                self.copied.insert(*i, etag.clone());
                changed = true;
            }
        }
        changed
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

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(size: u64) -> Outcome {
        Outcome::Completed {
            size,
            verification: Verification::Etag,
        }
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
                bytes: 7,
                ..Delta::default()
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
                bytes: 0,
                ..Delta::default()
            })
        );
        assert_eq!(transition(Failed, &failed()), None);
        assert_eq!(
            transition(Failed, &completed(3)),
            Some(Delta {
                completed: 1,
                failed: -1,
                bytes: 3,
                ..Delta::default()
            }),
            "a retried failure that succeeds moves from one counter to the other"
        );
    }

    #[test]
    fn a_copy_verified_by_checksum_is_counted_as_such_once() {
        let by_checksum = Outcome::Completed {
            size: 4,
            verification: Verification::Checksum,
        };
        let mut outcomes = Outcomes::started(2);
        let delta = outcomes.apply(&[(0, by_checksum.clone()), (1, completed(5))]);
        assert_eq!((delta.completed, delta.by_checksum, delta.bytes), (2, 1, 9));
        assert!(outcomes.apply(&[(0, by_checksum)]).is_zero());
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
                bytes: 12,
                ..Delta::default()
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
                bytes: 9,
                ..Delta::default()
            }
        );
        assert_eq!(outcomes.encode_states(), "ccc");
        assert!(outcomes.reasons.is_empty());
    }

    #[test]
    fn a_skipped_file_is_counted_once_and_stays_skipped() {
        use FileState::*;
        let skipped = || Outcome::Skipped {
            reason: "exists".into(),
        };
        assert_eq!(
            transition(Started, &skipped()),
            Some(Delta {
                skipped: 1,
                ..Delta::default()
            })
        );
        for from in [Completed, Failed, Skipped] {
            assert_eq!(transition(from, &skipped()), None, "{from:?}");
        }
        assert_eq!(transition(Skipped, &failed()), None);
        // a twin that moved the file after all: it leaves one counter for the other
        assert_eq!(
            transition(Skipped, &completed(3)),
            Some(Delta {
                completed: 1,
                skipped: -1,
                bytes: 3,
                ..Delta::default()
            })
        );
        let mut outcomes = Outcomes::started(2);
        let delta = outcomes.apply(&[(1, skipped())]);
        assert_eq!((delta.skipped, delta.completed, delta.failed), (1, 0, 0));
        assert_eq!(outcomes.encode_states(), "sk");
        assert_eq!(outcomes.reasons[&1], "exists");
        assert_eq!(outcomes.open(), [0]);
        assert_eq!(outcomes.failed(), 0, "a skipped file is not a failure");
        let read = Outcomes::decode("sk", outcomes.reasons.clone(), BTreeMap::new(), 1, 2);
        assert_eq!(read.unwrap().states, [Started, Skipped]);
    }

    #[test]
    fn only_files_without_an_outcome_are_left_to_move() {
        let mut outcomes = Outcomes::started(4);
        outcomes.apply(&[(1, completed(5)), (2, failed())]);
        assert_eq!(outcomes.open(), [0, 3]);
        assert_eq!((outcomes.completed(), outcomes.failed()), (1, 1));
    }

    #[test]
    fn copies_are_recorded_until_their_file_completes() {
        let mut outcomes = Outcomes::started(3);
        let copies = [(0, "\"abc-2\"".to_string()), (2, "\"def\"".to_string())];
        assert!(outcomes.record_copies(&copies));
        assert!(
            !outcomes.record_copies(&copies),
            "the same copies again change nothing"
        );
        outcomes.apply(&[(0, completed(5)), (2, failed())]);
        assert_eq!(
            outcomes.copied,
            BTreeMap::from([(2, "\"def\"".to_string())]),
            "a completed file's copy is no longer needed; a failed one's is kept"
        );
        assert!(!outcomes.record_copies(&[(0, "\"x\"".into())]));
    }

    #[test]
    fn recorded_states_are_read_back_or_named_as_unreadable() {
        let read = Outcomes::decode("scf", BTreeMap::new(), BTreeMap::new(), 4, 3).unwrap();
        assert_eq!(
            read.states,
            [FileState::Started, FileState::Completed, FileState::Failed]
        );
        assert_eq!(read.failed(), 1);
        let none = BTreeMap::new;
        assert!(
            Outcomes::decode("scx", none(), none(), 1, 3)
                .unwrap_err()
                .contains("'x'")
        );
        assert!(
            Outcomes::decode("sc", none(), none(), 1, 3)
                .unwrap_err()
                .contains("2 file states")
        );
        let beyond = BTreeMap::from([(3, "\"e\"".to_string())]);
        assert!(
            Outcomes::decode("scf", none(), beyond, 1, 3)
                .unwrap_err()
                .contains("file 3 of a batch of 3")
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
}
