#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) on the same GGUF and prompt shape as `slim bench generate`:
prefill and decode tokens/s at batch 1, with the thread count given, and peak RSS.

    pip install llama-cpp-python      # builds llama.cpp from source (10+ minutes on 2 cores)
    python3 benches/generate_peer.py --threads 2 --prompt-tokens 128 --new-tokens 64

Decoding is greedy (argmax of the logits llama.cpp returns), one token per `eval` call, so the
timing is llama.cpp's own decode step plus a Python call.
"""
import argparse
import json
import resource
import time

from llama_cpp import Llama

TEXT = (
    "Recommend the next video game for a player who recently bought a racing wheel, two open-world "
    "adventure games, a rhythm game and a puzzle collection. Explain the player's preferences, the "
    "categories and brands they favour, and which items fit."
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
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
    prompt = [base[i % len(base)] for i in range(args.prompt_tokens)]

    # Warm-up, as slim's bench does.
    llm.reset()
    llm.eval(prompt[:8])
    llm.reset()

    started = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - started
    token = int(llm.scores[llm.n_tokens - 1].argmax())
    started = time.perf_counter()
    for _ in range(args.new_tokens - 1):
        llm.eval([token])
        token = int(llm.scores[llm.n_tokens - 1].argmax())
    decode = time.perf_counter() - started

    result = {
        "tool": "llama.cpp (llama-cpp-python)",
        "threads": args.threads,
        "runs": [
            {
                "batch": 1,
                "prompt_tokens": args.prompt_tokens,
                "new_tokens": args.new_tokens,
                "prefill_tokens_per_sec": args.prompt_tokens / prefill,
                "decode_tokens_per_sec": (args.new_tokens - 1) / decode,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        ],
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
