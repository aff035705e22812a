//! The builder and accessor methods that `MySqlLock` and `AsyncMySqlLock` share, written
//! once: the two types differ only in the flavour of their connection, not in these.

/// Expands, inside `impl<C> MySqlLock<C>` or `impl<C> AsyncMySqlLock<C>`, to the methods
/// both types have. Each type has the fields `conn: Option<C>` and `state: LockState`.
macro_rules! lock_methods {
    () => {
        /// Takes the state out, holds and all, leaving an empty one whose drop does nothing.
        fn detach(&mut self) -> LockState {
            self.state.detach()
        }

        /// Uses `policy` to turn the key into a lock name (for example
        /// [`KeyPolicy::HashedMySqlName`] for keys longer than MySQL's 64 characters).
        /// Affects the next acquire.
        pub fn policy(mut self, policy: KeyPolicy) -> Self {
            self.state.policy = policy;
            self
        }

        /// Turns off the check the first acquire runs otherwise (one round trip, before the
        /// first acquire only), which refuses a MariaDB Galera node or a MySQL Group
        /// Replication member: there `GET_LOCK` is local to the node, and another client
        /// on another node takes the same lock at the same time. For a connection checked
        /// already (dlock-pool's), or a single-node deployment you know better than the
        /// check; the risk is two holders at once.
        pub fn skip_deployment_check(mut self) -> Self {
            self.state.check_deployment = false;
            self
        }

        /// Makes every acquire issue a fencing token, in table `dlock.dlock_fence` (qualified,
        /// so every session counts in it whatever its default database): read it with
        /// [`fencing_token`](Self::fencing_token) while the lock is held, and hand it to the
        /// resource the lock guards, which refuses any write with a token lower than the
        /// highest it has seen. Tokens of one name strictly increase across all holders,
        /// processes and server restarts. The token costs one more statement after the grant,
        /// on the same session (`LAST_INSERT_ID(token + 1)`, read from the OK packet): two
        /// round trips per acquire instead of one. Create the table once with
        /// `install_fencing`; without it an acquire fails with
        /// [`Error::FencingNotInstalled`](dlock_core::Error::FencingNotInstalled) and holds
        /// nothing.
        ///
        /// The token commits with its statement when the session autocommits (the default);
        /// inside a transaction of yours it commits with that transaction. On MariaDB (10.3
        /// or later) it is also drawn from the table's clock, a sequence that no rollback
        /// takes back, so a token handed out in a transaction that rolls back is used up and
        /// the next holder's is higher (tokens increase, not by one). MySQL has no sequences:
        /// there a rollback would let the next holder get the same token, so take fenced
        /// locks outside transactions.
        ///
        /// A token is handed out only where a crash cannot take it back: the upsert writes
        /// only where `innodb_flush_log_at_trx_commit` is 1 (global only; no session can raise
        /// it), and elsewhere the grant is given back and the acquire fails with
        /// [`Error::FencingNotDurable`](dlock_core::Error::FencingNotDurable).
        pub fn fenced(mut self) -> Self {
            self.state.fence = Some(
                crate::sql::fence_table(crate::sql::DEFAULT_FENCE_TABLE)
                    .expect("the default fence table name is plain"),
            );
            self
        }

        /// Like [`fenced`](Self::fenced), with the tokens in table `table` (`database.name`),
        /// created by `install_fencing_in`. Name the database: an unqualified name resolves
        /// through each session's default database, and sessions that resolve it apart
        /// count apart.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidKey`] when `table` is not a plain table name (letters, digits and
        /// underscores).
        pub fn fenced_in(mut self, table: &str) -> Result<Self> {
            self.state.fence = Some(crate::sql::fence_table(table)?);
            Ok(self)
        }

        /// The fencing token of the lock while this object holds it, when it is
        /// [`fenced`](Self::fenced); `None` otherwise.
        pub fn fencing_token(&self) -> Option<u64> {
            self.state.token()
        }

        /// Asks for a shared lock, which MySQL and MariaDB do not have: every acquire then
        /// fails with [`Error::Unsupported`]. It exists so that code written for PostgreSQL
        /// fails clearly instead of silently taking an exclusive lock.
        pub fn shared(mut self) -> Self {
            self.state.shared();
            self
        }

        /// Asks for a transaction-scoped lock, which MySQL and MariaDB do not have
        /// (`GET_LOCK` ignores transactions): every acquire then fails with
        /// [`Error::Unsupported`].
        pub fn transaction_scoped(mut self) -> Self {
            self.state.transaction_scoped();
            self
        }

        /// The lock name this lock takes, under its policy.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidKey`] when the key cannot be a MySQL lock name under the policy
        /// (empty, longer than 64 characters or 192 bytes, not UTF-8, containing NUL).
        pub fn name(&self) -> Result<String> {
            self.state.name()
        }

        /// The key as the user named it and the lock name, as this lock's spans show them.
        fn traced(
            &self,
            operation: dlock_core::trace::TracedOperation,
        ) -> dlock_core::trace::Traced {
            dlock_core::trace::Traced::of(operation, "mysql", "exclusive", || {
                let name = self
                    .name()
                    .unwrap_or_else(|error| format!("unusable: {error}"));
                (dlock_core::trace::traced_name(&self.state.key), name)
            })
        }
    };
}

pub(crate) use lock_methods;
