#!/usr/bin/env python3
"""PyTorch + PEFT LoRA training on the same model and settings as `slim bench finetune`:
training tokens/s and peak RSS.

    pip install torch transformers peft gguf
    python3 benches/finetune_peer.py --threads 2 --seq-len 512 --batch 1 --steps 8

The model is SmolLM2-135M-Instruct from the GGUF of `make models`, dequantized to float32 by
transformers (slim trains on the same dequantized weights). LoRA rank 8, alpha 16, no dropout,
on q, k, v, o; AdamW; loss over the second half of each sequence (the "answer"), as slim's
benchmark does. One warm-up step, then the timed steps.
"""
import argparse
import json
import os
import resource
import time

TEXT = (
    "Recommend the next video game for a player who recently bought a racing wheel, two open-world "
    "adventure games, a rhythm game and a puzzle collection. Explain the player's preferences, the "
    "categories and brands they favour, and which items fit."
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default="models/smollm2-135m-instruct")
    parser.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=args.gguf)
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, gguf_file=args.gguf, torch_dtype=torch.float32
    )
    model = get_peft_model(
        model,
        LoraConfig(
            r=args.rank,
            lora_alpha=2 * args.rank,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    base = tokenizer(TEXT, add_special_tokens=False)["input_ids"]

    def batch(step):
        rows = []
        for b in range(args.batch):
            row = step * args.batch + b
            rows.append([base[(i + row * 7) % len(base)] for i in range(args.seq_len)])
        ids = torch.tensor(rows)
        labels = ids.clone()
        labels[:, : args.seq_len // 2] = -100
        return ids, labels

    def step(i):
        ids, labels = batch(i)
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return float(loss)

    step(0)  # warm-up
    started = time.perf_counter()
    last = None
    for i in range(args.steps):
        last = step(i)
    seconds = time.perf_counter() - started
    result = {
        "tool": "pytorch+peft",
        "torch": torch.__version__,
        "threads": args.threads,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "steps": args.steps,
        "rank": args.rank,
        "train_tokens_per_sec": args.steps * args.batch * args.seq_len / seconds,
        "seconds_per_step": seconds / args.steps,
        "last_loss": last,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
