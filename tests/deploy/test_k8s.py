"""Kubernetes manifests: strict schema validation against the Kubernetes API, and consistent wiring.

No cluster is reachable here, so nothing is applied; the GPU overlay is rendered with `kubectl kustomize`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import kubernetes_validate
import pytest
import yaml

from stream.config import StreamSettings
from tests.deploy.conftest import DEPLOY_DIR

K8S_DIR = DEPLOY_DIR / "k8s"
KUBERNETES_VERSION = "1.30.0"


def base_resources() -> dict[str, dict]:
    """Resources of the base kustomization, keyed by kind."""
    kustomization = yaml.safe_load((K8S_DIR / "base" / "kustomization.yaml").read_text())
    documents = [yaml.safe_load((K8S_DIR / "base" / name).read_text()) for name in kustomization["resources"]]
    return {document["kind"]: document for document in documents}


def kustomize(path: str) -> dict[str, dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; it renders the kustomize overlays")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR / path)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return {document["kind"]: document for document in yaml.safe_load_all(rendered)}


@pytest.mark.parametrize("kind", sorted(base_resources()))
def test_base_manifest_is_valid_kubernetes(kind: str) -> None:
    kubernetes_validate.validate(base_resources()[kind], KUBERNETES_VERSION, strict=True)


def test_validation_rejects_a_misspelled_field() -> None:
    statefulset = base_resources()["StatefulSet"]
    statefulset["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


def test_configmap_sets_only_worker_settings() -> None:
    settings_env = {f"BUNDLECAST_{name.upper()}" for name in StreamSettings.model_fields}
    assert set(base_resources()["ConfigMap"]["data"]) <= settings_env


def test_workers_keep_state_on_their_own_volumes_and_mount_the_model_read_only() -> None:
    resources = base_resources()
    env = resources["ConfigMap"]["data"]
    statefulset = resources["StatefulSet"]["spec"]
    (container,) = statefulset["template"]["spec"]["containers"]
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    (state_claim,) = statefulset["volumeClaimTemplates"]
    assert mounts[state_claim["metadata"]["name"]]["mountPath"] == env["BUNDLECAST_STATE_DIR"]
    assert state_claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    models = mounts["models"]
    assert models["mountPath"] == env["BUNDLECAST_MODEL_DIR"] and models["readOnly"]
    (models_volume,) = [v for v in statefulset["template"]["spec"]["volumes"] if v["name"] == "models"]
    assert (
        models_volume["persistentVolumeClaim"]["claimName"]
        == resources["PersistentVolumeClaim"]["metadata"]["name"]
    )


def test_headless_service_exposes_the_metrics_port_prometheus_discovers() -> None:
    resources = base_resources()
    service, statefulset = resources["Service"], resources["StatefulSet"]
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert (
        service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    )
    (port,) = [port for port in service["spec"]["ports"] if port["name"] == "metrics"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    (container_port,) = [port for port in container["ports"] if port["name"] == "metrics"]
    assert port["targetPort"] == container_port["name"]
    assert str(container_port["containerPort"]) == resources["ConfigMap"]["data"]["BUNDLECAST_METRICS_PORT"]
    namespace = yaml.safe_load((K8S_DIR / "base" / "kustomization.yaml").read_text())["namespace"]
    srv_record = f"_{port['name']}._tcp.{service['metadata']['name']}.{namespace}.svc.cluster.local"
    scrape = yaml.safe_load((DEPLOY_DIR / "prometheus" / "prometheus-k8s.yml").read_text())["scrape_configs"]
    assert [srv_record] in [
        discovery["names"] for job in scrape for discovery in job.get("dns_sd_configs", [])
    ]


def test_gpu_overlay_requests_a_gpu_on_gpu_nodes() -> None:
    cpu, gpu = kustomize("base"), kustomize("gpu")
    for document in gpu.values():
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    pod = gpu["StatefulSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and pod["tolerations"]
    assert container["image"].endswith("-gpu")
    assert "nvidia.com/gpu" not in cpu["StatefulSet"]["spec"]["template"]["spec"]["containers"][0][
        "resources"
    ].get("limits", {})


def test_a_job_trains_the_model_into_the_volume_the_workers_wait_for() -> None:
    resources = base_resources()
    env = resources["ConfigMap"]["data"]
    job = resources["Job"]["spec"]["template"]["spec"]
    (trainer,) = job["containers"]
    args = trainer["args"]
    assert args[0] == "train" and args[args.index("--out") + 1] == env["BUNDLECAST_MODEL_DIR"]
    (mount,) = trainer["volumeMounts"]
    assert mount["mountPath"] == env["BUNDLECAST_MODEL_DIR"] and not mount.get("readOnly")
    assert args[args.index("--data") + 1].startswith(mount["mountPath"] + "/")
    (volume,) = job["volumes"]
    claim = resources["PersistentVolumeClaim"]["metadata"]["name"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    pod = resources["StatefulSet"]["spec"]["template"]["spec"]
    (wait,) = pod["initContainers"]
    assert f"{env['BUNDLECAST_MODEL_DIR']}/LATEST" in " ".join(wait["command"])


def test_workers_are_live_while_answering_and_ready_once_they_hold_a_partition() -> None:
    (container,) = base_resources()["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    probed = {probe["httpGet"]["port"] for probe in (container["livenessProbe"], container["readinessProbe"])}
    assert probed == {"metrics"} and "metrics" in {port["name"] for port in container["ports"]}


def test_every_worker_serves_the_query_api_where_the_others_reach_it() -> None:
    resources = base_resources()
    (container,) = resources["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    (web,) = [port for port in container["ports"] if port["name"] == "web"]
    assert str(web["containerPort"]) == resources["ConfigMap"]["data"]["BUNDLECAST_WEB_PORT"]
    (host,) = [env for env in container["env"] if env["name"] == "BUNDLECAST_WEB_HOST"]
    assert host["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert "web" in {port["targetPort"] for port in resources["Service"]["spec"]["ports"]}


def test_every_image_uses_the_one_tag_scheme() -> None:
    version = tomllib.loads((DEPLOY_DIR.parent / "pyproject.toml").read_text())["project"]["version"]
    resources = base_resources()
    pods = [
        resources["StatefulSet"]["spec"]["template"]["spec"],
        resources["Job"]["spec"]["template"]["spec"],
    ]
    images = {c["image"] for pod in pods for c in [*pod.get("initContainers", []), *pod["containers"]]}
    compose = yaml.safe_load((DEPLOY_DIR / "docker-compose.yml").read_text())
    compose_image = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", compose["services"]["worker"]["image"])
    assert images == {compose_image} == {f"bundlecast:{version}"}
    gpu = yaml.safe_load((K8S_DIR / "gpu" / "kustomization.yaml").read_text())["images"]
    assert gpu == [{"name": "bundlecast", "newTag": f"{version}-gpu"}]
