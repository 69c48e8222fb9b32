//! Working within an invocation's time: when to stop starting work, when to give up on
//! work in flight, and a bounded-concurrency runner that keeps to both.

use std::future::Future;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, future, stream};
use tokio::time::Instant;

/// The two moments an invocation plans its work around.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadlines {
    /// From here on no new work starts: what is left goes to the next invocation.
    pub soft: Option<Instant>,
    /// Here work still in flight is abandoned, leaving just enough time to record what
    /// is done and hand the rest on.
    pub hard: Option<Instant>,
}

impl Deadlines {
    /// No deadline: everything runs to its end (a hand-built context, the tests).
    pub fn none() -> Self {
        Deadlines::default()
    }

    /// The moments `soft_margin` and `hard_margin` before the invocation's `deadline`.
    pub fn before(
        deadline: Option<SystemTime>,
        soft_margin: Duration,
        hard_margin: Duration,
    ) -> Self {
        let Some(deadline) = deadline else {
            return Deadlines::none();
        };
        let left = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let now = Instant::now();
        Deadlines {
            soft: Some(now + left.saturating_sub(soft_margin)),
            hard: Some(now + left.saturating_sub(hard_margin)),
        }
    }

    /// Whether new work may start.
    pub fn may_start(&self) -> bool {
        self.soft.is_none_or(|soft| Instant::now() < soft)
    }

    /// Resolves at the hard deadline; never without one.
    pub async fn cut_off(&self) {
        match self.hard {
            Some(hard) => tokio::time::sleep_until(hard).await,
            None => future::pending().await,
        }
    }
}

/// Runs `work` on each item, `concurrency` at once, starting none after the soft
/// deadline and abandoning those in flight at the hard one. Answers the results of
/// the items that finished, in the order they finished; the others have none.
pub async fn bounded<I, T, F, Fut>(
    items: Vec<I>,
    concurrency: usize,
    deadlines: Deadlines,
    work: F,
) -> Vec<(I, T)>
where
    I: Clone,
    F: Fn(I) -> Fut,
    Fut: Future<Output = T>,
{
    let mut finished = Vec::with_capacity(items.len());
    let running = stream::iter(items)
        .take_while(|_| future::ready(deadlines.may_start()))
        .map(|item| {
            let done = work(item.clone());
            async move { (item, done.await) }
        })
        .buffer_unordered(concurrency.max(1));
    tokio::pin!(running);
    let cut_off = deadlines.cut_off();
    tokio::pin!(cut_off);
    loop {
        tokio::select! {
            biased;
            next = running.next() => match next {
                Some(result) => finished.push(result),
                None => break,
            },
            () = &mut cut_off => break,
        }
    }
    finished
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_deadlines_everything_finishes() {
        let done = bounded(
            (0..20).collect(),
            4,
            Deadlines::none(),
            |i| async move { i * 2 },
        )
        .await;
        let mut done: Vec<_> = done.into_iter().map(|(_, v)| v).collect();
        done.sort();
        assert_eq!(done, (0..20).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_starts_after_the_soft_deadline_and_nothing_is_awaited_after_the_hard() {
        // GIVEN work items taking 1 s each, 2 at a time, a soft deadline at 2.5 s and a
        // hard one at 3.5 s
        let now = Instant::now();
        let deadlines = Deadlines {
            soft: Some(now + Duration::from_millis(2500)),
            hard: Some(now + Duration::from_millis(3500)),
        };
        let started = std::sync::Mutex::new(Vec::new());
        let done = bounded((0..10).collect(), 2, deadlines, |i| {
            started.lock().unwrap().push(i);
            async move {
                // item 4 would take long: it is in flight at the hard deadline
                let seconds = if i == 4 { 10 } else { 1 };
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                i
            }
        })
        .await;

        // THEN the items started before 2.5 s ran (0-1 at 0 s, 2-3 at 1 s, 4-5 at 2 s),
        // the long one was abandoned at 3.5 s, and nothing else started
        let mut done: Vec<usize> = done.into_iter().map(|(i, _)| i).collect();
        done.sort();
        assert_eq!(done, [0, 1, 2, 3, 5]);
        assert_eq!(started.lock().unwrap().len(), 6);
        assert!(Instant::now() - now <= Duration::from_millis(3600));
    }

    #[test]
    fn deadlines_are_margins_before_the_invocations_end() {
        let end = SystemTime::now() + Duration::from_secs(100);
        let d = Deadlines::before(Some(end), Duration::from_secs(60), Duration::from_secs(15));
        let soft = d.soft.unwrap() - Instant::now();
        let hard = d.hard.unwrap() - Instant::now();
        assert!(
            (Duration::from_secs(39)..=Duration::from_secs(40)).contains(&soft),
            "{soft:?}"
        );
        assert!(
            (Duration::from_secs(84)..=Duration::from_secs(85)).contains(&hard),
            "{hard:?}"
        );
        assert!(d.may_start());
        let past = Deadlines::before(
            Some(SystemTime::now()),
            Duration::from_secs(1),
            Duration::ZERO,
        );
        assert!(!past.may_start());
        assert_eq!(
            Deadlines::before(None, Duration::ZERO, Duration::ZERO),
            Deadlines::none()
        );
    }
}
