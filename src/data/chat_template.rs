//! Chat templates rendered the way transformers renders them (`apply_chat_template`): Jinja with
//! trim_blocks and lstrip_blocks, loop controls, `raise_exception`, Python string/dict methods
//! (minijinja-contrib's pycompat) and a `tojson` that formats like Python's `json.dumps`.
//!
//! One deliberate difference: `strftime_now` is not defined, so templates that print today's date
//! (Llama 3.x) fall back to their fixed default or to a `date_string` the caller passes. A prompt
//! that changes with the calendar would make training runs irreproducible.

use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value as Json;

pub struct ChatTemplate {
    env: Environment<'static>,
}

/// Python's `json.dumps(x, ensure_ascii=False)`: `", "` and `": "` separators, insertion order.
fn python_json(value: &Json, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(v, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        // Python writes 1.0 where serde writes 1.0 too; integers and strings agree.
        other => out.push_str(&other.to_string()),
    }
}

fn tojson(value: Value, kwargs: minijinja::value::Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json: Json =
        serde_json::to_value(&value).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())?;
        Ok(Self { env })
    }

    /// Renders `messages` ([{role, content}, ...]) with the given extra variables (special tokens,
    /// `add_generation_prompt`, `enable_thinking`, `date_string`, ...).
    pub fn render(&self, messages: &Json, variables: &serde_json::Map<String, Json>) -> Result<String, Error> {
        let mut context = variables.clone();
        context.insert("messages".into(), messages.clone());
        self.env.get_template("chat")?.render(Value::from_serialize(&context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tojson_formats_like_python_json_dumps() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}").unwrap();
        let vars = json!({"x": {"name": "f", "args": [1, "é"], "empty": {}}}).as_object().unwrap().clone();
        let out = t.render(&json!([]), &vars).unwrap();
        assert_eq!(
            out,
            "{\"name\": \"f\", \"args\": [1, \"é\"], \"empty\": {}}|{\n  \"name\": \"f\",\n  \"args\": [\n    1,\n    \"é\"\n  ],\n  \"empty\": {}\n}"
        );
    }

    #[test]
    fn block_whitespace_follows_transformers_jinja_settings() {
        // Expected text from Python: jinja2.Environment(trim_blocks=True, lstrip_blocks=True).
        let t = ChatTemplate::new("A\n  {% if true %}\n  x\n  {% endif %}\nB\n").unwrap();
        assert_eq!(t.render(&json!([]), &serde_json::Map::new()).unwrap(), "A\n  x\nB");
    }

    #[test]
    fn raise_exception_and_python_methods_work() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.role not in ['user'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}{{ m.content.strip().upper() }}{% endfor %}",
        )
        .unwrap();
        let vars = serde_json::Map::new();
        assert_eq!(t.render(&json!([{"role": "user", "content": "  hi "}]), &vars).unwrap(), "HI");
        let err = t.render(&json!([{"role": "tool", "content": ""}]), &vars).unwrap_err();
        assert!(err.to_string().contains("bad role tool"), "{err}");
    }
}
