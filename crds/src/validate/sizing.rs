//! Instance types and preferences: a VM's references to them (served kinds, names, no
//! template field the instance type sets) and the objects themselves.

use tracing::instrument;

use super::{bytes_at, finish, formats, FieldPath, ValidationError, ValidationErrors};
use crate::v1alpha1::{
    VirtualMachine, VirtualMachineClusterInstancetype, VirtualMachineClusterPreference,
    CLUSTER_INSTANCETYPE_KIND, CLUSTER_PREFERENCE_KIND,
};

/// `spec.instancetype` and `spec.preference`: served kinds, names, no conflicts.
pub(super) fn references(vm: &VirtualMachine, errors: &mut Vec<ValidationError>) {
    for (matcher, field, expected) in [
        (
            &vm.spec.instancetype,
            "spec.instancetype",
            CLUSTER_INSTANCETYPE_KIND,
        ),
        (
            &vm.spec.preference,
            "spec.preference",
            CLUSTER_PREFERENCE_KIND,
        ),
    ] {
        let Some(matcher) = matcher else {
            continue;
        };
        let path = FieldPath::new(field);
        if let Some(kind) = matcher
            .kind
            .as_deref()
            .filter(|kind| !kind.eq_ignore_ascii_case(expected))
        {
            errors.push(ValidationError::InstancetypeKind {
                path: path.child("kind").into(),
                value: kind.to_string(),
                expected,
            });
        }
        if matcher.name.is_empty() {
            errors.push(ValidationError::Required {
                path: path.child("name").into(),
            });
        } else if let Err(reason) = formats::dns_subdomain(&matcher.name) {
            errors.push(ValidationError::InvalidName {
                path: path.child("name").into(),
                value: matcher.name.clone(),
                reason,
            });
        }
    }
    for path in crate::instancetype::conflicts(vm) {
        errors.push(ValidationError::InstancetypeConflict { path });
    }
}

/// Validates a `VirtualMachineClusterInstancetype`.
#[instrument(level = "debug", skip_all, fields(name = object.metadata.name.as_deref().unwrap_or("")))]
pub fn instancetype(object: &VirtualMachineClusterInstancetype) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();
    cluster_object_meta(&object.metadata, &mut errors);
    if object.spec.cpu.guest == 0 {
        errors.push(ValidationError::Required {
            path: "spec.cpu.guest".into(),
        });
    }
    bytes_at(
        &object.spec.memory.guest,
        &FieldPath::new("spec.memory.guest"),
        &mut errors,
    );
    finish(CLUSTER_INSTANCETYPE_KIND, &object.metadata, errors)
}

/// Validates a `VirtualMachineClusterPreference`.
#[instrument(level = "debug", skip_all, fields(name = object.metadata.name.as_deref().unwrap_or("")))]
pub fn preference(object: &VirtualMachineClusterPreference) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();
    cluster_object_meta(&object.metadata, &mut errors);
    let topology = object
        .spec
        .cpu
        .as_ref()
        .and_then(|cpu| cpu.preferred_cpu_topology.as_deref());
    if let Some(value) = topology.filter(|value| !SERVED_TOPOLOGIES.contains(value)) {
        errors.push(ValidationError::TopologyNotServed {
            path: "spec.cpu.preferredCPUTopology".into(),
            value: value.to_string(),
        });
    }
    finish(CLUSTER_PREFERENCE_KIND, &object.metadata, errors)
}

/// The `preferredCPUTopology` values served.
const SERVED_TOPOLOGIES: [&str; 6] = [
    "sockets",
    "cores",
    "threads",
    "preferSockets",
    "preferCores",
    "preferThreads",
];

/// A cluster-wide object's metadata: a DNS subdomain name (KubeVirt's instance types are
/// named like `u1.small`), no namespace, valid labels and annotations.
fn cluster_object_meta(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    errors: &mut Vec<ValidationError>,
) {
    let path = FieldPath::new("metadata");
    match metadata.name.as_deref() {
        None | Some("") => errors.push(ValidationError::Required {
            path: path.child("name").into(),
        }),
        Some(name) => {
            if let Err(reason) = formats::dns_subdomain(name) {
                errors.push(ValidationError::InvalidName {
                    path: path.child("name").into(),
                    value: name.to_string(),
                    reason,
                });
            }
        }
    }
    if let Some(labels) = &metadata.labels {
        super::label_map(labels, &path.child("labels"), true, errors);
    }
    if let Some(annotations) = &metadata.annotations {
        super::annotation_map(annotations, &path.child("annotations"), errors);
    }
}
