//! What `virtctl get` and `describe` show of one VM: a [`VmView`] built from one
//! consistent store snapshot.

use ironvisor_handler_api::proto::{Event, VmView};
use serde::Serialize;

use crate::status::unix_seconds;
use crate::store::VmSnapshot;

/// The name serde gives a unit enum variant ("Running", "RerunOnFailure").
fn variant_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The view `virtctl` shows of one VM.
pub fn view(snap: &VmSnapshot) -> VmView {
    let vm = &snap.record.vm;
    let status = vm.status.as_ref();
    let vmi_status = snap.vmi.as_ref().and_then(|v| v.status.as_ref());
    VmView {
        namespace: snap.key.namespace.clone(),
        name: snap.key.name.clone(),
        status: status
            .and_then(|s| s.printable_status)
            .map(|p| variant_name(&p))
            .unwrap_or_else(|| "Unknown".into()),
        phase: vmi_status
            .and_then(|s| s.phase)
            .map(|p| variant_name(&p))
            .unwrap_or_default(),
        ip: vmi_status
            .and_then(|s| s.interfaces.first())
            .and_then(|i| i.ip_address.clone())
            .unwrap_or_default(),
        node: vmi_status
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        created_unix: vm
            .metadata
            .creation_timestamp
            .as_ref()
            .map(unix_seconds)
            .unwrap_or_default(),
        ready: status.and_then(|s| s.ready).unwrap_or(false),
        run_strategy: vm
            .spec
            .run_strategy
            .map(|r| variant_name(&r))
            .unwrap_or_default(),
        backend: snap
            .launcher
            .as_ref()
            .map(|l| l.backend.as_str().to_string())
            .unwrap_or_default(),
        vm_json: serde_json::to_string_pretty(vm).unwrap_or_default(),
        vmi_json: snap
            .vmi
            .as_ref()
            .and_then(|v| serde_json::to_string_pretty(v).ok())
            .unwrap_or_default(),
        events: snap
            .events
            .iter()
            .map(|e| Event {
                time_unix: e.time_unix,
                r#type: e.type_.as_str().to_string(),
                reason: e.reason.clone(),
                message: e.message.clone(),
            })
            .collect(),
    }
}
