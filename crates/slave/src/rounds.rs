//! Trying a batch's files again within one invocation: transient failures (throttling,
//! 5xx, timeouts) get a few more rounds, each after a growing pause, while the deadline
//! allows.

use std::time::Duration;

use common::deadline::Deadlines;
use common::rules::failure::MoveFailure;

/// Rounds of attempts at a file whose failure is transient (each after the SDK's own retries).
const ROUNDS: u32 = 3;

/// Runs `attempt` over the files (by position), then again over those that failed
/// transiently, up to [`ROUNDS`] times with a growing pause, as long as the deadline
/// allows; returns the last result of every file that was attempted (a file with none
/// was not reached).
pub(crate) async fn in_rounds<T, F, Fut>(
    mut todo: Vec<usize>,
    deadlines: Deadlines,
    attempt: F,
) -> Vec<(usize, Result<T, MoveFailure>)>
where
    F: Fn(Vec<usize>) -> Fut,
    Fut: std::future::Future<Output = Vec<(usize, Result<T, MoveFailure>)>>,
{
    let mut settled = Vec::with_capacity(todo.len());
    for round in 0..ROUNDS {
        if todo.is_empty() {
            break;
        }
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(500 << round)).await;
            if !deadlines.may_start() {
                break;
            }
        }
        let mut retry = Vec::new();
        for (i, result) in attempt(std::mem::take(&mut todo)).await {
            match result {
                Err(f) if f.transient && round + 1 < ROUNDS => retry.push(i),
                result => settled.push((i, result)),
            }
        }
        todo = retry;
    }
    settled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_tried_again_in_later_rounds_and_the_rest_settle_at_once() {
        let rounds = std::sync::Mutex::new(Vec::new());
        let settled = in_rounds(vec![0, 1, 2], Deadlines::none(), |round| {
            rounds.lock().unwrap().push(round.clone());
            async move {
                round
                    .into_iter()
                    .map(|i| {
                        let result = match i {
                            0 => Ok(()),
                            1 => Err(MoveFailure {
                                reason: "SlowDown".into(),
                                transient: true,
                            }),
                            _ => Err(MoveFailure::permanent("AccessDenied")),
                        };
                        (i, result)
                    })
                    .collect()
            }
        })
        .await;
        assert_eq!(*rounds.lock().unwrap(), [vec![0, 1, 2], vec![1], vec![1]]);
        let mut settled: Vec<(usize, bool)> = settled
            .into_iter()
            .map(|(i, result)| (i, result.is_ok()))
            .collect();
        settled.sort();
        assert_eq!(settled, [(0, true), (1, false), (2, false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_new_round_starts_after_the_soft_deadline() {
        let deadlines = Deadlines {
            soft: Some(tokio::time::Instant::now()),
            hard: None,
        };
        let settled = in_rounds(vec![0], deadlines, |round| async move {
            round
                .into_iter()
                .map(|i| {
                    let failure = MoveFailure {
                        reason: "SlowDown".into(),
                        transient: true,
                    };
                    (i, Err::<(), _>(failure))
                })
                .collect()
        })
        .await;
        assert!(
            settled.is_empty(),
            "the file is left for the next invocation"
        );
    }
}
