"""SASRec reference in PyTorch: the same model, training and evaluation as slim's
(worker/src/recommend), on the same users and the same evaluation candidates, to check slim's
NDCG@10 and to time an epoch on the same CPU threads. Run by hand, not in CI.

1. Export the inputs from slim (the Video Games slice of worker/tests/recommend.rs, slim's own
   result and timing in slim.json):

     SLIM_REFERENCE_DIR=target/sasrec-reference \\
       cargo test --workspace --test recommend -- --ignored --nocapture reference

   (add --release for epoch timings of an optimised slim; the debug profile already builds
   Burn with opt-level 3, only slim's own crates stay unoptimised)

2. Run this script on them with the same hyper-parameters (the defaults match the export):

     python3 benches/sasrec_reference.py --data target/sasrec-reference [--threads N]

It prints one JSON line:

  {"tool":"pytorch","model":"sasrec","best_epoch":..,"seconds_per_epoch":..,"threads":..,
   "test":{"ndcg@10":..,"hr@10":..,"hr@20":..},"valid_ndcg@10":..}

The inputs: users.parquet (history = training items oldest first, valid_item, test_item),
items.parquet (item_index, train_count), candidates-valid.parquet and candidates-test.parquet
(user_index, candidates = [positive, 100 negatives]).

The model follows slim's sasrec.rs: item embeddings N(0, 0.02) with a zero padding row (token =
item_index + 1), scaled by sqrt(hidden), plus learned positions aligned so the last item is
position max_len - 1; embedding dropout; blocks of q = LN(x), x = q + MHA(q, x, x) with causal
and key-padding masks and dropout on attention weights, x = LN(x), x = x + FFN(x); padded
positions zeroed after each block; a final LN. Loss: binary cross-entropy of the next item
against uniformly sampled unseen negatives at every position. Adam (eps 1e-8). Early stopping
on validation NDCG@10 with patience counted in evaluations. Rank = number of negatives scored
>= the positive (ties count against it).

Requires `python3 -m pip install torch pyarrow numpy`.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder written by slim's reference export")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--negatives", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    return p.parse_args()


class Block(nn.Module):
    def __init__(self, hidden, heads, dropout):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.forward_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn_in = nn.Linear(hidden, hidden)
        self.ffn_out = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask):
        q = self.attention_norm(x)
        a, _ = self.attention(q, x, x, attn_mask=mask, need_weights=False)
        x = self.forward_norm(q + a)
        h = F.relu(self.dropout(self.ffn_in(x)))
        return x + self.dropout(self.ffn_out(h))


class SasRec(nn.Module):
    def __init__(self, num_items, hidden, blocks, heads, dropout, max_len):
        super().__init__()
        self.items = nn.Embedding(num_items + 1, hidden)
        self.positions = nn.Embedding(max_len, hidden)
        for e in (self.items, self.positions):
            nn.init.normal_(e.weight, 0.0, 0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden, heads, dropout) for _ in range(blocks))
        self.last_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.hidden = hidden
        self.heads = heads

    def states(self, items, positions):
        """items, positions: [batch, len] (0 pads, left-padded)."""
        b, n = items.shape
        padding = items == 0
        keep = (~padding).unsqueeze(-1).float()
        x = self.items(items) * math.sqrt(self.hidden) + self.positions(positions)
        x = self.dropout(x) * keep
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        mask = causal.unsqueeze(0) | padding[:, None, :]
        # A boolean mask forbids attention; a row with nothing allowed (padded queries) gets
        # a uniform row like slim's -1e9 fill instead of NaN.
        mask = torch.zeros(b, n, n).masked_fill(mask, -1e9)
        mask = mask.repeat_interleave(self.heads, 0)
        for block in self.blocks:
            x = block(x, mask) * keep
        return self.last_norm(x)


def pad_left(sequences, max_len):
    n = max(1, max(len(s) for s in sequences))
    items = np.zeros((len(sequences), n), dtype=np.int64)
    for r, s in enumerate(sequences):
        if s:
            items[r, n - len(s):] = np.asarray(s) + 1
    positions = np.tile(np.arange(max_len - n, max_len), (len(sequences), 1))
    return torch.from_numpy(items), torch.from_numpy(positions)


def epoch_batches(n_users, lengths, batch_size, rng):
    """slim's batching: shuffle, sort pools of 32 batches by length, shuffle the batches."""
    order = rng.permutation(n_users)
    batches = []
    pool = batch_size * 32
    for start in range(0, n_users, pool):
        chunk = sorted(order[start:start + pool], key=lambda u: lengths[u])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def evaluate(model, inputs, candidates, max_len, batch=512):
    model.eval()
    ndcg10 = hr10 = hr20 = 0.0
    with torch.no_grad():
        for start in range(0, len(inputs), batch):
            seqs = [s[-max_len:] for s in inputs[start:start + batch]]
            items, positions = pad_left(seqs, max_len)
            users = model.states(items, positions)[:, -1, :]
            cand = torch.from_numpy(candidates[start:start + batch] + 1)
            scores = (model.items(cand) * users[:, None, :]).sum(-1)
            rank = (scores[:, 1:] >= scores[:, :1]).sum(1).numpy()
            ndcg10 += np.where(rank < 10, 1.0 / np.log2(rank + 2), 0.0).sum()
            hr10 += (rank < 10).sum()
            hr20 += (rank < 20).sum()
    model.train()
    n = len(inputs)
    return {"ndcg@10": ndcg10 / n, "hr@10": hr10 / n, "hr@20": hr20 / n}


def main():
    args = parse()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    users = pq.read_table(os.path.join(args.data, "users.parquet")).to_pydict()
    num_items = pq.read_table(os.path.join(args.data, "items.parquet")).num_rows
    history, valid, test = users["history"], users["valid_item"], users["test_item"]
    index_of = {u: r for r, u in enumerate(users["user_index"])}

    def candidates(split):
        t = pq.read_table(os.path.join(args.data, f"candidates-{split}.parquet")).to_pydict()
        rows = np.zeros((len(history), len(t["candidates"][0])), dtype=np.int64)
        for u, c in zip(t["user_index"], t["candidates"]):
            rows[index_of[u]] = c
        return rows

    valid_candidates, test_candidates = candidates("valid"), candidates("test")
    valid_inputs = [list(h) for h in history]
    test_inputs = [list(h) + [v] for h, v in zip(history, valid)]

    train_users = [r for r, h in enumerate(history) if len(h) >= 2]
    sequences = [history[r][-(args.max_len + 1):] for r in train_users]
    seen = [set(history[r]) | {valid[r], test[r]} for r in train_users]
    lengths = [len(s) for s in sequences]

    model = SasRec(num_items, args.hidden, args.blocks, args.heads, args.dropout, args.max_len)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-8)
    best, since_best, epoch_seconds = None, 0, []
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        for rows in epoch_batches(len(sequences), lengths, args.batch_size, rng):
            inputs = [sequences[u][:-1] for u in rows]
            items, positions = pad_left(inputs, args.max_len)
            n = items.shape[1]
            pos = np.zeros((len(rows), n), dtype=np.int64)
            neg = np.zeros((len(rows), n, args.negatives), dtype=np.int64)
            for r, u in enumerate(rows):
                targets = sequences[u][1:]
                pos[r, n - len(targets):] = np.asarray(targets) + 1
                for t in range(n - len(targets), n):
                    for k in range(args.negatives):
                        while True:
                            i = int(rng.integers(num_items))
                            if i not in seen[u]:
                                break
                        neg[r, t, k] = i + 1
            pos, neg = torch.from_numpy(pos), torch.from_numpy(neg)
            states = model.states(items, positions)
            pos_logits = (states * model.items(pos)).sum(-1)
            neg_logits = (states.unsqueeze(2) * model.items(neg)).sum(-1)
            weight = (pos != 0).float()
            per_position = -F.logsigmoid(pos_logits) - F.logsigmoid(-neg_logits).sum(-1)
            loss = (per_position * weight).sum() / weight.sum().clamp(min=1.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - started)
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            ndcg = evaluate(model, valid_inputs, valid_candidates, args.max_len)["ndcg@10"]
            if best is None or ndcg > best[1]:
                best = (epoch, ndcg, {k: v.clone() for k, v in model.state_dict().items()})
                since_best = 0
            else:
                since_best += 1
            if since_best >= max(1, args.patience):
                break
    model.load_state_dict(best[2])
    result = {
        "tool": "pytorch",
        "model": "sasrec",
        "torch": torch.__version__,
        "threads": args.threads,
        "users": len(history),
        "items": num_items,
        "best_epoch": best[0],
        "epochs": len(epoch_seconds),
        "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds),
        "valid_ndcg@10": best[1],
        "test": evaluate(model, test_inputs, test_candidates, args.max_len),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
