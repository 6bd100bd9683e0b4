//! A user's manifest, as YAML and as JSON, through what `kubectl apply` (the admission
//! webhook) and the standalone node do with it: strict decoding, defaults, validation.

#![no_main]

use ironvisor_crds::decode::{parse_manifests, Manifest};
use ironvisor_crds::{defaults, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text);
    // The webhook receives JSON and hands its text to the same decoder.
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        check(&value.to_string());
    }
});

fn check(text: &str) {
    let Ok(manifests) = parse_manifests(text, "fuzz.yaml") else {
        return;
    };
    for manifest in manifests {
        match manifest {
            Manifest::VirtualMachine(mut vm) => {
                defaults::apply(&mut vm);
                let _ = validate::vm(&vm);
                serde_json::to_value(&vm.spec).expect("a decoded spec encodes");
            }
            Manifest::VirtualMachineInstance(mut vmi) => {
                defaults::apply_vmi(&mut vmi);
                let _ = validate::vmi(&vmi);
                serde_json::to_value(&vmi.spec).expect("a decoded spec encodes");
            }
            Manifest::ClusterInstancetype(object) => {
                let _ = validate::instancetype(&object);
            }
            Manifest::ClusterPreference(object) => {
                let _ = validate::preference(&object);
            }
        }
    }
}
