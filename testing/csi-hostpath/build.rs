//! Generates the CSI v1 subset (`proto/csi.proto`, package `csi.v1`) and the kubelet's
//! plugin-registration API (`proto/pluginregistration.proto`): messages, servers and
//! clients, without a system `protoc`.

fn main() -> Result<(), String> {
    // As text: `main` prints its error with `Debug`, which would show the enum.
    ironvisor_grpc_uds::build::compile_protos(
        "proto",
        &["proto/csi.proto", "proto/pluginregistration.proto"],
    )
    .map_err(|e| e.to_string())
}
