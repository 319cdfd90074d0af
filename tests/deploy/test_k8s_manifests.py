"""deploy/k8s: every manifest validates against the Kubernetes schemas, and the pieces fit together
(probes on /health, the HPA's metric is one the server exports, the adapter rule serves it)."""

from __future__ import annotations

import pytest
import yaml

from iei.metrics import Metrics
from tests.server_process import REPO

K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"


def manifests() -> dict[str, dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return {name: yaml.safe_load((K8S / name).read_text()) for name in kustomization["resources"]}


@pytest.mark.parametrize("name", sorted(manifests()))
def test_manifest_validates_against_the_kubernetes_schema(name):
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing: pip install 'iei[deploy-lint]' (scripts/install.sh installs it)")
    kubernetes_validate.validate(manifests()[name], KUBERNETES_VERSION, strict=True)


def test_every_yaml_file_is_listed_or_is_the_adapter_values():
    files = {p.name for p in K8S.glob("*.yaml")}
    assert files == set(manifests()) | {"kustomization.yaml", "prometheus-adapter-values.yaml"}


def test_probes_use_health_and_the_cache_volume_is_the_pvc():
    docs = manifests()
    pod = docs["deployment.yaml"]["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"] == {"path": "/health", "port": "http"}
    claim = {v["name"]: v for v in pod["volumes"]}["model-cache"]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["model-cache-pvc.yaml"]["metadata"]["name"]
    assert {m["name"] for m in pod["initContainers"][0]["volumeMounts"]} == {"model-cache"}
    service = docs["service.yaml"]["spec"]
    assert service["selector"] == docs["deployment.yaml"]["spec"]["selector"]["matchLabels"]


def test_hpa_scales_the_deployment_on_a_metric_the_server_exports_and_the_adapter_serves():
    docs = manifests()
    hpa = docs["hpa.yaml"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["deployment.yaml"]["metadata"]["name"]
    (metric,) = hpa["metrics"]
    name = metric["pods"]["metric"]["name"]
    assert f"\n{name} " in Metrics().render().decode()  # a gauge on /metrics
    rule = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"][0]
    assert rule["seriesQuery"].startswith(name + "{") and rule["name"]["as"] == name
