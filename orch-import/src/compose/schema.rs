//! Unknown keys, found with the compose-spec JSON schema (compose-spec/compose-spec,
//! `schema/compose-spec.json`, Apache-2.0, embedded as it is): wherever the schema closes a
//! mapping (`additionalProperties: false`), a key that is neither one of its `properties`
//! nor matches one of its `patternProperties` (`^x-` extensions among them) is an error. Types
//! are left to the conversion, which names what it expected.

use std::sync::OnceLock;

use serde_json::Value;

use super::fields::{join, Ctx};

const SCHEMA: &str = include_str!("compose-spec.json");

fn schema() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(|| serde_json::from_str(SCHEMA).unwrap_or(Value::Null))
}

/// Reports every key of `doc` the schema does not know.
pub(crate) fn check_keys(ctx: &mut Ctx, doc: &Value) {
    let root = schema();
    walk(ctx, root, root, doc, "", 0);
}

fn resolve<'a>(root: &'a Value, mut s: &'a Value) -> &'a Value {
    for _ in 0..16 {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.strip_prefix("#/definitions/").unwrap_or(r);
                match root.get("definitions").and_then(|d| d.get(name)) {
                    Some(next) => s = next,
                    None => return &Value::Null,
                }
            }
            None => return s,
        }
    }
    s
}

/// Whether schema `s` admits `v`'s JSON type (a schema without `type` admits any).
fn admits(root: &Value, s: &Value, v: &Value) -> bool {
    let s = resolve(root, s);
    let want = |t: &str| match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    };
    match s.get("type") {
        Some(Value::String(t)) => want(t),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).any(want),
        _ => match s.get("oneOf").or_else(|| s.get("anyOf")) {
            Some(Value::Array(bs)) => bs.iter().any(|b| admits(root, b, v)),
            _ => true,
        },
    }
}

/// The handful of key patterns the schema uses.
fn pattern_matches(pattern: &str, key: &str) -> bool {
    match pattern {
        "^x-" => key.starts_with("x-"),
        "^.+$" => !key.is_empty(),
        "^[a-zA-Z0-9._-]+$" => {
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        }
        // A pattern this checker does not know admits the key.
        _ => true,
    }
}

fn walk(ctx: &mut Ctx, root: &Value, s: &Value, v: &Value, path: &str, depth: usize) {
    if depth > 32 {
        return;
    }
    let s = resolve(root, s);
    if let Some(Value::Array(branches)) = s.get("oneOf").or_else(|| s.get("anyOf")) {
        if let Some(b) = branches.iter().find(|b| admits(root, b, v)) {
            walk(ctx, root, b, v, path, depth + 1);
        }
        return;
    }
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            let patterns = s.get("patternProperties").and_then(Value::as_object);
            let additional = s.get("additionalProperties");
            for (k, child) in m {
                let p = join(path, k);
                if let Some(cs) = props.and_then(|ps| ps.get(k)) {
                    walk(ctx, root, cs, child, &p, depth + 1);
                } else if let Some((_, cs)) = patterns
                    .into_iter()
                    .flatten()
                    .find(|(pat, _)| pattern_matches(pat, k))
                {
                    walk(ctx, root, cs, child, &p, depth + 1);
                } else if additional == Some(&Value::Bool(false)) {
                    let allowed: Vec<&str> = props
                        .map(|ps| ps.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    let what = if allowed.is_empty() {
                        "a name of letters, digits, '.', '_' or '-'".to_string()
                    } else if allowed.len() > 16 {
                        "a key of the Compose specification (see its reference)".to_string()
                    } else {
                        format!("one of {}", allowed.join(", "))
                    };
                    ctx.error(
                        &p,
                        "",
                        format!("unknown key {k:?}: not in the Compose specification (extension keys start with x-); expected {what}"),
                    );
                } else if let Some(a @ Value::Object(_)) = additional {
                    walk(ctx, root, a, child, &p, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    walk(ctx, root, item, x, &format!("{path}[{i}]"), depth + 1);
                }
            }
        }
        _ => {}
    }
}

/// The keys the schema allows at the top level and in a service (for the mapping table's
/// tests).
#[cfg(test)]
pub(crate) fn service_keys() -> Vec<String> {
    let root = schema();
    let svc = resolve(root, &root["definitions"]["service"]);
    svc["properties"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let v: Value = serde_saphyr::from_str(yaml).unwrap();
        let mut ctx = Ctx::new("f");
        check_keys(&mut ctx, &v);
        ctx.errors
            .iter()
            .map(|e| e.field.as_ref().unwrap().path.clone())
            .collect()
    }

    #[test]
    fn unknown_keys_are_found_at_every_level() {
        assert!(schema().is_object());
        assert_eq!(
            errors("services:\n  web:\n    image: x\n    x-mine: 1\n    ports: [{target: 80, bogus: 1}]\n    deploy: {resources: {limits: {cpu: 1}}}\nx-top: {a: 1}\nnetwork: {}\n"),
            [
                "network",
                "services.web.deploy.resources.limits.cpu",
                "services.web.ports[0].bogus",
            ]
        );
        assert!(errors("services:\n  web:\n    image: x\n    ports: ['80:80', 81]\n    depends_on: [db]\n  db: {image: y, depends_on: {web: {condition: service_started}}}\n").is_empty());
        assert!(service_keys().contains(&"healthcheck".to_string()));
    }
}
