//! The SQL shipped inside the binary, one component per directory under `sql/`.
//!
//! `build.rs` generates the file list, so the install order is fixed at build time:
//! `schema.sql`, `functions/*.sql` by name, `grants.sql`.

include!(concat!(env!("OUT_DIR"), "/sql_bundle.rs"));

/// One embedded SQL file.
#[derive(Debug, Clone, Copy)]
pub struct SqlFile {
    pub path: &'static str,
    pub text: &'static str,
}

/// The ordered files of a component, or `None` for an unknown name.
pub fn component(name: &str) -> Option<Vec<SqlFile>> {
    COMPONENTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, files)| {
            files
                .iter()
                .map(|(path, text)| SqlFile { path, text })
                .collect()
        })
}
