//! Generates the gRPC code of `proto/launcher.proto` (messages, the `Launcher` server
//! trait and the client) without a system `protoc`, with [`ironvisor_grpc_uds::build`].

fn main() -> Result<(), String> {
    // As text: `main` prints its error with `Debug`, which would show the enum.
    ironvisor_grpc_uds::build::compile_protos("proto", &["proto/launcher.proto"])
        .map_err(|e| e.to_string())
}
