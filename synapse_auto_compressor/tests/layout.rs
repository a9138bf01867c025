//! The crate's modules use each other in one direction (src/lib.rs lists
//! the order): a module that a stage calls never calls back into it. A
//! cycle makes a newcomer read both files at once to follow either; this
//! test names the first one it finds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module of `src` and the crate's modules its code names
/// (`crate::x`, `use crate::{x, y}`), comments left out.
fn uses() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("a file under src");
        let module = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a file name")
            .trim_end_matches(".rs")
            .to_owned();
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        let code: String = text
            .lines()
            .map(|line| line.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let named = uses.entry(module.clone()).or_default();
        for name in crate_paths(&code) {
            if name != module {
                named.insert(name);
            }
        }
    }
    uses
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("listing src") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The first segment of every `crate::` path in `code`.
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The names at the group's first level: `{a, b::c, d::{e}}`.
            let (mut depth, mut start) = (0, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        names.push(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

/// A path from `to` back to `from`, if `from` → `to` closes a cycle.
fn back_path(
    uses: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![to.to_owned()]];
    while let Some(path) = stack.pop() {
        let last = path.last().expect("a path is never empty");
        if last == from {
            return Some(path);
        }
        for next in uses.get(last).into_iter().flatten() {
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn the_modules_use_each_other_in_one_direction() {
    let uses = uses();
    assert!(
        uses.get("pass").is_some_and(|u| u.contains("chunk")),
        "the scan found no uses: {uses:?}"
    );
    for (module, named) in &uses {
        for other in named {
            if let Some(path) = back_path(&uses, module, other) {
                panic!("modules in a cycle: {module} -> {}", path.join(" -> "));
            }
        }
    }
}

#[test]
fn the_scan_reads_grouped_and_plain_paths() {
    let code = "use crate::{a, b::c, d::{e, f}};\nlet x = crate::g::h();";
    assert_eq!(crate_paths(code), ["a", "b", "d", "g"]);
}
