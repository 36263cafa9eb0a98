"""Which tokens generation may never produce."""

from __future__ import annotations

from prism.backbones.tiny import build_tokenizer
from prism.inference.generate import suppressed_token_ids


def test_special_tokens_and_padding_rows_are_suppressed_but_eos_is_not():
    tokenizer = build_tokenizer()
    image = tokenizer.convert_tokens_to_ids("<image>")
    plain = suppressed_token_ids(tokenizer)
    assert image in plain and tokenizer.eos_token_id not in plain
    assert max(plain) < len(tokenizer)
    padded = suppressed_token_ids(tokenizer, len(tokenizer) + 5)
    assert set(padded) - set(plain) == set(range(len(tokenizer), len(tokenizer) + 5))
    word = tokenizer.convert_tokens_to_ids("red")
    assert word not in padded


def test_length_sorted_batches_put_the_longest_first_and_keep_ties_in_order():
    from prism.inference.generate import length_sorted_batches

    assert length_sorted_batches([3, 9, 3, 5, 9], 2) == [[1, 4], [3, 0], [2]]
    assert length_sorted_batches([], 4) == []


def test_predictions_are_batched_by_length_and_returned_in_record_order(synthetic_data, tmp_path):
    """Sorted, worker-encoded batches give the answers of one-by-one generation, in the records' order."""
    import json
    from types import SimpleNamespace

    from prism.backbones.llava import LlavaBackbone
    from prism.benchmarks.data import load_test_records
    from prism.benchmarks.synthetic import TASKS
    from prism.inference.generate import predict_task

    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    spec = TASKS[0].spec
    records = load_test_records(synthetic_data, spec, max_samples=5)
    records += [{"question_id": "t1", "text": "Repeat the words: red", "answer": "red"},
                {"question_id": "t2", "text": "Repeat the words: red blue green red blue", "answer": "x"}]
    seen: list[list] = []
    method = SimpleNamespace(before_forward=lambda batch, training: seen.append([r["question_id"] for r in batch.records]))

    def run(name: str, batch_size: int, workers: int) -> list[dict]:
        return predict_task(backbone=backbone, method=method, spec=spec, root=synthetic_data, records=records,
                            out_path=tmp_path / f"{name}.jsonl", model_id="m", batch_size=batch_size,
                            max_new_tokens=4, num_workers=workers)

    batched = run("batched", 3, 2)
    assert [p["question_id"] for p in batched] == [r["question_id"] for r in records]
    # longest first: the image prompts (36 image tokens each) in their order, then the longer text one
    assert seen == [[0, 1, 2], [3, 4, "t2"], ["t1"]]
    single = run("single", 1, 0)
    assert [p["text"] for p in batched] == [p["text"] for p in single]
    written = [json.loads(line) for line in (tmp_path / "batched.jsonl").read_text().splitlines()]
    assert {str(p["question_id"]) for p in written if "question_id" in p} == {str(r["question_id"]) for r in records}


def test_ranks_deal_out_the_batches_and_their_merged_shards_equal_one_process(synthetic_data, tmp_path):
    """Two ranks (run one after the other here) generate alternate length-sorted batches into their own
    shard files; merged, they are the single process's predictions, each line naming its rank."""
    from types import SimpleNamespace

    from prism.backbones.llava import LlavaBackbone
    from prism.benchmarks.data import load_test_records
    from prism.benchmarks.synthetic import TASKS
    from prism.inference import predictions as pred_files
    from prism.inference.generate import predict_task

    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    spec = TASKS[1].spec
    records = load_test_records(synthetic_data, spec, max_samples=7)
    seen: dict[int, list] = {0: [], 1: []}
    rank_now = [0]
    method = SimpleNamespace(before_forward=lambda batch, training: seen[rank_now[0]].append(
        [r["question_id"] for r in batch.records]))

    def run(path, rank=0, world_size=1):
        rank_now[0] = rank
        return predict_task(backbone=backbone, method=method, spec=spec, root=synthetic_data, records=records,
                            out_path=path, model_id="m", batch_size=2, max_new_tokens=4,
                            rank=rank, world_size=world_size)

    single = run(tmp_path / "single" / "t.jsonl")
    one_rank = list(seen[0])
    seen[0].clear()
    sharded = tmp_path / "sharded" / "t.jsonl"
    mine = {rank: run(sharded, rank, 2) for rank in (0, 1)}
    assert seen[0] == one_rank[0::2] and seen[1] == one_rank[1::2]
    assert not sharded.exists()  # ranks write shards only; rank 0 merges
    assert {p["metadata"]["rank"] for p in mine[1]} == {1}
    assert pred_files.merge_shards(sharded, "m") == len(records)
    assert not (sharded.parent / pred_files.SHARDS).exists()
    merged = {str(p["question_id"]): p for p in pred_files.read_done(sharded, "m")}
    assert sorted(merged) == sorted(str(p["question_id"]) for p in single)
    assert all(merged[str(p["question_id"])]["text"] == p["text"] for p in single)
    assert {p["metadata"]["rank"] for p in merged.values()} == {0, 1}
    assert {p["metadata"]["rank"] for p in single} == {0}
