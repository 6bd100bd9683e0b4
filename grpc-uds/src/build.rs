//! The proto compilation step of a build script, without a system `protoc`: `protox`
//! (pure Rust) parses the `.proto` files into a descriptor set, then `tonic-prost-build`
//! generates the messages, the server trait and the client from that set.

/// Why [`compile_protos`] failed. Each variant names the files it was given.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `protox` could not parse the files (syntax, unknown import, unknown type).
    #[error("cannot compile {files}: {source:?}")]
    Parse {
        /// The files, comma-separated.
        files: String,
        /// The parser's diagnostic (shown with `Debug`, which includes the location).
        #[source]
        source: protox::Error,
    },
    /// `tonic-prost-build` could not generate or write the Rust code.
    #[error("cannot generate Rust code from {files}: {source}")]
    Generate {
        /// The files, comma-separated.
        files: String,
        /// The I/O or generation error.
        #[source]
        source: std::io::Error,
    },
}

/// Compiles `files` (paths relative to the package, imports resolved under
/// `proto_dir`) into Rust with both the server and the client, for
/// `tonic::include_proto!`, and tells Cargo to rerun the build script when one of them
/// changes.
pub fn compile_protos(proto_dir: &str, files: &[&str]) -> Result<(), BuildError> {
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let names = || files.join(", ");
    let descriptors = protox::compile(files, [proto_dir]).map_err(|source| BuildError::Parse {
        files: names(),
        source,
    })?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)
        .map_err(|source| BuildError::Generate {
            files: names(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_a_parse_error_naming_it() {
        let e = compile_protos(
            "no-such-dir",
            &["no-such-dir/a.proto", "no-such-dir/b.proto"],
        )
        .expect_err("nothing to compile");
        assert!(matches!(e, BuildError::Parse { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("cannot compile no-such-dir/a.proto, no-such-dir/b.proto: "),
            "{e}"
        );
    }
}
