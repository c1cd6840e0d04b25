#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) on the same GGUF and prompt shape as `slim bench generate`:
prefill and decode tokens/s at each batch size, with the thread count given, and peak RSS.

    pip install llama-cpp-python      # builds llama.cpp from source (10+ minutes on 2 cores)
    python3 benches/generate_peer.py --threads 2 --prompt-tokens 128 --new-tokens 64 --batches 1,16

Decoding is greedy (argmax of the logits llama.cpp returns). Batch 1 goes through `Llama.eval`,
one token per call. Larger batches use llama.cpp's own batched API: one context with a sequence
per prompt, all prompts prefilled in one `llama_decode`, then one `llama_decode` per step with a
token for every sequence. Row `r`'s prompt starts `7 * r` tokens into the text, as slim's does.
Peak RSS is the process's, so it is the largest batch's so far.
"""
import argparse
import json
import resource
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama

TEXT = (
    "Recommend the next video game for a player who recently bought a racing wheel, two open-world "
    "adventure games, a rhythm game and a puzzle collection. Explain the player's preferences, the "
    "categories and brands they favour, and which items fit."
)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch_one(llm, prompt, new_tokens):
    """Prefill and decode seconds for one prompt through the high-level API."""
    # Warm-up, as slim's bench does.
    llm.reset()
    llm.eval(prompt[:8])
    llm.reset()

    started = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - started
    token = int(llm.scores[llm.n_tokens - 1].argmax())
    started = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([token])
        token = int(llm.scores[llm.n_tokens - 1].argmax())
    return prefill, time.perf_counter() - started


def batched(llm, prompts, new_tokens, threads):
    """Prefill and decode seconds for several prompts as sequences of one llama.cpp context."""
    model = llm._model.model
    rows, length = len(prompts), len(prompts[0])
    params = llama_cpp.llama_context_default_params()
    # llama.cpp gives each sequence n_ctx / n_seq_max positions, in whole blocks of 256.
    params.n_ctx = rows * 256 * -(-(length + new_tokens + 8) // 256)
    params.n_batch = rows * length
    params.n_seq_max = rows
    params.n_threads = threads
    params.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a batched context")
    vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    batch = llama_cpp.llama_batch_init(rows * length, 0, rows)

    def decode(items):
        """`items`: (token, position, sequence, wants logits)."""
        batch.n_tokens = 0
        for token, position, sequence, logits in items:
            i = batch.n_tokens
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = sequence
            batch.logits[i] = 1 if logits else 0
            batch.n_tokens += 1
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(i):
        logits = llama_cpp.llama_get_logits_ith(ctx, i)
        return int(np.ctypeslib.as_array(logits, shape=(vocab,)).argmax())

    try:
        started = time.perf_counter()
        decode(
            (token, position, row, position == length - 1)
            for row, prompt in enumerate(prompts)
            for position, token in enumerate(prompt)
        )
        tokens = [argmax(row * length + length - 1) for row in range(rows)]
        prefill = time.perf_counter() - started
        started = time.perf_counter()
        for step in range(new_tokens - 1):
            decode((tokens[row], length + step, row, True) for row in range(rows))
            tokens = [argmax(row) for row in range(rows)]
        return prefill, time.perf_counter() - started
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--json")
    args = parser.parse_args()

    llm = Llama(
        model_path=args.model,
        n_ctx=args.prompt_tokens + args.new_tokens + 8,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_batch=512,
        verbose=False,
    )
    base = llm.tokenize(TEXT.encode(), add_bos=False)

    def prompt(row):
        return [base[(i + row * 7) % len(base)] for i in range(args.prompt_tokens)]

    runs = []
    for size in (int(b) for b in args.batches.split(",")):
        if size == 1:
            prefill, decode = batch_one(llm, prompt(0), args.new_tokens)
        else:
            prefill, decode = batched(
                llm, [prompt(row) for row in range(size)], args.new_tokens, args.threads
            )
        run = {
            "batch": size,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "prefill_tokens_per_sec": size * args.prompt_tokens / prefill,
            "decode_tokens_per_sec": size * (args.new_tokens - 1) / decode,
            "peak_rss_mib": peak_rss_mib(),
        }
        print(json.dumps(run))
        runs.append(run)

    result = {"tool": "llama.cpp (llama-cpp-python)", "threads": args.threads, "runs": runs}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
