//! The repository explains itself: no source, scenario, script or document in it points to
//! a design file kept outside it (ARCHITECTURE.md is the design document, and RFCs and
//! public documents are cited by their public names).

use std::path::{Path, PathBuf};

/// What a pointer outside the repository looks like: the team's design notes and their
/// reference folder (spelled in pieces so that this file does not match itself).
fn outside() -> Vec<String> {
    vec![
        ["design", ".md"].concat(),
        ["..", "/shared"].concat(),
        ["shared", "/reference"].concat(),
        ["reference/", "sbs-pop3"].concat(),
        ["reference/", "exchange-receive"].concat(),
        ["reference/", "protocol-edge"].concat(),
        ["reference/", "peers.md"].concat(),
    ]
}

/// Every text file of the workspace a reader follows: sources, manifests, scenario files,
/// scripts and documents (build output and version control left out).
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git") {
                files(&path, out);
            }
        } else if ["rs", "toml", "sh", "md", "py", "yml", "yaml", "conf"]
            .iter()
            .any(|ext| name.ends_with(&format!(".{ext}")))
            || name == "run"
            || name == "Dockerfile"
        {
            out.push(path);
        }
    }
}

/// Guards against: a comment or document telling the reader to look in a file that whoever
/// clones the repository does not have.
#[test]
fn no_file_points_to_design_notes_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut all = Vec::new();
    files(root, &mut all);
    assert!(all.len() > 100, "walked too few files: {}", all.len());
    let patterns = outside();
    let mut found = Vec::new();
    for path in &all {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            if patterns.iter().any(|p| line.contains(p.as_str())) {
                found.push(format!("{}:{}: {line}", path.display(), i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "points outside the repository:\n{}",
        found.join("\n")
    );
}
