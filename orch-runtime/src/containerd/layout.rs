//! Reading an OCI image layout tarball (`skopeo copy ... oci-archive:FILE`, or a layout
//! directory packed with `tar`) for nodes without a registry: `orchctl image import FILE.tar`.

use std::path::{Component, Path};

use serde_json::Value;
use sha2::Digest;

use super::{Blob, ImageLayer, ImageParts};

/// The most an archive may unpack to.
pub const MAX_ARCHIVE_BYTES: u64 = 8 << 30;

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn hex_of(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Unpacks the OCI layout in `archive` into `dir` and returns its image, named `name`: the
/// manifest whose `org.opencontainers.image.ref.name` is `name`, else the only one (an index
/// resolved to linux and `arch`). Without `name` the image is named by its ref name. Every
/// blob is checked against its digest. Errors name the archive and what is wrong with it.
pub fn read_oci_archive(
    archive: &Path,
    dir: &Path,
    name: Option<&str>,
    arch: &str,
) -> Result<ImageParts, String> {
    let at = |what: String| format!("{}: {what}", archive.display());
    let file = std::fs::File::open(archive).map_err(|e| at(e.to_string()))?;
    let mut tar = tar::Archive::new(file);
    let mut total = 0u64;
    for entry in tar
        .entries()
        .map_err(|e| at(format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| at(format!("damaged tar archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| at(format!("bad entry name: {e}")))?
            .into_owned();
        let plain = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !plain {
            return Err(at(format!(
                "entry {:?} leaves the archive (absolute or `..` paths are refused)",
                path.display().to_string()
            )));
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(at(format!(
                "entry {:?} is a {kind:?}: an image layout holds only files and directories",
                path.display().to_string()
            )));
        }
        total += entry.size();
        if total > MAX_ARCHIVE_BYTES {
            return Err(at(format!(
                "unpacks to more than {MAX_ARCHIVE_BYTES} bytes"
            )));
        }
        entry
            .unpack_in(dir)
            .map_err(|e| at(format!("cannot unpack {}: {e}", path.display())))?;
    }
    let read = |rel: &str| -> Result<Vec<u8>, String> {
        std::fs::read(dir.join(rel)).map_err(|e| at(format!("{rel}: {e}")))
    };
    let layout: Value =
        serde_json::from_slice(&read("oci-layout")?).map_err(|e| at(format!("oci-layout: {e}")))?;
    if layout["imageLayoutVersion"].as_str().is_none() {
        return Err(at(
            "oci-layout: no imageLayoutVersion: not an OCI image layout".into(),
        ));
    }
    let index: Value =
        serde_json::from_slice(&read("index.json")?).map_err(|e| at(format!("index.json: {e}")))?;
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    fn named(m: &Value) -> Option<&str> {
        m["annotations"][REF_NAME].as_str()
    }
    let chosen = match name.and_then(|n| entries.iter().find(|m| named(m) == Some(n))) {
        Some(m) => m,
        None if entries.len() == 1 => &entries[0],
        None => {
            return Err(at(format!(
                "holds {} images: name the one to import by its ref name ({})",
                entries.len(),
                entries
                    .iter()
                    .filter_map(named)
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    let ref_name = name
        .map(String::from)
        .or_else(|| named(chosen).map(String::from))
        .unwrap_or_else(|| "imported".into());
    let blob = |d: &Value, what: &str| -> Result<Blob, String> {
        let (Some(media_type), Some(digest), Some(size)) = (
            d["mediaType"].as_str(),
            d["digest"].as_str(),
            d["size"].as_u64(),
        ) else {
            return Err(at(format!(
                "{what}: a descriptor lacks mediaType, digest or size"
            )));
        };
        let hex =
            hex_of(digest).ok_or_else(|| at(format!("{what}: digest {digest:?} is not sha256")))?;
        let path = dir.join("blobs").join("sha256").join(hex);
        let bytes = std::fs::read(&path).map_err(|e| at(format!("{what} {digest}: {e}")))?;
        let actual = format!("sha256:{:x}", sha2::Sha256::digest(&bytes));
        if actual != digest || bytes.len() as u64 != size {
            return Err(at(format!(
                "{what} {digest}: the blob's bytes hash to {actual} ({} bytes, {size} expected)",
                bytes.len()
            )));
        }
        Ok(Blob {
            media_type: media_type.into(),
            digest: digest.into(),
            size: size as i64,
            path,
        })
    };
    let mut manifest_blob = blob(chosen, "manifest")?;
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_blob.path).unwrap_or_default())
            .map_err(|e| at(format!("manifest: {e}")))?;
    if let Some(list) = manifest["manifests"].as_array().cloned() {
        let pick = list
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
            .ok_or_else(|| at(format!("the image index has no manifest for linux/{arch}")))?;
        manifest_blob = blob(pick, "manifest")?;
        manifest = serde_json::from_slice(&std::fs::read(&manifest_blob.path).unwrap_or_default())
            .map_err(|e| at(format!("manifest: {e}")))?;
    }
    let config = blob(&manifest["config"], "config")?;
    let config_doc: Value =
        serde_json::from_slice(&std::fs::read(&config.path).unwrap_or_default())
            .map_err(|e| at(format!("config: {e}")))?;
    let pairs = super::image::layers_with_diff_ids(&manifest, &config_doc).map_err(at)?;
    let layers = pairs
        .into_iter()
        .map(|(l, diff_id)| {
            Ok(ImageLayer {
                blob: blob(&l, "layer")?,
                diff_id,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ImageParts {
        name: ref_name,
        manifest: manifest_blob,
        config,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive_with(dir: &Path, entries: &[(&str, &[u8])]) -> std::path::PathBuf {
        let path = dir.join("a.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // Written raw so that hostile names reach the reader as they are.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.finish().unwrap();
        path
    }

    #[test]
    fn hostile_or_broken_archives_are_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let a = archive_with(tmp.path(), &[("../escape", b"x")]);
        let e = read_oci_archive(&a, &out, None, "amd64").unwrap_err();
        assert!(
            e.contains("a.tar") && e.contains("leaves the archive"),
            "{e}"
        );
        assert!(!tmp.path().join("escape").exists());

        let a = archive_with(tmp.path(), &[("index.json", b"{}")]);
        let e = read_oci_archive(&a, &out, None, "amd64").unwrap_err();
        assert!(e.contains("oci-layout"), "{e}");

        std::fs::write(tmp.path().join("junk.tar"), b"not a tar at all, just text").unwrap();
        let e = read_oci_archive(&tmp.path().join("junk.tar"), &out, None, "amd64").unwrap_err();
        assert!(e.contains("junk.tar"), "{e}");
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let fake = format!("sha256:{}", "0".repeat(64));
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{fake}","size":2}}]}}"#
        );
        let blob_path = format!("blobs/sha256/{}", "0".repeat(64));
        let a = archive_with(
            tmp.path(),
            &[
                ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
                ("index.json", index.as_bytes()),
                (blob_path.as_str(), b"{}"),
            ],
        );
        let e = read_oci_archive(&a, &out, None, "amd64").unwrap_err();
        assert!(e.contains(&fake) && e.contains("hash to"), "{e}");
    }
}
