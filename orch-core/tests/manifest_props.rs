//! Property tests of manifests: any valid service survives YAML and JSON round trips
//! unchanged, and no input makes the parser panic.

use std::collections::BTreeMap;

use orch_core::manifest::{parse, to_yaml};
use orch_core::object::{
    EnvVar, Metadata, Object, PortSpec, Protocol, Resources, RestartPolicy, Service, ServiceSpec,
    Template,
};
use orch_core::quantity::{Cpu, Memory, Span};
use proptest::prelude::*;

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?"
}

fn service() -> impl Strategy<Value = Service> {
    let env = prop::collection::vec(("[A-Z_][A-Z0-9_]{0,10}", "[ -~]{0,20}"), 0..4);
    let ports = prop::collection::btree_map("[a-z]{1,8}", prop::option::of(1u16..=65535), 0..4);
    let labels =
        prop::collection::btree_map("[a-z]([a-z0-9.]{0,10}[a-z0-9])?", "[A-Za-z0-9]{0,10}", 0..3);
    (
        label(),
        label(),
        0u32..1000,
        (
            ("[!-~][ -~]{0,11}"),
            prop::collection::vec("[ -~]{0,12}", 0..3),
        )
            .prop_map(|(first, mut rest)| {
                rest.insert(0, first);
                rest
            }),
        env,
        ports,
        labels,
        (
            prop::option::of(1u64..64_000),
            prop::option::of(4u64 << 20..64u64 << 30),
        ),
        prop_oneof![
            Just(RestartPolicy::Always),
            Just(RestartPolicy::OnFailure),
            Just(RestartPolicy::Never)
        ],
        prop::option::of(0u64..3600),
    )
        .prop_map(
            |(name, ns, replicas, command, env, ports, labels, (cpu, mem), restart, grace)| {
                let mut seen = std::collections::HashSet::new();
                let ports = ports
                    .into_iter()
                    .map(|(name, port)| PortSpec {
                        name,
                        port: port.filter(|p| seen.insert(*p)),
                        protocol: Protocol::Tcp,
                    })
                    .collect();
                Service {
                    metadata: Metadata {
                        name,
                        namespace: ns,
                        labels: labels.clone(),
                        ..Metadata::default()
                    },
                    spec: ServiceSpec {
                        replicas,
                        template: Template {
                            labels,
                            command,
                            env: env
                                .into_iter()
                                .map(|(name, value)| EnvVar { name, value })
                                .collect(),
                            ports,
                            resources: Resources {
                                cpu: cpu.map(Cpu),
                                memory: mem.map(Memory),
                            },
                            restart_policy: restart,
                            stop_grace_period: grace.map(Span::secs),
                            ..Template::default()
                        },
                        placement: Default::default(),
                        update: Default::default(),
                    },
                    status: Default::default(),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn yaml_round_trip(svc in service()) {
        let obj = Object::Service(svc);
        let yaml = to_yaml(std::slice::from_ref(&obj));
        let back = parse("prop.yaml", &yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(back, vec![obj]);
    }

    #[test]
    fn json_round_trip(svc in service()) {
        let obj = Object::Service(svc);
        let json = serde_json::to_string(&obj.to_display_value()).unwrap();
        let back = parse("prop.json", &json).map_err(|e| TestCaseError::fail(format!("{e}\n{json}")))?;
        prop_assert_eq!(back, vec![obj]);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = parse("fuzz.yaml", &text);
    }

    #[test]
    fn mutated_manifests_never_panic(svc in service(), cut in 0usize..2000, junk in "[\\[\\]{}:&*!|>'\"#, \\n-]{0,8}") {
        let yaml = to_yaml(&[Object::Service(svc)]);
        let at = yaml.char_indices().map(|(i, _)| i).nth(cut % yaml.chars().count().max(1)).unwrap_or(0);
        let mutated = format!("{}{junk}{}", &yaml[..at], &yaml[at..]);
        let _ = parse("mutated.yaml", &mutated);
    }
}

#[test]
fn labels_survive_as_maps() {
    let mut labels = BTreeMap::new();
    labels.insert("app.kubernetes.io/name".to_string(), "web".to_string());
    let y = "apiVersion: orch/v1\nkind: Service\nmetadata:\n  name: web\n  labels: {app.kubernetes.io/name: web}\nspec:\n  template: {command: [x]}\n";
    let objs = parse("l.yaml", y).unwrap();
    assert_eq!(objs[0].metadata().labels, labels);
}
