//! Embeds the dashboard's built files (`dashboard-web/dist`, made by
//! `npm run build`; `make` builds it first) into the `drmq` binary, so a
//! deployed broker serves its dashboard with no files beside it. Without a
//! build the broker serves a page saying how to make one: `cargo build`
//! alone never needs Node.js.
//!
//! `DRMQ_DASHBOARD_DIST` names another folder; the Makefile sets it, so a
//! `make` after a plain `cargo build` embeds the fresh files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DRMQ_DASHBOARD_DIST");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dist = std::env::var_os("DRMQ_DASHBOARD_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../dashboard-web/dist"));
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        println!("cargo:rerun-if-changed={}", dist.display());
        collect(&dist, &dist, &mut files);
    }
    files.sort();
    let mut out = String::from("/// The dashboard's files: (URL path, bytes).\n");
    out.push_str("pub static FILES: &[(&str, &[u8])] = &[\n");
    for (url, path) in &files {
        let _ = writeln!(
            out,
            "    ({url:?}, include_bytes!({:?})),",
            path.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("dashboard.rs");
    std::fs::write(dest, out).expect("writing the dashboard's file list");
}

/// Every regular file under `dir`, with its URL path relative to `root`.
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            collect(root, &path, files);
        } else if kind.is_file() {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let url = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
            let abs = std::fs::canonicalize(&path).unwrap_or(path);
            files.push((url, abs));
        }
    }
}
