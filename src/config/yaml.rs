//! YAML read strictly into a JSON tree: a key given twice in one mapping is an error (YAML parsers
//! commonly keep the last, silently dropping a whole block), and `.nan` / `.inf` are named as
//! values that are not finite numbers (JSON has no such numbers; they would read as null).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value as Json};

/// A YAML node as read, before conversion to JSON.
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(String, Node)> = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let key = match key {
                Node::Str(s) => s,
                Node::Int(i) => i.to_string(),
                Node::UInt(u) => u.to_string(),
                Node::Bool(b) => b.to_string(),
                Node::Float(f) => f.to_string(),
                Node::Null => "null".into(),
                Node::Seq(_) | Node::Map(_) => return Err(de::Error::custom("a mapping key must be a plain value")),
            };
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("the key `{key}` appears twice in one mapping")));
            }
            entries.push((key, map.next_value::<Node>()?));
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn to_json(node: Node, path: &str) -> Result<Json, String> {
    Ok(match node {
        Node::Null => Json::Null,
        Node::Bool(b) => Json::Bool(b),
        Node::Int(i) => Json::from(i),
        Node::UInt(u) => Json::from(u),
        Node::Float(f) => match Number::from_f64(f) {
            Some(n) => Json::Number(n),
            None => return Err(format!("`{path}`: {f} is not a finite number")),
        },
        Node::Str(s) => Json::String(s),
        Node::Seq(items) => Json::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, n)| to_json(n, &join(path, &i.to_string())))
                .collect::<Result<_, _>>()?,
        ),
        Node::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let value = to_json(v, &join(path, &k))?;
                map.insert(k, value);
            }
            Json::Object(map)
        }
    })
}

/// `text` as a JSON tree; errors are the parser's (with line and column) or name the key path.
pub fn parse(text: &str) -> Result<Json, String> {
    let node: Node = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    to_json(node, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_non_finite_numbers_are_named() {
        let e = parse("meta:\n  inner_lr: 1\n  outer_lr: 2\n  inner_lr: 3\n").unwrap_err();
        // The parser places the error at the mapping that holds the key twice.
        assert!(e.contains("`inner_lr` appears twice") && e.contains("line 2"), "{e}");
        let e = parse("meta: {}\noptim: {}\nmeta: {}\n").unwrap_err();
        assert!(e.contains("`meta` appears twice"), "{e}");
        assert_eq!(parse("meta:\n  inner_lr: .nan\n").unwrap_err(), "`meta.inner_lr`: NaN is not a finite number");
        assert_eq!(parse("a: [1, -.inf]\n").unwrap_err(), "`a.1`: -inf is not a finite number");
        let tree = parse("a: {b: [1, 2.5, x, null, true]}\n").unwrap();
        assert_eq!(tree, serde_json::json!({"a": {"b": [1, 2.5, "x", null, true]}}));
    }
}
