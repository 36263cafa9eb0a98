"""Loading, validation, encoding (label masking) and batching of benchmark data."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from prism.backbones.llava import LlavaBackbone
from prism.benchmarks.base import TaskSpec
from prism.benchmarks.data import (
    IGNORE_INDEX,
    TASK_KEY,
    TaskDataset,
    collate,
    encode_prompt,
    encode_text,
    encode_train,
    load_test_records,
    load_train_records,
    resolve_image,
)
from prism.errors import DataError
from tests.benchmarks.bad_images import bomb_png

TASK = TaskSpec("demo", "demo/train.json", "demo/test.json", "exact_match", image_root="demo")


@pytest.fixture(scope="module")
def backbone():
    return LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))


def _record(answer: str = "red", image: str | None = "images/a.png", question: str = "What colour is the shape?"):
    record = {"id": "r0", "conversations": [
        {"from": "human", "value": ("<image>\n" if image else "") + question},
        {"from": "gpt", "value": answer}]}
    if image:
        record["image"] = image
    return record


@pytest.fixture
def root(tmp_path: Path) -> Path:
    images = tmp_path / "demo" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (48, 48), (200, 30, 30)).save(images / "a.png")
    Image.new("RGB", (64, 40), (30, 30, 200)).save(images / "b.png")
    return tmp_path


def _write(root: Path, rel: str, data) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _supervised_text(backbone, sample) -> str:
    ids = sample.input_ids[sample.labels != IGNORE_INDEX]
    return backbone.tokenizer.decode(ids)


# -- loading and validation ----------------------------------------------------------------
def test_load_train_records_and_cap(root):
    _write(root, TASK.train_file, [_record(), _record("blue", image=None), _record("green")])
    assert len(load_train_records(root, TASK)) == 3
    assert [r["conversations"][1]["value"] for r in load_train_records(root, TASK, max_samples=2)] == ["red", "blue"]


def test_missing_file_names_expected_path(root):
    with pytest.raises(DataError) as err:
        load_train_records(root, TASK)
    assert str(root / TASK.train_file) in str(err.value)
    with pytest.raises(DataError, match="test.json"):
        load_test_records(root, TASK)


@pytest.mark.parametrize("bad, problem", [
    ({"id": "x"}, "conversations"),
    ({"conversations": [{"from": "gpt", "value": "a"}]}, "expected 'human'"),
    ({"conversations": [{"from": "human", "value": "q"}]}, "ends with a human turn"),
    ({"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}]}, "string 'value'"),
    ({"conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}, "no 'image'"),
    ({"image": "images/a.png", "conversations": [{"from": "human", "value": "<image><image>q"},
                                                 {"from": "gpt", "value": "a"}]}, "2 <image>"),
    ({"image": ["a.png", "b.png"], "conversations": [{"from": "human", "value": "q"},
                                                     {"from": "gpt", "value": "a"}]}, "multi-image"),
    ("not an object", "expected an object"),
])
def test_malformed_train_record_names_file_and_index(root, bad, problem):
    path = _write(root, TASK.train_file, [_record(), _record(), bad])
    with pytest.raises(DataError) as err:
        load_train_records(root, TASK)
    message = str(err.value)
    assert str(path) in message and "record 2" in message and problem in message


def test_not_json_and_not_a_list(root):
    path = root / TASK.train_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match="cannot read"):
        load_train_records(root, TASK)
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(DataError, match="JSON list"):
        load_train_records(root, TASK)


def test_test_records_validated(root):
    good = {"question_id": 1, "image": "images/a.png", "text": "q", "answer": "red"}
    _write(root, TASK.test_file, [good, {**good, "question_id": "b", "answer": ["x", "y"]}])
    assert len(load_test_records(root, TASK)) == 2
    _write(root, TASK.test_file, [good, {**good, "question_id": 2}, {**good}])
    with pytest.raises(DataError, match="record 2: question_id 1 repeats record 0"):
        load_test_records(root, TASK)
    _write(root, TASK.test_file, [good, {"question_id": 2, "text": "q"}])
    with pytest.raises(DataError, match="record 1: 'answer'"):
        load_test_records(root, TASK)


# -- images ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", ["../outside.png", "images/../../outside.png", "/etc/passwd"])
def test_escaping_image_path_rejected(root, rel):
    with pytest.raises(DataError, match="escapes|absolute"):
        resolve_image(root, TASK, rel)


def test_resolve_image_inside_root(root):
    assert resolve_image(root, TASK, "images/./a.png") == (root / "demo" / "images" / "a.png").resolve()


def test_symlink_leading_out_of_the_image_root_is_rejected(root, backbone):
    outside = root / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    (root / "demo" / "images" / "link.png").symlink_to(outside / "secret.png")
    (root / "demo" / "images" / "linked_dir").symlink_to(outside, target_is_directory=True)
    for rel in ("images/link.png", "images/linked_dir/secret.png"):
        with pytest.raises(DataError, match="leads through a symlink to .*secret.png, outside the image root"):
            resolve_image(root, TASK, rel)
    with pytest.raises(DataError) as err:  # the encoders (training and evaluation) refuse it too
        encode_prompt({"question_id": 3, "image": "images/link.png", "text": "q", "answer": "a"},
                      backbone, root, TASK)
    assert "outside the image root" in str(err.value) and "question_id 3" in str(err.value)
    assert str(root / TASK.test_file) in str(err.value)


def test_symlinks_that_stay_inside_the_image_root_are_fine(tmp_path, root):
    (root / "demo" / "images" / "alias.png").symlink_to(root / "demo" / "images" / "a.png")
    assert resolve_image(root, TASK, "images/alias.png") == (root / "demo" / "images" / "a.png").resolve()
    linked = tmp_path / "linked_root"  # the image root itself a link (to shared storage, say)
    linked.mkdir()
    (linked / "demo").symlink_to(root / "demo", target_is_directory=True)
    assert resolve_image(linked, TASK, "images/a.png") == (root / "demo" / "images" / "a.png").resolve()


def test_escaping_path_in_record_is_rejected_when_encoding(root, backbone):
    with pytest.raises(DataError, match="escapes"):
        encode_train(_record(image="../../x.png"), backbone, root, TASK)


def test_missing_and_corrupt_images_name_the_file(root, backbone):
    with pytest.raises(DataError) as err:
        encode_train(_record(image="images/nope.png"), backbone, root, TASK)
    assert "nope.png" in str(err.value) and "'r0'" in str(err.value)
    (root / "demo" / "images" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError) as err:
        encode_prompt({"question_id": 7, "image": "images/bad.png", "text": "q", "answer": "a"},
                      backbone, root, TASK)
    assert "bad.png" in str(err.value) and "question_id 7" in str(err.value)


def test_bomb_png_is_what_pillow_refuses(tmp_path):
    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 100
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)


def test_decompression_bomb_is_a_data_error_naming_file_and_record(root, backbone):
    bomb_png(root / "demo" / "images" / "bomb.png")
    records = [_record(), {**_record("blue"), "id": "r-bomb", "image": "images/bomb.png"}]
    dataset = TaskDataset(records, backbone=backbone, root=root, specs=TASK)  # reads no image yet
    with pytest.raises(DataError) as err:  # training: the dataset the engine builds, when the record is read
        dataset[1]
    message = str(err.value)
    assert "cannot decode image" in message and str(root / "demo" / "images" / "bomb.png") in message
    assert "DecompressionBombError" in message and "'r-bomb'" in message
    assert str(root / TASK.train_file) in message and "prism data check" in message
    prompts = [{"question_id": "q-bomb", "image": "images/bomb.png", "text": "q", "answer": "a"}]
    with pytest.raises(DataError) as err:  # evaluation: the prompts
        TaskDataset(prompts, backbone=backbone, root=root, specs=TASK, prompts=True)[0]
    assert "DecompressionBombError" in str(err.value) and "question_id 'q-bomb'" in str(err.value)
    assert str(root / TASK.test_file) in str(err.value)


# -- encoding ---------------------------------------------------------------------------------
def test_only_answer_tokens_are_supervised(root, backbone):
    sample = encode_train(_record("red"), backbone, root, TASK)
    assert _supervised_text(backbone, sample) == "red </s>"
    assert sample.input_ids[0] == backbone.tokenizer.bos_token_id
    assert int((sample.input_ids == backbone.image_token_id).sum()) == backbone.num_image_tokens == 36
    assert sample.pixel_values.shape == (3, 48, 48)
    assert sample.instruction == "What colour is the shape?"
    # the image tokens come first and are never labelled
    assert (sample.labels[sample.input_ids == backbone.image_token_id] == IGNORE_INDEX).all()


def test_non_square_image_is_processed_to_the_model_size(root, backbone):
    sample = encode_train(_record(image="images/b.png"), backbone, root, TASK)
    assert sample.pixel_values.shape == (3, 48, 48)


def test_record_without_image(root, backbone):
    sample = encode_train(_record("blue", image=None), backbone, root, TASK)
    assert sample.pixel_values is None
    assert int((sample.input_ids == backbone.image_token_id).sum()) == 0
    assert _supervised_text(backbone, sample) == "blue </s>"


def test_image_placeholder_added_when_text_lacks_it(root, backbone):
    record = _record()
    record["conversations"][0]["value"] = "What colour is the shape?"
    sample = encode_train(record, backbone, root, TASK)
    assert int((sample.input_ids == backbone.image_token_id).sum()) == 36
    prompt = encode_prompt({"question_id": 1, "image": "images/a.png", "text": "Describe the image.",
                            "answer": "x"}, backbone, root, TASK)
    assert int((prompt.input_ids == backbone.image_token_id).sum()) == 36


def test_multi_turn_supervises_every_answer(root, backbone):
    record = {"id": "m", "image": "images/a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the shape?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "How many shapes are in the image?"},
        {"from": "gpt", "value": "there is one shape"}]}
    sample = encode_train(record, backbone, root, TASK)
    assert _supervised_text(backbone, sample) == "red </s> there is one shape </s>"
    text = backbone.tokenizer.decode(sample.input_ids, skip_special_tokens=True)
    assert "ASSISTANT : red" in text and "USER : How many" in text
    assert sample.instruction == "What colour is the shape?"


def test_prompt_ends_with_assistant_role(root, backbone):
    sample = encode_prompt({"question_id": 3, "image": "images/a.png", "text": "What colour is the shape?",
                            "answer": "red"}, backbone, root, TASK)
    assert sample.labels is None
    tail = backbone.tokenizer.convert_ids_to_tokens(sample.input_ids[-2:].tolist())
    assert tail == ["ASSISTANT", ":"]
    assert "red" not in backbone.tokenizer.decode(sample.input_ids)


def test_vicuna_template_labels_with_offsets(root, backbone):
    """The long LLaVA-1.5 system prompt is unsupervised like every other prompt text."""
    from dataclasses import replace

    from prism.backbones.template import get_template

    vicuna = replace(backbone, template=get_template("vicuna_v1"))
    ids, labels = encode_text([("human", "What colour is the shape?"), ("gpt", "red")], vicuna,
                              num_images=0, add_generation_prompt=False)
    assert backbone.tokenizer.decode(ids[labels != IGNORE_INDEX]) == "red </s>"


def test_sentencepiece_style_tokenizer_labels(backbone):
    """Tokens like '▁red' carry the space before the word; they still count as answer tokens."""
    from dataclasses import replace

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>", "<image>"],
                                  show_progress=False)
    corpus = ["USER: What colour is the shape? ASSISTANT: dark red", "a red circle next to a blue square"] * 20
    core.train_from_iterator(corpus, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  extra_special_tokens={"image_token": "<image>"})
    fake = replace(backbone, tokenizer=tok)
    ids, labels = encode_text([("human", "What colour is the shape?"), ("gpt", "dark red")], fake,
                              num_images=0, add_generation_prompt=False)
    supervised = tok.convert_ids_to_tokens(ids[labels != IGNORE_INDEX].tolist())
    assert "".join(supervised).replace("▁", " ").strip() == "dark red</s>"


# -- batches ---------------------------------------------------------------------------------
def _samples(root, backbone):
    return [encode_train(_record("red"), backbone, root, TASK),
            encode_train(_record("there is one shape", image=None), backbone, root, TASK),
            encode_train(_record("blue", image="images/b.png"), backbone, root, TASK)]


def test_right_padding_for_training(root, backbone):
    samples = _samples(root, backbone)
    pad = backbone.tokenizer.pad_token_id
    batch = collate(samples, pad_token_id=pad, padding_side="right")
    length = max(len(s.input_ids) for s in samples)
    assert batch.input_ids.shape == (3, length)
    short = len(samples[1].input_ids)
    assert (batch.input_ids[1, short:] == pad).all() and (batch.attention_mask[1, short:] == 0).all()
    assert (batch.labels[1, short:] == IGNORE_INDEX).all()
    assert torch.equal(batch.input_ids[1, :short], samples[1].input_ids)
    # images of the samples that have one, in batch order
    assert batch.pixel_values.shape == (2, 3, 48, 48)
    assert torch.equal(batch.pixel_values[1], samples[2].pixel_values)
    assert set(batch.model_inputs()) == {"input_ids", "attention_mask", "labels", "pixel_values"}


def test_left_padding_for_generation(root, backbone):
    prompts = [encode_prompt({"question_id": 1, "image": "images/a.png", "text": "q", "answer": "a"},
                             backbone, root, TASK),
               encode_prompt({"question_id": 2, "text": "Repeat the words: red", "answer": "red"},
                             backbone, root, TASK)]
    pad = backbone.tokenizer.pad_token_id
    batch = collate(prompts, pad_token_id=pad, padding_side="left")
    short = len(prompts[1].input_ids)
    assert (batch.input_ids[1, -short:] == prompts[1].input_ids).all()
    assert (batch.input_ids[1, :-short] == pad).all() and (batch.attention_mask[1, :-short] == 0).all()
    assert batch.labels is None and "labels" not in batch.model_inputs()
    assert batch.pixel_values.shape[0] == 1
    with pytest.raises(ValueError):
        collate(prompts, pad_token_id=pad, padding_side="middle")


def test_batch_without_images_and_forward(root, backbone):
    samples = _samples(root, backbone)
    text_only = collate([samples[1]], backbone.tokenizer.pad_token_id, "right")
    assert text_only.pixel_values is None and "pixel_values" not in text_only.model_inputs()
    mixed = collate(samples, backbone.tokenizer.pad_token_id, "right").to("cpu")
    with torch.no_grad():
        out = backbone.model(**mixed.model_inputs())
    assert torch.isfinite(out.loss)


def test_generation_on_left_padded_batch(root, backbone):
    """Left padding (with the attention mask) must not change what each prompt generates."""
    prompts = [encode_prompt({"question_id": 1, "image": "images/a.png", "text": "Describe the image.",
                              "answer": "x"}, backbone, root, TASK),
               encode_prompt({"question_id": 2, "image": "images/b.png",
                              "text": "How many shapes do you see? Tell me about this picture.", "answer": "x"},
                             backbone, root, TASK),
               encode_prompt({"question_id": 9, "text": "Repeat the words: red A 3", "answer": "x"},
                             backbone, root, TASK)]
    tok = backbone.tokenizer

    def generate(samples):
        batch = collate(samples, tok.pad_token_id, "left")
        with torch.no_grad():
            out = backbone.model.generate(**batch.model_inputs(), max_new_tokens=6, do_sample=False)
        return tok.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)

    together = generate(prompts)
    assert together == [generate([p])[0] for p in prompts]


def test_task_dataset_batches_are_deterministic(root, backbone):
    records = [_record(c) for c in ("red", "blue", "green", "yellow", "purple")]
    ds = TaskDataset(records, backbone=backbone, root=root, specs=TASK)
    assert len(ds) == 5

    def answers(batches):
        return [[r["conversations"][1]["value"] for r in b.records] for b in batches]

    first = answers(ds.batches(2, generator=torch.Generator().manual_seed(3)))
    again = answers(ds.batches(2, generator=3))
    assert first == again and [len(b) for b in first] == [2, 2, 1]
    assert sorted(sum(first, [])) == sorted(["red", "blue", "green", "yellow", "purple"])
    gen = torch.Generator().manual_seed(3)
    epoch1, epoch2 = answers(ds.batches(2, generator=gen)), answers(ds.batches(2, generator=gen))
    assert epoch1 == first and epoch2 != epoch1
    assert [len(b) for b in answers(ds.batches(2, generator=1, drop_last=True))] == [2, 2]
    assert answers(ds.batches(5, shuffle=False)) == [["red", "blue", "green", "yellow", "purple"]]
    batch = next(ds.batches(5, shuffle=False))
    assert batch.labels is not None and batch.task_indices == [0] * 5


def test_task_dataset_routes_records_to_their_task(root, backbone):
    other = TaskSpec("other", "other/train.json", "other/test.json", "exact_match", image_root="demo")
    specs = {"demo": TASK, "other": other}
    records = [{**_record("red"), TASK_KEY: "other"}, {**_record("blue"), TASK_KEY: "demo"}]
    ds = TaskDataset(records, backbone=backbone, root=root, specs=specs)
    batch = next(ds.batches(2, shuffle=False))
    assert batch.task_indices == [1, 0]
    assert batch.instructions == ["What colour is the shape?"] * 2
    with pytest.raises(DataError, match="nope"):
        TaskDataset([{**_record(), TASK_KEY: "nope"}], backbone=backbone, root=root, specs=specs)


def test_prompt_dataset_pads_left(root, backbone):
    records = [{"question_id": 1, "image": "images/a.png", "text": "q", "answer": "a"},
               {"question_id": 2, "text": "a much longer question without any image at all", "answer": "b"}]
    ds = TaskDataset(records, backbone=backbone, root=root, specs=TASK, prompts=True)
    batch = next(ds.batches(2, shuffle=False))
    assert batch.labels is None
    assert (batch.attention_mask[:, -1] == 1).all()
