//! The spans dlock sends to [`tracing`] for each lock operation, written once for every
//! backend and flavour. Without a subscriber, or with one that leaves dlock's `debug` level
//! out, a span costs one check of an atomic, and nothing is formatted.

use std::time::Instant;

use tracing::Instrument as _;
use tracing::field::{Empty, display};

use crate::{Error, Result, Wait};

/// One lock operation's span: `acquire`, `release` or `verify`, with target `dlock` at level
/// `debug`, and the fields `backend`, `name` (the key as the user named it, at most
/// [`TRACED_NAME_CHARS`] characters), `key` (as the server sees it), `mode`, `wait` (acquire
/// only), `outcome` and `waited_ms`, recorded when the operation ends.
#[doc(hidden)]
#[derive(Debug)]
pub struct Traced {
    span: tracing::Span,
    started: Option<Instant>,
    /// The outcome's words for `true` and `false`.
    words: (&'static str, &'static str),
}

/// The most characters of a key's name a span shows: keys can be long (a document path, a
/// job's arguments), and a span is a log line.
pub const TRACED_NAME_CHARS: usize = 64;

/// `key` as the user named it, for a span: its first [`TRACED_NAME_CHARS`] characters, and
/// `…` when it is longer.
#[doc(hidden)]
pub fn traced_name(key: &crate::Key) -> String {
    let name = key.to_string();
    match name.char_indices().nth(TRACED_NAME_CHARS) {
        Some((end, _)) => format!("{}…", &name[..end]),
        None => name,
    }
}

/// A lock operation a span is for.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum TracedOperation {
    /// An acquire with its wait.
    Acquire(Wait),
    /// A release.
    Release,
    /// A verify.
    Verify,
}

/// What an operation's outcome tells its span: whether it acquired, or found held (a
/// release that returned released).
#[doc(hidden)]
pub trait TracedOutcome {
    /// `true` for acquired, held or released.
    fn succeeded(&self) -> bool;
}

impl TracedOutcome for bool {
    fn succeeded(&self) -> bool {
        *self
    }
}

impl TracedOutcome for () {
    fn succeeded(&self) -> bool {
        true
    }
}

impl Traced {
    fn new(
        span: tracing::Span,
        key: impl FnOnce() -> (String, String),
        words: (&'static str, &'static str),
    ) -> Traced {
        let started = (!span.is_disabled()).then(|| {
            let (name, key) = key();
            span.record("name", name);
            span.record("key", key);
            Instant::now()
        });
        Traced {
            span,
            started,
            words,
        }
    }

    /// The span of `operation` on `backend`'s lock in `mode`, whose key `key` describes.
    pub fn of(
        operation: TracedOperation,
        backend: &'static str,
        mode: &'static str,
        key: impl FnOnce() -> (String, String),
    ) -> Traced {
        match operation {
            TracedOperation::Acquire(wait) => Traced::acquire(backend, mode, wait, key),
            TracedOperation::Release => Traced::release(backend, mode, key),
            TracedOperation::Verify => Traced::verify(backend, mode, key),
        }
    }

    /// The span of an acquire with `wait`.
    pub fn acquire(
        backend: &'static str,
        mode: &'static str,
        wait: Wait,
        key: impl FnOnce() -> (String, String),
    ) -> Traced {
        let wait = match wait {
            Wait::Never => "try".to_owned(),
            Wait::Forever => "forever".to_owned(),
            Wait::For(timeout) => format!("{timeout:?}"),
        };
        let span = tracing::debug_span!(target: "dlock", "acquire", backend, name = Empty, key = Empty, mode,
            wait, outcome = Empty, waited_ms = Empty);
        Traced::new(span, key, ("acquired", "busy"))
    }

    /// The span of a release.
    pub fn release(
        backend: &'static str,
        mode: &'static str,
        key: impl FnOnce() -> (String, String),
    ) -> Traced {
        let span = tracing::debug_span!(target: "dlock", "release", backend, name = Empty, key = Empty, mode,
            outcome = Empty, waited_ms = Empty);
        Traced::new(span, key, ("released", "released"))
    }

    /// The span of a verify.
    pub fn verify(
        backend: &'static str,
        mode: &'static str,
        key: impl FnOnce() -> (String, String),
    ) -> Traced {
        let span = tracing::debug_span!(target: "dlock", "verify", backend, name = Empty, key = Empty, mode,
            outcome = Empty, waited_ms = Empty);
        Traced::new(span, key, ("held", "not held"))
    }

    /// The span, to enter around blocking work or to instrument a future with.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Runs `operation` in this span, then records how it ended ([`finish`](Self::finish)).
    pub async fn around<T: TracedOutcome>(
        self,
        operation: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let outcome = operation.instrument(self.span.clone()).await;
        self.finish(outcome.as_ref().map(TracedOutcome::succeeded));
        outcome
    }

    /// [`around`](Self::around) for blocking work.
    pub fn around_blocking<T: TracedOutcome>(
        self,
        operation: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let outcome = self.span.in_scope(operation);
        self.finish(outcome.as_ref().map(TracedOutcome::succeeded));
        outcome
    }

    /// Records how the operation ended: for an acquire `acquired` or `busy`, for a verify
    /// `held` or `not held`, for a release `released`; or the error.
    pub fn finish(&self, outcome: std::result::Result<bool, &Error>) {
        if let Err(Error::NotHeld) = outcome {
            tracing::warn!(target: "dlock", "a lock was lost: its session no longer held it");
        }
        let Some(started) = self.started else {
            return;
        };
        match outcome {
            Ok(true) => self.span.record("outcome", self.words.0),
            Ok(false) => self.span.record("outcome", self.words.1),
            Err(error) => self.span.record("outcome", display(error)),
        };
        self.span
            .record("waited_ms", started.elapsed().as_secs_f64() * 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::{TRACED_NAME_CHARS, traced_name};
    use crate::Key;

    #[test]
    fn a_span_shows_the_name_as_written_and_cuts_a_long_one() {
        assert_eq!(traced_name(&Key::from("jobs/42")), "jobs/42");
        assert_eq!(traced_name(&Key::from((1, 2))), "(1, 2)");
        // Cut by characters, not bytes: a multibyte name is never split inside a character.
        let long = "é".repeat(100);
        let shown = traced_name(&Key::from(long.as_str()));
        assert_eq!(shown.chars().count(), TRACED_NAME_CHARS + 1);
        assert!(shown.ends_with('…'));
        assert!(long.starts_with(shown.trim_end_matches('…')));
    }
}
