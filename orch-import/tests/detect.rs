//! `orch_import::detect` and `orch_import::convert`: which parser a text goes to, orch
//! documents mixed with Kubernetes ones (numbered as in the file), namespaces, validation and
//! `strict`.

use orch_import::{convert, detect, Format, Options};

const ORCH_SERVICE: &str = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  replicas: 1\n  template:\n    command: [sleep, '100']\n";
const ORCH_CONFIG: &str =
    "apiVersion: orch/v1\nkind: Config\nmetadata: {name: settings, namespace: prod}\ndata: {a: b}\n";
const KUBE_CONFIGMAP: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: colours}\ndata: {sky: blue}\n";
const COMPOSE: &str = "services:\n  web:\n    image: nginx\n";

#[test]
fn detect_tells_orch_kubernetes_and_compose_apart() {
    assert_eq!(detect(ORCH_SERVICE), Format::Orch);
    assert_eq!(
        detect(&format!("{ORCH_SERVICE}---\n{ORCH_CONFIG}")),
        Format::Orch
    );
    assert_eq!(detect(KUBE_CONFIGMAP), Format::Kubernetes);
    assert_eq!(
        detect(&format!("{ORCH_SERVICE}---\n{KUBE_CONFIGMAP}")),
        Format::Kubernetes
    );
    assert_eq!(detect(COMPOSE), Format::Compose);
    assert_eq!(
        detect("{\"services\": {\"web\": {\"image\": \"nginx\"}}}"),
        Format::Compose
    );
    // `services` with an apiVersion is not Compose; two documents are not one Compose file.
    assert_eq!(
        detect("apiVersion: v1\nkind: List\nservices: {}\n"),
        Format::Kubernetes
    );
    assert_eq!(
        detect(&format!("{COMPOSE}---\n{ORCH_SERVICE}")),
        Format::Orch
    );
    // Nothing, garbage and a document without apiVersion go to orch's parser, which says why.
    assert_eq!(detect(""), Format::Orch);
    assert_eq!(detect(": : :\n  - ["), Format::Orch);
    assert_eq!(detect("kind: Service\n"), Format::Orch);
}

#[test]
fn orch_manifests_convert_as_orch_parses_them_with_origins() {
    let text = format!("{ORCH_SERVICE}---\n{ORCH_CONFIG}");
    let out = convert("app.yaml", &text, &Options::default()).unwrap();
    assert_eq!(
        out.objects,
        orch_core::model::manifest::parse("app.yaml", &text).unwrap()
    );
    let origins: Vec<_> = out
        .origins
        .iter()
        .map(|o| (o.source.as_str(), o.document, o.what.as_str()))
        .collect();
    assert_eq!(
        origins,
        [
            ("app.yaml", 1, "Service/web"),
            ("app.yaml", 2, "Config/settings")
        ]
    );
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
}

#[test]
fn the_namespace_option_fills_documents_that_name_none() {
    let text = format!("{ORCH_SERVICE}---\n{ORCH_CONFIG}");
    let options = Options {
        namespace: Some("dev".into()),
        ..Default::default()
    };
    let out = convert("app.yaml", &text, &options).unwrap();
    let ns: Vec<_> = out
        .objects
        .iter()
        .map(|o| o.metadata().namespace.as_str())
        .collect();
    assert_eq!(ns, ["dev", "prod"]);
    let bad = Options {
        namespace: Some("Not_A_Name".into()),
        ..Default::default()
    };
    let e = convert("app.yaml", ORCH_SERVICE, &bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "app.yaml: document 1: Service/web (as orch service/web): metadata.namespace"
        ),
        "{e}"
    );
}

#[test]
fn errors_name_the_file_and_document_and_strict_makes_warnings_errors() {
    let broken = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  replicas: -1\n  template: {command: [x]}\n";
    let text = format!("{ORCH_CONFIG}---\n{broken}");
    let e = convert("app.yaml", &text, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("app.yaml: document 2: spec.replicas"), "{e}");

    let with_status = format!("{ORCH_CONFIG}---\n{ORCH_SERVICE}status: {{readyReplicas: 3}}\n");
    let out = convert("app.yaml", &with_status, &Options::default()).unwrap();
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert_eq!(
        (out.warnings[0].document, out.warnings[0].path.as_str()),
        (2, "status")
    );
    let strict = Options {
        strict: true,
        ..Default::default()
    };
    let e = convert("app.yaml", &with_status, &strict)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "app.yaml: document 2: status: ignored: set by orch, not by manifests (strict: every warning is an error)"
    );
    // A text that does not parse names the file (and the line).
    let e = convert("app.yaml", "a: [", &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("app.yaml: "), "{e}");
}

#[test]
fn orch_and_kubernetes_documents_mix_in_one_file_numbered_as_written() {
    let text = format!("{KUBE_CONFIGMAP}---\n{ORCH_SERVICE}---\n{KUBE_CONFIGMAP}")
        .replacen("colours", "paints", 1);
    let out = convert("mixed.yaml", &text, &Options::default()).unwrap();
    let got: Vec<_> = out
        .objects
        .iter()
        .zip(&out.origins)
        .map(|(o, origin)| (o.display_name(), origin.document))
        .collect();
    assert_eq!(
        got,
        [
            ("config/paints".to_string(), 1),
            ("service/web".to_string(), 2),
            ("config/colours".to_string(), 3)
        ]
    );
    // An error in a Kubernetes document after an orch one names its place in the file.
    let bad =
        format!("{ORCH_SERVICE}---\napiVersion: v1\nkind: Frobnicator\nmetadata: {{name: x}}\n");
    let e = convert("mixed.yaml", &bad, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("mixed.yaml: document 2"), "{e}");
    assert!(e.contains("Frobnicator"), "{e}");
}

#[test]
fn a_compose_file_goes_to_the_compose_converter() {
    let options = Options {
        project: Some("shop".into()),
        ..Default::default()
    };
    let out = convert("compose.yaml", COMPOSE, &options).unwrap();
    let web = out
        .objects
        .iter()
        .find(|o| o.display_name() == "service/web")
        .expect("service web");
    assert_eq!(web.metadata().namespace, "shop");
    assert_eq!(
        web.metadata()
            .labels
            .get(orch_import::COMPOSE_PROJECT_LABEL)
            .map(String::as_str),
        Some("shop")
    );
}

mod never_panics {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any text of orch-looking documents: an answer, never a panic.
        #[test]
        fn convert_of_orch_like_text(text in "(apiVersion: orch/v1\n|kind: (Service|Config)\n|metadata: \\{name: [a-z]{1,5}\\}\n|---\n|data: \\{[a-z]: [a-z]\\}\n|spec: [a-z0-9{}:, ]{0,10}\n){0,8}") {
            let _ = orch_import::detect(&text);
            let _ = orch_import::convert("p.yaml", &text, &orch_import::Options::default());
        }
    }
}

/// What an importer sends: orch YAML that parses back to the same objects, warning-free.
#[test]
fn manifest_yaml_round_trips_without_warnings() {
    let text = format!("{ORCH_SERVICE}---\n{ORCH_CONFIG}");
    let objs = orch_core::model::manifest::parse("a", &text).unwrap();
    let yaml = orch_core::model::manifest::to_manifest_yaml(&objs);
    assert!(!yaml.contains("status"), "{yaml}");
    let back = orch_core::model::manifest::parse_with_warnings("a", &yaml).unwrap();
    assert!(back.warnings.is_empty(), "{:?}", back.warnings);
    assert_eq!(back.objects, objs);
}

/// Several files as one input: a Kubernetes Service in one file selects the Deployment of
/// another (no "selects nothing" warning), objects come in file then document order, and an
/// orch file mixes in.
#[test]
fn convert_all_checks_selectors_across_files_in_file_order() {
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: db}\nspec:\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec:\n      containers: [{name: db, image: postgres, ports: [{containerPort: 5432}]}]\n";
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  selector: {app: db}\n  ports: [{port: 5432}]\n";
    let files = [
        ("db-service.yaml", service),
        ("app.yaml", ORCH_SERVICE),
        ("db-deployment.yaml", deployment),
    ];
    let out = orch_import::convert_all(&files, &Options::default()).unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let got: Vec<_> = out
        .objects
        .iter()
        .zip(&out.origins)
        .map(|(o, origin)| (origin.source.as_str(), o.display_name()))
        .collect();
    assert_eq!(
        got,
        [
            ("db-service.yaml", "route/db".to_string()),
            ("app.yaml", "service/web".to_string()),
            ("db-deployment.yaml", "service/db".to_string())
        ]
    );
    // Alone, the Service selects nothing in its input: said so.
    let alone = convert("db-service.yaml", service, &Options::default()).unwrap();
    assert!(
        alone.warnings.iter().any(|w| w.path == "spec.selector"),
        "{:?}",
        alone.warnings
    );
}
