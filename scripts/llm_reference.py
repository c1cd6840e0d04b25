#!/usr/bin/env python3
"""Writes the fixtures the LLM engine's reference tests compare against.

    worker/tests/fixtures/smollm2_reference.json  token ids, chat rendering, last-position
        logits (top 40 and a fixed probe set) and 32-token greedy continuations of
        SmolLM2-135M-Instruct (the GGUF of `make models`), from Hugging Face transformers
        loading that same GGUF file (dequantized by gguf-py, Q/K un-permuted by transformers).
    worker/tests/fixtures/ggml_quant_reference.json  random blocks of every ggml type slim
        reads, with gguf-py's dequantization of them.

Run by hand (PyTorch is large; CI uses the committed fixtures):
    pip install torch transformers gguf
    python3 scripts/llm_reference.py

Tokenizer note: transformers builds the GGUF tokenizer from its vocabulary and merges but does not
know llama.cpp's `smollm` pre-tokenizer (`tokenizer.ggml.pre`), which splits every digit on its own
before the GPT-2 split, as SmolLM2's original tokenizer.json does. The script sets that
pre-tokenizer on the transformers tokenizer so the reference tokenizes numbers as the model was
trained; everything else (vocabulary, merges, special tokens, byte-level decoding) is transformers'.
"""
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(ROOT, "models", "smollm2-135m-instruct")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FIXTURES = os.path.join(ROOT, "worker", "tests", "fixtures")

TRICKY = [
    "Hello world",
    "  two leading spaces and trailing  ",
    " leading space",
    "12345 apples cost $1,234.56 in 2024",
    "3.14159265358979",
    "naïve café, Zürich, 日本語のテキスト, emoji 🤖🎮",
    "tabs\tand\nnew\n\nlines",
    "Don't you'll we've they're I'm",
    "<|im_start|>user\nHi<|im_end|>",
    "text<|endoftext|>more",
    "",
    "A" * 40,
    "def f(x):\n    return x ** 2  # square",
]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a recommender system."},
        {"role": "user", "content": "I played Zelda, Metroid and Portal. Which game should I play next?"},
    ],
]
RAW = ["The quick brown fox", "def fibonacci(n):\n"]
PROBE_IDS = [0, 1, 2, 17, 100, 1000, 5000, 20000, 49151]


def tokenizer_reference():
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    return tok


def model_reference(tok):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF, dtype=torch.float32)
    model.eval()
    prompts = []
    for chat in CHATS:
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        prompts.append({"kind": "chat", "messages": chat, "text": text})
    for text in RAW:
        prompts.append({"kind": "raw", "text": text})
    for prompt in prompts:
        ids = tok(prompt["text"], add_special_tokens=False)["input_ids"]
        prompt["ids"] = ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
            top = torch.topk(logits, 40)
            # An explicit mask: without one transformers masks every token equal to the pad id,
            # and SmolLM2's pad id is <|im_end|>, which chat prompts contain.
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=32,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=2,
            )
        prompt["top_ids"] = top.indices.tolist()
        prompt["top_logits"] = top.values.tolist()
        prompt["probe_logits"] = [logits[i].item() for i in PROBE_IDS]
        prompt["greedy"] = out[0, len(ids):].tolist()
        prompt["greedy_text"] = tok.decode(prompt["greedy"], skip_special_tokens=True)
    return prompts


def quant_reference():
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize

    rng = np.random.default_rng(0)

    def f16(values):
        return np.asarray(values, dtype=np.float16).tobytes()

    def blocks(kind, count):
        raw = b""
        for _ in range(count):
            if kind == "Q4_0":
                raw += f16([rng.uniform(-0.1, 0.1)]) + rng.bytes(16)
            elif kind == "Q4_1":
                raw += f16([rng.uniform(0, 0.1), rng.uniform(-0.5, 0.5)]) + rng.bytes(16)
            elif kind == "Q8_0":
                raw += f16([rng.uniform(-0.05, 0.05)]) + rng.bytes(32)
            elif kind == "Q4_K":
                raw += f16([rng.uniform(0, 0.01), rng.uniform(0, 0.01)]) + rng.bytes(12) + rng.bytes(128)
            elif kind == "Q6_K":
                raw += rng.bytes(128) + rng.bytes(64) + rng.bytes(16) + f16([rng.uniform(-0.01, 0.01)])
            elif kind == "F16":
                raw += f16(rng.normal(size=32))
            elif kind == "BF16":
                raw += (np.asarray(rng.normal(size=32), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        return raw

    cases = []
    for kind, count in [("Q4_0", 3), ("Q4_1", 3), ("Q8_0", 3), ("Q4_K", 2), ("Q6_K", 2), ("F16", 2), ("BF16", 2)]:
        raw = blocks(kind, count)
        values = dequantize(np.frombuffer(raw, dtype=np.uint8), T[kind]).astype(np.float32).reshape(-1)
        cases.append({"type": kind, "hex": raw.hex(), "values": values.tolist()})
    return cases


def main():
    os.makedirs(FIXTURES, exist_ok=True)
    tok = tokenizer_reference()
    tokens = [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in TRICKY]
    reference = {
        "model": f"models/smollm2-135m-instruct/{GGUF}",
        "made_by": "scripts/llm_reference.py (transformers loading the same GGUF)",
        "probe_ids": PROBE_IDS,
        "tokens": tokens,
        "prompts": model_reference(tok),
    }
    with open(os.path.join(FIXTURES, "smollm2_reference.json"), "w") as f:
        json.dump(reference, f, indent=1, ensure_ascii=False)
    with open(os.path.join(FIXTURES, "ggml_quant_reference.json"), "w") as f:
        json.dump({"made_by": "scripts/llm_reference.py (gguf-py dequantize)", "cases": quant_reference()}, f)
    print("wrote", FIXTURES)


if __name__ == "__main__":
    main()
