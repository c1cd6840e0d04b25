#!/usr/bin/env python3
"""Writes the plain Kubernetes manifests of infra/k8s/ from the Helm chart, so both stay one
design: `make k8s-manifests` after changing the chart; `make infra-check` fails when they differ.

The plain set: the release named `slim` in namespace `slim`, a coordinator Job that submits
infra/k8s/job.toml, a CPU worker pool and a GPU worker pool, each scaled by a KEDA ScaledObject
(and, as an alternative to the GPU pool's Deployment, a ScaledJob in worker-gpu-scaledjob.yaml).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "infra/helm/slim"
K8S = ROOT / "infra/k8s"

HEADER = (
    "# Generated from the Helm chart infra/helm/slim by infra/ci/render_k8s.py "
    "(`make k8s-manifests`); edit the chart, not this file.\n"
)

# Labels that only make sense for a Helm release.
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


def values(gpu_kind: str) -> dict:
    job = (K8S / "job.toml").read_text()
    return {
        "image": {"repository": "slim", "tag": "0.1.0"},
        "gpuImage": {"repository": "slim", "tag": "0.1.0-cuda"},
        "config": {"s3": {"endpoint": "http://minio.slim.svc:9000"}},
        "secrets": {"teacher": {"name": "slim-teacher"}},
        "coordinator": {"job": {"manifest": job}},
        "workers": {"gpu": {"enabled": True, "autoscaling": {"kind": gpu_kind}}},
    }


def render(vals: dict) -> list[dict]:
    import helm_python

    with helm_python.Chart.load(str(CHART)) as chart:
        rendered = chart.render(vals, name="slim", namespace="slim", is_install=True)
    objects = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                strip(doc)
                objects.append(doc)
    return objects


def strip(obj: object) -> None:
    if isinstance(obj, dict):
        labels = obj.get("labels")
        if isinstance(labels, dict):
            for key in HELM_LABELS:
                labels.pop(key, None)
        for v in obj.values():
            strip(v)
    elif isinstance(obj, list):
        for v in obj:
            strip(v)


def file_of(obj: dict) -> str:
    kind = obj["kind"]
    name = obj["metadata"]["name"]
    if kind in ("ConfigMap", "Job") and name.startswith("slim-coordinator"):
        return "coordinator-job.yaml"
    if kind == "TriggerAuthentication":
        return "keda-auth.yaml"
    if name.startswith("slim-worker-"):
        return f"worker-{name.removeprefix('slim-worker-')}.yaml"
    return f"{kind.lower()}-{name}.yaml"


def dump(objects: list[dict]) -> str:
    return HEADER + "".join(
        "---\n" + yaml.safe_dump(o, sort_keys=False, default_flow_style=False) for o in objects
    )


def manifests() -> dict[str, str]:
    files: dict[str, list[dict]] = {}
    for obj in render(values("ScaledObject")):
        files.setdefault(file_of(obj), []).append(obj)
    scaled_job = [o for o in render(values("ScaledJob")) if o["kind"] == "ScaledJob"]
    files["worker-gpu-scaledjob.yaml"] = scaled_job
    return {name: dump(objs) for name, objs in sorted(files.items())}


def main_check() -> int:
    return main(check=True)


def main(check: bool = "--check" in sys.argv) -> int:
    stale = []
    for name, text in manifests().items():
        path = K8S / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote infra/k8s/{name}")
    if stale:
        print(
            "infra/k8s is out of date with the chart: run `make k8s-manifests` ("
            + ", ".join(stale)
            + ")",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
