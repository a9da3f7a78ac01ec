//! Field-by-field differences of two JSON values: what `apply` diffs and rollout history
//! summaries list, one `path: old → new` line per changed leaf.

use serde_json::Value;

/// Every leaf that differs between `a` and `b`, as `path: OLD → NEW` with paths such as
/// `spec.template.args[0]`, in key order; `show(path, value)` writes a value (`None`: absent).
pub(crate) fn changes(
    a: &Value,
    b: &Value,
    show: &dyn Fn(&str, Option<&Value>) -> String,
) -> Vec<String> {
    let mut out = Vec::new();
    walk("", Some(a), Some(b), show, &mut out);
    out
}

fn walk(
    path: &str,
    a: Option<&Value>,
    b: Option<&Value>,
    show: &dyn Fn(&str, Option<&Value>) -> String,
    out: &mut Vec<String>,
) {
    if a == b {
        return;
    }
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.to_string()
                } else {
                    format!("{path}.{k}")
                };
                walk(&p, x.get(k), y.get(k), show, out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                walk(&format!("{path}[{i}]"), x.get(i), y.get(i), show, out);
            }
        }
        _ => out.push(format!("{path}: {} → {}", show(path, a), show(path, b))),
    }
}
