//! A `tracing` subscriber that keeps the spans dlock sends, with their fields, for tests that
//! check them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::registry::{LookupSpan, Registry};

/// A span as it closed: its name and every field recorded on it, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The span's name (`acquire`, `release`, `verify`).
    pub name: String,
    /// Field name to value.
    pub fields: BTreeMap<String, String>,
}

/// The spans of target `dlock` that closed while [`capture`] ran its closure.
pub type Spans = Arc<Mutex<Vec<Captured>>>;

struct Capture(Spans);

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        if attributes.metadata().target() != "dlock" {
            return;
        }
        let mut fields = Fields::default();
        attributes.record(&mut fields);
        if let Some(span) = context.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, context: Context<'_, S>) {
        if let Some(span) = context.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_close(&self, id: Id, context: Context<'_, S>) {
        let Some(span) = context.span(&id) else {
            return;
        };
        let Some(fields) = span.extensions_mut().remove::<Fields>() else {
            return;
        };
        self.0.lock().unwrap().push(Captured {
            name: span.name().to_owned(),
            fields: fields.0,
        });
    }
}

/// Runs `work` with a subscriber that keeps dlock's spans, on this thread, and returns them.
pub fn capture<T>(work: impl FnOnce() -> T) -> (T, Vec<Captured>) {
    let spans = Spans::default();
    let subscriber = Registry::default().with(Capture(Arc::clone(&spans)));
    let output = tracing::subscriber::with_default(subscriber, work);
    let spans = spans.lock().unwrap().clone();
    (output, spans)
}
