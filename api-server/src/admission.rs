//! Admission webhooks for `VirtualMachine` and `VirtualMachineInstance`: the same strict
//! decoding, defaulting and validation (`ironvisor-crds`) the standalone node daemon runs,
//! answered as `admission.k8s.io/v1` reviews.
//!
//! * mutate: decode strictly, apply the defaults, answer with a JSON patch of `spec`.
//! * validate: decode strictly, apply the defaults, validate; every problem at once, each
//!   with its field path. An update that leaves `spec` alone (finalizers, labels, the
//!   controller's bookkeeping) is allowed without validation, so that a rule made stricter
//!   later can never wedge an object's deletion. An instance's `spec` is immutable.

use ironvisor_crds::cluster::{VMI_FINALIZER, VM_FINALIZER};
use ironvisor_crds::decode::{parse_manifests, DecodeError, Manifest};
use ironvisor_crds::v1alpha1::{VIRTUAL_MACHINE_INSTANCE_KIND, VIRTUAL_MACHINE_KIND};
use ironvisor_crds::{compat, defaults, validate, ValidationErrors};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::response::{StatusCause, StatusDetails};
use kube::core::DynamicObject;
use serde_json::Value;
use tracing::{debug, info, info_span};

/// Which webhook a review came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Defaults (`/mutate`).
    Mutate,
    /// Validation (`/validate`).
    Validate,
}

/// What went wrong with an object, each problem with its field path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rejection {
    /// `(field path, message)`; the path is empty when the problem is not a field's.
    problems: Vec<(String, String)>,
}

impl Rejection {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            problems: vec![(path.into(), message.into())],
        }
    }

    fn message(&self) -> String {
        self.problems
            .iter()
            .map(|(path, message)| match path.is_empty() {
                true => message.clone(),
                false => format!("{path}: {message}"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn from_validation(errors: ValidationErrors) -> Self {
        Self {
            problems: errors
                .into_errors()
                .into_iter()
                .map(|error| {
                    let path = error.path().to_string();
                    let text = error.to_string();
                    // The error's text starts with its path; keep it once.
                    let message = text
                        .strip_prefix(&format!("{path}: "))
                        .map(str::to_string)
                        .unwrap_or(text);
                    (path, message)
                })
                .collect(),
        }
    }

    fn from_decode(error: DecodeError) -> Self {
        match error {
            DecodeError::UnknownField {
                path,
                expected,
                more,
                ..
            } => Self {
                problems: std::iter::once((path, format!("unknown field{expected}")))
                    .chain(
                        more.0
                            .into_iter()
                            .map(|field| (field.path, "unknown field".to_string())),
                    )
                    .collect(),
            },
            DecodeError::InvalidField { path, message, .. } => Self::one(path, message),
            other => Self::one("", strip_location(&other)),
        }
    }
}

/// A decode error's text without the `source:line:column: ` prefix, which means nothing
/// for an object that came as JSON from the API server.
fn strip_location(error: &DecodeError) -> String {
    let text = error.to_string();
    let prefix = format!("{}: ", error.location());
    text.strip_prefix(&prefix)
        .map(str::to_string)
        .unwrap_or(text)
}

/// Answers one review. Never fails: a review that cannot be read is answered as invalid,
/// which the API server reports as the webhook's refusal.
pub fn review(hook: Hook, body: &[u8]) -> AdmissionReview<DynamicObject> {
    let parsed: Result<AdmissionReview<DynamicObject>, _> = serde_json::from_slice(body);
    let request: AdmissionRequest<DynamicObject> = match parsed.map(|review| review.try_into()) {
        Ok(Ok(request)) => request,
        Ok(Err(_)) => return AdmissionResponse::invalid("the review has no request").into_review(),
        Err(error) => {
            return AdmissionResponse::invalid(format!("cannot read the review: {error}"))
                .into_review()
        }
    };
    let span = info_span!(
        "admission",
        hook = ?hook,
        kind = %request.kind.kind,
        operation = ?request.operation,
        object = %format!("{}/{}", request.namespace.as_deref().unwrap_or(""), request.name),
        user = request.user_info.username.as_deref().unwrap_or(""),
    );
    let _guard = span.enter();
    let response = AdmissionResponse::from(&request);
    let outcome = match hook {
        Hook::Mutate => mutate(&request).map(Some),
        Hook::Validate => check(&request).map(|()| None),
    };
    match outcome {
        Ok(None) => response.into_review(),
        Ok(Some(Mutation { patch, warnings })) => {
            let mut response = response;
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            if patch.0.is_empty() {
                return response.into_review();
            }
            patched(response, patch)
        }
        Err(rejection) => {
            info!(problems = rejection.problems.len(), message = %rejection.message(), "denied");
            deny(response, &request, &rejection).into_review()
        }
    }
}

/// The response carrying `patch`, or a refusal when the patch cannot be encoded.
fn patched(
    response: AdmissionResponse,
    patch: json_patch::Patch,
) -> AdmissionReview<DynamicObject> {
    match response.clone().with_patch(patch) {
        Ok(patched) => patched.into_review(),
        Err(error) => response
            .deny(format!("cannot encode the defaults: {error}"))
            .into_review(),
    }
}

/// A refusal as kubectl shows it: 422 Invalid, every field in `details.causes`.
fn deny(
    response: AdmissionResponse,
    request: &AdmissionRequest<DynamicObject>,
    rejection: &Rejection,
) -> AdmissionResponse {
    let mut response = response.deny(rejection.message());
    response.result.code = 422;
    response.result.reason = "Invalid".into();
    response.result.details = Some(StatusDetails {
        name: request.name.clone(),
        group: request.kind.group.clone(),
        kind: request.kind.kind.clone(),
        causes: rejection
            .problems
            .iter()
            .map(|(field, message)| StatusCause {
                reason: "FieldValueInvalid".into(),
                message: message.clone(),
                field: field.clone(),
            })
            .collect(),
        uid: String::new(),
        retry_after_seconds: 0,
    });
    response
}

/// The request's object as JSON, and its strict decoding.
fn decode(object: &DynamicObject) -> Result<(Value, Manifest), Rejection> {
    let json = serde_json::to_value(object)
        .map_err(|error| Rejection::one("", format!("cannot read the object: {error}")))?;
    let text = json.to_string();
    let mut manifests = parse_manifests(&text, "object").map_err(Rejection::from_decode)?;
    match (manifests.pop(), manifests.is_empty()) {
        (Some(manifest), true) => Ok((json, manifest)),
        _ => Err(Rejection::one("", "expected exactly one object")),
    }
}

fn object(request: &AdmissionRequest<DynamicObject>) -> Result<&DynamicObject, Rejection> {
    request
        .object
        .as_ref()
        .ok_or_else(|| Rejection::one("", "the review carries no object"))
}

/// What the mutating webhook changes, and the warnings kubectl prints about it.
struct Mutation {
    patch: json_patch::Patch,
    warnings: Vec<String>,
}

/// The defaults as a JSON patch of `spec`; on create, KubeVirt's finalizers dropped from
/// `metadata.finalizers` (an export carries them and nothing would remove them) and
/// Ironvisor's own added, so the controller's first reconcile need not write it (a write,
/// and a reconcile of its echo, per object).
fn mutate(request: &AdmissionRequest<DynamicObject>) -> Result<Mutation, Rejection> {
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return Ok(Mutation {
            patch: json_patch::Patch(Vec::new()),
            warnings: Vec::new(),
        });
    }
    let (original, manifest) = decode(object(request)?)?;
    let (defaulted_spec, finalizer) = match manifest {
        Manifest::VirtualMachine(mut vm) => {
            defaults::apply(&mut vm);
            (serde_json::to_value(&vm.spec), Some(VM_FINALIZER))
        }
        Manifest::VirtualMachineInstance(mut vmi) => {
            defaults::apply_vmi(&mut vmi);
            (serde_json::to_value(&vmi.spec), Some(VMI_FINALIZER))
        }
        // Not registered with the webhook; nothing to default should they come.
        Manifest::ClusterInstancetype(object) => (serde_json::to_value(&object.spec), None),
        Manifest::ClusterPreference(object) => (serde_json::to_value(&object.spec), None),
    };
    let defaulted_spec = defaulted_spec
        .map_err(|error| Rejection::one("spec", format!("cannot encode the defaults: {error}")))?;
    let mut defaulted = original.clone();
    defaulted["spec"] = defaulted_spec;
    let mut warnings = Vec::new();
    if matches!(request.operation, Operation::Create) {
        warnings.extend(drop_kubevirt_finalizers(&mut defaulted));
        if let Some(finalizer) = finalizer {
            add_finalizer(&mut defaulted, finalizer);
        }
    }
    let patch = json_patch::diff(&original, &defaulted);
    debug!(operations = patch.0.len(), "defaults");
    Ok(Mutation { patch, warnings })
}

/// Adds `finalizer` to `object`'s metadata unless it is there.
fn add_finalizer(object: &mut Value, finalizer: &str) {
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let finalizers = metadata
        .entry("finalizers")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(list) = finalizers.as_array_mut() {
        if !list.iter().any(|f| f.as_str() == Some(finalizer)) {
            list.push(Value::String(finalizer.into()));
        }
    }
}

/// Removes KubeVirt's finalizers from `object`'s metadata; returns a warning per finalizer.
fn drop_kubevirt_finalizers(object: &mut Value) -> Vec<String> {
    let finalizers: Vec<String> = object
        .pointer("/metadata/finalizers")
        .and_then(|value| serde_json::from_value(value.clone()).ok())
        .unwrap_or_default();
    let foreign: Vec<String> = compat::kubevirt_finalizers(&finalizers)
        .into_iter()
        .map(str::to_string)
        .collect();
    if foreign.is_empty() {
        return Vec::new();
    }
    let kept: Vec<&String> = finalizers.iter().filter(|f| !foreign.contains(f)).collect();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if kept.is_empty() {
            metadata.remove("finalizers");
        } else {
            metadata.insert("finalizers".into(), serde_json::json!(kept));
        }
    }
    foreign
        .iter()
        .map(|finalizer| {
            format!(
                "metadata.finalizers: KubeVirt's finalizer {finalizer} was dropped: no KubeVirt \
                 controller handles ironvisor.io objects, so nothing would ever remove it"
            )
        })
        .collect()
}

/// Validation; `Ok` admits the request.
fn check(request: &AdmissionRequest<DynamicObject>) -> Result<(), Rejection> {
    match request.operation {
        Operation::Create => {}
        Operation::Update => {
            let new = object(request)?;
            let old = request
                .old_object
                .as_ref()
                .ok_or_else(|| Rejection::one("", "the update review carries no old object"))?;
            let (old_spec, new_spec) = (&old.data["spec"], &new.data["spec"]);
            if old_spec == new_spec {
                debug!("spec unchanged: admitted without validation");
                return Ok(());
            }
            if request.kind.kind == VIRTUAL_MACHINE_INSTANCE_KIND {
                return Err(immutable_instance_spec(old_spec, new_spec));
            }
        }
        // DELETE and CONNECT are not registered; admit them should they come.
        _ => return Ok(()),
    }
    let (_, manifest) = decode(object(request)?)?;
    let result = match manifest {
        Manifest::VirtualMachine(mut vm) => {
            defaults::apply(&mut vm);
            validate::vm(&vm)
        }
        Manifest::VirtualMachineInstance(mut vmi) => {
            defaults::apply_vmi(&mut vmi);
            validate::vmi(&vmi)
        }
        Manifest::ClusterInstancetype(object) => validate::instancetype(&object),
        Manifest::ClusterPreference(object) => validate::preference(&object),
    };
    result.map_err(Rejection::from_validation)
}

/// The refusal of a changed instance spec, naming every changed field.
fn immutable_instance_spec(old: &Value, new: &Value) -> Rejection {
    let changes = json_patch::diff(old, new);
    let mut problems: Vec<(String, String)> = changes
        .0
        .iter()
        .map(|operation| {
            let pointer = match operation {
                json_patch::PatchOperation::Add(op) => op.path.to_string(),
                json_patch::PatchOperation::Remove(op) => op.path.to_string(),
                json_patch::PatchOperation::Replace(op) => op.path.to_string(),
                json_patch::PatchOperation::Move(op) => op.path.to_string(),
                json_patch::PatchOperation::Copy(op) => op.path.to_string(),
                json_patch::PatchOperation::Test(op) => op.path.to_string(),
            };
            (
                field_path("spec", &pointer),
                format!(
                    "a {VIRTUAL_MACHINE_INSTANCE_KIND}'s spec cannot change after creation \
                     (change its {VIRTUAL_MACHINE_KIND} and restart it instead)"
                ),
            )
        })
        .collect();
    problems.dedup();
    if problems.is_empty() {
        problems.push(("spec".into(), "spec cannot change after creation".into()));
    }
    Rejection { problems }
}

/// `spec` + JSON pointer `/domain/devices/disks/0/name` → `spec.domain.devices.disks[0].name`.
fn field_path(root: &str, pointer: &str) -> String {
    let mut path = root.to_string();
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{token}]"));
        } else {
            path.push('.');
            path.push_str(&token);
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm(spec: Value) -> Value {
        json!({
            "apiVersion": "ironvisor.io/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": {"name": "small", "namespace": "default", "uid": "u-1",
                         "resourceVersion": "7", "generation": 1,
                         "creationTimestamp": "2026-12-04T00:00:00Z",
                         "managedFields": [{"manager": "kubectl", "operation": "Update",
                                            "apiVersion": "ironvisor.io/v1alpha1",
                                            "time": "2026-12-04T00:00:00Z",
                                            "fieldsType": "FieldsV1", "fieldsV1": {}}]},
            "spec": spec,
        })
    }

    /// An instance of `vm_spec`'s template.
    fn vmi(vm_spec: Value) -> Value {
        json!({
            "apiVersion": "ironvisor.io/v1alpha1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "small", "namespace": "default"},
            "spec": vm_spec["template"]["spec"],
        })
    }

    fn small_spec() -> Value {
        json!({
            "runStrategy": "Always",
            "template": {"spec": {
                "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                           "memory": {"guest": "128Mi"}},
                "volumes": [{"name": "root", "containerDisk": {"image": "rootfs:busybox"}}]
            }}
        })
    }

    fn request(kind: &str, operation: &str, object: Value, old: Option<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "req-1",
                "kind": {"group": "ironvisor.io", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "ironvisor.io", "version": "v1alpha1",
                             "resource": "virtualmachines"},
                "name": "small", "namespace": "default",
                "operation": operation,
                "userInfo": {"username": "alice"},
                "object": object,
                "oldObject": old,
                "dryRun": false,
            }
        }))
        .unwrap()
    }

    fn answer(hook: Hook, body: &[u8]) -> AdmissionResponse {
        let review = review(hook, body);
        review.response.expect("a response")
    }

    #[test]
    fn a_good_vm_is_admitted_and_defaulted_by_a_patch_of_spec_and_its_finalizer() {
        let body = request("VirtualMachine", "CREATE", vm(small_spec()), None);
        let validated = answer(Hook::Validate, &body);
        assert!(validated.allowed, "{:?}", validated.result);
        assert_eq!(validated.uid, "req-1");

        let mutated = answer(Hook::Mutate, &body);
        assert!(mutated.allowed);
        let patch: Vec<Value> = serde_json::from_slice(&mutated.patch.expect("a patch")).unwrap();
        assert!(!patch.is_empty());
        for operation in &patch {
            let path = operation["path"].as_str().unwrap();
            assert!(
                path.starts_with("/spec/") || path.starts_with("/metadata/finalizers"),
                "{operation}"
            );
        }
        // Applying the patch and defaulting again changes nothing more.
        let mut defaulted = vm(small_spec());
        let patch: json_patch::Patch = serde_json::from_value(json!(patch)).unwrap();
        json_patch::patch(&mut defaulted, &patch).unwrap();
        let again = answer(
            Hook::Mutate,
            &request("VirtualMachine", "CREATE", defaulted, None),
        );
        assert_eq!(again.patch, None);
    }

    #[test]
    fn ironvisors_finalizer_is_added_on_create_only_and_once() {
        for (kind, object, finalizer) in [
            ("VirtualMachine", vm(small_spec()), VM_FINALIZER),
            ("VirtualMachineInstance", vmi(small_spec()), VMI_FINALIZER),
        ] {
            let mut object = object;
            let mutated = answer(Hook::Mutate, &request(kind, "CREATE", object.clone(), None));
            let patch: json_patch::Patch =
                serde_json::from_slice(&mutated.patch.expect("a patch")).unwrap();
            json_patch::patch(&mut object, &patch).unwrap();
            assert_eq!(
                object["metadata"]["finalizers"],
                json!([finalizer]),
                "{kind}"
            );
            // Present already: not added twice.
            let again = answer(Hook::Mutate, &request(kind, "CREATE", object.clone(), None));
            assert_eq!(again.patch, None, "{kind}");
        }
        // An update leaves the finalizers as they are (the controller removes its own).
        let updated = vm(small_spec());
        let mutated = answer(
            Hook::Mutate,
            &request("VirtualMachine", "UPDATE", updated.clone(), Some(updated)),
        );
        if let Some(patch) = mutated.patch {
            let patch: Vec<Value> = serde_json::from_slice(&patch).unwrap();
            assert!(
                patch.iter().all(|op| op["path"] != "/metadata/finalizers"),
                "{patch:?}"
            );
        }
    }

    #[test]
    fn kubevirts_finalizer_is_dropped_on_create_with_a_warning() {
        let mut object = vm(small_spec());
        object["metadata"]["finalizers"] = json!([
            "kubevirt.io/virtualMachineControllerFinalize",
            "example.com/keep"
        ]);
        let mutated = answer(
            Hook::Mutate,
            &request("VirtualMachine", "CREATE", object.clone(), None),
        );
        assert!(mutated.allowed);
        let patch: json_patch::Patch =
            serde_json::from_slice(&mutated.patch.expect("a patch")).unwrap();
        json_patch::patch(&mut object, &patch).unwrap();
        assert_eq!(
            object["metadata"]["finalizers"],
            json!(["example.com/keep", VM_FINALIZER])
        );
        let warnings = mutated.warnings.expect("a warning");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with(
                "metadata.finalizers: KubeVirt's finalizer \
                 kubevirt.io/virtualMachineControllerFinalize was dropped"
            ),
            "{warnings:?}"
        );

        // Only on create: an update leaves finalizers alone.
        let mut updated = vm(small_spec());
        updated["metadata"]["finalizers"] = json!(["kubevirt.io/virtualMachineControllerFinalize"]);
        let patch = answer(
            Hook::Mutate,
            &request("VirtualMachine", "UPDATE", updated.clone(), Some(updated)),
        )
        .patch
        .map(|bytes| serde_json::from_slice::<Vec<Value>>(&bytes).unwrap())
        .unwrap_or_default();
        assert!(
            patch
                .iter()
                .all(|op| op["path"].as_str().unwrap().starts_with("/spec/")),
            "{patch:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_field_path() {
        let mut spec = small_spec();
        spec["running"] = json!(true);
        spec["template"]["spec"]["domain"]["memory"]["guest"] = json!("12 parsecs");
        spec["template"]["spec"]["domain"]["devices"]["disks"][0]["name"] = json!("other");
        let response = answer(
            Hook::Validate,
            &request("VirtualMachine", "CREATE", vm(spec), None),
        );
        assert!(!response.allowed);
        assert_eq!(response.result.code, 422);
        let message = &response.result.message;
        assert!(
            message.contains("spec.template.spec.domain.memory.guest"),
            "{message}"
        );
        let causes = response.result.details.unwrap().causes;
        assert!(causes.iter().all(|c| c.reason == "FieldValueInvalid"));
        assert!(!causes.is_empty());
    }

    #[test]
    fn validation_problems_keep_their_paths() {
        let mut spec = small_spec();
        spec["running"] = json!(true);
        spec["template"]["spec"]["domain"]["devices"]["disks"][0]["name"] = json!("other");
        let response = answer(
            Hook::Validate,
            &request("VirtualMachine", "CREATE", vm(spec), None),
        );
        let causes = response.result.details.unwrap().causes;
        let fields: Vec<_> = causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.running"), "{fields:?}");
        assert!(
            fields
                .iter()
                .any(|f| f.starts_with("spec.template.spec.domain.devices.disks[0]")),
            "{fields:?}"
        );
        assert!(
            response.result.message.contains("mutually exclusive"),
            "{}",
            response.result.message
        );
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let mut spec = small_spec();
        spec["template"]["spec"]["domain"]["cpuu"] = json!({"cores": 2});
        let response = answer(
            Hook::Validate,
            &request("VirtualMachine", "CREATE", vm(spec), None),
        );
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .contains("spec.template.spec.domain.cpuu"),
            "{}",
            response.result.message
        );
        assert!(
            !response.result.message.contains("object:"),
            "{}",
            response.result.message
        );
    }

    #[test]
    fn metadata_only_updates_are_admitted_even_when_the_spec_would_not_pass() {
        let mut spec = small_spec();
        spec["running"] = json!(true);
        let old = vm(spec.clone());
        let mut new = vm(spec);
        new["metadata"]["finalizers"] = json!([]);
        let response = answer(
            Hook::Validate,
            &request("VirtualMachine", "UPDATE", new, Some(old)),
        );
        assert!(response.allowed, "{:?}", response.result);
    }

    #[test]
    fn an_instance_spec_cannot_change() {
        let vmi = |memory: &str| {
            json!({
                "apiVersion": "ironvisor.io/v1alpha1",
                "kind": "VirtualMachineInstance",
                "metadata": {"name": "small", "namespace": "default"},
                "spec": {
                    "domain": {"devices": {"disks": [{"name": "root", "disk": {}}]},
                               "memory": {"guest": memory}},
                    "volumes": [{"name": "root", "containerDisk": {"image": "rootfs:busybox"}}]
                }
            })
        };
        let body = request(
            "VirtualMachineInstance",
            "UPDATE",
            vmi("256Mi"),
            Some(vmi("128Mi")),
        );
        let response = answer(Hook::Validate, &body);
        assert!(!response.allowed);
        let causes = response.result.details.unwrap().causes;
        assert_eq!(causes[0].field, "spec.domain.memory.guest");
        assert!(
            causes[0].message.contains("cannot change"),
            "{}",
            causes[0].message
        );
    }

    #[test]
    fn unreadable_reviews_are_answered_not_crashed_on() {
        let review = review(Hook::Validate, b"{not json");
        let response = review.response.unwrap();
        assert!(!response.allowed);
        assert!(response.result.message.contains("cannot read the review"));

        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let response = review_of(&deep);
        assert!(!response.allowed);
    }

    fn review_of(text: &str) -> AdmissionResponse {
        review(Hook::Validate, text.as_bytes()).response.unwrap()
    }

    #[test]
    fn field_paths_read_like_kubectl_paths() {
        assert_eq!(
            field_path("spec", "/domain/devices/disks/0/name"),
            "spec.domain.devices.disks[0].name"
        );
        assert_eq!(field_path("spec", "/a~1b"), "spec.a/b");
        assert_eq!(field_path("spec", ""), "spec");
    }
}
