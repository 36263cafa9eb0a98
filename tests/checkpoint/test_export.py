"""`prism ckpt export`: merged llava-hf folders and single peft LoRAs that reproduce prism's answers.

Real runs on the embedded default (ft_lora on 2 tasks, olora on 3 so it has 3 slots,
zeroshot on 1) are trained once for the module; each export is compared with the
model `prism infer` builds from the same checkpoint: greedy answers against the
prediction files prism wrote, logits at fp32 tolerance.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from prism.checkpoint import store
from prism.checkpoint.export import EXPORT_RECORD, checked_mix, export_checkpoint
from prism.errors import UsageError
from prism.plugins import PluginManager
from tests.conftest import run_cli
from tests.engine.conftest import new_project, resolve

#: method -> how many tasks it learns (olora: one slot per task)
RUNS = {"ft_lora": 2, "olora": 3, "zeroshot": 1}
#: fp32 tolerance: (W + sBA) x and prism's W x + s B (A x) differ only in the order of float32
#: sums (seen: 2e-5 on logits of magnitude ~10); an unmerged or wrongly scaled slot is off by >1e-3
ATOL, RTOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_data):
    """method -> (resolved config, last checkpoint folder), trained once in one project; the
    last checkpoint's predictions are written by `prism infer`'s code path."""
    from prism.engine.infer import infer
    from prism.engine.loop import train

    project = new_project(tmp_path_factory.mktemp("export-project"), synthetic_data)
    done = {}
    for method, count in RUNS.items():
        resolved = resolve(project, f"benchmark.tasks='0-{count - 1}'", "train.eval_after_each_task=false",
                           method__id=method)
        layout = train(resolved).layout
        infer(resolved, only=[layout.checkpoint_name(count - 1)])
        done[method] = (resolved, layout.checkpoint(count - 1))
    return project, done


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """(method, adapter_only) -> export folder, each written once."""
    _, done = runs
    out = tmp_path_factory.mktemp("exports")
    made = {}

    def get(method: str, adapter_only: bool = False) -> Path:
        key = (method, adapter_only)
        if key not in made:
            resolved, checkpoint = done[method]
            target = out / f"{method}{'-lora' if adapter_only else ''}"
            export_checkpoint(resolved, checkpoint, target, adapter_only=adapter_only)
            made[key] = target
        return made[key]

    return get


# -- helpers: prism's own model and inputs ------------------------------------------------------------
def prism_model(resolved, checkpoint: Path):
    """The model `prism infer` answers with for ``checkpoint`` (base + adapters swapped in)."""
    from prism.engine.task_checkpoints import restore_checkpoint
    from prism.engine.session import build_method, load_backbone, plan_run
    from prism.methods.base import TaskContext

    plan = plan_run(resolved)
    backbone = load_backbone(plan, purpose="infer")
    method = build_method(plan)
    method.attach(backbone)
    restore_checkpoint(method, checkpoint)
    position = len(store.read_checkpoint_info(checkpoint).tasks_seen) - 1
    method.prepare_inference(TaskContext(index=position, spec=plan.sequence[position], sequence=plan.sequence,
                                         benchmark=plan.config.benchmark.id))
    backbone.model.eval()
    return plan, backbone, method


def seen_tasks(plan, checkpoint: Path):
    names = store.read_checkpoint_info(checkpoint).tasks_seen
    return [spec for spec in plan.sequence if spec.name in names]


def prompt_batch(backbone, root: Path, spec, records):
    """The left-padded generation batch `prism infer` builds (prism.inference.generate)."""
    from prism.benchmarks.data import collate, encode_prompt

    samples = [encode_prompt(r, backbone, root, spec) for r in records]
    return collate(samples, pad_token_id=backbone.tokenizer.pad_token_id, padding_side="left")


def greedy(model, tokenizer, batch, max_new_tokens: int) -> list[str]:
    """Greedy decoding with the settings prism's predict_task uses, on a plain transformers model."""
    from prism.inference.generate import suppressed_token_ids

    inputs = batch.model_inputs()
    suppress = suppressed_token_ids(tokenizer, model.get_output_embeddings().weight.shape[0])
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False,
                         temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, suppress_tokens=suppress or None)
    return [t.strip() for t in tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]


def written_predictions(plan, checkpoint: Path, task: str) -> list[dict]:
    """The prediction lines prism wrote for ``task`` with ``checkpoint``."""
    from prism.checkpoint.layout import parse_checkpoint_name

    index, _ = parse_checkpoint_name(checkpoint.name)
    path = plan.layout.prediction_file(index, task)
    return [json.loads(line) for line in path.read_text().splitlines()]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- the merged model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ft_lora", "olora"])
def test_merged_model_gives_prisms_answers_and_logits(runs, exports, method):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    _, done = runs
    resolved, checkpoint = done[method]
    folder = exports(method)
    exported = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    plan, backbone, _ = prism_model(resolved, checkpoint)
    assert processor.tokenizer.get_vocab() == backbone.tokenizer.get_vocab()
    assert exported.dtype == torch.float32  # the base's dtype
    root = plan.benchmark.prepare()
    base = LlavaForConditionalGeneration.from_pretrained(backbone.resolved_path).eval()
    model_id = json.loads((folder / EXPORT_RECORD).read_text())["model_id"]

    tasks = seen_tasks(plan, checkpoint)
    assert len(tasks) == RUNS[method]
    for spec in tasks:
        lines = written_predictions(plan, checkpoint, spec.name)
        assert lines and all(line["model_id"] == model_id for line in lines)
        records = {str(r["question_id"]): r for r in _test_records(root, spec)}
        chosen = [records[str(line["question_id"])] for line in lines]
        batch = prompt_batch(backbone, root, spec, chosen)
        with torch.no_grad():
            answers = greedy(exported, processor.tokenizer, batch, spec.max_new_tokens)
            ours = backbone.model(**batch.model_inputs()).logits
            theirs = exported(**batch.model_inputs()).logits
            plain = base(**batch.model_inputs()).logits
        assert answers == [line["text"] for line in lines], spec.name
        torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=RTOL)
        assert (plain - ours).abs().max().item() > 1e-3  # the adapters changed the model


def _test_records(root, spec):
    from prism.benchmarks.data import load_test_records

    return load_test_records(root, spec)


def test_olora_export_sums_every_slot(runs, exports):
    record = json.loads((exports("olora") / EXPORT_RECORD).read_text())
    assert record["merge"] == {"kind": "sum", "slots": {"task0": 1.0, "task1": 1.0, "task2": 1.0}}
    assert record["tasks_seen"] == ["colour", "shape_mc", "count"]


def test_export_record_names_its_source(runs, exports):
    _, done = runs
    _, checkpoint = done["ft_lora"]
    folder = exports("ft_lora")
    record = json.loads((folder / EXPORT_RECORD).read_text())
    assert record["source_checkpoint"] == str(checkpoint.resolve())
    assert record["manifest_sha256"] == store.sha256_file(checkpoint / store.MANIFEST)
    assert record["method"] == "ft_lora" and record["kind"] == "merged-model"
    assert record["tasks_seen"] == store.read_checkpoint_info(checkpoint).tasks_seen
    assert record["merge"] == {"kind": "single-slot", "slots": {"default": 1.0}}
    assert record["dtype"] == "float32"
    assert not store.verify_checkpoint(folder)  # written with a manifest, like a checkpoint
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "processor_config.json", "prism_tiny.json"):
        assert (folder / name).is_file(), name


def test_zeroshot_exports_the_base_itself(runs, exports):
    from safetensors.torch import load_file

    _, done = runs
    resolved, _ = done["zeroshot"]
    folder = exports("zeroshot")
    from prism.backbones.llava import resolve_model_path

    base = load_file(str(resolve_model_path(resolved.config.backbone.model) / "model.safetensors"))
    exported = load_file(str(folder / "model.safetensors"))
    assert base.keys() == exported.keys()
    assert all(torch.equal(base[k], exported[k]) for k in base)
    assert json.loads((folder / EXPORT_RECORD).read_text())["merge"]["kind"] == "base"


def test_dtype_option_casts_the_weights(runs, tmp_path):
    from safetensors import safe_open
    from transformers import LlavaForConditionalGeneration

    _, done = runs
    resolved, checkpoint = done["ft_lora"]
    record = export_checkpoint(resolved, checkpoint, tmp_path / "bf16", dtype="bfloat16")
    assert record["dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}
    assert LlavaForConditionalGeneration.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16


# -- one peft LoRA -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ft_lora", "olora"])
def test_adapter_only_loads_in_stock_peft_with_prisms_logits(runs, exports, method):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import LlavaForConditionalGeneration

    _, done = runs
    resolved, checkpoint = done[method]
    folder = exports(method, adapter_only=True)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                       "manifest.json", EXPORT_RECORD]
    plan, backbone, method_obj = prism_model(resolved, checkpoint)
    config = json.loads((folder / "adapter_config.json").read_text())
    ranks = {method_obj.adapters.spec(s).r for s in method_obj.adapters.slots}
    assert config["r"] == sum(method_obj.adapters.spec(s).r for s in method_obj.adapters.slots)
    assert len(ranks) == 1 and not config.get("rank_pattern")
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert all(k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)

    root = plan.benchmark.prepare()
    spec = plan.sequence[0]
    batch = prompt_batch(backbone, root, spec, _test_records(root, spec)[:6])
    base = LlavaForConditionalGeneration.from_pretrained(backbone.resolved_path)
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.no_grad():
        ours = backbone.model(**batch.model_inputs()).logits
        theirs = peft_model(**batch.model_inputs()).logits
        with peft_model.disable_adapter():
            plain = peft_model(**batch.model_inputs()).logits
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=RTOL)
    assert (plain - ours).abs().max().item() > 1e-3


def test_adapter_only_refuses_a_method_without_adapters(runs, tmp_path):
    _, done = runs
    resolved, checkpoint = done["zeroshot"]
    with pytest.raises(UsageError, match="no adapter to write"):
        export_checkpoint(resolved, checkpoint, tmp_path / "out", adapter_only=True)
    assert not (tmp_path / "out").exists()


def _tiny_with_slots():
    """A random tiny LLaVA with three slots of different ranks, alphas (one rsLoRA) and layers."""
    from prism.adapters import inject_adapters
    from prism.backbones import tiny

    model, tokenizer, processor = tiny.build_untrained(seed=0)
    base = copy.deepcopy(model)
    adapters = inject_adapters(model, r"model\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)")
    adapters.add_slot("a", r=2, alpha=4, seed=1)
    adapters.add_slot("b", r=3, alpha=9, use_rslora=True, seed=2)
    adapters.add_slot("c", r=1, alpha=1, seed=3, layers=r".*q_proj")
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for param in adapters.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    batch = tiny.base_batch(random.Random(0), tiny.loaded(model, tokenizer, processor), 3, tiny.copy_words())
    return model.eval(), base.eval(), adapters, batch


MIX = {"a": 0.5, "b": 1.0, "c": -2.0}


def test_folding_slots_with_different_scalings_is_exact_in_peft(tmp_path):
    """Per-slot α/r (and weights) fold into B, so one LoRA with one lora_alpha reproduces the mix."""
    from peft import PeftModel

    from prism.adapters.io import save_adapters
    from prism.adapters.merge import fold_into_one_slot

    model, base, adapters, batch = _tiny_with_slots()
    adapters.activate(MIX)
    with torch.no_grad():
        ours = model(**batch.model_inputs()).logits
    paths = fold_into_one_slot(adapters, MIX, "default")
    assert adapters.slots == ["default"] and len(paths) == 4
    save_adapters(adapters, tmp_path, slots=["default"], routers=False)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert {config["r"], *config["rank_pattern"].values()} == {5, 6}  # v_proj: 2 + 3, q_proj: 2 + 3 + 1
    peft_model = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    with torch.no_grad():
        theirs = peft_model(**batch.model_inputs()).logits
        with peft_model.disable_adapter():
            plain = peft_model(**batch.model_inputs()).logits
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=RTOL)
    assert (plain - ours).abs().max().item() > 1e-2


def test_merging_slots_into_the_base_is_exact():
    from prism.adapters.merge import merge_into_base

    model, _, adapters, batch = _tiny_with_slots()
    adapters.activate(MIX)
    with torch.no_grad():
        ours = model(**batch.model_inputs()).logits
    merge_into_base(adapters, MIX)
    assert not any("lora" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        merged = model(**batch.model_inputs()).logits
    torch.testing.assert_close(merged, ours, atol=ATOL, rtol=RTOL)


# -- the method contract -------------------------------------------------------------------------------
class _Fit:
    """The FitHandle a method's end_task gets: a couple of real batches of the tiny model."""

    def __init__(self, backbone):
        from prism.backbones import tiny

        self.model, self.device, self._backbone, self._tiny = backbone.model, "cpu", backbone, tiny

    def batches(self, limit=None, batch_size=None):
        for i in range(min(2, limit or 2)):
            yield self._tiny.base_batch(random.Random(i), self._backbone, batch_size or 2, self._tiny.copy_words())

    def forward(self, batch):
        return self.model(**batch.model_inputs())


@pytest.mark.parametrize("method_id", PluginManager(autoload=False).registry("method").ids())
def test_every_declared_mix_is_what_the_method_answers_with(method_id):
    """For each registered method: the merge of its inference_mix() gives the logits its own
    inference gives (after two tasks with random adapter weights), or it declares no mix."""
    from types import SimpleNamespace

    from prism.adapters.merge import merge_into_base
    from prism.backbones import tiny
    from prism.checkpoint.export import declares_mix
    from prism.methods.base import RunInfo, TaskContext

    cls = PluginManager(autoload=False).registry("method").load(method_id)
    if not declares_mix(cls):
        pytest.skip(f"{method_id} declares no fixed mix (export refuses it)")
    model, tokenizer, processor = tiny.build_untrained(seed=0)
    backbone = tiny.loaded(model, tokenizer, processor)
    method = cls(cls.Params(), RunInfo(num_tasks=2, task_names=["a", "b"], seed=0))
    method.attach(backbone)
    sequence = [SimpleNamespace(name="a"), SimpleNamespace(name="b")]
    generator = torch.Generator().manual_seed(0)
    for index in range(2):
        task = TaskContext(index=index, spec=sequence[index], sequence=sequence, benchmark="test")
        method.begin_task(task)
        method.training_records(task, [])
        with torch.no_grad():
            for param in method.trainable_parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)
        method.end_task(task, _Fit(backbone))
    method.prepare_inference(task)
    model.eval()
    batch = tiny.base_batch(random.Random(9), backbone, 3, tiny.copy_words())
    method.before_forward(batch, training=False)
    with torch.no_grad():
        answered = model(**batch.model_inputs()).logits
    mix = checked_mix(method)
    if method.adapters is not None:
        merge_into_base(method.adapters, mix)
    with torch.no_grad():
        merged = model(**batch.model_inputs()).logits
    torch.testing.assert_close(merged, answered, atol=ATOL, rtol=RTOL)


def test_a_mix_of_none_is_refused_by_name():
    class Routed:
        id = "routed"
        adapters = None

        def inference_mix(self):
            return None

    with pytest.raises(UsageError, match="method 'routed' cannot be exported.*depend on each input"):
        checked_mix(Routed())


# -- refusals, through the CLI --------------------------------------------------------------------------
ROUTED_PLUGIN = '''
    from prism import hookimpl
    from prism.methods.base import Method, MethodParams


    class RoutedParams(MethodParams):
        """no settings"""


    class Routed(Method):
        """Stands for a method that picks slots per input: it declares no fixed inference mix."""

        id = "routed"
        summary = "answers depend on the input"
        Params = RoutedParams
        trains = False


    @hookimpl
    def register_methods(register):
        register("routed", "prism_local_plugins.routed:Routed", "answers depend on the input")
'''


def test_a_method_without_a_declared_mix_is_refused(tmp_path, synthetic_data):
    from prism.engine.loop import train

    (tmp_path / "project").mkdir()
    project = new_project(tmp_path / "project", synthetic_data)
    (project / "plugins").mkdir()
    (project / "plugins" / "routed.py").write_text(textwrap.dedent(ROUTED_PLUGIN))
    outcome = train(resolve(project, "benchmark.tasks='0'", method__id="routed"))
    checkpoint = outcome.layout.checkpoint(0)
    result = run_cli(["ckpt", "export", str(checkpoint), "--to", str(tmp_path / "out")], cwd=project)
    assert result.code == 2, result
    assert "method 'routed' cannot be exported" in result.stderr
    assert "does not declare a fixed inference mix" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_existing_or_overlapping_targets_are_refused(runs, tmp_path):
    project, done = runs
    resolved, checkpoint = done["ft_lora"]
    checkpoint_bytes = folder_bytes(checkpoint)

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    result = run_cli(["ckpt", "export", checkpoint.name, "--to", str(taken)], cwd=project)
    assert result.code == 2 and "already exists" in result.stderr and "--force" in result.stderr, result
    with pytest.raises(UsageError, match="replaces only an earlier export"):
        export_checkpoint(resolved, checkpoint, taken, force=True)
    assert folder_bytes(taken) == {"notes.txt": b"mine"}

    with pytest.raises(UsageError, match="outside the checkpoint"):
        export_checkpoint(resolved, checkpoint, checkpoint / "merged", force=True)
    with pytest.raises(UsageError, match="outside the checkpoint"):
        export_checkpoint(resolved, checkpoint, checkpoint, force=True)
    with pytest.raises(UsageError, match="contains the checkpoint"):
        export_checkpoint(resolved, checkpoint, checkpoint.parent.parent, force=True)
    with pytest.raises(UsageError, match="--dtype 'int8'"):
        export_checkpoint(resolved, checkpoint, tmp_path / "new", dtype="int8")
    assert folder_bytes(checkpoint) == checkpoint_bytes
    assert not (tmp_path / "new").exists()


def test_force_replaces_an_earlier_export(runs, tmp_path):
    _, done = runs
    resolved, checkpoint = done["ft_lora"]
    target = tmp_path / "merged"
    export_checkpoint(resolved, checkpoint, target, adapter_only=True)
    export_checkpoint(resolved, checkpoint, target, force=True)
    assert (target / "model.safetensors").is_file() and not (target / "adapter_model.safetensors").exists()
    assert json.loads((target / EXPORT_RECORD).read_text())["kind"] == "merged-model"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_checkpoint_that_does_not_verify_is_not_exported(runs, tmp_path):
    project, done = runs
    _, checkpoint = done["ft_lora"]
    broken = tmp_path / checkpoint.name
    shutil.copytree(checkpoint, broken)
    weights = broken / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = run_cli(["ckpt", "export", str(broken), "--to", str(tmp_path / "out")], cwd=project)
    assert result.code == 1, result
    assert "does not verify" in result.stderr and "adapter_model.safetensors" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_adapter_only_export_as_json(runs, tmp_path):
    """The command resolves a checkpoint name of the run --set chooses and prints the record."""
    project, done = runs
    _, checkpoint = done["olora"]
    result = run_cli(["ckpt", "export", checkpoint.name, "--set", "method.id='olora'", "--to",
                      str(tmp_path / "olora"), "--adapter-only", "--json"], cwd=project)
    assert result.code == 0, str(result)
    record = json.loads(result.stdout)
    slots = json.loads((checkpoint / "prism_state.json").read_text())["method_state"]["slots"]
    assert len(slots) == 3 and record["lora"]["r"] == sum(spec["r"] for spec in slots.values())
    assert record["kind"] == "peft-lora" and record["merge"]["kind"] == "sum"
    assert record["output"] == str((tmp_path / "olora").resolve())
