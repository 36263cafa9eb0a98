"""What a loaded backbone gives the rest of prism."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from prism.backbones.template import ConversationTemplate
    from prism.config.schema import BackboneConfig

#: Target-module presets: regexes over module paths of transformers-5 LLaVA models
#: (``model.language_model.layers.N.self_attn.q_proj`` ...). Language model only.
TARGET_PRESETS: dict[str, str] = {
    "attn": r"model\.language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
    "ffn": r"model\.language_model\.layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)",
    "attn_and_ffn": (
        r"model\.language_model\.layers\.\d+\."
        r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
    ),
    "all_linear": r"model\.language_model\.layers\.\d+\..*_proj",
}


@dataclass
class LoadedBackbone:
    """A model ready for prism: the transformers model plus how to talk to it."""

    backbone_id: str  # registry id ("llava")
    model_path: str  # what the user configured ("builtin:tiny-llava", a folder, a hub id)
    resolved_path: str  # a local folder holding config.json and weights
    model: Any  # transformers PreTrainedModel (LlavaForConditionalGeneration)
    tokenizer: Any
    image_processor: Any
    template: "ConversationTemplate"
    num_image_tokens: int  # how many image tokens one <image> expands into
    image_token: str = "<image>"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(self.image_token))

    def target_regex(self, preset_or_regex: str) -> str:
        return TARGET_PRESETS.get(preset_or_regex, preset_or_regex)


class Backbone:
    """A registered backbone family; ``load`` builds a LoadedBackbone from the config.

    ``load`` reads ``config.train_precision`` for how to load the weights (the
    engine sets it to ``[infer] precision`` when it loads for ``prism infer``; see
    ``prism.backbones.precision``). A backbone that carries a full CLIP model
    (vision + text towers) may name its folder in ``LoadedBackbone.extra["clip_folder"]``:
    routing methods then use it when ``[backbone] routing_tower`` is not set.
    """

    id: ClassVar[str] = ""
    #: What ``[backbone] model`` may name, one line each (``prism backbones show ID`` prints them).
    formats: ClassVar[tuple[str, ...]] = ()

    def load(self, config: "BackboneConfig", *, device: Any = "cpu") -> LoadedBackbone:
        raise NotImplementedError
