//! Generates the gRPC code of `proto/handler.proto` (messages, the `Handler` server trait
//! and the client) without a system `protoc`, with [`ironvisor_grpc_uds::build`].

fn main() -> Result<(), String> {
    // As text: `main` prints its error with `Debug`, which would show the enum.
    ironvisor_grpc_uds::build::compile_protos("proto", &["proto/handler.proto"])
        .map_err(|e| e.to_string())
}
