//! What a `tracing` subscriber sees of each lock operation: a span per acquire, release and
//! verify, with the key as the user named it and as PostgreSQL sees it, the mode, the wait, the outcome and the time
//! it took.

#![cfg(any(feature = "blocking", feature = "tokio"))]

use dlock_testkit::spans::{Captured, capture};

fn pg_key_text(name: &str) -> String {
    match dlock_postgres::KeyPolicy::default()
        .pg_key(&name.into())
        .unwrap()
    {
        dlock_postgres::PgKey::BigInt(key) => key.to_string(),
        pair => panic!("a text key is a bigint, not {pair:?}"),
    }
}

fn field<'a>(span: &'a Captured, name: &str) -> &'a str {
    span.fields
        .get(name)
        .unwrap_or_else(|| panic!("{} has no {name}: {span:?}", span.name))
}

/// The spans are acquire (granted), try (busy), verify, release, in that order.
fn check(spans: &[Captured], name: &str) {
    let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
    assert_eq!(
        names,
        ["acquire", "acquire", "verify", "release"],
        "{spans:?}"
    );
    let key = pg_key_text(name);
    for span in spans {
        assert_eq!(field(span, "backend"), "postgres");
        assert_eq!(field(span, "name"), name, "the key as the user named it");
        assert_eq!(field(span, "key"), key);
        assert_eq!(field(span, "mode"), "exclusive");
        let waited: f64 = field(span, "waited_ms").parse().unwrap();
        assert!(waited >= 0.0);
    }
    assert_eq!(field(&spans[0], "wait"), "forever");
    assert_eq!(field(&spans[0], "outcome"), "acquired");
    assert_eq!(field(&spans[1], "wait"), "try");
    assert_eq!(field(&spans[1], "outcome"), "busy");
    assert_eq!(field(&spans[2], "outcome"), "held");
    assert_eq!(field(&spans[3], "outcome"), "released");
}

#[cfg(feature = "blocking")]
#[test]
fn blocking_operations_send_their_spans() {
    use dlock_postgres::{Lock, PgLock};
    use dlock_testkit::postgres::connect;

    let name = "spans/blocking";
    let mut holder = PgLock::new(connect(), name);
    let mut other = PgLock::new(connect(), name);
    let ((), spans) = capture(|| {
        holder.acquire().unwrap();
        assert!(!other.try_acquire().unwrap());
        assert!(holder.verify().unwrap());
        holder.release().unwrap();
    });
    check(&spans, name);
}

#[cfg(feature = "tokio")]
#[test]
fn async_operations_send_their_spans() {
    use dlock_postgres::{AsyncLock, AsyncPgLock};
    use dlock_testkit::postgres::connect_async;

    let name = "spans/tokio";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ((), spans) = capture(|| {
        runtime.block_on(async {
            let mut holder = AsyncPgLock::new(connect_async().await, name);
            let mut other = AsyncPgLock::new(connect_async().await, name);
            holder.acquire().await.unwrap();
            assert!(!other.try_acquire().await.unwrap());
            assert!(holder.verify().await.unwrap());
            holder.release().await.unwrap();
        });
    });
    check(&spans, name);
}
