"""Builder of the tiny CLIP that ships with prism (``builtin:tiny-clip``).

Methods that route by input (HiDe-LLaVA, DisCo, ModalPrompt, SMoLoRA, CL-MoE)
need CLIP image and text embeddings. A real run uses a real CLIP; tests and the
embedded default use this one: a genuine ``CLIPModel`` (vision + text towers and
projections) at 48 px with a word-level tokenizer over the synthetic
benchmark's words, about 0.2 M parameters. A short contrastive pre-training on
captions of synthetic scenes (colours, shapes, counts, positions) makes its
embeddings mean something: images with the same colours are closer than images
with different ones, so per-task anchors and prototypes separate.

``python -m prism.backbones.tiny_clip build --out DIR [--steps N] [--seed S]``
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

from prism.backbones.tiny import save_asset
from prism.benchmarks import synthetic as syn

BUILDER_VERSION = 1
METADATA_FILE = "prism_tiny_clip.json"
#: CLIP's own special-token names. The end token must not get id 2: transformers'
#: CLIP text model then pools at the largest id instead of at the end token.
BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
IMAGE_SIZE = syn.IMAGE_SIZE  # 48: the synthetic images, unscaled
PATCH_SIZE = 8
MAX_TEXT_TOKENS = 64
PROJECTION_DIM = 32
ROW_WORDS: tuple[str, ...] = ("top", "bottom")
TEXT_VIEWS_BATCH = 32
TEXT_LOSS_WEIGHT = 0.5


# -- captions: what the contrastive pre-training pairs with each scene -----------------------
def caption(scene: syn.Scene) -> str:
    """Every fact of the scene: how many shapes, and each one's colour, shape and cell."""
    items = scene.left_to_right()
    count = syn.NUMBER_WORDS[len(items) - 1]
    parts = [f"{it.colour} {it.shape} {ROW_WORDS[it.row]} {syn.COLUMN_WORDS[it.col]}" for it in items]
    return f"{count} : " + " , ".join(parts)


def random_training_scene(rng: random.Random) -> syn.Scene:
    """A scene drawn like one of the benchmark's tasks, so every layout is seen."""
    if rng.random() < 0.3:
        return syn.random_scene(rng, rng.randint(1, syn.MAX_COUNT))
    return rng.choice(syn.TASKS).make_scene(rng)


def vocabulary() -> list[str]:
    """Special tokens, then every (lower-cased) word of captions and benchmark texts, sorted.

    Sorted, never set order: token ids are baked into the saved model.
    """
    sample = syn.Scene(items=(syn.Item("circle", "red", 0, 0, 10, 0, 0), syn.Item("cross", "blue", 1, 1, 10, 0, 0)),
                       background=255)
    texts = [caption(sample), *ROW_WORDS, *syn.NUMBER_WORDS, *syn.vocabulary_texts()]
    words = {word.lower() for text in texts for word in syn.words_of(text)}
    return list(SPECIAL_TOKENS) + sorted(words - set(SPECIAL_TOKENS))


def vocabulary_hash(vocab: list[str]) -> str:
    return hashlib.sha256("\n".join(vocab).encode("utf-8")).hexdigest()


# -- components ------------------------------------------------------------------------------
def build_tokenizer() -> Any:
    """A lower-casing word-level fast tokenizer: ``<|startoftext|> words <|endoftext|>``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary()
    core = Tokenizer(models.WordLevel(unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=0, show_progress=False)
    core.train_from_iterator(["\n".join(vocab[len(SPECIAL_TOKENS):])], trainer=trainer)
    got = [tok for tok, _ in sorted(core.get_vocab().items(), key=lambda kv: kv[1])]
    if got != vocab:  # ties are broken by byte order; prove it
        raise RuntimeError("the trained word-level vocabulary differs from the sorted tiny-CLIP vocabulary")
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab.index(BOS)), (EOS, vocab.index(EOS))])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        padding_side="right", clean_up_tokenization_spaces=False, model_max_length=MAX_TEXT_TOKENS)


def build_image_processor() -> Any:
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                 crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def build_config(tokenizer: Any) -> Any:
    from transformers import CLIPConfig

    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=MAX_TEXT_TOKENS,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
    vision = dict(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION_DIM)


def build_untrained(seed: int = 0) -> tuple[Any, Any, Any]:
    """(model, tokenizer, image processor) with random weights drawn from ``seed``."""
    import torch
    from transformers import CLIPModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = CLIPModel(build_config(tokenizer))
    return model, tokenizer, build_image_processor()


# -- contrastive pre-training ----------------------------------------------------------------
def instruction_texts(rng: random.Random, words: list[str], count: int) -> list[str]:
    """The benchmark's task instructions plus random word sequences: texts the captions never show."""
    texts = [task.question for task in syn.TASKS]
    while len(texts) < count:
        texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 16))))
    return texts[:count]


def _word_dropout(text: str, rng: random.Random, rate: float = 0.15) -> str:
    kept = [w for w in syn.words_of(text) if rng.random() >= rate]
    return " ".join(kept or syn.words_of(text)[:1])


def text_views_loss(model: Any, tokenizer: Any, rng: random.Random, words: list[str]) -> Any:
    """Contrastive loss between two word-dropout views of each text (SimCSE-style).

    Captions only train the words captions use; without this, instructions that share
    their unseen words ("Answer with one word.") embed almost alike and cannot route.
    """
    import torch

    texts = instruction_texts(rng, words, TEXT_VIEWS_BATCH)
    views = [[_word_dropout(t, rng) for t in texts] for _ in range(2)]
    encoded = [tokenizer(v, padding=True, return_tensors="pt") for v in views]
    a, b = (torch.nn.functional.normalize(model.get_text_features(**e).pooler_output, dim=-1) for e in encoded)
    logits = a @ b.T * model.logit_scale.exp()
    labels = torch.arange(len(texts))
    return (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2


def pretrain(model: Any, tokenizer: Any, image_processor: Any, *, steps: int = 600, batch_size: int = 64,
             lr: float = 2e-3, seed: int = 0,
             progress: Callable[[int, int, float], None] | None = None) -> list[float]:
    """CLIP's contrastive loss on freshly drawn (scene, caption) pairs, plus the text-views loss."""
    import torch

    from prism.benchmarks.images import pixel_values

    rng = random.Random(f"prism-tiny-clip:{seed}")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    words = vocabulary()[len(SPECIAL_TOKENS):]
    model.train()
    losses: list[float] = []
    for step in range(steps):
        scenes = [random_training_scene(rng) for _ in range(batch_size)]
        pixels = pixel_values([syn.render_scene(s) for s in scenes], image_processor)
        text = tokenizer([caption(s) for s in scenes], padding=True, return_tensors="pt")
        loss = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                     pixel_values=pixels, return_loss=True).loss
        loss = loss + TEXT_LOSS_WEIGHT * text_views_loss(model, tokenizer, rng, words)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, steps, losses[-1])
    model.eval()
    return losses


def build(out_dir: Path | str, steps: int = 600, seed: int = 0, *, batch_size: int = 64, lr: float = 2e-3,
          progress: Callable[[int, int, float], None] | None = None) -> Path:
    """Build, pre-train and save a CLIP folder at ``out_dir`` (atomically, like the tiny LLaVA)."""
    import transformers

    out = Path(out_dir)
    started = time.perf_counter()
    model, tokenizer, image_processor = build_untrained(seed)
    losses = pretrain(model, tokenizer, image_processor, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                      progress=progress)
    vocab = vocabulary()
    tail = losses[-20:]
    meta = {
        "builder": "prism.backbones.tiny_clip",
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "vocabulary_size": len(vocab),
        "vocabulary_sha256": vocabulary_hash(vocab),
        "image_size": IMAGE_SIZE,
        "projection_dim": PROJECTION_DIM,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "transformers_version": transformers.__version__,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    return save_asset(out, [model, tokenizer, image_processor], METADATA_FILE, meta)


# -- command line --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prism.backbones.tiny_clip",
                                     description="Build prism's tiny pre-trained CLIP (routing features).")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="pre-train a tiny CLIP and save it as a transformers folder")
    cmd.add_argument("--out", required=True, type=Path, help="output folder (replaced if present)")
    cmd.add_argument("--steps", type=int, default=600)
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    every = max(1, args.steps // 20)

    def report(step: int, total: int, loss: float) -> None:
        if step % every == 0 or step == total:
            print(f"step {step}/{total}  loss {loss:.4f}  {time.perf_counter() - started:.0f}s",
                  file=sys.stderr, flush=True)

    out = build(args.out, steps=args.steps, seed=args.seed, batch_size=args.batch_size, progress=report)
    print(f"wrote {out} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
