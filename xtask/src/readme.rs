//! `cargo xtask readme`: builds the README's examples as a new user would, each in a crate of
//! its own outside the workspace, with exactly the dependency lines its `toml` block shows
//! (the dlock crates taken by path instead of from the registry) and the example as `main`.
//!
//! An example is a `rust` block that a `toml` block introduces (only blank lines between
//! them). Its code runs inside `main`, which returns `Result<(), Box<dyn Error>>` so that `?`
//! works as in the README; an example that awaits gets `#[tokio::main]`, so its `toml` block
//! must list tokio, as the user's would have to.
//!
//! `--run` also runs every example, against the servers `DLOCK_PG_URL` and `DLOCK_MYSQL_URL`
//! name (the README's addresses are replaced by them), after a fixture step creates the
//! tables the examples write to.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use crate::{Result, cargo, project_root, target_dir};

/// One example: where it is, its dependency lines, its code.
struct Example {
    line: usize,
    dependencies: Vec<String>,
    code: Vec<String>,
}

/// The README's server addresses, and what `--run` puts in their place.
const PG_ADDRESSES: [&str; 2] = [
    "postgres://postgres@localhost/postgres",
    "host=localhost user=postgres",
];
const MYSQL_ADDRESS: &str = "mysql://app:secret@localhost/app";

/// The servers `--run` runs the examples against.
struct Servers {
    pg: String,
    mysql: String,
}

/// `cargo xtask readme [--run]`.
pub(crate) fn command(args: &[String]) -> Result<()> {
    let run = match args.first().map(String::as_str) {
        None => false,
        Some("--run") if args.len() == 1 => true,
        Some(other) => {
            return Err(
                format!("unknown argument {other:?}; usage: cargo xtask readme [--run]").into(),
            );
        }
    };
    let servers = if run {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                format!(
                    "{name} is not set: `readme --run` runs the examples against the servers \
                     that `cargo xtask test-matrix --only db:readme` starts, or that `cargo xtask \
                     db up` and `eval \"$(cargo xtask db env)\"` name"
                )
            })
        };
        Some(Servers {
            pg: var("DLOCK_PG_URL")?,
            mysql: var("DLOCK_MYSQL_URL")?,
        })
    } else {
        None
    };
    let root = project_root();
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let examples = examples(&readme);
    if examples.is_empty() {
        return Err("the README has no example introduced by a toml block".into());
    }
    let dir = target_dir().join("readme-examples");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let mut members = Vec::new();
    for example in &examples {
        let name = format!("example-line-{}", example.line);
        write_example(&dir.join(&name), &name, example, &root, servers.as_ref())?;
        members.push(format!("\"{name}\""));
    }
    if let Some(servers) = &servers {
        write_fixtures(&dir.join("readme-fixtures"), servers)?;
        members.push("\"readme-fixtures\"".to_owned());
    }
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[workspace]\nresolver = \"3\"\nmembers = [{}]\n",
            members.join(", ")
        ),
    )?;
    // The workspace's versions, so the examples build what the tests built.
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))?;
    eprintln!(
        "xtask: building {} README examples in {}",
        examples.len(),
        dir.display()
    );
    let status = Command::new(cargo())
        .current_dir(&dir)
        // `build`, not `check`: the tests built the drivers already, in this profile, and a
        // check would type-check every dependency again for metadata of its own.
        .args(["build", "--quiet", "--workspace", "--keep-going"])
        // The shared target directory: the drivers are built already.
        .env("CARGO_TARGET_DIR", target_dir())
        .status()?;
    if !status.success() {
        return Err(
            "a README example does not build as written (see above; the crate is \
                    named after the line of its rust block)"
                .into(),
        );
    }
    eprintln!("xtask: every README example builds");
    if servers.is_none() {
        return Ok(());
    }
    // The binaries the build above made, run as they are: `cargo run -p` would resolve each
    // example's features alone, unlike the workspace's build, and build its dependencies
    // again for every example.
    let run = |package: &str| -> Result<()> {
        let binary = std::path::absolute(target_dir().join("debug").join(package))?;
        let status = Command::new(binary).current_dir(&dir).status()?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{package} failed (see above)").into())
        }
    };
    run("readme-fixtures")?;
    for example in &examples {
        let name = format!("example-line-{}", example.line);
        eprintln!("xtask: running the README example at line {}", example.line);
        run(&name)?;
    }
    eprintln!("xtask: every README example runs");
    Ok(())
}

/// A crate that creates the tables the examples write to, on both servers.
fn write_fixtures(dir: &Path, servers: &Servers) -> Result<()> {
    std::fs::create_dir_all(dir.join("src"))?;
    // The workspace's own driver lines, so nothing new is built.
    let manifest = std::fs::read_to_string(project_root().join("Cargo.toml"))?;
    let line = |name: &str| -> Result<String> {
        manifest
            .lines()
            .find(|line| line.starts_with(&format!("{name} = ")))
            .map(str::to_owned)
            .ok_or_else(|| format!("the workspace names no {name} dependency").into())
    };
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"readme-fixtures\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
             publish = false\n\n[dependencies]\n{}\n{}\n",
            line("postgres")?,
            line("mysql")?
        ),
    )?;
    std::fs::write(
        dir.join("src/main.rs"),
        format!(
            "use mysql::prelude::Queryable;\n\n\
             fn main() -> Result<(), Box<dyn std::error::Error>> {{\n\
             \x20   let mut pg = postgres::Client::connect({:?}, postgres::NoTls)?;\n\
             \x20   pg.batch_execute(\n\
             \x20       \"CREATE TABLE IF NOT EXISTS reports (running boolean); \\\n\
             \x20        CREATE TABLE IF NOT EXISTS accounts (id integer, frozen boolean); \\\n\
             \x20        CREATE TABLE IF NOT EXISTS invoices (id integer, paid boolean)\",\n\
             \x20   )?;\n\
             \x20   let mut my = mysql::Conn::new(mysql::Opts::from_url({:?})?)?;\n\
             \x20   my.query_drop(\"CREATE TABLE IF NOT EXISTS reports (running integer)\")?;\n\
             \x20   Ok(())\n\
             }}\n",
            servers.pg, servers.mysql
        ),
    )?;
    Ok(())
}

/// The README's examples: each `rust` block right after a `toml` block.
fn examples(readme: &str) -> Vec<Example> {
    let mut examples = Vec::new();
    let mut lines = readme.lines().enumerate();
    let mut toml: Option<Vec<String>> = None;
    while let Some((index, line)) = lines.next() {
        let fence = line.trim_start();
        if let Some(info) = fence.strip_prefix("```") {
            let body: Vec<String> = lines
                .by_ref()
                .map(|(_, line)| line)
                .take_while(|line| !line.trim_start().starts_with("```"))
                .map(str::to_owned)
                .collect();
            let info = info.trim();
            if info == "toml" {
                toml = Some(body);
                continue;
            }
            let rust = info == "rust" || (info.starts_with("rust,") && !info.contains("ignore"));
            if let (true, Some(dependencies)) = (rust, toml.take()) {
                examples.push(Example {
                    line: index + 1,
                    dependencies,
                    code: body,
                });
            }
            continue;
        }
        // Prose between the blocks: the toml block introduced nothing.
        if !line.trim().is_empty() {
            toml = None;
        }
    }
    examples
}

fn write_example(
    dir: &Path,
    name: &str,
    example: &Example,
    root: &Path,
    servers: Option<&Servers>,
) -> Result<()> {
    std::fs::create_dir_all(dir.join("src"))?;
    let mut manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
         [dependencies]\n"
    );
    for line in &example.dependencies {
        let line = match line.split_once('=') {
            // A dlock crate: the one in this repository, with the features the line asks for.
            Some((krate, spec)) if krate.trim().starts_with("dlock-") => {
                let path = root.join(krate.trim());
                let spec = spec.replacen(
                    "version = \"0.1\"",
                    &format!("path = {:?}", path.display().to_string()),
                    1,
                );
                format!("{krate}={spec}")
            }
            _ => line.clone(),
        };
        manifest.push_str(&line);
        manifest.push('\n');
    }
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    let awaits = example.code.iter().any(|line| line.contains(".await"));
    let mut main = String::from("#![allow(unused)]\n\n");
    if awaits {
        main.push_str(
            "#[tokio::main]\nasync fn main() -> Result<(), Box<dyn std::error::Error>> {\n",
        );
    } else {
        main.push_str("fn main() -> Result<(), Box<dyn std::error::Error>> {\n");
    }
    for line in &example.code {
        let mut line = line.clone();
        if let Some(servers) = servers {
            for address in PG_ADDRESSES {
                line = line.replace(address, &servers.pg);
            }
            line = line.replace(MYSQL_ADDRESS, &servers.mysql);
        }
        let _ = writeln!(main, "    {line}");
    }
    main.push_str("    Ok(())\n}\n");
    std::fs::write(dir.join("src/main.rs"), main)?;
    Ok(())
}
