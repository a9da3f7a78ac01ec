//! Kubernetes' `$(VAR)` expansion of a workload's env values, command and args.
//!
//! The rules are Kubernetes' (`third_party/forked/golang/expansion`): `$(NAME)` becomes the
//! variable's value; a name that is not defined is left as written; `$$` is a literal `$`
//! (so `$$(NAME)` gives `$(NAME)`); any other `$`, and an unterminated `$(`, stay as they
//! are. Expansion is not recursive: a value that itself contains `$(...)` is used as is.
//!
//! An env value sees the variables orch sets (`PORT`, `ORCH_PORT_<NAME>`, `ORCH_*`) and the
//! template's env entries before it; command and args see them all. Values from a secret or
//! config (`valueFrom`) are not expanded, as in Kubernetes, but can be referred to.

use crate::model::object::EnvVar;

/// Expands the `$(NAME)` references in `input`, looking each name up with `lookup`.
pub fn expand<'v>(input: &str, lookup: impl Fn(&str) -> Option<&'v str>) -> String {
    if !input.contains('$') {
        return input.to_string();
    }
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    // Bytes before `checkpoint` are in `out`; `$`, `(` and `)` are ASCII, so every index
    // where a slice starts or ends below is a character boundary.
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            match bytes[cursor + 1] {
                b'$' => {
                    out.push('$');
                    cursor += 2;
                }
                b'(' => match input[cursor + 2..].find(')') {
                    Some(len) => {
                        let name = &input[cursor + 2..cursor + 2 + len];
                        match lookup(name) {
                            Some(v) => out.push_str(v),
                            None => out.push_str(&input[cursor..cursor + 3 + len]),
                        }
                        cursor += 3 + len;
                    }
                    None => {
                        out.push_str("$(");
                        cursor += 2;
                    }
                },
                _ => {
                    out.push('$');
                    cursor += 1;
                }
            }
            checkpoint = cursor;
        } else {
            cursor += 1;
        }
    }
    out.push_str(&input[checkpoint..]);
    out
}

/// The value of `name` in `env`: its last definition, as a process sees it.
fn last<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A template's env as `(name, value)` pairs with each value expanded: it may refer to the
/// variables in `provided` (what orch sets before the template's env) and to the entries
/// before it. Values taken from a secret or config (`valueFrom`) are not expanded.
pub fn expand_env(provided: &[(String, String)], env: &[EnvVar]) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = provided.to_vec();
    for e in env {
        let value = if e.value_from.is_some() {
            e.value.clone()
        } else {
            expand(&e.value, |n| last(&seen, n))
        };
        seen.push((e.name.clone(), value));
    }
    seen.split_off(provided.len())
}

/// `items` (a command or args) with their references expanded from `env` (the workload's
/// variables, later entries winning).
pub fn expand_args(items: &[String], env: &[(String, String)]) -> Vec<String> {
    items.iter().map(|a| expand(a, |n| last(env, n))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(input: &str, want: &str) {
        let vars: &[(&str, &str)] = &[
            ("VAR_A", "A"),
            ("VAR_B", "B"),
            ("VAR_C", "$(VAR_A)"),
            ("VAR_EMPTY", ""),
            ("PORT", "8080"),
            ("é", "accent"),
        ];
        let got = expand(input, |n| {
            vars.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
        });
        assert_eq!(got, want, "expanding {input:?}");
    }

    /// Kubernetes' own table (expansion_test.go), plus a few edges.
    #[test]
    fn expands_as_kubernetes_does() {
        for (input, want) in [
            ("$(VAR_A)", "A"),
            ("___$(VAR_B)___", "___B___"),
            ("$(VAR_C)", "$(VAR_A)"),
            ("$(VAR_A)-1", "A-1"),
            ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_$(VAR_A)"),
            ("f000-$$VAR_A", "f000-$VAR_A"),
            ("foo\\$(VAR_C)bar", "foo\\$(VAR_A)bar"),
            ("foo\\\\$(VAR_C)bar", "foo\\\\$(VAR_A)bar"),
            ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
            ("$$(VAR_DNE)", "$(VAR_DNE)"),
            ("$(VAR_DNE)", "$(VAR_DNE)"),
            ("$(VAR_EMPTY)", ""),
            ("$(VAR_A", "$(VAR_A"),
            ("$(VAR_A)$(VAR_B)", "AB"),
            ("$VAR_A", "$VAR_A"),
            ("$", "$"),
            ("$$", "$"),
            ("$$$", "$$"),
            ("$$$(VAR_A)", "$A"),
            ("$$$$(VAR_A)", "$$(VAR_A)"),
            ("$(VAR_A)$", "A$"),
            ("$(", "$("),
            ("$()", "$()"),
            ("(VAR_A)", "(VAR_A)"),
            ("$(VAR_A)(VAR_A)", "A(VAR_A)"),
            ("$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
            ("--port=$(PORT)", "--port=8080"),
            ("", ""),
            ("plain text", "plain text"),
            ("$é $(é) ü$(VAR_A)ü", "$é accent üAü"),
        ] {
            check(input, want);
        }
    }

    #[test]
    fn env_values_see_what_orch_sets_and_earlier_entries() {
        let provided = vec![
            ("PORT".to_string(), "8080".to_string()),
            ("ORCH_PORT_ADMIN".to_string(), "9090".to_string()),
        ];
        let env = [
            EnvVar::new("A", "1"),
            EnvVar::new("B", "$(A)-2"),
            EnvVar::new("C", "$(D)"),
            EnvVar::new("D", "4"),
            EnvVar::new("URL", "http://localhost:$(PORT)/ admin $(ORCH_PORT_ADMIN)"),
            EnvVar::new("LITERAL", "$$(PORT)"),
            EnvVar::new("A", "$(A)$(A)"),
            EnvVar {
                name: "SECRET".into(),
                value: "p$(A)ss".into(),
                value_from: Some(crate::model::object::ValueFrom {
                    secret: Some("s".into()),
                    config: None,
                    key: "k".into(),
                    field: None,
                    optional: false,
                }),
            },
            EnvVar::new("USES_SECRET", "[$(SECRET)]"),
        ];
        let got = expand_env(&provided, &env);
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "1-2"),
            ("C", "$(D)"),
            ("D", "4"),
            ("URL", "http://localhost:8080/ admin 9090"),
            ("LITERAL", "$(PORT)"),
            ("A", "11"),
            ("SECRET", "p$(A)ss"),
            ("USES_SECRET", "[p$(A)ss]"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
        let mut all = provided.clone();
        all.extend(got);
        assert_eq!(
            expand_args(
                &[
                    "--port".into(),
                    "$(PORT)".into(),
                    "$(A)/$(B)".into(),
                    "$$(PORT)".into(),
                    "$(NOPE)".into()
                ],
                &all
            ),
            ["--port", "8080", "11/1-2", "$(PORT)", "$(NOPE)"]
        );
    }

    proptest! {
        /// Text without `$` is unchanged, whatever the variables.
        #[test]
        fn text_without_a_dollar_is_unchanged(s in "[^$]*") {
            prop_assert_eq!(expand(&s, |_| Some("x")), s);
        }

        /// Doubling every `$` makes any text literal: it expands back to itself.
        #[test]
        fn escaped_text_expands_to_itself(s in "\\PC*") {
            let escaped = s.replace('$', "$$");
            prop_assert_eq!(expand(&escaped, |_| Some("x")), s);
        }

        /// With no variables defined, expansion only collapses `$$`: nothing is lost.
        #[test]
        fn unknown_references_are_kept(s in "[a-z$()]{0,24}") {
            let got = expand(&s, |_| None);
            prop_assert_eq!(got.replace('$', ""), s.replace('$', ""));
            prop_assert!(got.len() <= s.len());
        }

        /// A defined reference is replaced by its value, wherever it sits.
        #[test]
        fn references_are_replaced(
            pre in "[a-z ]{0,8}",
            name in "[A-Z_][A-Z0-9_]{0,8}",
            value in "[^$]{0,12}",
            post in "[a-z ]{0,8}",
        ) {
            let input = format!("{pre}$({name}){post}");
            let got = expand(&input, |n| (n == name).then_some(value.as_str()));
            prop_assert_eq!(got, format!("{pre}{value}{post}"));
        }
    }
}
