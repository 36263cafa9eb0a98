"""Greedy (or beam) generation over a task's test records.

Prompts are encoded by DataLoader workers (``num_workers``) as batches are needed,
and batched by prompt length (longest first), so a batch pads little; the
predictions come back in the records' order.

Under several processes (``rank`` of ``world_size``) the batches are dealt out in
turn, rank r taking batches r, r + N, ...: every rank generates the same batches a
single process would (so the same answers) and, longest first, about the same amount
of work. A rank writes its lines to its own shard file (``predictions.shard_path``);
rank 0 merges them (``predictions.merge_shards``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from prism.benchmarks.base import TaskSpec
from prism.inference import predictions as pred_files
from prism.methods.base import Method


def suppressed_token_ids(tokenizer: Any, vocab_rows: int | None = None) -> list[int]:
    """Tokens a model must never emit: special tokens (an emitted <image> breaks LLaVA's
    forward) and the padding rows an embedding matrix has beyond the tokenizer's vocabulary
    (llava-hf pads 32002 tokens to 32064 rows; those ids decode to nothing)."""
    keep = {tokenizer.eos_token_id}
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    if isinstance(image_id, int) and image_id != tokenizer.unk_token_id:
        ids.add(image_id)
    if vocab_rows is not None:
        ids.update(range(len(tokenizer), vocab_rows))
    return sorted(i for i in ids if i is not None and i not in keep)


@torch.no_grad()
def predict_task(*, backbone: Any, method: Method, spec: TaskSpec, root: Path, records: list[dict],
                 out_path: Path, model_id: str, batch_size: int, max_new_tokens: int,
                 num_beams: int = 1, temperature: float = 0.0,
                 on_batch: Callable[[int, int], None] | None = None, num_workers: int | None = 0,
                 verify_images: str = "size", task_oracle: bool = False,
                 rank: int = 0, world_size: int = 1) -> list[dict[str, Any]]:
    """Generate answers for ``records`` not yet in ``out_path``; return every prediction
    (with ``world_size`` > 1: those already in ``out_path`` and this rank's share).

    ``num_workers`` None: the default for this machine (``[train] num_workers`` unset).
    ``task_oracle``: the method is told the samples' task (``ForwardContext.oracle_task``).
    """
    from prism.benchmarks.data import TaskDataset
    from prism.engine.data_loader import load_batches, resolve_num_workers
    from prism.engine.forward_plan import model_inputs, plan_forward
    from prism.methods.forward import ForwardContext

    sharded = world_size > 1
    # with several ranks the prediction file belongs to rank 0, which cleaned it before the ranks began
    done = pred_files.read_done(out_path, model_id, clean=not sharded)
    write_to = pred_files.shard_path(out_path, rank) if sharded else out_path
    done_ids = {str(r["question_id"]) for r in done}
    todo = [r for r in records if str(r["question_id"]) not in done_ids]
    model = backbone.model
    tokenizer = backbone.tokenizer
    device = next(model.parameters()).device
    model.eval()
    suppress = suppressed_token_ids(tokenizer, model.get_output_embeddings().weight.shape[0])
    generation = dict(max_new_tokens=max_new_tokens, num_beams=num_beams,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      suppress_tokens=suppress or None)
    if temperature > 0:
        generation.update(do_sample=True, temperature=temperature)
    else:
        generation.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    finished = already = len(done)
    context = ForwardContext("eval", num_beams=num_beams, oracle_task=spec.name if task_oracle else None)
    if todo:
        prompts = TaskDataset(todo, backbone=backbone, root=root, specs=spec, prompts=True,
                              verify_images=verify_images)
        cuda = torch.device(device).type == "cuda"
        share = length_sorted_batches(prompts.lengths, batch_size)[rank::world_size]
        mine = sum(len(indices) for indices in share)
        batches = load_batches(prompts, share,
                               num_workers=resolve_num_workers(num_workers, cuda=cuda), pin_memory=cuda)
        try:
            for _, batch in batches:
                batch = batch.to(device)
                plan = plan_forward(method, batch, context)
                inputs = model_inputs(batch, plan)
                out = model.generate(**inputs, **generation)
                # with input_ids the output repeats the prompt; from inputs_embeds it is the new tokens only
                new_tokens = out[:, inputs["input_ids"].shape[1]:] if "input_ids" in inputs else out
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                routing = plan.routing_rows() if plan is not None else None
                details = plan.sample_details(len(batch)) if plan is not None else None
                lines = [_prediction(record, text, spec, model_id, None if routing is None else routing[i],
                                     None if details is None else details[i], rank=rank)
                         for i, (record, text) in enumerate(zip(batch.records, texts))]
                # flushed per batch (a kill loses nothing), synced to disk once per task: a per-batch
                # fsync is a tiny model's largest fixed cost (docs/performance.md)
                pred_files.append(write_to, lines, durable=False)
                done.extend(lines)
                finished += len(lines)
                if on_batch is not None:  # the other ranks go at about this rank's pace
                    on_batch(min(len(records), already + round((finished - already) * len(todo) / mine)),
                             len(records))
        finally:
            batches.close()
            pred_files.sync(write_to)
    order = {str(r["question_id"]): i for i, r in enumerate(records)}
    return sorted(done, key=lambda r: order.get(str(r["question_id"]), len(order)))


def length_sorted_batches(lengths: Any, batch_size: int) -> list[list[int]]:
    """Index batches of ``batch_size`` over records sorted by length, longest first (ties in order)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _prediction(record: dict, text: str, spec: TaskSpec, model_id: str,
                routing: dict[str, float] | None = None, details: dict[str, Any] | None = None,
                rank: int = 0) -> dict[str, Any]:
    """One prediction line; ``routing`` (task slot -> weight) for methods that route per sample, ``details``
    (the plan's ``describe_samples``) for what else a method records about the sample's forward;
    ``rank``: the process that generated it."""
    metadata: dict[str, Any] = {"task": spec.name, "image": record.get("image"), "rank": rank}
    if routing is not None:
        metadata["routing"] = routing
    if details:
        metadata.update(details)
    return {
        "question_id": record["question_id"],
        "prompt": record.get("text", ""),
        "text": text.strip(),
        "answer": record.get("answer"),
        "model_id": model_id,
        "metadata": metadata,
    }
