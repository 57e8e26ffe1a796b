"""Instruction (task) fine-tuning data with the loss on the answer tokens only (SEFT, seft.md §2, §3).

Records with an instruction, an optional input and an output (commonsense_170k of LLM-Adapters has
``instruction``/``input``/``output``/``answer``) are rendered with the Alpaca prompt templates that
LLM-Adapters fine-tunes with, followed by the output and EOS, and truncated to ``max_length`` tokens
("max 256 tokens", seft.md §3). Only the answer tokens (output and EOS) are targets; prompt and padding
positions carry ``-100``.

The records come from a local ``.json`` (a list of records) or ``.jsonl`` file (one record a line), a
``datasets`` directory (``save_to_disk``, or a folder of data files) or a ``datasets`` name (offline: only
from the local cache). :func:`write_arithmetic_jsonl` writes a small deterministic set ("What is 3 + 5?"
→ "8") for tests and smoke runs.

Deviation: LLM-Adapters' source indents the template lines by its own code indentation and defaults to
``train_on_inputs=True``; we use the clean Alpaca layout and, as seft.md §2 asks, answer-only targets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from trainer.data import seeded_train_loader
from trainer.text import (
    dataset_calibration_rows,
    default_cache_dir,
    is_dataset_source,
    load_tokenizer,
    pack_tokens,
    tokenizer_vocab_size,
    train_bpe_tokenizer,
)

__all__ = ["InstructionDataModule", "write_arithmetic_jsonl"]

IGNORE_INDEX = -100
CALIBRATION_CHUNK = 8  # rows per tensor returned by calibration_batches

#: The Alpaca prompt with an input, as LLM-Adapters uses it (``generate_prompt``), without the answer.
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
#: The Alpaca prompt for a record whose input is empty.
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def write_arithmetic_jsonl(path: str | os.PathLike, n: int = 200, seed: int = 0) -> Path:
    """Write ``n`` deterministic addition/subtraction records as JSON lines; returns the path.

    Record i draws two integers in [0, 20) and an operator from a ``torch.Generator`` seeded with ``seed``;
    even i puts the question in the instruction (``{"instruction": "What is 3 + 5?", "input": "",
    "output": "8"}``), odd i in the input (``"Compute the result."`` / ``"3 + 5"``), so both templates
    occur. The file is written atomically and rewritten only if missing.
    """
    path = Path(path)
    if path.is_file():
        return path
    g = torch.Generator().manual_seed(int(seed))
    lines = []
    for i in range(int(n)):
        a, b, op = (int(v) for v in torch.randint(0, 20, (3,), generator=g))
        sign = "+" if op % 2 == 0 else "-"
        result = a + b if sign == "+" else a - b
        if i % 2 == 0:
            rec = {"instruction": f"What is {a} {sign} {b}?", "input": "", "output": str(result)}
        else:
            rec = {"instruction": "Compute the result.", "input": f"{a} {sign} {b}", "output": str(result)}
        lines.append(json.dumps(rec))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def _looks_local(name: str) -> bool:
    """A name meant as a local path: absolute, relative with ``./``/``../``/``~``, or a .json/.jsonl file."""
    return name.startswith(("/", "./", "../", "~")) or name.lower().endswith((".json", ".jsonl"))


def _read_json_records(path: Path) -> list[dict]:
    """A ``.json`` list of records (or one record per line), or a ``.jsonl`` file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # JSON lines under a .json name
        if isinstance(data, list):
            return data
        if isinstance(data, dict):
            return [data]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_records(name: str, split: str = "train") -> list[dict] | None:
    """Records of ``name``: a .json/.jsonl file, a ``save_to_disk`` directory, a folder of data files, or a
    ``datasets`` name (``split`` chosen). ``None`` if a local ``DatasetDict`` lacks ``split``."""
    import datasets

    path = Path(name).expanduser()
    if path.is_file():
        return _read_json_records(path)
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    return None
                ds = ds[split]
        else:
            ds = datasets.load_dataset(str(path) if path.is_dir() else name, split=split)
    except Exception as err:  # noqa: BLE001 - offline: ConnectionError, OfflineModeIsEnabled, FileNotFound
        raise ValueError(f"dataset {name!r} (split {split!r}) is not available: {type(err).__name__}: {err}"[:300]) from None
    return [dict(r) for r in ds]


class InstructionExamples(Dataset):
    """Tokenized examples as ``{"input_ids": [L], "labels": [L]}`` (labels already shifted, -100 on the prompt).

    Args:
        examples: ``(input_ids, labels)`` pairs of int64 tensors of equal length.
    """

    def __init__(self, examples: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, labels = self.examples[i]
        return {"input_ids": ids, "labels": labels}


def pad_instruction_batch(items: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: ``input_ids`` with ``pad_id``, ``labels`` with -100,
    ``attention_mask`` 1 on real tokens and 0 on padding; all ``[B, T]`` int64."""
    width = max(int(it["input_ids"].numel()) for it in items)
    ids = torch.full((len(items), width), int(pad_id), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = int(it["input_ids"].numel())
        ids[row, :n] = it["input_ids"]
        labels[row, :n] = it["labels"]
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class _Collate:
    """Picklable collate function (DataLoader workers) around :func:`pad_instruction_batch`."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return pad_instruction_batch(items, self.pad_id)


class InstructionDataModule(LightningDataModule):
    """Instruction fine-tuning batches ``{"input_ids", "labels", "attention_mask"}``, all ``[B, T]`` int64.

    Each example is ``prompt + output + EOS`` tokenized (the prompt and the output separately, so the
    boundary is exact; the prompt with the tokenizer's special tokens, e.g. a BOS, the output without),
    cut to ``max_length`` tokens. ``input_ids`` are those tokens but the last and ``labels`` the tokens but
    the first, **already shifted** like ``TextCorpusDataModule`` (``labels[t]`` is the target of
    ``input_ids[t]``; compute the loss with ``trainer.text.causal_lm_loss``, not a Hugging Face
    ``labels=``). Labels are -100 where the target is a prompt token and on padding, so the loss covers
    the answer tokens only (seft.md §2). Batches are right-padded to their longest example. An example
    whose prompt alone fills ``max_length`` has no target left and is dropped (counted in
    ``token_stats()["dropped_train"]``).

    Validation: ``val_path`` (another file, directory or dataset), else ``val_split`` of the same dataset,
    else a deterministic ``val_fraction`` of the records (permutation seeded with 0). The training
    loader shuffles with the run-seeded sampler of ``trainer.data`` (exact resume); validation is in order.
    ``prepare_data`` builds the tokenizer (trains the BPE into the cache), ``setup`` reads and tokenizes.

    Attributes: ``tokenizer``, ``vocab_size`` (built on first use), ``seq_len`` (= ``max_length``, what the
    model's context must hold), ``token_stats()``; ``calibration_batches`` gives pad-free rows.

    Args:
        path: the training records: a local ``.json`` (list of records) or ``.jsonl`` file, a ``datasets``
            directory (``save_to_disk`` or a folder of data files) or a ``datasets`` name (e.g. a local copy
            of LLM-Adapters' ``ft-training_set/commonsense_170k.json``, seft.md §5); no default. A local
            path that does not exist fails at construction.
        val_path: validation records in the same forms; ``None`` (default) = ``val_split`` or
            ``val_fraction``.
        split: the split of a ``datasets`` dataset to train on; default ``"train"``.
        val_split: a split of the same dataset to validate on (e.g. ``"validation"``); ``None`` (default).
        tokenizer: a tokenizer name or path (``trainer.text.load_tokenizer``; also the alias
            ``smollm2-135m-instruct``); ``None`` (default) trains a byte-level BPE on the rendered training
            records.
        vocab_size: vocabulary of the trained BPE; default 4096. Ignored with ``tokenizer``.
        max_length: tokens per example, prompt + output + EOS, after truncation; default 256 ("max 256
            tokens", seft.md §3). ``seq_len`` equals it.
        batch_size: examples per batch and process; default 16 (seft.md §3).
        val_fraction: fraction of the records held out for validation when neither ``val_path`` nor
            ``val_split`` is given; default 0.05.
        instruction_field: the record field holding the instruction; default ``"instruction"``.
        input_field: the field holding the optional input (empty or absent: the no-input template);
            ``None`` = never use one; default ``"input"``.
        output_field: the field holding the answer; default ``"output"`` (commonsense_170k also has
            ``"answer"``, the bare option).
        prompt_template: the prompt for a record with an input, with ``{instruction}`` and ``{input}``;
            default the Alpaca template of LLM-Adapters.
        prompt_template_no_input: the prompt for a record without input, with ``{instruction}``; default
            the Alpaca no-input template.
        max_examples: keep only the first this many training records (after the validation split; quick
            runs); ``None`` (default) = all.
        cache_dir: where the trained BPE is cached; ``None`` (default) = ``trainer.text.default_cache_dir()``.
        num_workers: DataLoader workers; default 0.
        calibration_source: the default ``source`` of ``calibration_batches``: ``None``/``"train"`` (the
            training examples, default), ``"val"``, or ``"dataset:<name>[:<config>]"`` (random windows of a
            streamed corpus: Wanda's ``dataset:allenai/c4:en``).
    """

    def __init__(
        self,
        path: str,
        val_path: str | None = None,
        split: str = "train",
        val_split: str | None = None,
        tokenizer: str | None = None,
        vocab_size: int = 4096,
        max_length: int = 256,
        batch_size: int = 16,
        val_fraction: float = 0.05,
        instruction_field: str = "instruction",
        input_field: str | None = "input",
        output_field: str = "output",
        prompt_template: str = ALPACA_PROMPT,
        prompt_template_no_input: str = ALPACA_PROMPT_NO_INPUT,
        max_examples: int | None = None,
        cache_dir: str | None = None,
        num_workers: int = 0,
        calibration_source: str | None = None,
    ) -> None:
        super().__init__()
        for what, name in (("path", path), ("val_path", val_path)):
            if name is not None and _looks_local(str(name)) and not Path(str(name)).expanduser().exists():
                raise ValueError(f"instruction data {what} {str(name)!r} does not exist")
        if max_length < 2 or batch_size < 1:
            raise ValueError(f"max_length must be at least 2 and batch_size positive, got {max_length}, {batch_size}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if max_examples is not None and max_examples < 1:
            raise ValueError(f"max_examples must be positive, got {max_examples}")
        for key, tmpl in (("prompt_template", prompt_template), ("prompt_template_no_input", prompt_template_no_input)):
            if "{instruction}" not in tmpl:
                raise ValueError(f"{key} must contain {{instruction}}")
        self.save_hyperparameters()
        self.path = path
        self.val_path = val_path
        self.split = split
        self.val_split = val_split
        self.tokenizer_name = tokenizer
        self.bpe_vocab_size = vocab_size
        self.max_length = max_length
        self.seq_len = max_length
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.instruction_field = instruction_field
        self.input_field = input_field
        self.output_field = output_field
        self.prompt_template = prompt_template
        self.prompt_template_no_input = prompt_template_no_input
        self.max_examples = max_examples
        self.cache_dir = cache_dir
        self.num_workers = num_workers
        if calibration_source not in (None, "train", "val") and not is_dataset_source(calibration_source):
            raise ValueError(f"calibration_source must be None, 'train', 'val' or 'dataset:<name>[:<config>]', got {calibration_source!r}")
        self.calibration_source = calibration_source
        # derived, filled lazily
        self._records: tuple[list[dict], list[dict]] | None = None
        self._tokenizer: Any = None
        self.train_set: InstructionExamples | None = None
        self.val_set: InstructionExamples | None = None
        self._train_sequences: list[list[int]] = []
        self._stats: dict[str, int] = {}

    @classmethod
    def unit_test_params(cls) -> dict:
        """200 arithmetic records (written once into the cache), a ≤ 400-token BPE, 32 tokens, batch 4.

        The Alpaca preamble alone is ~36 tokens under so small a BPE, so the tiny setting keeps only the
        template's section headers.
        """
        path = write_arithmetic_jsonl(default_cache_dir() / "instruction" / "arithmetic-200-seed0.jsonl", 200, 0)
        return {
            "path": str(path), "vocab_size": 400, "max_length": 32, "batch_size": 4,
            "prompt_template": "### Instruction:\n{instruction}\n### Input:\n{input}\n### Response:\n",
            "prompt_template_no_input": "### Instruction:\n{instruction}\n### Response:\n",
        }  # fmt: skip

    # ------------------------------------------------------------------------------------------
    # records
    # ------------------------------------------------------------------------------------------

    def _check_fields(self, records: list[dict], where: str) -> None:
        if not records:
            raise ValueError(f"empty instruction data: {where} has no records")
        available = sorted({k for r in records for k in r})
        wanted = [("instruction_field", self.instruction_field), ("output_field", self.output_field)]
        if self.input_field is not None:
            wanted.append(("input_field", self.input_field))
        for arg, field in wanted:
            if field not in available:
                raise ValueError(f"{where} has no field {field!r} ({arg}); available fields: {available}")
        for i, r in enumerate(records):
            for arg, field in wanted[:2]:
                if r.get(field) is None:
                    raise ValueError(f"{where} record {i} lacks {field!r} ({arg}); it has {sorted(r)}")

    def split_records(self) -> tuple[list[dict], list[dict]]:
        """(train records, val records), deterministic; fields checked."""
        if self._records is not None:
            return self._records
        records = load_records(self.path, self.split)
        if records is None:
            raise ValueError(f"dataset {self.path!r} has no split {self.split!r}")
        self._check_fields(records, repr(self.path))
        if self.val_path is not None:
            val = load_records(self.val_path, self.val_split or self.split)
            if val is None:
                raise ValueError(f"dataset {self.val_path!r} has no split {self.val_split or self.split!r}")
            train = records
        elif self.val_split is not None:
            val = load_records(self.path, self.val_split)
            if val is None:
                raise ValueError(f"dataset {self.path!r} has no split {self.val_split!r}")
            train = records
        else:
            if len(records) < 2:
                raise ValueError(f"{self.path!r} has {len(records)} record(s): too few to hold out a validation fraction")
            n_val = max(1, round(self.val_fraction * len(records)))
            perm = torch.randperm(len(records), generator=torch.Generator().manual_seed(0)).tolist()
            val_idx = set(perm[:n_val])
            train = [r for i, r in enumerate(records) if i not in val_idx]
            val = [r for i, r in enumerate(records) if i in val_idx]
        self._check_fields(val, "the validation data")
        if self.max_examples is not None:
            train = train[: self.max_examples]
        self._records = (train, val)
        return self._records

    def prompt(self, record: dict) -> str:
        """The rendered prompt of a record (the with-input template when its input is non-empty)."""
        inp = record.get(self.input_field) if self.input_field is not None else None
        inp = "" if inp is None else str(inp)
        if inp.strip():
            return self.prompt_template.format(instruction=str(record[self.instruction_field]), input=inp)
        return self.prompt_template_no_input.format(instruction=str(record[self.instruction_field]))

    def answer(self, record: dict) -> str:
        """The answer text of a record (its ``output_field``)."""
        return str(record[self.output_field])

    # ------------------------------------------------------------------------------------------
    # tokenizer
    # ------------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (built on first use: loaded by name, or a BPE trained on the training records)."""
        if self._tokenizer is None:
            if self.tokenizer_name is not None:
                tok = load_tokenizer(self.tokenizer_name)
            else:
                train, _ = self.split_records()
                texts = [self.prompt(r) + self.answer(r) for r in train]
                tok = train_bpe_tokenizer(texts, self.bpe_vocab_size, self.cache_dir)
            if tok.eos_token_id is None:
                raise ValueError("the tokenizer has no EOS token to end the answers")
            self._tokenizer = tok
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """The tokenizer's actual vocabulary size (what the model's embedding must hold)."""
        return tokenizer_vocab_size(self.tokenizer)

    @property
    def pad_id(self) -> int:
        """The padding id: the tokenizer's pad token, else EOS (padding is masked either way)."""
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def encode(self, record: dict) -> tuple[list[int], int, bool]:
        """(tokens of prompt + answer + EOS cut to ``max_length``, prompt length, whether it was cut)."""
        tok = self.tokenizer
        prompt = tok(self.prompt(record), add_special_tokens=True)["input_ids"]
        answer = tok(self.answer(record), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seq = prompt + answer
        return seq[: self.max_length], len(prompt), len(seq) > self.max_length

    def _examples(self, records: list[dict]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[list[int]], dict[str, int]]:
        examples, sequences = [], []
        stats = {"examples": 0, "tokens": 0, "answer_tokens": 0, "truncated": 0, "dropped": 0}
        for r in records:
            seq, n_prompt, cut = self.encode(r)
            if len(seq) <= n_prompt:  # the prompt fills max_length: no answer target left
                stats["dropped"] += 1
                continue
            t = torch.tensor(seq, dtype=torch.long)
            labels = t[1:].clone()
            labels[: n_prompt - 1] = IGNORE_INDEX  # targets t + 1 < n_prompt are prompt tokens
            examples.append((t[:-1], labels))
            sequences.append(seq)
            stats["examples"] += 1
            stats["tokens"] += len(seq)
            stats["answer_tokens"] += len(seq) - n_prompt
            stats["truncated"] += int(cut)
        return examples, sequences, stats

    # ------------------------------------------------------------------------------------------
    # Lightning hooks
    # ------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Build the tokenizer once (rank 0 trains the BPE into the cache; the others find it)."""
        _ = self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val = self.split_records()
        tr_examples, self._train_sequences, tr = self._examples(train)
        va_examples, _, va = self._examples(val)
        if not tr_examples:
            raise ValueError(f"no training example keeps an answer token within max_length {self.max_length}")
        if not va_examples:
            raise ValueError(f"no validation example keeps an answer token within max_length {self.max_length}")
        self.train_set, self.val_set = InstructionExamples(tr_examples), InstructionExamples(va_examples)
        self._stats = {f"{k}_train": v for k, v in tr.items()} | {f"{k}_val": v for k, v in va.items()}

    def token_stats(self) -> dict[str, int]:
        """Counts for logging: examples, tokens, answer (target) tokens, truncated and dropped examples per
        split, ``tokens_per_batch`` (the upper bound ``batch_size × max_length``) and ``vocab_size``."""
        return {**self._stats, "tokens_per_batch": self.batch_size * self.max_length, "vocab_size": self.vocab_size}

    def train_dataloader(self) -> DataLoader:
        return seeded_train_loader(
            self.train_set, self.batch_size, trainer=self.trainer, num_workers=self.num_workers, collate_fn=_Collate(self.pad_id)
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers, collate_fn=_Collate(self.pad_id)
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    # ------------------------------------------------------------------------------------------
    # calibration
    # ------------------------------------------------------------------------------------------

    def calibration_batches(
        self, n_samples: int, seq_len: int | None = None, source: str | None = None, seed: int = 0
    ) -> list[torch.Tensor]:
        """``n_samples`` pad-free int64 ``input_ids`` rows as a list of ``[b, seq_len]`` tensors (b ≤ 8).

        The token sequences (prompt + answer + EOS) of the training examples (``source`` ``None`` or
        ``"train"``) or of the validation examples (``"val"``) are concatenated and cut into
        ``seq_len``-token blocks (default ``max_length``); ``n_samples`` distinct blocks are chosen by a
        ``torch.Generator`` seeded with ``seed``. Runs ``setup`` if needed. ValueError if there are fewer
        blocks than ``n_samples``.
        """
        source = source if source is not None else self.calibration_source
        seq_len_ = self.seq_len if seq_len is None else int(seq_len)
        if is_dataset_source(source):  # e.g. dataset:allenai/c4:en (Wanda's C4 calibration)
            return list(dataset_calibration_rows(source, self.tokenizer, n_samples, seq_len_, seed).split(CALIBRATION_CHUNK))
        if source not in (None, "train", "val"):
            raise ValueError(f"InstructionDataModule calibration source must be None, 'train' or 'val', got {source!r}")
        seq_len = self.seq_len if seq_len is None else int(seq_len)
        if n_samples < 1 or seq_len < 1:
            raise ValueError(f"n_samples and seq_len must be positive, got {n_samples}, {seq_len}")
        self.setup("fit")
        if source == "val":
            _, sequences, _ = self._examples(self.split_records()[1])
        else:
            sequences = self._train_sequences
        stream = torch.tensor([t for seq in sequences for t in seq], dtype=torch.long)
        rows = pack_tokens(stream, seq_len)[:, :-1]
        if rows.shape[0] < n_samples:
            raise ValueError(f"only {rows.shape[0]} calibration blocks of {seq_len} tokens, {n_samples} requested")
        pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:n_samples]
        return list(rows[pick].contiguous().split(CALIBRATION_CHUNK))
