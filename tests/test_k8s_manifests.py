"""deploy/k8s and deploy/Dockerfile, checked offline: every kustomization is rendered with
`kubectl kustomize` (what `kubectl apply -k` applies) and every object validated, core kinds
against Kubernetes' OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors, as
with kubectl's default --validate=strict), the RayCluster against KubeRay's CRD (vendored in
deploy/k8s/schemas) and its pod templates against the core PodTemplateSpec. Then what no schema
knows: the Service reaches the head's ports, the head's flags agree with the worker groups, the
images are pinned to the Ray the project pins. Broken manifests must be rejected, or none of
this shows anything. Nothing here was applied to a real cluster.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
CRD = K8S / "schemas" / "ray.io_rayclusters.yaml"
K8S_VERSION = "1.37"  # the newest schemas kubernetes-validate 1.37.0 ships
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
USER_SECRETS = {"slos-serve-tls", "slos-serve-api-key"}  # made with kubectl (README)
TLS_DIR, GRPC_PORT, HTTP_PORT = "/etc/slos-serve/tls", 50051, 8000


# ------------------------------------------------------------------ rendering --


def kubectl() -> str:
    path = shutil.which("kubectl")
    if not path:
        pytest.fail("kubectl (with its built-in kustomize) is needed to render deploy/k8s")
    return path


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k DIR` would send (no cluster needed)."""
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, f"kubectl kustomize {directory}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


_rendered: dict[Path, list[dict[str, Any]]] = {}


def rendered(directory: Path) -> list[dict[str, Any]]:
    """render(), once per kustomization; callers get their own copy to change."""
    if directory not in _rendered:
        _rendered[directory] = render(directory)
    return copy.deepcopy(_rendered[directory])


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


# ----------------------------------------------------------------- validation --


def _core_validator(schema_file: str) -> jsonschema.Draft202012Validator:
    """A validator for one of kubernetes-validate's strict schemas (as its validate() builds)."""
    base = f"kubernetes-json-schema/v{K8S_VERSION}.0-local-strict"
    schema = kv_utils.schema_contents(f"{base}/{schema_file}", K8S_VERSION)
    defs = kv_utils.schema_contents(f"{base}/_definitions.json", K8S_VERSION)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


@functools.cache
def _pod_template() -> jsonschema.Draft202012Validator:
    return _core_validator("podtemplatespec-v1.json")


@functools.cache
def _ray_schema() -> dict[str, Any]:
    """The CRD's v1 openAPIV3Schema (0.9 MB of YAML: libyaml's loader when there is one)."""
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"][
        "openAPIV3Schema"]


def unknown_fields(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Fields the CRD's structural schema does not declare: the API server rejects them
    (kubectl's default field validation is strict) or, with validation off, drops them."""
    if isinstance(value, dict) and schema.get("type") == "object":
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        if schema.get("x-kubernetes-preserve-unknown-fields") or (
                props is None and not isinstance(extra, dict)):
            return []  # free-form (or metadata, which the server checks on its own)
        out = []
        for key, sub in value.items():
            if props is not None and key in props:
                out += unknown_fields(props[key], sub, f"{path}.{key}")
            elif isinstance(extra, dict):
                out += unknown_fields(extra, sub, f"{path}.{key}")
            else:
                out.append(f"{path}.{key}")
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [e for i, v in enumerate(value)
                for e in unknown_fields(schema["items"], v, f"{path}[{i}]")]
    return []


def _errors(validator: jsonschema.protocols.Validator, doc: Any, where: str) -> list[str]:
    return [f"{where}{'.' if e.path else ''}{'.'.join(map(str, e.path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def pod_templates(ray: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    spec = ray["spec"]
    return [("head", spec["headGroupSpec"]["template"]),
            *((g.get("groupName", f"worker group {i}"), g["template"])
              for i, g in enumerate(spec.get("workerGroupSpecs", [])))]


def schema_problems(doc: dict[str, Any]) -> list[str]:
    """Why the API server would refuse `doc` (its schema's view); [] if it would not."""
    if doc.get("apiVersion") == "ray.io/v1" and doc.get("kind") == "RayCluster":
        out = _errors(jsonschema.Draft7Validator(_ray_schema()), doc, "RayCluster")
        out += [f"RayCluster{f}: unknown field" for f in unknown_fields(_ray_schema(), doc)]
        for name, template in pod_templates(doc):
            out += _errors(_pod_template(), template, f"{name} template")
        return out
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{doc.get('kind')}: {exc.message} at {list(exc.path)}"]
    return []


# ---------------------------------------------- what the schemas cannot know --


def containers(ray: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, c) for name, t in pod_templates(ray)
            for c in (*t["spec"].get("initContainers", []), *t["spec"]["containers"])]


def kuberay_resources(params: dict[str, str]) -> dict[str, float]:
    """rayStartParams' `resources` as KubeRay reads it (pod.go getResourcesMap: quotes and
    spaces trimmed, then JSON); KubeRay skips adding the pod's GPUs if this fails."""
    return json.loads(params.get("resources", "{}").strip("'\"` "))


def kuberay_ray_start(params: dict[str, str], head: bool) -> str:
    """What KubeRay v1.7.0 puts in $KUBERAY_GEN_RAY_START_CMD (pod.go generateRayStartCommand,
    convertParamMap: --block added, flags sorted, each " --k=v ", or " --k " for "true")."""
    flags = "".join(f" --{k} " if v.lower() == "true" else f" --{k}={v} "
                    for k, v in sorted({**params, "block": "true"}.items())
                    if v.lower() != "false")
    return f"ray start {'--head ' if head else ''}{flags}"


def run_container(container: dict[str, Any], ray_start: str,
                  env: dict[str, str]) -> dict[str, list[str]]:
    """Runs a container's command in bash with `ray` and `slos-serve` replaced by stubs that
    record their argv: what each would have been started with."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("ray", "slos-serve"):
            stub = Path(tmp, name)
            stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp}/{name}.argv"\n')
            stub.chmod(0o755)
        argv = [*container.get("command", []), *container.get("args", [])]
        assert argv[:1] == ["/bin/bash"], f"{container['name']}: not a bash command: {argv}"
        run = subprocess.run(argv, env={"PATH": f"{tmp}:/usr/bin:/bin",
                                        "KUBERAY_GEN_RAY_START_CMD": ray_start, **env},
                             capture_output=True, text=True, timeout=30, check=False)
        assert run.returncode == 0, f"{container['name']}: {run.stderr}"
        return {name: Path(tmp, f"{name}.argv").read_text().splitlines()
                for name in ("ray", "slos-serve") if Path(tmp, f"{name}.argv").exists()}


def head_command(ray: dict[str, Any], params: dict[str, str]) -> list[str]:
    """The head's `slos-serve up ...` argv, with the ConfigMap's values put in, after it ran
    KubeRay's `ray start` without --block (with it, `up` would never start)."""
    group = ray["spec"]["headGroupSpec"]
    ran = run_container(group["template"]["spec"]["containers"][0],
                        kuberay_ray_start(group.get("rayStartParams", {}), head=True),
                        {k: str(v) for k, v in params.items()})
    assert ran.get("ray", [])[:2] == ["start", "--head"] and "--block" not in ran["ray"], ran
    return ["slos-serve", *ran.get("slos-serve", [])]


def flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, f"{name} given {argv.count(name)} times in {argv}"
    return argv[argv.index(name) + 1]


def project_problems(docs: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    ray, svc = one(docs, "RayCluster"), one(docs, "Service")
    params = one(docs, "ConfigMap")
    for name, c in containers(ray):
        image = c.get("image", "")
        m = re.fullmatch(r"[\w./:-]+:(?P<tag>[\w.-]+)", image)
        if not m or m["tag"] == "latest":
            out.append(f"{name}/{c['name']}: image {image!r} is not pinned to a tag")
    head = ray["metadata"]["name"]
    if svc["spec"]["selector"] != {"ray.io/cluster": head, "ray.io/node-type": "head"}:
        out.append(f"Service selector {svc['spec']['selector']} is not RayCluster {head}'s head")
    ports = {p["name"]: p["containerPort"]
             for p in ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
             .get("ports", [])}
    for p in svc["spec"]["ports"]:
        if ports.get(p["targetPort"]) != p["port"]:
            out.append(f"Service port {p['name']} -> {p['targetPort']}: head has {ports}")
    argv = head_command(ray, params["data"])
    for name, want in (("--port", GRPC_PORT), ("--http-port", HTTP_PORT)):
        if flag(argv, name) != str(want) or want not in ports.values():
            out.append(f"head {name} {flag(argv, name)}: the Service expects {want}")
    groups = {g["groupName"]: g for g in ray["spec"]["workerGroupSpecs"]}
    for role in ("prefill", "decode", "mixed"):
        replicas = groups[role].get("replicas", 0) if role in groups else 0
        if flag(argv, f"--{role}") != str(replicas):
            out.append(f"--{role} {flag(argv, f'--{role}')} but {replicas} {role} pods")
    roles = [("head", ray["spec"]["headGroupSpec"], "slos_coordinator"),
             *((g["groupName"], g, f"slos_{g['groupName']}") for g in groups.values())]
    for name, group, resource in roles:
        try:
            got = kuberay_resources(group.get("rayStartParams", {}))
        except ValueError as exc:
            got = f"unparsable ({exc})"
        if got != {resource: 1}:
            out.append(f"{name}: rayStartParams resources {got}, not {{{resource!r}: 1}}")
    secrets = {ref["name"] for _, c in containers(ray) for ref in
               (e["valueFrom"]["secretKeyRef"] for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {}))}
    secrets |= {v["secret"]["secretName"] for _, t in pod_templates(ray)
                for v in t["spec"].get("volumes", []) if "secret" in v}
    if secrets - USER_SECRETS:
        out.append(f"secrets {sorted(secrets - USER_SECRETS)}: the README makes none of them")
    maps = {ref["configMapRef"]["name"] for _, c in containers(ray)
            for ref in c.get("envFrom", []) if "configMapRef" in ref}
    if maps - {params["metadata"]["name"]}:
        out.append(f"config maps {sorted(maps)}: rendered is {params['metadata']['name']}")
    return out


# --------------------------------------------------------------------- tests --


def test_there_is_something_to_check() -> None:
    names = {p.relative_to(K8S).as_posix() for p in KUSTOMIZATIONS}
    assert {".", "base", "overlays/cpu"} <= names
    kinds = sorted(d["kind"] for d in rendered(K8S))
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "RayCluster", "Service"]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_renders_and_validates(directory: Path) -> None:
    docs = rendered(directory)
    problems = [p for d in docs for p in schema_problems(d)] + project_problems(docs)
    assert not problems, "\n".join(problems)


def test_gpu_and_cpu_pods() -> None:
    """One GPU per engine pod in the default deployment; none in the CPU overlay."""
    for directory, gpus in ((K8S, 1), (K8S / "overlays" / "cpu", None)):
        ray = one(rendered(directory), "RayCluster")
        for group in ray["spec"]["workerGroupSpecs"]:
            res = group["template"]["spec"]["containers"][0]["resources"]
            assert res["limits"].get("nvidia.com/gpu") == gpus, (directory, group["groupName"])
        tag = containers(ray)[0][1]["image"].rsplit("-", 1)[1]
        assert tag == ("gpu" if gpus else "cpu")


def test_ray_start_gets_the_custom_resources() -> None:
    """Each pod's `ray start` (as KubeRay generates it, through the pod's command) declares its
    role's resource, which `up --ray` places by; workers block in it and run nothing else."""
    ray = one(rendered(K8S), "RayCluster")
    groups = [("head", ray["spec"]["headGroupSpec"], "slos_coordinator"),
              *((g["groupName"], g, f"slos_{g['groupName']}")
                for g in ray["spec"]["workerGroupSpecs"])]
    for name, group, resource in groups:
        params = group["rayStartParams"]
        ran = run_container(group["template"]["spec"]["containers"][0],
                            kuberay_ray_start(params, head=name == "head"),
                            {k: "x" for k in ("SLOS_ENGINE", "SLOS_MODEL", "SLOS_PREFILL",
                                              "SLOS_DECODE", "SLOS_MIXED", "SLOS_KV_CACHE_GIB",
                                              "SLOS_EXTRA_ARGS")})
        given = [a.removeprefix("--resources=") for a in ran["ray"]
                 if a.startswith("--resources=")]
        assert [json.loads(g) for g in given] == [{resource: 1}], (name, ran["ray"])
        assert ("--block" in ran["ray"]) == (name != "head"), (name, ran["ray"])
        assert ("slos-serve" in ran) == (name == "head"), (name, ran)


def test_head_runs_the_coordinator_with_tls_and_the_api_key() -> None:
    docs = rendered(K8S)
    ray = one(docs, "RayCluster")
    argv = head_command(ray, one(docs, "ConfigMap")["data"])
    assert argv[:4] == ["slos-serve", "up", "--ray", "auto"]
    assert flag(argv, "--host") == "0.0.0.0"
    assert flag(argv, "--tls-dir") == TLS_DIR
    head = ray["spec"]["headGroupSpec"]["template"]["spec"]
    assert any(m["mountPath"] == TLS_DIR for m in head["containers"][0]["volumeMounts"])
    from slos_serve.config import API_KEY_ENV

    env = {e["name"]: e for e in head["containers"][0]["env"]}
    assert env[API_KEY_ENV]["valueFrom"]["secretKeyRef"]["name"] == "slos-serve-api-key"
    assert ray["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"


def test_head_flags_parse_with_slos_serve_up() -> None:
    """The head's argv is one `slos-serve up` accepts (its own parser, not a copy of it).
    Until `up --ray` is on the branch, the other flags are checked without it."""
    import argparse

    from slos_serve import up

    parser = argparse.ArgumentParser(exit_on_error=False)
    up.add_arguments(parser)
    docs = rendered(K8S)
    argv = head_command(one(docs, "RayCluster"), one(docs, "ConfigMap")["data"])[2:]
    if "--ray" not in parser._option_string_actions:
        argv = argv[2:]  # "--ray", "auto" (test_head_runs_the_coordinator... checks them)
    args, unknown = parser.parse_known_args(argv)
    assert unknown == []
    assert (args.port, args.http_port, args.model) == (GRPC_PORT, HTTP_PORT, "/models/model")
    assert (args.prefill, args.decode, args.mixed) == (1, 1, 0)
    assert args.tls_dir == TLS_DIR and args.host == "0.0.0.0"


def test_vendored_crd_is_kuberays() -> None:
    """deploy/k8s/schemas holds KubeRay's file as released (NOTICE names its sha256)."""
    want = re.search(r"sha256\s+([0-9a-f]{64})", (CRD.parent / "NOTICE").read_text())
    assert want and hashlib.sha256(CRD.read_bytes()).hexdigest() == want[1]


def test_secrets_the_readme_makes_validate(tmp_path: Path) -> None:
    """The README's commands: `slos-serve certs DIR`, then the two `kubectl create secret`s
    (client-side dry run: no cluster); both Secrets validate and hold what the pods read."""
    from slos_serve import tls

    tls.make_certs(tmp_path / "tls", ["slos-serve.default.svc"])
    made = []
    for argv in (["slos-serve-tls", f"--from-file={tmp_path / 'tls'}"],
                 ["slos-serve-api-key", "--from-literal=api-key=not-a-real-key"]):
        out = subprocess.run([kubectl(), "create", "secret", "generic", *argv,
                              "--dry-run=client", "-o", "yaml"], capture_output=True, text=True,
                             timeout=60, check=True)
        secret = yaml.safe_load(out.stdout)
        # kubectl prints creationTimestamp: null, which the API server ignores
        secret["metadata"] = {k: v for k, v in secret["metadata"].items() if v is not None}
        assert schema_problems(secret) == []
        made.append(secret)
    assert set(made[0]["data"]) == set(tls.FILES)  # `up --tls-dir` wants the full set
    assert set(made[1]["data"]) == {"api-key"}


def test_dockerfile_pins_the_projects_ray() -> None:
    """The image's Ray is the one pyproject's `ray` extra pins and the RayCluster declares."""
    pyproject = (ROOT / "pyproject.toml").read_text()  # no tomllib on Python 3.10
    (version,) = re.findall(r'^ray = \["ray==([\d.]+)"\]$', pyproject, re.M)
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == [f"rayproject/ray:{version}-py311-${{FLAVOR}}"]
    assert re.findall(r"^ARG FLAVOR=(\S+)$", text, re.M) == ["gpu"]
    assert 'pip install --no-cache-dir ".[${FLAVOR},ray]"' in text
    assert "latest" not in text
    for flavor in ("cpu", "gpu"):  # the base image's flavors are also the engine extras
        assert re.search(rf"^{flavor} = \[", pyproject, re.M), flavor
    assert one(rendered(K8S), "RayCluster")["spec"]["rayVersion"] == version


# ------------------------------------------------ broken manifests are refused --


def _head(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _worker(docs: list[dict[str, Any]], i: int = 0) -> dict[str, Any]:
    return one(docs, "RayCluster")["spec"]["workerGroupSpecs"][i]


# Each breakage, and which check must refuse it: "schema" (the API server would), "project"
# (the server would take it; the deployment would not work), and then the schemas must not
# see it, which is why the project checks exist.
BREAKAGES = {
    "service port as a string": ("schema", lambda d: one(d, "Service")["spec"]["ports"][0]
                                 .update(port="50051")),
    "service with an unknown field": ("schema", lambda d: one(d, "Service")["spec"]
                                      .update(prots=[])),
    "config map value not a string": ("schema", lambda d: one(d, "ConfigMap")["data"]
                                      .update(SLOS_PREFILL=1)),
    "worker group without groupName": ("schema", lambda d: _worker(d).pop("groupName")),
    "replicas as a string": ("schema", lambda d: _worker(d).update(replicas="2")),
    "misspelt RayCluster field": ("schema", lambda d: _worker(d).update(replica=2)),
    "container port as a string": ("schema", lambda d: _head(d)["ports"][0]
                                   .update(containerPort="50051")),
    "container without a name": ("schema", lambda d: _head(d).pop("name")),
    "unknown container field": ("schema", lambda d: _head(d).update(imagePullPolcy="Always")),
    "container without an image": ("project", lambda d: _head(d).pop("image")),
    "image :latest": ("project", lambda d: _head(d).update(image="slos-serve:latest")),
    "untagged image": ("project", lambda d: _worker(d)["template"]["spec"]["containers"][0]
                       .update(image="slos-serve")),
    "--prefill disagrees with the pods": ("project", lambda d: _worker(d).update(replicas=3)),
    "service on the wrong port": ("project", lambda d: one(d, "Service")["spec"]["ports"][1]
                                  .update(port=8080)),
    "service selects workers": ("project", lambda d: one(d, "Service")["spec"]["selector"]
                                .update({"ray.io/node-type": "worker"})),
    "secret the README does not make": ("project", lambda d: _head(d)["env"][0]["valueFrom"][
        "secretKeyRef"].update(name="other")),
    "head blocks in ray start": ("project", lambda d: _head(d)["args"].__setitem__(
        0, _head(d)["args"][0].replace("/ --block / ", ""))),
    "resources KubeRay cannot parse": ("project", lambda d: _worker(d)["rayStartParams"]
                                       .update(resources='"{\\"slos_prefill\\": 1}"')),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_broken_manifest_is_rejected(breakage: str) -> None:
    docs = rendered(K8S)
    layer, breaks = BREAKAGES[breakage]
    breaks(docs)
    by_schema = [p for d in docs for p in schema_problems(d)]
    if layer == "schema":
        assert by_schema, f"{breakage}: the schemas accepted it"
    else:
        assert by_schema == [], f"{breakage}: {by_schema}"
        try:
            problems = project_problems(docs)
        except AssertionError as exc:  # a check that cannot go on (a $VAR with no value...)
            problems = [str(exc)]
        assert problems, f"{breakage}: accepted"
