"""The routing tower: CLIP embeddings for routing methods, the shipped tiny CLIP, dimension checks."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from prism.backbones import routing, tiny_clip
from prism.backbones.base import LoadedBackbone
from prism.backbones.llava import assets_dir
from prism.backbones.routing import (RoutingTower, check_feature_dim, default_source, instruction_text,
                                     load_routing_tower, routing_tower_for)
from prism.backbones.template import get_template
from prism.benchmarks import synthetic as syn
from prism.errors import CheckpointError, ConfigError

SHIPPED = assets_dir() / "tiny-clip"


@pytest.fixture(scope="module")
def tower() -> RoutingTower:
    return load_routing_tower("builtin:tiny-clip")


def _scenes(seed: int, n: int, items: int = 1) -> list[syn.Scene]:
    rng = random.Random(seed)
    return [syn.random_scene(rng, items) for _ in range(n)]


def _backbone(**extra) -> LoadedBackbone:
    """A LoadedBackbone without a model worth loading: routing only reads extra and the device."""
    return LoadedBackbone(backbone_id="llava", model_path="some/llava", resolved_path="/nowhere",
                          model=torch.nn.Linear(2, 2), tokenizer=None, image_processor=None,
                          template=get_template("tiny"), num_image_tokens=36, extra=dict(extra))


# -- the shipped tiny CLIP --------------------------------------------------------------------
def test_shipped_tiny_clip_is_small_and_current():
    meta = json.loads((SHIPPED / tiny_clip.METADATA_FILE).read_text())
    assert meta["vocabulary_sha256"] == tiny_clip.vocabulary_hash(tiny_clip.vocabulary()), (
        "rebuild: python -m prism.backbones.tiny_clip build --out src/prism/assets/tiny-clip")
    assert meta["builder_version"] == tiny_clip.BUILDER_VERSION and meta["steps"] >= 300
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) < 1_000_000
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["model_type"] == "clip" and config["projection_dim"] == tiny_clip.PROJECTION_DIM
    # transformers' CLIP text model pools at argmax(ids) when eos_token_id is 2: never ours
    assert config["text_config"]["eos_token_id"] != 2


def test_tokenizer_covers_benchmark_texts_and_ends_with_eos():
    tok = tiny_clip.build_tokenizer()
    for text in syn.vocabulary_texts() + [tiny_clip.caption(s) for s in _scenes(0, 20, 3)]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id, text
        assert tok.unk_token_id not in ids, text
    assert tok("RED Circle")["input_ids"] == tok("red circle")["input_ids"]  # lower-cased like CLIP


def test_untrained_build_is_deterministic():
    a, _, _ = tiny_clip.build_untrained(seed=3)
    b, _, _ = tiny_clip.build_untrained(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert 100_000 < sum(p.numel() for p in a.parameters()) < 250_000


def test_build_smoke_and_pretraining_is_deterministic(tmp_path):
    out = tiny_clip.build(tmp_path / "clip", steps=3, batch_size=8)
    again = tiny_clip.build(tmp_path / "again", steps=3, batch_size=8)
    assert (out / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    meta = json.loads((out / tiny_clip.METADATA_FILE).read_text())
    assert meta["steps"] == 3 and meta["final_loss"] > 0
    assert load_routing_tower(str(out)).dim == tiny_clip.PROJECTION_DIM


# -- embeddings -------------------------------------------------------------------------------
def test_embeddings_shape_normalisation_and_dim(tower):
    images = [syn.render_scene(s) for s in _scenes(1, 5)]
    img = tower.image_embeddings(images)
    txt = tower.text_embeddings([t.question for t in syn.TASKS])
    assert tower.dim == tiny_clip.PROJECTION_DIM
    assert img.shape == (5, tower.dim) and txt.shape == (len(syn.TASKS), tower.dim)
    assert img.dtype == torch.float32 and not img.requires_grad
    assert torch.allclose(img.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(len(syn.TASKS)), atol=1e-5)
    assert tower.image_embeddings([]).shape == (0, tower.dim)


def test_batching_and_repeats_do_not_change_embeddings(tower):
    images = [syn.render_scene(s) for s in _scenes(2, 7)]
    whole = tower.image_embeddings(images)
    small = RoutingTower(tower.model, tower.tokenizer, tower.image_processor, source="x", batch_size=3)
    assert torch.allclose(small.image_embeddings(images), whole, atol=1e-5)
    again = tower.image_embeddings([images[0], images[0].convert("RGBA")])
    assert torch.equal(again[0], again[1])  # same image (converted to RGB) -> identical embedding
    assert torch.allclose(again[0], whole[0], atol=1e-5)
    texts = [t.question for t in syn.TASKS]
    assert torch.allclose(small.text_embeddings(texts), tower.text_embeddings(texts), atol=1e-5)


def test_loading_twice_gives_identical_embeddings(tower):
    images = [syn.render_scene(s) for s in _scenes(4, 3)]
    other = load_routing_tower("builtin:tiny-clip")
    assert torch.equal(other.image_embeddings(images), tower.image_embeddings(images))
    assert other.fingerprint == tower.fingerprint


def test_the_same_tower_in_another_folder_keeps_its_fingerprint(tower, tmp_path):
    """The fingerprint names the tower, not where it is installed (it held the folder path through
    the config's _name_or_path, so a checkpoint's anchors were refused from another checkout)."""
    import shutil

    from prism.backbones.routing import resolve_tower_folder

    copy = tmp_path / "elsewhere" / "tiny-clip"
    shutil.copytree(resolve_tower_folder("builtin:tiny-clip"), copy)
    moved = load_routing_tower(str(copy))
    assert moved.fingerprint == tower.fingerprint
    with (copy / "config.json").open("r+", encoding="utf-8") as handle:
        text = handle.read().replace('"projection_dim"', '"projection_dim_unused": 1, "projection_dim"', 1)
        handle.seek(0), handle.write(text), handle.truncate()
    assert load_routing_tower(str(copy)).fingerprint != tower.fingerprint


def test_image_placeholder_is_not_part_of_the_instruction(tower):
    question = syn.TASKS[0].question
    assert instruction_text("<image>\n" + question) == " ".join(question.split())
    with_image, plain = tower.text_embeddings(["<image>\n" + question, question])
    assert torch.equal(with_image, plain)


def test_same_colour_images_are_closer_than_different_colours(tower):
    scenes = _scenes(5, 150)
    emb = tower.image_embeddings([syn.render_scene(s) for s in scenes])
    colours = [s.items[0].colour for s in scenes]
    same = torch.tensor([[a == b for b in colours] for a in colours])
    off_diagonal = ~torch.eye(len(scenes), dtype=torch.bool)
    sim = emb @ emb.T
    within, across = sim[same & off_diagonal].mean(), sim[~same].mean()
    assert within > across + 0.2, (float(within), float(across))


def test_task_instructions_embed_apart(tower):
    """The text-views pre-training spreads instructions (captions alone left two tasks at 0.91)."""
    emb = tower.text_embeddings([t.question for t in syn.TASKS])
    sim = emb @ emb.T
    off_diagonal = sim[~torch.eye(len(syn.TASKS), dtype=torch.bool)]
    assert off_diagonal.max() < 0.8, sim


def test_task_anchors_route_test_images_and_instructions(tower):
    """Per-task anchors (HiDe-LLaVA style) pick the right task for held-out inputs."""
    rng = random.Random(7)
    tasks = {t.spec.name: t for t in syn.TASKS}
    names = ["colour", "caption"]  # one shape vs two shapes side by side

    def images(name: str, n: int) -> list:
        return [syn.render_scene(tasks[name].make_scene(rng)) for _ in range(n)]

    anchors = torch.stack([tower.image_embeddings(images(n, 40)).mean(0) for n in names])
    text_anchors = tower.text_embeddings([tasks[n].question for n in names])
    by_image = by_both = 0
    for index, name in enumerate(names):
        score = tower.image_embeddings(images(name, 30)) @ anchors.T
        by_image += int((score.argmax(-1) == index).sum())
        score = score + tower.text_embeddings([tasks[name].question] * 30) @ text_anchors.T
        by_both += int((score.argmax(-1) == index).sum())
    assert by_both / 60 > 0.95
    assert by_image / 60 > 0.75  # the untrained tower: 0.68


# -- dimension checks -----------------------------------------------------------------------
def test_check_feature_dim_names_both_dimensions_and_the_setting(tower):
    check_feature_dim(torch.zeros(3, 32), 32, "anchors")
    check_feature_dim(32, torch.zeros(32), "anchors")
    with pytest.raises(ConfigError) as info:
        check_feature_dim(torch.zeros(4, 1024), tower.dim, "hide_llava image anchors",
                          tower="builtin:tiny-clip")
    text = str(info.value)
    assert "1024" in text and "32" in text and "hide_llava image anchors" in text
    assert "routing_tower" in text and "builtin:tiny-clip" in text
    with pytest.raises(CheckpointError, match="768"):
        tower.check_features(torch.zeros(2, 768), "Task1_llava/prism_state.safetensors", error=CheckpointError)
    tower.check_features(tower.text_embeddings(["red"]), "prototypes")


# -- choosing the tower -------------------------------------------------------------------------
def test_missing_tower_error_says_what_to_set():
    with pytest.raises(ConfigError) as info:
        default_source(_backbone())
    text = str(info.value)
    assert "[backbone] routing_tower" in text and "some/llava" in text and "CLIP" in text
    assert "routing_tower = " in text  # the hint shows a setting to copy


def test_vision_only_tower_is_not_enough(tmp_path):
    folder = tmp_path / "vision_only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(ConfigError, match="is not a full CLIP"):
        default_source(_backbone(clip_folder=str(folder)))
    with pytest.raises(ConfigError, match="text tower"):
        load_routing_tower(str(folder))


def test_default_is_the_backbones_own_clip_then_the_tiny_companion(tmp_path):
    folder = tmp_path / "clip"
    shutil.copytree(SHIPPED, folder)
    assert default_source(_backbone(clip_folder=str(folder))) == str(folder)
    original = {"vision_tower": str(folder), "vision_tower_kind": "clip"}
    assert default_source(_backbone(original_llava=original)) == str(folder)
    assert default_source(_backbone(prism_tiny={"builder": "prism.backbones.tiny"})) == "builtin:tiny-clip"


def test_bad_settings_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"routing_tower = 'builtin:nope'.*builtin:tiny-clip"):
        load_routing_tower("builtin:nope")
    with pytest.raises(ConfigError, match="builtin CLIP"):
        load_routing_tower("builtin:tiny-llava")  # a LLaVA, not a CLIP
    with pytest.raises(ConfigError, match="not a folder or a hub id"):
        load_routing_tower(str(tmp_path / "missing" / "clip"))
    with pytest.raises(ConfigError, match="could not be fetched"):  # HF_HUB_OFFLINE=1 in tests
        load_routing_tower("nobody/no-such-clip")


def test_routing_tower_for_is_lazy_cached_and_follows_the_setting(tmp_path):
    backbone = _backbone(prism_tiny={"builder": "prism.backbones.tiny"})
    first = routing_tower_for(None, backbone)
    assert first.source == "builtin:tiny-clip" and routing_tower_for(None, backbone) is first
    folder = tmp_path / "clip"
    shutil.copytree(SHIPPED, folder)
    backbone.extra[routing.SETTING] = str(folder)  # what the engine records from [backbone] routing_tower
    chosen = routing_tower_for(None, backbone)
    assert chosen.source == str(folder) and chosen is not first
    from prism.config.schema import PrismConfig

    config = PrismConfig.model_validate({"backbone": {"routing_tower": "builtin:tiny-clip"}})
    assert routing_tower_for(config, backbone) is first  # an explicit setting wins
    assert routing_tower_for(config.backbone, backbone) is first
    with pytest.raises(ConfigError, match="routing_tower"):
        routing_tower_for(None, _backbone())


def test_engine_records_the_setting_relative_to_the_project(tmp_path):
    from prism.engine.session import _project_path

    (tmp_path / "towers" / "clip").mkdir(parents=True)
    assert _project_path("towers/clip", tmp_path) == str(tmp_path / "towers" / "clip")
    assert _project_path("builtin:tiny-clip", tmp_path) == "builtin:tiny-clip"
    assert _project_path("openai/clip-vit-large-patch14-336", tmp_path) == "openai/clip-vit-large-patch14-336"
    assert _project_path("", tmp_path) is None and _project_path(None, tmp_path) is None


# -- anchors: the stored side of routing ------------------------------------------------------
def _other_tower(projection_dim: int) -> RoutingTower:
    from transformers import CLIPModel

    model, tok, processor = tiny_clip.build_untrained(seed=1)
    config = model.config
    config.projection_dim = projection_dim
    torch.manual_seed(0)
    return RoutingTower(CLIPModel(config), tok, processor, source=f"other-{projection_dim}d")


def test_task_anchors_average_and_score(tower):
    from prism.backbones.anchors import TaskAnchors

    anchors = TaskAnchors.for_tower("image", tower)
    red = tower.image_embeddings([syn.render_scene(s) for s in _scenes(11, 40) if s.items[0].colour == "red"])
    blue = tower.image_embeddings([syn.render_scene(s) for s in _scenes(12, 40) if s.items[0].colour == "blue"])
    anchors.add("red", red[:2])
    anchors.add("red", red[2:])  # running mean over both calls
    anchors.add("blue", blue)
    assert anchors.tasks == ["red", "blue"]
    expected = torch.nn.functional.normalize(red.mean(0), dim=0)
    assert torch.allclose(anchors.matrix(["red"])[0], expected, atol=1e-5)
    scores = anchors.similarities(torch.cat([red, blue]))
    assert scores.shape == (len(red) + len(blue), 2)
    assert (scores.argmax(-1) == torch.tensor([0] * len(red) + [1] * len(blue))).all()
    with pytest.raises(ConfigError, match="no image anchors for task"):
        anchors.matrix(["green"])
    with pytest.raises(ConfigError, match="1024"):
        anchors.add("red", torch.zeros(2, 1024))  # backbone vision states, not CLIP embeddings


def test_anchors_from_a_checkpoint_must_fit_the_tower(tower):
    from prism.backbones.anchors import TaskAnchors

    anchors = TaskAnchors.for_tower("text", tower)
    anchors.add("colour", tower.text_embeddings([syn.TASKS[0].question]))
    tensors, meta = anchors.state_dict(), anchors.metadata()
    back = TaskAnchors.from_state(tensors, meta, tower, "Task0_llava")
    assert torch.equal(back.matrix(), anchors.matrix())
    with pytest.raises(CheckpointError) as info:
        TaskAnchors.from_state(tensors, meta, _other_tower(16), "Task0_llava")
    assert "32" in str(info.value) and "16" in str(info.value) and "routing_tower" in str(info.value)
    with pytest.raises(CheckpointError, match="made by routing tower 'builtin:tiny-clip'"):
        TaskAnchors.from_state(tensors, meta, _other_tower(32), "Task0_llava")  # same size, other tower
