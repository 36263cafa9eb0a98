"""modal_prompt: the frozen model stays bit-identical, only the current task's prompts and MLP learn,
the task score is the published formula, and prompts sit right after BOS in training and generation."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from prism.benchmarks.synthetic import TASKS
from prism.methods.base import RunInfo, TaskContext
from prism.methods.forward import ForwardContext
from prism.methods.modal_prompt import ModalPrompt, ModalPromptParams

SPECS = [t.spec for t in TASKS[:3]]
NAMES = [s.name for s in SPECS]


def task(i):
    return TaskContext(index=i, spec=SPECS[i], sequence=SPECS, benchmark="synthetic")


def make(**params):
    from prism.backbones.llava import LlavaBackbone

    torch.manual_seed(0)
    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    method = ModalPrompt(ModalPromptParams(**{"prefix_len": 3, "transfer_num": 2, **params}),
                         RunInfo(num_tasks=3, task_names=NAMES))
    method.attach(backbone)
    return method


def batches(method, synthetic_data, spec, n=4):
    from prism.benchmarks.data import TaskDataset
    from prism.benchmarks.records import load_test_records, load_train_records

    train = TaskDataset(load_train_records(synthetic_data, spec, max_samples=n), backbone=method.backbone,
                        root=synthetic_data, specs=spec)
    prompts = TaskDataset(load_test_records(synthetic_data, spec, max_samples=n), backbone=method.backbone,
                          root=synthetic_data, specs=spec, prompts=True)
    return next(iter(train.batches(n, shuffle=False))), next(iter(prompts.batches(n, shuffle=False)))


def test_the_score_is_the_published_mix_of_image_and_text_similarity():
    method = make(lam=0.3)
    dim = method.features.tower.dim
    prototypes = torch.nn.functional.normalize(torch.randn(2, dim), dim=-1)
    method.bank.prototypes = lambda tasks: prototypes[tasks]
    image = torch.nn.functional.normalize(torch.randn(3, dim), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(3, dim), dim=-1)
    has_image = torch.tensor([True, True, False])
    method.features = SimpleNamespace(image_features=lambda b: (image, has_image), text_features=lambda b: text,
                                      tower=method.features.tower)
    scores = method.scores(None, [0, 1])
    expected = 0.3 * image @ prototypes.T + 0.7 * text @ prototypes.T
    expected[2] = (text @ prototypes.T)[2]  # no image: the text term alone
    assert torch.allclose(scores, expected, atol=1e-6)


def test_only_the_current_tasks_prompts_and_mlp_learn_and_the_model_stays_bit_identical(synthetic_data):
    method = make()
    model = method.backbone.model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("prism_modules.")}
    method.begin_task(task(0))
    method.end_task(task(0), None)
    method.begin_task(task(1))  # task 0's prompt is inserted too (transfer_num 2)
    train, _ = batches(method, synthetic_data, SPECS[1])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(method.bank.prompts[1]), *map(id, method.bank.mlps[1].parameters())}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    before = method.bank.prompts[0].detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        plan = method.prepare_forward(train, ForwardContext("train"))
        assert plan.inputs["inputs_embeds"].shape[1] == train.input_ids.shape[1] + 2 * 3
        loss = method.loss(task(1), train, model(**plan.inputs))
        loss.backward()
        assert method.bank.prompts[0].grad is None and all(p.grad is None for p in method.bank.mlps[0].parameters())
        assert method.bank.prompts[1].grad.abs().sum() > 0
        assert all(p.grad is not None for p in method.bank.mlps[1].parameters())  # the CLIP-alignment terms
        optimizer.step()
    assert torch.equal(method.bank.prompts[0], before)
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name


def test_prompts_go_right_after_bos_in_training_and_in_generation(synthetic_data):
    method = make(transfer_num=1)
    method.begin_task(task(0))
    train, prompt = batches(method, synthetic_data, SPECS[0])
    size = method.params.prefix_len
    with torch.no_grad():
        for batch, phase in ((train, "train"), (prompt, "eval")):
            if phase == "eval":
                method.end_task(task(0), None)
                method.prepare_inference(task(0))
            inputs = method.prepare_forward(batch, ForwardContext(phase)).inputs
            embeds = method.backbone.model.get_input_embeddings()(batch.input_ids)
            for row in range(len(batch)):
                first = int(batch.attention_mask[row].float().argmax())  # BOS (left padding moves it)
                at = first + 1
                assert torch.equal(inputs["inputs_embeds"][row, at:at + size], method.bank.prompts[0])
                assert torch.equal(inputs["inputs_embeds"][row, first], embeds[row, first])
                assert inputs["attention_mask"][row, at:at + size].tolist() == [1] * size
                if phase == "train":
                    assert inputs["labels"][row, at:at + size].tolist() == [-100] * size


def test_a_run_records_the_prompts_each_prediction_used(shared_run):
    import json

    project, resolved, _ = shared_run("benchmark.tasks='0-1'", method="modal_prompt")
    folder = resolved.output_dir / "predictions" / "synthetic" / "modal_prompt" / "Task1_llava"
    lines = [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]
    routed = [line["metadata"]["routing"] for line in lines if "question_id" in line]
    assert routed and all(set(r) == set(NAMES[:2]) and abs(sum(r.values()) - 1) < 1e-4 for r in routed)
    metrics = json.loads((resolved.output_dir / "results" / "synthetic" / "modal_prompt" / "cl_metrics.json")
                         .read_text())
    assert set(metrics["routing_accuracy"]) == set(NAMES[:2])
    state = resolved.output_dir / "checkpoints" / "synthetic" / "modal_prompt" / "Task1_llava"
    assert not (state / "adapter_model.safetensors").exists()  # no LoRA: prompts and MLPs only
