//! YAML text → a small tree with line numbers, parsed by serde-saphyr.
//!
//! The tree is walked by hand (not deserialized into typed structs) because yacs semantics —
//! merge over defaults, `literal_eval` on strings, errors naming the full key path — need the
//! raw values and where they were written.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::options::{DuplicateKeyPolicy, NonFiniteFloatPolicy};
use serde_saphyr::Spanned;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    /// `None`: an integer that does not fit an i64.
    Int(Option<i64>),
    Float(f64),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Scalar(Scalar),
    Seq(Vec<Spanned<Node>>),
    /// Keys with their line, in file order (a key written twice in one mapping is refused:
    /// PyYAML would silently keep the last value).
    Map(Vec<(MapKey, Spanned<Node>)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MapKey {
    pub text: String,
    pub line: u64,
}

/// A parsed YAML node with the 1-based line it starts on (0 when unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub node: Node,
    pub line: u64,
}

/// A YAML syntax problem: message and 1-based line/column (0 when unknown).
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub message: String,
    pub line: u64,
    pub column: u64,
    /// The document broke a size limit (an alias bomb) rather than the grammar.
    pub over_limit: bool,
    /// A key written twice in one mapping.
    pub duplicate: Option<DuplicateKey>,
}

/// A key written twice in one mapping: its text and the 1-based lines of both.
#[derive(Debug, Clone, PartialEq)]
pub struct DuplicateKey {
    pub key: String,
    pub first_line: u64,
    pub second_line: u64,
}

thread_local! {
    /// The duplicate a map visitor refused, for `parse` to report with both lines (serde's error
    /// type carries only text).
    static DUPLICATE: std::cell::RefCell<Option<DuplicateKey>> = const { std::cell::RefCell::new(None) };
}

/// Parses one YAML document; `Ok(None)` for an empty document (only comments or blanks).
pub fn parse(text: &str) -> Result<Option<Located>, SyntaxError> {
    let mut options = serde_saphyr::Options::default();
    // PyYAML (YAML 1.1) reads `010` as octal 8.
    options.legacy_octal_numbers = true;
    // PyYAML lets a repeated key overwrite the first; here repeated keys reach the visitor, which
    // refuses them with both lines.
    options.duplicate_keys = DuplicateKeyPolicy::LastWins;
    // `.inf` is a float to PyYAML; the range checks reject it later with a key name.
    options.non_finite_float_policy = NonFiniteFloatPolicy::PassThrough;
    // yaml.safe_load refuses application tags such as !!python/tuple.
    options.reject_unsupported_tags = true;
    // Keys are read as text; `~:` is then reported as an unknown key, not a parse failure.
    options.null_as_string = true;
    options.with_snippet = false;
    DUPLICATE.with(|d| d.borrow_mut().take());
    let parsed: Result<Option<Spanned<Node>>, serde_saphyr::Error> = serde_saphyr::from_str_with_options(text, options);
    match parsed {
        Ok(Some(spanned)) => Ok(Some(Located { line: spanned.referenced.line(), node: spanned.value })),
        Ok(None) => Ok(None),
        Err(err) => {
            let mut e = syntax_error(&err);
            if let Some(dup) = DUPLICATE.with(|d| d.borrow_mut().take()) {
                e.message = format!("key '{}' is written twice", dup.key);
                e.line = dup.second_line;
                e.duplicate = Some(dup);
            }
            Err(e)
        }
    }
}

fn syntax_error(err: &serde_saphyr::Error) -> SyntaxError {
    let (line, column) = err.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    // A breach inside an alias arrives wrapped with where the alias was defined and used.
    let mut inner = err;
    while let serde_saphyr::Error::AliasError { error, .. } | serde_saphyr::Error::WithSnippet { error, .. } = inner {
        inner = error;
    }
    if let serde_saphyr::Error::Budget { breach, .. } = inner {
        return SyntaxError { message: budget_sentence(breach), line, column, over_limit: true, duplicate: None };
    }
    let mut message = err.without_snippet().to_string();
    // The location is reported separately; keep the message to one line.
    if let Some(cut) = message.rfind(" at line ") {
        message.truncate(cut);
    }
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    SyntaxError { message, line, column, over_limit: false, duplicate: None }
}

/// serde-saphyr's budget refusal (`Nodes { nodes: 250001 }`, as Debug) as one sentence that
/// states the limit, so an alias bomb reads as a refusal and not as a cut-off parser message.
fn budget_sentence(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let limits = serde_saphyr::Budget::default();
    let (what, limit) = match breach {
        B::Nodes { .. } => ("nodes (mappings, sequences and scalars, aliases expanded)", limits.max_nodes),
        B::Events { .. } => ("parser events", limits.max_events),
        B::Aliases { .. } => ("aliases", limits.max_aliases),
        B::Anchors { .. } => ("anchors", limits.max_anchors),
        B::Depth { .. } => ("levels of nesting", limits.max_depth),
        B::Documents { .. } => ("documents", limits.max_documents),
        B::ScalarBytes { .. } => ("bytes of scalar text", limits.max_total_scalar_bytes),
        B::MergeKeys { .. } => ("merge keys (<<)", limits.max_merge_keys),
        other => {
            let name = format!("{other:?}");
            let name = name.split([' ', '{']).next().unwrap_or("size").to_owned();
            return format!("the document exceeds the YAML parser's {name} limit for a config file.");
        }
    };
    format!("the document has more than {limit} {what}, the limit for a config file.")
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Int(Some(v))))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Int(i64::try_from(v).ok())))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Int(i64::try_from(v).ok())))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Int(i64::try_from(v).ok())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Float(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Str(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Str(v)))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Str(String::from_utf8_lossy(v).into_owned())))
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Null))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(MapKey, Spanned<Node>)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<Spanned<KeyText>, Spanned<Node>>()? {
            let key = MapKey { text: key.value.0, line: key.referenced.line() };
            if let Some((first, _)) = entries.iter().find(|(k, _)| k.text == key.text) {
                let dup = DuplicateKey { key: key.text.clone(), first_line: first.line, second_line: key.line };
                let message = format!("key '{}' is written twice", dup.key);
                DUPLICATE.with(|d| *d.borrow_mut() = Some(dup));
                return Err(de::Error::custom(message));
            }
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// A mapping key as written (a plain `N:` stays "N", not the YAML 1.1 boolean false).
struct KeyText(String);

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = KeyText;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a config key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
        Ok(KeyText(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<KeyText, E> {
        Ok(KeyText(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
        Ok(KeyText(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
        Ok(KeyText(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
        Ok(KeyText(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
        Ok(KeyText(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
        Ok(KeyText("~".to_owned()))
    }
}

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<(String, u64, Node)> {
        match parse(text).unwrap().unwrap().node {
            Node::Map(entries) => entries.into_iter().map(|(k, v)| (k.text, k.line, v.value)).collect(),
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn keys_are_text_and_values_follow_yaml_1_1() {
        let got = entries("N: no\nY: on\n~: 1\nA: 010\nB: 'x'\n");
        let keys: Vec<&str> = got.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(keys, ["N", "Y", "~", "A", "B"]);
        assert_eq!(got[0].2, Node::Scalar(Scalar::Bool(false)));
        assert_eq!(got[1].2, Node::Scalar(Scalar::Bool(true)));
        assert_eq!((got[3].1, &got[3].2), (4, &Node::Scalar(Scalar::Int(Some(8)))));
        assert_eq!(entries("A: 010\n")[0].2, Node::Scalar(Scalar::Int(Some(8))));
        assert_eq!(got[4].2, Node::Scalar(Scalar::Str("x".into())));
    }

    /// A repeated key once silently took the last value (PyYAML's dict); it is refused with the
    /// lines of both, also inside nested mappings, while a merge key (`<<`) may still be overridden.
    #[test]
    fn a_key_written_twice_is_refused_with_both_lines() {
        let e = parse("A: 1\nB: 2\nA: 3\n").unwrap_err();
        let want = DuplicateKey { key: "A".into(), first_line: 1, second_line: 3 };
        assert_eq!((e.duplicate, e.line), (Some(want), 3));
        let e = parse("T:\n  X: 1\n  Y: 2\n  X: 1\n").unwrap_err();
        assert_eq!(e.duplicate.map(|d| (d.key, d.first_line, d.second_line)), Some(("X".into(), 2, 4)));
        let merged = entries("base: &b\n  X: 1\n  Y: 2\nT:\n  <<: *b\n  X: 5\n");
        let Node::Map(t) = &merged[1].2 else { panic!("T is not a map") };
        let t: Vec<(&str, &Node)> = t.iter().map(|(k, v)| (k.text.as_str(), &v.value)).collect();
        assert_eq!(t, [("X", &Node::Scalar(Scalar::Int(Some(5)))), ("Y", &Node::Scalar(Scalar::Int(Some(2))))]);
        assert!(parse("A: 1\nB: 2\n").is_ok());
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let err = parse("A: 1\nB: [1, 2\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
        assert!(!err.message.contains('\n'));
        assert!(parse("").unwrap().is_none());
    }
}
