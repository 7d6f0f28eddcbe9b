//! Embeds the SQL under `sql/` into the binary.
//!
//! Each component directory (`sql/pgq`, `sql/pgq_ext`, ...) is installed in a fixed order:
//! `schema.sql`, then every `functions/*.sql` in name order, then `grants.sql`. Generating the
//! list here means adding a function file needs no Rust change.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let sql = root.join("sql");
    println!("cargo:rerun-if-changed=sql");
    let mut out = String::new();
    let mut components: Vec<PathBuf> = read_dir_sorted(&sql)
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    components.sort();
    out.push_str("/// Every bundled SQL component: (name, ordered (file, text) list).\n");
    out.push_str("pub static COMPONENTS: &[(&str, &[(&str, &str)])] = &[\n");
    for dir in components {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        println!("cargo:rerun-if-changed={}", dir.display());
        let _ = writeln!(out, "    ({name:?}, &[");
        for file in component_files(&dir) {
            println!("cargo:rerun-if-changed={}", file.display());
            let rel = file
                .strip_prefix(&sql)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let _ = writeln!(
                out,
                "        ({rel:?}, include_str!({:?})),",
                file.display().to_string()
            );
        }
        out.push_str("    ]),\n");
    }
    out.push_str("];\n");
    let dest =
        PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("sql_bundle.rs");
    fs::write(dest, out).expect("write sql_bundle.rs");
}

fn component_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let schema = dir.join("schema.sql");
    if schema.exists() {
        files.push(schema);
    }
    let functions = dir.join("functions");
    if functions.is_dir() {
        println!("cargo:rerun-if-changed={}", functions.display());
        files.extend(
            read_dir_sorted(&functions)
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "sql")),
        );
    }
    let grants = dir.join("grants.sql");
    if grants.exists() {
        files.push(grants);
    }
    files
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    entries.sort();
    entries
}
