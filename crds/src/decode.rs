//! Strict decoding of multi-document YAML manifests into Ironvisor objects.
//!
//! Each document is dispatched on `apiVersion` and `kind`. Decoding is strict: an unknown
//! field anywhere (including `metadata`) is an error naming its full path, listing every
//! other unknown field of the document too, and every error carries
//! `source:line:column`. A `status` block is read only when it is Ironvisor's own and is
//! otherwise ignored (an export from KubeVirt carries KubeVirt's). Manifests written for KubeVirt (`kubevirt.io/v1`)
//! are refused with a hint to change `apiVersion` to `ironvisor.io/v1alpha1`; nothing
//! else needs to change for the fields Ironvisor supports.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    ManagedFieldsEntry, ObjectMeta, OwnerReference, Time,
};
use serde::de::DeserializeSeed;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use tracing::{debug, instrument};

use crate::crd::CrdKind;
use crate::locate::{PathProbe, Segment};
use crate::unknown_fields;
use crate::v1alpha1::{
    InstancetypeSpec, PreferenceSpec, VirtualMachine, VirtualMachineClusterInstancetype,
    VirtualMachineClusterPreference, VirtualMachineInstance, VirtualMachineInstanceSpec,
    VirtualMachineSpec, API_VERSION, CLUSTER_INSTANCETYPE_KIND, CLUSTER_PREFERENCE_KIND,
    VIRTUAL_MACHINE_INSTANCE_KIND, VIRTUAL_MACHINE_KIND,
};

/// KubeVirt's API group; manifests for it are refused with a hint.
const KUBEVIRT_GROUP_PREFIX: &str = "kubevirt.io/";
/// KubeVirt's instance type API group, refused with the same hint.
const KUBEVIRT_INSTANCETYPE_PREFIX: &str = "instancetype.kubevirt.io/";

/// One decoded object.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// A `VirtualMachine`.
    VirtualMachine(Box<VirtualMachine>),
    /// A `VirtualMachineInstance`.
    VirtualMachineInstance(Box<VirtualMachineInstance>),
    /// A `VirtualMachineClusterInstancetype`.
    ClusterInstancetype(Box<VirtualMachineClusterInstancetype>),
    /// A `VirtualMachineClusterPreference`.
    ClusterPreference(Box<VirtualMachineClusterPreference>),
}

impl Manifest {
    /// The kind name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::VirtualMachine(_) => VIRTUAL_MACHINE_KIND,
            Self::VirtualMachineInstance(_) => VIRTUAL_MACHINE_INSTANCE_KIND,
            Self::ClusterInstancetype(_) => CLUSTER_INSTANCETYPE_KIND,
            Self::ClusterPreference(_) => CLUSTER_PREFERENCE_KIND,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::VirtualMachine(vm) => &vm.metadata,
            Self::VirtualMachineInstance(vmi) => &vmi.metadata,
            Self::ClusterInstancetype(object) => &object.metadata,
            Self::ClusterPreference(object) => &object.metadata,
        }
    }

    /// `metadata.name`, if set.
    pub fn name(&self) -> Option<&str> {
        self.metadata().name.as_deref()
    }
}

/// Where in the input a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLocation {
    /// Name of the input (file name) given to [`parse_manifests`].
    pub source_name: String,
    /// 1-based index of the YAML document in the stream.
    pub document: usize,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "{}:{line}:{column}", self.source_name),
            (Some(line), None) => write!(f, "{}:{line}", self.source_name),
            _ => write!(f, "{} (document {})", self.source_name, self.document),
        }
    }
}

/// Why a manifest could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The text is not well-formed YAML.
    #[error("{at}: invalid YAML: {message}")]
    Syntax {
        /// Where.
        at: SourceLocation,
        /// The parser's message.
        message: String,
    },
    /// A document is not a mapping.
    #[error("{at}: document is not an object (expected a mapping with apiVersion and kind)")]
    NotAnObject {
        /// Where.
        at: SourceLocation,
    },
    /// `apiVersion` or `kind` is missing or not a string.
    #[error("{at}: {field} is missing or not a string")]
    MissingTypeField {
        /// Where.
        at: SourceLocation,
        /// "apiVersion" or "kind".
        field: &'static str,
    },
    /// A KubeVirt manifest.
    #[error("{at}: apiVersion {api_version:?} is KubeVirt's; Ironvisor serves the same {kind} fields as {API_VERSION}: change the apiVersion line to `apiVersion: {API_VERSION}`")]
    KubeVirtApiVersion {
        /// Where.
        at: SourceLocation,
        /// The apiVersion found.
        api_version: String,
        /// The kind found.
        kind: String,
    },
    /// An apiVersion Ironvisor does not serve.
    #[error("{at}: unsupported apiVersion {api_version:?} (expected {API_VERSION})")]
    UnsupportedApiVersion {
        /// Where.
        at: SourceLocation,
        /// The apiVersion found.
        api_version: String,
    },
    /// A kind Ironvisor does not serve.
    #[error("{at}: unsupported kind {kind:?} for {API_VERSION} (expected {VIRTUAL_MACHINE_KIND}, {VIRTUAL_MACHINE_INSTANCE_KIND}, {CLUSTER_INSTANCETYPE_KIND} or {CLUSTER_PREFERENCE_KIND})")]
    UnsupportedKind {
        /// Where.
        at: SourceLocation,
        /// The kind found.
        kind: String,
    },
    /// A field that the type does not have (the first one), and every other one of the
    /// same document.
    #[error("{at}: unknown field {path}{expected}{more}")]
    UnknownField {
        /// Where.
        at: SourceLocation,
        /// Full path of the unknown field (`spec.template.spec.domain.devices.disks[1].nmae`).
        path: String,
        /// ", expected one of ..." from the decoder, or empty.
        expected: String,
        /// The document's other unknown fields, in document order.
        more: Box<MoreUnknownFields>,
    },
    /// A field with a wrong type or value.
    #[error("{at}: {path}: {message}")]
    InvalidField {
        /// Where.
        at: SourceLocation,
        /// Path of the field.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Another unknown field of a document, besides the one the decoder stopped at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFieldAt {
    /// Where.
    pub at: SourceLocation,
    /// Full path of the field.
    pub path: String,
}

/// The other unknown fields of a document; shown one per line after the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoreUnknownFields(pub Vec<UnknownFieldAt>);

impl fmt::Display for MoreUnknownFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for field in &self.0 {
            write!(f, "\n{}: unknown field {}", field.at, field.path)?;
        }
        Ok(())
    }
}

impl DecodeError {
    /// Where the problem is.
    pub fn location(&self) -> &SourceLocation {
        match self {
            Self::Syntax { at, .. }
            | Self::NotAnObject { at }
            | Self::MissingTypeField { at, .. }
            | Self::KubeVirtApiVersion { at, .. }
            | Self::UnsupportedApiVersion { at, .. }
            | Self::UnsupportedKind { at, .. }
            | Self::UnknownField { at, .. }
            | Self::InvalidField { at, .. } => at,
        }
    }
}

/// Decodes every document of `yaml_text` (documents separated by `---`; empty documents
/// are skipped). `source_name` (usually the file name) prefixes error locations.
#[instrument(level = "debug", skip(yaml_text), fields(bytes = yaml_text.len()))]
pub fn parse_manifests(yaml_text: &str, source_name: &str) -> Result<Vec<Manifest>, DecodeError> {
    let decoder = Decoder {
        text: yaml_text,
        source_name,
    };
    // First pass: syntax and type dispatch. The second pass decodes each document
    // straight from the text so that errors keep their line and column.
    let mut values = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(yaml_text).enumerate() {
        let value =
            serde_norway::Value::deserialize(document).map_err(|error| DecodeError::Syntax {
                at: decoder.at(index, error.location()),
                message: strip_location(&error, None),
            })?;
        values.push(value);
    }

    let mut manifests = Vec::new();
    let documents = serde_norway::Deserializer::from_str(yaml_text);
    for (index, (document, value)) in documents.zip(values).enumerate() {
        if value.is_null() {
            continue;
        }
        let (api_version, kind) = decoder.type_of(index, &value)?;
        let manifest = match kind.as_str() {
            VIRTUAL_MACHINE_KIND => {
                let envelope: Envelope<VirtualMachineSpec> =
                    decoder.typed(index, CrdKind::VirtualMachine, &value, document)?;
                Manifest::VirtualMachine(Box::new(VirtualMachine {
                    metadata: envelope.metadata.into(),
                    spec: envelope.spec,
                    status: lenient_status(envelope.status),
                }))
            }
            VIRTUAL_MACHINE_INSTANCE_KIND => {
                let envelope: Envelope<VirtualMachineInstanceSpec> =
                    decoder.typed(index, CrdKind::VirtualMachineInstance, &value, document)?;
                Manifest::VirtualMachineInstance(Box::new(VirtualMachineInstance {
                    metadata: envelope.metadata.into(),
                    spec: envelope.spec,
                    status: lenient_status(envelope.status),
                }))
            }
            CLUSTER_INSTANCETYPE_KIND => {
                let envelope: Envelope<InstancetypeSpec> =
                    decoder.typed(index, CrdKind::ClusterInstancetype, &value, document)?;
                Manifest::ClusterInstancetype(Box::new(VirtualMachineClusterInstancetype {
                    metadata: envelope.metadata.into(),
                    spec: envelope.spec,
                }))
            }
            CLUSTER_PREFERENCE_KIND => {
                let envelope: Envelope<PreferenceSpec> =
                    decoder.typed(index, CrdKind::ClusterPreference, &value, document)?;
                Manifest::ClusterPreference(Box::new(VirtualMachineClusterPreference {
                    metadata: envelope.metadata.into(),
                    spec: envelope.spec,
                }))
            }
            _ => {
                return Err(DecodeError::UnsupportedKind {
                    at: decoder.locate(index, Some("kind")),
                    kind,
                })
            }
        };
        debug!(document = index + 1, %api_version, kind = manifest.kind(), name = manifest.name().unwrap_or(""), "decoded");
        manifests.push(manifest);
    }
    Ok(manifests)
}

struct Decoder<'a> {
    text: &'a str,
    source_name: &'a str,
}

impl Decoder<'_> {
    fn at(&self, index: usize, location: Option<serde_norway::Location>) -> SourceLocation {
        SourceLocation {
            source_name: self.source_name.to_string(),
            document: index + 1,
            line: location.as_ref().map(serde_norway::Location::line),
            column: location.as_ref().map(serde_norway::Location::column),
        }
    }

    /// Location of the value of top-level `key` in document `index` (or of the document
    /// itself for `None`).
    fn locate(&self, index: usize, key: Option<&str>) -> SourceLocation {
        let path: Vec<Segment> = key
            .map(|key| Segment::Key(key.to_string()))
            .into_iter()
            .collect();
        self.locate_path(index, &path)
    }

    /// Location of the value at `path` in document `index`.
    fn locate_path(&self, index: usize, path: &[Segment]) -> SourceLocation {
        let location = serde_norway::Deserializer::from_str(self.text)
            .nth(index)
            .and_then(|document| PathProbe(path).deserialize(document).err())
            .and_then(|error| error.location());
        self.at(index, location)
    }

    /// Every unknown field of document `index` (`value`, a `kind` object) but `first`,
    /// which the decoder already reported, with where each one is.
    fn more_unknown_fields(
        &self,
        index: usize,
        kind: CrdKind,
        value: &serde_norway::Value,
        first: &str,
    ) -> Vec<UnknownFieldAt> {
        let Ok(document) = serde_json::to_value(value) else {
            return Vec::new();
        };
        let paths = match unknown_fields::unknown_fields(kind, &document) {
            Ok(paths) => paths,
            Err(error) => {
                debug!(%error, "cannot list every unknown field");
                return Vec::new();
            }
        };
        let mut more: Vec<UnknownFieldAt> = paths
            .iter()
            .map(|path| UnknownFieldAt {
                at: self.locate_path(index, path),
                path: unknown_fields::display_path(path),
            })
            .filter(|field| field.path != first)
            .collect();
        more.sort_by_key(|field| (field.at.line, field.at.column));
        more
    }

    /// Reads and checks `apiVersion` and `kind`.
    fn type_of(
        &self,
        index: usize,
        value: &serde_norway::Value,
    ) -> Result<(String, String), DecodeError> {
        let Some(mapping) = value.as_mapping() else {
            return Err(DecodeError::NotAnObject {
                at: self.locate(index, None),
            });
        };
        let field = |name: &'static str| {
            mapping
                .get(name)
                .and_then(serde_norway::Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| DecodeError::MissingTypeField {
                    at: self.locate(index, mapping.contains_key(name).then_some(name)),
                    field: name,
                })
        };
        let api_version = field("apiVersion")?;
        let kind = field("kind")?;
        // kubevirt.io/v1, and instancetype.kubevirt.io/v1beta1 for the instance types.
        if api_version.starts_with(KUBEVIRT_GROUP_PREFIX)
            || api_version.starts_with(KUBEVIRT_INSTANCETYPE_PREFIX)
        {
            return Err(DecodeError::KubeVirtApiVersion {
                at: self.locate(index, Some("apiVersion")),
                api_version,
                kind,
            });
        }
        if api_version != API_VERSION {
            return Err(DecodeError::UnsupportedApiVersion {
                at: self.locate(index, Some("apiVersion")),
                api_version,
            });
        }
        Ok((api_version, kind))
    }

    /// Decodes one document (`value`, a `kind` object) strictly, mapping errors to paths
    /// and locations; an unknown field comes with every other unknown field of the
    /// document.
    fn typed<T: DeserializeOwned>(
        &self,
        index: usize,
        kind: CrdKind,
        value: &serde_norway::Value,
        document: serde_norway::Deserializer<'_>,
    ) -> Result<T, DecodeError> {
        serde_path_to_error::deserialize(document).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let at = self.at(index, inner.location());
            let message = strip_location(&inner, Some(&path));
            match unknown_field(&message) {
                // The tracked path already ends with the unknown key.
                Some((_field, expected)) => DecodeError::UnknownField {
                    more: Box::new(MoreUnknownFields(
                        self.more_unknown_fields(index, kind, value, &path),
                    )),
                    at,
                    path,
                    expected: expected.to_string(),
                },
                None => DecodeError::InvalidField {
                    at,
                    path: if path == "." {
                        "(document)".into()
                    } else {
                        path
                    },
                    message,
                },
            }
        })
    }
}

/// The decoder's message without its " at line L column C" suffix and, when given, the
/// "path: " prefix that serde_norway adds.
fn strip_location(error: &serde_norway::Error, path: Option<&str>) -> String {
    let mut message = error.to_string();
    if let Some(location) = error.location() {
        let suffix = format!(" at line {} column {}", location.line(), location.column());
        if let Some(position) = message.find(&suffix) {
            message.replace_range(position..position + suffix.len(), "");
        }
    }
    // serde_norway prefixes the path of the value it was decoding: the tracked path
    // itself, or its parent when the error is about a key of that parent.
    if let Some(path) = path {
        let parent = path.rfind(['.', '[']).map(|end| &path[..end]);
        for prefix in std::iter::once(path).chain(parent) {
            if let Some(rest) = message.strip_prefix(&format!("{prefix}: ")) {
                message = rest.to_string();
                break;
            }
        }
    }
    message
}

/// Splits serde's "unknown field `x`, expected ..." into (`x`, ", expected ...").
fn unknown_field(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// A whole object, strictly: only the fields an object has. `status` is taken as it
/// comes: it is written by the system, ignored on apply (as the API server does with a
/// status subresource), and an export from KubeVirt carries KubeVirt's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Envelope<Spec> {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(default)]
    metadata: StrictObjectMeta,
    spec: Spec,
    #[serde(default)]
    status: Option<serde_json::Value>,
}

/// The status as Ironvisor's own when it is one, else none (a foreign status, such as
/// KubeVirt's in an export, means nothing here).
fn lenient_status<Status: DeserializeOwned>(status: Option<serde_json::Value>) -> Option<Status> {
    let status = status?;
    match serde_json::from_value(status) {
        Ok(status) => Some(status),
        Err(error) => {
            debug!(%error, "status is not Ironvisor's: ignored");
            None
        }
    }
}

/// `ObjectMeta` with unknown fields refused (k8s-openapi's ignores them).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StrictObjectMeta {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    managed_fields: Option<Vec<ManagedFieldsEntry>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

impl From<StrictObjectMeta> for ObjectMeta {
    fn from(meta: StrictObjectMeta) -> Self {
        ObjectMeta {
            annotations: meta.annotations,
            creation_timestamp: meta.creation_timestamp,
            deletion_grace_period_seconds: meta.deletion_grace_period_seconds,
            deletion_timestamp: meta.deletion_timestamp,
            finalizers: meta.finalizers,
            generate_name: meta.generate_name,
            generation: meta.generation,
            labels: meta.labels,
            managed_fields: meta.managed_fields,
            name: meta.name,
            namespace: meta.namespace,
            owner_references: meta.owner_references,
            resource_version: meta.resource_version,
            self_link: meta.self_link,
            uid: meta.uid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL_VM: &str = "\
apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachine
metadata:
  name: small
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        memory:
          guest: 128Mi
        devices:
          disks:
            - name: root
      volumes:
        - name: root
          containerDisk:
            image: ironvisor/rootfs:busybox
";

    #[test]
    fn decodes_a_vm() {
        let manifests = parse_manifests(SMALL_VM, "small.yaml").unwrap();
        assert_eq!(manifests.len(), 1);
        let Manifest::VirtualMachine(vm) = &manifests[0] else {
            panic!("not a VM: {:?}", manifests[0]);
        };
        assert_eq!(vm.metadata.name.as_deref(), Some("small"));
        assert_eq!(
            vm.spec.template.spec.volumes[0]
                .container_disk
                .as_ref()
                .map(|c| c.image.as_str()),
            Some("ironvisor/rootfs:busybox")
        );
    }

    #[test]
    fn unknown_field_names_full_path_and_line() {
        let text = SMALL_VM.replace(
            "            - name: root\n",
            "            - name: root\n              bus: virtio\n",
        );
        let error = parse_manifests(&text, "vm.yaml").unwrap_err();
        match &error {
            DecodeError::UnknownField {
                at,
                path,
                expected,
                more,
            } => {
                assert_eq!(path, "spec.template.spec.domain.devices.disks[0].bus");
                assert_eq!(at.line, Some(15), "{error}");
                assert!(expected.contains("`disk`"), "{expected}");
                assert!(more.0.is_empty(), "{more:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(error.to_string().starts_with("vm.yaml:15:"), "{error}");
    }

    #[test]
    fn unknown_metadata_field_is_refused() {
        let text = SMALL_VM.replace("  name: small\n", "  name: small\n  lables: {}\n");
        match parse_manifests(&text, "vm.yaml").unwrap_err() {
            DecodeError::UnknownField { path, at, .. } => {
                assert_eq!(path, "metadata.lables");
                assert_eq!(at.line, Some(5));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_top_level_field_is_refused() {
        let text = format!("{SMALL_VM}sepc: {{}}\n");
        match parse_manifests(&text, "vm.yaml").unwrap_err() {
            DecodeError::UnknownField { path, .. } => assert_eq!(path, "sepc"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn wrong_type_names_path() {
        let text = SMALL_VM.replace("runStrategy: Always", "runStrategy: Sometimes");
        let error = parse_manifests(&text, "vm.yaml").unwrap_err();
        match &error {
            DecodeError::InvalidField { path, message, at } => {
                assert_eq!(path, "spec.runStrategy");
                assert!(message.contains("Sometimes"), "{message}");
                assert_eq!((at.line, at.column), (Some(6), Some(16)));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            error
                .to_string()
                .starts_with("vm.yaml:6:16: spec.runStrategy: unknown variant"),
            "{error}"
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let text = "apiVersion: ironvisor.io/v1alpha1\nkind: [VirtualMachine\n";
        let error = parse_manifests(text, "broken.yaml").unwrap_err();
        match &error {
            DecodeError::Syntax { at, message } => {
                assert_eq!(at.source_name, "broken.yaml");
                assert_eq!((at.line, at.column), (Some(3), Some(1)), "{error}");
                assert!(message.starts_with("did not find expected"), "{message}");
                assert!(!message.contains("line 3 column 1"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let shown = error.to_string();
        assert!(shown.starts_with("broken.yaml:"), "{shown}");
    }

    #[test]
    fn multi_document_stream_and_empty_documents() {
        let vmi = "\
apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachineInstance
metadata:
  name: one
spec:
  domain: {}
";
        let text = format!("---\n{SMALL_VM}---\n# only a comment\n---\n{vmi}");
        let manifests = parse_manifests(&text, "all.yaml").unwrap();
        let kinds: Vec<_> = manifests.iter().map(Manifest::kind).collect();
        assert_eq!(kinds, ["VirtualMachine", "VirtualMachineInstance"]);
        assert_eq!(manifests[1].name(), Some("one"));
        assert!(parse_manifests("", "empty.yaml").unwrap().is_empty());
    }

    #[test]
    fn kubevirt_api_version_gets_a_hint() {
        let text = SMALL_VM.replace("ironvisor.io/v1alpha1", "kubevirt.io/v1");
        let error = parse_manifests(&text, "kv.yaml").unwrap_err();
        assert!(matches!(error, DecodeError::KubeVirtApiVersion { .. }));
        let shown = error.to_string();
        assert!(shown.starts_with("kv.yaml:1:13:"), "{shown}");
        assert!(
            shown.contains("apiVersion: ironvisor.io/v1alpha1"),
            "{shown}"
        );
    }

    #[test]
    fn dispatch_errors() {
        let error = parse_manifests("apiVersion: v1\nkind: Pod\n", "p.yaml").unwrap_err();
        assert!(
            matches!(error, DecodeError::UnsupportedApiVersion { .. }),
            "{error}"
        );

        let error = parse_manifests("apiVersion: ironvisor.io/v1alpha1\nkind: Node\n", "n.yaml")
            .unwrap_err();
        match error {
            DecodeError::UnsupportedKind { kind, at } => {
                assert_eq!(kind, "Node");
                assert_eq!((at.line, at.column), (Some(2), Some(7)));
            }
            other => panic!("unexpected {other:?}"),
        }

        let error = parse_manifests("kind: VirtualMachine\n", "k.yaml").unwrap_err();
        assert!(matches!(
            error,
            DecodeError::MissingTypeField {
                field: "apiVersion",
                ..
            }
        ));

        let error = parse_manifests("- 1\n- 2\n", "list.yaml").unwrap_err();
        match error {
            DecodeError::NotAnObject { at } => assert_eq!(at.line, Some(1)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_spec_is_reported() {
        let text =
            "apiVersion: ironvisor.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: x\n";
        match parse_manifests(text, "x.yaml").unwrap_err() {
            DecodeError::InvalidField { message, .. } => {
                assert!(message.contains("missing field `spec`"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
