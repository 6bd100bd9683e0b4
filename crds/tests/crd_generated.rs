//! The checked-in CRDs under `crds/generated/` (and their copy in `deploy/crds/`, which
//! `kubectl apply -k deploy/` installs) match the types, and their schemas follow
//! the Kubernetes structural schema rules that matter for generated schemas.

use std::path::PathBuf;

use ironvisor_crds::crd::{CrdKind, REGENERATE_COMMAND};
use serde_json::Value;

#[test]
fn checked_in_crds_are_up_to_date() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for (dir, kind) in [
        crate_dir.join("generated"),
        crate_dir.join("../deploy/crds"),
    ]
    .into_iter()
    .flat_map(|dir| CrdKind::ALL.map(|kind| (dir.clone(), kind)))
    {
        let path = dir.join(kind.file_name());
        let expected = kind.yaml().expect("CRD renders");
        let found = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            found == expected,
            "{} is out of date or missing; regenerate it from the workspace root with:\n    {REGENERATE_COMMAND}",
            path.display()
        );
    }
}

/// Checks one schema node and its children; returns the problems found.
fn check_structural(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        problems.push(format!("{path}: schema is not an object"));
        return;
    };
    for forbidden in ["$ref", "oneOf", "anyOf", "allOf", "definitions", "$defs"] {
        if map.contains_key(forbidden) {
            problems.push(format!("{path}: has {forbidden}"));
        }
    }
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !map.contains_key("type") && !int_or_string && !preserve {
        problems.push(format!("{path}: no type"));
    }
    if map.get("additionalProperties") == Some(&Value::Bool(false)) {
        problems.push(format!("{path}: additionalProperties: false"));
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            check_structural(child, &format!("{path}.{name}"), problems);
        }
    }
    if let Some(items) = map.get("items") {
        check_structural(items, &format!("{path}[]"), problems);
    }
    if let Some(additional) = map.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(additional, &format!("{path}{{}}"), problems);
    }
}

#[test]
fn schemas_are_structural() {
    for kind in CrdKind::ALL {
        let crd = kind.crd().expect("CRD builds");
        let version = &crd.spec.versions[0];
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema present");
        let schema = serde_json::to_value(schema).expect("schema to JSON");
        let mut problems = Vec::new();
        check_structural(&schema, kind.crd_name(), &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let with_status = matches!(
            kind,
            CrdKind::VirtualMachine | CrdKind::VirtualMachineInstance
        );
        assert_eq!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            with_status,
            "{} has a status subresource exactly when it has a status",
            kind.crd_name()
        );
    }
}

#[test]
fn hardware_isolation_is_an_enum_in_the_schema() {
    let crd = CrdKind::VirtualMachine.crd().expect("CRD builds");
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("JSON");
    let field = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["template"]
        ["properties"]["spec"]["properties"]["domain"]["properties"]["features"]["properties"]
        ["hardwareIsolation"];
    assert_eq!(
        field["enum"],
        serde_json::json!(["Required", "Preferred"]),
        "{field}"
    );
}
