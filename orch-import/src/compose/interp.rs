//! Variable interpolation (`$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}`, `$$`) and `.env` files, as
//! docker compose does them. The variables come from the project's `.env` file only: a library
//! does not read the process environment.

use std::collections::BTreeMap;

use serde_json::Value;

use super::fields::Ctx;

/// The variables of a dotenv text (`KEY=VALUE` lines, `#` comments, `export KEY=VALUE`, single
/// quotes literal, double quotes with `\n` `\t` `\"` `\\` escapes, unquoted values trimmed and
/// cut at ` #`). Lines without `=` are returned in the second list (their 1-based numbers).
pub(crate) fn parse_dotenv(text: &str) -> (Vec<(String, String)>, Vec<usize>) {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut bad = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, raw)) = line.split_once('=') else {
            bad.push(n + 1);
            continue;
        };
        let key = key.trim().to_string();
        let raw = raw.trim_start();
        let value = if let Some(rest) = raw.strip_prefix('\'') {
            match rest.find('\'') {
                Some(end) => rest[..end].to_string(),
                None => rest.to_string(),
            }
        } else if let Some(rest) = raw.strip_prefix('"') {
            // A double-quoted value may span lines.
            let mut buf = rest.to_string();
            while !closed(&buf) {
                match lines.next() {
                    Some((_, l)) => {
                        buf.push('\n');
                        buf.push_str(l);
                    }
                    None => break,
                }
            }
            unescape(&buf)
        } else {
            let cut = raw.find(" #").map_or(raw, |i| &raw[..i]);
            cut.trim().to_string()
        };
        out.push((key, value));
    }
    (out, bad)
}

/// Whether a double-quoted text (after the opening quote) has its closing quote.
fn closed(s: &str) -> bool {
    let mut esc = false;
    for c in s.chars() {
        match c {
            '\\' if !esc => esc = true,
            '"' if !esc => return true,
            _ => esc = false,
        }
    }
    false
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            },
            o => out.push(o),
        }
    }
    out
}

/// Interpolates every string of `v` (not mapping keys), in place. `path` names `v`.
pub(crate) fn interpolate_value(
    ctx: &mut Ctx,
    vars: &BTreeMap<String, String>,
    path: &str,
    v: &mut Value,
) {
    match v {
        Value::String(s) if s.contains('$') => {
            if let Some(out) = interpolate(ctx, vars, path, s) {
                *s = out;
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter_mut().enumerate() {
                interpolate_value(ctx, vars, &format!("{path}[{i}]"), x);
            }
        }
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                interpolate_value(ctx, vars, &super::fields::join(path, k), x);
            }
        }
        _ => {}
    }
}

/// `s` with its variables substituted (unset ones → a warning and an empty string, as docker
/// compose does); `None` after an error (a bad `${`, or a `:?`/`?` variable unset).
pub(crate) fn interpolate(
    ctx: &mut Ctx,
    vars: &BTreeMap<String, String>,
    path: &str,
    s: &str,
) -> Option<String> {
    let mut out = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                // Find the matching brace (defaults may nest `${...}`).
                let mut depth = 0;
                let mut end = None;
                for (j, ch) in chars.iter().enumerate().skip(i + 1) {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let Some(end) = end else {
                    ctx.error(
                        path,
                        s,
                        "invalid interpolation: `${` without its closing `}` (write $$ for a literal $)",
                    );
                    return None;
                };
                let inner: String = chars[i + 2..end].iter().collect();
                out.push_str(&braced(ctx, vars, path, s, &inner)?);
                i = end + 1;
            }
            Some(ch) if ch.is_ascii_alphabetic() || *ch == '_' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                out.push_str(&lookup(ctx, vars, path, &name));
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Some(out)
}

fn lookup(ctx: &mut Ctx, vars: &BTreeMap<String, String>, path: &str, name: &str) -> String {
    match vars.get(name) {
        Some(v) => v.clone(),
        None => {
            ctx.warn(
                path,
                format!("variable {name} is not set (orch reads variables from the project's .env file only): an empty string is used"),
            );
            String::new()
        }
    }
}

fn braced(
    ctx: &mut Ctx,
    vars: &BTreeMap<String, String>,
    path: &str,
    whole: &str,
    inner: &str,
) -> Option<String> {
    let name_len = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(name_len);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        ctx.error(
            path,
            whole,
            format!("invalid interpolation ${{{inner}}}: a variable name is letters, digits and _, not starting with a digit"),
        );
        return None;
    }
    let value = vars.get(name);
    let set = value.is_some();
    let nonempty = value.is_some_and(|v| !v.is_empty());
    let ops = [":-", ":?", ":+", "-", "?", "+"];
    let Some(op) = ops.iter().find(|op| rest.starts_with(**op)) else {
        if !rest.is_empty() {
            ctx.error(
                path,
                whole,
                format!("invalid interpolation ${{{inner}}}: after the name comes }}, :-, -, :?, ?, :+ or +"),
            );
            return None;
        }
        return Some(lookup(ctx, vars, path, name));
    };
    let word = &rest[op.len()..];
    // The colon forms treat an empty variable as unset.
    let present = if op.starts_with(':') { nonempty } else { set };
    match op.trim_start_matches(':') {
        "-" if !present => interpolate(ctx, vars, path, word),
        "?" if !present => {
            let msg = interpolate(ctx, vars, path, word)?;
            ctx.error(
                path,
                whole,
                format!("required variable {name} is not set (in the project's .env file): {msg}"),
            );
            None
        }
        "+" if present => interpolate(ctx, vars, path, word),
        "+" => Some(String::new()),
        _ => Some(value.cloned().unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> (Option<String>, usize, usize) {
        let vars: BTreeMap<String, String> = [("A", "1"), ("E", ""), ("B_2", "two")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut ctx = Ctx::new("f");
        let out = interpolate(&mut ctx, &vars, "p", s);
        (out, ctx.warnings.len(), ctx.errors.len())
    }

    #[test]
    fn substitutes_as_compose_does() {
        for (input, want, warnings) in [
            ("plain", "plain", 0),
            ("$A-$B_2", "1-two", 0),
            ("${A}x", "1x", 0),
            ("$$A $$", "$A $", 0),
            ("${X:-d}", "d", 0),
            ("${E:-d}", "d", 0),
            ("${E-d}", "", 0),
            ("${X-d}", "d", 0),
            ("${A:+alt}", "alt", 0),
            ("${E:+alt}", "", 0),
            ("${E+alt}", "alt", 0),
            ("${X:-${A}}", "1", 0),
            ("$X.", ".", 1),
            ("${X}", "", 1),
            ("$ 5$", "$ 5$", 0),
        ] {
            let (out, w, e) = run(input);
            assert_eq!(out.as_deref(), Some(want), "{input}");
            assert_eq!((w, e), (warnings, 0), "{input}");
        }
        for bad in ["${A", "${1}", "${A!}", "${X:?no}", "${X?no}"] {
            let (out, _, e) = run(bad);
            assert_eq!((out, e), (None, 1), "{bad}");
        }
    }

    #[test]
    fn dotenv_files() {
        let (vars, bad) = parse_dotenv(
            "# c\nA=1\nexport B = two # note\nC='x # y'\nD=\"a\\nb\"\nE=\"multi\nline\"\nnoequals\n",
        );
        let want = [
            ("A", "1"),
            ("B", "two"),
            ("C", "x # y"),
            ("D", "a\nb"),
            ("E", "multi\nline"),
        ];
        let got: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
        assert_eq!(bad, [8]);
    }
}
