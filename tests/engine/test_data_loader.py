"""The streamed data path: records encoded on read by DataLoader workers, in DataStream's order,
length-grouped; worker errors surface as the one-line DataError; resume replays nothing."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from prism.benchmarks.base import TaskSpec
from prism.benchmarks.data import TaskDataset, encode_train, load_train_records, token_lengths
from prism.engine.data_loader import MicroBatchLoader, default_num_workers, load_batches
from prism.engine.data_stream import DataStream
from prism.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def backbone():
    from prism.backbones.llava import LlavaBackbone

    return LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))


@pytest.fixture(scope="module")
def colour(synthetic_data):
    from prism.benchmarks.synthetic import TASKS

    spec = TASKS[0].spec
    return spec, load_train_records(synthetic_data, spec, max_samples=40)


def _same(a, b) -> None:
    assert a.records == b.records and a.input_ids.equal(b.input_ids) and a.labels.equal(b.labels)
    assert a.attention_mask.equal(b.attention_mask) and a.pixel_values.equal(b.pixel_values)


# -- the dataset --------------------------------------------------------------------------
def test_dataset_holds_json_rows_and_reads_no_image_until_a_record_is_read(synthetic_data, backbone, colour,
                                                                          monkeypatch):
    import prism.benchmarks.data as data

    spec, records = colour
    opened = []
    original = data.load_image
    monkeypatch.setattr(data, "load_image", lambda path, **kw: opened.append(path) or original(path, **kw))
    dataset = TaskDataset(records, backbone=backbone, root=synthetic_data, specs=spec)
    assert opened == [] and len(dataset) == 40
    assert not hasattr(dataset, "samples")  # nothing encoded is kept
    assert dataset.record(7) == records[7] and dataset.record(7) is not records[7]
    sample = dataset[7]
    assert len(opened) == 1 and sample.record == records[7] and sample.pixel_values.shape[0] == 3
    with pytest.raises(IndexError):
        dataset[40]


def test_token_lengths_are_the_encoded_lengths_without_opening_images(synthetic_data, backbone, colour):
    spec, records = colour
    text_only = {"id": "t", "conversations": [{"from": "human", "value": "Repeat the words: red blue"},
                                              {"from": "gpt", "value": "red blue"}]}
    mixed = records[:5] + [text_only]
    lengths = token_lengths(mixed, backbone)
    assert lengths == [len(encode_train(r, backbone, synthetic_data, spec).input_ids) for r in mixed]
    dataset = TaskDataset(mixed, backbone=backbone, root=synthetic_data, specs=spec)
    assert dataset.modality_lengths() == lengths[:5] + [-lengths[5]]


# -- the loader ---------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_workers_serve_exactly_the_batches_of_the_stream(synthetic_data, backbone, colour, workers):
    spec, records = colour
    dataset = TaskDataset(records, backbone=backbone, root=synthetic_data, specs=spec)
    direct = DataStream(dataset, 4, seed=5, lengths=dataset.modality_lengths())
    expected = [direct.next() for _ in range(14)]  # into the second epoch (10 micro-batches each)
    stream = DataStream(dataset, 4, seed=5, lengths=dataset.modality_lengths())
    with MicroBatchLoader(stream, num_workers=workers, seed=5) as loader:
        for want in expected:
            _same(loader.next(), want)
    assert (stream.epoch, stream.offset) == (direct.epoch, direct.offset)


class _Counting:
    """A dataset wrapper that counts reads (in this process: num_workers=0)."""

    def __init__(self, dataset):
        self.dataset, self.reads = dataset, []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.reads.append(i)
        return self.dataset[i]

    def collator(self, side=None):
        return self.dataset.collator(side)


def test_a_restored_loader_continues_without_replaying_earlier_batches(synthetic_data, backbone, colour):
    spec, records = colour
    dataset = TaskDataset(records, backbone=backbone, root=synthetic_data, specs=spec)
    lengths = dataset.modality_lengths()
    stream = DataStream(dataset, 4, seed=2, lengths=lengths)
    with MicroBatchLoader(stream, num_workers=2, seed=2) as loader:
        for _ in range(7):
            loader.next()
        state = stream.state()  # what a step checkpoint saves: the consumed position
        expected = [loader.next() for _ in range(5)]
    counting = _Counting(dataset)
    again = DataStream(counting, 4, seed=2, lengths=lengths)
    again.restore(*state)
    with MicroBatchLoader(again, num_workers=0, seed=2) as loader:
        for want in expected:
            _same(loader.next(), want)
    served = [i for b in expected for i in (records.index(r) for r in b.records)]
    assert counting.reads == served  # the 7 earlier micro-batches were never read again


def test_the_loader_never_draws_from_the_global_rng(synthetic_data, backbone, colour):
    """Dropout and the step checkpoint's RNG state must not depend on the number of workers."""
    spec, records = colour
    dataset = TaskDataset(records, backbone=backbone, root=synthetic_data, specs=spec)
    torch.manual_seed(11)
    before = torch.get_rng_state()
    for workers in (0, 2):
        with MicroBatchLoader(DataStream(dataset, 4, seed=1), num_workers=workers, seed=1) as loader:
            loader.next()
    assert torch.get_rng_state().equal(before)


def _broken_task(tmp_path: Path) -> tuple[Path, TaskSpec, list[dict]]:
    spec = TaskSpec("demo", "demo/train.json", "demo/test.json", "exact_match", image_root="demo")
    (tmp_path / "demo" / "images").mkdir(parents=True)
    Image.new("RGB", (48, 48), (200, 30, 30)).save(tmp_path / "demo" / "images" / "a.png")
    (tmp_path / "demo" / "images" / "bad.png").write_bytes(b"not a png at all")

    def record(i, image):
        return {"id": f"r{i}", "image": image, "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": "red"}]}

    records = [record(i, "images/a.png") for i in range(6)] + [record(6, "images/gone.png"),
                                                               record(7, "images/bad.png")]
    (tmp_path / spec.train_file).write_text(json.dumps(records))
    return tmp_path, spec, records


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_image_read_by_a_worker_is_the_one_line_data_error(tmp_path, backbone, workers):
    root, spec, records = _broken_task(tmp_path)
    dataset = TaskDataset(records, backbone=backbone, root=root, specs=spec)
    for index, words in ((6, ("image not found", "gone.png")), (7, ("cannot decode image", "bad.png"))):
        with pytest.raises(DataError) as err:
            list(load_batches(dataset, [[0, 1], [index, 2]], num_workers=workers))
        message = str(err.value)
        assert all(w in message for w in words) and f"id 'r{index}'" in message
        assert str(root / spec.train_file) in message  # the annotation file of the record
        assert "Traceback" not in message and "worker" not in message
        assert message.count("\n") == 1 and "hint:" in message  # message + hint, as the CLI prints it


def test_default_worker_count_follows_the_cpus(monkeypatch):
    import prism.engine.data_loader as loader

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(loader, "available_cpus", lambda: 64)
    assert default_num_workers(1) == 8 and default_num_workers(8) == 7
    monkeypatch.setattr(loader, "available_cpus", lambda: 2)
    assert default_num_workers(1) == 1 and default_num_workers(2) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_num_workers(1) == 0
    monkeypatch.setattr(loader, "available_cpus", lambda: 64)
    assert default_num_workers(1, cuda=False) == 0  # on the CPU the model's threads use the cores


# -- length-grouped order -----------------------------------------------------------------
class _Lengths:
    """A dataset of ``n`` records whose lengths are given (signed: negative = no image)."""

    def __init__(self, lengths):
        self.lengths = list(lengths)

    def __len__(self):
        return len(self.lengths)

    def batch(self, indices):
        return list(indices)


def _mixed(n: int = 200, seed: int = 0) -> list[int]:
    """UCIT-like: most records have an image (576 tokens + text), a fifth are text-only."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(20, 300, (n,), generator=g).tolist()
    image = (torch.rand(n, generator=g) > 0.2).tolist()
    return [576 + t if has else -t for t, has in zip(text, image)]


def _padding(lengths, chunks) -> float:
    real = sum(abs(lengths[i]) for c in chunks for i in c)
    padded = sum(len(c) * max(abs(lengths[i]) for i in c) for c in chunks)
    return 1 - real / padded


def test_grouped_micro_batches_hold_one_modality_of_similar_length():
    lengths = _mixed()
    data = _Lengths(lengths)
    images = sum(n > 0 for n in lengths)
    groups = images // 16 + (len(lengths) - images) // 16  # full groups of one global batch (16)
    leftover = images % 16 + (len(lengths) - images) % 16
    grouped = DataStream(data, 4, seed=0, accumulation=4, lengths=lengths)
    chunks = [grouped.next() for _ in range(groups * 4 + leftover // 4)]  # one epoch
    served = [i for c in chunks for i in c]
    assert len(served) == len(set(served)) == len(lengths) - leftover % 4
    assert all(len({lengths[i] > 0 for i in c}) == 1 for c in chunks[:groups * 4])
    plain = DataStream(data, 4, seed=0)
    plain_chunks = [plain.next() for _ in range(len(chunks))]
    assert _padding(lengths, chunks) < 0.06 < 0.15 < _padding(lengths, plain_chunks)  # measured: 0.034, 0.22


def test_grouping_keeps_each_steps_records_whatever_the_number_of_processes():
    g = torch.Generator().manual_seed(4)
    lengths = [576 + n for n in torch.randint(1, 200, (128,), generator=g).tolist()] + \
        [-n for n in torch.randint(1, 200, (32,), generator=g).tolist()]  # whole groups of 8: none left over
    data = _Lengths(lengths)

    def steps(world: int, accumulation: int) -> list[set[int]]:
        ranks = [DataStream(data, 2, seed=3, rank=r, world=world, accumulation=accumulation, lengths=lengths)
                 for r in range(world)]
        return [{i for r in ranks for _ in range(accumulation) for i in r.next()} for _ in range(25)]

    one = steps(1, 4)
    assert one == steps(2, 2) == steps(4, 1)
    assert all(len(s) == 8 for s in one)
    # and served_indices (what replay methods store) follows the same order
    stream = DataStream(data, 2, seed=3, world=2, accumulation=2, lengths=lengths)
    served = stream.served_indices(100)
    assert [set(served[k * 8:(k + 1) * 8]) for k in range(25)] == one


def test_ranks_get_long_and_short_micro_batches_in_turn():
    lengths = list(range(100, 116))  # 16 records with images, distinct lengths
    data = _Lengths(lengths)
    ranks = [DataStream(data, 2, seed=0, rank=r, world=2, accumulation=4, lengths=lengths) for r in range(2)]
    served = [[ranks[r].next() for _ in range(4)] for r in range(2)]
    longest = [max(lengths[i] for c in served[r] for i in c) for r in range(2)]
    tokens = [sum(lengths[i] for c in served[r] for i in c) for r in range(2)]
    assert longest == [115, 113] and tokens[0] == tokens[1]  # dealt 0,1,1,0,0,1,1,0: balanced


def test_grouped_stream_resumes_exactly_and_refuses_an_ungrouped_checkpoint():
    lengths = _mixed(90)
    data = _Lengths(lengths)
    stream = DataStream(data, 4, seed=1, accumulation=2, lengths=lengths)
    for _ in range(30):  # into the second epoch
        stream.next()
    state = stream.state()
    expected = [stream.next() for _ in range(20)]
    again = DataStream(data, 4, seed=1, accumulation=2, lengths=lengths)
    again.restore(*state)
    assert [again.next() for _ in range(20)] == expected
    with pytest.raises(ConfigError, match="not length-grouped"):
        DataStream(data, 4, seed=1, accumulation=2, lengths=lengths).restore(*DataStream(data, 4, seed=1).state())


def test_a_task_smaller_than_a_micro_batch_is_one_sorted_batch():
    lengths = [5, -9, 7]
    stream = DataStream(_Lengths(lengths), 4, seed=0, accumulation=2, lengths=lengths)
    assert stream.next() == [1, 2, 0]
