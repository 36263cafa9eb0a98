"""Builder of the tiny LLaVA that ships with prism (``builtin:tiny-llava``).

The model is a real ``LlavaForConditionalGeneration`` (CLIP tower + Llama), only
tiny: 48 px images, 36 image tokens, a word-level vocabulary of the synthetic
benchmark, ~0.45 M parameters. It is pre-trained from scratch on captions of
synthetic scenes, "Repeat the words: ..." copy examples and text-only examples
of the answer formats (one word, a single number, an option letter), so that
it grounds colours, shapes, counts and positions and follows a format
instruction — like the instruction-tuned LLM of a real MCIT run — but has never
answered a question about a scene in a task's format: zero-shot it scores near
chance, fine-tuned it learns each task, and training task after task makes it
forget part of what it learned (sequential LoRA keeps about half, as on UCIT).
Builder version 1 had no format examples: each task then had to teach its
format too, and the next task's format overwrote it (forgetting ~100 %).

``python -m prism.backbones.tiny build --out DIR [--steps N] [--seed S]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from prism.atomic import replace_folder, temporary_sibling
from prism.backbones.quiet import quiet_transformers
from prism.backbones.template import get_template
from prism.benchmarks import synthetic as syn

BUILDER_VERSION = 2
METADATA_FILE = "prism_tiny.json"
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
IMAGE_TOKEN = "<image>"
IMAGE_SIZE = syn.IMAGE_SIZE  # 48
PATCH_SIZE = 8
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # CLS dropped ("default" strategy)

# -- base (pre-training) data: captions in formats the continual tasks do not use ----------
DESCRIBE = "Describe the image."
#: Paraphrases teach the base that an unfamiliar question about an image gets a
#: caption, which keeps zero-shot task scores near chance.
DESCRIBE_PROMPTS: tuple[str, ...] = (DESCRIBE, "What do you see?", "Tell me about this picture.",
                                     "Give a description of the scene.")
HOW_MANY = "How many shapes do you see?"
ON_SIDE = "What is on the {side}?"
REPEAT = "Repeat the words: {words}"
COPY_FRACTION = 0.15
#: Text-only examples that teach the answer formats the continual tasks ask for (one word, a
#: single number, an option letter) on words rather than images: the base follows a format
#: instruction, as an instruction-tuned LLM does, but has never tied a format to a scene.
#: The prompts reuse the benchmark's own wording, so the vocabulary is unchanged.
FORMAT_FRACTION = 0.25
ONE_WORD = syn.TASKS[0].question.split("\n")[1]
ONE_NUMBER = syn.TASKS[2].question.split("\n")[1]
LETTER = syn.MC_QUESTION.split("\n")[-1]


def _describe_single(item: syn.Item) -> str:
    return f"a {item.colour} {item.shape} on the {syn.COLUMN_WORDS[item.col]}"


def _how_many(n: int) -> str:
    return "there is one shape" if n == 1 else f"there are {syn.NUMBER_WORDS[n - 1]} shapes"


def base_texts() -> list[str]:
    """Every prompt and answer word the base data uses (for the vocabulary)."""
    item = syn.Item("circle", "red", 0, 0, 10, 0, 0)
    texts = [*DESCRIBE_PROMPTS, HOW_MANY, ON_SIDE.format(side="left"), ON_SIDE.format(side="right"),
             REPEAT.format(words=""), _describe_single(item), _how_many(1), _how_many(2), "a"]
    template = get_template("tiny")
    texts.append(template.user_role + ": " + template.assistant_role + ":")
    return texts


def vocabulary() -> list[str]:
    """Special tokens, then every word of the base data, template and benchmark, sorted.

    The order is sorted, never set iteration order, because token ids are baked
    into a saved base: a different order would scramble them.
    """
    words: set[str] = set()
    for text in base_texts() + syn.vocabulary_texts():
        words.update(syn.words_of(text))
    return list(SPECIAL_TOKENS) + sorted(words - set(SPECIAL_TOKENS))


def vocabulary_hash(vocab: list[str]) -> str:
    return hashlib.sha256("\n".join(vocab).encode("utf-8")).hexdigest()


def copy_words() -> list[str]:
    """Words the copy examples draw from: every vocabulary word except specials and punctuation."""
    return [w for w in vocabulary()[len(SPECIAL_TOKENS):] if w.isalnum()]


def format_example(rng: random.Random, words: list[str]) -> tuple[None, str, str]:
    """A text-only example: words to repeat, answered in the format the suffix asks for."""
    picked = [rng.choice(words) for _ in range(rng.randint(1, syn.MAX_COUNT))]
    kind = rng.randrange(3)
    if kind == 0:
        return None, REPEAT.format(words=" ".join(picked)) + "\n" + ONE_WORD, picked[0]
    if kind == 1:
        return None, REPEAT.format(words=" ".join(picked)) + "\n" + ONE_NUMBER, str(len(picked))
    options = rng.sample(words, len(syn.OPTION_LETTERS))
    answer = rng.randrange(len(options))
    listed = "\n".join(f"{letter}. {word}" for letter, word in zip(syn.OPTION_LETTERS, options))
    return None, REPEAT.format(words=options[answer]) + "\n" + listed + "\n" + LETTER, syn.OPTION_LETTERS[answer]


def base_example(rng: random.Random, words: list[str]) -> tuple[syn.Scene | None, str, str]:
    """One pre-training example: (scene or None, question, answer)."""
    if rng.random() < FORMAT_FRACTION:
        return format_example(rng, words)
    if rng.random() < COPY_FRACTION:
        picked = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        return None, REPEAT.format(words=picked), picked
    kind = rng.random()
    if kind < 0.4:
        scene = syn.random_scene(rng, 1)
        return scene, rng.choice(DESCRIBE_PROMPTS), _describe_single(scene.items[0])
    if kind < 0.6:
        n = rng.randint(2, syn.MAX_COUNT)
        return syn.random_scene(rng, n), rng.choice(DESCRIBE_PROMPTS), _how_many(n)
    if kind < 0.75:
        n = rng.randint(1, syn.MAX_COUNT)
        return syn.random_scene(rng, n), HOW_MANY, _how_many(n)
    columns = tuple(sorted(rng.sample(range(syn.GRID), 2)))
    scene = syn.random_scene(rng, 2, columns=columns)
    left, right = scene.left_to_right()
    side, item = rng.choice((("left", left), ("right", right)))
    return scene, ON_SIDE.format(side=side), f"a {item.colour} {item.shape}"


# -- components ------------------------------------------------------------------------------
def build_tokenizer(padding_side: str = "left") -> Any:
    """A word-level fast tokenizer trained on the vocabulary text (one word a line)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary()
    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=0, show_progress=False)
    core.train_from_iterator(["\n".join(vocab[len(SPECIAL_TOKENS):])], trainer=trainer)
    got = sorted(core.get_vocab().items(), key=lambda kv: kv[1])
    if [tok for tok, _ in got] != vocab:  # ties are broken by byte order; prove it
        raise RuntimeError("the trained word-level vocabulary differs from prism's sorted vocabulary")
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab.index("<s>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN}, padding_side=padding_side,
        clean_up_tokenization_spaces=False, model_max_length=256)


def build_image_processor() -> Any:
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                 crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def build_processor(tokenizer: Any, image_processor: Any) -> Any:
    from transformers import LlavaProcessor

    # CLIP adds a CLS token that the "default" strategy drops: +1 then -1.
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          image_token=IMAGE_TOKEN)


def build_config(tokenizer: Any) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=64,
                              intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              projection_dim=64)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    # A 2-layer tower: the last layer's features (-1), not LLaVA's usual -2.
    return LlavaConfig(vision_config=vision, text_config=text,
                       image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                       image_seq_length=NUM_IMAGE_TOKENS, vision_feature_select_strategy="default",
                       vision_feature_layer=-1, projector_hidden_act="gelu")


def build_untrained(seed: int = 0) -> tuple[Any, Any, Any]:
    """(model, tokenizer, processor) with random weights drawn from ``seed``."""
    import torch
    from transformers import LlavaForConditionalGeneration

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, build_image_processor())
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(build_config(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, tokenizer, processor


def loaded(model: Any, tokenizer: Any, processor: Any, path: str = "(in memory)") -> Any:
    """A LoadedBackbone around in-memory parts, so training uses prism's real encoder."""
    from prism.backbones.base import LoadedBackbone

    return LoadedBackbone(backbone_id="llava", model_path=path, resolved_path=path, model=model,
                          tokenizer=tokenizer, image_processor=processor.image_processor,
                          template=get_template("tiny"), num_image_tokens=NUM_IMAGE_TOKENS,
                          image_token=IMAGE_TOKEN)


# -- pre-training ------------------------------------------------------------------------------
def base_batch(rng: random.Random, backbone: Any, batch_size: int, words: list[str]) -> Any:
    """A fresh batch of base examples (images drawn and encoded on the fly: no overfitting)."""
    from prism.benchmarks.batch import EncodedSample, collate
    from prism.benchmarks.data import encode_text
    from prism.benchmarks.images import pixel_values

    examples = [base_example(rng, words) for _ in range(batch_size)]
    images = [syn.render_scene(scene) for scene, _, _ in examples if scene is not None]
    pixels = iter(pixel_values(images, backbone.image_processor)) if images else iter(())
    samples = []
    for scene, question, answer in examples:
        text = f"{IMAGE_TOKEN}\n{question}" if scene is not None else question
        ids, labels = encode_text([("human", text), ("gpt", answer)], backbone,
                                  num_images=int(scene is not None), add_generation_prompt=False)
        samples.append(EncodedSample(ids, labels, next(pixels) if scene is not None else None,
                                     {"question": question, "answer": answer}, question))
    return collate(samples, backbone.tokenizer.pad_token_id, "right")


def pretrain(model: Any, tokenizer: Any, processor: Any, *, steps: int = 3000, batch_size: int = 32,
             lr: float = 2e-3, warmup: int = 100, seed: int = 0,
             progress: Callable[[int, int, float], None] | None = None) -> list[float]:
    """Train the whole model on base data with AdamW and cosine decay; return the step losses."""
    import torch

    backbone = loaded(model, tokenizer, processor)
    words = copy_words()
    rng = random.Random(f"prism-tiny-pretrain:{seed}")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(warmup, max(1, steps // 10))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    losses: list[float] = []
    for step in range(steps):
        batch = base_batch(rng, backbone, batch_size, words)
        loss = model(**batch.model_inputs()).loss
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


def build_base(out_dir: Path | str, steps: int = 3000, seed: int = 0, *, batch_size: int = 32,
               lr: float = 2e-3, progress: Callable[[int, int, float], None] | None = None) -> Path:
    """Build, pre-train and save a complete llava-hf folder at ``out_dir`` (atomically).

    Writes into a temporary sibling folder and renames it into place, so an
    interrupted build never leaves a half-written model behind.
    """
    import transformers

    out = Path(out_dir)
    started = time.perf_counter()
    model, tokenizer, processor = build_untrained(seed)
    losses = pretrain(model, tokenizer, processor, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                      progress=progress)
    vocab = vocabulary()
    meta = {
        "builder": "prism.backbones.tiny",
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4) if losses else None,
        "vocabulary_size": len(vocab),
        "vocabulary_sha256": vocabulary_hash(vocab),
        "template": "tiny",
        "image_size": IMAGE_SIZE,
        "num_image_tokens": NUM_IMAGE_TOKENS,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "transformers_version": transformers.__version__,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    return save_asset(out, [model, processor], METADATA_FILE, meta)


def save_asset(out: Path, parts: list[Any], metadata_file: str, meta: dict[str, Any]) -> Path:
    """Write a built tiny model (``save_pretrained`` of each part plus its metadata) atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with quiet_transformers():
            for part in parts:
                part.save_pretrained(tmp)
        (tmp / metadata_file).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for file in tmp.iterdir():  # save_pretrained may create 0600 files; a shipped asset must be readable
            file.chmod(0o644)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_metadata(folder: Path | str) -> dict[str, Any] | None:
    """``prism_tiny.json`` of a folder, or None when it is not a prism tiny model."""
    try:
        return json.loads((Path(folder) / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- command line --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prism.backbones.tiny",
                                     description="Build prism's tiny pre-trained LLaVA.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="pre-train a tiny LLaVA and save it as a llava-hf folder")
    build.add_argument("--out", required=True, type=Path, help="output folder (replaced if present)")
    build.add_argument("--steps", type=int, default=3000)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    every = max(1, args.steps // 20)

    def report(step: int, total: int, loss: float) -> None:
        if step % every == 0 or step == total:
            elapsed = time.perf_counter() - started
            print(f"step {step}/{total}  loss {loss:.4f}  {elapsed:.0f}s", file=sys.stderr, flush=True)

    out = build_base(args.out, steps=args.steps, seed=args.seed, batch_size=args.batch_size, progress=report)
    print(f"wrote {out} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
