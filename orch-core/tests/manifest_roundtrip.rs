//! Property tests: every valid service, rendered as YAML (`to_yaml`) or as JSON
//! (`to_display_value`), parses back to the same object; and no input makes `parse` panic.

use std::collections::BTreeMap;
use std::time::Duration;

use orch_core::model::manifest::{parse, to_yaml};
use orch_core::model::object::{
    EnvVar, IntOrPercent, Metadata, Object, Placement, PortSpec, Protocol, PullPolicy, Resources,
    RestartPolicy, Service, ServiceSpec, Template, UpdateStrategy, DEFAULT_NAMESPACE,
};
use orch_core::model::quantity::{Cpu, Memory, Span};
use orch_core::model::validate::validate;
use proptest::prelude::*;

/// A DNS-1123 label, up to 63 characters.
fn dns_label() -> impl Strategy<Value = String> {
    "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
}

/// A label key: an optional DNS subdomain prefix and `/`, then a qualified name.
fn label_key() -> impl Strategy<Value = String> {
    (
        prop::option::of(
            "[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?){0,2}",
        ),
        "[A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?",
    )
        .prop_map(|(prefix, name)| match prefix {
            Some(p) => format!("{p}/{name}"),
            None => name,
        })
}

/// A label value, including ones YAML would read as something else unless quoted.
fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "([A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?)?",
        prop::sample::select(vec![
            "",
            "true",
            "false",
            "True",
            "yes",
            "no",
            "on",
            "off",
            "y",
            "n",
            "null",
            "Null",
            "NULL",
            "1",
            "0",
            "007",
            "1.0",
            "1e3",
            "1_000",
            "0x1F",
            "0o17",
            "inf",
            "nan",
            "0.5",
            "12.30",
            "2024-01-02",
        ])
        .prop_map(String::from),
    ]
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(label_key(), label_value(), 0..4)
}

/// Free text (no NUL): arguments, env values, annotations. Includes YAML-significant text.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\\x00]{0,16}",
        "[ -~]{0,24}",
        prop::sample::select(vec![
            "",
            " ",
            "  leading",
            "trailing  ",
            "- item",
            "key: value",
            "# comment",
            "a #b",
            "'",
            "\"",
            "\\",
            "{",
            "}",
            "[",
            "]",
            "&anchor",
            "*alias",
            "!tag",
            "%",
            "@",
            "`",
            "|",
            ">",
            "---",
            "...",
            "~",
            "null",
            "true",
            "no",
            "8080",
            "-1",
            "1e9",
            "0x10",
            "a\nb",
            "a\n",
            "\n",
            "\t",
            "tab\there",
            "é",
            "日本",
            "🦀",
            "\u{feff}x",
            "a: b: c",
        ])
        .prop_map(String::from),
    ]
}

/// A program: its first character is not blank.
fn program() -> impl Strategy<Value = String> {
    ("[!-~]", text()).prop_map(|(first, rest)| first + &rest)
}

/// A command: a program, then arguments.
fn command() -> impl Strategy<Value = Vec<String>> {
    (program(), prop::collection::vec(text(), 0..3)).prop_map(|(p, mut rest)| {
        rest.insert(0, p);
        rest
    })
}

fn env_var() -> impl Strategy<Value = EnvVar> {
    ("[-._a-zA-Z][-._a-zA-Z0-9]{0,15}", text()).prop_map(|(name, value)| EnvVar {
        name,
        value,
        value_from: None,
    })
}

/// A port name: 1 to 15 of `[a-z0-9-]` with a letter, no `--`, no `-` at either end.
fn port_name() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9]|-[a-z0-9]){0,6}"
}

/// Ports with unique names and unique fixed ports (per protocol).
fn ports() -> impl Strategy<Value = Vec<PortSpec>> {
    prop::collection::btree_map(
        port_name(),
        (
            prop::option::of(1u16..=65535),
            prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
        ),
        0..5,
    )
    .prop_map(|by_name| {
        let mut fixed = std::collections::HashSet::new();
        by_name
            .into_iter()
            .map(|(name, (port, protocol))| PortSpec {
                name,
                port: port.filter(|p| fixed.insert((protocol, *p))),
                host_port: None,
                protocol,
            })
            .collect()
    })
}

/// A valid image reference.
fn image() -> impl Strategy<Value = String> {
    concat!(
        "([a-z0-9]{1,8}\\.[a-z]{2,3}(:[0-9]{1,5})?/)?", // registry
        "[a-z0-9]([a-z0-9._-]{0,8}[a-z0-9])?(/[a-z0-9]{1,8}){0,2}", // repository
        "(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,10})?",         // tag
        "(@sha256:[0-9a-f]{64})?",                      // digest
    )
}

fn resources() -> impl Strategy<Value = Resources> {
    (
        // Millicores up to 1,000,000 cores: the most `Cpu::parse` accepts written as cores.
        prop::option::of(prop_oneof![0u64..=4_000, 0u64..=1_000_000_000]),
        // No limit (0), or at least 4Mi; up to 2^53 bytes, which `Memory::parse` (via f64)
        // reads back exactly.
        prop::option::of(prop_oneof![
            Just(0u64),
            (4u64 << 20)..=(64u64 << 30),
            (4u64 << 20)..=(1u64 << 53),
            (1u64..=(1 << 20)).prop_map(|n| n << 30),
        ]),
    )
        .prop_map(|(cpu, memory)| Resources {
            cpu: cpu.map(Cpu),
            memory: memory.map(Memory),
        })
}

fn restart_policy() -> impl Strategy<Value = RestartPolicy> {
    prop_oneof![
        Just(RestartPolicy::Always),
        Just(RestartPolicy::OnFailure),
        Just(RestartPolicy::Never),
    ]
}

fn stop_signal() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL", "TERM",
            "sigint", "SIGWINCH",
        ])
        .prop_map(String::from),
        (1u32..=64).prop_map(|n| n.to_string()),
    ]
}

/// A mount of each kind, with a valid absolute path.
fn mount() -> impl Strategy<Value = orch_core::model::object::Mount> {
    (
        "[a-z][a-z0-9]{0,8}",
        "[a-z][a-z0-9]{0,8}",
        0..4u8,
        any::<bool>(),
    )
        .prop_map(|(name, dir, kind, read_only)| {
            let mut m = orch_core::model::object::Mount {
                path: format!("/{dir}/{name}"),
                read_only,
                ..Default::default()
            };
            match kind {
                0 => m.secret = Some(name),
                1 => m.config = Some(name),
                2 => m.volume = Some(name),
                _ => m.tmpfs = true,
            }
            m
        })
}

fn template() -> impl Strategy<Value = Template> {
    (
        labels(),
        // Either an image (command optional, overriding the entrypoint) or a command.
        // Pull policy and a read-only root go with images only.
        prop_oneof![
            (
                image(),
                prop::option::of(command()),
                prop::sample::select(vec![
                    PullPolicy::IfNotPresent,
                    PullPolicy::Always,
                    PullPolicy::Never
                ]),
                any::<bool>()
            )
                .prop_map(|(i, c, p, ro)| (Some(i), c.unwrap_or_default(), p, ro)),
            command().prop_map(|c| (None, c, PullPolicy::IfNotPresent, false)),
        ],
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(env_var(), 0..4),
        prop::option::of("/[ -~]{0,20}"),
        ports(),
        resources(),
        restart_policy(),
        prop::option::of(stop_signal()),
        prop::option::of((0u64..=3_600_000).prop_map(|ms| Span(Duration::from_millis(ms)))),
    )
        .prop_map(
            |(
                labels,
                (image, command, image_pull_policy, read_only_root_filesystem),
                args,
                env,
                working_dir,
                ports,
                resources,
                restart_policy,
                stop_signal,
                stop_grace_period,
            )| Template {
                labels,
                image,
                command,
                args,
                env,
                working_dir,
                ports,
                resources,
                restart_policy,
                stop_signal,
                stop_grace_period,
                image_pull_policy,
                read_only_root_filesystem,
                host_network: false,
                restart_backoff_max: None,
                mounts: Vec::new(),
                readiness_probe: None,
                liveness_probe: None,
                startup_probe: None,
                user: None,
                capabilities: Default::default(),
                hostname: None,
                env_from: Vec::new(),
                init: Vec::new(),
            },
        )
        .prop_flat_map(|t| {
            (
                Just(t),
                prop::option::of(probe(true)),
                prop::option::of(probe(false)),
                prop::option::of(probe(false)),
                prop::collection::vec(mount(), 0..3),
            )
        })
        .prop_map(|(mut t, readiness, liveness, startup, mounts)| {
            t.mounts = mounts;
            t.readiness_probe = readiness;
            t.liveness_probe = liveness;
            t.startup_probe = startup;
            t
        })
}

/// A valid probe (a success threshold above 1 only for readiness).
fn probe(readiness: bool) -> impl Strategy<Value = orch_core::model::object::Probe> {
    use orch_core::model::object::{ExecProbe, HttpProbe, Probe, ProbePort, TcpProbe};
    let span = |lo: u64, hi: u64| {
        prop::option::of((lo..=hi).prop_map(|ms| Span(Duration::from_millis(ms))))
    };
    (
        0u8..3,
        1u16..=65535,
        "/[a-z0-9/]{0,12}",
        prop::collection::vec("[a-z0-9/-]{1,8}", 1..3),
        span(0, 60_000),
        span(100, 60_000),
        span(1, 10_000),
        prop::option::of(if readiness { 1u32..=5 } else { 1u32..=1 }),
        prop::option::of(1u32..=10),
    )
        .prop_map(
            |(which, port, path, command, initial_delay, period, timeout, succ, fail)| Probe {
                http_get: (which == 0).then_some(HttpProbe {
                    path,
                    port: ProbePort::Number(port),
                }),
                tcp_socket: (which == 1).then_some(TcpProbe {
                    port: ProbePort::Number(port),
                }),
                exec: (which == 2).then_some(ExecProbe { command }),
                grpc: None,
                initial_delay,
                period,
                timeout,
                success_threshold: succ,
                failure_threshold: fail,
            },
        )
}

fn int_or_percent() -> impl Strategy<Value = IntOrPercent> {
    prop_oneof![
        (0u32..=10).prop_map(IntOrPercent::Int),
        any::<u32>().prop_map(IntOrPercent::Int),
        (0u32..=100).prop_map(|p| IntOrPercent::Percent(format!("{p}%"))),
    ]
}

/// A valid service; `namespace` is `None` when the manifest names none.
fn service() -> impl Strategy<Value = Service> {
    (
        dns_label(),
        prop::option::of(dns_label()),
        labels(),
        prop::collection::btree_map(label_key(), text(), 0..3),
        prop_oneof![0u32..=100, 0u32..=100_000],
        template(),
        labels(),
        prop::option::of(1u32..=1000),
        prop::option::of(int_or_percent()),
        prop::option::of(int_or_percent()),
    )
        .prop_map(
            |(
                name,
                namespace,
                labels,
                annotations,
                replicas,
                template,
                node_selector,
                max_per_node,
                max_surge,
                max_unavailable,
            )| Service {
                metadata: Metadata {
                    name,
                    namespace: namespace.unwrap_or_default(),
                    labels: labels.into(),
                    annotations,
                    ..Metadata::default()
                },
                spec: ServiceSpec {
                    replicas,
                    template,
                    placement: Placement {
                        node_selector,
                        max_per_node,
                        ..Placement::default()
                    },
                    update: UpdateStrategy {
                        max_surge,
                        max_unavailable,
                        ..UpdateStrategy::default()
                    },
                    ..ServiceSpec::default()
                },
                status: Default::default(),
            },
        )
}

/// The object `parse` should return for `svc`: the default namespace filled in.
fn expected(svc: &Service) -> Object {
    let mut want = svc.clone();
    if want.metadata.namespace.is_empty() {
        want.metadata.namespace = DEFAULT_NAMESPACE.into();
    }
    Object::from(want)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_services_are_valid(svc in service()) {
        let want = expected(&svc);
        let problems = validate(&want);
        prop_assert!(problems.is_empty(), "{:?}", problems);
    }

    #[test]
    fn yaml_round_trip(svc in service()) {
        let want = expected(&svc);
        let yaml = to_yaml(&[Object::from(svc)]);
        let back = parse("prop.yaml", &yaml)
            .map_err(|e| TestCaseError::fail(format!("{e}\n--- yaml:\n{yaml}")))?;
        prop_assert_eq!(back, vec![want], "yaml:\n{}", yaml);
    }

    #[test]
    fn json_round_trip(svc in service()) {
        let want = expected(&svc);
        let json = serde_json::to_string(&Object::from(svc).to_display_value()).unwrap();
        let back = parse("prop.json", &json)
            .map_err(|e| TestCaseError::fail(format!("{e}\n--- json:\n{json}")))?;
        prop_assert_eq!(back, vec![want], "json:\n{}", json);
    }

    #[test]
    fn multi_document_yaml_round_trip(svcs in prop::collection::vec(service(), 1..4)) {
        // Distinct names, so the set is also a valid `parse_all` input.
        let svcs: Vec<Service> = svcs
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                let name = &s.metadata.name[..s.metadata.name.len().min(50)];
                s.metadata.name = format!("s{i}-{}", name.trim_end_matches('-'));
                s
            })
            .collect();
        let want: Vec<Object> = svcs.iter().map(expected).collect();
        let objs: Vec<Object> = svcs.into_iter().map(Object::from).collect();
        let yaml = to_yaml(&objs);
        let back = orch_core::model::manifest::parse_all([("prop.yaml", yaml.as_str())])
            .map_err(|e| TestCaseError::fail(format!("{e}\n--- yaml:\n{yaml}")))?;
        prop_assert_eq!(back, want, "yaml:\n{}", yaml);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,600}") {
        let _ = parse("fuzz.yaml", &text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse("fuzz.yaml", &text);
    }

    #[test]
    fn yaml_token_soup_never_panics(
        tokens in prop::collection::vec(
            prop::sample::select(vec![
                "apiVersion: orch/v1\n", "kind: Service\n", "metadata:", "spec:", "template:",
                " name: web\n", "replicas: ", "command: [x]", "[", "]", "{", "}", ",", ":", "- ",
                "\n", "  ", "&a ", "*a", "<<: *a", "!!str ", "!!binary ", "? ", "|\n", ">-\n",
                "---\n", "...\n", "%YAML 1.2\n", "\"", "'", "#", "\t", "-1", "1e9", "~", "@",
            ]),
            0..60,
        )
    ) {
        let text: String = tokens.concat();
        let _ = parse("soup.yaml", &text);
    }

    #[test]
    fn json_token_soup_never_panics(
        tokens in prop::collection::vec(
            prop::sample::select(vec![
                "{", "}", "[", "]", ",", ":", "\"apiVersion\"", "\"orch/v1\"", "\"kind\"",
                "\"Service\"", "\"List\"", "\"items\"", "\"metadata\"", "\"spec\"",
                "\"template\"", "\"command\"", "\"name\"", "\"web\"", "-1", "1e400", "null",
                "true", "\"\\u0000\"", "\"\\ud800\"",
            ]),
            0..60,
        )
    ) {
        let text = format!("{{{}", tokens.concat());
        let _ = parse("soup.json", &text);
    }
}
