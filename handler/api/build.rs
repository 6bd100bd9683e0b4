//! Generates the gRPC code of `proto/handler.proto` without a system `protoc`: `protox`
//! (pure Rust) parses the file into a descriptor set, then `tonic-prost-build` turns that
//! set into the messages, the `Handler` server trait and the client.

use std::error::Error;

const PROTO_DIR: &str = "proto";
const PROTO_FILE: &str = "proto/handler.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_FILE}");
    let descriptors = protox::compile([PROTO_FILE], [PROTO_DIR])
        .map_err(|e| format!("cannot compile {PROTO_FILE}: {e:?}"))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)
        .map_err(|e| format!("cannot generate Rust code from {PROTO_FILE}: {e}"))?;
    Ok(())
}
