"""``nuwa-ds text-encoder --captions FILE... --out DIR``: a text encoder made from your own captions,
with no download, for users who have no CLIP / T5 / BERT folder to bring.

1. a WordPiece tokenizer (``tokenizers``) whose vocabulary is what the captions need: their words and
   characters, up to ``--vocab-size``; wrapped as a transformers fast tokenizer;
2. a small BERT encoder built from a config (``--preset tiny|small``);
3. optionally pre-trained with masked-language modelling on the captions (``--mlm-steps``; 0 keeps
   the random initialisation);
4. both written with ``save_pretrained``, so ``AutoModel`` / ``AutoTokenizer.from_pretrained(DIR)``
   and ``train.text_encoder_path=DIR`` read it exactly like a downloaded folder.

``DIR/text_encoder.json`` records what was made: vocabulary size, the encoder config, the MLM loss
on held-out captions before and after pre-training.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch

from data_pipelines.sources import Captions
from nuwa_ds.config_base import ConfigBase, cli

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
REPORT = "text_encoder.json"

PRESETS: dict[str, dict] = {
    # hidden width, depth, heads, feed-forward width: a few hundred thousand / a few million parameters
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
}
MASK_FRACTION = 0.15


@dataclass
class TextEncoderCommand(ConfigBase):
    """Everything ``nuwa-ds text-encoder`` is told; its flags are generated from these fields."""

    captions: list[str] = field(metadata=cli(metavar="FILE", help=(
        "caption files: .txt (one caption per line), or the .csv / .tsv / .jsonl captions files "
        "`nuwa-ds prepare --captions` reads")))
    out: str
    """Output directory (a transformers model + tokenizer folder)."""
    preset: Literal[tuple(PRESETS)] = "tiny"
    """Encoder size."""
    vocab_size: int = 4000
    """Largest vocabulary: characters, then the most frequent words (the captions may need fewer)."""
    max_length: int = 64
    """Longest caption in tokens (position embeddings; match model.max_text_len)."""
    mlm_steps: int = 300
    """Masked-language-model pre-training steps on the captions; 0: random weights."""
    batch_size: int = 32
    """Captions per MLM step."""
    lr: float = 1e-3
    """MLM learning rate (AdamW)."""
    threads: int = 1
    """CPU threads of the MLM pre-training (its steps are too small to share: on a busy 2-core machine
    100 steps took 1 s with one thread, 52 s with two)."""
    seed: int = 0
    """Seed of the initialisation, the masking and the batches."""
    overwrite: bool = False
    """Replace an existing model in --out."""


def add_arguments(parser):
    TextEncoderCommand.add_flags(parser)


def read_captions(paths: Sequence) -> list[str]:
    """Every caption of every file, in order. ``.txt``: one per non-blank line; ``.csv`` / ``.tsv`` /
    ``.jsonl``: the caption column, read by the same reader as ``nuwa-ds prepare``."""
    if not paths:
        raise ValueError("--captions: give at least one captions file")
    captions: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"captions file {path} does not exist")
        if path.suffix.lower() == ".txt":
            found = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json"):
            found = Captions(path).texts
        else:
            raise ValueError(f"captions file {path}: use .txt (one caption per line), .csv, .tsv or .jsonl")
        if not found:
            raise ValueError(f"captions file {path} holds no caption")
        captions += found
    return captions


def train_tokenizer(captions: Sequence[str], vocab_size: int, max_length: int):
    """A lower-casing WordPiece tokenizer over the captions, as a transformers fast tokenizer that adds
    [CLS] ... [SEP] like BERT's.

    The vocabulary is counted, not learned by merges: the special tokens, every character the captions
    use (alone and as a ``##`` continuation, so any word made of them can be spelled), then the
    captions' words by frequency (ties alphabetical) up to ``vocab_size``. ``tokenizers``'
    WordPieceTrainer breaks ties between merges differently from one process to the next, so the same
    captions gave other vocabularies (and so other token ids); counting gives the same one every time."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(word for caption in captions
                    for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(caption)))
    chars = sorted({ch for word in words for ch in word})
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{ch}" for ch in chars)]
    if vocab_size < len(vocab):
        raise ValueError(f"vocab_size {vocab_size} is too small: the captions' {len(chars)} characters and the "
                         f"special tokens alone need {len(vocab)}")
    known = set(vocab)
    ranked = sorted((w for w in words if w not in known), key=lambda w: (-words[w], w))
    vocab += ranked[:vocab_size - len(vocab)]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, splitter
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length,
                                   padding_side="right")


def encoder_config(preset: str, vocab_size: int, max_length: int, pad_token_id: int):
    from transformers import BertConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown text encoder preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return BertConfig(vocab_size=vocab_size, max_position_embeddings=max_length, pad_token_id=pad_token_id,
                      **PRESETS[preset])


def mask_tokens(ids: torch.Tensor, attention: torch.Tensor, tokenizer, generator: torch.Generator):
    """BERT's masking: 15% of the real (non-special, non-pad) tokens of each caption, at least one,
    become the targets; 80% of those read [MASK], 10% a random token, 10% themselves.
    Returns (input_ids, labels) with labels -100 where there is nothing to predict."""
    special = torch.tensor([tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS])
    real = attention.bool() & ~torch.isin(ids, special)  # [B, S]
    score = torch.rand(ids.shape, generator=generator).masked_fill(~real, 2.0)
    count = (real.sum(1, keepdim=True) * MASK_FRACTION).ceil().clamp(min=1)  # [B, 1]
    rank = score.argsort(1).argsort(1)  # position of each token in its caption's random order
    target = real & (rank < count)
    labels = ids.masked_fill(~target, -100)
    action = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[target & (action < 0.8)] = tokenizer.mask_token_id
    swap = target & (action >= 0.8) & (action < 0.9)
    inputs[swap] = torch.randint(len(SPECIAL_TOKENS), len(tokenizer), (int(swap.sum()),), generator=generator)
    return inputs, labels


def _batches(captions: Sequence[str], tokenizer, size: int):
    for start in range(0, len(captions), size):
        enc = tokenizer(list(captions[start:start + size]), padding=True, truncation=True, return_tensors="pt")
        yield enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def mlm_loss(model, captions: Sequence[str], tokenizer, seed: int, draws: int = 4, batch_size: int = 64) -> float:
    """Mean masked-token cross-entropy over ``draws`` fixed (seeded) maskings of ``captions``."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(draws):
        for ids, attention in _batches(captions, tokenizer, batch_size):
            inputs, labels = mask_tokens(ids, attention, tokenizer, generator)
            logits = model(input_ids=inputs, attention_mask=attention).logits
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                             ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    return total / count


def split_held_out(captions: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """(training, held-out): a tenth of the distinct captions (at least one) is held out when there are
    ten or more; with fewer, the loss is measured on the training captions themselves."""
    distinct = sorted(set(captions))
    if len(distinct) < 10:
        return list(captions), distinct
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {distinct[i] for i in order[:max(1, len(distinct) // 10)]}
    return [c for c in captions if c not in held], sorted(held)


def make_text_encoder(captions: Sequence[str], out, preset: str = "tiny", vocab_size: int = 4000,
                      max_length: int = 64, mlm_steps: int = 300, batch_size: int = 32, lr: float = 1e-3,
                      seed: int = 0, overwrite: bool = False, threads: int = 1) -> dict:
    """Tokenizer + BERT encoder from ``captions``, saved to ``out``; returns the report (also in
    ``out/text_encoder.json``)."""
    from transformers import BertModel

    captions = [c.strip() for c in captions if c and c.strip()]
    if not captions:
        raise ValueError("no captions: the text encoder needs at least one non-empty caption")
    for name, value, least in (("vocab_size", vocab_size, len(SPECIAL_TOKENS) + 1), ("max_length", max_length, 3),
                               ("batch_size", batch_size, 1), ("mlm_steps", mlm_steps, 0), ("threads", threads, 1)):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    out = Path(out)
    if (out / "config.json").exists() and not overwrite:
        raise ValueError(f"{out} already holds a model: pass --overwrite to replace it, or choose another --out")
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tokenizer, mlm, report = _make(captions, preset, vocab_size, max_length, mlm_steps, batch_size, lr, seed)
    finally:
        torch.set_num_threads(previous_threads)
    encoder = BertModel(mlm.config)  # what AutoModel builds from this config: the MLM head is left behind
    missing, unexpected = encoder.load_state_dict(mlm.bert.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"BERT encoder weights do not fit: missing {missing}, unexpected {unexpected}")
    out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report["seconds"] = round(time.perf_counter() - started, 2)
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _make(captions, preset, vocab_size, max_length, mlm_steps, batch_size, lr, seed):
    """(tokenizer, BertForMaskedLM, report) of make_text_encoder."""
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    tokenizer = train_tokenizer(captions, vocab_size, max_length)
    config = encoder_config(preset, len(tokenizer), max_length, tokenizer.pad_token_id)
    mlm = BertForMaskedLM(config)
    train, held_out = split_held_out(captions, seed)
    report = {"captions": len(captions), "distinct_captions": len(set(captions)), "preset": preset,
              "vocab_size": len(tokenizer), "max_length": max_length,
              "config": {k: getattr(config, k) for k in ("model_type", *PRESETS[preset], "vocab_size",
                                                         "max_position_embeddings")},
              "parameters": sum(p.numel() for p in mlm.bert.parameters()),
              "mlm": {"steps": mlm_steps, "batch_size": batch_size, "lr": lr, "held_out_captions": len(held_out),
                      "measured_on": "held-out captions" if len(held_out) < len(set(captions)) else "training captions",
                      "loss_before": mlm_loss(mlm, held_out, tokenizer, seed),
                      "chance_loss": math.log(len(tokenizer))}}
    if mlm_steps:
        pretrain(mlm, train, tokenizer, mlm_steps, batch_size, lr, seed)
        report["mlm"]["loss_after"] = mlm_loss(mlm, held_out, tokenizer, seed)
    return tokenizer, mlm, report


def pretrain(mlm, captions: Sequence[str], tokenizer, steps: int, batch_size: int, lr: float, seed: int):
    """``steps`` AdamW steps of masked-language modelling on random batches of ``captions``."""
    generator = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.AdamW(mlm.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine to a tenth
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * min(1.0, s / steps))))
    mlm.train()
    for _ in range(steps):
        pick = torch.randint(len(captions), (batch_size,), generator=generator).tolist()
        enc = tokenizer([captions[i] for i in pick], padding=True, truncation=True, return_tensors="pt")
        inputs, labels = mask_tokens(enc["input_ids"], enc["attention_mask"], tokenizer, generator)
        loss = mlm(input_ids=inputs, attention_mask=enc["attention_mask"], labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mlm.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    mlm.eval()


def run(args) -> int:
    command = TextEncoderCommand.from_args(args)
    captions = read_captions(command.captions)
    report = make_text_encoder(captions, command.out, preset=command.preset, vocab_size=command.vocab_size,
                               max_length=command.max_length, mlm_steps=command.mlm_steps,
                               batch_size=command.batch_size, lr=command.lr, seed=command.seed,
                               overwrite=command.overwrite, threads=command.threads)
    mlm = report["mlm"]
    after = f" -> {mlm['loss_after']:.3f}" if "loss_after" in mlm else " (no pre-training)"
    print(f"text encoder: BERT {command.preset}, {report['parameters'] / 1e6:.2f}M parameters, vocabulary "
          f"{report['vocab_size']} from {report['captions']} captions ({report['distinct_captions']} distinct); "
          f"MLM loss on {mlm['measured_on']} {mlm['loss_before']:.3f}{after} (chance {mlm['chance_loss']:.3f}) "
          f"in {report['seconds']:.0f} s")
    print(f"use it with: nuwa-ds train ... train.text_encoder_path={command.out}")
    return 0
