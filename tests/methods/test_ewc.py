"""ewc: the Fisher penalty's mechanism on a toy model, and its state through the real engine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from prism.methods.base import RunInfo, TaskContext
from prism.methods.ewc import EWC, EWCParams

SLOT = "default"


class Toy(nn.Module):
    """Two adapted linears; ``unused`` never takes part in the loss."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.used = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 3)

    def forward(self, x, y):
        return SimpleNamespace(loss=nn.functional.mse_loss(self.used(x), y))


class ToyFit:
    model: nn.Module

    def __init__(self, model: nn.Module, n: int = 6) -> None:
        self.model = model
        gen = torch.Generator().manual_seed(1)
        self.data = [(torch.randn(2, 4, generator=gen), torch.randn(2, 3, generator=gen)) for _ in range(n)]

    def batches(self, limit=None, batch_size=None):
        return iter(self.data[:limit])

    def forward(self, batch):
        return self.model(*batch)


def make(lam: float = 10.0) -> tuple[EWC, Toy]:
    model = Toy()
    backbone = SimpleNamespace(model=model, target_regex=lambda s: s)
    method = EWC(EWCParams(r=2, alpha=4, dropout=0.0, target_modules="used|unused", lambda_ewc=lam,
                           fisher_batches=4), RunInfo(num_tasks=2, task_names=["a", "b"]))
    method.attach(backbone)
    # give B a value so A receives gradient too (B starts at zero)
    with torch.no_grad():
        for name, p in method.adapters.named_parameters([SLOT]).items():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    return method, model


def task(i: int) -> TaskContext:
    specs = [SimpleNamespace(name="a"), SimpleNamespace(name="b")]
    return TaskContext(index=i, spec=specs[i], sequence=specs, benchmark="toy")


def finished() -> EWC:
    method, model = make()
    method.begin_task(task(0))
    method.end_task(task(0), ToyFit(model))
    return method


def test_penalty_is_zero_at_theta_star_and_positive_after_perturbation():
    method = finished()
    assert method.penalty().item() == 0.0
    with torch.no_grad():
        for p in method.adapters.parameters([SLOT]):
            p.add_(0.1)
    assert method.penalty().item() > 0.0


def test_gradient_step_on_penalty_moves_weight_back_toward_anchor():
    method = finished()
    live = method.adapters.named_parameters([SLOT])
    name = next(n for n in live if n.startswith("used.lora_A"))
    param, star = live[name], method.anchors[0][name]
    with torch.no_grad():
        param.add_(0.2)
    before = (param - star).norm().item()
    method.penalty().backward()
    with torch.no_grad():
        param.sub_(1e-3 * param.grad)
    assert (param - star).norm().item() < before


def test_fisher_is_nonnegative_and_zero_without_gradient():
    method = finished()
    fisher = method.fishers[0]
    assert fisher and all((f >= 0).all() for f in fisher.values())
    assert all(f.abs().sum() == 0 for n, f in fisher.items() if n.startswith("unused."))
    assert all(f.sum() > 0 for n, f in fisher.items() if n.startswith("used."))
    # no gradient leaks into training
    assert all(p.grad is None for p in method.adapters.parameters([SLOT]))


def test_loss_adds_the_penalty_only_after_a_task():
    method, model = make()
    out = SimpleNamespace(loss=torch.tensor(1.0))
    assert method.loss(task(0), None, out) is out.loss
    method.end_task(task(0), ToyFit(model))
    with torch.no_grad():
        for p in method.adapters.parameters([SLOT]):
            p.add_(0.1)
    assert method.loss(task(1), None, out).item() == pytest.approx(1.0 + method.penalty().item())


def test_state_round_trip():
    method = finished()
    tensors, meta = method.state_dict(), method.state_metadata()
    assert any(k.startswith("task0.fisher.") for k in tensors)
    assert any(k.startswith("task0.theta.") for k in tensors)
    other, _ = make()
    other.load_state(tensors, meta)
    for mine, theirs in ((method.fishers, other.fishers), (method.anchors, other.anchors)):
        assert mine[0].keys() == theirs[0].keys()
        assert all(torch.equal(mine[0][k], theirs[0][k]) for k in mine[0])


def test_engine_saves_fisher_and_resumes(project):
    from safetensors.torch import load_file

    from prism.engine.loop import train
    from tests.engine.conftest import resolve

    resolved = resolve(project, "benchmark.tasks='0-1'", "method.ewc.fisher_batches=3",
                       "train.max_steps=2", "benchmark.max_test_samples=2", method__id="ewc")
    first = train(resolved)
    assert first.trained == ["colour", "shape_mc"]
    ckpt = project / "outputs" / "checkpoints" / "synthetic" / "ewc" / "Task1_llava"
    saved = load_file(str(ckpt / "prism_state.safetensors"))
    assert any(k.startswith("task0.fisher.") for k in saved)
    assert any(k.startswith("task1.fisher.") for k in saved)
    assert any(v.sum() > 0 for k, v in saved.items() if ".fisher." in k)

    import prism.engine.loop as loop

    captured = {}
    original = loop.restore_checkpoint

    def spy(method, folder):
        state = original(method, folder)
        captured["method"] = method
        return state

    loop.restore_checkpoint = spy
    try:
        again = train(resolved)
    finally:
        loop.restore_checkpoint = original
    assert again.trained == [] and again.skipped == ["colour", "shape_mc"]
    method = captured["method"]
    assert len(method.fishers) == 2
    live = method.adapters.named_parameters([SLOT])
    assert all(torch.equal(live[n].detach().cpu(), saved[f"task1.theta.{n}"]) for n in live)
    # restored weights sit at θ*_1, so only task 0's term remains
    expected = 0.5 * method.params.lambda_ewc * sum(
        (saved[f"task0.fisher.{n}"] * (saved[f"task1.theta.{n}"] - saved[f"task0.theta.{n}"]) ** 2).sum()
        for n in live)
    assert expected.item() > 0
    assert method.penalty().item() == pytest.approx(expected.item(), rel=1e-5)


class SampleFit(ToyFit):
    """Serves the same 8 samples in batches of the size asked for (recording it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        gen = torch.Generator().manual_seed(5)
        self.x, self.y = torch.randn(8, 4, generator=gen), torch.randn(8, 3, generator=gen)
        self.sizes: list[int | None] = []
        self.forwards = 0

    def forward(self, batch):
        self.forwards += 1
        return super().forward(batch)

    def batches(self, limit=None, batch_size=None):
        self.sizes.append(batch_size)
        size = batch_size or 4  # the "per-device training batch"
        chunks = [(self.x[i:i + size], self.y[i:i + size]) for i in range(0, 8, size)]
        return iter(chunks[:limit])


def _squared_grads(method: EWC, model: Toy, pairs) -> dict[str, torch.Tensor]:
    live = {n: p for n, p in method.adapters.named_parameters([SLOT]).items() if p.requires_grad}
    sums = {n: torch.zeros_like(p) for n, p in live.items()}
    for x, y in pairs:
        grads = torch.autograd.grad(model(x, y).loss, list(live.values()), allow_unused=True)
        for n, g in zip(live, grads):
            if g is not None:
                sums[n] += g.pow(2)
    return {n: s / len(pairs) for n, s in sums.items()}


def test_per_sample_fisher_is_the_mean_of_per_sample_squared_gradients():
    method, model = make()
    method.params.fisher_batches = 8
    method.begin_task(task(0))
    fit = SampleFit(model)
    method.end_task(task(0), fit)
    assert fit.sizes == [1]
    want = _squared_grads(method, model, [(fit.x[i:i + 1], fit.y[i:i + 1]) for i in range(8)])
    assert all(torch.allclose(method.fishers[0][n], want[n], atol=1e-7) for n in want)


def test_prism_batch_fisher_squares_whole_batch_gradients():
    method, model = make()
    method.params.fisher = "prism_batch"
    method.begin_task(task(0))
    fit = SampleFit(model)
    method.end_task(task(0), fit)
    assert fit.sizes == [None]  # the training batch size
    want = _squared_grads(method, model, [(fit.x[:4], fit.y[:4]), (fit.x[4:], fit.y[4:])])
    assert all(torch.allclose(method.fishers[0][n], want[n], atol=1e-7) for n in want)
    per_sample, _ = make()
    per_sample.params.fisher_batches = 8
    per_sample.begin_task(task(0))
    per_sample.end_task(task(0), SampleFit(per_sample.backbone.model))
    used = next(n for n in want if n.startswith("used.lora_A"))
    # squaring a batch's mean gradient averages disagreeing samples away: a smaller estimate
    assert method.fishers[0][used].sum() < per_sample.fishers[0][used].sum()


def _fisher_on_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        method, model = make()
        method.params.fisher_batches = 8
        method.begin_task(task(0))
        fit = SampleFit(model)
        method.end_task(task(0), fit)
        torch.save({**method.fishers[0], "forwards": torch.tensor(fit.forwards)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_share_the_fisher_batches_and_match_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fisher_on_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    single, model = make()
    single.params.fisher_batches = 8
    single.begin_task(task(0))
    single.end_task(task(0), SampleFit(model))
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got.pop("forwards").item() == 4  # each rank squared half of the 8 gradients
        assert all(torch.allclose(got[n], single.fishers[0][n], atol=1e-7) for n in got)
