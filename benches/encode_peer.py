"""Encode benchmark, peer side: sentence-transformers encoding the Video Games item titles with
all-MiniLM-L6-v2 on CPU, the same work slim's encoder does. Prints one JSON line:

  {"tool":"sentence-transformers","sentences":..,"seconds":..,"sentences_per_sec":..,"threads":..,"batch_size":64}

usage: python3 benches/encode_peer.py [--threads N] [--limit N] [--model PATH] [--items PATH]

  --threads  torch.set_num_threads(N) (default: os.cpu_count())
  --limit    encode only the first N non-empty titles (default: all)
  --model    model folder (default: models/all-minilm-l6-v2 under the repository root;
             scripts/models.sh puts it there)
  --items    RecBole .item file (default: $SLIM_DATA_DIR/Video_Games/Games.item, with
             SLIM_DATA_DIR defaulting to ../shared/data/amazon next to the repository)

`seconds` covers model.encode() only (batch_size 64, float32, no progress bar, embeddings
normalised): not the imports, the model load or reading the file, nor one warm-up batch (slim
bench encode warms up the same way).
sentence-transformers sorts the inputs by length before batching, as it always does.
Titles are passed as they are in the file (HTML entities such as &amp; are not unescaped).
Requires `python3 -m pip install torch sentence-transformers`. Nothing is downloaded from a
model hub: HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 are set before the import.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SLIM_DATA_DIR", ROOT.parent / "shared" / "data" / "amazon")) / "Video_Games"
BATCH_SIZE = 64


def read_titles(path: Path) -> list[str]:
    """The non-empty values of the `title` column of a RecBole atomic file: tab-separated, with a
    header of typed names such as `item_id:token	title:token_seq`."""
    with open(path, encoding="utf-8", newline="\n") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        names = [h.split(":", 1)[0] for h in header]
        if "title" not in names:
            sys.exit(f"{path}: no title column in header {header}")
        col = names.index("title")
        titles = []
        for line in f:
            fields = line.rstrip("\r\n").split("\t")
            if col < len(fields) and fields[col].strip():
                titles.append(fields[col])
    return titles


def main():
    ap = argparse.ArgumentParser(description="sentence-transformers peer for the encode benchmark")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "all-minilm-l6-v2")
    ap.add_argument("--items", type=Path, default=DATA / "Games.item")
    args = ap.parse_args()
    if not (args.model / "config.json").exists():
        sys.exit(f"no model at {args.model}; run scripts/models.sh first")

    titles = read_titles(args.items)
    if args.limit is not None:
        titles = titles[: args.limit]
    if not titles:
        sys.exit(f"{args.items}: no titles")

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(str(args.model), device="cpu", local_files_only=True)
    model.eval()

    with torch.inference_mode():
        # One warm-up batch, as `slim bench encode` does: one-time costs are not throughput.
        model.encode(titles[:BATCH_SIZE], batch_size=BATCH_SIZE, show_progress_bar=False)
        start = time.perf_counter()
        emb = model.encode(titles, batch_size=BATCH_SIZE, convert_to_numpy=True, show_progress_bar=False)
        seconds = time.perf_counter() - start
    assert emb.shape[0] == len(titles), emb.shape

    print(
        json.dumps(
            {
                "tool": "sentence-transformers",
                "sentences": len(titles),
                "seconds": round(seconds, 4),
                "sentences_per_sec": round(len(titles) / seconds, 2),
                "threads": torch.get_num_threads(),
                "batch_size": BATCH_SIZE,
            },
            separators=(",", ":"),
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
