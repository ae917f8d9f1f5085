//! Writes every JSON Schema of the wire contract to `contracts/schema/<stem>.json`.
//!
//! Run with `cargo run -p las-contracts --bin gen-schema` (or `make schema`).
//! `contracts/tests/contract.rs` fails when the committed files are out of date.

use std::fs;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    if let Err(e) = fs::create_dir_all(&dir) {
        eprintln!("gen-schema: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for (stem, schema) in las_contracts::schemas() {
        let path = dir.join(format!("{stem}.json"));
        let text = las_contracts::render_schema(&schema);
        let unchanged = fs::read_to_string(&path).is_ok_and(|old| old == text);
        if unchanged {
            println!("unchanged {}", path.display());
            continue;
        }
        if let Err(e) = fs::write(&path, text) {
            eprintln!("gen-schema: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote     {}", path.display());
    }
    ExitCode::SUCCESS
}
