//! Validation of the template fields the node agent fills in or hands to its runtime (init
//! steps, `valueFrom.field`/`optional`, `envFrom`, one-key mounts, user, capabilities,
//! hostname, gRPC probes): each bad value is refused with the field path and what is allowed;
//! good ones pass.

use orch_core::model::manifest::parse;

/// A service named `web` with the given flow-style `template`.
fn tpl(template: &str) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{replicas: 1, template: {template}}}\n"
    )
}

/// Rejected with a message holding every one of `expected`, or accepted when it is empty.
fn check(template: &str, expected: &[&str]) {
    match parse("web.yaml", &tpl(template)) {
        Ok(_) if expected.is_empty() => {}
        Ok(_) => panic!("{template}: accepted, expected {expected:?}"),
        Err(e) if expected.is_empty() => panic!("{template}: refused: {e}"),
        Err(e) => {
            let msg = e.to_string();
            for s in expected {
                assert!(msg.contains(s), "{template}: {s:?} missing in:\n{msg}");
            }
        }
    }
}

#[test]
fn good_templates_pass() {
    for t in [
        "{image: app, user: '1000:1000', hostname: db-1, capabilities: {add: [NET_ADMIN], drop: [ALL, cap_net_raw]}}",
        "{image: app, user: postgres}",
        "{command: [x], user: '0'}",
        "{command: [x], env: [{name: POD, valueFrom: {field: \"metadata.labels['app']\"}}]}",
        "{command: [x], env: [{name: A, valueFrom: {secret: s, key: k, optional: true}}]}",
        "{command: [x], envFrom: [{config: c, prefix: APP_}, {secret: s, optional: true}]}",
        "{command: [x], mounts: [{path: /run/secrets/pw, secret: s, key: pw}]}",
        "{image: app, init: [{name: wait}, {name: migrate, image: 'tools:1', command: [m]}]}",
        "{command: [x], init: [{name: prep, command: [p], mounts: [{path: /scratch, tmpfs: true}]}]}",
        "{command: [x], ports: [{name: grpc}], readinessProbe: {grpc: {port: grpc, service: svc}}}",
    ] {
        check(t, &[]);
    }
}

#[test]
fn bad_fields_are_refused_with_their_path() {
    for (t, want) in [
        (
            "{command: [x], env: [{name: A, valueFrom: {field: spec.serviceAccountName}}]}",
            &["spec.template.env[0].valueFrom.field", "metadata.name, metadata.namespace"][..],
        ),
        (
            "{command: [x], env: [{name: A, valueFrom: {field: metadata.name, key: k}}]}",
            &["spec.template.env[0].valueFrom.key", "not field"],
        ),
        (
            "{command: [x], env: [{name: A, valueFrom: {secret: s, field: metadata.name}}]}",
            &["spec.template.env[0].valueFrom", "exactly one of secret or config"],
        ),
        (
            "{command: [x], envFrom: [{secret: s, config: c}]}",
            &["spec.template.envFrom[0]", "exactly one of secret or config"],
        ),
        (
            "{command: [x], envFrom: [{secret: s, prefix: '1X'}]}",
            &["spec.template.envFrom[0].prefix"],
        ),
        (
            "{command: [x], user: postgres}",
            &["spec.template.user", "numeric UID"],
        ),
        (
            "{image: app, user: 'a b'}",
            &["spec.template.user", "UID:GID"],
        ),
        (
            "{command: [x], capabilities: {drop: [NET_RAW]}}",
            &["spec.template.capabilities", "containers only"],
        ),
        (
            "{image: app, capabilities: {add: [FLY]}}",
            &["spec.template.capabilities.add[0]", "not a Linux capability"],
        ),
        (
            "{command: [x], hostname: h}",
            &["spec.template.hostname", "containers only"],
        ),
        (
            "{image: app, hostname: -bad}",
            &["spec.template.hostname", "1 to 63"],
        ),
        (
            "{command: [x], mounts: [{path: /v, tmpfs: true, key: k}]}",
            &["spec.template.mounts[0].key", "secret and config mounts only"],
        ),
        (
            "{image: app, init: [{name: a}, {name: a}]}",
            &["spec.template.init[1].name", "duplicate"],
        ),
        (
            "{image: app, init: [{name: Bad_Name}]}",
            &["spec.template.init[0].name"],
        ),
        (
            "{command: [x], init: [{name: a}]}",
            &["spec.template.init[0].command", "needs a command"],
        ),
        (
            "{command: [x], init: [{name: a, image: busybox, command: [z]}]}",
            &["spec.template.init[0].image", "its init steps run commands"],
        ),
        (
            "{command: [x], init: [{name: a, command: [z], env: [{name: '9', value: v}]}]}",
            &["spec.template.init[0].env[0].name"],
        ),
        (
            "{command: [x], mounts: [{path: /d, tmpfs: true}], init: [{name: a, command: [z], mounts: [{path: /d, tmpfs: true}]}]}",
            &["spec.template.init[0].mounts[0].path", "already mounts"],
        ),
        (
            "{command: [x], readinessProbe: {grpc: {port: 9000}, tcpSocket: {port: 9000}}}",
            &["spec.template.readinessProbe", "exactly one of httpGet, tcpSocket, exec or grpc"],
        ),
        (
            "{command: [x], readinessProbe: {grpc: {port: nope}}}",
            &["spec.template.readinessProbe.grpc.port", "no template port"],
        ),
    ] {
        check(t, want);
    }
}
