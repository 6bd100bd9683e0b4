//! The instance type and preference a `VirtualMachine` names, read from the cluster when
//! its instance is made ([`ironvisor_crds::instancetype`] applies them). A missing one
//! fails the reconcile with a Warning event that names it, and is looked for again at the
//! next retry, so creating it later starts the VM.

use ironvisor_crds::instancetype::InstancetypeError;
use ironvisor_crds::v1alpha1::{
    InstancetypeSpec, PreferenceSpec, VirtualMachine, VirtualMachineClusterInstancetype,
    VirtualMachineClusterPreference, CLUSTER_INSTANCETYPE_KIND, CLUSTER_PREFERENCE_KIND,
};
use kube::api::Api;
use kube::Client;

use crate::context::{key, kube_error, ReconcileError};

/// What a VM's instance is sized and completed with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sizing {
    /// The instance type's spec.
    pub instancetype: Option<InstancetypeSpec>,
    /// The preference's name and spec.
    pub preference: Option<(String, PreferenceSpec)>,
}

/// Reads what `vm` names.
pub async fn resolve(client: &Client, vm: &VirtualMachine) -> Result<Sizing, ReconcileError> {
    let object = key(vm);
    let mut sizing = Sizing::default();
    if let Some(matcher) = &vm.spec.instancetype {
        let api: Api<VirtualMachineClusterInstancetype> = Api::all(client.clone());
        let found = api
            .get_opt(&matcher.name)
            .await
            .map_err(kube_error("reading the instance type of", &object))?;
        let found = found.ok_or_else(|| ReconcileError::Instancetype {
            object: object.clone(),
            source: InstancetypeError::NotFound {
                path: "spec.instancetype.name",
                kind: CLUSTER_INSTANCETYPE_KIND,
                name: matcher.name.clone(),
            },
        })?;
        sizing.instancetype = Some(found.spec);
    }
    if let Some(matcher) = &vm.spec.preference {
        let api: Api<VirtualMachineClusterPreference> = Api::all(client.clone());
        let found = api
            .get_opt(&matcher.name)
            .await
            .map_err(kube_error("reading the preference of", &object))?;
        let found = found.ok_or_else(|| ReconcileError::Instancetype {
            object: object.clone(),
            source: InstancetypeError::NotFound {
                path: "spec.preference.name",
                kind: CLUSTER_PREFERENCE_KIND,
                name: matcher.name.clone(),
            },
        })?;
        sizing.preference = Some((matcher.name.clone(), found.spec));
    }
    Ok(sizing)
}
