//! Kubernetes manifests as orch objects. See the README's mapping table.

use orch_core::model::manifest::ManifestErrors;

use crate::{Converted, Options};

/// Converts a text of Kubernetes documents (YAML or JSON, `---`-separated; `List` kinds
/// flattened) to orch objects and warnings. Documents with `apiVersion: orch/v1` are left to
/// the caller ([`crate::convert`]); here they are an error.
pub fn convert(source: &str, text: &str, options: &Options) -> Result<Converted, ManifestErrors> {
    let _ = (source, text, options);
    todo!("kube helper")
}
