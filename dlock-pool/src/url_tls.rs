//! The TLS a URL asks for, in the parameters users already write: PostgreSQL's `sslmode` and
//! `sslrootcert` (as libpq reads them), MySQL's `ssl-mode` and `ssl-ca` (as the `mysql` client
//! reads them). They are taken out of the URL before a driver reads it, since each driver reads
//! a different subset (tokio-postgres knows no `verify-full`; the two MySQL drivers share no TLS
//! parameter), and the pool's connectors are built from them.

use std::path::PathBuf;

use dlock_core::{Error, Result};

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Nothing: the connection is encrypted, and anyone on the path could be the server
    /// (libpq's `require`, MySQL's `REQUIRED`).
    Nothing,
    /// That a trusted authority signed it (`verify-ca`, `VERIFY_CA`).
    Chain,
    /// That, and that it names the host connected to (`verify-full`, `VERIFY_IDENTITY`).
    ChainAndHost,
}

/// The TLS a URL asks for: none, or TLS checked as `verify` says, trusting `ca` beside the
/// system's authorities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tls {
    /// Whether TLS is a must (`require` and stronger); `prefer` uses it where the server
    /// offers it.
    pub(crate) required: bool,
    /// Whether TLS is tried at all.
    pub(crate) wanted: bool,
    pub(crate) verify: Verify,
    pub(crate) ca: Option<PathBuf>,
}

impl Tls {
    const NONE: Tls = Tls {
        required: false,
        wanted: false,
        verify: Verify::Nothing,
        ca: None,
    };
}

/// A URL's query parameters, raw, in order.
struct Query<'a> {
    base: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Query<'a> {
    fn of(url: &'a str) -> Query<'a> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let pairs = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .collect();
        Query { base, pairs }
    }

    /// Removes parameter `name` and gives its last value, percent-decoded.
    fn take(&mut self, name: &str) -> Result<Option<String>> {
        let mut value = None;
        let mut error = None;
        self.pairs.retain(|(key, raw)| {
            if *key != name {
                return true;
            }
            match percent_decode(raw) {
                Some(decoded) => value = Some(decoded),
                None => {
                    error = Some(format!(
                        "the value of {name} is not valid percent-encoded UTF-8"
                    ))
                }
            }
            false
        });
        match error {
            Some(reason) => Err(Error::InvalidUrl { reason }),
            None => Ok(value),
        }
    }

    /// The URL with the parameters left, and `extra` after them.
    fn url(&self, extra: Option<(&str, &str)>) -> String {
        let pairs: Vec<String> = self
            .pairs
            .iter()
            .chain(extra.as_ref())
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        if pairs.is_empty() {
            self.base.to_owned()
        } else {
            format!("{}?{}", self.base, pairs.join("&"))
        }
    }
}

/// `%XX` decoded, or `None` when that is not UTF-8 or an escape is cut short.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = raw.get(index + 1..index + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

fn invalid(reason: String) -> Error {
    Error::InvalidUrl { reason }
}

/// Reads `sslmode` and `sslrootcert` out of a PostgreSQL URL: the URL for tokio-postgres (its
/// `sslmode` one it knows) and the TLS asked for. As libpq does, `require` with a root
/// certificate verifies the chain.
pub(crate) fn postgres(url: &str) -> Result<(String, Tls)> {
    let mut query = Query::of(url);
    let mode = query.take("sslmode")?;
    let ca = query.take("sslrootcert")?.map(PathBuf::from);
    let (driver_mode, mut tls) = match mode.as_deref() {
        None | Some("prefer" | "allow") => (
            None,
            Tls {
                wanted: true,
                ..Tls::NONE
            },
        ),
        Some("disable") => (Some("disable"), Tls::NONE),
        Some("require") => (
            Some("require"),
            Tls {
                required: true,
                wanted: true,
                verify: if ca.is_some() {
                    Verify::Chain
                } else {
                    Verify::Nothing
                },
                ca: None,
            },
        ),
        Some("verify-ca") => (
            Some("require"),
            Tls {
                required: true,
                wanted: true,
                verify: Verify::Chain,
                ca: None,
            },
        ),
        Some("verify-full") => (
            Some("require"),
            Tls {
                required: true,
                wanted: true,
                verify: Verify::ChainAndHost,
                ca: None,
            },
        ),
        Some(other) => {
            return Err(invalid(format!(
                "sslmode={other} is not a PostgreSQL TLS mode; use disable, allow, prefer, \
                 require, verify-ca or verify-full"
            )));
        }
    };
    tls.ca = ca.filter(|_| tls.wanted);
    Ok((query.url(driver_mode.map(|mode| ("sslmode", mode))), tls))
}

/// Reads `ssl-mode` and `ssl-ca` out of a MySQL URL: the URL for the drivers and the TLS asked
/// for. `PREFERRED` (the mysql client's default) connects without TLS: neither driver can fall
/// back. As the mysql client does, `REQUIRED` with a CA verifies the chain.
pub(crate) fn mysql(url: &str) -> Result<(String, Tls)> {
    let mut query = Query::of(url);
    let mode = query
        .take("ssl-mode")?
        .map(|mode| mode.to_ascii_uppercase());
    let ca = query.take("ssl-ca")?.map(PathBuf::from);
    let tls = match mode.as_deref() {
        None | Some("DISABLED" | "PREFERRED") => Tls::NONE,
        Some(mode @ ("REQUIRED" | "VERIFY_CA" | "VERIFY_IDENTITY")) => Tls {
            required: true,
            wanted: true,
            verify: match (mode, &ca) {
                ("VERIFY_IDENTITY", _) => Verify::ChainAndHost,
                ("VERIFY_CA", _) | (_, Some(_)) => Verify::Chain,
                _ => Verify::Nothing,
            },
            ca,
        },
        Some(other) => {
            return Err(invalid(format!(
                "ssl-mode={other} is not a MySQL TLS mode; use DISABLED, PREFERRED, REQUIRED, \
                 VERIFY_CA or VERIFY_IDENTITY"
            )));
        }
    };
    Ok((query.url(None), tls))
}

cfg_if::cfg_if! {
    if #[cfg(feature = "native-tls")] {
        /// The PostgreSQL connector of the URL pools: native-tls, used as `tls` asks.
        pub(crate) type PgConnector = postgres_native_tls::MakeTlsConnector;

        /// The connector for `tls`.
        pub(crate) fn pg_connector(tls: &Tls) -> Result<PgConnector> {
            let mut builder = native_tls::TlsConnector::builder();
            builder
                .danger_accept_invalid_certs(tls.verify == Verify::Nothing)
                .danger_accept_invalid_hostnames(tls.verify != Verify::ChainAndHost);
            if let Some(path) = &tls.ca {
                let pem = std::fs::read(path).map_err(|error| {
                    invalid(format!("sslrootcert {}: {error}", path.display()))
                })?;
                let certificate = native_tls::Certificate::from_pem(&pem).map_err(|error| {
                    invalid(format!("sslrootcert {} is not a PEM certificate: {error}", path.display()))
                })?;
                builder.add_root_certificate(certificate);
            }
            let connector = builder.build().map_err(|error| {
                invalid(format!("the TLS the URL asks for cannot be set up: {error}"))
            })?;
            Ok(PgConnector::new(connector))
        }

        /// `opts` with the TLS `tls` asks for.
        pub(crate) fn mysql_async_opts(
            opts: dlock_mysql::mysql_async::Opts,
            tls: &Tls,
        ) -> Result<dlock_mysql::mysql_async::Opts> {
            use dlock_mysql::mysql_async::{OptsBuilder, SslOpts};
            if !tls.required {
                return Ok(opts);
            }
            let ssl = SslOpts::default()
                .with_danger_accept_invalid_certs(tls.verify == Verify::Nothing)
                .with_danger_skip_domain_validation(tls.verify != Verify::ChainAndHost)
                .with_root_certs(tls.ca.iter().map(|path| path.clone().into()).collect());
            Ok(OptsBuilder::from_opts(opts).ssl_opts(ssl).into())
        }

        /// `opts` with the TLS `tls` asks for, for the blocking driver.
        pub(crate) fn mysql_opts(
            opts: dlock_mysql::mysql::OptsBuilder,
            tls: &Tls,
        ) -> Result<dlock_mysql::mysql::OptsBuilder> {
            use dlock_mysql::mysql::SslOpts;
            if !tls.required {
                return Ok(opts);
            }
            let ssl = SslOpts::default()
                .with_danger_accept_invalid_certs(tls.verify == Verify::Nothing)
                .with_danger_skip_domain_validation(tls.verify != Verify::ChainAndHost)
                .with_root_cert_path(tls.ca.clone());
            Ok(opts.ssl_opts(ssl))
        }
    } else {
        /// The PostgreSQL connector of the URL pools: plain text (feature `native-tls` is off).
        pub(crate) type PgConnector = dlock_postgres::tokio_postgres::NoTls;

        /// Plain text, or an error when `tls` requires TLS.
        pub(crate) fn pg_connector(tls: &Tls) -> Result<PgConnector> {
            refuse_required(tls, "sslmode")?;
            Ok(PgConnector {})
        }

        /// `opts`, or an error when `tls` requires TLS.
        pub(crate) fn mysql_async_opts(
            opts: dlock_mysql::mysql_async::Opts,
            tls: &Tls,
        ) -> Result<dlock_mysql::mysql_async::Opts> {
            refuse_required(tls, "ssl-mode")?;
            Ok(opts)
        }

        /// `opts`, or an error when `tls` requires TLS, for the blocking driver.
        pub(crate) fn mysql_opts(
            opts: dlock_mysql::mysql::OptsBuilder,
            tls: &Tls,
        ) -> Result<dlock_mysql::mysql::OptsBuilder> {
            refuse_required(tls, "ssl-mode")?;
            Ok(opts)
        }

        /// An error naming the feature when `tls` requires TLS.
        fn refuse_required(tls: &Tls, parameter: &str) -> Result<()> {
            if tls.required {
                return Err(invalid(format!(
                    "its {parameter} asks for TLS, and this build of dlock-pool has none: turn \
                     on its native-tls feature"
                )));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_modes_are_taken_out_and_mapped_to_what_tokio_postgres_reads() {
        let (url, tls) =
            postgres("postgres://u@h/db?sslmode=verify-full&application_name=x").unwrap();
        assert_eq!(url, "postgres://u@h/db?application_name=x&sslmode=require");
        assert_eq!((tls.required, tls.verify), (true, Verify::ChainAndHost));
        let (url, tls) =
            postgres("postgres://u@h/db?sslrootcert=%2Fetc%2Fca.pem&sslmode=require").unwrap();
        assert_eq!(url, "postgres://u@h/db?sslmode=require");
        assert_eq!(
            tls.verify,
            Verify::Chain,
            "require with a root certificate verifies"
        );
        assert_eq!(tls.ca, Some(PathBuf::from("/etc/ca.pem")));
        let (url, tls) = postgres("postgres://u@h/db").unwrap();
        assert_eq!(url, "postgres://u@h/db");
        assert!(tls.wanted && !tls.required);
        let (url, tls) = postgres("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(url, "postgres://u@h/db?sslmode=disable");
        assert!(!tls.wanted);
        let error = postgres("postgres://u@h/db?sslmode=always").unwrap_err();
        assert!(error.to_string().contains("verify-full"), "{error}");
        assert!(postgres("postgres://u@h/db?sslrootcert=%zz").is_err());
    }

    #[test]
    fn mysql_modes_are_taken_out_whatever_their_case() {
        let (url, tls) =
            mysql("mysql://u:p@h:3306/db?ssl-mode=verify_identity&ssl-ca=/ca.pem").unwrap();
        assert_eq!(url, "mysql://u:p@h:3306/db");
        assert_eq!((tls.required, tls.verify), (true, Verify::ChainAndHost));
        assert_eq!(tls.ca, Some(PathBuf::from("/ca.pem")));
        let (_, tls) = mysql("mysql://h/db?ssl-mode=REQUIRED").unwrap();
        assert_eq!((tls.required, tls.verify), (true, Verify::Nothing));
        let (url, tls) = mysql("mysql://h/db?ssl-mode=PREFERRED&prefer_socket=false").unwrap();
        assert_eq!(url, "mysql://h/db?prefer_socket=false");
        assert!(!tls.required);
        assert!(mysql("mysql://h/db?ssl-mode=ON").is_err());
    }
}
