//! "Did you mean" hints for misspelt keys: the sibling key of the schema nearest in edit distance.

use super::schema::schema;

/// Edit distance, for "did you mean" hints on misspelt keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

pub(super) fn suggestion(prefix: &str, key: &str) -> String {
    let siblings = schema().iter().filter_map(|(path, _)| {
        let rest = if prefix.is_empty() {
            Some(path.as_str())
        } else {
            path.strip_prefix(prefix).and_then(|r| r.strip_prefix('.'))
        };
        rest.filter(|r| !r.contains('.'))
    });
    let upper = key.to_ascii_uppercase();
    let best = siblings.map(|s| (edit_distance(&upper, s), s)).min();
    match best {
        Some((d, s)) if d <= 3 && d < key.len() => {
            format!("; did you mean {}?", if prefix.is_empty() { s.to_owned() } else { format!("{prefix}.{s}") })
        }
        _ => String::new(),
    }
}
