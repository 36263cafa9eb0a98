"""The data pipeline alone at 336 px: samples/s with 0, 2 and 4 DataLoader workers, peak RSS
against the number of records, and the padding that length grouping saves.

The task is UCIT-shaped (tests/engine/scale_data.py): 500x375 textured JPEGs resized to 336 px
(InternVL-Chat 1.0's geometry: 576 image tokens, 1.35 MB of fp32 pixels a record), questions of
3-40 and answers of 1-24 words, a tenth of the records text-only. What is timed is what the step
loop waits for: records read, images decoded and preprocessed, text tokenised, micro-batches
collated (``MicroBatchLoader`` over a length-grouped ``DataStream``), no model.

    python bench/data_pipeline.py                     # everything, printed as ratios
    python bench/data_pipeline.py --batches 64 --records 1000 4000 16000

Compare the ratios of one run (the machine's other load moves absolute figures).
"""

from __future__ import annotations

import argparse
import warnings
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MICRO = 4
GLOBAL = 16

_RSS_CHILD = r'''
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from tests.engine import scale_data
from prism.benchmarks.data import TaskDataset, load_train_records
from prism.engine.data_loader import MicroBatchLoader
from prism.engine.data_stream import DataStream
root, batches = sys.argv[2], int(sys.argv[3])
started = time.perf_counter()
spec = scale_data.task_spec()
dataset = TaskDataset(load_train_records(root, spec), backbone=scale_data.encoder(), root=root, specs=spec)
ready = time.perf_counter() - started
stream = DataStream(dataset, 4, seed=0, accumulation=4, lengths=dataset.modality_lengths())
with MicroBatchLoader(stream, num_workers=2, seed=0) as loader:
    for _ in range(batches):
        loader.next()
me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"main_kib": me, "worker_kib": workers, "ready_s": ready}))
'''


def throughput(root: Path, workers: int, batches: int) -> float:
    """Samples/s of micro-batches served by the loader (after the first, which starts the workers)."""
    from prism.benchmarks.data import TaskDataset, load_train_records
    from prism.engine.data_loader import MicroBatchLoader
    from prism.engine.data_stream import DataStream
    from tests.engine import scale_data

    spec = scale_data.task_spec()
    dataset = TaskDataset(load_train_records(root, spec), backbone=scale_data.encoder(), root=root, specs=spec)
    stream = DataStream(dataset, MICRO, seed=0, accumulation=GLOBAL // MICRO, lengths=dataset.modality_lengths())
    with MicroBatchLoader(stream, num_workers=workers, seed=0) as loader:
        loader.next()
        started = time.perf_counter()
        samples = sum(len(loader.next()) for _ in range(batches))
        return samples / (time.perf_counter() - started)


def peak_rss(root: Path, batches: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(REPO), str(root), str(batches)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def padding(root: Path, micro: int, global_batch: int) -> tuple[float, float, float, float]:
    """Padding fraction of training micro-batches (random, grouped) and generation batches (in order, sorted)."""
    from prism.benchmarks.data import load_test_records, load_train_records, token_lengths
    from prism.engine.data_stream import DataStream
    from prism.inference.generate import length_sorted_batches
    from tests.engine import scale_data

    spec = scale_data.task_spec()
    encoder = scale_data.encoder()
    records = load_train_records(root, spec)
    lengths = token_lengths(records, encoder)
    signed = [n if r.get("image") else -n for n, r in zip(lengths, records)]

    class Sized:
        def __len__(self):
            return len(records)

    def fraction(chunks, of) -> float:
        real = sum(of[i] for c in chunks for i in c)
        padded = sum(len(c) * max(of[i] for i in c) for c in chunks)
        return 1 - real / padded

    count = len(records) // micro
    plain = DataStream(Sized(), micro, seed=0)
    grouped = DataStream(Sized(), micro, seed=0, accumulation=global_batch // micro, lengths=signed)
    train = (fraction([plain.next_indices() for _ in range(count)], lengths),
             fraction([grouped.next_indices() for _ in range(count)], lengths))
    tests = load_test_records(root, spec)
    prompt = token_lengths(tests, encoder, prompts=True)
    in_order = [list(range(i, min(i + global_batch, len(tests)))) for i in range(0, len(tests), global_batch)]
    return (*train, fraction(in_order, prompt), fraction(length_sorted_batches(prompt, global_batch), prompt))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=48, help="micro-batches of 4 timed per worker count")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--records", type=int, nargs="+", default=[1000, 4000, 16000],
                        help="task sizes for the peak-RSS curve")
    args = parser.parse_args()

    from prism.engine.session import quiet_libraries
    from tests.engine import scale_data

    quiet_libraries()
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on a small machine: measured on purpose
    with tempfile.TemporaryDirectory(prefix="prism-data-bench-") as tmp:
        base = Path(tmp)
        timed = scale_data.write_task(base / "timed", 2000, images=256, text_only=0.1, tests=2000, photos=True)
        print(f"336-px pipeline, micro-batch {MICRO}, length groups of {GLOBAL} (500x375 JPEGs, 10 % text-only)")
        rates = {w: throughput(timed, w, args.batches) for w in args.workers}
        base_rate = rates[args.workers[0]]
        for w, rate in rates.items():
            print(f"  {w} worker(s): {rate:8.1f} samples/s   x{rate / base_rate:.2f}")
        print("peak RSS (2 workers, 32 micro-batches served) against task size:")
        first = None
        for n in args.records:
            root = scale_data.write_task(base / f"rss{n}", n, images=64, text_only=0.1, photos=True)
            rss = peak_rss(root, 32)
            peak = max(rss["main_kib"], rss["worker_kib"])
            first = first or peak
            print(f"  {n:6d} records: main {rss['main_kib'] / 1024:6.0f} MB, largest worker "
                  f"{rss['worker_kib'] / 1024:6.0f} MB, x{peak / first:.2f}; dataset ready in {rss['ready_s']:.2f} s "
                  f"(pre-encoding would hold {n * 3 * 336 * 336 * 4 / 2**30:.1f} GB of pixels)")
        for micro, global_batch in ((MICRO, GLOBAL), (16, 128)):
            plain, grouped, in_order, ordered = padding(timed, micro, global_batch)
            print(f"padding, micro {micro} / global {global_batch}: training {plain:.1%} shuffled -> {grouped:.1%} "
                  f"grouped (x{grouped / plain:.2f}); generation batches of {global_batch}: {in_order:.1%} "
                  f"in order -> {ordered:.1%} sorted")


if __name__ == "__main__":
    main()
