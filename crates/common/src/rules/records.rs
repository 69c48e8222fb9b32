//! What the status table holds about a run, as the project's own types, and where a
//! master call that resumes a run takes up.

use crate::rules::batch::{BatchId, ListedFile};
use crate::rules::checksum::Checksum;
use crate::rules::outcomes::{FileState, Outcomes};
use crate::rules::plan::Plan;
use crate::rules::progress::RunProgress;
use crate::rules::run::RunSpec;

/// How a finished run's activity task was completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Succeeded,
    Failed,
}

/// The run item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunRecord {
    /// Absent when only a task token has been recorded on the run so far.
    pub spec: Option<RunSpec>,
    pub listing_complete: bool,
    pub selected: u64,
    /// Listing position up to which every selected file is recorded in a batch and counted.
    pub recorded_through: Option<String>,
    /// Listing position up to which every recorded batch has been handed to a slave.
    pub handed_through: Option<String>,
    /// The run's activity task tokens that status calls have received (its own, or
    /// another run's status on its behalf), kept until the run's result is delivered.
    /// Usually one; a token whose heartbeat lapsed is replaced by a new one.
    pub task_tokens: Vec<String>,
    pub delivered: Option<Delivered>,
    /// A dry run's plan so far, up to `recorded_through`.
    pub plan: Option<Plan>,
    /// The ETag of the run's manifest when the run started: every later reading of it
    /// asks for that object, so a manifest replaced during the run is never half read.
    pub manifest_etag: Option<String>,
}

/// The run item and its counters, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunView {
    pub record: RunRecord,
    pub progress: RunProgress,
}

/// One batch as a slave reads it: its files and their outcomes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchView {
    pub id: BatchId,
    pub files: Vec<ListedFile>,
    pub outcomes: Outcomes,
}

/// A multipart copy in progress, as recorded for its file, so that an invocation that
/// runs out of time hands it on instead of starting over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub upload_id: String,
    pub part_size: u64,
    /// The listed ETag of the source the parts are copied from.
    pub source_etag: String,
    /// The source's version id, in a bucket that keeps versions: the version the move
    /// deletes once the copy is verified.
    pub source_version: Option<String>,
    /// The source's full-object CRC that the upload was created with and is completed
    /// with, so that S3 refuses a completed object whose bytes do not match; `None` for
    /// an upload made without one (the source has no full-object CRC, or the store
    /// refused it).
    pub source_checksum: Option<Checksum>,
    /// The ETag the completed object will have, recorded just before the upload is
    /// completed: a later invocation that finds the upload gone compares the
    /// destination with it.
    pub completing_etag: Option<String>,
}

/// One file of a run and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    pub file: ListedFile,
    pub state: FileState,
    /// Why it failed, for a failed file.
    pub reason: Option<String>,
}

/// Batches an earlier master call recorded but did not hand out: those whose first key
/// is after `after` and at most `through`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBatches {
    pub after: Option<String>,
    pub through: String,
}

/// Where a master call takes up a run whose listing is not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Batches to hand out first, from a call that stopped between recording and
    /// handing them out.
    pub pending: Option<PendingBatches>,
    /// The listing goes on after this key; from the start when `None`.
    pub list_after: Option<String>,
}

impl RunRecord {
    /// Where a master call takes up the run; `None` once its listing is complete.
    /// Every file up to `recorded_through` is recorded in a batch and counted, and every
    /// batch up to `handed_through` handed to a slave, so a call hands out what lies
    /// between and lists on after `recorded_through`.
    pub fn resume(&self) -> Option<Resume> {
        if self.listing_complete {
            return None;
        }
        let pending = self
            .recorded_through
            .as_ref()
            .filter(|recorded| self.handed_through.as_ref() != Some(*recorded))
            .map(|recorded| PendingBatches {
                after: self.handed_through.clone(),
                through: recorded.clone(),
            });
        Some(Resume {
            pending,
            list_after: self.recorded_through.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(recorded: Option<&str>, handed: Option<&str>) -> RunRecord {
        RunRecord {
            recorded_through: recorded.map(String::from),
            handed_through: handed.map(String::from),
            ..RunRecord::default()
        }
    }

    #[test]
    fn a_new_run_lists_from_the_start_with_nothing_to_hand_out() {
        assert_eq!(
            record(None, None).resume(),
            Some(Resume {
                pending: None,
                list_after: None
            })
        );
    }

    #[test]
    fn a_call_that_stopped_before_handing_out_leaves_its_batches_to_the_next() {
        let resume = record(Some("raw/0500"), Some("raw/0200")).resume().unwrap();
        assert_eq!(
            resume.pending,
            Some(PendingBatches {
                after: Some("raw/0200".into()),
                through: "raw/0500".into()
            })
        );
        assert_eq!(resume.list_after.as_deref(), Some("raw/0500"));
        let first_page = record(Some("raw/0100"), None).resume().unwrap();
        assert_eq!(first_page.pending.unwrap().after, None);
        let handed = record(Some("raw/0500"), Some("raw/0500")).resume().unwrap();
        assert_eq!(handed.pending, None);
    }

    #[test]
    fn a_run_whose_listing_is_complete_is_not_resumed() {
        let done = RunRecord {
            listing_complete: true,
            ..record(Some("raw/9"), Some("raw/9"))
        };
        assert_eq!(done.resume(), None);
    }
}
