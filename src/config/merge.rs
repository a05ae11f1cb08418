//! yacs' `merge_from_file`: the YAML tree is walked key by key over the defaults; each value is
//! decoded as PyYAML + yacs would (`literal_eval` on top-level strings), its type checked against
//! the default's, and stored. Errors name the file, the line and the full key path.

use super::keys::{Entry, Slot, Typed};
use super::origin::{KeyOrigins, Place};
use super::py_literal::{literal_eval, PyVal};
use super::schema::slot_of;
use super::suggest::suggestion;
use super::yaml_tree::{self, Node, Scalar};
use super::Config;
use anyhow::{anyhow, bail, Result};
use serde_saphyr::Spanned;
use std::collections::HashMap;

/// YAML text over the reference defaults, with where each key was written; not yet validated.
pub(super) fn merge_yaml(text: &str, source_name: &str) -> Result<Config> {
    let place = Place { source: source_name };
    let mut cfg = Config::default();
    let mut lines = HashMap::new();
    let root = match yaml_tree::parse(text) {
        Ok(root) => root,
        Err(e) => {
            if let Some(d) = &e.duplicate {
                bail!(
                    "{source_name}:{}: YAML refused: key '{}' is written twice, at {source_name}:{} and {source_name}:{} (PyYAML would silently keep the second value; remove one)",
                    d.second_line,
                    d.key,
                    d.first_line,
                    d.second_line
                );
            }
            let at = if e.line > 0 { format!("{source_name}:{}:{}", e.line, e.column) } else { source_name.to_owned() };
            if e.over_limit {
                bail!("{at}: YAML refused: {}", e.message);
            }
            bail!("{at}: YAML syntax error: {}", e.message);
        }
    };
    match root {
        None => {}
        Some(yaml_tree::Located { node: Node::Map(entries), .. }) => {
            merge_map(&mut cfg, "", &entries, &place, &mut lines)?
        }
        Some(other) => bail!(
            "{}: the top level must be a mapping of config keys, found {}",
            place.at(other.line),
            yaml_type_name(&other.node)
        ),
    }
    cfg.origin = KeyOrigins { source: source_name.to_owned(), lines };
    Ok(cfg)
}

fn short_repr(value: &PyVal) -> String {
    let text = match value {
        PyVal::None => "None".to_owned(),
        PyVal::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
        PyVal::Int(Some(v)) => v.to_string(),
        PyVal::Int(None) => "<int beyond 64 bits>".to_owned(),
        PyVal::Float(v) => format!("{v:?}"),
        PyVal::Str(s) => format!("'{s}'"),
        PyVal::List(items) => format!("[{}]", items.iter().map(short_repr).collect::<Vec<_>>().join(", ")),
        PyVal::Tuple(items) => format!("({})", items.iter().map(short_repr).collect::<Vec<_>>().join(", ")),
        PyVal::Other(name) => format!("<{name}>"),
    };
    let text = text.replace(['\n', '\r'], " ");
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

/// YAML node → Python value the way PyYAML + yacs produce it (literal_eval on top-level strings).
fn decode_top(node: &Node) -> PyVal {
    match node {
        Node::Scalar(Scalar::Str(s)) => literal_eval(s).unwrap_or_else(|| PyVal::Str(s.clone())),
        other => decode_inner(other),
    }
}

/// Elements inside a YAML list are not literal_eval'ed by yacs.
fn decode_inner(node: &Node) -> PyVal {
    match node {
        Node::Scalar(Scalar::Null) => PyVal::None,
        Node::Scalar(Scalar::Bool(b)) => PyVal::Bool(*b),
        Node::Scalar(Scalar::Int(v)) => PyVal::Int(*v),
        Node::Scalar(Scalar::Float(v)) => PyVal::Float(*v),
        Node::Scalar(Scalar::Str(s)) => PyVal::Str(s.clone()),
        Node::Seq(items) => PyVal::List(items.iter().map(|item| decode_inner(&item.value)).collect()),
        Node::Map(_) => PyVal::Other("dict"),
    }
}

fn yaml_type_name(node: &Node) -> &'static str {
    match node {
        Node::Scalar(Scalar::Null) => "null",
        Node::Scalar(Scalar::Bool(_)) => "bool",
        Node::Scalar(Scalar::Int(_)) => "int",
        Node::Scalar(Scalar::Float(_)) => "float",
        Node::Scalar(Scalar::Str(_)) => "str",
        Node::Seq(_) => "list",
        Node::Map(_) => "mapping",
    }
}

fn type_check(path: &str, slot: Slot, node: &Node, line: u64, place: &Place) -> Result<Typed> {
    let at = place.at(line);
    if let Node::Map(_) = node {
        bail!("{at}: config key {path}: expected {}, found a mapping", slot.describe());
    }
    let value = decode_top(node);
    if value == PyVal::None {
        bail!("{at}: config key {path}: expected {}, found null (hrk needs a value here)", slot.describe());
    }
    let mismatch = |value: &PyVal| {
        let hint = if slot == Slot::Float && matches!(value, PyVal::Int(_)) {
            "; yacs does not turn an int into a float: write it with a decimal point"
        } else {
            ""
        };
        anyhow!(
            "{at}: config key {path}: type mismatch: expected {}, found {} ({}){hint}",
            slot.describe(),
            value.type_name(),
            short_repr(value)
        )
    };
    let int_value = |value: &PyVal, what: &str| -> Result<i64> {
        match value {
            PyVal::Int(Some(v)) => Ok(*v),
            PyVal::Int(None) => bail!("{at}: config key {path}{what}: integer out of range"),
            other => bail!(
                "{at}: config key {path}{what}: expected int, found {} ({})",
                other.type_name(),
                short_repr(other)
            ),
        }
    };
    match slot {
        Slot::Section => bail!("{at}: config key {path}: a section cannot take a value"),
        Slot::Str => match value {
            PyVal::Str(s) => Ok(Typed::Str(s)),
            other => Err(mismatch(&other)),
        },
        Slot::Int => match value {
            PyVal::Int(_) => Ok(Typed::Int(int_value(&value, "")?)),
            other => Err(mismatch(&other)),
        },
        Slot::Float => match value {
            PyVal::Float(v) => Ok(Typed::Float(v)),
            other => Err(mismatch(&other)),
        },
        Slot::Bool => match value {
            PyVal::Bool(b) => Ok(Typed::Bool(b)),
            other => Err(mismatch(&other)),
        },
        Slot::IntList | Slot::IntTuple | Slot::StrList => {
            // yacs casts list <-> tuple; it does not look inside, hrk does.
            let items = match value {
                PyVal::List(items) | PyVal::Tuple(items) => items,
                other => return Err(mismatch(&other)),
            };
            if slot == Slot::StrList {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        PyVal::Str(s) => out.push(s.clone()),
                        other => bail!(
                            "{at}: config key {path}[{i}]: expected str, found {} ({})",
                            other.type_name(),
                            short_repr(other)
                        ),
                    }
                }
                return Ok(Typed::Strs(out));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(int_value(item, &format!("[{i}]"))?);
            }
            Ok(Typed::Ints(out))
        }
    }
}

/// yacs `_merge_a_into_b` for one mapping: `prefix` is the dotted path of the mapping.
fn merge_map(
    cfg: &mut Config, prefix: &str, entries: &[(yaml_tree::MapKey, Spanned<Node>)], place: &Place,
    lines: &mut HashMap<String, u64>,
) -> Result<()> {
    for (key, value) in entries {
        let path = if prefix.is_empty() { key.text.clone() } else { format!("{prefix}.{}", key.text) };
        let Some(slot) = slot_of(&path) else {
            bail!(
                "{}: unknown config key {} (not in the reference defaults{})",
                place.at(key.line),
                path.replace(['\n', '\r'], " "),
                suggestion(prefix, &key.text)
            );
        };
        let line = if value.referenced.line() > 0 { value.referenced.line() } else { key.line };
        lines.insert(path.clone(), line);
        if slot == Slot::Section {
            match &value.value {
                Node::Map(inner) => merge_map(cfg, &path, inner, place, lines)?,
                other => bail!(
                    "{}: config key {path}: expected a mapping of keys, found {}",
                    place.at(line),
                    yaml_type_name(other)
                ),
            }
            continue;
        }
        let typed = type_check(&path, slot, &value.value, line, place)?;
        cfg.assign(&path, &path, typed, &place.at(line))?;
    }
    Ok(())
}
