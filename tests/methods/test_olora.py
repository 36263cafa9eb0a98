"""olora: orthogonality and freezing on a toy model, slots through the real engine."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch
from torch import nn

from prism.methods.base import RunInfo, TaskContext
from prism.methods.olora import OLoRA, OLoRAParams


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x, y=None):
        out = self.head(torch.relu(self.body(x)))
        loss = None if y is None else nn.functional.mse_loss(out, y)
        return SimpleNamespace(loss=loss, logits=out)


SPECS = [SimpleNamespace(name=n) for n in ("a", "b", "c")]


def task(i: int) -> TaskContext:
    return TaskContext(index=i, spec=SPECS[i], sequence=SPECS, benchmark="toy")


def make(**params) -> tuple[OLoRA, Toy]:
    model = Toy()
    backbone = SimpleNamespace(model=model, target_regex=lambda s: s)
    settings = dict(r=6, alpha=6, dropout=0.0, target_modules="body|head", lambda_orth=0.5)
    method = OLoRA(OLoRAParams(**{**settings, **params}), RunInfo(num_tasks=3, task_names=["a", "b", "c"]))
    method.attach(backbone)
    return method, model


def train_task(method: OLoRA, model: Toy, index: int, steps: int = 20) -> None:
    method.begin_task(task(index))
    params = method.trainable_parameters()
    optimizer = torch.optim.Adam(params, lr=1e-2)
    gen = torch.Generator().manual_seed(index)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 2, generator=gen)
        optimizer.zero_grad()
        method.loss(task(index), None, model(x, y)).backward()
        optimizer.step()
    method.end_task(task(index), None)


def test_defaults_are_the_original_release():
    params = OLoRAParams()
    assert (params.r, params.alpha, params.dropout, params.rank_split) == (8, 32.0, 0.1, "per_task")
    assert (params.lambda_orth, params.lambda_l2) == (0.5, 0.0)
    assert OLoRA.config_defaults["train"] == {"lr": 1e-3, "lr_scheduler": "constant", "warmup_ratio": 0.0}
    method, _ = make(rank_split="per_task")
    assert method.slot_rank == 6 and method.slot_alpha == 6.0  # every task gets r, scaled alpha/r
    method.begin_task(task(0))
    assert method.adapters.spec("task0").scaling == 1.0


def test_prism_split_scales_each_slot_by_alpha_over_total_rank():
    method, _ = make(r=6, alpha=12, rank_split="prism")
    method.begin_task(task(0))
    spec = method.adapters.spec("task0")
    assert spec.r == 2 and spec.scaling == 12 / 6  # alpha / r_total, not alpha / r_slot


def test_config_defaults_give_constant_lr_unless_prism_toml_sets_it(tmp_path):
    from prism.config import load_config

    (tmp_path / "prism.toml").write_text('[method]\nid = "olora"\n')
    cfg = load_config(tmp_path / "prism.toml", cwd=tmp_path, env={}).config
    assert (cfg.train.lr, cfg.train.lr_scheduler, cfg.train.warmup_ratio) == (1e-3, "constant", 0.0)
    (tmp_path / "prism.toml").write_text('[method]\nid = "olora"\n[train]\nlr = 2e-4\n')
    assert load_config(tmp_path / "prism.toml", cwd=tmp_path, env={}).config.train.lr == 2e-4


def test_rank_split_and_one_trainable_slot_per_task():
    method, model = make(rank_split="prism")
    assert method.slot_rank == 2  # r 6 over 3 tasks
    train_task(method, model, 0, steps=2)
    method.begin_task(task(1))
    assert method.adapters.slots == ["task0", "task1"]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in method.adapters.parameters(["task1"])}
    assert method.adapters.spec("task1").r == 2
    assert make(r=4)[0].slot_rank == 4


def test_overlap_with_earlier_slot_falls_during_training():
    method, model = make()
    train_task(method, model, 0, steps=5)
    method.begin_task(task(1))
    before = method.orthogonality().item()
    method.end_task(task(1), None)
    method.adapters.remove_slot("task1")
    train_task(method, model, 1, steps=20)
    method.current = "task1"
    after = method.orthogonality().item()
    assert before > 0 and after < 0.5 * before


def test_earlier_slots_are_bit_identical_after_next_task():
    method, model = make()
    train_task(method, model, 0)
    frozen = method.adapters.state_dict(["task0"])
    train_task(method, model, 1)
    later = method.adapters.state_dict(["task0"])
    assert frozen.keys() == later.keys()
    assert all(torch.equal(frozen[k], later[k]) for k in frozen)
    # and task1 did train
    assert any(v.abs().sum() > 0 for k, v in method.adapters.state_dict(["task1"]).items() if "lora_B" in k)


def test_inference_is_base_plus_sum_of_slot_deltas():
    method, model = make()
    train_task(method, model, 0)
    train_task(method, model, 1)
    method.prepare_inference(task(1))
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        got = model(x).logits
        layers = method.adapters.layers
        body, head = layers["body"], layers["head"]

        def apply(layer, h):
            out = layer.base_layer(h)
            for slot in ("task0", "task1"):
                out = out + h @ layer.delta_weight(slot).T
            return out

        want = apply(head, torch.relu(apply(body, x)))
    assert torch.allclose(got, want, atol=1e-5)


def test_l2_term_is_the_unsquared_norm_of_the_new_slot():
    method, model = make(lambda_orth=0.0, lambda_l2=0.1)
    method.begin_task(task(0))
    with torch.no_grad():
        for p in method.adapters.parameters(["task0"]):
            p.fill_(0.5)
    params = method.adapters.parameters(["task0"])
    want = sum(0.5 * p.numel() ** 0.5 for p in params)  # ‖p‖₂ of a constant matrix, not ‖p‖²
    out = SimpleNamespace(loss=torch.tensor(1.0))
    got = method.loss(task(0), None, out).item()
    assert abs(got - (1.0 + 0.1 * want)) < 1e-4


def test_state_metadata_recreates_slots_before_adapters_load():
    method, model = make()
    train_task(method, model, 0, steps=3)
    train_task(method, model, 1, steps=3)
    meta = method.state_metadata()
    assert meta["slots"]["task1"]["r"] == 6
    other, _ = make()
    other.load_state({}, meta)
    assert other.adapters.slots == ["task0", "task1"]
    other.adapters.load_state_dict(method.adapters.state_dict())
    other.begin_task(task(2))
    assert other.adapters.slots == ["task0", "task1", "task2"]


def test_engine_creates_a_slot_per_task_and_resumes(project):
    from safetensors import safe_open

    import prism.engine.loop as loop
    from prism.engine.loop import train
    from tests.engine.conftest import resolve

    sets = ["benchmark.tasks='0-1'", "train.max_steps=2", "benchmark.max_test_samples=2"]
    first = train(resolve(project, *sets, method__id="olora"))
    assert first.trained == ["colour", "shape_mc"]
    ckpt = project / "outputs" / "checkpoints" / "synthetic" / "olora" / "Task1_llava"
    with safe_open(str(ckpt / "adapter_model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert any(".lora_A.task0." in k for k in keys) and any(".lora_A.task1." in k for k in keys)
    state = json.loads((ckpt / "prism_state.json").read_text())
    assert set(state["method_state"]["slots"]) == {"task0", "task1"}

    captured = {}
    original = loop.restore_checkpoint

    def spy(method, folder):
        result = original(method, folder)
        captured["method"] = method
        return result

    loop.restore_checkpoint = spy
    try:
        again = train(resolve(project, *sets, method__id="olora"))
    finally:
        loop.restore_checkpoint = original
    assert again.trained == [] and again.skipped == ["colour", "shape_mc"]
    restored = captured["method"].adapters
    assert restored.slots == ["task0", "task1"]
    with safe_open(str(ckpt / "adapter_model.safetensors"), framework="pt") as handle:
        key = next(k for k in handle.keys() if ".lora_B.task1." in k)
        saved = handle.get_tensor(key)
    live = restored.state_dict(["task1"], routers=False)[key.removeprefix("base_model.model.")]
    assert torch.equal(live, saved)
