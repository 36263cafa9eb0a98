"""Conversation templates: how a list of chat turns becomes one prompt string.

``render`` returns text *segments* with a flag saying whether the model is
trained to produce them. The encoder tokenises the joined text once and labels
a token only if it lies inside a supervised segment, so the template decides
what is learned (assistant answers and their end separator) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

#: LLaVA-1.5's system prompt (``conv_vicuna_v1`` in the LLaVA repository).
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

_HUMAN_ROLES = frozenset({"human", "user"})
_ASSISTANT_ROLES = frozenset({"gpt", "assistant"})


@dataclass(frozen=True)
class ConversationTemplate:
    """A two-separator chat format (LLaVA's ``SeparatorStyle.TWO``).

    ``{system}{sep}USER: {q}{sep}ASSISTANT: {a}{sep2}USER: ...`` — ``sep`` ends a
    user turn, ``sep2`` (the end-of-sequence token) ends an assistant turn.
    """

    name: str
    system: str
    user_role: str = "USER"
    assistant_role: str = "ASSISTANT"
    sep: str = " "
    sep2: str = "</s>"

    def render(self, turns: list[tuple[str, str]], add_generation_prompt: bool) -> list[tuple[str, bool]]:
        """Render ``(role, text)`` turns (role ``human``/``gpt``) into ``(segment, supervised)`` pairs.

        With ``add_generation_prompt`` the result ends with ``"ASSISTANT:"`` so the
        model continues with the answer. Empty segments are dropped.
        """
        segments: list[tuple[str, bool]] = []
        prefix = self.system + self.sep if self.system else ""
        for role, text in turns:
            role = role.lower()
            if role in _HUMAN_ROLES:
                prefix += f"{self.user_role}: {text}{self.sep}"
            elif role in _ASSISTANT_ROLES:
                # The space after the colon belongs to the prompt: the answer starts
                # at its first character, so no tokeniser can fold it into the label.
                segments.append((prefix + f"{self.assistant_role}: ", False))
                segments.append((text + self.sep2, True))
                prefix = ""
            else:
                raise ValueError(f"unknown conversation role {role!r} (expected human or gpt)")
        if add_generation_prompt:
            prefix += f"{self.assistant_role}:"
        if prefix:
            segments.append((prefix, False))
        return [(text, supervised) for text, supervised in segments if text]

    def prompt(self, question: str) -> str:
        """The generation prompt for a single question."""
        return "".join(text for text, _ in self.render([("human", question)], add_generation_prompt=True))


TEMPLATES: dict[str, ConversationTemplate] = {
    "vicuna_v1": ConversationTemplate(name="vicuna_v1", system=VICUNA_SYSTEM),
    # The tiny base model's format: same shape, no system prompt (its vocabulary
    # is a few dozen words); its tokenizer's eos is also "</s>".
    "tiny": ConversationTemplate(name="tiny", system=""),
}


def get_template(name: str) -> ConversationTemplate:
    """The template called ``name``; a ``KeyError`` lists the known ones."""
    try:
        return TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise KeyError(f"unknown conversation template {name!r}; known: {known}") from None
