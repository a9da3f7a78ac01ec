//! Images in containerd, done client-side as `ctr` does (containerd 1.6 has no transfer
//! service): blobs are written into the content store, the layers are unpacked into committed
//! snapshots through the diff service, and the image is recorded under its name. Everything is
//! done under a lease, so containerd's garbage collector cannot take half an import; what
//! keeps the result alive afterwards are the image record and the content's `gc.ref` labels.

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, ListSnapshotsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteImageRequest, DeleteRequest as DeleteLeaseRequest,
    Image, InfoRequest, UpdateImageRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::{Code, Request};
use containerd_client::types::{Descriptor, Mount};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::{call_error, Containerd, ContainerdError};

/// The platform's architecture as OCI names it.
pub(super) fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// Bytes per content write message (containerd's gRPC limit is 16 MiB).
const CHUNK: usize = 1 << 20;

/// One blob of an image, in a file on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// Its media type.
    pub media_type: String,
    /// `sha256:...`.
    pub digest: String,
    /// Its size in bytes.
    pub size: i64,
    /// Where its bytes are.
    pub path: PathBuf,
}

impl Blob {
    fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: HashMap::new(),
        }
    }
}

/// A layer: its blob and the digest of its uncompressed tar (the config's `diff_ids`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLayer {
    /// The (usually compressed) layer blob.
    pub blob: Blob,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
}

/// An image resolved to this platform: its manifest, config and layers, base first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageParts {
    /// The name it is recorded under (`registry/name:tag`).
    pub name: String,
    /// The platform's manifest.
    pub manifest: Blob,
    /// The image config.
    pub config: Blob,
    /// The layers, base first.
    pub layers: Vec<ImageLayer>,
}

/// An image whose layers are unpacked, ready for containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnpackedImage {
    /// Its name.
    pub name: String,
    /// The snapshotter that holds its layers.
    pub snapshotter: String,
    /// The chain id of its top layer: the parent of each container's snapshot.
    pub chain_id: String,
}

/// The chain ids of layers with these diff ids (OCI image spec: the first is its diff id,
/// each next one is `sha256(previous + " " + diff_id)`).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    use sha2::Digest;
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{:x}",
                sha2::Sha256::digest(format!("{prev} {d}").as_bytes())
            ),
        };
        out.push(next);
    }
    out
}

/// The layer descriptors of an image manifest, with the diff ids its config lists for them;
/// an error when the two do not pair up.
pub(super) fn layers_with_diff_ids(
    manifest: &serde_json::Value,
    config: &serde_json::Value,
) -> Result<Vec<(serde_json::Value, String)>, String> {
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    if layers.is_empty() || layers.len() != diff_ids.len() {
        return Err(format!(
            "{} layers but {} diff ids in the config",
            layers.len(),
            diff_ids.len()
        ));
    }
    Ok(layers.into_iter().zip(diff_ids).collect())
}

impl Containerd {
    fn leased<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut r = self.req(msg);
        if let Ok(v) = lease.parse() {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    /// Imports an image: writes its blobs into the content store (those already there are
    /// skipped), unpacks its layers into `snapshotter` (`overlayfs`, or `native` where overlay
    /// mounts are not possible) and records it under its name.
    pub async fn import(
        &self,
        image: &ImageParts,
        snapshotter: &str,
    ) -> Result<UnpackedImage, ContainerdError> {
        let lease = format!("orch-import-{}", uuid_like());
        let mut labels = HashMap::new();
        // Should orch die mid-import, containerd drops the lease (and what only it held) later.
        labels.insert("containerd.io/gc.expire".to_string(), expire_in_one_hour());
        LeasesClient::new(self.channel.clone())
            .create(self.req(containerd_client::services::v1::CreateRequest {
                id: lease.clone(),
                labels,
            }))
            .await
            .map_err(call_error("create lease", &image.name))?;
        let result = self.import_leased(image, snapshotter, &lease).await;
        let _ = LeasesClient::new(self.channel.clone())
            .delete(self.req(DeleteLeaseRequest {
                id: lease,
                sync: false,
            }))
            .await;
        result
    }

    async fn import_leased(
        &self,
        image: &ImageParts,
        snapshotter: &str,
        lease: &str,
    ) -> Result<UnpackedImage, ContainerdError> {
        let diff_ids: Vec<String> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
        let chains = chain_ids(&diff_ids);
        let top = chains
            .last()
            .cloned()
            .ok_or_else(|| ContainerdError::Spec {
                id: image.name.clone(),
                message: "the image has no layers".into(),
            })?;
        for l in &image.layers {
            self.write_blob(&l.blob, HashMap::new(), lease).await?;
        }
        // The config keeps the unpacked snapshot alive; the manifest keeps config and layers.
        let config_labels = HashMap::from([(
            format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
            top.clone(),
        )]);
        self.write_blob(&image.config, config_labels, lease).await?;
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            image.config.digest.clone(),
        )]);
        for (i, l) in image.layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.blob.digest.clone(),
            );
        }
        self.write_blob(&image.manifest, manifest_labels, lease)
            .await?;
        let mut parent = String::new();
        for (layer, chain) in image.layers.iter().zip(&chains) {
            self.unpack_layer(snapshotter, layer, chain, &parent, lease)
                .await?;
            parent = chain.clone();
        }
        let record = Image {
            name: image.name.clone(),
            target: Some(image.manifest.descriptor()),
            ..Image::default()
        };
        let mut images = ImagesClient::new(self.channel.clone());
        match images
            .create(self.leased(
                CreateImageRequest {
                    image: Some(record.clone()),
                    source_date_epoch: None,
                },
                lease,
            ))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {
                images
                    .update(self.leased(
                        UpdateImageRequest {
                            image: Some(record),
                            update_mask: None,
                            source_date_epoch: None,
                        },
                        lease,
                    ))
                    .await
                    .map_err(call_error("update image", &image.name))?;
            }
            Err(s) => return Err(call_error("create image", &image.name)(s)),
        }
        Ok(UnpackedImage {
            name: image.name.clone(),
            snapshotter: snapshotter.into(),
            chain_id: top,
        })
    }

    /// Whether the content store has `digest`.
    async fn has_blob(&self, digest: &str) -> Result<bool, ContainerdError> {
        match ContentClient::new(self.channel.clone())
            .info(self.req(InfoRequest {
                digest: digest.into(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(call_error("content info", digest)(s)),
        }
    }

    /// Streams a blob into the content store; containerd verifies the digest and size at
    /// commit (a mismatch fails the import, naming the digest).
    async fn write_blob(
        &self,
        blob: &Blob,
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<(), ContainerdError> {
        if self.has_blob(&blob.digest).await? && labels.is_empty() {
            return Ok(());
        }
        let io = |e: std::io::Error| ContainerdError::Spec {
            id: blob.digest.clone(),
            message: format!("{}: {e}", blob.path.display()),
        };
        let mut file = tokio::fs::File::open(&blob.path).await.map_err(io)?;
        let mut messages = Vec::new();
        let mut offset = 0i64;
        let reference = format!("orch-{}", blob.digest);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = file.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            messages.push(WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                total: blob.size,
                expected: blob.digest.clone(),
                offset,
                data: buf,
                labels: HashMap::new(),
            });
            offset += n as i64;
        }
        messages.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference,
            total: blob.size,
            expected: blob.digest.clone(),
            offset,
            data: Vec::new(),
            labels,
        });
        let stream = futures::stream::iter(messages);
        let mut responses = match ContentClient::new(self.channel.clone())
            .write(self.leased(stream, lease))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(call_error("write content", &blob.digest)(s)),
        };
        while let Some(r) = responses.next().await {
            match r {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(call_error("write content", &blob.digest)(s)),
            }
        }
        Ok(())
    }

    async fn snapshot_exists(&self, snapshotter: &str, key: &str) -> Result<bool, ContainerdError> {
        match SnapshotsClient::new(self.channel.clone())
            .stat(self.req(StatSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: key.into(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(call_error("stat snapshot", key)(s)),
        }
    }

    async fn unpack_layer(
        &self,
        snapshotter: &str,
        layer: &ImageLayer,
        chain: &str,
        parent: &str,
        lease: &str,
    ) -> Result<(), ContainerdError> {
        if self.snapshot_exists(snapshotter, chain).await? {
            return Ok(());
        }
        let key = format!("orch-extract-{}-{chain}", uuid_like());
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mounts = snapshots
            .prepare(self.leased(
                PrepareSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: key.clone(),
                    parent: parent.into(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
            .map_err(call_error("prepare snapshot", chain))?
            .into_inner()
            .mounts;
        let applied = DiffClient::new(self.channel.clone())
            .apply(self.leased(
                ApplyRequest {
                    diff: Some(layer.blob.descriptor()),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                lease,
            ))
            .await;
        let applied = match applied {
            Ok(r) => r.into_inner().applied,
            Err(s) => {
                self.remove_snapshot(snapshotter, &key).await.ok();
                return Err(call_error("apply layer", &layer.blob.digest)(s));
            }
        };
        if let Some(d) = applied.filter(|d| d.digest != layer.diff_id) {
            self.remove_snapshot(snapshotter, &key).await.ok();
            return Err(ContainerdError::Spec {
                id: layer.blob.digest.clone(),
                message: format!(
                    "layer unpacked to {} but the image config says {}",
                    d.digest, layer.diff_id
                ),
            });
        }
        match snapshots
            .commit(self.leased(
                CommitSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    name: chain.into(),
                    key: key.clone(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
        {
            Ok(_) => Ok(()),
            // Another import committed the same layer meanwhile.
            Err(s) if s.code() == Code::AlreadyExists => {
                self.remove_snapshot(snapshotter, &key).await.ok();
                Ok(())
            }
            Err(s) => Err(call_error("commit snapshot", chain)(s)),
        }
    }

    /// A writable snapshot `key` on top of `parent`; the mounts of the container's root.
    pub(super) async fn prepare_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
    ) -> Result<Vec<Mount>, ContainerdError> {
        let r = SnapshotsClient::new(self.channel.clone())
            .prepare(self.req(PrepareSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: key.into(),
                parent: parent.into(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(call_error("prepare snapshot", key))?;
        Ok(r.into_inner().mounts)
    }

    /// Removes a snapshot; a missing one is not an error.
    pub(super) async fn remove_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Result<(), ContainerdError> {
        match SnapshotsClient::new(self.channel.clone())
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: key.into(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(call_error("remove snapshot", key)(s)),
        }
    }

    /// Keys of the snapshots `snapshotter` holds in the namespace (layers and containers').
    pub async fn snapshots(&self, snapshotter: &str) -> Result<Vec<String>, ContainerdError> {
        let mut stream = SnapshotsClient::new(self.channel.clone())
            .list(self.req(ListSnapshotsRequest {
                snapshotter: snapshotter.into(),
                filters: vec![],
            }))
            .await
            .map_err(call_error("list snapshots", ""))?
            .into_inner();
        let mut keys = Vec::new();
        while let Some(r) = stream.next().await {
            let r = r.map_err(call_error("list snapshots", ""))?;
            keys.extend(r.info.into_iter().map(|i| i.name));
        }
        Ok(keys)
    }

    /// Names of the images recorded in the namespace.
    pub async fn images(&self) -> Result<Vec<String>, ContainerdError> {
        let r = ImagesClient::new(self.channel.clone())
            .list(self.req(containerd_client::services::v1::ListImagesRequest { filters: vec![] }))
            .await
            .map_err(call_error("list images", ""))?;
        Ok(r.into_inner().images.into_iter().map(|i| i.name).collect())
    }

    /// Forgets an image; containerd's collector then frees its content and snapshots once no
    /// container uses them (`sync`: before this returns).
    pub async fn remove_image(&self, name: &str, sync: bool) -> Result<(), ContainerdError> {
        match ImagesClient::new(self.channel.clone())
            .delete(self.req(DeleteImageRequest {
                name: name.into(),
                sync,
                target: None,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(call_error("delete image", name)(s)),
        }
    }
}

/// A unique enough suffix for temporary names (leases, extraction keys).
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// RFC 3339 time one hour from now, for `containerd.io/gc.expire`.
fn expire_in_one_hour() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    orch_core::model::quantity::Timestamp(ms + 3_600_000).to_string()
}
