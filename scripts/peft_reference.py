#!/usr/bin/env python3
"""PEFT compatibility fixtures for slim's LoRA adapters, both ways.

Write the fixture (run by hand; PyTorch is large, so CI uses the committed files):

    pip install torch transformers peft
    python3 scripts/peft_reference.py write

    worker/tests/fixtures/peft_tiny/base/{config.json,model.safetensors}   a tiny random Llama
    worker/tests/fixtures/peft_tiny/adapter/{adapter_model.safetensors,adapter_config.json}
        a rank-4 LoRA adapter on q, k, v, o, gate, up, down saved by real `peft`, with random
        (non-zero) A and B so that it changes the logits
    worker/tests/fixtures/peft_tiny/reference.json   input ids and the logits of base and
        base + adapter (unmerged and merged by peft), which slim's test reproduces

Check an adapter slim exported (slim's test writes one next to the fixture, see
worker/tests/llm.rs `slim_exports_a_peft_adapter`; or a job's `student/` folder with its base):

    python3 scripts/peft_reference.py check BASE_DIR ADAPTER_DIR EXPECTED_JSON

loads BASE_DIR with transformers, ADAPTER_DIR with `peft.PeftModel.from_pretrained`, and
compares the logits with those slim recorded in EXPECTED_JSON (`input_ids`, `logits`).
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "worker", "tests", "fixtures", "peft_tiny")
INPUT_IDS = [[1, 17, 42, 99, 3, 64, 5, 120, 77, 8]]


def tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(7)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    # Bigger than the default init so the logits are far from uniform.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08)
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
    return model


def logits_of(model):
    import torch

    with torch.no_grad():
        ids = torch.tensor(INPUT_IDS)
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].tolist()


def write():
    import torch
    from peft import LoraConfig, get_peft_model

    base = tiny_llama()
    base_dir = os.path.join(FIXTURE, "base")
    base.save_pretrained(base_dir, safe_serialization=True)
    base_logits = logits_of(base)

    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config).eval()
    torch.manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.2)
    adapter_dir = os.path.join(FIXTURE, "adapter")
    model.save_pretrained(adapter_dir, safe_serialization=True)
    adapted = logits_of(model)
    merged = logits_of(model.merge_and_unload())
    with open(os.path.join(FIXTURE, "reference.json"), "w") as f:
        json.dump(
            {
                "input_ids": INPUT_IDS[0],
                "base_logits": base_logits,
                "adapted_logits": adapted,
                "merged_logits": merged,
            },
            f,
        )
    print(f"wrote {FIXTURE}")


def check(base_dir, adapter_dir, expected_path):
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with open(expected_path) as f:
        expected = json.load(f)
    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        ids = torch.tensor([expected["input_ids"]])
        got = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy()
    want = np.array(expected["logits"], dtype=np.float32)
    diff = float(np.abs(got - want).max())
    print(f"peft loaded {adapter_dir}: max |logit difference| vs slim = {diff:.2e}")
    if diff > 1e-3:
        sys.exit(f"mismatch: {diff}")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "write":
        write()
    elif len(sys.argv) == 5 and sys.argv[1] == "check":
        check(*sys.argv[2:5])
    else:
        sys.exit(__doc__)
