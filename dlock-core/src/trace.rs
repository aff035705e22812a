//! The spans dlock sends to [`tracing`] for each lock operation, written once for every
//! backend and flavour. Without a subscriber, or with one that leaves dlock's `debug` level
//! out, a span costs one check of an atomic, and nothing is formatted.

use std::time::Instant;

use tracing::field::{Empty, display};

use crate::{Error, Wait};

/// One lock operation's span: `acquire`, `release` or `verify`, with target `dlock` at level
/// `debug`, and the fields `backend`, `key` (as the backend sees it), `mode`, `wait`
/// (acquire only), `outcome` and `waited_ms`, recorded when the operation ends.
#[doc(hidden)]
#[derive(Debug)]
pub struct Traced {
    span: tracing::Span,
    started: Option<Instant>,
    /// The outcome's words for `true` and `false`.
    words: (&'static str, &'static str),
}

impl Traced {
    fn new(
        span: tracing::Span,
        key: impl FnOnce() -> String,
        words: (&'static str, &'static str),
    ) -> Traced {
        let started = (!span.is_disabled()).then(|| {
            span.record("key", key());
            Instant::now()
        });
        Traced {
            span,
            started,
            words,
        }
    }

    /// The span of an acquire with `wait`.
    pub fn acquire(
        backend: &'static str,
        mode: &'static str,
        wait: Wait,
        key: impl FnOnce() -> String,
    ) -> Traced {
        let wait = match wait {
            Wait::Never => "try".to_owned(),
            Wait::Forever => "forever".to_owned(),
            Wait::For(timeout) => format!("{timeout:?}"),
        };
        let span = tracing::debug_span!(target: "dlock", "acquire", backend, key = Empty, mode,
            wait, outcome = Empty, waited_ms = Empty);
        Traced::new(span, key, ("acquired", "busy"))
    }

    /// The span of a release.
    pub fn release(
        backend: &'static str,
        mode: &'static str,
        key: impl FnOnce() -> String,
    ) -> Traced {
        let span = tracing::debug_span!(target: "dlock", "release", backend, key = Empty, mode,
            outcome = Empty, waited_ms = Empty);
        Traced::new(span, key, ("released", "released"))
    }

    /// The span of a verify.
    pub fn verify(
        backend: &'static str,
        mode: &'static str,
        key: impl FnOnce() -> String,
    ) -> Traced {
        let span = tracing::debug_span!(target: "dlock", "verify", backend, key = Empty, mode,
            outcome = Empty, waited_ms = Empty);
        Traced::new(span, key, ("held", "not held"))
    }

    /// The span, to enter around blocking work or to instrument a future with.
    pub fn span(&self) -> &tracing::Span {
        &self.span
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
