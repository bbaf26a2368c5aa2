//! The docs stay true to the parser: every YAML block in README.md and
//! docs/*.md, and the example configs, use only keys fusebox knows (an
//! unknown key is exactly what `fusebox check` refuses), and the README
//! shows every subcommand `fusebox --help` lists.

use std::path::Path;

use fusebox::config::model::RawConfig;

/// The ```yaml blocks of a Markdown file, with their first line number.
fn yaml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```yaml") => current = Some((n + 2, String::new())),
            (Some(_), l) if l.starts_with("```") => out.extend(current.take()),
            (Some((_, block)), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

#[test]
fn every_yaml_block_of_the_docs_uses_known_keys() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, block) in yaml_blocks(&text) {
            let parsed: Result<RawConfig, _> = serde_yaml::from_str(&block);
            assert!(parsed.is_ok(), "{}:{line}: {}\n{block}", file.display(), parsed.unwrap_err());
            checked += 1;
        }
    }
    assert!(checked >= 2, "found the README's and the reference's YAML");
}

#[test]
fn example_configs_use_known_keys() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(root.join("config")).expect("config/") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed: Result<RawConfig, _> = serde_yaml::from_str(&text);
            assert!(parsed.is_ok(), "{}: {}", path.display(), parsed.unwrap_err());
        }
    }
}

#[test]
fn the_readme_documents_every_subcommand() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fusebox")).arg("--help").output().expect("fusebox --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 9, "read the commands of --help: {commands:?}\n{help}");
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md");
    let missing: Vec<&&str> = commands.iter().filter(|c| !readme.contains(&format!("fusebox {c}"))).collect();
    assert!(missing.is_empty(), "README.md never shows `fusebox <command>` for {missing:?}");
}
