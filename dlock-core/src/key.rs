//! What a user names a lock with, and PostgreSQL's two key spaces.

use std::fmt;

/// The name of a lock, as the user gives it.
///
/// A key is turned into what the server understands by a [`KeyPolicy`](crate::KeyPolicy):
/// a [`PgKey`] for PostgreSQL, a lock name for MySQL and MariaDB.
///
/// # Examples
///
/// ```
/// use dlock_core::Key;
///
/// assert_eq!(Key::from("job:nightly"), Key::Text("job:nightly".to_owned()));
/// assert_eq!(Key::from(42_i64), Key::Int(42));
/// assert_eq!(Key::from((7, 9)), Key::Pair(7, 9));
/// assert_eq!(Key::from(&b"\x00\xff"[..]), Key::Bytes(vec![0x00, 0xff]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Key {
    /// A text name, hashed for PostgreSQL and used as the name itself for MySQL.
    Text(String),
    /// Raw bytes, hashed for PostgreSQL; MySQL's default policy needs them to be UTF-8.
    Bytes(Vec<u8>),
    /// An integer, used as-is for PostgreSQL and as its decimal text for MySQL.
    Int(i64),
    /// A pair of integers: PostgreSQL's second advisory-lock key space.
    Pair(i32, i32),
}

impl From<&str> for Key {
    fn from(text: &str) -> Self {
        Key::Text(text.to_owned())
    }
}

impl From<String> for Key {
    fn from(text: String) -> Self {
        Key::Text(text)
    }
}

impl From<&String> for Key {
    fn from(text: &String) -> Self {
        Key::Text(text.clone())
    }
}

impl From<&[u8]> for Key {
    fn from(bytes: &[u8]) -> Self {
        Key::Bytes(bytes.to_vec())
    }
}

impl From<Vec<u8>> for Key {
    fn from(bytes: Vec<u8>) -> Self {
        Key::Bytes(bytes)
    }
}

impl From<i64> for Key {
    fn from(value: i64) -> Self {
        Key::Int(value)
    }
}

impl From<(i32, i32)> for Key {
    fn from((high, low): (i32, i32)) -> Self {
        Key::Pair(high, low)
    }
}

impl fmt::Display for Key {
    /// Shows text as itself, bytes as hex with a `0x` prefix, integers in decimal and pairs
    /// as `(a, b)`, so logs and error messages name the key the user wrote.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Text(text) => f.write_str(text),
            Key::Bytes(bytes) => {
                f.write_str("0x")?;
                bytes.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
            Key::Int(value) => write!(f, "{value}"),
            Key::Pair(high, low) => write!(f, "({high}, {low})"),
        }
    }
}

/// A PostgreSQL advisory-lock key: PostgreSQL has two key spaces that never overlap.
///
/// `pg_advisory_lock(bigint)` takes a [`PgKey::BigInt`]; `pg_advisory_lock(int, int)` takes a
/// [`PgKey::Pair`]. The same numbers in the two spaces are two different locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgKey {
    /// The single 64-bit key space.
    BigInt(i64),
    /// The two 32-bit key space.
    Pair(i32, i32),
}

impl fmt::Display for PgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgKey::BigInt(value) => write!(f, "{value}"),
            PgKey::Pair(high, low) => write!(f, "({high}, {low})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_keep_the_kind_the_user_wrote() {
        assert_eq!(Key::from(String::from("a")), Key::Text("a".into()));
        assert_eq!(Key::from(&String::from("a")), Key::Text("a".into()));
        assert_eq!(Key::from(vec![1_u8, 2]), Key::Bytes(vec![1, 2]));
        assert_eq!(Key::from(-1_i64), Key::Int(-1));
        assert_eq!(Key::from((-1, 2)), Key::Pair(-1, 2));
    }

    #[test]
    fn display_names_the_key_as_written() {
        assert_eq!(Key::from("user/001").to_string(), "user/001");
        assert_eq!(Key::from(&[0x00_u8, 0xff][..]).to_string(), "0x00ff");
        assert_eq!(Key::from(-5_i64).to_string(), "-5");
        assert_eq!(Key::from((1, 2)).to_string(), "(1, 2)");
        assert_eq!(PgKey::Pair(1, -2).to_string(), "(1, -2)");
        assert_eq!(PgKey::BigInt(9).to_string(), "9");
    }
}
