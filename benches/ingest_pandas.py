"""Peer for the ingest benchmark: the same work as `slim prepare` on a RecBole sequence file,
done with pandas + pyarrow. Reads the .inter (user, item_id_list, target) and .item files,
dedupes (user, item) keeping the first, iterates the k-core, splits leave-one-out, truncates
histories, samples U', assigns shards, and writes users/items Parquet with ZSTD.

usage: ingest_pandas.py INTER ITEM OUTDIR [K_CORE MAX_HISTORY SAMPLE SEED USERS_PER_SHARD]
Prints a JSON line with users, items, interactions.
"""

import json
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def main():
    inter, item, out = sys.argv[1:4]
    k, max_hist, sample, seed, per_shard = (int(x) for x in (sys.argv[4:9] or [5, 50, 1000, 42, 1000]))

    raw = pd.read_csv(inter, sep="\t", dtype=str, quoting=3)
    raw.columns = [c.split(":")[0] for c in raw.columns]
    hist = raw[["user_id"]].assign(item_id=raw["item_id_list"].str.split(" ")).explode("item_id")
    hist["pos"] = hist.groupby("user_id", sort=False).cumcount()
    target = raw[["user_id", "item_id"]].copy()
    target["pos"] = raw["item_id_list"].str.count(" ") + 1
    df = pd.concat([hist, target], ignore_index=True)
    df = df.sort_values(["user_id", "pos"], kind="stable")
    df = df.drop_duplicates(["user_id", "item_id"], keep="first")

    while True:
        ucount = df.groupby("user_id")["item_id"].transform("size")
        icount = df.groupby("item_id")["user_id"].transform("size")
        keep = (ucount >= k) & (icount >= k)
        if keep.all():
            break
        df = df[keep]

    n = df.groupby("user_id", sort=False)["item_id"].transform("size")
    df = df[n >= 3].copy()
    df["rank_from_end"] = df.groupby("user_id", sort=False).cumcount(ascending=False)
    train = df[df["rank_from_end"] >= 2]
    train = train[train["rank_from_end"] < 2 + max_hist] if max_hist else train
    items = pd.Index(df["item_id"].unique())
    df["item_index"] = items.get_indexer(df["item_id"])
    train_idx = items.get_indexer(train["item_id"])
    history = pd.Series(train_idx, index=train["user_id"].values).groupby(level=0, sort=False).agg(list)
    valid = df[df["rank_from_end"] == 1].set_index("user_id")["item_index"]
    test = df[df["rank_from_end"] == 0].set_index("user_id")["item_index"]
    users = test.index
    n_users = len(users)
    rng = np.random.default_rng(seed)
    in_sample = np.zeros(n_users, dtype=bool)
    in_sample[rng.choice(n_users, size=min(sample, n_users), replace=False)] = True
    table = pa.table(
        {
            "user_id": users.astype(str),
            "user_index": np.arange(n_users, dtype=np.uint32),
            "history": pa.array(history.reindex(users).tolist(), type=pa.list_(pa.uint32())),
            "valid_item": valid.reindex(users).to_numpy(np.uint32),
            "test_item": test.to_numpy(np.uint32),
            "shard": (np.arange(n_users) // per_shard).astype(np.uint32),
            "in_teacher_sample": in_sample,
        }
    )
    pq.write_table(table, f"{out}/users.parquet", compression="zstd")

    meta = pd.read_csv(item, sep="\t", dtype=str, quoting=3)
    meta.columns = [c.split(":")[0] for c in meta.columns]
    meta = meta.drop_duplicates("item_id").set_index("item_id")
    titles = meta["title"].reindex(items)
    counts = pd.Series(train_idx).value_counts().reindex(range(len(items)), fill_value=0)
    pq.write_table(
        pa.table(
            {
                "item_index": np.arange(len(items), dtype=np.uint32),
                "item_id": items.astype(str),
                "title": titles.to_numpy(),
                "train_count": counts.to_numpy(np.uint32),
            }
        ),
        f"{out}/items.parquet",
        compression="zstd",
    )
    print(json.dumps({"users": n_users, "items": len(items), "interactions": int(len(df))}))


if __name__ == "__main__":
    main()
