//! Issue 11: who imports whom. ARCHITECTURE.md lists, between its `layering` markers, every
//! top-level module of `src/` with its layer and the modules it imports. This test reads the
//! imports out of the source (`use crate::...`, `crate::x::` paths, `super::` paths that reach
//! the crate root; comments, strings and `#[cfg(test)]` modules left out) and fails when:
//!
//! - a module imports one the table does not list for it (a new dependency is a decision: write
//!   it down, or take it out);
//! - the table lists an import nothing uses any more (the table says exactly what is);
//! - a module imports one of the same or a higher layer (so no cycle can form);
//! - the table and `src/lib.rs` disagree on which modules exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documented table: module -> (layer, imports).
fn documented() -> BTreeMap<String, (u32, BTreeSet<String>)> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let start = text
        .find("<!-- layering:begin -->")
        .expect("ARCHITECTURE.md has no <!-- layering:begin --> marker");
    let end = text
        .find("<!-- layering:end -->")
        .expect("ARCHITECTURE.md has no <!-- layering:end --> marker");
    let mut table = BTreeMap::new();
    for line in text[start..end].lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        let Some(name) = cells.first().and_then(|c| backticked(c).into_iter().next()) else {
            continue;
        };
        let layer = cells
            .get(1)
            .and_then(|c| c.trim().parse::<u32>().ok())
            .unwrap_or_else(|| panic!("ARCHITECTURE.md: no layer number for `{name}`: {line}"));
        let imports = cells.get(2).map(|c| backticked(c)).unwrap_or_default();
        let previous = table.insert(name.clone(), (layer, imports.into_iter().collect()));
        assert!(previous.is_none(), "ARCHITECTURE.md lists `{name}` twice");
    }
    table
}

/// The `names` written in backticks in a table cell.
fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The top-level modules `src/lib.rs` declares, and the items it re-exports by module.
fn declared() -> (BTreeSet<String>, BTreeMap<String, String>) {
    let lib = strip(&std::fs::read_to_string(root().join("src/lib.rs")).unwrap());
    let mut modules = BTreeSet::new();
    let mut reexports = BTreeMap::new();
    for statement in lib.split(';') {
        let words: Vec<&str> = statement.split_whitespace().collect();
        match words.as_slice() {
            ["pub", "mod", name] | ["mod", name] => {
                modules.insert((*name).to_owned());
            }
            ["pub", "use", rest @ ..] => {
                let rest = rest.concat();
                if let Some((module, items)) = rest.split_once("::") {
                    for item in items.trim_matches(['{', '}']).split(',') {
                        reexports.insert(item.trim().to_owned(), module.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    (modules, reexports)
}

/// The source with comments removed and string and character literals emptied.
fn strip(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let rest = &chars[i..];
        if rest.starts_with(&['/', '/']) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if rest.starts_with(&['/', '*']) {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i..].starts_with(&['/', '*']) {
                    depth += 1;
                    i += 2;
                } else if chars[i..].starts_with(&['*', '/']) {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if (rest[0] == 'r' || rest.starts_with(&['b', 'r']))
            && (i == 0 || !ident(chars[i - 1]))
            && {
                let after_r = if rest[0] == 'r' { 1 } else { 2 };
                let hashes = rest[after_r..].iter().take_while(|c| **c == '#').count();
                rest.get(after_r + hashes) == Some(&'"')
            }
        {
            let after_r = if rest[0] == 'r' { 1 } else { 2 };
            let hashes = rest[after_r..].iter().take_while(|c| **c == '#').count();
            i += after_r + hashes + 1;
            while i < chars.len() {
                if chars[i] == '"'
                    && chars[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|c| **c == '#')
                        .count()
                        == hashes
                {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if rest[0] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if rest[0] == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime ('a), which stays.
            let closing = if rest.get(1) == Some(&'\\') {
                rest.iter().skip(2).position(|c| *c == '\'').map(|p| p + 2)
            } else if rest.get(2) == Some(&'\'') {
                Some(2)
            } else {
                None
            };
            match closing {
                Some(end) => {
                    i += end + 1;
                    out.push_str("' '");
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    out
}

/// The text without its `#[cfg(test)] mod name { ... }` blocks: test code may reach anywhere.
fn without_test_modules(text: &str) -> String {
    let mut text = text.to_owned();
    while let Some(at) = text.find("#[cfg(test)]") {
        let after = &text[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let body = trimmed
            .strip_prefix("mod ")
            .and_then(|m| m.find(['{', ';']).map(|p| (m, p)));
        match body {
            Some((m, p)) if m.as_bytes()[p] == b'{' => {
                let open = at + "#[cfg(test)]".len() + (after.len() - trimmed.len()) + 4 + p;
                let mut depth = 0;
                let mut end = open;
                for (offset, c) in text[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + offset + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                text.replace_range(at..end, "");
            }
            // `#[cfg(test)] mod tests;` (its file is skipped) or a test-only item.
            _ => text.replace_range(at..at + "#[cfg(test)]".len(), ""),
        }
    }
    text
}

/// The identifier at the start of `text`.
fn leading_ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level names one file's code reaches: `crate::x`, `crate::{x, y}` and `super::`
/// chains that climb to the crate root from a file `depth` modules deep.
fn reached(text: &str, depth: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let boundary = |at: usize| {
        at == 0
            || !text[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
    };
    for (at, _) in text.match_indices("crate::") {
        if !boundary(at) {
            continue;
        }
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut level = 1;
            let close = group
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '{' => level += 1,
                        '}' => level -= 1,
                        _ => {}
                    }
                    level == 0
                })
                .map_or(group.len(), |(i, _)| i);
            let mut level = 0;
            let mut start = 0;
            let inner = &group[..close];
            for (i, c) in inner
                .char_indices()
                .chain(std::iter::once((inner.len(), ',')))
            {
                match c {
                    '{' => level += 1,
                    '}' => level -= 1,
                    ',' if level == 0 => {
                        let name = leading_ident(inner[start..i].trim_start());
                        if !name.is_empty() {
                            names.insert(name.to_owned());
                        }
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            names.insert(leading_ident(rest).to_owned());
        }
    }
    for (at, _) in text.match_indices("super::") {
        if !boundary(at) || text[..at].ends_with("super::") {
            continue;
        }
        let mut rest = &text[at..];
        let mut ups = 0;
        while let Some(next) = rest.strip_prefix("super::") {
            ups += 1;
            rest = next;
        }
        if ups == depth {
            names.insert(leading_ident(rest).to_owned());
        }
    }
    names
}

/// The imports between top-level modules, read from `src/`.
fn actual(modules: &BTreeSet<String>, reexports: &BTreeMap<String, String>) -> Graph {
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    let src = root().join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let mut path: Vec<String> = relative
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if path.last().is_some_and(|p| p == "mod") {
            path.pop();
        }
        // The crate root and the binary; test modules in files of their own.
        if path == ["lib"]
            || path == ["main"]
            || path.iter().any(|p| p == "tests" || p.starts_with("tests_"))
        {
            continue;
        }
        let top = path[0].clone();
        assert!(
            modules.contains(&top),
            "{} belongs to no module src/lib.rs declares",
            relative.display()
        );
        let text = without_test_modules(&strip(&std::fs::read_to_string(&file).unwrap()));
        for name in reached(&text, path.len()) {
            let module = if modules.contains(&name) {
                name
            } else if let Some(module) = reexports.get(&name) {
                module.clone()
            } else {
                panic!("{}: `crate::{name}` is no module", relative.display());
            };
            if module != top {
                graph.get_mut(&top).unwrap().insert(module);
            }
        }
    }
    graph
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn imports_follow_the_documented_layering() {
    let (modules, reexports) = declared();
    let table = documented();
    let listed: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        listed, modules,
        "ARCHITECTURE.md's layering table and src/lib.rs must name the same modules"
    );
    let graph = actual(&modules, &reexports);
    let mut problems = Vec::new();
    for (module, imports) in &graph {
        let (layer, allowed) = &table[module];
        for import in imports.difference(allowed) {
            problems.push(format!(
                "`{module}` imports `{import}`, which ARCHITECTURE.md does not list for it"
            ));
        }
        for unused in allowed.difference(imports) {
            problems.push(format!(
                "ARCHITECTURE.md lists `{unused}` for `{module}`, which no longer imports it"
            ));
        }
        for import in allowed {
            let Some((other, _)) = table.get(import) else {
                problems.push(format!(
                    "ARCHITECTURE.md: `{module}` lists `{import}`, no module"
                ));
                continue;
            };
            if other >= layer {
                problems.push(format!(
                    "`{module}` (layer {layer}) imports `{import}` (layer {other}): a module may \
                     import only lower layers"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_import_reader_sees_what_it_must_and_nothing_else() {
    let source = r#"
        use crate::config::Config;
        use crate::{clock, file::{self, PrivateFile}};
        // use crate::commented::Out;
        /* crate::blocked */
        let s = "crate::quoted";
        let c = '"'; let l: &'static str = "";
        fn f() { super::super::rooted::x(); super::sibling(); $crate::store::Db; }
        #[cfg(test)]
        mod tests { use crate::tested; }
    "#;
    let text = without_test_modules(&strip(source));
    let names: Vec<String> = reached(&text, 2).into_iter().collect();
    assert_eq!(names, ["clock", "config", "file", "rooted", "store"]);
}
