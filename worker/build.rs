//! Rebuild when a migration is added or changed: `sqlx::migrate!` embeds
//! `migrations/` at compile time, and cargo does not watch that folder by
//! itself (a new migration file was silently left out of an incremental
//! build).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
