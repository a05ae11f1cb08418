//! Reading Rust source for the tests that check it (layering, writes that bypass the atomic writer).

/// Rust source with comments, string and char literals blanked (so paths in docs and messages do
/// not count), lifetimes kept as they are.
pub fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if (c == 'r' || (c == 'b' && next == Some('r')))
            && !prev_is_ident(&b, i)
            && raw_string_hashes(&b, i + if c == 'b' { 2 } else { 1 }).is_some()
        {
            let q = i + if c == 'b' { 2 } else { 1 };
            let hashes = raw_string_hashes(&b, q).unwrap();
            i = q + hashes + 1;
            let close: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            while i < b.len() && b[i..].iter().take(close.len()).ne(close.iter()) {
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime / label ('a).
            if next == Some('\\') {
                // Past the quote, the backslash and the escaped character, then to the closing quote.
                i += 3;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// The number of `#` of a raw string whose `#…"` starts at `at`, if one does.
fn raw_string_hashes(b: &[char], at: usize) -> Option<usize> {
    let n = b[at.min(b.len())..].iter().take_while(|&&c| c == '#').count();
    (b.get(at + n) == Some(&'"')).then_some(n)
}
