//! Instance types and preferences on the standalone node: `virtctl apply` stores
//! `VirtualMachineClusterInstancetype` and `VirtualMachineClusterPreference` objects (the
//! node's store stands in for the cluster), and a VM that names them gets its instance
//! spec from them when it starts ([`ironvisor_crds::instancetype`]).

use ironvisor_crds::instancetype::{self, InstancetypeError};
use ironvisor_crds::v1alpha1::{
    InstancetypeSpec, PreferenceSpec, VirtualMachine, VirtualMachineInstanceSpec,
    CLUSTER_INSTANCETYPE_KIND, CLUSTER_PREFERENCE_KIND,
};
use ironvisor_crds::{defaults, validate, Manifest, ValidationErrors};
use ironvisor_handler_api::proto::AppliedObject;

use crate::store::{StoreError, Txn};

/// An instance type or preference to store.
#[derive(Debug, Clone, PartialEq)]
pub enum SizingObject {
    /// A `VirtualMachineClusterInstancetype`.
    Instancetype(String, InstancetypeSpec),
    /// A `VirtualMachineClusterPreference`.
    Preference(String, Box<PreferenceSpec>),
}

/// What one decoded manifest is for `apply`.
pub enum Classified {
    /// An instance type or preference, validated.
    Sizing(SizingObject),
    /// Anything else, given back.
    Other(Manifest),
}

/// Validates an instance type or preference, or hands any other manifest back.
pub fn classify(manifest: Manifest) -> Result<Classified, ValidationErrors> {
    match manifest {
        Manifest::ClusterInstancetype(object) => {
            validate::instancetype(&object)?;
            let name = object.metadata.name.clone().unwrap_or_default();
            Ok(Classified::Sizing(SizingObject::Instancetype(
                name,
                object.spec,
            )))
        }
        Manifest::ClusterPreference(object) => {
            validate::preference(&object)?;
            let name = object.metadata.name.clone().unwrap_or_default();
            Ok(Classified::Sizing(SizingObject::Preference(
                name,
                Box::new(object.spec),
            )))
        }
        other => Ok(Classified::Other(other)),
    }
}

/// Stores `objects` in the transaction; what each became.
pub fn store(t: &Txn<'_>, objects: &[SizingObject]) -> Result<Vec<AppliedObject>, StoreError> {
    let mut applied = Vec::with_capacity(objects.len());
    for object in objects {
        let (kind, name, action) = match object {
            SizingObject::Instancetype(name, spec) => {
                let action = action(t.instancetype(name)?.as_ref(), spec);
                t.put_instancetype(name, spec)?;
                (CLUSTER_INSTANCETYPE_KIND, name, action)
            }
            SizingObject::Preference(name, spec) => {
                let action = action(t.preference(name)?.as_ref(), spec.as_ref());
                t.put_preference(name, spec)?;
                (CLUSTER_PREFERENCE_KIND, name, action)
            }
        };
        tracing::info!(kind, name = %name, action, "applied");
        applied.push(AppliedObject {
            kind: kind.to_string(),
            namespace: String::new(),
            name: name.clone(),
            action: action.to_string(),
        });
    }
    Ok(applied)
}

fn action<T: PartialEq>(existing: Option<&T>, new: &T) -> &'static str {
    match existing {
        None => "created",
        Some(old) if old == new => "unchanged",
        Some(_) => "configured",
    }
}

/// The instance spec of `vm`: its template sized and completed by the instance type and
/// preference it names, then defaulted. The inner error names a missing object.
pub fn instance_spec(
    t: &Txn<'_>,
    vm: &VirtualMachine,
) -> Result<Result<VirtualMachineInstanceSpec, InstancetypeError>, StoreError> {
    let mut spec = vm.spec.template.spec.clone();
    if vm.spec.instancetype.is_none() && vm.spec.preference.is_none() {
        return Ok(Ok(spec));
    }
    let instancetype = match &vm.spec.instancetype {
        None => None,
        Some(matcher) => match t.instancetype(&matcher.name)? {
            Some(found) => Some(found),
            None => {
                return Ok(Err(InstancetypeError::NotFound {
                    path: "spec.instancetype.name",
                    kind: CLUSTER_INSTANCETYPE_KIND,
                    name: matcher.name.clone(),
                }))
            }
        },
    };
    let preference = match &vm.spec.preference {
        None => None,
        Some(matcher) => match t.preference(&matcher.name)? {
            Some(found) => Some((matcher.name.clone(), found)),
            None => {
                return Ok(Err(InstancetypeError::NotFound {
                    path: "spec.preference.name",
                    kind: CLUSTER_PREFERENCE_KIND,
                    name: matcher.name.clone(),
                }))
            }
        },
    };
    let expanded = instancetype::expand(
        &mut spec,
        instancetype.as_ref(),
        preference
            .as_ref()
            .map(|(name, spec)| (name.as_str(), spec)),
    );
    Ok(expanded.map(|()| {
        defaults::apply_instance_spec(&mut spec);
        spec
    }))
}
