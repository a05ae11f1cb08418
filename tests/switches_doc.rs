//! README's switch table is exactly `hrk::switches::ALL`, and every `HRK_*` name README mentions is declared.

use hrk::switches::{ALL, BUILD_AND_TEST};

/// The table README must hold, generated from the registry.
fn expected_table() -> String {
    let mut t = String::from("| variable | values | default | what it does |\n|---|---|---|---|\n");
    for s in ALL {
        t += &format!("| `{}` | {} | {} | {} |\n", s.name, s.values, s.default, s.doc);
    }
    t
}

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn readme_switch_table_is_generated_from_the_registry() {
    let want = expected_table();
    assert!(readme().contains(&want), "README.md lacks the switch table; paste this under \"## Switches\":\n\n{want}");
}

#[test]
fn readme_names_only_declared_switches() {
    let text = readme();
    let mut unknown = Vec::new();
    for (i, _) in text.match_indices("HRK_") {
        let name: String =
            text[i..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
        let known = ALL.iter().any(|s| s.name == name) || BUILD_AND_TEST.contains(&name.as_str());
        if !known && !unknown.contains(&name) {
            unknown.push(name);
        }
    }
    assert!(unknown.is_empty(), "README.md mentions undeclared switches {unknown:?} (declare them in src/switches.rs)");
}
