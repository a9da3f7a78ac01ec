//! Table tests of manifest error messages: each bad manifest must be rejected with a message
//! that names the source, the document, the field path, the bad value and what is allowed.

use orch_core::model::manifest::{
    parse, parse_all, parse_with_warnings, ManifestErrors, MAX_DOCUMENTS,
};

/// A service document with the given flow-style `metadata` and `spec`.
fn svc(metadata: &str, spec: &str) -> String {
    format!("apiVersion: orch/v1\nkind: Service\nmetadata: {metadata}\nspec: {spec}\n")
}

/// A service named `web` with the given flow-style `template`.
fn tpl(template: &str) -> String {
    svc(
        "{name: web}",
        &format!("{{replicas: 1, template: {template}}}"),
    )
}

/// Parses `text` as `source` and checks that it is rejected, that every line of the message
/// starts with the source name, and that the message contains each of `expected`.
fn check_source(source: &str, text: &str, expected: &[&str]) -> Result<String, String> {
    let msg = match parse(source, text) {
        Ok(objs) => return Err(format!("accepted, giving {} object(s)", objs.len())),
        Err(e) => e.to_string(),
    };
    if let Some(line) = msg.lines().find(|l| !l.starts_with(&format!("{source}: "))) {
        return Err(format!("line does not start with {source:?}: {line}"));
    }
    let missing: Vec<_> = expected.iter().filter(|s| !msg.contains(*s)).collect();
    if missing.is_empty() {
        Ok(msg)
    } else {
        Err(format!("missing {missing:?} in:\n{msg}"))
    }
}

/// [`check_source`] with the source `web.yaml` (or `web.json` for JSON text).
fn check(name: &str, text: &str, expected: &[&str]) -> Result<String, String> {
    let t = text.trim_start();
    let source = if t.starts_with('{') || t.starts_with('[') {
        "web.json"
    } else {
        "web.yaml"
    };
    check_source(source, text, expected).map_err(|e| format!("{name}: {e}"))
}

/// Runs one row and panics with its failure.
fn assert_check(name: &str, text: &str, expected: &[&str]) -> String {
    check(name, text, expected).unwrap_or_else(|e| panic!("{e}"))
}

/// `(name, manifest, substrings the error message must contain)`.
fn rows() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let long = "a".repeat(64);
    vec![
        // Malformed YAML.
        (
            "unclosed bracket",
            "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  template:\n    command: [a, b\n".into(),
            vec!["web.yaml: invalid YAML: line 6 ", "unclosed bracket"],
        ),
        (
            "bad indentation",
            "apiVersion: orch/v1\nkind: Service\nmetadata:\n  name: web\n   namespace: x\nspec: {template: {command: [x]}}\n".into(),
            vec!["web.yaml: invalid YAML", "line 5"],
        ),
        // Unknown fields.
        (
            "unknown top-level field",
            format!("{}extra: 1\n", tpl("{command: [x]}")),
            vec!["web.yaml: document 1: extra: unknown field `extra`, expected one of `metadata`, `spec`"],
        ),
        (
            "unknown metadata field",
            svc("{name: web, lables: {a: b}}", "{template: {command: [x]}}"),
            vec!["document 1: metadata.lables: unknown field `lables`", "`labels`"],
        ),
        (
            "unknown template field (typo)",
            tpl("{comand: [x]}"),
            vec!["document 1: spec.template.comand: unknown field `comand`", "`command`"],
        ),
        (
            "unknown spec field",
            svc("{name: web}", "{replica: 2, template: {command: [x]}}"),
            vec!["spec.replica: unknown field `replica`", "`replicas`"],
        ),
        // Wrong types.
        (
            "replicas as a word",
            svc("{name: web}", "{replicas: three, template: {command: [x]}}"),
            vec!["spec.replicas: ", "\"three\"", "0 to 100000"],
        ),
        (
            "ports as a string",
            tpl("{command: [x], ports: http}"),
            vec!["spec.template.ports: ", "\"http\"", "sequence"],
        ),
        (
            "env as a map",
            tpl("{command: [x], env: {A: b}}"),
            vec!["spec.template.env: ", "map", "sequence"],
        ),
        (
            "command as a string",
            tpl("{command: hello-server}"),
            vec!["spec.template.command: ", "\"hello-server\"", "sequence"],
        ),
        (
            "port number as a string",
            tpl("{command: [x], ports: [{name: http, port: eighty}]}"),
            vec!["spec.template.ports[0].port: ", "\"eighty\"", "u16"],
        ),
        (
            "port number too large",
            tpl("{command: [x], ports: [{name: http, port: 70000}]}"),
            vec!["spec.template.ports[0].port: ", "70000", "u16"],
        ),
        (
            "bad cpu quantity",
            tpl("{command: [x], resources: {cpu: lots}}"),
            vec!["spec.template.resources.cpu: ", "\"lots\"", "500m"],
        ),
        (
            "bad memory quantity",
            tpl("{command: [x], resources: {memory: 12Qi}}"),
            vec!["spec.template.resources.memory: ", "\"12Qi\"", "Mi"],
        ),
        (
            "bad restart policy",
            tpl("{command: [x], restartPolicy: Sometimes}"),
            vec!["spec.template.restartPolicy: ", "Sometimes", "Always", "OnFailure", "Never"],
        ),
        (
            "bad duration",
            tpl("{command: [x], stopGracePeriod: ten}"),
            vec!["spec.template.stopGracePeriod: ", "\"ten\"", "10s"],
        ),
        (
            "spec missing",
            "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\n".into(),
            vec!["document 1: (document): missing field `spec`"],
        ),
        (
            "a document that is not a mapping",
            "- a\n- b\n".into(),
            vec!["web.yaml: document 1: (document): ", "must be a mapping", "apiVersion, kind, metadata and spec"],
        ),
        // Names.
        (
            "uppercase name",
            svc("{name: Web}", "{template: {command: [x]}}"),
            vec!["metadata.name: invalid value \"Web\": ", "lower case alphanumeric"],
        ),
        (
            "underscore in name",
            svc("{name: my_web}", "{template: {command: [x]}}"),
            vec!["metadata.name: invalid value \"my_web\": ", "lower case alphanumeric", "'-'"],
        ),
        (
            "64-character name",
            svc(&format!("{{name: {long}}}"), "{template: {command: [x]}}"),
            vec!["metadata.name: invalid value ", "no more than 63 characters (it has 64)"],
        ),
        (
            "dotted name",
            svc("{name: web.example}", "{template: {command: [x]}}"),
            vec!["metadata.name: invalid value \"web.example\": must not contain dots"],
        ),
        (
            "empty name",
            svc("{name: \"\"}", "{template: {command: [x]}}"),
            vec!["metadata.name: ", "must not be empty"],
        ),
        (
            "bad namespace",
            svc("{name: web, namespace: Prod}", "{template: {command: [x]}}"),
            vec!["metadata.namespace: invalid value \"Prod\": ", "lower case"],
        ),
        // Replicas out of range.
        (
            "negative replicas",
            svc("{name: web}", "{replicas: -1, template: {command: [x]}}"),
            vec!["web.yaml: document 1: spec.replicas: ", "-1", "0 to 100000"],
        ),
        (
            "a billion replicas",
            svc("{name: web}", "{replicas: 1e9, template: {command: [x]}}"),
            vec!["spec.replicas: ", "1000000000", "0 to 100000"],
        ),
        (
            "fractional replicas",
            svc("{name: web}", "{replicas: 1.5, template: {command: [x]}}"),
            vec!["spec.replicas: ", "1.5", "whole number", "0 to 100000"],
        ),
        // Ports.
        (
            "duplicate port names",
            tpl("{command: [x], ports: [{name: http}, {name: http}]}"),
            vec!["spec.template.ports[1].name: invalid value \"http\": duplicate port name"],
        ),
        (
            "duplicate fixed ports",
            tpl("{command: [x], ports: [{name: a, port: 80}, {name: b, port: 80}]}"),
            vec!["spec.template.ports[1].port: invalid value 80: duplicate port"],
        ),
        (
            "port 0",
            tpl("{command: [x], ports: [{name: http, port: 0}]}"),
            vec!["spec.template.ports[0].port: invalid value 0: ", "between 1 and 65535", "omitted for a dynamic port"],
        ),
        (
            "host port 0",
            tpl("{image: x, ports: [{name: http, port: 80, hostPort: 0}]}"),
            vec!["spec.template.ports[0].hostPort: invalid value 0: ", "between 1 and 65535"],
        ),
        (
            "host port out of range",
            tpl("{image: x, ports: [{name: http, port: 80, hostPort: 70000}]}"),
            vec!["hostPort", "70000"],
        ),
        (
            "host port without a fixed port",
            tpl("{image: x, ports: [{name: http, hostPort: 8080}]}"),
            vec!["spec.template.ports[0].hostPort: invalid value 8080: ", "needs a fixed port"],
        ),
        (
            "duplicate host ports",
            tpl("{image: x, ports: [{name: a, port: 80, hostPort: 8080}, {name: b, port: 81, hostPort: 8080}]}"),
            vec!["spec.template.ports[1].hostPort: invalid value 8080: ", "duplicate host port"],
        ),
        (
            "numeric port name",
            tpl("{command: [x], ports: [{name: \"8080\"}]}"),
            vec!["spec.template.ports[0].name: invalid value \"8080\": ", "at least one letter"],
        ),
        (
            "bad port protocol",
            tpl("{command: [x], ports: [{name: http, protocol: SCTP}]}"),
            vec!["spec.template.ports[0].protocol: ", "SCTP", "TCP", "UDP"],
        ),
        // What runs.
        (
            "neither command nor image",
            tpl("{args: [x]}"),
            vec!["spec.template.command: set either command", "or image"],
        ),
        (
            "empty program",
            tpl("{command: [\" \"]}"),
            vec!["spec.template.command[0]: invalid value \" \": the program must not be empty"],
        ),
        (
            "bad image reference",
            tpl("{image: \"Busybox:latest\"}"),
            vec!["spec.template.image: invalid value \"Busybox:latest\": ", "image reference looks like", "lower case"],
        ),
        (
            "image with a space",
            tpl("{image: \"busy box\"}"),
            vec!["spec.template.image: invalid value \"busy box\": ", "no spaces"],
        ),
        (
            "bad stop signal",
            tpl("{command: [x], stopSignal: SIGNOPE}"),
            vec!["spec.template.stopSignal: invalid value \"SIGNOPE\": ", "SIGTERM"],
        ),
        (
            "grace period over an hour",
            tpl("{command: [x], stopGracePeriod: 2h}"),
            vec!["spec.template.stopGracePeriod: invalid value \"2h\": must be at most 1h"],
        ),
        (
            "relative working dir",
            tpl("{command: [x], workingDir: srv}"),
            vec!["spec.template.workingDir: invalid value \"srv\": must be an absolute path"],
        ),
        (
            "tiny memory limit",
            tpl("{command: [x], resources: {memory: 1Ki}}"),
            vec!["spec.template.resources.memory: invalid value \"1Ki\": must be at least 4Mi"],
        ),
        (
            "bad env var name",
            tpl("{command: [x], env: [{name: A, value: b}, {name: 1BAD, value: c}]}"),
            vec!["spec.template.env[1].name: invalid value \"1BAD\": ", "must not start with a digit"],
        ),
        (
            "env var name with a space",
            tpl("{command: [x], env: [{name: \"MY VAR\"}]}"),
            vec!["spec.template.env[0].name: invalid value \"MY VAR\": ", "alphabetic characters, digits"],
        ),
        // Labels.
        (
            "bad label key",
            svc("{name: web, labels: {\"-app\": web}}", "{template: {command: [x]}}"),
            vec!["metadata.labels[\"-app\"]: invalid value \"-app\": ", "name part must consist of"],
        ),
        (
            "bad label key prefix",
            svc("{name: web, labels: {\"Example.com/app\": web}}", "{template: {command: [x]}}"),
            vec!["metadata.labels[\"Example.com/app\"]: invalid value \"Example.com/app\": prefix part"],
        ),
        (
            "bad label value",
            svc("{name: web, labels: {app: \"my web\"}}", "{template: {command: [x]}}"),
            vec!["metadata.labels[\"app\"]: invalid value \"my web\": ", "a valid label must be an empty string"],
        ),
        (
            "long label value",
            svc(&format!("{{name: web, labels: {{app: {long}}}}}"), "{template: {command: [x]}}"),
            vec!["metadata.labels[\"app\"]: invalid value ", "no more than 63 characters (it has 64)"],
        ),
        (
            "bad template label",
            tpl("{command: [x], labels: {tier: \"a b\"}}"),
            vec!["spec.template.labels[\"tier\"]: invalid value \"a b\": "],
        ),
        (
            "bad node selector",
            svc("{name: web}", "{template: {command: [x]}, placement: {nodeSelector: {\"a b\": x}}}"),
            vec!["spec.placement.nodeSelector[\"a b\"]: invalid value \"a b\": "],
        ),
        (
            "max per node 0",
            svc("{name: web}", "{template: {command: [x]}, placement: {maxPerNode: 0}}"),
            vec!["spec.placement.maxPerNode: invalid value 0: must be at least 1"],
        ),
        (
            "bad surge percentage",
            svc("{name: web}", "{template: {command: [x]}, update: {maxSurge: \"150%\"}}"),
            vec!["spec.update.maxSurge: invalid value \"150%\": ", "0% to 100%"],
        ),
        (
            "NUL byte in an argument",
            tpl("{command: [x], args: [a, \"b\\0c\"]}"),
            vec!["spec.template.args[1]: invalid value \"b\\0c\": must not contain NUL bytes"],
        ),
        (
            "NUL byte in an env value",
            tpl("{command: [x], env: [{name: A, value: \"b\\0\"}]}"),
            vec!["spec.template.env[0].value: ", "must not contain NUL bytes"],
        ),
        (
            "metadata missing",
            "apiVersion: orch/v1\nkind: Service\nspec: {template: {command: [x]}}\n".into(),
            vec!["document 1: (document): missing field `metadata`"],
        ),
        (
            "template missing",
            svc("{name: web}", "{replicas: 1}"),
            vec!["document 1: spec: missing field `template`"],
        ),
        (
            "a scalar document",
            "just some text\n".into(),
            vec!["web.yaml: document 1: (document): invalid value \"just some text\": ", "must be a mapping"],
        ),
        (
            "unquoted number as an env value",
            tpl("{command: [x], env: [{name: PORT, value: 8080}]}"),
            vec!["spec.template.env[0].value: ", "integer `8080`", "expected a string"],
        ),
        (
            "unquoted number as a stop signal",
            tpl("{command: [x], stopSignal: 9}"),
            vec!["spec.template.stopSignal: ", "integer `9`", "expected a string"],
        ),
        (
            "negative surge",
            svc("{name: web}", "{template: {command: [x]}, update: {maxSurge: -1}}"),
            vec!["spec.update.maxSurge: ", "invalid value -1", "whole number", "25%"],
        ),
        (
            "duplicate key",
            format!("apiVersion: orch/v1\n{}", tpl("{command: [x]}")),
            vec!["web.yaml: invalid YAML: line 2 ", "duplicate key \"apiVersion\" (first at line 1 column 1)"],
        ),
        // Kind and apiVersion.
        (
            "kind Deployment",
            "apiVersion: orch/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {template: {command: [x]}}\n".into(),
            vec!["document 1: kind: invalid value \"Deployment\": unknown kind; allowed: Service, Secret, Config", "kind: Service"],
        ),
        (
            "kind ConfigMap",
            "apiVersion: orch/v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {a: b}\n".into(),
            vec!["kind: invalid value \"ConfigMap\": ", "kind: Config"],
        ),
        (
            "kind missing",
            "apiVersion: orch/v1\nmetadata: {name: web}\n".into(),
            vec!["document 1: kind: missing; allowed: Service, Secret, Config"],
        ),
        (
            "kind Replica (not applicable)",
            "apiVersion: orch/v1\nkind: Replica\nmetadata: {name: web}\n".into(),
            vec!["kind: invalid value \"Replica\": unknown kind; allowed: Service, Secret, Config"],
        ),
        (
            "wrong apiVersion",
            "apiVersion: apps/v1\nkind: Service\nmetadata: {name: web}\nspec: {template: {command: [x]}}\n".into(),
            vec!["document 1: apiVersion: invalid value \"apps/v1\": must be \"orch/v1\""],
        ),
        (
            "kind not a string",
            "apiVersion: orch/v1\nkind: [Service]\nmetadata: {name: web}\n".into(),
            vec!["kind: invalid value [\"Service\"]: must be a string; allowed: Service, Secret, Config"],
        ),
        (
            "apiVersion not a string",
            "apiVersion: 1\nkind: Service\nmetadata: {name: web}\n".into(),
            vec!["apiVersion: invalid value 1: must be \"orch/v1\""],
        ),
        (
            "apiVersion missing",
            "kind: Service\nmetadata: {name: web}\nspec: {template: {command: [x]}}\n".into(),
            vec!["document 1: apiVersion: missing; must be \"orch/v1\""],
        ),
        // Secrets and configs.
        (
            "bad config key",
            "apiVersion: orch/v1\nkind: Config\nmetadata: {name: web}\ndata: {\"a b\": x}\n".into(),
            vec!["data[\"a b\"]: invalid value \"a b\": ", "alphanumeric characters, '-', '_' or '.'"],
        ),
        (
            "secret key ..",
            "apiVersion: orch/v1\nkind: Secret\nmetadata: {name: web}\ndata: {\"..\": x}\n".into(),
            vec!["data[\"..\"]: invalid value \"..\": ", "not '.' or '..'"],
        ),
        (
            "secret with stringData",
            "apiVersion: orch/v1\nkind: Secret\nmetadata: {name: web}\nstringData: {password: hunter2}\n".into(),
            vec!["document 1: stringData: unknown field `stringData`", "`data`"],
        ),
        (
            "secret data not a map",
            "apiVersion: orch/v1\nkind: Secret\nmetadata: {name: web}\ndata: [a, b]\n".into(),
            vec!["document 1: data: invalid type: sequence, expected a map"],
        ),
        // Multi-document files.
        (
            "third of three documents bad",
            format!(
                "{}---\n{}---\n{}",
                tpl("{command: [x]}"),
                svc("{name: api}", "{template: {command: [x]}}"),
                svc("{name: db}", "{replicas: -1, template: {command: [x]}}"),
            ),
            vec!["web.yaml: document 3: spec.replicas: "],
        ),
        (
            "every bad document reported",
            format!(
                "{}---\n{}---\n{}",
                svc("{name: Web}", "{template: {command: [x]}}"),
                svc("{name: api}", "{template: {command: [x]}}"),
                svc("{name: db}", "{replicas: -1, template: {command: [x]}}"),
            ),
            vec!["web.yaml: document 1: metadata.name: ", "\nweb.yaml: document 3: spec.replicas: "],
        ),
        (
            "empty documents are skipped when counting",
            format!("---\n---\n{}", svc("{name: Web}", "{template: {command: [x]}}")),
            vec!["web.yaml: document 1: metadata.name: "],
        ),
        // JSON.
        (
            "JSON with a bad field",
            r#"{"apiVersion":"orch/v1","kind":"Service","metadata":{"name":"web"},"spec":{"template":{"command":["x"],"ports":[{"name":"http","port":"80"}]}}}"#.into(),
            vec!["web.json: document 1: spec.template.ports[0].port: ", "\"80\"", "u16"],
        ),
        (
            "JSON with an unknown field",
            r#"{"apiVersion":"orch/v1","kind":"Service","metadata":{"name":"web"},"spec":{"template":{"comand":["x"]}}}"#.into(),
            vec!["web.json: document 1: spec.template.comand: unknown field `comand`"],
        ),
        (
            "JSON array, second item bad",
            r#"[{"apiVersion":"orch/v1","kind":"Config","metadata":{"name":"a"}},{"apiVersion":"orch/v1","kind":"Config","metadata":{"name":"B"}}]"#.into(),
            vec!["web.json: document 2: metadata.name: invalid value \"B\": "],
        ),
        (
            "JSON List, item bad",
            r#"{"kind":"List","items":[{"apiVersion":"orch/v1","kind":"Service","metadata":{"name":"web"},"spec":{"replicas":-5,"template":{"command":["x"]}}}]}"#.into(),
            vec!["web.json: document 1: spec.replicas: ", "-5", "0 to 100000"],
        ),
        (
            "probe with two checks",
            tpl("{command: [x], ports: [{name: http}], readinessProbe: {httpGet: {port: http}, tcpSocket: {port: http}}}"),
            vec!["spec.template.readinessProbe", "exactly one of httpGet, tcpSocket, exec or grpc"],
        ),
        (
            "probe on an unknown port name",
            tpl("{command: [x], ports: [{name: http}], livenessProbe: {tcpSocket: {port: admin}}}"),
            vec!["spec.template.livenessProbe.tcpSocket.port", "\"admin\"", "ports: http"],
        ),
        (
            "liveness success threshold",
            tpl("{command: [x], livenessProbe: {exec: {command: ['true']}, successThreshold: 2}}"),
            vec!["spec.template.livenessProbe.successThreshold", "must be 1 for liveness and startup probes"],
        ),
        (
            "probe period too short",
            tpl("{command: [x], readinessProbe: {exec: {command: ['true']}, period: 10ms}}"),
            vec!["spec.template.readinessProbe.period", "at least 100ms"],
        ),
        (
            "exec probe without a command",
            tpl("{command: [x], startupProbe: {exec: {command: []}}}"),
            vec!["spec.template.startupProbe.exec.command", "must name a program"],
        ),
        (
            "http probe path",
            tpl("{command: [x], readinessProbe: {httpGet: {path: healthz, port: 8080}}}"),
            vec!["spec.template.readinessProbe.httpGet.path", "must start with /"],
        ),
        // Durations under a floor or absurdly long (issue 17).
        (
            "restart backoff cap of zero",
            tpl("{command: [x], restartBackoffMax: 0s}"),
            vec!["spec.template.restartBackoffMax: invalid value \"0s\": must be at least 1s"],
        ),
        (
            "restart backoff cap of a millisecond",
            tpl("{command: [x], restartBackoffMax: 1ms}"),
            vec!["spec.template.restartBackoffMax: invalid value \"1ms\": must be at least 1s"],
        ),
        (
            "probe timeout of a nanosecond",
            tpl("{command: [x], readinessProbe: {exec: {command: ['true']}, timeout: 1ns}}"),
            vec!["spec.template.readinessProbe.timeout: invalid value \"1ns\": must be at least 1ms"],
        ),
        (
            "probe timeout over an hour",
            tpl("{command: [x], readinessProbe: {exec: {command: ['true']}, timeout: 2h}}"),
            vec!["spec.template.readinessProbe.timeout: invalid value \"2h\": must be at most 1h"],
        ),
        (
            "probe period of a year",
            tpl("{command: [x], startupProbe: {exec: {command: ['true']}, period: 365d}}"),
            vec!["spec.template.startupProbe.period: invalid value ", "must be at most 1h"],
        ),
        (
            "probe initial delay of eons",
            tpl("{command: [x], livenessProbe: {exec: {command: ['true']}, initialDelay: 500000000000y}}"),
            vec!["spec.template.livenessProbe.initialDelay: invalid value ", "must be at most 1h"],
        ),
        (
            "progress deadline of zero",
            svc("{name: web}", "{template: {command: [x]}, update: {progressDeadline: 0s}}"),
            vec!["spec.update.progressDeadline: invalid value \"0s\": must be at least 1s"],
        ),
        (
            "job active deadline of zero",
            "apiVersion: orch/v1\nkind: Job\nmetadata: {name: web}\nspec: {activeDeadline: 0s, template: {command: [x], restartPolicy: Never}}\n".into(),
            vec!["spec.activeDeadline: invalid value \"0s\": must be at least 1s"],
        ),
        // Quantities that would round to nothing (issue 17).
        (
            "cpu under a millicore",
            tpl("{command: [x], resources: {cpu: \"0.0000001\"}}"),
            vec!["spec.template.resources.cpu: ", "\"0.0000001\"", "the smallest cpu quantity is 1m"],
        ),
        (
            "cpu of 0.4 millicores",
            tpl("{command: [x], resources: {cpu: 0.0004}}"),
            vec!["spec.template.resources.cpu: ", "0.0004", "the smallest cpu quantity is 1m"],
        ),
        (
            "memory under a byte",
            tpl("{command: [x], resources: {memory: \"0.1\"}}"),
            vec!["spec.template.resources.memory: ", "\"0.1\"", "at least 4Mi"],
        ),
        // Duplicate keys name the key and its first occurrence (issue 17).
        (
            "duplicate key in a nested block mapping",
            "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  template:\n    command: [x]\n    args: [a]\n    command: [y]\n".into(),
            vec!["web.yaml: invalid YAML: line 8 column 5: duplicate key \"command\" (first at line 6 column 5)"],
        ),
        (
            "duplicate key in a flow mapping",
            svc("{name: web, name: api}", "{template: {command: [x]}}"),
            vec!["web.yaml: invalid YAML: line 3 ", "duplicate key \"name\" (first at line 3 column 12)"],
        ),
        (
            "malformed JSON",
            r#"{"apiVersion": "orch/v1", "kind": "Service",}"#.into(),
            vec!["web.json: invalid JSON: ", "line 1"],
        ),
    ]
}

#[test]
fn bad_manifests_are_rejected_with_precise_messages() {
    let rows = rows();
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|(name, text, expected)| check(name, text, expected).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n\n")
    );
}

#[test]
fn one_bad_document_rejects_the_whole_file() {
    let text = format!(
        "{}---\n{}---\n{}",
        tpl("{command: [x]}"),
        svc(
            "{name: api}",
            "{replicas: 100001, template: {command: [x]}}"
        ),
        svc("{name: db}", "{template: {command: [x]}}"),
    );
    let msg = assert_check(
        "one bad document",
        &text,
        &[
            "web.yaml: document 2: spec.replicas: ",
            "100001",
            "0 to 100000",
        ],
    );
    assert_eq!(msg.lines().count(), 1, "{msg}");
    // The same file without the bad document is accepted whole.
    let good = text.replace("replicas: 100001", "replicas: 100000");
    assert_eq!(parse("web.yaml", &good).map(|o| o.len()), Ok(3));
}

#[test]
fn the_same_object_in_two_sources_is_defined_twice() {
    let web = tpl("{command: [x]}");
    let err = parse_all([("a.yaml", web.as_str()), ("b.yaml", web.as_str())]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("b.yaml: ")
            && msg.contains("service/web")
            && msg.contains("\"default\"")
            && msg.contains("defined twice (also in a.yaml)"),
        "{msg}"
    );
    // Twice in one file is caught too.
    let twice = format!("{web}---\n{web}");
    let msg = parse_all([("c.yaml", twice.as_str())])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("defined twice (also in c.yaml)"), "{msg}");
    // Same name in another namespace, or of another kind, is a different object.
    let other_ns = svc("{name: web, namespace: prod}", "{template: {command: [x]}}");
    let config = "apiVersion: orch/v1\nkind: Config\nmetadata: {name: web}\n";
    let objs = parse_all([
        ("a.yaml", web.as_str()),
        ("b.yaml", other_ns.as_str()),
        ("c.yaml", config),
    ])
    .unwrap();
    assert_eq!(objs.len(), 3);
}

#[test]
fn parse_all_is_all_or_nothing_across_sources() {
    let good = tpl("{command: [x]}");
    let bad = svc("{name: api}", "{replicas: -1, template: {command: [x]}}");
    let ManifestErrors(errors) =
        parse_all([("good.yaml", good.as_str()), ("bad.yaml", bad.as_str())]).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].source, "bad.yaml");
    assert_eq!(errors[0].document, Some(1));
    let field = errors[0].field.as_ref().expect("a field error");
    assert_eq!(field.path, "spec.replicas");
}

#[test]
fn a_100_mb_manifest_is_rejected_by_size() {
    let doc = tpl("{command: [x]}");
    let mut text = String::with_capacity(100 << 20);
    while text.len() < 100 << 20 {
        text.push_str("---\n");
        text.push_str(&doc);
    }
    assert_check(
        "100 MB",
        &text,
        &[
            "web.yaml: manifest is ",
            " bytes; the limit is 4194304 bytes (4 MiB)",
            "split it",
        ],
    );
}

#[test]
fn a_manifest_of_exactly_the_size_limit_is_accepted() {
    use orch_core::model::manifest::MAX_MANIFEST_BYTES;
    let doc = tpl("{command: [x]}");
    let mut text = doc.clone();
    let comment = format!("# {}\n", "x".repeat(1000));
    while text.len() + comment.len() <= MAX_MANIFEST_BYTES {
        text.push_str(&comment);
    }
    let pad = MAX_MANIFEST_BYTES - text.len();
    text.push_str(&format!("#{}\n", "x".repeat(pad - 2)));
    assert_eq!(text.len(), MAX_MANIFEST_BYTES);
    assert_eq!(parse("web.yaml", &text).map(|o| o.len()), Ok(1));
    text.push(' ');
    assert_check("one byte over", &text, &["manifest is 4194305 bytes"]);
}

/// Nine levels of ten aliases each: 10⁹ strings when expanded.
fn billion_laughs() -> String {
    let mut text = String::from("apiVersion: orch/v1\nkind: Service\n");
    text.push_str(&format!("a: &a [{}]\n", ["\"lol\""; 10].join(",")));
    let names: Vec<char> = ('a'..='i').collect();
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 10].join(",");
        text.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
    }
    text.push_str("metadata: {name: web}\nspec: {template: {command: *i}}\n");
    text
}

#[test]
fn a_yaml_alias_bomb_is_rejected() {
    let text = billion_laughs();
    assert!(text.len() < 1000, "the bomb itself is small");
    assert_check(
        "billion laughs",
        &text,
        &[
            "web.yaml: invalid YAML: ",
            "too many nodes or aliases: the document expands to more than ",
            "nodes, the limit for a manifest of",
            "alias bomb",
        ],
    );
}

#[test]
fn a_few_aliases_are_fine() {
    let text = "apiVersion: orch/v1\nkind: Service\nmetadata:\n  name: web\n  labels: &l {app: web}\nspec:\n  template: {labels: *l, command: [x]}\n";
    let objs = parse("web.yaml", text).unwrap();
    assert_eq!(
        objs[0].metadata().labels.get("app").map(String::as_str),
        Some("web")
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = 10_000;
    // Flow style in YAML (the text does not start with a bracket, so it is read as YAML).
    let flow = format!("a: {}{}\n", "[".repeat(deep), "]".repeat(deep));
    assert_check(
        "deep flow YAML",
        &flow,
        &[
            "web.yaml: invalid YAML: line 1 ",
            "recursion limit exceeded",
        ],
    );
    // Block style: `- - - - ... x` nests one sequence per dash.
    let block = format!("{}x\n", "- ".repeat(deep));
    assert_check(
        "deep block YAML",
        &block,
        &[
            "web.yaml: invalid YAML: line 1 ",
            "nested more than 64 levels deep; the limit is 64",
        ],
    );
    // Unclosed, too.
    let open = format!("a: {}\n", "[".repeat(deep));
    assert_check("deep unclosed YAML", &open, &["web.yaml: invalid YAML: "]);
    // JSON.
    let json = format!("{}{}", "[".repeat(deep), "]".repeat(deep));
    assert_check(
        "deep JSON",
        &json,
        &["web.json: invalid JSON: ", "recursion limit"],
    );
    let json = format!("{}1{}", "{\"a\":".repeat(deep), "}".repeat(deep));
    assert_check(
        "deep JSON objects",
        &json,
        &["web.json: invalid JSON: ", "recursion limit"],
    );
}

#[test]
fn too_many_documents_are_rejected() {
    let config = "apiVersion: orch/v1\nkind: Config\nmetadata: {name: c}\n";
    // YAML: the documented limit (10,000), not the parser's default of 1,024.
    let yaml = vec![config; 10_001].join("---\n");
    let msg = assert_check(
        "10001 YAML documents",
        &yaml,
        &["web.yaml: manifest has more than 10000 documents; the limit is 10000"],
    );
    assert!(
        msg.lines().count() == 1,
        "one error, not one per document: {msg}"
    );
    // JSON: orch's limit.
    let item = r#"{"apiVersion":"orch/v1","kind":"Config","metadata":{"name":"c"}}"#;
    let json = format!("[{}]", vec![item; 10_001].join(","));
    assert_check(
        "10001 JSON documents",
        &json,
        &["web.json: manifest has 10001 documents; the limit is 10000"],
    );
}

/// The documented limit holds for YAML as for JSON: 10,000 realistic service documents (well
/// under 4 MiB) are accepted, and aliases in them still work.
#[test]
fn ten_thousand_yaml_documents_are_accepted() {
    let doc = |i: usize| {
        format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web-{i}, labels: {{app: web, tier: front}}}}\nspec:\n  replicas: 2\n  template:\n    command: [hello-server, --port, '8080']\n    env: [{{name: A, value: '1'}}, {{name: B, value: '2'}}]\n    ports: [{{name: http}}]\n    resources: {{cpu: 100m, memory: 64Mi}}\n    readinessProbe: {{httpGet: {{path: /healthz, port: http}}, period: 2s}}\n"
        )
    };
    let text = (0..MAX_DOCUMENTS)
        .map(doc)
        .collect::<Vec<_>>()
        .join("---\n");
    assert!(text.len() < 4 << 20, "{} bytes", text.len());
    let objs = parse("web.yaml", &text).unwrap_or_else(|e| panic!("{}", e.0[0]));
    assert_eq!(objs.len(), MAX_DOCUMENTS);
}

/// Each YAML resource limit says which limit was hit.
#[test]
fn each_yaml_limit_names_itself() {
    // Many aliases of one anchor: more aliases per anchor than the ratio allows.
    let mut many = String::from("a: &a x\nb: [");
    many.push_str(&vec!["*a"; 2_000].join(","));
    many.push_str("]\n");
    assert_check(
        "aliases per anchor",
        &many,
        &[
            "web.yaml: invalid YAML: ",
            "aliases for 1 anchor",
            "the limit is 10 per anchor",
        ],
    );
}

/// Duplicate keys are named with their first occurrence, without the parser library's advice.
#[test]
fn duplicate_keys_give_no_library_advice() {
    let text = "apiVersion: orch/v1\nkind: Service\nmetadata:\n  name: web\n  labels: {a: b}\n  name: api\nspec: {template: {command: [x]}}\n";
    let msg = assert_check(
        "duplicate metadata name",
        text,
        &["web.yaml: invalid YAML: line 6 column 3: duplicate key \"name\" (first at line 4 column 3)"],
    );
    assert!(
        !msg.contains("DuplicateKeyPolicy") && !msg.contains("Options"),
        "{msg}"
    );
}

/// Fields orch sets (status, metadata uid/revision/generation/creationTimestamp) are ignored
/// on input, as kubectl apply ignores status, with one warning per field.
#[test]
fn server_set_fields_are_ignored_with_a_warning() {
    let text = "apiVersion: orch/v1\nkind: Service\nmetadata:\n  name: web\n  uid: 0123-abcd\n  revision: 7\n  generation: 3\n  creationTimestamp: '2026-01-02T03:04:05Z'\nspec: {template: {command: [x]}}\nstatus: {readyReplicas: 3, whatever: [1]}\n---\napiVersion: orch/v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: b}\nstatus: {}\n";
    let parsed = parse_with_warnings("web.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed.objects.len(), 2);
    let md = parsed.objects[0].metadata();
    assert!(md.uid.is_empty() && md.revision == 0 && md.generation == 0);
    assert!(md.creation_timestamp.is_none());
    let Some(orch_core::model::object::Object::Service(svc)) = parsed.objects.first() else {
        panic!("a service")
    };
    assert_eq!(svc.status, Default::default());
    let warnings: Vec<String> = parsed.warnings.iter().map(|w| w.to_string()).collect();
    for expect in [
        "web.yaml: document 1: status: ignored: set by orch, not by manifests",
        "web.yaml: document 1: metadata.uid: ignored: set by orch, not by manifests",
        "web.yaml: document 1: metadata.revision: ignored",
        "web.yaml: document 1: metadata.generation: ignored",
        "web.yaml: document 1: metadata.creationTimestamp: ignored",
        "web.yaml: document 2: status: ignored",
    ] {
        assert!(
            warnings.iter().any(|w| w.starts_with(expect)),
            "no warning {expect:?} in {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), 6, "{warnings:#?}");
    // A manifest without them has no warnings, and `parse` still accepts both.
    assert!(parse_with_warnings(
        "ok.yaml",
        "apiVersion: orch/v1\nkind: Config\nmetadata: {name: c}\n"
    )
    .unwrap()
    .warnings
    .is_empty());
    assert_eq!(parse("web.yaml", text).map(|o| o.len()), Ok(2));
}
