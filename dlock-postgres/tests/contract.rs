//! The lock contract of DESIGN.md, written once in dlock-testkit, for `PgLock` and
//! `AsyncPgLock` on owned clients.

#[cfg(feature = "blocking")]
mod blocking {
    use dlock_postgres::PgLock;
    use dlock_testkit as common;
    use dlock_testkit::contract::Flavour;
    use dlock_testkit::contract::{self, Server};

    pub(super) struct Blocking;

    impl Flavour for Blocking {
        type Lock = PgLock<postgres::Client>;
        const SERVER: Server = Server::Postgres;

        fn lock(&mut self, key: &str) -> Self::Lock {
            PgLock::new(common::postgres::connect(), key)
        }

        fn reentrant(&mut self, outer: &mut Self::Lock, key: &str) -> bool {
            contract::second_on_one_session(Self::SERVER, &mut PgLock::new(outer.client(), key));
            true
        }
    }

    dlock_testkit::blocking_contract!(pg_lock, Blocking);
}

#[cfg(feature = "tokio")]
mod tokio_flavour {
    use dlock_postgres::AsyncPgLock;
    use dlock_testkit as common;
    use dlock_testkit::contract::AsyncFlavour;
    use dlock_testkit::contract::{self, Server};

    pub(super) struct Tokio;

    impl AsyncFlavour for Tokio {
        type Lock = AsyncPgLock<tokio_postgres::Client>;
        const SERVER: Server = Server::Postgres;

        async fn lock(&mut self, key: &str) -> Self::Lock {
            AsyncPgLock::new(common::postgres::connect_async().await, key)
        }

        async fn reentrant(&mut self, outer: &mut Self::Lock, key: &str) -> bool {
            let mut inner = AsyncPgLock::new(outer.client(), key);
            contract::second_on_one_session_async(Self::SERVER, &mut inner).await;
            true
        }
    }

    dlock_testkit::async_contract!(async_pg_lock, Tokio);
}
