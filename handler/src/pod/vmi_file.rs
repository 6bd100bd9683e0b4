//! The instance the pod runs: the downward-API file `vmi.json` the controller fills from
//! the pod's `ironvisor.io/vmi` annotation,
//!
//! ```json
//! {"apiVersion":"ironvisor.io/v1alpha1","kind":"VirtualMachineInstance",
//!  "metadata":{"name":"small","namespace":"default","uid":"..."},"spec":{...}}
//! ```
//!
//! decoded strictly with the `ironvisor-crds` types (an unknown field is an error naming
//! its path, line and column), defaulted (a no-op for the controller's already defaulted
//! spec) and validated. Every error names the file.

use std::io;
use std::path::{Path, PathBuf};

use ironvisor_crds::decode::{parse_manifests, DecodeError, Manifest};
use ironvisor_crds::v1alpha1::{VirtualMachineInstance, VirtualMachineInstanceSpec};
use ironvisor_crds::validate::ValidationErrors;

use crate::records::VmKey;

/// Why the instance file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VmiFileError {
    /// The file cannot be read.
    #[error("cannot read the instance file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The content is not a valid object (the error names the file, line and column).
    #[error("the instance file is not a valid VirtualMachineInstance: {0}")]
    Decode(#[from] DecodeError),
    /// Not exactly one object, or not a `VirtualMachineInstance`.
    #[error("the instance file {path} must hold one VirtualMachineInstance, found {found}")]
    NotOneInstance {
        /// The file.
        path: PathBuf,
        /// What it holds instead.
        found: String,
    },
    /// A required metadata field is missing.
    #[error("the instance file {path} has no {field}")]
    MissingMetadata {
        /// The file.
        path: PathBuf,
        /// `metadata.name`, `metadata.namespace` or `metadata.uid`.
        field: &'static str,
    },
    /// The spec is invalid.
    #[error("the instance file {path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        #[source]
        source: ValidationErrors,
    },
}

/// The instance to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Namespace and name.
    pub key: VmKey,
    /// `metadata.uid`.
    pub uid: String,
    /// The defaulted, validated spec.
    pub spec: VirtualMachineInstanceSpec,
}

/// Reads, decodes, defaults and validates the instance file.
pub fn load(path: &Path) -> Result<Instance, VmiFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| VmiFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// [`load`] on text already read from `path`.
pub fn parse(text: &str, path: &Path) -> Result<Instance, VmiFileError> {
    let mut manifests = parse_manifests(text, &path.display().to_string())?;
    let not_one = |found: String| VmiFileError::NotOneInstance {
        path: path.to_path_buf(),
        found,
    };
    if manifests.len() != 1 {
        return Err(not_one(format!("{} objects", manifests.len())));
    }
    let mut vmi: VirtualMachineInstance = match manifests.pop() {
        Some(Manifest::VirtualMachineInstance(vmi)) => *vmi,
        Some(other) => return Err(not_one(format!("a {}", other.kind()))),
        None => return Err(not_one("nothing".into())),
    };
    let field = |value: &Option<String>, field| {
        value
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| VmiFileError::MissingMetadata {
                path: path.to_path_buf(),
                field,
            })
    };
    let name = field(&vmi.metadata.name, "metadata.name")?;
    let namespace = field(&vmi.metadata.namespace, "metadata.namespace")?;
    let uid = field(&vmi.metadata.uid, "metadata.uid")?;
    ironvisor_crds::defaults::apply_vmi(&mut vmi);
    ironvisor_crds::validate::vmi(&vmi).map_err(|source| VmiFileError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Instance {
        key: VmKey::new(&namespace, &name),
        uid,
        spec: vmi.spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/var/run/ironvisor/vmi/vmi.json";

    fn document(metadata: &str, spec: &str) -> String {
        format!(
            r#"{{"apiVersion":"ironvisor.io/v1alpha1","kind":"VirtualMachineInstance","metadata":{metadata},"spec":{spec}}}"#
        )
    }

    const META: &str = r#"{"name":"small","namespace":"vms","uid":"u-1"}"#;
    const SPEC: &str = r#"{"domain":{"memory":{"guest":"128Mi"},"devices":{}}}"#;

    fn error(text: &str) -> String {
        parse(text, Path::new(PATH)).unwrap_err().to_string()
    }

    #[test]
    fn the_controllers_document_decodes_and_is_defaulted() {
        let instance = parse(&document(META, SPEC), Path::new(PATH)).unwrap();
        assert_eq!(instance.key, VmKey::new("vms", "small"));
        assert_eq!(instance.uid, "u-1");
        assert_eq!(instance.spec.termination_grace_period_seconds, Some(30));
        assert_eq!(instance.spec.vcpus(), 1);
    }

    #[test]
    fn unknown_fields_are_refused_with_file_and_path() {
        let spec = r#"{"domain":{"memory":{"guest":"128Mi"},"devices":{},"nmae":1}}"#;
        let message = error(&document(META, spec));
        assert!(message.contains(PATH), "{message}");
        assert!(message.contains("spec.domain.nmae"), "{message}");
    }

    #[test]
    fn broken_json_and_wrong_kinds_name_the_file() {
        let message = error("{\"apiVersion\":");
        assert!(
            message.contains(PATH) && message.contains("invalid YAML"),
            "{message}"
        );
        let vm = document(META, SPEC).replace("VirtualMachineInstance", "VirtualMachine");
        let message = error(&vm);
        assert!(message.contains(PATH), "{message}");
        let message = error("");
        assert_eq!(
            message,
            format!(
                "the instance file {PATH} must hold one VirtualMachineInstance, found 0 objects"
            )
        );
    }

    #[test]
    fn identity_is_required() {
        let message = error(&document(r#"{"name":"small","namespace":"vms"}"#, SPEC));
        assert_eq!(
            message,
            format!("the instance file {PATH} has no metadata.uid")
        );
    }

    #[test]
    fn invalid_specs_are_refused() {
        let spec = r#"{"domain":{"memory":{"guest":"lots"},"devices":{}}}"#;
        let message = error(&document(META, spec));
        assert!(message.contains(PATH), "{message}");
        assert!(message.contains("memory.guest"), "{message}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let message = load(Path::new("/nonexistent/vmi.json"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("/nonexistent/vmi.json"), "{message}");
    }
}
