"""Calibrate the embedded default: forgetting substantial but partial, methods visibly apart.

Runs methods on the synthetic benchmark with the repository's prism.toml (what a user
gets), plus any ``--set`` overrides and an optional tiny model folder, and prints each
method's matrix diagonal, BWT and Last, then the calibration criteria of issue 14 item 5:

- ft_lora's diagonal >= 80 on every task and >= zeroshot's diagonal + 30;
- ft_lora's BWT in [-60, -15];
- replay_lora, ewc and olora each have BWT >= ft_lora's + 5; joint has the best Last.

    python bench/calibrate_synthetic.py --tasks 0-2 --methods zeroshot ft_lora
    python bench/calibrate_synthetic.py --model /tmp/base --set train.lr=1e-3 --tasks 0-4

Outputs go under ``--out`` (a scratch folder, never the repository); a rerun with the
same name reuses finished tasks.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALL_METHODS = ["zeroshot", "ft_lora", "replay_lora", "ewc", "olora", "joint"]


def project(out: Path, data: Path) -> Path:
    """A project folder holding the repository's prism.toml and a link to the generated data."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "prism.toml", out / "prism.toml")
    link = out / "data" / "synthetic"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        link.symlink_to(data.resolve(), target_is_directory=True)
    return out


def run(folder: Path, method: str, tasks: str, model: str | None, sets: list[str], seed: int | None) -> dict:
    from prism.config import load_config
    from prism.engine.loop import train

    flags = {"method.id": method, "benchmark.tasks": tasks}
    if model:
        flags["backbone.model"] = model
    if seed is not None:
        flags["project.seed"] = seed
    resolved = load_config(folder / "prism.toml", cwd=folder, env={}, sets=sets, flags=flags)
    started = time.perf_counter()
    outcome = train(resolved)
    matrix = outcome.matrix.to_list()
    return {"method": method, "matrix": matrix, "diag": [row[i] for i, row in enumerate(matrix)],
            "summary": outcome.summary, "seconds": round(time.perf_counter() - started)}


def cell(value: float | None) -> str:
    return "    –" if value is None else f"{value:5.1f}"


def criteria(results: dict[str, dict]) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    ft = results.get("ft_lora")
    if ft is None:
        return checks
    zs = results.get("zeroshot")
    checks.append(("ft_lora diagonal >= 80", all(d is not None and d >= 80 for d in ft["diag"])))
    if zs is not None:
        checks.append(("ft_lora diagonal >= zeroshot + 30",
                       all(d >= z + 30 for d, z in zip(ft["diag"], zs["diag"]))))
    bwt = ft["summary"]["bwt"]
    checks.append(("ft_lora BWT in [-60, -15]", -60 <= bwt <= -15))
    checks.append(("ft_lora BWT < -10 and MFT > 60", bwt < -10 and ft["summary"]["mft"] > 60))
    for method in ("replay_lora", "ewc", "olora"):
        if method in results:
            checks.append((f"{method} BWT >= ft_lora + 5", results[method]["summary"]["bwt"] >= bwt + 5))
    if "joint" in results:
        best = max(r["summary"]["last"] for m, r in results.items() if m != "joint")
        checks.append(("joint has the best Last", results["joint"]["summary"]["last"] >= best))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=ALL_METHODS)
    parser.add_argument("--tasks", default="0-2")
    parser.add_argument("--model", default=None, help="tiny model folder (default: prism.toml's)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="key=value, repeatable")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--name", default="run", help="sub-folder of --out for this setting")
    parser.add_argument("--out", type=Path, default=Path("/tmp/calib-runs"))
    args = parser.parse_args()

    folder = project(args.out / args.name, args.out / "data" / "synthetic")
    results: dict[str, dict] = {}
    for method in args.methods:
        result = run(folder, method, args.tasks, args.model, args.sets, args.seed)
        results[method] = result
        s = result["summary"]
        diag = " ".join(cell(d) for d in result["diag"])
        last_row = " ".join(cell(v) for v in result["matrix"][-1])
        bwt, mft = s.get("bwt"), s.get("mft")
        print(f"{method:12s} diag [{diag}]  last row [{last_row}]  "
              f"BWT {'–' if bwt is None else f'{bwt:.1f}'}  Last {s['last']:.1f}  "
              f"MFT {'–' if mft is None else f'{mft:.1f}'}  {result['seconds']}s", flush=True)
    for label, ok in criteria(results):
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    (folder / "calibration.json").write_text(json.dumps(
        {"tasks": args.tasks, "model": args.model, "sets": args.sets, "results": results}, indent=1))


if __name__ == "__main__":
    main()
