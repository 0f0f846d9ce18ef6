"""The cluster configuration files, checked against what reads them.

`cluster/gcp_autoscaler.yaml`: Ray's own autoscaler schema (`ray-schema.json` of the installed
ray) on the file as written, then Ray's `prepare_config` and `validate_config`: the steps of
`ray up` before it calls GCP. The node types: a CPU-only head, a GPU worker type that scales
from zero and a CPU worker type, each declaring the vCPUs and GPUs of its machine type. Every
stage's default `neural` resources fit on a node type. The nodes install the torch that
pyproject.toml pins, the installed Ray version and a Python that requires-python allows. The
head keeps the service account `ray up` gives it. The upload leaves out what .gitignore lists.

`cluster/kuberay_rayjob.yaml`: a RayJob with known fields, a head group and worker groups.
The pods' resources are read as KubeRay turns them into `ray start` flags (num-cpus from the
CPU limit, else the request; num-gpus from the GPU limit), with requests equal to limits. Each
stage's per-actor or per-task CPUs and GPUs fit on one worker pod, and all actor pools at
their minimum sizes plus one task fit in the cluster at its start size (KubeRay without
autoscaling keeps it). The image is pinned (no `latest`), one for every group, and its tag,
`rayVersion` and the base image named in the header all name the installed Ray version, which
pyproject.toml allows. The entrypoint is a real `jobs/*.py` whose flags parse with that job's
own argument parser and whose configuration loads. The runtime environment sets what
cluster/runtime_env.yaml sets.

What these tests cannot check: a real Kubernetes API server, KubeRay's CRD schema or its
webhook; a real GCP project (quota, the machine types in the zone, the image families and
their drivers, service-account permissions, firewalls); node pools, node selectors, taints and
the GPU drivers on the nodes; the image's contents (that /app holds this checkout with its
dependencies, and a CUDA that matches the nodes' driver); that the models fit in GPU memory
at their default GPU shares; bucket permissions.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from s4d_ray.cli import JOBS, commands

REPO = Path(__file__).resolve().parents[1]
GCP_YAML = REPO / "cluster" / "gcp_autoscaler.yaml"
KUBERAY_YAML = REPO / "cluster" / "kuberay_rayjob.yaml"
RUNTIME_ENV_YAML = REPO / "cluster" / "runtime_env.yaml"

RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "rayClusterSpec",
    "submitterPodTemplate",
    "metadata",
    "clusterSelector",
    "submitterConfig",
    "managedBy",
    "deletionPolicy",
    "entrypoint",
    "runtimeEnvYAML",
    "jobId",
    "submissionMode",
    "entrypointResources",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes",
    "suspend",
}
"""The fields of KubeRay's ray.io/v1 RayJobSpec."""

WORKER_GROUP_FIELDS = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "numOfHosts",
    "idleTimeoutSeconds",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "suspend",
    "resources",
    "labels",
}
"""The fields of KubeRay's ray.io/v1 WorkerGroupSpec this file may use."""


# --- shared facts -----------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping."""
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path} must hold a mapping"
    return document


def pyproject() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def requirement(name: str) -> Any:
    """The project's requirement on `name` (a `packaging` Requirement)."""
    from packaging.requirements import Requirement

    for line in pyproject()["project"]["dependencies"]:
        parsed = Requirement(line)
        if parsed.name == name:
            return parsed
    raise AssertionError(f"pyproject.toml has no dependency on {name}")


def installed_ray() -> str:
    import ray

    return ray.__version__


def check_ray_version(version: str, where: str) -> None:
    """`version` (named in a cluster file) is the installed Ray, which pyproject allows."""
    installed = installed_ray()
    assert version == installed, (
        f"{where} names Ray {version}, the client here is Ray {installed}: a cluster must run "
        f"the client's version; set {installed} in cluster/gcp_autoscaler.yaml (setup_commands) "
        "and cluster/kuberay_rayjob.yaml (rayVersion, the image tag, the base image)"
    )
    assert requirement("ray").specifier.contains(version), (
        f"{where}: Ray {version} is outside pyproject.toml's {requirement('ray')}"
    )


def python_allowed(version: str) -> bool:
    """Whether pyproject.toml's requires-python admits Python `version` (e.g. '3.11')."""
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(pyproject()["project"]["requires-python"]).contains(version + ".0")


def neural_resources(config_uri: str | None = None) -> dict[str, Any]:
    """Each stage's resources in a `--backend neural` job (with the job's --config, if any)."""
    from s4d_ray.engine.config import load_config

    return load_config(config_uri, backend="neural").stages


def pool_stages() -> set[str]:
    from s4d_ray.engine.stage_list import STAGES

    return {spec.name for spec in STAGES if spec.pooled}


def fits(node: dict[str, float], cpus: float, gpus: float) -> bool:
    return node.get("CPU", 0.0) >= cpus and node.get("GPU", 0.0) >= gpus


# --- GCP autoscaler ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcp() -> dict[str, Any]:
    return load_yaml(GCP_YAML)


def test_gcp_config_passes_rays_schema_and_config_checks(gcp):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    errors = [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in jsonschema.Draft7Validator(schema).iter_errors(gcp)
    ]
    assert not errors, "Ray's autoscaler schema refuses the file:\n" + "\n".join(errors)
    # what `ray up` does before it asks GCP for anything: defaults merged, then checked
    prepared = prepare_config(copy.deepcopy(gcp))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "gcp"
    assert prepared["head_node_type"] in prepared["available_node_types"]


GENERAL_PURPOSE = re.compile(r"^(?:n1|n2|n2d|n4|c2|c2d|c3|e2)-(?:standard|highmem|highcpu)-(\d+)$")
A2 = re.compile(r"^a2-(highgpu|ultragpu|megagpu)-(\d+)g$")
A2_ACCELERATOR = {
    "highgpu": "nvidia-tesla-a100",
    "megagpu": "nvidia-tesla-a100",
    "ultragpu": "nvidia-a100-80gb",
}


def machine_resources(node_config: dict[str, Any]) -> dict[str, float]:
    """vCPUs and GPUs of a GCP node config: from the machine type's name (general-purpose
    types `<family>-<kind>-<vCPUs>`; A2 types with 12 vCPUs per A100) plus attached
    guestAccelerators."""
    machine = node_config["machineType"]
    attached = sum(a.get("acceleratorCount", 0) for a in node_config.get("guestAccelerators", []))
    if found := GENERAL_PURPOSE.match(machine):
        return {"CPU": float(found.group(1)), "GPU": float(attached)}
    if found := A2.match(machine):
        gpus = int(found.group(2))
        kinds = {a["acceleratorType"] for a in node_config.get("guestAccelerators", [])}
        assert kinds <= {A2_ACCELERATOR[found.group(1)]}, (
            f"{machine} comes with {A2_ACCELERATOR[found.group(1)]}, not {kinds}"
        )
        assert attached in (0, gpus), f"{machine} has {gpus} GPUs, guestAccelerators say {attached}"
        return {"CPU": 12.0 * gpus, "GPU": float(gpus)}
    raise AssertionError(f"machine type {machine!r} unknown to this test: add its vCPUs and GPUs")


def test_gcp_node_types(gcp):
    """A CPU-only head, a GPU worker type scaling from zero, a CPU worker type; each type's
    declared resources are its machine type's."""
    types = gcp["available_node_types"]
    head = types[gcp["head_node_type"]]
    assert head["resources"].get("CPU", 0) > 0 and not head["resources"].get("GPU", 0)
    assert head.get("max_workers", 0) == 0, "the head type is the head alone"
    workers = {name: t for name, t in types.items() if name != gcp["head_node_type"]}
    gpu_types = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    cpu_types = [t for t in workers.values() if not t["resources"].get("GPU", 0)]
    assert gpu_types, "no GPU worker type"
    assert cpu_types, "no CPU worker type"
    for t in gpu_types:
        assert t.get("min_workers", 0) == 0, "GPU workers must scale from zero (cost when idle)"
        assert t.get("max_workers", 0) >= 1
    for name, t in types.items():
        declared = {k: float(v) for k, v in t["resources"].items() if k in ("CPU", "GPU")}
        machine = machine_resources(t["node_config"])
        assert declared.get("CPU", 0.0) == machine["CPU"], f"{name}: CPU {declared} vs {machine}"
        assert declared.get("GPU", 0.0) == machine["GPU"], f"{name}: GPU {declared} vs {machine}"


def test_gcp_node_types_hold_the_neural_stages(gcp):
    """Every stage's per-actor (or per-task) CPUs and GPUs fit on one worker node type, and
    the model stages on the GPU type (the autoscaler adds nodes; each stage needs one)."""
    workers = [
        {k: float(v) for k, v in t["resources"].items()}
        for name, t in gcp["available_node_types"].items()
        if name != gcp["head_node_type"]
    ]
    for stage, res in neural_resources().items():
        assert any(fits(node, res.num_cpus, res.num_gpus) for node in workers), (
            f"stage {stage} ({res.num_cpus} CPU, {res.num_gpus} GPU per actor) fits no worker type"
        )


def test_gcp_nodes_install_the_projects_versions(gcp):
    setup = "\n".join(gcp["setup_commands"])
    torch_pin = str(requirement("torch").specifier)
    assert torch_pin.startswith("=="), "pyproject.toml pins torch"
    assert f'"torch{torch_pin}"' in setup, f"the nodes must install torch{torch_pin}"
    ray_pin = re.search(r"ray\[[^\]]*\]==([\w.]+)", setup)
    assert ray_pin, "the nodes must pin ray (`ray up` needs the client's version on the nodes)"
    check_ray_version(ray_pin.group(1), "gcp_autoscaler.yaml setup_commands")
    python = re.search(r"--python (3\.\d+)", setup)
    assert python and python_allowed(python.group(1)), (
        f"the nodes' venv Python must satisfy requires-python, got {python and python.group(0)}"
    )


def test_gcp_head_service_account_and_upload(gcp):
    head = gcp["available_node_types"][gcp["head_node_type"]]["node_config"]
    assert "serviceAccounts" not in head, (
        "`ray up` gives the head the autoscaler's service account; the head node_config's "
        "serviceAccounts would replace it and the head could not launch workers"
    )
    assert "." in gcp["file_mounts"].values()
    assert ".gitignore" in gcp.get("rsync_filter", []), "the upload must skip what git ignores"
    assert ".venv/" in (REPO / ".gitignore").read_text().split()


# --- KubeRay RayJob ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return load_yaml(KUBERAY_YAML)


def groups(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """'head' and each worker group by name."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    return {
        "head": cluster["headGroupSpec"],
        **{group["groupName"]: group for group in cluster["workerGroupSpecs"]},
    }


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    """The container KubeRay runs `ray start` in: the pod template's first."""
    return group["template"]["spec"]["containers"][0]


_SUFFIXES = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_SUFFIXES |= {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}


def quantity(value: Any) -> float:
    """A Kubernetes quantity ('500m', '12', '96Gi') as a number."""
    found = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", str(value))
    assert found and found.group(2) in _SUFFIXES, f"not a Kubernetes quantity: {value!r}"
    return float(found.group(1)) * _SUFFIXES[found.group(2)]


def gpu_limit(limits: dict[str, Any]) -> float:
    return sum(quantity(v) for k, v in limits.items() if k.endswith("gpu"))


def pod_resources(group: dict[str, Any]) -> dict[str, float]:
    """The Ray resources of one pod of `group`, as KubeRay derives its `ray start` flags:
    num-cpus from rayStartParams, else the CPU limit, else the request (rounded up);
    num-gpus from rayStartParams, else the GPU limit."""
    params = group.get("rayStartParams") or {}
    resources = ray_container(group).get("resources", {})
    limits, requests = resources.get("limits", {}), resources.get("requests", {})
    cpu = limits.get("cpu", requests.get("cpu", 0))
    return {
        "CPU": float(params.get("num-cpus", math.ceil(quantity(cpu)))),
        "GPU": float(params.get("num-gpus", gpu_limit(limits))),
    }


def test_kuberay_manifest_shape(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, (
        f"unknown RayJob fields {set(spec) - RAYJOB_SPEC_FIELDS}"
    )
    assert spec["shutdownAfterJobFinishes"] is True, "the job's cluster goes when the job ends"
    workers = spec["rayClusterSpec"]["workerGroupSpecs"]
    names = [group["groupName"] for group in workers]
    assert len(names) == len(set(names)), f"group names repeat: {names}"
    for group in workers:
        assert set(group) <= WORKER_GROUP_FIELDS, f"unknown worker group fields in {group}"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for name, group in groups(rayjob).items():
        assert ray_container(group)["image"], f"{name}: no image"
    assert not pod_resources(groups(rayjob)["head"])["GPU"], "the head is CPU-only"


def test_kuberay_requests_equal_limits(rayjob):
    """CPU and memory requested as limited (the pod is scheduled where Ray's CPUs exist);
    GPUs as limits (Kubernetes takes GPU requests from them); rayStartParams promise no more
    than the container has."""
    for name, group in groups(rayjob).items():
        resources = ray_container(group).get("resources", {})
        limits, requests = resources.get("limits", {}), resources.get("requests", {})
        for key in ("cpu", "memory"):
            assert key in limits and quantity(limits[key]) > 0, f"{name}: no {key} limit"
            assert key in requests, f"{name}: no {key} request (set it equal to the limit)"
            assert quantity(requests[key]) == quantity(limits[key]), f"{name}: {key} request"
        params = group.get("rayStartParams") or {}
        if "num-cpus" in params:
            assert float(params["num-cpus"]) <= quantity(limits["cpu"]), name
        if "num-gpus" in params:
            assert float(params["num-gpus"]) <= gpu_limit(limits), name


def entrypoint_job(rayjob: dict[str, Any]) -> tuple[str, argparse.Namespace]:
    """The entrypoint's job module name and its flags parsed by that job's own parser."""
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[0] in ("python", "python3"), f"entrypoint runs {argv[0]!r}, not python"
    script = Path(argv[1])
    assert script.parts[:3] == ("/", "app", "jobs"), f"{script} is not /app/jobs/<job>.py"
    local = REPO.joinpath(*script.parts[2:])
    assert local.is_file(), f"{script} would be {local}, which does not exist"
    command = commands()[JOBS[local.stem]]
    parser = argparse.ArgumentParser(prog=script.name)
    command.add_arguments(parser)
    return local.stem, parser.parse_args(argv[2:])


def test_kuberay_entrypoint_is_a_job_with_valid_flags(rayjob):
    name, args = entrypoint_job(rayjob)
    assert name == "process_clips"
    assert args.backend == "neural", "the GPU cluster runs the neural backend"
    neural_resources(args.config)  # the job's configuration loads


def test_kuberay_pods_hold_the_neural_stages(rayjob):
    """Each stage's per-actor CPUs and GPUs fit on one worker pod; the actor pools at their
    minimum sizes plus one task of the hungriest task stage fit the cluster at its start size
    (the engine's preflight rule for a cluster without an autoscaler)."""
    _, args = entrypoint_job(rayjob)
    stages = neural_resources(args.config)
    cluster = rayjob["spec"]["rayClusterSpec"]
    workers = cluster["workerGroupSpecs"]
    pods = [pod_resources(group) for group in workers]
    for stage, res in stages.items():
        assert any(fits(pod, res.num_cpus, res.num_gpus) for pod in pods), (
            f"stage {stage} ({res.num_cpus} CPU, {res.num_gpus} GPU per actor) fits no worker pod"
        )
    size = "maxReplicas" if cluster.get("enableInTreeAutoscaling") else "replicas"
    total = {"CPU": pod_resources(groups(rayjob)["head"])["CPU"], "GPU": 0.0}
    for group, pod in zip(workers, pods, strict=True):
        for key in total:
            total[key] += pod[key] * group[size]
    pools = pool_stages()
    for key, field in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        needed = sum(
            res.min_actors * getattr(res, field) for s, res in stages.items() if s in pools
        )
        needed += max(
            (getattr(res, field) for s, res in stages.items() if s not in pools), default=0
        )
        assert needed <= total[key], f"the pipeline needs {needed} {key} at once, has {total[key]}"


def test_kuberay_image_is_pinned_to_this_ray(rayjob):
    images = {ray_container(group)["image"] for group in groups(rayjob).values()}
    assert len(images) == 1, f"one image for every group, got {images}"
    image = images.pop()
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag, f"{image} has no tag"
    assert tag != "latest", f"{image}: pin the image, `latest` moves"
    version = rayjob["spec"]["rayClusterSpec"]["rayVersion"]
    check_ray_version(version, "kuberay_rayjob.yaml rayVersion")
    assert f"ray{version}" in tag, f"the image tag {tag!r} must name the Ray it holds ({version})"
    base = re.search(r"FROM rayproject/ray:([\d.]+)-py3(\d+)", KUBERAY_YAML.read_text())
    assert base, "the header names the base image (FROM rayproject/ray:<version>-py3<minor>-...)"
    assert base.group(1) == version, f"base image Ray {base.group(1)} vs rayVersion {version}"
    assert python_allowed(f"3.{base.group(2)}"), "the base image's Python vs requires-python"


def test_kuberay_runtime_env_matches_runtime_env_yaml(rayjob):
    job_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert job_env["env_vars"] == load_yaml(RUNTIME_ENV_YAML)["env_vars"]
