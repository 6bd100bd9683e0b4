//! Every field of a document that its kind does not have, in one pass. The strict decoder
//! stops at the first unknown field; this walk compares the whole document with the
//! kind's CRD schema (the same types, so the same fields) to report all of them at once.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

use crate::crd::{CrdError, CrdKind};
use crate::locate::Segment;

/// `metadata` fields the decoder accepts (Kubernetes' `ObjectMeta`, server-set ones too).
pub const METADATA_FIELDS: [&str; 15] = [
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

/// The paths of every unknown field of `document` (a whole object of `kind`), in the
/// order the walk meets them. `status` is not looked at: it is ignored on apply.
pub fn unknown_fields(kind: CrdKind, document: &Value) -> Result<Vec<Vec<Segment>>, CrdError> {
    let crd = kind.cached_crd()?;
    let mut found = Vec::new();
    let Value::Object(object) = document else {
        return Ok(found);
    };
    let root = crd
        .spec
        .versions
        .first()
        .and_then(|version| version.schema.as_ref())
        .and_then(|schema| schema.open_api_v3_schema.as_ref());
    for (key, value) in object {
        let path = vec![Segment::Key(key.clone())];
        match key.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                if let Value::Object(meta) = value {
                    found.extend(
                        meta.keys()
                            .filter(|field| !METADATA_FIELDS.contains(&field.as_str()))
                            .map(|field| extend(&path, Segment::Key(field.clone()))),
                    );
                }
            }
            _ => match root.and_then(|root| property(root, key)) {
                Some(schema) => walk(schema, value, &path, &mut found),
                None => found.push(path),
            },
        }
    }
    Ok(found)
}

/// The schema of `key` in an object schema with named properties.
fn property<'s>(schema: &'s JSONSchemaProps, key: &str) -> Option<&'s JSONSchemaProps> {
    schema.properties.as_ref()?.get(key)
}

fn extend(path: &[Segment], segment: Segment) -> Vec<Segment> {
    let mut longer = path.to_vec();
    longer.push(segment);
    longer
}

fn walk(schema: &JSONSchemaProps, value: &Value, path: &[Segment], found: &mut Vec<Vec<Segment>>) {
    if schema.x_kubernetes_preserve_unknown_fields == Some(true) {
        return;
    }
    match value {
        Value::Object(object) => {
            let free_keys = match &schema.additional_properties {
                Some(JSONSchemaPropsOrBool::Schema(values)) => Some(values.as_ref()),
                _ => None,
            };
            for (key, value) in object {
                let path = extend(path, Segment::Key(key.clone()));
                match (property(schema, key), free_keys) {
                    (Some(field), _) => walk(field, value, &path, found),
                    (None, Some(values)) => walk(values, value, &path, found),
                    // An object schema with named properties is closed.
                    (None, None) if schema.properties.is_some() => found.push(path),
                    // No properties at all: an open object.
                    (None, None) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
                for (index, item_value) in items.iter().enumerate() {
                    walk(
                        item,
                        item_value,
                        &extend(path, Segment::Index(index)),
                        found,
                    );
                }
            }
        }
        _ => {}
    }
}

/// A path in the decoder's notation: `spec.template.spec.domain.devices.disks[1].nmae`.
pub fn display_path(path: &[Segment]) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Index(index) => text.push_str(&format!("[{index}]")),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(kind: CrdKind, document: Value) -> Vec<String> {
        unknown_fields(kind, &document)
            .unwrap()
            .iter()
            .map(|path| display_path(path))
            .collect()
    }

    #[test]
    fn every_unknown_field_is_found_with_its_path() {
        let vm = json!({
            "apiVersion": "ironvisor.io/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": {"name": "a", "uid": "1", "colour": "red"},
            "spec": {
                "runStrategy": "Always",
                "bogus": 1,
                "template": {
                    "metadata": {"labels": {"any.key/x": "y"}},
                    "spec": {
                        "domain": {
                            "devices": {
                                "disks": [{"name": "root"}, {"name": "data", "nmae": "x"}]
                            },
                            "resources": {"requests": {"memory": "1Gi", "hugepages-2Mi": "2Mi"}}
                        },
                        "volumes": [{"name": "root", "containerDisk": {"image": "i", "tag": 1}}]
                    }
                }
            },
            "status": {"printableStatus": "Running", "anything": {"goes": true}},
            "extra": true
        });
        let mut found = paths(CrdKind::VirtualMachine, vm);
        found.sort();
        assert_eq!(
            found,
            [
                "extra",
                "metadata.colour",
                "spec.bogus",
                "spec.template.spec.domain.devices.disks[1].nmae",
                "spec.template.spec.volumes[0].containerDisk.tag",
            ]
        );
    }

    #[test]
    fn a_known_document_has_no_unknown_fields() {
        let vmi = json!({
            "apiVersion": "ironvisor.io/v1alpha1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "a"},
            "spec": {"domain": {"memory": {"guest": "128Mi"}}},
        });
        assert!(paths(CrdKind::VirtualMachineInstance, vmi).is_empty());
    }

    #[test]
    fn paths_are_written_like_the_decoders() {
        let path = [
            Segment::Key("spec".into()),
            Segment::Key("disks".into()),
            Segment::Index(1),
            Segment::Key("nmae".into()),
        ];
        assert_eq!(display_path(&path), "spec.disks[1].nmae");
    }
}
