//! Build script: records the git commit the crate is built from, for
//! `--version` (`cli::version_text`). Outside a git checkout of this
//! repository (a source tarball, a vendored copy inside another repository)
//! it records nothing and `--version` shows the plain version.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    // Only this repository's own checkout counts: a tarball unpacked inside
    // some other repository must not take that repository's commit.
    let Some(top) = git(&[
        "-C",
        manifest_dir.to_str().unwrap_or("."),
        "rev-parse",
        "--show-toplevel",
    ]) else {
        return;
    };
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(Path::new(&top), &manifest_dir) {
        return;
    }
    let dir = manifest_dir.to_str().unwrap_or(".");
    let Some(commit) = git(&["-C", dir, "rev-parse", "--short", "HEAD"]) else {
        return;
    };
    println!("cargo:rustc-env=SYNAPSE_COMPRESS_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points
    // at (a commit) and packed-refs (a gc). Only paths that exist, since a
    // missing one would make cargo rerun this script on every build.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["-C", dir, "symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["-C", dir, "rev-parse", "--git-path", &name]) {
            let path = manifest_dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
