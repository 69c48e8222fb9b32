//! Whose activity task this is, and where an execution's task stands.

use std::time::{Duration, SystemTime};

use crate::rules::run::RunId;

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

/// Whether a status call may poll for the activity task once more: with a deadline,
/// while one poll and its margin (`poll_and_margin`) fit in the time `left`; without
/// one, `polls_without_deadline` times.
pub fn may_poll(
    left: Option<Duration>,
    poll_and_margin: Duration,
    polls: u32,
    polls_without_deadline: u32,
) -> bool {
    match left {
        Some(left) => left > poll_and_margin,
        None => polls < polls_without_deadline,
    }
}

/// When a run must be finished: its execution's start plus its timeout. `None` if
/// either is missing.
pub fn run_deadline(
    started: Option<SystemTime>,
    timeout_seconds: Option<u32>,
) -> Option<SystemTime> {
    Some(started? + Duration::from_secs(timeout_seconds?.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_status_call_polls_while_a_poll_fits_before_its_deadline() {
        let s = Duration::from_secs;
        assert!(may_poll(Some(s(66)), s(65), 9, 2));
        assert!(!may_poll(Some(s(65)), s(65), 0, 2));
        assert!(may_poll(None, s(65), 1, 2));
        assert!(!may_poll(None, s(65), 2, 2));
    }

    #[test]
    fn a_runs_deadline_is_its_start_plus_its_timeout() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_860_000_250);
        assert_eq!(
            run_deadline(Some(start), Some(3600)),
            Some(start + Duration::from_secs(3600))
        );
        assert_eq!(run_deadline(None, Some(1)), None);
        assert_eq!(run_deadline(Some(start), None), None);
    }
}
