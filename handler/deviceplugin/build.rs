//! Generates the kubelet device-plugin API (`proto/deviceplugin_v1beta1.proto`, package
//! `v1beta1`): messages, both servers and both clients, without a system `protoc`.

fn main() -> Result<(), String> {
    // As text: `main` prints its error with `Debug`, which would show the enum.
    ironvisor_grpc_uds::build::compile_protos("proto", &["proto/deviceplugin_v1beta1.proto"])
        .map_err(|e| e.to_string())
}
