//! Build script.
//!
//! * Rebuild when a migration is added or changed: `sqlx::migrate!` embeds
//!   `migrations/` at compile time, and cargo does not watch that folder by
//!   itself (a new migration file was silently left out of an incremental
//!   build).
//! * `LAS_GIT_REVISION` for `las_build_info{revision}` (issue #16): taken
//!   from the environment when set (an image build without `.git`, see
//!   deploy/Dockerfile), else from `git rev-parse`, else `unknown`.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=LAS_GIT_REVISION");
    let revision = std::env::var("LAS_GIT_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LAS_GIT_REVISION={}", revision.trim());
}

fn git_revision() -> Option<String> {
    let dir = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let rev = dir(&["rev-parse", "--short=12", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the ref it
    // points at (a commit on the branch).
    if let Some(git_dir) = dir(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
    }
    if let (Some(common), Some(r)) = (
        dir(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
        dir(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        println!("cargo:rerun-if-changed={common}/{r}");
    }
    Some(rev)
}
