//! Key policies: how a [`Key`] becomes a PostgreSQL key or a MySQL lock name.
//!
//! A policy is a wire format. Two programs exclude each other only if they turn the same key
//! into the same server lock, so once released, a policy's output never changes; golden tests
//! pin every policy.

use std::fmt;
use std::sync::Arc;

use blake2::Blake2b;
use blake2::digest::Digest;
use blake2::digest::consts::{U8, U12};
use hkdf::Hkdf;
use sha1::Sha1;
use sha2::{Sha256, Sha512};

use crate::{Error, Key, PgKey, Result};

/// The longest lock name MySQL accepts, in characters. MariaDB allows 192 bytes, but a name
/// that both servers accept is what lets a service move between them.
pub const MYSQL_NAME_MAX_CHARS: usize = 64;

/// The longest lock name MariaDB accepts, in bytes of UTF-8: 64 characters of four bytes
/// each are too long for it.
const MARIADB_NAME_MAX_BYTES: usize = 192;

/// The HKDF `info` string sqlx uses to derive `PgAdvisoryLock` keys from names.
const SQLX_HKDF_INFO: &[u8] = b"SQLx (Rust) Postgres advisory lock";

/// The hex digest length of [`KeyPolicy::HashedMySqlName`] names: 12 bytes (96 bits), so two
/// distinct keys share a name with negligible probability.
const HASHED_NAME_DIGEST_HEX: usize = 24;

/// The separator between the readable prefix and the digest of a hashed MySQL name.
const HASHED_NAME_SEPARATOR: char = '~';

/// How a [`Key`] becomes what the server locks: a [`PgKey`] for PostgreSQL, a lock name for
/// MySQL and MariaDB.
///
/// Integer keys ([`Key::Int`], [`Key::Pair`]) go to PostgreSQL as they are under every
/// built-in policy; the policies differ in how they hash text and bytes. For MySQL every
/// built-in policy but [`KeyPolicy::HashedMySqlName`] and [`KeyPolicy::DotNet`] uses the
/// name itself.
///
/// | policy | PostgreSQL key of text and bytes | MySQL name | compatible with |
/// |---|---|---|---|
/// | [`Blake2b`](KeyPolicy::Blake2b) (default) | BLAKE2b, 8-byte digest, little-endian `i64` | the name itself | sqlalchemy-dlock |
/// | [`Sqlx`](KeyPolicy::Sqlx) | HKDF-SHA256, no salt, sqlx's info string, 8 bytes, little-endian `i64` | the name itself | sqlx `PgAdvisoryLock::new` |
/// | [`Sha1`](KeyPolicy::Sha1) | first 8 bytes of SHA-1, little-endian `i64` | the name itself | pals; .NET DistributedLock only for the names it hashes (not short ASCII or hex names) |
/// | [`DotNet`](KeyPolicy::DotNet) | short ASCII names packed into a pair, hex names as written, others SHA-1 | lowercase, or a prefix and a SHA-512 suffix | .NET DistributedLock, exactly |
/// | [`Crc32Pair`](KeyPolicy::Crc32Pair) | pair (`crc32 & 0x7fffffff`, 0) | the name itself | Ruby with_advisory_lock |
/// | [`HashedMySqlName`](KeyPolicy::HashedMySqlName) | as `Blake2b` | readable prefix, `~`, 24 hex digits | any key on MySQL |
/// | [`Custom`](KeyPolicy::Custom) | yours | yours, checked like a name | your own scheme |
///
/// The default policy turns integers into their decimal text for MySQL, as sqlalchemy-dlock
/// does, so `Key::Int(42)` and `Key::from("42")` are the same MySQL lock. A MySQL name must be
/// 1 to 64 characters of UTF-8 without NUL; anything else is [`Error::InvalidKey`] before any
/// I/O. MariaDB compares lock names case-sensitively in practice, MySQL case-insensitively.
///
/// # Examples
///
/// ```
/// use dlock_core::{Key, KeyPolicy, PgKey};
///
/// let key = Key::from("user/001");
/// // The same key sqlalchemy-dlock computes for "user/001".
/// assert_eq!(KeyPolicy::default().pg_key(&key)?, PgKey::BigInt(-8875347467275493450));
/// // The same key sqlx's PgAdvisoryLock::new("user/001") computes.
/// assert_eq!(KeyPolicy::Sqlx.pg_key(&key)?, PgKey::BigInt(8443591957982265024));
/// assert_eq!(KeyPolicy::default().mysql_name(&key)?, "user/001");
/// # Ok::<(), dlock_core::Error>(())
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum KeyPolicy {
    /// BLAKE2b with an 8-byte digest, read as a little-endian signed `i64`; byte-for-byte the
    /// keys of the Python library sqlalchemy-dlock. MySQL names are the name itself.
    #[default]
    Blake2b,
    /// HKDF-SHA256 (no salt, info `SQLx (Rust) Postgres advisory lock`, 8 bytes) read as a
    /// little-endian `i64`: the keys of sqlx's `PgAdvisoryLock::new`. MySQL names are the name
    /// itself.
    Sqlx,
    /// The first 8 bytes of SHA-1, read as a little-endian `i64`. MySQL names are the name
    /// itself.
    Sha1,
    /// The pair (`crc32(name) & 0x7fffffff`, 0) in PostgreSQL's two-key space, as Ruby's
    /// with_advisory_lock takes its locks. MySQL names are the name itself.
    Crc32Pair,
    /// The keys and names of .NET's DistributedLock (2.x, unchanged since 2020), so a Rust
    /// service and a .NET service take the same locks.
    ///
    /// PostgreSQL, as its `PostgresAdvisoryLockKey(name, allowHashing: true)`: a name of at
    /// most 9 ASCII characters is packed 7 bits a character into the int4 pair; a name of 16
    /// hex digits is that bigint, and `xxxxxxxx,yyyyyyyy` that int4 pair; any other name is the
    /// first 8 bytes of its SHA-1, little-endian. MySQL, as its `MySqlDistributedLock` names
    /// (not `exactName`): a name that is already lowercase and at most 64 UTF-16 units long is
    /// itself; any other is its first 32 lowercase characters (`__empty__` for an empty name)
    /// followed by 32 base-32 characters of its SHA-512.
    DotNet,
    /// PostgreSQL keys as [`KeyPolicy::Blake2b`]; MySQL names made from any key, of at most 64
    /// ASCII characters: up to 39 characters of the name (characters outside printable ASCII
    /// become `_`), then `~`, then 24 hex digits of a 12-byte BLAKE2b digest of the key.
    ///
    /// The digest covers the same text the default policy would use as the name (decimal for
    /// integers, `high,low` for pairs) or the raw bytes, so names of any length and bytes that
    /// are not UTF-8 all get a valid, distinct name.
    HashedMySqlName,
    /// A conversion of your own: see [`KeyPolicy::custom`].
    Custom(CustomPolicy),
}

impl KeyPolicy {
    /// A policy made of your own conversions, one per backend, like sqlalchemy-dlock's
    /// `convert=`. A MySQL name your conversion returns is still checked (1 to 64 characters,
    /// no NUL) before it reaches the server.
    ///
    /// # Examples
    ///
    /// ```
    /// use dlock_core::{Key, KeyPolicy, PgKey};
    ///
    /// // Prefix every name with the service's namespace, and fall back to the default
    /// // hashing otherwise.
    /// let policy = KeyPolicy::custom(
    ///     |key| KeyPolicy::default().pg_key(key),
    ///     |key| Ok(format!("billing:{}", KeyPolicy::default().mysql_name(key)?)),
    /// );
    /// assert_eq!(policy.mysql_name(&Key::from("invoice-7"))?, "billing:invoice-7");
    /// # Ok::<(), dlock_core::Error>(())
    /// ```
    pub fn custom<P, M>(pg: P, mysql: M) -> Self
    where
        P: Fn(&Key) -> Result<PgKey> + Send + Sync + 'static,
        M: Fn(&Key) -> Result<String> + Send + Sync + 'static,
    {
        KeyPolicy::Custom(CustomPolicy {
            pg: Arc::new(pg),
            mysql: Arc::new(mysql),
        })
    }

    /// The PostgreSQL advisory-lock key for `key`.
    ///
    /// # Errors
    ///
    /// Built-in policies accept every key. A [`Custom`](KeyPolicy::Custom) policy returns
    /// what its conversion returns.
    pub fn pg_key(&self, key: &Key) -> Result<PgKey> {
        let hash = match self {
            KeyPolicy::Custom(custom) => return (custom.pg)(key),
            KeyPolicy::DotNet => dotnet_key,
            KeyPolicy::Blake2b | KeyPolicy::HashedMySqlName => blake2b_key,
            KeyPolicy::Sqlx => sqlx_key,
            KeyPolicy::Sha1 => sha1_key,
            KeyPolicy::Crc32Pair => crc32_pair_key,
        };
        Ok(match key {
            Key::Int(value) => PgKey::BigInt(*value),
            Key::Pair(high, low) => PgKey::Pair(*high, *low),
            Key::Text(text) => hash(text.as_bytes()),
            Key::Bytes(bytes) => hash(bytes),
        })
    }

    /// The MySQL / MariaDB lock name for `key`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when the name would be empty, longer than 64 characters, contain
    /// NUL, or when the key cannot be text under this policy (bytes that are not UTF-8, or a
    /// pair, which only PostgreSQL has). [`KeyPolicy::HashedMySqlName`] accepts every key.
    pub fn mysql_name(&self, key: &Key) -> Result<String> {
        match self {
            KeyPolicy::Custom(custom) => {
                let name = (custom.mysql)(key)?;
                check_mysql_name(&name)?;
                Ok(name)
            }
            KeyPolicy::HashedMySqlName => Ok(hashed_mysql_name(key)),
            KeyPolicy::DotNet => {
                let name = dotnet_mysql_name(&verbatim_mysql_name(key)?);
                check_mysql_name(&name)?;
                Ok(name)
            }
            KeyPolicy::Blake2b | KeyPolicy::Sqlx | KeyPolicy::Sha1 | KeyPolicy::Crc32Pair => {
                let name = verbatim_mysql_name(key)?;
                check_mysql_name(&name)?;
                Ok(name)
            }
        }
    }
}

impl fmt::Debug for KeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyPolicy::Blake2b => "Blake2b",
            KeyPolicy::Sqlx => "Sqlx",
            KeyPolicy::Sha1 => "Sha1",
            KeyPolicy::Crc32Pair => "Crc32Pair",
            KeyPolicy::HashedMySqlName => "HashedMySqlName",
            KeyPolicy::DotNet => "DotNet",
            KeyPolicy::Custom(_) => "Custom",
        })
    }
}

/// The conversions of a [`KeyPolicy::Custom`], made by [`KeyPolicy::custom`].
#[derive(Clone)]
pub struct CustomPolicy {
    pg: Arc<Conversion<PgKey>>,
    mysql: Arc<Conversion<String>>,
}

/// A user's conversion of a key into what one backend locks.
type Conversion<T> = dyn Fn(&Key) -> Result<T> + Send + Sync;

impl fmt::Debug for CustomPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomPolicy").finish_non_exhaustive()
    }
}

fn blake2b_key(bytes: &[u8]) -> PgKey {
    PgKey::BigInt(i64::from_le_bytes(Blake2b::<U8>::digest(bytes).into()))
}

fn sqlx_key(bytes: &[u8]) -> PgKey {
    let mut okm = [0_u8; 8];
    Hkdf::<Sha256>::new(None, bytes)
        .expand(SQLX_HKDF_INFO, &mut okm)
        .expect("8 bytes is far below HKDF-SHA256's output limit of 8160 bytes");
    PgKey::BigInt(i64::from_le_bytes(okm))
}

fn sha1_key(bytes: &[u8]) -> PgKey {
    let digest = Sha1::digest(bytes);
    let mut first = [0_u8; 8];
    first.copy_from_slice(&digest[..8]);
    PgKey::BigInt(i64::from_le_bytes(first))
}

fn crc32_pair_key(bytes: &[u8]) -> PgKey {
    // Masking the top bit keeps the value non-negative, so reading its bytes as i32 is exact.
    let positive = crc32fast::hash(bytes) & 0x7fff_ffff;
    PgKey::Pair(i32::from_le_bytes(positive.to_le_bytes()), 0)
}

/// The text the default policy uses as a MySQL lock name, before checks.
fn verbatim_mysql_name(key: &Key) -> Result<String> {
    match key {
        Key::Text(text) => Ok(text.clone()),
        Key::Int(value) => Ok(value.to_string()),
        Key::Bytes(bytes) => String::from_utf8(bytes.clone()).map_err(|error| {
            Error::invalid_key(format!(
                "MySQL lock names are text, and these bytes are not UTF-8 ({error}); pass \
                 text, or use KeyPolicy::HashedMySqlName, which names any bytes"
            ))
        }),
        Key::Pair(..) => Err(Error::invalid_key(
            "an integer pair names a PostgreSQL lock, and MySQL locks are named by text; use \
             a text or integer key, or KeyPolicy::HashedMySqlName, which names any key",
        )),
    }
}

/// Checks what both MySQL and MariaDB accept as a lock name, so no bad name reaches a server.
fn check_mysql_name(name: &str) -> Result<()> {
    let chars = name.chars().count();
    if chars == 0 {
        return Err(Error::invalid_key(
            "the MySQL lock name is empty; name the lock with at least one character",
        ));
    }
    if chars > MYSQL_NAME_MAX_CHARS {
        return Err(Error::invalid_key(format!(
            "the MySQL lock name is {chars} characters long, over MySQL's limit of \
             {MYSQL_NAME_MAX_CHARS}; use a shorter name, or KeyPolicy::HashedMySqlName, which \
             maps any key to a name of at most {MYSQL_NAME_MAX_CHARS} characters"
        )));
    }
    if name.len() > MARIADB_NAME_MAX_BYTES {
        return Err(Error::invalid_key(format!(
            "the MySQL lock name is {} bytes long in UTF-8, over MariaDB's limit of \
             {MARIADB_NAME_MAX_BYTES} bytes (MySQL allows {MYSQL_NAME_MAX_CHARS} characters); use \
             a shorter name, or KeyPolicy::HashedMySqlName, which maps any key to a short ASCII \
             name",
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(Error::invalid_key(
            "the MySQL lock name contains a NUL character, which lock names cannot carry \
             reliably; remove it, or use KeyPolicy::HashedMySqlName",
        ));
    }
    Ok(())
}

/// The longest name DistributedLock packs into an int4 pair, in characters.
const DOTNET_MAX_ASCII: usize = 9;

/// DistributedLock's `PostgresAdvisoryLockKey(name, allowHashing: true)`. Names are counted in
/// UTF-16 units there; the packed and hex forms only take ASCII, where units are bytes.
fn dotnet_key(bytes: &[u8]) -> PgKey {
    if bytes.len() <= DOTNET_MAX_ASCII && bytes.is_ascii() {
        // Seven bits a character, first character most significant, one spare bit, then
        // every missing character as 127: 9 x 7 + 1 = 64 bits.
        let mut packed = bytes
            .iter()
            .fold(0_u64, |packed, &byte| (packed << 7) | u64::from(byte));
        packed <<= 1;
        for _ in bytes.len()..DOTNET_MAX_ASCII {
            packed = (packed << 7) | 127;
        }
        let [h0, h1, h2, h3, l0, l1, l2, l3] = packed.to_be_bytes();
        return PgKey::Pair(
            i32::from_be_bytes([h0, h1, h2, h3]),
            i32::from_be_bytes([l0, l1, l2, l3]),
        );
    }
    let halves = match bytes.len() {
        16 => Some((&bytes[..8], &bytes[8..], false)),
        17 if bytes[8] == b',' => Some((&bytes[..8], &bytes[9..], true)),
        _ => None,
    };
    if let Some((high, low, pair)) = halves {
        if let (Some(high), Some(low)) = (hex_u32(high), hex_u32(low)) {
            return if pair {
                PgKey::Pair(
                    i32::from_ne_bytes(high.to_ne_bytes()),
                    i32::from_ne_bytes(low.to_ne_bytes()),
                )
            } else {
                let value = (u64::from(high) << 32) | u64::from(low);
                PgKey::BigInt(i64::from_ne_bytes(value.to_ne_bytes()))
            };
        }
    }
    sha1_key(bytes)
}

/// Eight hex digits, either case, no sign or prefix: .NET's `AllowHexSpecifier`.
fn hex_u32(digits: &[u8]) -> Option<u32> {
    if digits.len() != 8 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// The longest MySQL name DistributedLock keeps as it is, in UTF-16 units.
const DOTNET_MAX_NAME_UNITS: usize = 64;

/// The length of the readable prefix of a hashed DistributedLock MySQL name, in UTF-16 units.
const DOTNET_PREFIX_UNITS: usize = 32;

/// DistributedLock's MySQL lock name for `name` (`MySqlDistributedLock` without
/// `exactName`).
fn dotnet_mysql_name(name: &str) -> String {
    let lower = dotnet_lowercase(name);
    if !name.is_empty() && lower == name && name.encode_utf16().count() <= DOTNET_MAX_NAME_UNITS {
        return lower;
    }
    let base = if name.is_empty() {
        "__empty__".to_owned()
    } else {
        lower
    };
    // The first 32 UTF-16 units. .NET cuts a surrogate pair in half there, and its UTF-8
    // encoder sends the lone half as U+FFFD.
    let mut prefix = String::new();
    let mut units = 0;
    for c in base.chars() {
        let width = c.len_utf16();
        if units + width > DOTNET_PREFIX_UNITS {
            if units < DOTNET_PREFIX_UNITS {
                prefix.push(char::REPLACEMENT_CHARACTER);
            }
            break;
        }
        prefix.push(c);
        units += width;
    }
    prefix + &dotnet_base32(&Sha512::digest(name.as_bytes())[..20])
}

/// .NET's `ToLowerInvariant`: each character to one character by its simple case mapping,
/// except U+0130, which .NET leaves as it is (Rust's `to_lowercase` would make it two
/// characters, and `str::to_lowercase` would also turn a final sigma into ς).
fn dotnet_lowercase(name: &str) -> String {
    name.chars()
        .map(|c| {
            let mut lower = c.to_lowercase();
            match (c, lower.next(), lower.next()) {
                ('\u{130}', _, _) => c,
                (_, Some(single), None) => single,
                _ => c,
            }
        })
        .collect()
}

/// DistributedLock's base 32: the alphabet `a`-`z`, `2`-`7`, taking the bits of each byte
/// least significant first (not RFC 4648's order).
fn dotnet_base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0_u32, 0_u32);
    for &byte in bytes {
        buffer |= u32::from(byte) << bits;
        bits += 8;
        while bits >= 5 {
            out.push(char::from(
                ALPHABET[usize::from(u8::try_from(buffer & 31).unwrap_or(0))],
            ));
            buffer >>= 5;
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(char::from(
            ALPHABET[usize::from(u8::try_from(buffer & 31).unwrap_or(0))],
        ));
    }
    out
}

fn hashed_mysql_name(key: &Key) -> String {
    let text_of_integers;
    let input: &[u8] = match key {
        Key::Text(text) => text.as_bytes(),
        Key::Bytes(bytes) => bytes,
        Key::Int(value) => {
            text_of_integers = value.to_string();
            text_of_integers.as_bytes()
        }
        Key::Pair(high, low) => {
            text_of_integers = format!("{high},{low}");
            text_of_integers.as_bytes()
        }
    };
    let prefix_chars = MYSQL_NAME_MAX_CHARS - 1 - HASHED_NAME_DIGEST_HEX;
    let mut name: String = String::from_utf8_lossy(input)
        .chars()
        .take(prefix_chars)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.push(HASHED_NAME_SEPARATOR);
    for byte in Blake2b::<U12>::digest(input) {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of `shared/vectors/keys.tsv`, computed with the reference implementations
    /// (sqlalchemy-dlock, sqlx, pals, with_advisory_lock). Copied here so the tests stand
    /// alone; these numbers must never change.
    struct Vector {
        key: Key,
        blake2b: i64,
        sqlx: i64,
        sha1: i64,
        crc32pair: i32,
    }

    fn text(key: &str, blake2b: i64, sqlx: i64, sha1: i64, crc32pair: i32) -> Vector {
        let key = Key::from(key);
        Vector {
            key,
            blake2b,
            sqlx,
            sha1,
            crc32pair,
        }
    }

    fn bytes(key: &[u8], blake2b: i64, sqlx: i64, sha1: i64, crc32pair: i32) -> Vector {
        let key = Key::from(key);
        Vector {
            key,
            blake2b,
            sqlx,
            sha1,
            crc32pair,
        }
    }

    #[rustfmt::skip]
    fn vectors() -> Vec<Vector> {
        let long = "abcdefghij".repeat(10);
        vec![
            text("user/001", -8875347467275493450, 8443591957982265024, 1665012336727102387, 1436273500),
            text("hello", 9022087748821825191, 5976985304735029827, -6707894095785298774, 907060870),
            text(&long, -493075376201557440, 5261160126744905485, -2633441566497253568, 983144032),
            text("日本語", 5222810888430230004, 7559688324711292789, 7270416183457751489, 671830757),
            text("my first Postgres advisory lock!", -5187811716711659301, -5560419505042474287, 8729441252960036038, 661045204),
            text("job:nightly-report", -6532946034482636148, 7945407153695676931, 7930941623268990718, 1743485213),
            bytes(&[0x00, 0xff], -1973437792894662736, 2970366139697433325, 4545675565694009002, 1826356594),
            bytes(&[], -5426141060434712860, 8559922135585776354, 957977401221134810, 0),
        ]
    }

    #[test]
    fn every_policy_matches_every_golden_vector() {
        for vector in vectors() {
            let key = &vector.key;
            let expect = [
                (KeyPolicy::Blake2b, PgKey::BigInt(vector.blake2b)),
                (KeyPolicy::Sqlx, PgKey::BigInt(vector.sqlx)),
                (KeyPolicy::Sha1, PgKey::BigInt(vector.sha1)),
                (KeyPolicy::Crc32Pair, PgKey::Pair(vector.crc32pair, 0)),
                (KeyPolicy::HashedMySqlName, PgKey::BigInt(vector.blake2b)),
            ];
            for (policy, pg_key) in expect {
                assert_eq!(policy.pg_key(key).unwrap(), pg_key, "{policy:?} of {key}");
            }
        }
    }

    #[test]
    fn the_default_policy_is_blake2b() {
        assert!(matches!(KeyPolicy::default(), KeyPolicy::Blake2b));
    }

    #[test]
    fn text_and_its_bytes_are_the_same_key() {
        for policy in [
            KeyPolicy::Blake2b,
            KeyPolicy::Sqlx,
            KeyPolicy::Sha1,
            KeyPolicy::Crc32Pair,
        ] {
            assert_eq!(
                policy.pg_key(&Key::from("hello")).unwrap(),
                policy.pg_key(&Key::from(&b"hello"[..])).unwrap()
            );
        }
    }

    #[test]
    fn integer_keys_go_to_postgres_as_they_are_under_every_policy() {
        for policy in [
            KeyPolicy::Blake2b,
            KeyPolicy::Sqlx,
            KeyPolicy::Sha1,
            KeyPolicy::Crc32Pair,
            KeyPolicy::HashedMySqlName,
        ] {
            assert_eq!(
                policy.pg_key(&Key::from(i64::MIN)).unwrap(),
                PgKey::BigInt(i64::MIN)
            );
            assert_eq!(
                policy.pg_key(&Key::from((-3, 4))).unwrap(),
                PgKey::Pair(-3, 4)
            );
        }
    }

    #[test]
    fn default_mysql_names_are_the_name_itself_and_integers_in_decimal() {
        let policy = KeyPolicy::default();
        assert_eq!(
            policy.mysql_name(&Key::from("user/001")).unwrap(),
            "user/001"
        );
        assert_eq!(policy.mysql_name(&Key::from("日本語")).unwrap(), "日本語");
        assert_eq!(policy.mysql_name(&Key::from(&b"abc"[..])).unwrap(), "abc");
        assert_eq!(policy.mysql_name(&Key::from(-42_i64)).unwrap(), "-42");
        // 64 characters is the limit itself, counted in characters, not bytes.
        let longest = "é".repeat(64);
        assert_eq!(
            policy.mysql_name(&Key::from(longest.as_str())).unwrap(),
            longest
        );
    }

    fn invalid_reason(policy: &KeyPolicy, key: Key) -> String {
        match policy.mysql_name(&key) {
            Err(Error::InvalidKey { reason }) => reason,
            other => panic!("{key} should be an invalid MySQL name, got {other:?}"),
        }
    }

    #[test]
    fn invalid_mysql_names_say_why_and_what_to_do() {
        let policy = KeyPolicy::default();
        let empty = invalid_reason(&policy, Key::from(""));
        assert!(empty.contains("empty"), "{empty}");

        let long = invalid_reason(&policy, Key::from("x".repeat(65)));
        assert!(
            long.contains("65 characters") && long.contains("HashedMySqlName"),
            "{long}"
        );

        // 64 characters of four bytes each: MySQL's 64 characters, but over MariaDB's 192 bytes.
        let wide = invalid_reason(&policy, Key::from("😀".repeat(64)));
        assert!(
            wide.contains("256 bytes") && wide.contains("192 bytes"),
            "{wide}"
        );
        assert!(policy.mysql_name(&Key::from("😀".repeat(48))).is_ok());
        assert!(policy.mysql_name(&Key::from("é".repeat(64))).is_ok());

        let binary = invalid_reason(&policy, Key::from(&[0xff_u8, 0xfe][..]));
        assert!(
            binary.contains("not UTF-8") && binary.contains("HashedMySqlName"),
            "{binary}"
        );

        let nul = invalid_reason(&policy, Key::from("a\0b"));
        assert!(nul.contains("NUL"), "{nul}");

        let pair = invalid_reason(&policy, Key::from((1, 2)));
        assert!(pair.contains("PostgreSQL"), "{pair}");

        let empty_bytes = invalid_reason(&policy, Key::from(Vec::new()));
        assert!(empty_bytes.contains("empty"), "{empty_bytes}");
    }

    /// Vectors of .NET DistributedLock 2.8.1: the issue's, and the expected values of its own
    /// `PostgresAdvisoryLockKeyTest` and `MySqlDistributedLockTest.TestGetSafeLockNameCompat`.
    #[test]
    fn dotnet_postgres_keys_are_pinned() {
        let key = |name: &str| KeyPolicy::DotNet.pg_key(&Key::from(name)).unwrap();
        assert_eq!(key("abc"), PgKey::Pair(-1014293505, -1));
        assert_eq!(key("user/001"), PgKey::Pair(-338743515, -333958785));
        assert_eq!(key(""), PgKey::Pair(2147483647, -1));
        assert_eq!(key("ABCDEFGHI"), PgKey::Pair(-2096489400, -1314666350));
        assert_eq!(key("0123456789abcdef"), PgKey::BigInt(81985529216486895));
        assert_eq!(key("nightly-report"), PgKey::BigInt(7635146791061737145));
        assert_eq!(key("héllo"), PgKey::BigInt(8655888544762082613));
        // DistributedLock's own tests.
        assert_eq!(key(&"漢".repeat(18)), PgKey::BigInt(-5707277204051710361));
        assert_eq!(key(&"0".repeat(16)), PgKey::BigInt(0));
        assert_eq!(key("0000000000000001"), PgKey::BigInt(1));
        assert_eq!(key("00000000,00000000"), PgKey::Pair(0, 0));
        assert_eq!(key("00000003,ffffffff"), PgKey::Pair(3, -1));
        assert_eq!(key("00000003,FFFFFFFF"), PgKey::Pair(3, -1));
        assert_eq!(key(&"\0".repeat(9)), PgKey::Pair(0, 0));
        assert_ne!(key(""), key("\0"));
        assert_ne!(key("\0"), key("a"));
        // Not hex after all: hashed.
        assert!(matches!(key("0123456789abcdeg"), PgKey::BigInt(_)));
        assert_ne!(
            key("0123456789abcdeg"),
            PgKey::BigInt(0x0123_4567_89ab_cdef)
        );
        assert!(matches!(key("0x23456789abcdef"), PgKey::BigInt(_)));
        // Every one-character repetition of 1 to 9 characters is its own pair.
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(key("")));
        for c in 1_u8..128 {
            for length in 1..=9 {
                let name = String::from(char::from(c)).repeat(length);
                let packed = key(&name);
                assert!(matches!(packed, PgKey::Pair(..)), "{name:?}");
                assert!(seen.insert(packed), "{name:?} collides");
            }
        }
        // Integer keys are as they are, as DistributedLock's own constructors take them.
        assert_eq!(
            KeyPolicy::DotNet.pg_key(&Key::Int(7)).unwrap(),
            PgKey::BigInt(7)
        );
        assert_eq!(
            KeyPolicy::DotNet.pg_key(&Key::Pair(3, -1)).unwrap(),
            PgKey::Pair(3, -1)
        );
    }

    #[test]
    fn dotnet_mysql_names_are_pinned() {
        let name = |name: &str| KeyPolicy::DotNet.mysql_name(&Key::from(name)).unwrap();
        assert_eq!(name("abc"), "abc");
        assert_eq!(name(""), "__empty__p6ad62yppho33ytkibum5wbqhqvbcsxa");
        assert_eq!(
            name("ABCDEFGHIJ"),
            "abcdefghij6rjqvmz6aoh6ntdoj7eelkbhtqjt3muu"
        );
        // DistributedLock's own tests.
        assert_eq!(name("ABC"), "abczj4qr6tvn4a3kmgq4bukhowqyfrlxsb3");
        assert_eq!(name("\\"), "\\");
        assert_eq!(name(&"a".repeat(64)), "a".repeat(64));
        assert_eq!(name(&"\\".repeat(64)), "\\".repeat(64));
        assert_eq!(
            name(&"x".repeat(65)),
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxgkd2zq6c6ey6mhs45clqg7vij6ycgo43"
        );
        // One character to one: U+0130 stays, Σ is σ wherever it stands.
        assert!(name("İ").starts_with('İ'));
        assert!(name("ΑΣ").starts_with("ασ"));
        // Lengths are UTF-16 units: 33 characters outside the BMP are 66 units, so hashed,
        // and a pair cut at the 32nd unit becomes U+FFFD, as .NET's UTF-8 encoder sends it.
        let astral = "😀".repeat(33);
        let hashed = name(&astral);
        assert_eq!(hashed.chars().count(), 16 + 32, "{hashed}");
        let cut = name(&format!("a{}", "😀".repeat(40)));
        assert!(
            cut.starts_with(&format!("a{}\u{fffd}", "😀".repeat(15))),
            "{cut}"
        );
        assert_eq!(KeyPolicy::DotNet.mysql_name(&Key::Int(42)).unwrap(), "42");
        assert!(KeyPolicy::DotNet.mysql_name(&Key::Pair(1, 2)).is_err());
    }

    /// The expected names were computed with Python's hashlib, independently of this code.
    #[test]
    fn hashed_mysql_names_are_pinned() {
        let policy = KeyPolicy::HashedMySqlName;
        let name = |key: Key| policy.mysql_name(&key).unwrap();
        assert_eq!(
            name(Key::from("user/001")),
            "user/001~8e28f1b2e53f7339f2561f7e"
        );
        assert_eq!(
            name(Key::from("abcdefghij".repeat(10))),
            "abcdefghijabcdefghijabcdefghijabcdefghi~c5bab95cab590abc3fe4d7cf"
        );
        assert_eq!(
            name(Key::from(&[0x00_u8, 0xff][..])),
            "__~a3046812656ca976782474dd"
        );
        assert_eq!(name(Key::from(42_i64)), name(Key::from("42")));
        assert_eq!(name(Key::from((1, 2))), name(Key::from("1,2")));
    }

    #[test]
    fn hashed_mysql_names_fit_every_server_and_stay_distinct() {
        let policy = KeyPolicy::HashedMySqlName;
        let keys = [
            Key::from(""),
            Key::from("a"),
            Key::from("A"),
            Key::from("日本語".repeat(40)),
            Key::from("x".repeat(1000)),
            Key::from("x".repeat(1001)),
            Key::from(&[0xff_u8; 300][..]),
            Key::from("a\0b"),
        ];
        let names: Vec<String> = keys
            .iter()
            .map(|key| policy.mysql_name(key).unwrap())
            .collect();
        for name in &names {
            assert!(
                name.len() <= MYSQL_NAME_MAX_CHARS && name.is_ascii(),
                "{name}"
            );
            assert!(!name.contains('\0'), "{name}");
        }
        let distinct: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
    }

    #[test]
    fn custom_policies_are_used_and_their_names_are_checked() {
        let policy = KeyPolicy::custom(|_| Ok(PgKey::Pair(1, 1)), |_| Ok(String::new()));
        assert_eq!(policy.pg_key(&Key::from("any")).unwrap(), PgKey::Pair(1, 1));
        assert!(invalid_reason(&policy, Key::from("any")).contains("empty"));
        assert_eq!(format!("{policy:?}"), "Custom");
    }
}
