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
    # Two sockets from the instance type (the preference's socket topology), the RTC two
    # hours ahead from the preference.
    ("instancetype-app.yaml", "instancetype-app", "0,1", 7_200, False),
]
CASE_IDS = [case[0] for case in CASES]


#: KubeVirt's API versions and the one Ironvisor serves in their place.
KUBEVIRT_API_VERSIONS = ("apiVersion: kubevirt.io/v1\n",
                         "apiVersion: instancetype.kubevirt.io/v1beta1\n")
IRONVISOR_API_VERSION = "apiVersion: ironvisor.io/v1alpha1\n"


def as_ironvisor(name: str) -> str:
    """The corpus file's text with only its apiVersions changed."""
    text = (CORPUS / name).read_text()
    assert KUBEVIRT_API_VERSIONS[0] in text, name
    for api_version in KUBEVIRT_API_VERSIONS:
        text = text.replace(api_version, IRONVISOR_API_VERSION)
    return text
