"""Static checks of the deployment files under deploy/: no docker engine, cluster or network needed.

- every YAML file parses and passes yamllint (.yamllint.yaml);
- each kustomization (base and overlays) is rendered by a small renderer of the subset of
  Kustomize that deploy/k8s uses (it fails on anything else, so it cannot skip a feature
  silently), and every rendered object is validated against the Kubernetes OpenAPI schema that
  `kubernetes-validate` ships (strict: unknown fields are errors);
- references inside the rendered objects resolve (Services select pods and name their ports,
  ConfigMaps, Secrets and claims exist, *_TARGET addresses are Services), and every TUNEFORGE_*
  variable is a real setting;
- compose.yaml: services, health checks, pinned images, targets, ports, console scripts.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.settings import DEFAULT_PORTS, ServiceSettings, StoreSettings
from services.inference.settings import InferenceSettings
from services.training.kubernetes_launcher import KubernetesSettings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose"
# Schemas checked: an old release still supported by the big clouds and the newest the package
# ships. The manifests need 1.27 or newer (native gRPC probes).
K8S_VERSIONS = ("1.29", "1.37")
KUSTOMIZATIONS = ("base", "overlays/gpu")
SERVICES = tuple(DEFAULT_PORTS)
CLUSTER_SCOPED = {
    "Namespace",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
}
POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# --- YAML --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert load_all(path), f"{path} holds no YAML document"


def test_yamllint_passes() -> None:
    yamllint_config = pytest.importorskip("yamllint.config")
    yamllint_linter = pytest.importorskip("yamllint.linter")
    config = yamllint_config.YamlLintConfig(file=str(ROOT / ".yamllint.yaml"))
    problems = [
        f"{path.relative_to(ROOT)}:{p.line}:{p.column}: {p.message}"
        for path in [*yaml_files(), ROOT / ".yamllint.yaml"]
        for p in yamllint_linter.run(path.read_text(), config, str(path))
    ]
    assert not problems, "\n".join(problems)


# --- Kustomize ---------------------------------------------------------------------------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}


def render(directory: Path) -> list[dict[str, Any]]:
    """`kustomize build DIRECTORY` for the features deploy/k8s uses: resources (files and
    directories), JSON 6902 patches with a target, images and namespace, applied in that order."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    assert not unknown, f"{directory}: the test's renderer does not implement {sorted(unknown)}"
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory / 'kustomization.yaml'} lists missing {entry}"
        objects += render(path) if path.is_dir() else load_all(path)
    for patch in kustomization.get("patches", []):
        ops = (
            yaml.safe_load(patch["patch"])
            if "patch" in patch
            else load_all(directory / patch["path"])[0]
        )
        assert isinstance(ops, list), f"{directory}: only JSON 6902 patches are supported: {patch}"
        targets = [o for o in objects if matches(o, patch["target"])]
        assert targets, f"{directory}: patch target {patch['target']} matches nothing"
        for obj in targets:
            for op in ops:
                apply_json_patch_op(obj, op)
    for image in kustomization.get("images", []):
        for container in containers(objects):
            ref = container["image"]
            name = re.sub(r"(@sha256:.*|:[^/:]+)$", "", ref)
            if name != image["name"]:
                continue
            new_ref = image.get("newName", name)
            tag = image.get("newTag", ref[len(name) + 1 :] if ref != name else "")
            new_ref += f"@{image['digest']}" if "digest" in image else (f":{tag}" if tag else "")
            container["image"] = new_ref
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def matches(obj: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    actual = {
        "group": group,
        "version": version,
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
    }
    return all(actual[key] == value for key, value in target.items())


def apply_json_patch_op(obj: dict[str, Any], op: dict[str, Any]) -> None:
    """One RFC 6902 operation (add, replace, remove) on `obj`, in place."""
    *parents, last = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
    node: Any = obj
    for token in parents:
        node = node[int(token)] if isinstance(node, list) else node[token]
    value = copy.deepcopy(op.get("value"))
    if op["op"] == "add" and isinstance(node, list):
        node.insert(len(node) if last == "-" else int(last), value)
    elif op["op"] in ("add", "replace"):
        if op["op"] == "replace":
            assert last in node if isinstance(node, dict) else int(last) < len(node), op
        node[int(last) if isinstance(node, list) else last] = value
    elif op["op"] == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise AssertionError(f"unsupported JSON patch operation {op}")


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in POD_OWNERS:
            yield obj, obj["spec"]["template"]["spec"]


def containers(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for _, spec in pod_specs(objects):
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(K8S / request.param)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_rendered_objects_match_the_kubernetes_schema(rendered: list[dict[str, Any]]) -> None:
    # Ships the schemas of every Kubernetes release it knows: no network needed.
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    errors = []
    for obj in rendered:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                errors.append(
                    f"{obj['kind']}/{obj['metadata']['name']} (k8s {version}) {path}: {exc.message}"
                )
    assert not errors, "\n".join(errors)


def test_rendered_names_are_unique_and_namespaced(rendered: list[dict[str, Any]]) -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in rendered]
    assert len(keys) == len(set(keys))
    namespaces = {o["metadata"].get("namespace") for o in rendered if o["kind"] != "Namespace"}
    assert namespaces == {"tuneforge"}
    assert set(by_kind(rendered, "Namespace")) == {"tuneforge"}


def test_every_service_has_a_workload_with_grpc_probes(rendered: list[dict[str, Any]]) -> None:
    workloads = by_kind(rendered, "Deployment")
    for name in SERVICES:
        container = workloads[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [f"tuneforge-{name}"]
        ports = {p["containerPort"] for p in container["ports"]}
        assert ports == {DEFAULT_PORTS[name]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] in ports, (name, probe)


def test_references_resolve(rendered: list[dict[str, Any]]) -> None:
    config_maps, secrets = by_kind(rendered, "ConfigMap"), by_kind(rendered, "Secret")
    claims = by_kind(rendered, "PersistentVolumeClaim")
    for owner, spec in pod_specs(rendered):
        where = f"{owner['kind']}/{owner['metadata']['name']}"
        assert spec.get("enableServiceLinks") is False, f"{where}: service links would pollute env"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        templates = {t["metadata"]["name"] for t in owner["spec"].get("volumeClaimTemplates", [])}
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where
        mounted = {v["name"] for v in spec.get("volumes", [])} | templates
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, where
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, where
            for var in container.get("env", []):
                ref = var.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    key = ref["configMapKeyRef"]
                    assert key["key"] in config_maps[key["name"]]["data"], where
                if "secretKeyRef" in ref:
                    key = ref["secretKeyRef"]
                    assert key["key"] in secrets[key["name"]]["stringData"], where
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in mounted, f"{where}: volume {mount['name']} is not defined"
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests), where
    for service in by_kind(rendered, "Service").values():
        selector = service["spec"]["selector"].items()
        selected = [
            spec
            for owner, spec in pod_specs(rendered)
            if selector <= owner["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert selected, f"Service {service['metadata']['name']} selects no pods"
        port_names = {p.get("name") for s in selected for c in s["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, service["metadata"]["name"]


def test_targets_point_at_services(rendered: list[dict[str, Any]]) -> None:
    config = by_kind(rendered, "ConfigMap")["tuneforge-config"]["data"]
    services = by_kind(rendered, "Service")
    assert config["TUNEFORGE_HOST"] == "0.0.0.0"
    for key in [*(f"TUNEFORGE_{s.upper()}_TARGET" for s in SERVICES), "TUNEFORGE_S3_ENDPOINT"]:
        host, port = config[key].split(":")
        assert host in services, f"{key}={config[key]}: no Service named {host}"
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, key
    for name in SERVICES:
        assert config[f"TUNEFORGE_{name.upper()}_PORT"] == str(DEFAULT_PORTS[name])


def test_images_are_pinned(rendered: list[dict[str, Any]]) -> None:
    for container in containers(rendered):
        image = container["image"]
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag != "latest", f"{container['name']}: image {image} is not pinned"


def test_gpu_overlay_reserves_gpus_for_training_and_inference() -> None:
    base, gpu = render(K8S / "base"), render(K8S / "overlays/gpu")
    for name, deployment in by_kind(gpu, "Deployment").items():
        limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == (name in ("training", "inference")), name
        assert (
            deployment["spec"]["template"]["spec"]["containers"][0]["image"]
            == "tuneforge:0.1.0-cuda"
        )
    for deployment in by_kind(base, "Deployment").values():
        limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert "nvidia.com/gpu" not in limits


# --- settings names ----------------------------------------------------------------------------


def known_settings() -> set[str]:
    names = {f"TUNEFORGE_{f.upper()}" for f in ServiceSettings.model_fields}
    names |= {f"TUNEFORGE_S3_{f.upper()}" for f in StoreSettings.model_fields}
    names |= {f"TUNEFORGE_INFERENCE_{f.upper()}" for f in InferenceSettings.model_fields}
    names |= {f"TUNEFORGE_K8S_{f.upper()}" for f in KubernetesSettings.model_fields}
    names.add("TUNEFORGE_TRAINING_LAUNCHER")
    return names


def test_every_tuneforge_variable_is_a_setting() -> None:
    """A misspelt variable is silently ignored by pydantic-settings: catch it here. (The .env
    file's TUNEFORGE_* entries are compose's own, not the services'.)"""
    used: set[str] = set()
    for name in KUSTOMIZATIONS:
        for obj in render(K8S / name):
            used |= set(obj.get("data", {})) | set(obj.get("stringData", {}))
        for container in containers(render(K8S / name)):
            used |= {v["name"] for v in container.get("env", [])}
    for service in load_compose()["services"].values():
        used |= set(service.get("environment", {}))
    unknown = {v for v in used if v.startswith("TUNEFORGE_")} - known_settings()
    assert not unknown, f"not settings of any service: {sorted(unknown)}"


# --- compose -----------------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    lines = (COMPOSE / ".env.example").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$, on every string in `value`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if name in env and (env[name] or op != ":-"):
            return env[name]
        assert op != ":?", f"${{{name}}} is required but .env.example does not set it"
        return arg

    return re.sub(r"\$\$|\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", replace, value)


def load_compose(name: str = "compose.yaml") -> dict[str, Any]:
    return interpolate(yaml.safe_load((COMPOSE / name).read_text()), env_example())


def test_compose_services_health_checks_and_pinned_images() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"minio", "minio-init", *SERVICES}
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} not pinned"
        if name != "minio-init":
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in compose["volumes"], f"{name}: volume {source} is not declared"
    assert services["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert re.fullmatch(r"minio/minio:RELEASE\.[0-9TZ-]+", services["minio"]["image"])
    assert re.fullmatch(r"minio/mc:RELEASE\.[0-9TZ-]+", services["minio-init"]["image"])


def test_compose_tuneforge_services() -> None:
    services = load_compose()["services"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name in SERVICES:
        service, port = services[name], DEFAULT_PORTS[name]
        env = service["environment"]
        assert service["command"] == [f"tuneforge-{name}"] and f"tuneforge-{name}" in scripts
        assert env["TUNEFORGE_HOST"] == "0.0.0.0"
        assert env["TUNEFORGE_S3_ENDPOINT"] == "minio:9000"
        assert env[f"TUNEFORGE_{name.upper()}_PORT"] == str(port)
        assert any(p.endswith(f":{port}:{port}") for p in service["ports"]), name
        assert service["healthcheck"]["test"][-1] == f"127.0.0.1:{port}", name
        assert service["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
        assert any(v.endswith(":/var/lib/tuneforge") for v in service["volumes"]), name
        for other in SERVICES:
            host, target_port = env[f"TUNEFORGE_{other.upper()}_TARGET"].split(":")
            assert host in services, f"{name}: target {host} is not a compose service"
            assert services[host]["environment"][f"TUNEFORGE_{host.upper()}_PORT"] == target_port


def test_compose_gpu_override_reserves_nvidia_devices() -> None:
    services = load_compose("compose.gpu.yaml")["services"]
    assert set(services) == {"training", "inference"}
    for service in services.values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert "cu" in service["build"]["args"]["TORCH_INDEX_URL"].rsplit("/", 1)[-1]


def test_env_example_sets_every_required_variable() -> None:
    for name in ("compose.yaml", "compose.gpu.yaml"):
        text = (COMPOSE / name).read_text()
        required = set(re.findall(r"\$\{(\w+):\?", text))
        assert required <= set(env_example()), f"{name}: {required - set(env_example())}"


# --- the image ---------------------------------------------------------------------------------


def test_dockerfile_copies_what_exists_and_runs_as_non_root() -> None:
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    users = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert 'pip install ".[all]"' in dockerfile
    assert "download.pytorch.org/whl/cpu" in dockerfile


def test_health_check_script_reports_serving_and_not_serving() -> None:
    spec = importlib.util.spec_from_file_location(
        "grpc_health_check", DEPLOY / "docker" / "grpc_health_check.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert module.main(["check", f"127.0.0.1:{port}"]) == 0
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert module.main(["check", f"127.0.0.1:{port}"]) == 1
    finally:
        server.stop(None)
