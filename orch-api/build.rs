//! Generates the gRPC code from `proto/orch.proto` with a vendored `protoc` (no system
//! package needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build reads PROTOC from the environment (build scripts are single-threaded).
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/orch.proto");
    tonic_prost_build::configure().compile_protos(&["proto/orch.proto"], &["proto"])?;
    Ok(())
}
