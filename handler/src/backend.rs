//! Which launcher runs a VM: the KVM microVMM (`ironvisor-launcher`) when the host has
//! hardware-assisted KVM, otherwise QEMU software emulation (`ironvisor-launcher-qemu`,
//! KubeVirt's `useEmulation`) — unless the VM demands hardware isolation, in which case it
//! is not started at all.
//!
//! The host is probed once when the node agent starts ([`BackendSelector::probe`]); the
//! `--backend` flag (or `IRONVISOR_BACKEND`) can force either backend, e.g. for tests.

use std::fmt;
use std::str::FromStr;

use ironvisor_crds::v1alpha1::HardwareIsolation;
use tracing::{info, warn};

use crate::records::BackendKind;

/// Environment variable that forces the backend (`auto`, `kvm` or `qemu-tcg`).
pub const BACKEND_ENV: &str = "IRONVISOR_BACKEND";

/// The `--backend` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendMode {
    /// Probe the host.
    #[default]
    Auto,
    /// Always the KVM launcher (the host is trusted to have hardware KVM).
    Kvm,
    /// Always software emulation, as if the host had no usable KVM.
    QemuTcg,
}

impl FromStr for BackendMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "qemu-tcg" => Ok(Self::QemuTcg),
            other => Err(format!(
                "unknown backend {other:?} (expected auto, kvm or qemu-tcg)"
            )),
        }
    }
}

impl fmt::Display for BackendMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Kvm => "kvm",
            Self::QemuTcg => "qemu-tcg",
        })
    }
}

/// The backend chosen for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Which launcher.
    pub kind: BackendKind,
    /// For software emulation: why hardware KVM is not used (for the `SoftwareEmulation`
    /// warning event).
    pub emulation_reason: Option<String>,
}

/// A VM that must not run on this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "hardware isolation is Required but this node cannot provide it: {host_message}; the VM \
     is not started (set spec.template.spec.domain.features.hardwareIsolation: Preferred to \
     allow software emulation)"
)]
pub struct Unschedulable {
    /// Why the host has no hardware virtualization (the host check's message).
    pub host_message: String,
}

/// Chooses the backend of each VM from one probe of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSelector {
    /// `Ok` when hardware-assisted KVM is usable, else why not.
    hardware: Result<(), String>,
}

impl BackendSelector {
    /// Probes the host (unless `mode` forces a backend).
    pub fn probe(mode: BackendMode) -> Self {
        let hardware = match mode {
            BackendMode::Kvm => Ok(()),
            BackendMode::QemuTcg => Err(format!(
                "software emulation is forced (--backend qemu-tcg or {BACKEND_ENV}=qemu-tcg)"
            )),
            BackendMode::Auto => ironvisor_launcher::host::HostCaps::probe()
                .check_hardware_kvm()
                .map_err(|e| e.to_string()),
        };
        match &hardware {
            Ok(()) => info!(%mode, "VMs run on hardware-assisted KVM"),
            Err(reason) => {
                warn!(%mode, %reason, "no hardware-assisted KVM: VMs are emulated in software")
            }
        }
        Self { hardware }
    }

    /// A selector with a known host state (`Err(reason)`: no hardware KVM).
    pub fn with_host(hardware: Result<(), String>) -> Self {
        Self { hardware }
    }

    /// Why hardware KVM is unavailable, if it is.
    pub fn hardware_problem(&self) -> Option<&str> {
        self.hardware.as_ref().err().map(String::as_str)
    }

    /// The backend for a VM with the given isolation demand.
    pub fn select(&self, isolation: HardwareIsolation) -> Result<Selection, Unschedulable> {
        match (&self.hardware, isolation) {
            (Ok(()), _) => Ok(Selection {
                kind: BackendKind::Kvm,
                emulation_reason: None,
            }),
            (Err(reason), HardwareIsolation::Preferred) => Ok(Selection {
                kind: BackendKind::QemuTcg,
                emulation_reason: Some(reason.clone()),
            }),
            (Err(reason), HardwareIsolation::Required) => Err(Unschedulable {
                host_message: reason.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_host_runs_everything_on_kvm() {
        let selector = BackendSelector::with_host(Ok(()));
        for isolation in [HardwareIsolation::Required, HardwareIsolation::Preferred] {
            assert_eq!(selector.select(isolation).unwrap().kind, BackendKind::Kvm);
        }
        assert_eq!(selector.hardware_problem(), None);
    }

    #[test]
    fn without_kvm_preferred_is_emulated_and_required_is_refused() {
        let selector = BackendSelector::with_host(Err("no vmx or svm".into()));
        let emulated = selector.select(HardwareIsolation::Preferred).unwrap();
        assert_eq!(emulated.kind, BackendKind::QemuTcg);
        assert_eq!(emulated.emulation_reason.as_deref(), Some("no vmx or svm"));
        let refused = selector.select(HardwareIsolation::Required).unwrap_err();
        assert_eq!(refused.host_message, "no vmx or svm");
        assert!(refused
            .to_string()
            .contains("hardware isolation is Required"));
    }

    #[test]
    fn forced_modes_do_not_probe() {
        assert_eq!(
            BackendSelector::probe(BackendMode::Kvm).hardware_problem(),
            None
        );
        let forced = BackendSelector::probe(BackendMode::QemuTcg);
        assert!(forced.hardware_problem().unwrap().contains("forced"));
        assert_eq!("qemu-tcg".parse::<BackendMode>(), Ok(BackendMode::QemuTcg));
        assert!("xen".parse::<BackendMode>().is_err());
    }
}
