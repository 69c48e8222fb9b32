//! Whether a run is finished, and what its failure says.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rules::keys::shown;

/// A run's counters, as recorded in its run partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunProgress {
    pub listing_complete: bool,
    pub selected: u64,
    pub completed: u64,
    pub failed: u64,
    /// Files left in place on purpose (`if_destination_exists: skip`): done, not failed.
    #[serde(default)]
    pub skipped: u64,
    pub bytes: u64,
    /// Completed files verified by a full-object checksum; the others were verified by
    /// size and ETag.
    #[serde(default)]
    pub by_checksum: u64,
    /// A dry run moves nothing: it is done when its listing is.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Master has not finished listing: more files may still be selected.
    Listing,
    /// Listing is done; this many selected files have no outcome yet.
    Moving { remaining: u64 },
    /// Every selected file is completed.
    Succeeded,
    /// Every selected file has an outcome and at least one failed.
    Failed,
}

impl RunProgress {
    pub fn verdict(&self) -> Verdict {
        let done = self.completed + self.failed + self.skipped;
        if !self.listing_complete {
            Verdict::Listing
        } else if self.dry_run {
            Verdict::Succeeded
        } else if done < self.selected {
            Verdict::Moving {
                remaining: self.selected - done,
            }
        } else if self.failed > 0 {
            Verdict::Failed
        } else {
            Verdict::Succeeded
        }
    }
}

/// The shortest pause between two reads of a run's counters: near a run's end, a
/// waiting status call reads them at most ten times a second.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// How long a waiting status call pauses before it reads the run's counters again.
///
/// `remaining` is how many selected files the last read found without an outcome
/// (`None` while master is still listing); `earlier` is what the read before it found
/// and how long before. Files finishing at the rate seen between the two reads would
/// all be done after `remaining / rate`: the call reads again then, so the run ends
/// within a short pause of its last file rather than up to a whole `interval` after it.
/// The first read of a moving run is followed by a short one, to see the rate; a run
/// that is listing, or in which no file finished between the reads (a straggler, a
/// large object), is read again after `interval`.
pub fn next_check(
    interval: Duration,
    remaining: Option<u64>,
    earlier: Option<(u64, Duration)>,
) -> Duration {
    let shortest = MIN_CHECK_INTERVAL.min(interval);
    let Some(remaining) = remaining else {
        return interval;
    };
    match earlier {
        None => shortest,
        Some((before, apart)) if before > remaining => apart
            .mul_f64(remaining as f64 / (before - remaining) as f64)
            .clamp(shortest, interval),
        Some(_) => interval,
    }
}

/// Whether a status call may wait one more check `interval` for an unfinished run: the
/// wait stays within `run_wait`, and after it the call still has time (`left` before its
/// deadline) for one poll of the activity task and its margin (`poll_and_margin`). A
/// call without a deadline does not wait.
pub fn may_wait(
    waited: Duration,
    interval: Duration,
    run_wait: Duration,
    left: Option<Duration>,
    poll_and_margin: Duration,
) -> bool {
    waited + interval <= run_wait && left.is_some_and(|left| left > interval + poll_and_margin)
}

/// Step Functions' limit on a task failure's cause.
pub const MAX_CAUSE_CHARS: usize = 32_768;

/// The cause sent with a failed run's task failure: how many failed, then each failed
/// file with its reason, cut to fit the limit.
pub fn failure_cause(progress: &RunProgress, listed: &[(String, String)]) -> String {
    let mut cause = format!(
        "{} of {} files failed to move:",
        progress.failed, progress.selected
    );
    let mut named = 0u64;
    for (key, reason) in listed {
        let line = format!("\n{}: {reason}", shown(key));
        // Leave room for the closing "and N more" line.
        if cause.len() + line.len() > MAX_CAUSE_CHARS - 64 {
            break;
        }
        cause.push_str(&line);
        named += 1;
    }
    if named < progress.failed {
        cause.push_str(&format!("\n... and {} more", progress.failed - named));
    }
    cause
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(listing_complete: bool, selected: u64, completed: u64, failed: u64) -> RunProgress {
        RunProgress {
            listing_complete,
            selected,
            completed,
            failed,
            ..RunProgress::default()
        }
    }

    #[test]
    fn a_dry_run_is_done_when_its_listing_is() {
        let planned = RunProgress {
            dry_run: true,
            ..progress(true, 10, 0, 0)
        };
        assert_eq!(planned.verdict(), Verdict::Succeeded);
        let listing = RunProgress {
            dry_run: true,
            ..progress(false, 10, 0, 0)
        };
        assert_eq!(listing.verdict(), Verdict::Listing);
    }

    #[test]
    fn skipped_files_are_done_and_not_failures() {
        let run = RunProgress {
            skipped: 3,
            ..progress(true, 10, 7, 0)
        };
        assert_eq!(run.verdict(), Verdict::Succeeded);
        let run = RunProgress {
            skipped: 2,
            ..progress(true, 10, 7, 0)
        };
        assert_eq!(run.verdict(), Verdict::Moving { remaining: 1 });
    }

    #[test]
    fn a_run_is_not_finished_while_listing() {
        assert_eq!(progress(false, 0, 0, 0).verdict(), Verdict::Listing);
        assert_eq!(progress(false, 10, 10, 0).verdict(), Verdict::Listing);
    }

    #[test]
    fn a_run_finishes_when_every_selected_file_has_an_outcome() {
        assert_eq!(
            progress(true, 10, 7, 1).verdict(),
            Verdict::Moving { remaining: 2 }
        );
        assert_eq!(progress(true, 10, 10, 0).verdict(), Verdict::Succeeded);
        assert_eq!(progress(true, 10, 9, 1).verdict(), Verdict::Failed);
        assert_eq!(
            progress(true, 0, 0, 0).verdict(),
            Verdict::Succeeded,
            "an empty prefix is a finished run"
        );
    }

    #[test]
    fn a_status_call_waits_only_while_a_check_and_a_poll_still_fit() {
        let s = Duration::from_secs;
        let poll = s(65);
        assert!(may_wait(s(0), s(1), s(45), Some(s(900)), poll));
        assert!(may_wait(s(44), s(1), s(45), Some(s(900)), poll));
        assert!(
            !may_wait(s(45), s(1), s(45), Some(s(900)), poll),
            "waited long enough"
        );
        assert!(
            !may_wait(s(0), s(1), s(45), Some(s(66)), poll),
            "no time to poll after"
        );
        assert!(!may_wait(s(0), s(1), s(45), None, poll), "no deadline");
    }

    #[test]
    fn a_moving_run_is_read_again_about_when_its_last_file_should_be_done() {
        let ms = Duration::from_millis;
        let interval = ms(1000);
        assert_eq!(
            next_check(interval, None, Some((10, ms(500)))),
            interval,
            "still listing"
        );
        assert_eq!(
            next_check(interval, Some(500), None),
            MIN_CHECK_INTERVAL,
            "a first read is followed by a short one, to see the rate"
        );
        assert_eq!(
            next_check(interval, Some(300), Some((500, ms(100)))),
            ms(150),
            "200 files in 100 ms: the last 300 in 150 ms"
        );
        assert_eq!(
            next_check(interval, Some(10), Some((500, ms(100)))),
            MIN_CHECK_INTERVAL,
            "never shorter than the shortest pause"
        );
        assert_eq!(
            next_check(interval, Some(9_000), Some((9_100, ms(100)))),
            interval,
            "never longer than the interval"
        );
        assert_eq!(
            next_check(interval, Some(3), Some((3, ms(100)))),
            interval,
            "nothing finished between the reads: a straggler"
        );
        assert_eq!(
            next_check(ms(50), Some(500), None),
            ms(50),
            "an interval set shorter than the shortest pause is kept"
        );
    }

    #[test]
    fn the_failure_cause_shows_keys_with_control_characters_escaped() {
        let listed = vec![("raw/a\nb.csv".to_string(), "denied".to_string())];
        assert_eq!(
            failure_cause(&progress(true, 1, 0, 1), &listed),
            "1 of 1 files failed to move:\nraw/a\\u{a}b.csv: denied"
        );
    }

    #[test]
    fn the_failure_cause_names_each_failed_file_within_the_limit() {
        let p = progress(true, 10, 8, 2);
        let listed = vec![
            ("raw/a.csv".to_string(), "AccessDenied".to_string()),
            ("raw/b.csv".to_string(), "gone".to_string()),
        ];
        assert_eq!(
            failure_cause(&p, &listed),
            "2 of 10 files failed to move:\nraw/a.csv: AccessDenied\nraw/b.csv: gone"
        );
        let many: Vec<(String, String)> = (0..5000)
            .map(|i| (format!("raw/{i:04}.csv"), "x".repeat(20)))
            .collect();
        let p = progress(true, 5000, 0, 5000);
        let cause = failure_cause(&p, &many);
        assert!(cause.len() <= MAX_CAUSE_CHARS);
        assert!(cause.ends_with(" more"), "{}", &cause[cause.len() - 40..]);
    }
}
