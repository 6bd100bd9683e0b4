"""deploy/: every manifest is valid against the Kubernetes 1.34 API schemas
(kubernetes-validate, strict: unknown fields fail), the kustomization lists every file,
and the RBAC is least privilege (no '*' anywhere)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
#: The test cluster's storage add-on (applied by scripts/cluster.sh up).
STORAGE = Path(__file__).resolve().parents[2] / "scripts" / "cluster" / "storage"
KUBERNETES_VERSION = "1.34.0"


def manifests() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")) + sorted(STORAGE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def test_there_are_manifests() -> None:
    kinds = {doc["kind"] for _, doc in manifests()}
    assert {"Namespace", "CustomResourceDefinition", "ClusterRole", "Deployment"} <= kinds


@pytest.mark.parametrize(
    "path,doc", manifests(), ids=lambda v: v if isinstance(v, str) else None
)
def test_manifest_is_valid(path: Path, doc: dict) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {error}")


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    files = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert set(listed) == files


def test_rbac_has_no_wildcards() -> None:
    for path, doc in manifests():
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in doc.get("rules", []):
            for field in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule.get(field, []), f"{path.name}: {doc['metadata']['name']}: {field} has '*'"


def test_workloads_never_pull_and_are_not_privileged() -> None:
    for path, doc in manifests():
        if doc["kind"] not in ("Deployment", "DaemonSet"):
            continue
        spec = doc["spec"]["template"]["spec"]
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            assert container["image"].startswith("docker.io/ironvisor/"), container["image"]
            assert container.get("imagePullPolicy") in ("IfNotPresent", "Never")
