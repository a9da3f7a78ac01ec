//! Service (as a Route), ConfigMap, Secret.

use std::collections::BTreeMap;

use base64::Engine;
use orch_core::model::object::{
    Config, LabelSelector, Metadata, Object, Route, RoutePort, RouteSpec, RouteStatus, Secret,
};
use orch_core::model::validate::dns1123_label;
use serde_json::Value;

use super::fields::{Ctx, Fields};
use super::pod::{port_ref, protocol};

/// Service spec fields orch does not honour.
const SERVICE_IGNORED: &[(&str, &str)] = &[
    (
        "sessionAffinityConfig",
        "ignored: orch has no session affinity",
    ),
    (
        "externalIPs",
        "ignored: use type NodePort; orch does not take over addresses",
    ),
    (
        "loadBalancerIP",
        "ignored: orch has no load balancer (every node listens on the node ports)",
    ),
    (
        "loadBalancerSourceRanges",
        "ignored: node ports accept every source",
    ),
    ("loadBalancerClass", "ignored: orch has no load balancer"),
    (
        "allocateLoadBalancerNodePorts",
        "ignored: node ports are always allocated",
    ),
    (
        "healthCheckNodePort",
        "ignored: orch has no load balancer health checks",
    ),
    (
        "publishNotReadyAddresses",
        "ignored: only Ready replicas are endpoints",
    ),
    ("ipFamilies", "ignored: orch's virtual IPs are IPv4"),
    ("ipFamilyPolicy", "ignored: orch's virtual IPs are IPv4"),
    ("clusterIPs", "ignored: orch assigns the virtual IP"),
    (
        "trafficDistribution",
        "ignored: every ready endpoint gets its share",
    ),
    ("externalName", "ignored"),
];

/// A Service's `spec` as a Route. Returns the route and its selector.
pub(crate) fn route(cx: &mut Ctx, metadata: Metadata, mut spec: Fields) -> Option<Object> {
    let sel_path = spec.at("selector");
    let selector = spec.str_map(cx, "selector");
    if selector.is_empty() {
        cx.error(
            &sel_path,
            "",
            "a Service must select pods by their labels (orch has no Endpoints objects to fill in by hand): give spec.selector",
        );
    }
    let kind = spec.str(cx, "type").unwrap_or_else(|| "ClusterIP".into());
    let node_ports = match kind.as_str() {
        "ClusterIP" => false,
        "NodePort" => true,
        "LoadBalancer" => {
            cx.warn(
                &spec.at("type"),
                "LoadBalancer: orch has no load balancer; every node listens on the node ports instead (as NodePort)",
            );
            true
        }
        "ExternalName" => {
            cx.error(
                &spec.at("type"),
                "\"ExternalName\"",
                "orch has no external names: supported types are ClusterIP, NodePort and LoadBalancer",
            );
            false
        }
        other => {
            cx.error(
                &spec.at("type"),
                &format!("{other:?}"),
                "must be ClusterIP, NodePort or LoadBalancer",
            );
            false
        }
    };
    let mut headless = false;
    if let Some(ip) = spec.str(cx, "clusterIP") {
        if ip == "None" {
            headless = true;
        } else if !ip.is_empty() {
            cx.warn(
                &spec.at("clusterIP"),
                format!("{ip}: orch assigns the virtual IP from its service range"),
            );
        }
    }
    if headless && node_ports {
        cx.error(
            &spec.at("clusterIP"),
            "\"None\"",
            "a headless Service (clusterIP: None) has no node ports: use type ClusterIP",
        );
    }
    let mut ports = Vec::new();
    for (p, v) in spec.list(cx, "ports") {
        if let Some(port) = route_port(cx, v, &p, node_ports) {
            ports.push(port);
        }
    }
    if ports.len() > 1 {
        for (i, port) in ports.iter().enumerate() {
            if port.name.is_empty() {
                cx.error(
                    &format!("{}[{i}].name", spec.at("ports")),
                    "",
                    "a Service with several ports must name each one",
                );
            }
        }
    }
    if ports.is_empty() && !headless {
        cx.error(
            &spec.at("ports"),
            "",
            "a Service with a virtual IP needs at least one port (or clusterIP: None)",
        );
    }
    if let Some(a) = spec.str(cx, "sessionAffinity") {
        if a != "None" {
            cx.warn(
                &spec.at("sessionAffinity"),
                format!(
                    "{a}: orch has no session affinity; each connection goes to any ready endpoint"
                ),
            );
        }
    }
    for key in ["externalTrafficPolicy", "internalTrafficPolicy"] {
        if let Some(p) = spec.str(cx, key) {
            if p != "Cluster" {
                cx.warn(
                    &spec.at(key),
                    format!(
                        "{p}: orch balances over every ready endpoint of the cluster (Cluster)"
                    ),
                );
            }
        }
    }
    spec.ignore_all(cx, SERVICE_IGNORED);
    spec.finish(cx);
    Some(Object::from(Route {
        metadata,
        spec: RouteSpec {
            selector: LabelSelector {
                match_labels: selector,
                match_expressions: Vec::new(),
            },
            ports,
            headless,
            node_ports,
        },
        status: RouteStatus::default(),
    }))
}

fn route_port(cx: &mut Ctx, v: &Value, path: &str, node_ports: bool) -> Option<RoutePort> {
    let mut f = Fields::new(cx, v, path);
    let name = f.str(cx, "name").unwrap_or_default();
    if !name.is_empty() {
        // Kubernetes names a Service's ports with DNS-1123 labels (a container's ports with
        // IANA service names, as targetPort does).
        if let Err(m) = dns1123_label(&name) {
            cx.error(&f.at("name"), &format!("{name:?}"), m);
        }
    }
    let port = f.int(cx, "port", 1, 65535);
    if port.is_none() && !f.has("port") {
        cx.error(
            &f.at("port"),
            "",
            "every port needs a port number (1 to 65535)",
        );
    }
    let target_port = port_ref(cx, &mut f, "targetPort", false);
    let protocol = protocol(cx, &mut f);
    let node_port = f.int(cx, "nodePort", 0, 65535).map(|n| n as u16);
    if let Some(n) = node_port {
        if !node_ports {
            cx.error(
                &f.at("nodePort"),
                &n.to_string(),
                "is only used with type NodePort or LoadBalancer",
            );
        } else if !(30000..=32767).contains(&n) {
            cx.error(
                &f.at("nodePort"),
                &n.to_string(),
                "must be from 30000 to 32767",
            );
        }
    }
    f.ignore(
        cx,
        "appProtocol",
        "ignored: orch balances connections whatever they carry",
    );
    f.finish(cx);
    Some(RoutePort {
        name,
        port: port? as u16,
        target_port,
        protocol,
        node_port: node_port.filter(|_| node_ports),
    })
}

/// A ConfigMap as a Config.
pub(crate) fn config(cx: &mut Ctx, metadata: Metadata, root: &mut Fields) -> Option<Object> {
    let data = root.str_map(cx, "data");
    root.ignore(
        cx,
        "binaryData",
        "ignored: orch configs hold text; put binary values in a Secret's data (base64) if they are UTF-8, or in an image",
    );
    root.ignore(
        cx,
        "immutable",
        "ignored: orch configs can always change (and roll the services that use them)",
    );
    Some(Object::from(Config { metadata, data }))
}

/// A Secret as a Secret: `data` base64-decoded (must be UTF-8), `stringData` winning.
pub(crate) fn secret(cx: &mut Ctx, metadata: Metadata, root: &mut Fields) -> Option<Object> {
    let mut data = BTreeMap::new();
    let data_path = root.at("data");
    for (k, v) in root.str_map(cx, "data") {
        let path = format!("{data_path}[{k:?}]");
        let cleaned: String = v.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        match base64::engine::general_purpose::STANDARD.decode(cleaned.as_bytes()) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(s) => {
                    data.insert(k, s);
                }
                Err(_) => cx.error(
                    &path,
                    "(binary)",
                    "decodes to bytes that are not UTF-8 text: orch secrets hold text (encode binary values, e.g. base64 them once more, and decode them in the workload)",
                ),
            },
            Err(e) => cx.error(
                &path,
                &format!("{v:?}"),
                format!("is not valid base64 ({e}): data values are base64 (use stringData for plain text)"),
            ),
        }
    }
    for (k, v) in root.str_map(cx, "stringData") {
        data.insert(k, v);
    }
    if let Some(t) = root.str(cx, "type") {
        if t != "Opaque" {
            cx.warn(
                &root.at("type"),
                format!("{t}: orch keeps the keys as an ordinary secret (it does not use it for image pulls, TLS or service accounts)"),
            );
        }
    }
    root.ignore(
        cx,
        "immutable",
        "ignored: orch secrets can always change (and roll the services that use them)",
    );
    Some(Object::from(Secret { metadata, data }))
}
