//! Waiting out what fails for a while: the one backoff every retry in trellis waits by.
//!
//! [`Backoff`] is backon's exponential backoff with jitter, asked for as long as the caller
//! retries; [`until_done`] runs a bus operation until it succeeds or fails for good (an error
//! that is not [`BusError::is_retryable`]).

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::BusError;

/// Waits that double from a first one, each with jitter, never longer than a ceiling, without
/// end. Each wait is the doubled one plus up to as much again at random, so waiters that failed
/// together do not come back together.
#[derive(Debug)]
pub struct Backoff {
    waits: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Waits from `min` (plus jitter), doubling, never longer than `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        // The jitter adds up to the wait again: the doubling stops at half the ceiling.
        let waits = ExponentialBuilder::default()
            .with_min_delay(min.min(max / 2))
            .with_max_delay(max / 2)
            .with_jitter()
            .without_max_times()
            .build();
        Backoff { waits, max }
    }

    /// For a bus that is briefly unavailable (a broker restarting, a full disk being freed):
    /// 100 ms doubling up to 5 s.
    pub fn bus() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// How long to wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        self.waits.next().unwrap_or(self.max).min(self.max)
    }
}

/// Runs `op` until it succeeds, waiting out retryable errors with [`Backoff::bus`] and logging
/// each as "`what` failed; retrying."; an error retrying does not fix is returned.
pub async fn until_done<T, F, Fut>(what: &str, mut op: F) -> Result<T, BusError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BusError>>,
{
    let mut backoff = Backoff::bus();
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_retryable() => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "{what} failed; retrying.");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_with_jitter_up_to_the_ceiling_and_go_on() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..12).map(|_| backoff.next_wait()).collect();
        // backon's jitter adds up to the wait itself on top of it.
        assert!(waits[0] >= Duration::from_millis(100) && waits[0] <= Duration::from_millis(200));
        assert!(waits[2] >= Duration::from_millis(400));
        for wait in &waits[4..] {
            assert!(*wait >= Duration::from_millis(500) && *wait <= Duration::from_secs(1));
        }
        assert!(
            waits[4..].windows(2).any(|w| w[0] != w[1]),
            "jittered: {waits:?}"
        );
    }

    #[tokio::test]
    async fn until_done_waits_out_retryable_errors_and_returns_the_others() {
        let mut calls = 0;
        let answer = until_done("Testing", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(BusError::Unavailable("down".into()))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(answer.unwrap(), 3);
        let refused: Result<(), BusError> =
            until_done("Testing", || async { Err(BusError::Config("no".into())) }).await;
        assert!(matches!(refused, Err(BusError::Config(_))));
    }
}
