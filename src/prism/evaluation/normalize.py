"""VQA answer normalisation as the field's numbers compute it.

CoIN and LLaVA score VQA-style answers with the EvalAI answer processor used by
``m4c_evaluator`` (MMF). This module re-implements its published rules,
including the quirks that change scores and therefore must be kept:

* ``,`` and ``?`` are deleted and ``'s`` is split off (``"dog's"`` ->
  ``"dog 's"``) before anything else;
* each other punctuation mark is deleted when it touches a space somewhere in the
  text, and replaced by a space otherwise (the decision is per mark, over the
  whole text);
* a ``.`` not followed by a digit is deleted, but at most 32 of them (the
  reference passes ``re.UNICODE`` where the count argument goes);
* number words ``none``/``zero`` .. ``ten`` become digits, articles are
  dropped, and whole words found in the contractions table are rewritten
  (``dont`` -> ``don't``). Table keys with capitals can never match because the
  text is lower-cased first; they are kept so the table is the published one.

The original GT-Vision-Lab ``vqaEval.py`` differs (it skips normalisation when
all ten answers agree); the field's numbers come from this version.
"""

from __future__ import annotations

import re

# "written form -> canonical form", one pair per line, as published for VQA.
_CONTRACTION_PAIRS = """
aint ain't
arent aren't
cant can't
couldve could've
couldnt couldn't
couldn'tve couldn't've
couldnt've couldn't've
didnt didn't
doesnt doesn't
dont don't
hadnt hadn't
hadnt've hadn't've
hadn'tve hadn't've
hasnt hasn't
havent haven't
hed he'd
hed've he'd've
he'dve he'd've
hes he's
howd how'd
howll how'll
hows how's
Id've I'd've
I'dve I'd've
Im I'm
Ive I've
isnt isn't
itd it'd
itd've it'd've
it'dve it'd've
itll it'll
let's let's
maam ma'am
mightnt mightn't
mightnt've mightn't've
mightn'tve mightn't've
mightve might've
mustnt mustn't
mustve must've
neednt needn't
notve not've
oclock o'clock
oughtnt oughtn't
ow's'at 'ow's'at
'ows'at 'ow's'at
'ow'sat 'ow's'at
shant shan't
shed've she'd've
she'dve she'd've
she's she's
shouldve should've
shouldnt shouldn't
shouldnt've shouldn't've
shouldn'tve shouldn't've
somebody'd somebodyd
somebodyd've somebody'd've
somebody'dve somebody'd've
somebodyll somebody'll
somebodys somebody's
someoned someone'd
someoned've someone'd've
someone'dve someone'd've
someonell someone'll
someones someone's
somethingd something'd
somethingd've something'd've
something'dve something'd've
somethingll something'll
thats that's
thered there'd
thered've there'd've
there'dve there'd've
therere there're
theres there's
theyd they'd
theyd've they'd've
they'dve they'd've
theyll they'll
theyre they're
theyve they've
twas 'twas
wasnt wasn't
wed've we'd've
we'dve we'd've
weve we've
werent weren't
whatll what'll
whatre what're
whats what's
whatve what've
whens when's
whered where'd
wheres where's
whereve where've
whod who'd
whod've who'd've
who'dve who'd've
wholl who'll
whos who's
whove who've
whyll why'll
whyre why're
whys why's
wont won't
wouldve would've
wouldnt wouldn't
wouldnt've wouldn't've
wouldn'tve wouldn't've
yall y'all
yall'll y'all'll
y'allll y'all'll
yall'd've y'all'd've
y'alld've y'all'd've
y'all'dve y'all'd've
youd you'd
youd've you'd've
you'dve you'd've
youll you'll
youre you're
youve you've
"""

CONTRACTIONS: dict[str, str] = dict(
    line.split(" ") for line in _CONTRACTION_PAIRS.strip().splitlines()  # type: ignore[misc]
)

NUMBER_WORDS: dict[str, str] = {
    word: str(value)
    for value, word in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    )
}
NUMBER_WORDS["none"] = "0"

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# Order matters only for which marks are tested; every mark is handled.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)

_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_MAX_PERIODS_REMOVED = 32  # the reference's accidental count (re.UNICODE == 32)
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")


def _pre_tokenize(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return text.strip()


def _strip_punctuation(text: str) -> str:
    # The digit-comma test can no longer fire (commas were deleted above) but is
    # part of the published rule, so it stays.
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        touches_space = (mark + " ") in text or (" " + mark) in text
        out = out.replace(mark, "" if (touches_space or delete_all) else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS_REMOVED)


def _words_to_canonical(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(text: str) -> str:
    """Normalise one answer (or prediction) exactly like the EvalAI processor."""
    text = _pre_tokenize(text)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _words_to_canonical(_strip_punctuation(text))
