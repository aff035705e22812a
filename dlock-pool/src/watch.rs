//! The watcher of a pool's held locks: what it knows and decides, with no I/O. Each pool
//! flavour drives it from its own thread (r2d2) or task (bb8): it takes a [`Round`], asks the
//! server through a connection of its own whether each lock of the round is still held, and
//! hands the answer to [`Watch::finish`].
//!
//! Each held lock has a [`Signal`], shared by its guard and the watch. A lock is lost when the
//! watcher finds it no longer held, or when nothing confirmed it for longer than the bound
//! (unknown counts as lost). Once lost it stays lost, and its connection is marked to be
//! closed, so it never goes back to the pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
#[cfg(feature = "bb8")]
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dlock_core::{Error, LostReason};

use crate::manager::CloseMark;

/// A held lock as the watcher asks about it: the session that holds it, and its key.
pub(crate) type WatchedLock = (dlock_core::SessionId, dlock_core::Key);

/// `locks` with their keys in the backend's form, under `policy` (which took them).
#[cfg(any(feature = "mysql", feature = "postgres"))]
pub(crate) fn in_backend_form<K>(
    policy: &dlock_core::KeyPolicy,
    locks: &[WatchedLock],
    form: impl Fn(&dlock_core::KeyPolicy, &dlock_core::Key) -> dlock_core::Result<K>,
) -> dlock_core::Result<Vec<(dlock_core::SessionId, K)>> {
    locks
        .iter()
        .map(|(session, key)| Ok((*session, form(policy, key)?)))
        .collect()
}

/// The watcher's settings: how often it checks, and how long a lock may go unconfirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WatchSettings {
    /// `None` turns the watcher off.
    interval: Option<Duration>,
    /// `None` means three intervals.
    unconfirmed: Option<Duration>,
}

/// The default interval between two checks.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest interval: a shorter one would keep a core busy for nothing.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(10);

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            interval: Some(DEFAULT_INTERVAL),
            unconfirmed: None,
        }
    }
}

impl WatchSettings {
    pub(crate) fn every(self, interval: Duration) -> Self {
        WatchSettings {
            interval: Some(interval.max(MIN_INTERVAL)),
            ..self
        }
    }

    pub(crate) fn lost_after(self, unconfirmed: Duration) -> Self {
        WatchSettings {
            unconfirmed: Some(unconfirmed),
            ..self
        }
    }

    pub(crate) fn off(self) -> Self {
        WatchSettings {
            interval: None,
            ..self
        }
    }

    fn bound(self) -> Option<Duration> {
        let interval = self.interval?;
        Some(self.unconfirmed.unwrap_or(interval.saturating_mul(3)))
    }
}

/// One held lock's news, shared by its guard and the watch.
#[derive(Debug)]
pub(crate) struct Signal {
    /// The key as the user gave it, for the error.
    key: String,
    /// How long the lock may go unconfirmed; `None` when nothing watches it.
    bound: Option<Duration>,
    /// The guard's connection, closed instead of reused once the lock is lost.
    mark: CloseMark,
    state: Mutex<SignalState>,
    changed: Condvar,
}

#[derive(Debug)]
struct SignalState {
    /// When the lock was last known held: its grant, or the start of a check that found it.
    confirmed_at: Instant,
    lost: Option<LostReason>,
    /// The tasks waiting in `lost()`.
    wakers: Vec<Waker>,
}

impl Signal {
    /// The signal of a lock nothing watches: only the guard's own operations (a verify that
    /// finds it gone) report it lost.
    pub(crate) fn unwatched(key: String, mark: CloseMark) -> Arc<Self> {
        Arc::new(Signal::new(key, None, mark, Instant::now()))
    }

    fn new(key: String, bound: Option<Duration>, mark: CloseMark, granted_at: Instant) -> Self {
        Signal {
            key,
            bound,
            mark,
            state: Mutex::new(SignalState {
                confirmed_at: granted_at,
                lost: None,
                wakers: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, SignalState> {
        // Nothing panics while holding it; a poisoned state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lock was held at `at`.
    fn confirm(&self, at: Instant) {
        let mut state = self.state();
        if at > state.confirmed_at {
            state.confirmed_at = at;
        }
    }

    /// The lock is lost for `reason`, unless it already was: from now on for good.
    pub(crate) fn lose(&self, reason: LostReason) {
        let mut state = self.state();
        self.lose_locked(&mut state, reason);
    }

    fn lose_locked(&self, state: &mut SignalState, reason: LostReason) {
        if state.lost.is_some() {
            return;
        }
        tracing::warn!(target: "dlock", key = %self.key, %reason, "a pooled lock was lost");
        state.lost = Some(reason);
        self.mark.set();
        self.changed.notify_all();
        for waker in state.wakers.drain(..) {
            waker.wake();
        }
    }

    /// Why the lock is lost at `now`, if it is: a past loss, or a confirmation older than the
    /// bound (which makes it lost from then on).
    fn lost_at(&self, state: &mut SignalState, now: Instant) -> Option<LostReason> {
        if state.lost.is_none()
            && let Some(bound) = self.bound
        {
            let unconfirmed = now.saturating_duration_since(state.confirmed_at);
            if unconfirmed > bound {
                self.lose_locked(state, LostReason::Unconfirmed { unconfirmed });
            }
        }
        state.lost.clone()
    }

    /// Why the lock is lost now, if it is. No I/O.
    pub(crate) fn lost_now(&self) -> Option<LostReason> {
        self.lost_at(&mut self.state(), Instant::now())
    }

    /// When the lock counts as lost if nothing confirms it first; `None` when never.
    #[cfg(feature = "bb8")]
    fn unconfirmed_deadline(&self) -> Option<Instant> {
        let state = self.state();
        let bound = self.bound?;
        state.confirmed_at.checked_add(bound)
    }

    /// Waits up to `timeout` for the lock to be lost: whether it was.
    #[cfg_attr(not(feature = "r2d2"), allow(dead_code))]
    pub(crate) fn wait_lost(&self, timeout: Duration) -> bool {
        let until = Instant::now().checked_add(timeout);
        let mut state = self.state();
        loop {
            let now = Instant::now();
            if self.lost_at(&mut state, now).is_some() {
                return true;
            }
            let stale_at = self
                .bound
                .and_then(|bound| state.confirmed_at.checked_add(bound));
            // Wake at the deadline, or when the bound runs out, whichever comes first.
            let wake_at = match (until, stale_at) {
                (Some(until), Some(stale)) => Some(until.min(stale)),
                (until, stale) => until.or(stale),
            };
            if until.is_some_and(|until| now >= until) {
                return false;
            }
            state = match wake_at {
                Some(at) => {
                    // Past the bound by a hair, so that the check above sees it run out.
                    let pause = at.saturating_duration_since(now) + Duration::from_millis(1);
                    self.changed
                        .wait_timeout(state, pause)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0
                }
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            };
        }
    }

    /// Ready with the reason once the watcher or a guard operation found the lock lost; no
    /// timer: the caller also wakes when the bound runs out.
    #[cfg(feature = "bb8")]
    fn poll_lost(&self, cx: &mut Context<'_>) -> Poll<LostReason> {
        let mut state = self.state();
        if let Some(reason) = self.lost_at(&mut state, Instant::now()) {
            return Poll::Ready(reason);
        }
        if !state.wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The error of a release or `with_lock` that found the lock lost for `reason`.
    pub(crate) fn error(&self, reason: LostReason) -> Error {
        Error::LockLost {
            key: self.key.clone(),
            reason,
        }
    }
}

/// Tells `signal` what a verify found: a lock the server no longer lists, or a connection
/// that failed, is lost.
pub(crate) fn note_verified(signal: &Signal, verified: &dlock_core::Result<bool>) {
    match verified {
        Ok(false) => signal.lose(LostReason::NotHeld),
        Err(error) if error.is_connection_error() => signal.lose(LostReason::ConnectionFailed),
        _ => {}
    }
}

/// Resolves when `signal`'s lock is lost, with the reason: waits for the watcher's news and,
/// with tokio's timer, for the bound to run out.
#[cfg(feature = "bb8")]
pub(crate) async fn lost(signal: Arc<Signal>) -> LostReason {
    loop {
        let deadline = signal.unconfirmed_deadline();
        let mut sleep = deadline.map(|at| Box::pin(tokio::time::sleep_until(at.into())));
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(reason) = signal.poll_lost(cx) {
                return Poll::Ready(Some(reason));
            }
            match sleep.as_mut() {
                Some(sleep) => sleep.as_mut().poll(cx).map(|()| None),
                None => Poll::Pending,
            }
        })
        .await;
        if let Some(reason) = woke {
            return reason;
        }
        // The bound ran out as last seen; a confirmation may have moved it since.
    }
}

/// One lock the watcher checks: its backend's description of it (session and key) and its
/// signal.
#[derive(Debug)]
struct Entry<H> {
    held: H,
    signal: Arc<Signal>,
}

/// The held locks of one pool, and the watcher's settings.
#[derive(Debug)]
pub(crate) struct Watch<H> {
    settings: WatchSettings,
    entries: Mutex<Entries<H>>,
    /// Whether a watcher runs now: set when one starts, cleared when it ends for any reason
    /// (its thread returned, or the tokio runtime its task ran on shut down), so that the
    /// next grant starts another.
    running: Arc<AtomicBool>,
    /// Set when the pool and every guard let go of this watch: the watcher stops.
    stop: Arc<Stop>,
}

#[derive(Debug)]
struct Entries<H> {
    next: u64,
    held: HashMap<u64, Entry<H>>,
}

/// Held by a running watcher, thread or task: dropping it (the thread returns, or the
/// runtime drops the task) lets the next grant start a watcher again.
#[derive(Debug)]
pub(crate) struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The stop flag of a watcher thread, which sleeps on it between rounds.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl Stop {
    /// Sleeps up to `pause`: whether the watcher should stop.
    #[cfg_attr(not(feature = "r2d2"), allow(dead_code))]
    pub(crate) fn sleep(&self, pause: Duration) -> bool {
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (stopped, _) = self
            .changed
            .wait_timeout_while(stopped, pause, |stopped| !*stopped)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *stopped
    }

    fn set(&self) {
        *self
            .stopped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        self.changed.notify_all();
    }
}

/// One check of the watcher: the locks to ask about, in the order of their answers.
#[derive(Debug)]
pub(crate) struct Round<H> {
    started_at: Instant,
    ids: Vec<u64>,
    pub(crate) held: Vec<H>,
}

/// A guard's registration with the watch: dropping it stops the watching, and a release
/// drops it before its unlock, so that the watcher cannot take the unlock for a loss.
#[derive(Debug)]
pub(crate) struct Watched<H> {
    watch: Arc<Watch<H>>,
    id: u64,
    signal: Arc<Signal>,
}

impl<H: Clone> Watch<H> {
    pub(crate) fn new(settings: WatchSettings) -> Arc<Self> {
        Arc::new(Watch {
            settings,
            entries: Mutex::new(Entries {
                next: 0,
                held: HashMap::new(),
            }),
            running: Arc::default(),
            stop: Arc::default(),
        })
    }

    pub(crate) fn settings(&self) -> WatchSettings {
        self.settings
    }

    pub(crate) fn is_on(&self) -> bool {
        self.settings.interval.is_some()
    }

    fn entries(&self) -> MutexGuard<'_, Entries<H>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `start` when a lock is watched and no watcher runs: the first time, and again
    /// after a watcher ended with the runtime it ran on (a pool used from several runtimes).
    /// The watcher opens its connection only for a pool that holds locks. `start` gets the
    /// token the watcher keeps while it runs.
    pub(crate) fn start_unless_running(&self, start: impl FnOnce(Running)) {
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            start(Running(Arc::clone(&self.running)));
        }
    }

    /// The flag the watcher thread sleeps on.
    #[cfg_attr(not(feature = "r2d2"), allow(dead_code))]
    pub(crate) fn stop(&self) -> Arc<Stop> {
        Arc::clone(&self.stop)
    }

    /// Watches a lock granted at `granted_at` on key `key`, described by `held`, whose
    /// connection closes with `mark`.
    pub(crate) fn register(
        self: &Arc<Self>,
        held: H,
        key: String,
        mark: CloseMark,
        granted_at: Instant,
    ) -> Watched<H> {
        let signal = Arc::new(Signal::new(key, self.settings.bound(), mark, granted_at));
        let mut entries = self.entries();
        let id = entries.next;
        entries.next += 1;
        entries.held.insert(
            id,
            Entry {
                held,
                signal: Arc::clone(&signal),
            },
        );
        Watched {
            watch: Arc::clone(self),
            id,
            signal,
        }
    }

    /// How long the watcher sleeps before its next round, `since_last` after the last one
    /// began: rounds begin an interval apart (a quarter of one after a round that failed, to
    /// reconnect soon), however long each took, so that a slow answer does not stretch the
    /// time between confirmations.
    fn pause(&self, last_failed: bool, since_last: Duration) -> Duration {
        let interval = self.settings.interval.unwrap_or(DEFAULT_INTERVAL);
        let period = if last_failed {
            (interval / 4).max(MIN_INTERVAL)
        } else {
            interval
        };
        period.saturating_sub(since_last)
    }

    /// How long the watcher waits for a connection or an answer before it gives the
    /// connection up: the bound, past which an unanswered lock counts as lost anyway.
    fn patience(&self) -> Duration {
        self.settings.bound().unwrap_or(DEFAULT_INTERVAL)
    }

    /// The next round, when any lock is held.
    pub(crate) fn round(&self) -> Option<Round<H>> {
        let entries = self.entries();
        if entries.held.is_empty() {
            return None;
        }
        let (ids, held) = entries
            .held
            .iter()
            .map(|(id, entry)| (*id, entry.held.clone()))
            .unzip();
        Some(Round {
            started_at: Instant::now(),
            ids,
            held,
        })
    }

    /// Takes the answer to `round`: for each of its locks, whether the server still lists
    /// it. A lock released since the round began is no longer watched, and its answer is
    /// ignored. A failed round confirms nothing; the bound decides.
    pub(crate) fn finish(&self, round: Round<H>, answer: dlock_core::Result<Vec<bool>>) {
        let held = match answer {
            Ok(held) if held.len() == round.ids.len() => held,
            Ok(held) => {
                tracing::warn!(
                    target: "dlock",
                    asked = round.ids.len(),
                    answered = held.len(),
                    "the lock watcher got answers for another number of locks than it asked"
                );
                return;
            }
            Err(error) => {
                tracing::info!(target: "dlock", %error, "the lock watcher could not check");
                return;
            }
        };
        let entries = self.entries();
        for (id, still) in round.ids.iter().zip(held) {
            let Some(entry) = entries.held.get(id) else {
                continue;
            };
            if still {
                entry.signal.confirm(round.started_at);
            } else {
                entry.signal.lose(LostReason::NotHeld);
            }
        }
    }
}

/// How long the watcher keeps its connection while the pool holds no lock. A connection
/// left idle for minutes can be dropped silently on the way (a NAT gateway forgets idle
/// flows), and the next check would then wait for TCP to give up, while every lock went
/// unconfirmed; one used at every interval is never idle that long.
pub(crate) const IDLE_CONNECTION: Duration = Duration::from_secs(60);

/// When the watcher's rounds last found something to watch.
#[derive(Debug, Default)]
struct Idle {
    since: Option<Instant>,
}

impl Idle {
    /// A round found locks to check.
    fn busy(&mut self) {
        self.since = None;
    }

    /// A round found nothing to check: whether the connection has been idle long enough to
    /// close it.
    fn close_now(&mut self) -> bool {
        let since = *self.since.get_or_insert_with(Instant::now);
        since.elapsed() >= IDLE_CONNECTION
    }
}

/// The watcher's schedule, which both pool flavours drive: when to sleep, whether to check,
/// and what a round's answer means for the connection. The flavours only sleep, connect and
/// send.
#[derive(Debug)]
pub(crate) struct Rounds<H> {
    watch: std::sync::Weak<Watch<H>>,
    /// Whether the last round failed: the next one comes sooner, on a new connection.
    failed: bool,
    /// When the last round began.
    last: Instant,
    idle: Idle,
}

/// What the watcher does after its pause.
#[derive(Debug)]
pub(crate) enum Next<H> {
    /// The pool and all its guards are gone: the watcher ends.
    Stop,
    /// No lock to check; drop the connection when `close_connection`.
    Skip { close_connection: bool },
    /// Ask about these locks.
    Check(Round<H>),
}

impl<H: Clone> Rounds<H> {
    pub(crate) fn new(watch: std::sync::Weak<Watch<H>>) -> Self {
        Rounds {
            watch,
            failed: false,
            last: Instant::now(),
            idle: Idle::default(),
        }
    }

    /// How long to sleep before the next round, and how long to wait for a connection or an
    /// answer in it; `None` once the pool and all its guards are gone.
    pub(crate) fn pause(&self) -> Option<(Duration, Duration)> {
        let watch = self.watch.upgrade()?;
        Some((
            watch.pause(self.failed, self.last.elapsed()),
            watch.patience(),
        ))
    }

    /// What to do now that the pause is over.
    pub(crate) fn next(&mut self) -> Next<H> {
        self.last = Instant::now();
        let Some(watch) = self.watch.upgrade() else {
            return Next::Stop;
        };
        match watch.round() {
            Some(round) => {
                self.idle.busy();
                Next::Check(round)
            }
            None => Next::Skip {
                close_connection: self.idle.close_now(),
            },
        }
    }

    /// Takes the answer to `round`: whether the watcher goes on. After a failed round the
    /// caller drops its connection (a reply may still be on the way) and opens a new one.
    pub(crate) fn finish(
        &mut self,
        round: Round<H>,
        answer: dlock_core::Result<Vec<bool>>,
    ) -> bool {
        self.failed = answer.is_err();
        match self.watch.upgrade() {
            Some(watch) => {
                watch.finish(round, answer);
                true
            }
            None => false,
        }
    }
}

impl<H> Drop for Watch<H> {
    fn drop(&mut self) {
        self.stop.set();
    }
}

impl<H> Watched<H> {
    pub(crate) fn signal(&self) -> &Arc<Signal> {
        &self.signal
    }

    fn deregister(&self) {
        self.watch
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .held
            .remove(&self.id);
    }
}

impl<H> Drop for Watched<H> {
    fn drop(&mut self) {
        self.deregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(settings: WatchSettings) -> Arc<Watch<u32>> {
        Watch::new(settings)
    }

    #[test]
    fn a_lock_the_server_no_longer_lists_is_lost_and_its_connection_closed() {
        let watch = watch(WatchSettings::default());
        let mark = CloseMark::default();
        let kept = watch.register(1, "a".into(), mark.clone(), Instant::now());
        let dropped = watch.register(2, "b".into(), CloseMark::default(), Instant::now());
        let round = watch.round().unwrap();
        assert_eq!(round.held.len(), 2);
        let answer = round.held.iter().map(|held| *held == 2).collect();
        watch.finish(round, Ok(answer));
        assert_eq!(kept.signal().lost_now(), Some(LostReason::NotHeld));
        assert!(mark.is_set(), "a lost lock's connection is never reused");
        assert_eq!(dropped.signal().lost_now(), None);
        drop(kept);
        drop(dropped);
        assert!(watch.round().is_none(), "nothing left to watch");
    }

    #[test]
    fn an_answer_for_a_lock_released_since_the_round_began_is_ignored() {
        let watch = watch(WatchSettings::default());
        let watched = watch.register(1, "a".into(), CloseMark::default(), Instant::now());
        let signal = Arc::clone(watched.signal());
        let round = watch.round().unwrap();
        // The release stops the watching before its unlock, which the round then sees.
        drop(watched);
        watch.finish(round, Ok(vec![false]));
        assert_eq!(signal.lost_now(), None);
    }

    #[test]
    fn unknown_counts_as_lost_once_the_bound_runs_out() {
        let settings = WatchSettings::default()
            .every(Duration::from_millis(10))
            .lost_after(Duration::from_millis(40));
        let watch = watch(settings);
        let long_ago = Instant::now() - Duration::from_millis(30);
        let watched = watch.register(1, "a".into(), CloseMark::default(), long_ago);
        assert_eq!(watched.signal().lost_now(), None);
        // A failed round confirms nothing.
        let round = watch.round().unwrap();
        watch.finish(round, Err(Error::NotHeld));
        assert!(watched.signal().wait_lost(Duration::from_secs(5)));
        assert!(matches!(
            watched.signal().lost_now(),
            Some(LostReason::Unconfirmed { unconfirmed }) if unconfirmed > Duration::from_millis(40)
        ));
        // Lost stays lost, even if a late answer says held.
        let round = watch.round().unwrap();
        watch.finish(round, Ok(vec![true]));
        assert!(watched.signal().lost_now().is_some());
    }

    #[test]
    fn a_confirmation_moves_the_bound_and_waiting_ends_at_its_timeout() {
        let settings = WatchSettings::default()
            .every(Duration::from_millis(10))
            .lost_after(Duration::from_millis(200));
        let watch = watch(settings);
        let watched = watch.register(1, "a".into(), CloseMark::default(), Instant::now());
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(100));
            let round = watch.round().unwrap();
            watch.finish(round, Ok(vec![true]));
        }
        assert_eq!(watched.signal().lost_now(), None, "confirmed all along");
        assert!(!watched.signal().wait_lost(Duration::from_millis(20)));
    }

    #[test]
    fn a_watcher_that_is_off_never_reports_a_lock_lost_by_itself() {
        let watch = watch(WatchSettings::default().off());
        assert!(!watch.is_on());
        let long_ago = Instant::now() - Duration::from_secs(3600);
        let watched = watch.register(1, "a".into(), CloseMark::default(), long_ago);
        assert_eq!(watched.signal().lost_now(), None);
        assert!(!watched.signal().wait_lost(Duration::from_millis(5)));
        // A guard operation that finds it lost still says so.
        watched.signal().lose(LostReason::ConnectionFailed);
        assert!(watched.signal().wait_lost(Duration::ZERO));
    }

    #[test]
    fn the_schedule_checks_held_locks_hurries_after_a_failure_and_stops_with_the_pool() {
        let watch = watch(WatchSettings::default());
        let mut rounds = Rounds::new(Arc::downgrade(&watch));
        assert!(matches!(
            rounds.next(),
            Next::Skip {
                close_connection: false
            }
        ));
        let watched = watch.register(1, "a".into(), CloseMark::default(), Instant::now());
        let Next::Check(round) = rounds.next() else {
            panic!("a held lock is checked");
        };
        assert!(rounds.finish(round, Err(Error::NotHeld)));
        let (pause, _) = rounds.pause().unwrap();
        assert!(
            pause <= DEFAULT_INTERVAL / 4,
            "sooner after a failure: {pause:?}"
        );
        let Next::Check(round) = rounds.next() else {
            panic!("still held");
        };
        assert!(rounds.finish(round, Ok(vec![true])));
        assert!(rounds.pause().unwrap().0 > DEFAULT_INTERVAL / 2);
        drop(watched);
        drop(watch);
        assert!(rounds.pause().is_none());
        assert!(matches!(rounds.next(), Next::Stop));
    }

    #[test]
    fn an_idle_watcher_closes_its_connection_only_after_a_minute_without_locks() {
        let mut idle = Idle::default();
        assert!(!idle.close_now());
        idle.since = Some(Instant::now() - IDLE_CONNECTION);
        assert!(idle.close_now());
        idle.busy();
        assert!(!idle.close_now(), "a busy round starts the count again");
    }

    #[test]
    fn settings_keep_a_sane_interval_and_default_to_three_intervals() {
        let settings = WatchSettings::default().every(Duration::ZERO);
        assert_eq!(settings.interval, Some(MIN_INTERVAL));
        assert_eq!(settings.bound(), Some(MIN_INTERVAL * 3));
        assert_eq!(
            WatchSettings::default().bound(),
            Some(Duration::from_secs(3))
        );
        let watch = watch(WatchSettings::default());
        assert_eq!(watch.pause(false, Duration::ZERO), DEFAULT_INTERVAL);
        assert_eq!(watch.pause(true, Duration::ZERO), DEFAULT_INTERVAL / 4);
        let slow = Duration::from_millis(300);
        assert_eq!(watch.pause(false, slow), DEFAULT_INTERVAL - slow);
        assert_eq!(watch.pause(true, slow), Duration::ZERO);
    }

    #[cfg(feature = "bb8")]
    #[tokio::test]
    async fn lost_resolves_on_the_watchers_news_and_on_the_bound() {
        let settings = WatchSettings::default()
            .every(Duration::from_millis(10))
            .lost_after(Duration::from_millis(50));
        let watch = watch(settings);
        let watched = watch.register(1, "a".into(), CloseMark::default(), Instant::now());
        let reason =
            tokio::time::timeout(Duration::from_secs(5), lost(Arc::clone(watched.signal())))
                .await
                .expect("the bound ran out");
        assert!(matches!(reason, LostReason::Unconfirmed { .. }));

        let watch = Watch::<u32>::new(WatchSettings::default());
        let watched = watch.register(1, "a".into(), CloseMark::default(), Instant::now());
        let waiting = tokio::spawn(lost(Arc::clone(watched.signal())));
        tokio::task::yield_now().await;
        let round = watch.round().unwrap();
        watch.finish(round, Ok(vec![false]));
        let reason = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the news")
            .unwrap();
        assert_eq!(reason, LostReason::NotHeld);
    }
}
