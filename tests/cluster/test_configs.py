"""cluster/: the launcher YAMLs validate against Ray's own autoscaler schema, the KubeRay
manifests have the fields they must have, a broken copy of each fails, and local.sh parses."""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
LAUNCHER = sorted(CLUSTER.glob("*.yaml"))
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_the_configs_exist():
    assert {p.name for p in LAUNCHER} == {"aws.yaml", "gcp.yaml"}
    assert {p.name for p in KUBERAY} == {"raycluster.yaml", "rayjob.yaml"}


# --- cluster-launcher YAMLs (ray up) ----------------------------------------------------------


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_yaml_validates_against_rays_schema(path):
    config = load(path)
    jsonschema.validate(config, SCHEMA)
    # What `ray up` does: fill in the provider's defaults, then validate again.
    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_yaml_has_a_cpu_head_and_autoscaling_gpu_workers(path):
    config = load(path)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert len(workers) >= 2
    for node_type in workers.values():
        assert node_type["resources"]["GPU"] >= 1
        assert node_type["min_workers"] == 0
        assert 0 < node_type["max_workers"] <= config["max_workers"]
    spot = [json.dumps(t["node_config"]) for t in workers.values()]
    assert sum(("spot" in s.lower() or "preemptible" in s) for s in spot) == 1  # one spot type


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_yaml_security_defaults(path):
    text = path.read_text()
    config = load(path)
    # Nothing opened to the internet (comments aside); private addresses only.
    assert "0.0.0.0/0" not in json.dumps(config)
    assert config["provider"]["use_internal_ips"] is True
    for rule in config["provider"].get("security_group", {}).get("IpPermissions", []):
        assert rule["FromPort"] == rule["ToPort"] == 22  # SSH only: no dashboard or GCS port
        for r in rule["IpRanges"]:
            assert ipaddress.ip_network(r["CidrIp"]).is_private, r
    # Dashboard on 127.0.0.1 (SSH port-forwarding only); token authentication on every node.
    head_cmd = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmd
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start)
    # rayfl installed on every node.
    assert any("pip install" in c and "rayfl" in c for c in config["setup_commands"])
    assert_no_credentials(text)


def assert_no_credentials(text: str) -> None:
    lowered = text.lower()
    for word in ("aws_access_key_id", "aws_secret_access_key", "private_key", "password:"):
        assert word not in lowered, word
    assert "BEGIN" not in text or "PRIVATE KEY" not in text
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an AWS access key id
    assert not re.search(r"auth_token['\"]?\s*[:=]\s*['\"]?[0-9a-f]{20,}", text)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c.__setitem__("max_worker", c.pop("max_workers")),  # misspelled key
        lambda c: c.pop("provider"),  # a required field
        lambda c: next(iter(c["available_node_types"].values())).pop("resources"),
        lambda c: c.__setitem__("idle_timeout_minutes", "five"),  # wrong type
    ],
    ids=["misspelled", "no-provider", "no-resources", "wrong-type"],
)
def test_a_broken_launcher_yaml_fails(break_it):
    config = load(CLUSTER / "aws.yaml")
    break_it(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, SCHEMA)


# --- KubeRay manifests -------------------------------------------------------------------------

# The fields of KubeRay's ray.io/v1 CRDs that these manifests may use (KubeRay API reference); a
# key outside these sets is a typo the operator would silently drop.
CLUSTER_SPEC_KEYS = {
    "rayVersion", "authOptions", "enableInTreeAutoscaling", "autoscalerOptions",
    "headGroupSpec", "workerGroupSpecs", "headServiceAnnotations", "suspend",
    "managedBy", "gcsFaultToleranceOptions", "upgradeStrategy",
}  # fmt: skip
JOB_SPEC_KEYS = {
    "entrypoint", "runtimeEnvYAML", "rayClusterSpec", "clusterSelector", "jobId",
    "shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "activeDeadlineSeconds",
    "backoffLimit", "submissionMode", "submitterPodTemplate", "submitterConfig",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "metadata",
    "suspend", "managedBy", "deletionStrategy",
}  # fmt: skip
HEAD_KEYS = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_KEYS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
    "scaleStrategy", "numOfHosts", "idleTimeoutSeconds", "suspend",
}  # fmt: skip


def kuberay_errors(doc: dict[str, Any]) -> list[str]:
    """What a RayCluster or RayJob manifest lacks (empty: fine)."""
    errors: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            errors.append(msg)

    def unknown(d: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in set(d) - allowed:
            errors.append(f"{where}: unknown field {key!r}")

    need(doc.get("apiVersion") == "ray.io/v1", "apiVersion must be ray.io/v1")
    need(doc.get("kind") in ("RayCluster", "RayJob"), "kind must be RayCluster or RayJob")
    need(bool(doc.get("metadata", {}).get("name")), "metadata.name missing")
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayJob":
        unknown(spec, JOB_SPEC_KEYS, "spec")
        entry = spec.get("entrypoint", "")
        need(
            entry.startswith(("rayfl tune ", "rayfl run ")),
            "spec.entrypoint must run rayfl tune or rayfl run",
        )
        need(spec.get("shutdownAfterJobFinishes") is True, "spec.shutdownAfterJobFinishes")
        spec = spec.get("rayClusterSpec") or {}
        where = "spec.rayClusterSpec"
    else:
        where = "spec"
    unknown(spec, CLUSTER_SPEC_KEYS, where)
    need(isinstance(spec.get("rayVersion"), str), f"{where}.rayVersion missing")
    need(spec.get("enableInTreeAutoscaling") is True, f"{where}.enableInTreeAutoscaling: true")
    need(spec.get("authOptions", {}).get("mode") == "token", f"{where}.authOptions.mode: token")
    head = spec.get("headGroupSpec") or {}
    unknown(head, HEAD_KEYS, f"{where}.headGroupSpec")
    need(isinstance(head.get("rayStartParams"), dict), "headGroupSpec.rayStartParams missing")
    need(bool(_containers(head)), "headGroupSpec.template.spec.containers missing")
    need(
        head.get("serviceType", "ClusterIP") == "ClusterIP",
        "headGroupSpec.serviceType must stay ClusterIP (no public service)",
    )
    groups = spec.get("workerGroupSpecs") or []
    need(bool(groups), f"{where}.workerGroupSpecs missing")
    gpu_groups = 0
    for i, g in enumerate(groups):
        at = f"workerGroupSpecs[{i}]"
        unknown(g, WORKER_KEYS, at)
        need(bool(g.get("groupName")), f"{at}.groupName missing")
        need(isinstance(g.get("rayStartParams"), dict), f"{at}.rayStartParams missing")
        lo, hi = g.get("minReplicas"), g.get("maxReplicas")
        need(isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi, f"{at} replicas")
        containers = _containers(g)
        need(bool(containers), f"{at}.template.spec.containers missing")
        for c in containers:
            need(bool(c.get("name")) and bool(c.get("image")), f"{at}: container name/image")
            if str(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", "0")) != "0":
                gpu_groups += 1
    need(gpu_groups >= 1, "no worker group with nvidia.com/gpu limits")
    return errors


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return ((group.get("template") or {}).get("spec") or {}).get("containers") or []


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_has_the_fields_it_must_have(path):
    assert kuberay_errors(load(path)) == []
    assert_no_credentials(path.read_text())


def _cluster_spec(doc):
    return doc["spec"].get("rayClusterSpec", doc["spec"])


@pytest.mark.parametrize(
    ("path", "break_it", "expected"),
    [
        (
            "raycluster.yaml",
            lambda d: d["spec"].__setitem__(
                "enableInTreeAutoScaling", d["spec"].pop("enableInTreeAutoscaling")
            ),
            "unknown field 'enableInTreeAutoScaling'",
        ),
        (
            "raycluster.yaml",
            lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
                "resources"
            ]["limits"].pop("nvidia.com/gpu"),
            "no worker group with nvidia.com/gpu",
        ),
        ("rayjob.yaml", lambda d: d["spec"].pop("entrypoint"), "spec.entrypoint"),
        ("rayjob.yaml", lambda d: _cluster_spec(d).pop("authOptions"), "authOptions.mode"),
        ("rayjob.yaml", lambda d: d.__setitem__("apiVersion", "ray.io/v1alpha1"), "apiVersion"),
    ],
    ids=["misspelled", "no-gpu", "no-entrypoint", "no-auth", "old-api"],
)
def test_a_broken_kuberay_manifest_fails(path, break_it, expected):
    doc = load(CLUSTER / "kuberay" / path)
    break_it(doc)
    errors = kuberay_errors(doc)
    assert any(expected in e for e in errors), errors


# --- cluster/local.sh ----------------------------------------------------------------------------


def test_local_sh_parses():
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(CLUSTER / "local.sh")], check=True)


def test_local_sh_usage():
    out = subprocess.run(["bash", str(CLUSTER / "local.sh")], capture_output=True, text=True)
    assert out.returncode == 2
    assert "up|down|status" in out.stderr
