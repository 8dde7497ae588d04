"""Kubernetes manifests: schema-valid (kubernetes-validate, offline schemas) and consistent with
the daemon they deploy (its config model, admin port, drain deadline, metric names)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the lock

from bridge import metrics
from bridge.config import LimitsConfig, load_settings
from bridge.sessions import ABANDON_GRACE_S
from tests.deploy.files import DEPLOY

K8S = DEPLOY / "kubernetes"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
# preStop only asks for the drain (an HTTP call with a 5 s client timeout).
PRESTOP_BUDGET_S = 5
# After the drain deadline, closing the last sessions stops each LiveAvatar session over REST,
# bounded: what is still closing then is cancelled (bridge/sessions.py).
CLOSE_BUDGET_S = LimitsConfig.model_fields["close_timeout_s"].default + ABANDON_GRACE_S

kubernetes_validate = pytest.importorskip("kubernetes_validate")


def _load(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name} is empty"
    return docs


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in _load(path):
            out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def bridge_container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "avatar-bridge")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_schema_valid(path: Path) -> None:
    for doc in _load(path):
        # strict: unknown fields (typos) are errors. Schemas ship inside the package (offline).
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_validator_rejects_a_typo(objects: dict[str, dict[str, Any]]) -> None:
    bad = copy.deepcopy(objects["Deployment"])
    bad["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.30.0", strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in MANIFESTS)


def test_configmap_is_a_valid_daemon_config(
    objects: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    toml = tmp_path / "avatar-bridge.toml"
    toml.write_text(objects["ConfigMap"]["data"]["avatar-bridge.toml"])
    settings = load_settings(toml, {"dry_run": True})
    assert settings.admin.host == "0.0.0.0"  # the kubelet probes the pod IP
    assert settings.ingest.socket_path is not None
    assert settings.log.format == "json"


def _settings(objects: dict[str, dict[str, Any]], tmp_path: Path) -> Any:
    toml = tmp_path / "c.toml"
    toml.write_text(objects["ConfigMap"]["data"]["avatar-bridge.toml"])
    return load_settings(toml, {"dry_run": True})


def test_pod_wiring_matches_the_config(
    objects: dict[str, dict[str, Any]], bridge_container: dict[str, Any], tmp_path: Path
) -> None:
    settings = _settings(objects, tmp_path)
    pod = objects["Deployment"]["spec"]["template"]["spec"]

    # Both containers share the socket directory through one emptyDir.
    socket_dir = str(settings.ingest.socket_path.parent)
    volumes = {v["name"]: v for v in pod["volumes"]}
    sharing = [
        c["name"]
        for c in pod["containers"]
        for m in c.get("volumeMounts", [])
        if m["mountPath"] == socket_dir and "emptyDir" in volumes[m["name"]]
    ]
    assert sorted(sharing) == ["agent", "avatar-bridge"]
    # The agent can open the 0660 socket: every container runs with the daemon's group.
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["fsGroup"] == sc["runAsGroup"] == 10001

    # The config and credentials land where the daemon reads them.
    mounts = {m["mountPath"]: m["name"] for m in bridge_container["volumeMounts"]}
    assert mounts["/etc/avatar-bridge"] == "config"  # DEFAULT_CONFIG_PATH's directory
    assert mounts[str(settings.state_dir)] == "state"
    env = {e["name"]: e["value"] for e in bridge_container["env"]}
    creds_dir = env["CREDENTIALS_DIRECTORY"]
    assert (
        volumes[mounts[creds_dir]]["secret"]["secretName"] == objects["Secret"]["metadata"]["name"]
    )
    assert volumes["credentials"]["secret"]["defaultMode"] == 0o440
    assert {"liveavatar_api_key", "stream_api_key", "stream_api_secret", "admin_token"} <= set(
        objects["Secret"]["stringData"]
    )


def test_probes_drain_and_grace_period(
    objects: dict[str, dict[str, Any]], bridge_container: dict[str, Any], tmp_path: Path
) -> None:
    settings = _settings(objects, tmp_path)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in bridge_container["ports"]}
    assert ports["admin"] == settings.admin.port
    assert bridge_container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert bridge_container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert bridge_container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert bridge_container[probe]["httpGet"]["port"] in ("admin", settings.admin.port)

    pre_stop = " ".join(bridge_container["lifecycle"]["preStop"]["exec"]["command"])
    assert "avatar-bridge drain" in pre_stop
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > PRESTOP_BUDGET_S + settings.limits.drain_timeout_s + CLOSE_BUDGET_S

    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.admin.port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_hpa_scales_on_the_sessions_gauge(
    objects: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    settings = _settings(objects, tmp_path)
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == objects["Deployment"]["metadata"]["name"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    # The metric the daemon really exports under that name, and a target below the pod's cap.
    assert metric["pods"]["metric"]["name"] == metrics.SESSIONS_ACTIVE._name
    target = float(metric["pods"]["target"]["averageValue"])
    assert 0 < target < settings.limits.max_sessions
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_pdb_selects_the_pods(objects: dict[str, dict[str, Any]]) -> None:
    pdb = objects["PodDisruptionBudget"]["spec"]
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1
