//! `ports` (short `[[IP:]HOST:]CONTAINER[/PROTOCOL]` with ranges, and the long syntax) and
//! `expose`: template ports named `tcp-PORT`/`udp-PORT`, TCP published ports through the
//! service proxy (`publish`), UDP and `mode: host` ones as host ports.

use orch_core::model::object::{PortSpec, Protocol, Publish, Template};
use orch_core::model::validate::port_name;
use serde_json::Value;

use super::fields::{scalar, show, Ctx, Fields};

/// One container port with what publishes it.
struct Binding {
    container: u16,
    host: Option<u16>,
    protocol: Protocol,
    host_ip: Option<String>,
    /// `mode: host` (long syntax): a host port on the replica's node, not the service proxy.
    host_mode: bool,
    name: Option<String>,
}

impl Binding {
    /// This binding for each container port with its host port.
    fn each(&self, containers: Vec<u16>, hosts: Vec<Option<u16>>) -> Vec<Binding> {
        containers
            .into_iter()
            .zip(hosts)
            .map(|(container, host)| Binding {
                container,
                host,
                host_ip: self.host_ip.clone(),
                name: self.name.clone(),
                ..*self
            })
            .collect()
    }
}

fn protocol(ctx: &mut Ctx, path: &str, p: &str) -> Option<Protocol> {
    match p.to_ascii_lowercase().as_str() {
        "" | "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        other => {
            ctx.error(
                path,
                other,
                "orch ports are tcp or udp (sctp is not supported)",
            );
            None
        }
    }
}

/// `N` or `A-B` as the ports it covers; 0 and non-numbers are errors.
fn range(ctx: &mut Ctx, path: &str, whole: &str, s: &str) -> Option<Vec<u16>> {
    let bad = |ctx: &mut Ctx| {
        ctx.error(
            path,
            whole,
            "a port is a number from 1 to 65535 or a range A-B (e.g. \"8080:80\", \"127.0.0.1:8080:80/udp\", \"9000-9002:9000-9002\")",
        );
        None
    };
    let num = |x: &str| x.trim().parse::<u16>().ok().filter(|n| *n > 0);
    match s.split_once('-') {
        Some((a, b)) => match (num(a), num(b)) {
            (Some(a), Some(b)) if a <= b => Some((a..=b).collect()),
            _ => bad(ctx),
        },
        None => match num(s) {
            Some(n) => Some(vec![n]),
            None => bad(ctx),
        },
    }
}

/// The host port of each of `count` container ports, from `host` (a port, a range, or
/// nothing); `None` after an error.
fn hosts_for(
    ctx: &mut Ctx,
    path: &str,
    whole: &str,
    count: usize,
    host: Option<&str>,
) -> Option<Vec<Option<u16>>> {
    let Some(h) = host.filter(|h| !h.is_empty()) else {
        return Some(vec![None; count]);
    };
    let hs = range(ctx, path, whole, h)?;
    if hs.len() == count {
        Some(hs.into_iter().map(Some).collect())
    } else if count == 1 {
        ctx.warn(
            path,
            format!("a host port range for one container port: Compose takes a free one of them; orch publishes the first, {}", hs[0]),
        );
        Some(vec![Some(hs[0])])
    } else {
        ctx.error(
            path,
            whole,
            "the host and container port ranges must be the same length",
        );
        None
    }
}

fn short(ctx: &mut Ctx, path: &str, s: &str) -> Vec<Binding> {
    let (spec, proto) = match s.rsplit_once('/') {
        Some((a, p)) => (a, p),
        None => (s, "tcp"),
    };
    let Some(protocol) = protocol(ctx, path, proto) else {
        return Vec::new();
    };
    // An IPv6 host address is written in brackets.
    let (ip, rest) = match spec.strip_prefix('[') {
        Some(r) => match r.split_once("]:") {
            Some((ip, rest)) => (Some(ip.to_string()), rest),
            None => {
                ctx.error(
                    path,
                    s,
                    "an IPv6 host address is written [ADDRESS]:HOST:CONTAINER",
                );
                return Vec::new();
            }
        },
        None => (None, spec),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (ip, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [h, c]) => (None, Some(*h), *c),
        (None, [ip, h, c]) => (Some(ip.to_string()), Some(*h), *c),
        (Some(ip), [h, c]) => (Some(ip), Some(*h), *c),
        _ => {
            ctx.error(
                path,
                s,
                "a port is [[IP:]HOST:]CONTAINER[/PROTOCOL] (an IPv6 address goes in brackets)",
            );
            return Vec::new();
        }
    };
    let Some(cs) = range(ctx, path, s, container) else {
        return Vec::new();
    };
    let Some(hosts) = hosts_for(ctx, path, s, cs.len(), host) else {
        return Vec::new();
    };
    let proto = Binding {
        container: 0,
        host: None,
        protocol,
        host_ip: ip,
        host_mode: false,
        name: None,
    };
    proto.each(cs, hosts)
}

fn long(ctx: &mut Ctx, path: &str, v: &Value) -> Vec<Binding> {
    let f = Fields::of(ctx, path, v);
    let Some(target) = f.str(ctx, "target") else {
        ctx.error(
            f.at("target"),
            "",
            "must be set: the port inside the container",
        );
        return Vec::new();
    };
    let Some(cs) = range(ctx, &f.at("target"), &target, &target) else {
        return Vec::new();
    };
    let proto = f.str(ctx, "protocol").unwrap_or_default();
    let Some(protocol) = protocol(ctx, &f.at("protocol"), &proto) else {
        return Vec::new();
    };
    let published = f.str(ctx, "published");
    let Some(hosts) = hosts_for(
        ctx,
        &f.at("published"),
        published.as_deref().unwrap_or(""),
        cs.len(),
        published.as_deref(),
    ) else {
        return Vec::new();
    };
    let host_mode = match f.str(ctx, "mode").as_deref() {
        None | Some("ingress") => false,
        Some("host") => true,
        Some(other) => {
            ctx.error(f.at("mode"), other, "must be host or ingress");
            false
        }
    };
    let host_ip = f.str(ctx, "host_ip");
    let name = f.str(ctx, "name");
    if f.str(ctx, "app_protocol").is_some() {
        ctx.warn(
            f.at("app_protocol"),
            "not used by orch: connections are balanced as plain TCP",
        );
    }
    f.finish(ctx);
    let proto = Binding {
        container: 0,
        host: None,
        protocol,
        host_ip,
        host_mode,
        name,
    };
    proto.each(cs, hosts)
}

/// The template port for `container`/`protocol` (added if missing), by index.
fn template_port(
    ctx: &mut Ctx,
    path: &str,
    t: &mut Template,
    container: u16,
    protocol: Protocol,
    name: Option<&str>,
) -> usize {
    if let Some(i) = t
        .ports
        .iter()
        .position(|p| p.port == Some(container) && p.protocol == protocol)
    {
        return i;
    }
    let fallback = format!(
        "{}-{container}",
        if protocol == Protocol::Udp {
            "udp"
        } else {
            "tcp"
        }
    );
    let name = match name {
        Some(n) if port_name(n).is_ok() && !t.ports.iter().any(|p| p.name == n) => n.to_string(),
        Some(n) => {
            ctx.warn(
                format!("{path}.name"),
                format!("{n:?} cannot name an orch port (1-15 lower-case letters, digits and '-', unique): the port is named {fallback}"),
            );
            fallback
        }
        None => fallback,
    };
    t.ports.push(PortSpec {
        name,
        port: Some(container),
        host_port: None,
        protocol,
    });
    t.ports.len() - 1
}

/// `ports:` into `t.ports` and `publish`.
pub(crate) fn ports(
    ctx: &mut Ctx,
    f: &Fields<'_>,
    service: &str,
    t: &mut Template,
    publish: &mut Vec<Publish>,
) {
    let Some(v) = f.get("ports") else { return };
    let path = f.at("ports");
    let Value::Array(items) = v else {
        ctx.error(path, show(v), "must be a list of ports");
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let bindings = match item {
            Value::Object(_) => long(ctx, &ip, item),
            other => match scalar(ctx, &ip, other) {
                Some(s) => short(ctx, &ip, &s),
                None => Vec::new(),
            },
        };
        for b in bindings {
            let idx = template_port(ctx, &ip, t, b.container, b.protocol, b.name.as_deref());
            if let Some(addr) = b
                .host_ip
                .as_deref()
                .filter(|a| !matches!(*a, "" | "0.0.0.0" | "::"))
            {
                ctx.warn(
                    &ip,
                    format!("host address {addr} not honoured: orch publishes on every node's addresses"),
                );
            }
            let Some(h) = b.host else {
                if !matches!(item, Value::Object(_)) {
                    ctx.warn(
                        &ip,
                        format!("Compose publishes port {} on a random host port; orch publishes nothing for it (other services reach it as {service}:{}; write HOST:CONTAINER to publish)", b.container, b.container),
                    );
                }
                continue;
            };
            if b.protocol == Protocol::Tcp && !b.host_mode {
                if publish.iter().any(|p| p.port == h) {
                    ctx.error(&ip, h.to_string(), "this host port is published twice");
                    continue;
                }
                publish.push(Publish {
                    port: h,
                    target_port: Some(t.ports[idx].name.clone()),
                    balance: Default::default(),
                });
                continue;
            }
            if b.protocol == Protocol::Udp {
                ctx.warn(
                    &ip,
                    format!("UDP port {h} is a host port on the node each replica runs on (orch's service proxy balances TCP only)"),
                );
            }
            match t.ports[idx].host_port {
                None => t.ports[idx].host_port = Some(h),
                Some(o) if o == h => {}
                Some(o) => ctx.warn(
                    &ip,
                    format!("orch maps one host port per container port: {o} is kept, {h} is not mapped"),
                ),
            }
        }
    }
}

/// `expose:` into `t.ports`.
pub(crate) fn expose(ctx: &mut Ctx, f: &Fields<'_>, t: &mut Template) {
    let path = f.at("expose");
    for (i, s) in f.strings(ctx, "expose").into_iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let (spec, proto) = s.rsplit_once('/').unwrap_or((&s, "tcp"));
        let Some(protocol) = protocol(ctx, &ip, proto) else {
            continue;
        };
        for c in range(ctx, &ip, &s, spec).unwrap_or_default() {
            template_port(ctx, &ip, t, c, protocol, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(ports: &str) -> (Vec<PortSpec>, Vec<Publish>, usize, usize) {
        let v: Value = serde_saphyr::from_str(&format!("ports: {ports}")).unwrap();
        let mut ctx = Ctx::new("f");
        let f = Fields::of(&mut ctx, "services.web", &v);
        let mut t = Template::default();
        let mut p = Vec::new();
        super::ports(&mut ctx, &f, "web", &mut t, &mut p);
        (t.ports, p, ctx.warnings.len(), ctx.errors.len())
    }

    fn port(name: &str, port: u16, host: Option<u16>, protocol: Protocol) -> PortSpec {
        PortSpec {
            name: name.into(),
            port: Some(port),
            host_port: host,
            protocol,
        }
    }

    fn publish(port: u16, target: &str) -> Publish {
        Publish {
            port,
            target_port: Some(target.into()),
            balance: Default::default(),
        }
    }

    #[test]
    fn short_and_long_syntax() {
        let (ports, publ, w, e) = conv(
            "['8080:80', '127.0.0.1:9229:9229', 3000, '53:53/udp', '9000-9001:9000-9001', '[::1]:81:80', {target: 5000, published: '5001', name: api}, {target: 6000, published: 6000, mode: host}]",
        );
        assert_eq!(
            ports,
            [
                port("tcp-80", 80, None, Protocol::Tcp),
                port("tcp-9229", 9229, None, Protocol::Tcp),
                port("tcp-3000", 3000, None, Protocol::Tcp),
                port("udp-53", 53, Some(53), Protocol::Udp),
                port("tcp-9000", 9000, None, Protocol::Tcp),
                port("tcp-9001", 9001, None, Protocol::Tcp),
                port("api", 5000, None, Protocol::Tcp),
                port("tcp-6000", 6000, Some(6000), Protocol::Tcp),
            ]
        );
        assert_eq!(
            publ,
            [
                publish(8080, "tcp-80"),
                publish(9229, "tcp-9229"),
                publish(9000, "tcp-9000"),
                publish(9001, "tcp-9001"),
                publish(81, "tcp-80"),
                publish(5001, "api"),
            ]
        );
        // 127.0.0.1, the random host port of 3000, UDP as a host port, ::1.
        assert_eq!((w, e), (4, 0));
    }

    #[test]
    fn bad_ports_are_errors() {
        for bad in [
            "['x:80']",
            "['0:80']",
            "['80:80/sctp']",
            "['1-3:1-2']",
            "['::1:80:80']",
            "[{published: 80}]",
            "['80:80', '80:81']",
            "'80:80'",
        ] {
            let (_, _, _, e) = conv(bad);
            assert!(e >= 1, "{bad}");
        }
    }
}
