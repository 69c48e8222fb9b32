//! Pure decisions about a run's state: is it finished, and whose activity task is this.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::keys::shown;
use crate::run::RunId;

/// A run's counters, as recorded in its run partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunProgress {
    pub listing_complete: bool,
    pub selected: u64,
    pub completed: u64,
    pub failed: u64,
    pub bytes: u64,
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
        let done = self.completed + self.failed;
        if !self.listing_complete {
            Verdict::Listing
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

/// What to do with an activity task handed out by `GetActivityTask`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskRoute {
    /// The task belongs to the run asking.
    Mine,
    /// The task belongs to another run: keep its token on that run.
    Other(RunId),
    /// The task's input names no valid run: no status check can ever deliver it.
    Unroutable(String),
}

/// Routes an activity task by the `run_id` in its input (the state machine passes
/// `$$.Execution.Name` there).
pub fn route_task(input: Option<&str>, me: &RunId) -> TaskRoute {
    let Some(input) = input else {
        return TaskRoute::Unroutable("the activity task has no input".into());
    };
    let value: serde_json::Value = match serde_json::from_str(input) {
        Ok(v) => v,
        Err(e) => {
            return TaskRoute::Unroutable(format!("the activity task input is not JSON: {e}"));
        }
    };
    let Some(raw) = value.get("run_id").and_then(|v| v.as_str()) else {
        return TaskRoute::Unroutable("the activity task input has no run_id string".into());
    };
    match RunId::parse(raw) {
        Ok(id) if &id == me => TaskRoute::Mine,
        Ok(id) => TaskRoute::Other(id),
        Err(e) => TaskRoute::Unroutable(format!("the activity task input has a bad run_id: {e}")),
    }
}

/// Where an execution's activity task stands, as its history shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityState {
    /// Completed: some status call delivered the run's result (`succeeded` or not).
    Delivered { succeeded: bool },
    /// Waiting for an answer: scheduled, taken, or timed out and about to be scheduled
    /// again (a missed heartbeat) or to end the execution (the run timeout). A token it
    /// no longer takes has been replaced, or will not be needed.
    Waiting,
    /// The execution ended: nothing can be delivered.
    Ended,
}

/// The state of the activity task from the types of an execution's history events,
/// newest first. The newest activity or execution-end event decides; a timed-out task
/// is waiting whatever its error, since only the execution's end is final.
///
/// A redrive runs again only the branches that did not succeed: past an
/// `ExecutionRedriven` event, the end before it no longer counts, and an older success of
/// the task still stands while any other task event means the task runs again.
///
/// `None` when no event decides: older events may, or else the task is waiting.
pub fn activity_state<'a>(
    newest_first: impl IntoIterator<Item = &'a str>,
) -> Option<ActivityState> {
    let mut redriven = false;
    for event in newest_first {
        match event {
            "ActivitySucceeded" => return Some(ActivityState::Delivered { succeeded: true }),
            "ActivityFailed" if !redriven => {
                return Some(ActivityState::Delivered { succeeded: false });
            }
            "ExecutionSucceeded" | "ExecutionFailed" | "ExecutionAborted" | "ExecutionTimedOut"
                if !redriven =>
            {
                return Some(ActivityState::Ended);
            }
            "ExecutionRedriven" => redriven = true,
            "ActivityFailed"
            | "ActivityScheduled"
            | "ActivityStarted"
            | "ActivityScheduleFailed"
            | "ActivityTimedOut" => return Some(ActivityState::Waiting),
            _ => {}
        }
    }
    None
}

/// When a run must be finished: its execution's start plus its timeout. `None` if
/// either is missing or the start is not an RFC 3339 time.
pub fn run_deadline(started_at: Option<&str>, timeout_seconds: Option<u32>) -> Option<SystemTime> {
    let started = aws_smithy_types::DateTime::from_str(
        started_at?,
        aws_smithy_types::date_time::Format::DateTime,
    )
    .ok()?;
    let started = SystemTime::try_from(started).ok()?;
    Some(started + Duration::from_secs(timeout_seconds?.into()))
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
            bytes: 0,
        }
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
    fn tasks_are_routed_by_the_run_id_in_their_input() {
        let me = RunId::parse("run-a").unwrap();
        assert_eq!(
            route_task(Some(r#"{"run_id":"run-a"}"#), &me),
            TaskRoute::Mine
        );
        assert_eq!(
            route_task(Some(r#"{"run_id":"run-b","other":1}"#), &me),
            TaskRoute::Other(RunId::parse("run-b").unwrap())
        );
        for bad in [
            None,
            Some("not json"),
            Some("{}"),
            Some(r#"{"run_id":7}"#),
            Some(r#"{"run_id":"a b"}"#),
        ] {
            assert!(
                matches!(route_task(bad, &me), TaskRoute::Unroutable(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_newest_activity_event_says_whether_the_result_was_delivered() {
        let state = |events: &[&'static str]| {
            activity_state(events.iter().copied()).expect("an event decides")
        };
        assert_eq!(
            state(&[
                "LambdaFunctionFailed",
                "ActivitySucceeded",
                "ActivityStarted"
            ]),
            ActivityState::Delivered { succeeded: true }
        );
        assert_eq!(
            state(&["ActivityFailed"]),
            ActivityState::Delivered { succeeded: false }
        );
        assert_eq!(
            state(&["ActivityStarted", "ActivityScheduled", "ActivityTimedOut"]),
            ActivityState::Waiting,
            "a token lost to a missed heartbeat was replaced"
        );
        assert_eq!(
            state(&["ActivityTimedOut"]),
            ActivityState::Waiting,
            "a timed-out task is scheduled again, or the execution ends next"
        );
        assert_eq!(
            state(&["ExecutionFailed", "ActivityTimedOut"]),
            ActivityState::Ended
        );
        assert_eq!(activity_state(["LambdaFunctionSucceeded"]), None);
        assert_eq!(activity_state([]), None);
    }

    #[test]
    fn a_redrive_runs_the_task_again_unless_it_succeeded_before() {
        let state = |events: &[&'static str]| activity_state(events.iter().copied());
        assert_eq!(
            state(&["ExecutionRedriven", "ExecutionFailed", "ActivityTimedOut"]),
            Some(ActivityState::Waiting),
            "the branch waiting on the task timed out: it runs again"
        );
        assert_eq!(
            state(&["ExecutionRedriven", "ExecutionFailed", "ActivityFailed"]),
            Some(ActivityState::Waiting),
            "a failed task is scheduled again"
        );
        assert_eq!(
            state(&[
                "ExecutionRedriven",
                "ExecutionFailed",
                "LambdaFunctionFailed",
                "ActivitySucceeded"
            ]),
            Some(ActivityState::Delivered { succeeded: true }),
            "the task's branch succeeded: only the failed branch runs again"
        );
        assert_eq!(
            state(&["ExecutionRedriven", "ExecutionFailed"]),
            None,
            "older events decide"
        );
        assert_eq!(
            state(&[
                "ActivityScheduled",
                "ExecutionRedriven",
                "ExecutionFailed",
                "ActivitySucceeded"
            ]),
            Some(ActivityState::Waiting),
            "events after the redrive come first"
        );
    }

    #[test]
    fn a_runs_deadline_is_its_start_plus_its_timeout() {
        let deadline = run_deadline(Some("2026-11-28T10:00:00.250Z"), Some(3600)).unwrap();
        let expected = aws_smithy_types::DateTime::from_str(
            "2026-11-28T11:00:00.250Z",
            aws_smithy_types::date_time::Format::DateTime,
        )
        .unwrap();
        assert_eq!(deadline, SystemTime::try_from(expected).unwrap());
        assert_eq!(run_deadline(None, Some(1)), None);
        assert_eq!(run_deadline(Some("yesterday"), Some(1)), None);
        assert_eq!(run_deadline(Some("2026-11-28T10:00:00Z"), None), None);
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
