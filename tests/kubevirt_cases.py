"""The KubeVirt corpus (tests/kubevirt_corpus/) as the standalone and cluster tests run
it: each file with only its apiVersion changed, and what its guest must show."""

from __future__ import annotations

from images.common import REPO_ROOT

CORPUS = REPO_ROOT / "tests" / "kubevirt_corpus"

#: corpus file, VM name, the guest's CPU packages, its RTC's offset from UTC (seconds),
#: whether a SATA disk is mapped (Warning event DiskBusMapped).
CASES = [
    ("exported-crm.yaml", "legacy-crm", "0,1", 19_800, False),
    ("devices-web.yaml", "devices-web", "0,0", -3_600, True),
]
CASE_IDS = [case[0] for case in CASES]


def as_ironvisor(name: str) -> str:
    """The corpus file's text with only its apiVersion changed."""
    text = (CORPUS / name).read_text()
    assert "apiVersion: kubevirt.io/v1\n" in text, name
    return text.replace("apiVersion: kubevirt.io/v1\n", "apiVersion: ironvisor.io/v1alpha1\n")
