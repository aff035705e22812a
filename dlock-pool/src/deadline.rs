//! One deadline for the checkout wait and the lock wait together.

use std::time::{Duration, Instant};

use dlock_core::Wait;

/// The deadline of `acquire_timeout(timeout)` begun at `start`. A timeout too large for an
/// `Instant` has no deadline.
pub(crate) fn deadline(start: Instant, timeout: Duration) -> Option<Instant> {
    start.checked_add(timeout)
}

/// What is left of `deadline` at `now` for the checkout; zero once it passed.
pub(crate) fn remaining(deadline: Instant, now: Instant) -> Duration {
    deadline.saturating_duration_since(now)
}

/// The lock wait after a checkout that ended at `now`. A checkout that used the whole
/// deadline still gets a try: a free lock is taken, never reported as busy.
pub(crate) fn lock_wait(deadline: Option<Instant>, now: Instant) -> Wait {
    match deadline {
        None => Wait::Forever,
        Some(deadline) => match remaining(deadline, now) {
            left if left.is_zero() => Wait::Never,
            left => Wait::For(left),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_wait_gets_what_the_checkout_left() {
        let start = Instant::now();
        let deadline = deadline(start, Duration::from_millis(500));
        let after_checkout = start + Duration::from_millis(120);
        assert_eq!(
            lock_wait(deadline, after_checkout),
            Wait::For(Duration::from_millis(380))
        );
    }

    #[test]
    fn a_checkout_that_used_the_deadline_leaves_a_try() {
        let start = Instant::now();
        let deadline = deadline(start, Duration::from_millis(100));
        assert_eq!(
            lock_wait(deadline, start + Duration::from_millis(100)),
            Wait::Never
        );
        assert_eq!(
            lock_wait(deadline, start + Duration::from_secs(3)),
            Wait::Never
        );
        assert_eq!(
            remaining(deadline.unwrap(), start + Duration::from_secs(3)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_zero_timeout_is_a_try_and_an_endless_one_has_no_deadline() {
        let start = Instant::now();
        assert_eq!(
            lock_wait(deadline(start, Duration::ZERO), start),
            Wait::Never
        );
        assert_eq!(deadline(start, Duration::MAX), None);
        assert_eq!(lock_wait(None, start), Wait::Forever);
    }
}
