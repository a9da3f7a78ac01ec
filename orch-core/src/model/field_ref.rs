//! The replica fields a `valueFrom.field` can name (Kubernetes' `fieldRef` paths), parsed once
//! for validation and for the agent that fills them in.

/// A field of a replica a variable can take its value from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldRef {
    /// `metadata.name`: the replica's name.
    Name,
    /// `metadata.namespace`.
    Namespace,
    /// `metadata.uid`.
    Uid,
    /// `metadata.labels['KEY']`: a label of the replica (empty when it has none).
    Label(String),
    /// `metadata.annotations['KEY']`.
    Annotation(String),
    /// `spec.nodeName`: the node it runs on.
    NodeName,
    /// `status.hostIP`: the node's address.
    HostIp,
    /// `status.podIP`: the replica's own address, else the node's.
    PodIp,
}

/// The paths [`FieldRef::parse`] accepts, for error messages.
pub const FIELD_PATHS: &str = "metadata.name, metadata.namespace, metadata.uid, \
    metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, status.hostIP, \
    status.podIP";

impl FieldRef {
    /// Parses a field path (`metadata.labels['app']`); an error says what is accepted.
    pub fn parse(path: &str) -> Result<FieldRef, String> {
        let keyed = |prefix: &str| -> Option<String> {
            let rest = path
                .strip_prefix(prefix)?
                .strip_prefix('[')?
                .strip_suffix(']')?;
            let key = rest
                .strip_prefix('\'')
                .and_then(|k| k.strip_suffix('\''))
                .or_else(|| rest.strip_prefix('"').and_then(|k| k.strip_suffix('"')))?;
            (!key.is_empty()).then(|| key.to_string())
        };
        Ok(match path {
            "metadata.name" => FieldRef::Name,
            "metadata.namespace" => FieldRef::Namespace,
            "metadata.uid" => FieldRef::Uid,
            "spec.nodeName" => FieldRef::NodeName,
            "status.hostIP" => FieldRef::HostIp,
            "status.podIP" | "status.podIPs" => FieldRef::PodIp,
            _ => {
                if let Some(k) = keyed("metadata.labels") {
                    FieldRef::Label(k)
                } else if let Some(k) = keyed("metadata.annotations") {
                    FieldRef::Annotation(k)
                } else {
                    return Err(format!(
                        "not a field orch fills in; use one of {FIELD_PATHS}"
                    ));
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, expect: Result<FieldRef, ()>) {
        assert_eq!(FieldRef::parse(path).map_err(|_| ()), expect, "{path}");
    }

    #[test]
    fn parses_kubernetes_field_paths() {
        check("metadata.name", Ok(FieldRef::Name));
        check("metadata.namespace", Ok(FieldRef::Namespace));
        check("metadata.uid", Ok(FieldRef::Uid));
        check("spec.nodeName", Ok(FieldRef::NodeName));
        check("status.hostIP", Ok(FieldRef::HostIp));
        check("status.podIP", Ok(FieldRef::PodIp));
        check("metadata.labels['app']", Ok(FieldRef::Label("app".into())));
        check(
            "metadata.labels[\"orch/service\"]",
            Ok(FieldRef::Label("orch/service".into())),
        );
        check(
            "metadata.annotations['a.b/c']",
            Ok(FieldRef::Annotation("a.b/c".into())),
        );
        check("metadata.labels", Err(()));
        check("metadata.labels['']", Err(()));
        check("metadata.labels[app]", Err(()));
        check("spec.serviceAccountName", Err(()));
        check("", Err(()));
    }
}
