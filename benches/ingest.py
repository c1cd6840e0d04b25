"""Ingest benchmark: `slim prepare` against a pandas peer doing the same work on the same
files, in one run. Measures wall time and peak RSS of each as a child process (os.wait4), on
the bundled Games sample and on a copy replicated N times with renamed ids.

usage: python3 benches/ingest.py [--scale 20] [--slim target/release/slim]
Writes benches/results/ingest.json and prints a table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SLIM_DATA_DIR", ROOT.parent / "shared" / "data" / "amazon")) / "Video_Games"


def replicate(src_inter: Path, src_item: Path, dst: Path, scale: int):
    """Writes `scale` disjoint copies of the dataset: copy r renames user u to u_r and item i to i_r."""
    inter_lines = src_inter.read_text().splitlines()
    item_lines = src_item.read_text().splitlines()
    with open(dst / "big.inter", "w") as f:
        f.write(inter_lines[0] + "\n")
        for r in range(scale):
            for line in inter_lines[1:]:
                user, seq, target = line.split("\t")
                seq = " ".join(f"{i}_{r}" for i in seq.split(" "))
                f.write(f"{user}_{r}\t{seq}\t{target}_{r}\n")
    with open(dst / "big.item", "w") as f:
        f.write(item_lines[0] + "\n")
        for r in range(scale):
            for line in item_lines[1:]:
                item, _, title = line.partition("\t")
                f.write(f"{item}_{r}\t{title}\n")
    return dst / "big.inter", dst / "big.item"


def measure(cmd):
    """Runs cmd, returns (seconds, peak RSS in MiB, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed:\n{out.decode()}\n{err.decode()}")
    return seconds, usage.ru_maxrss / 1024, out.decode()


def manifest(path: Path, inter: Path, item: Path, out: Path):
    path.write_text(
        f"""[job]
id = "bench"
output = "{out}"
[data]
format = "recbole"
reviews = "{inter}"
meta = "{item}"
[prepare]
k_core = 5
max_history = 50
teacher_sample = 1000
seed = 42
users_per_shard = 1000
"""
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--slim", default=str(ROOT / "target" / "release" / "slim"))
    args = ap.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = [("games", DATA / "Games-6k.test.inter", DATA / "Games.item")]
        inputs.append((f"games x{args.scale}", *replicate(inputs[0][1], inputs[0][2], tmp, args.scale)))
        for name, inter, item in inputs:
            size_mib = (inter.stat().st_size + item.stat().st_size) / 2**20
            slim_out, pandas_out = tmp / f"slim-{len(results)}", tmp / f"pandas-{len(results)}"
            pandas_out.mkdir()
            job = tmp / "bench.toml"
            manifest(job, inter, item, slim_out)
            slim_s, slim_rss, slim_stdout = measure([args.slim, "prepare", str(job), "--quiet"])
            pd_s, pd_rss, pd_stdout = measure(
                [sys.executable, str(ROOT / "benches" / "ingest_pandas.py"), str(inter), str(item), str(pandas_out)]
            )
            summary = json.loads((slim_out / "bench" / "data" / "summary.json").read_text())
            peer = json.loads(pd_stdout.strip().splitlines()[-1])
            agree = all(summary[k] == peer[k] for k in ("users", "items", "interactions"))
            results.append(
                {
                    "dataset": name,
                    "input_mib": round(size_mib, 1),
                    "slim_s": round(slim_s, 2),
                    "pandas_s": round(pd_s, 2),
                    "speedup": round(pd_s / slim_s, 2),
                    "slim_rss_mib": round(slim_rss, 1),
                    "pandas_rss_mib": round(pd_rss, 1),
                    "slim_rss_over_input": round(slim_rss / size_mib, 2),
                    "users": summary["users"],
                    "items": summary["items"],
                    "interactions": summary["interactions"],
                    "outputs_agree": agree,
                }
            )
    out_dir = ROOT / "benches" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "ingest.json").write_text(json.dumps(results, indent=2) + "\n")
    cols = list(results[0].keys())
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(r[c]) for c in cols))
    if not all(r["outputs_agree"] for r in results):
        sys.exit("slim and pandas disagree on users/items/interactions")


if __name__ == "__main__":
    main()
