//! The lock contract of DESIGN.md, written once in dlock-testkit, for `MySqlLock` and
//! `AsyncMySqlLock` on owned connections.

#[cfg(feature = "blocking")]
mod blocking {
    use dlock_mysql::MySqlLock;
    use dlock_testkit as common;
    use dlock_testkit::contract::Flavour;
    use dlock_testkit::contract::{self, Server};

    pub(super) struct Blocking;

    impl Flavour for Blocking {
        type Lock = MySqlLock<mysql::Conn>;
        const SERVER: Server = Server::MySql;

        fn lock(&mut self, key: &str) -> Self::Lock {
            MySqlLock::new(common::mysql::connect(), key)
        }

        fn reentrant(&mut self, outer: &mut Self::Lock, key: &str) -> bool {
            contract::second_on_one_session(Self::SERVER, &mut MySqlLock::new(outer.conn(), key));
            true
        }
    }

    dlock_testkit::blocking_contract!(mysql_lock, Blocking);
}

#[cfg(feature = "tokio")]
mod tokio_flavour {
    use dlock_mysql::AsyncMySqlLock;
    use dlock_testkit as common;
    use dlock_testkit::contract::AsyncFlavour;
    use dlock_testkit::contract::{self, Server};

    pub(super) struct Tokio;

    impl AsyncFlavour for Tokio {
        type Lock = AsyncMySqlLock<mysql_async::Conn>;
        const SERVER: Server = Server::MySql;

        async fn lock(&mut self, key: &str) -> Self::Lock {
            AsyncMySqlLock::new(common::mysql::connect_async().await, key)
        }

        async fn reentrant(&mut self, outer: &mut Self::Lock, key: &str) -> bool {
            let mut inner = AsyncMySqlLock::new(outer.conn(), key);
            contract::second_on_one_session_async(Self::SERVER, &mut inner).await;
            true
        }
    }

    dlock_testkit::async_contract!(async_mysql_lock, Tokio);
}
