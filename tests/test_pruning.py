"""Exact-value tests of trainer/sparse/pruning.py (dst_core §10): magnitude, Wanda, SparseGPT, N:M, driver."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from trainer.sparse.pruning import (
    PRUNING_METHODS,
    CalibrationStats,
    check_pattern_fits,
    check_sparsity,
    find_blocks,
    magnitude_mask,
    mask_sparsity,
    nm_mask,
    parse_pattern,
    prune_model_,
    prune_weight_,
    row_keep_count,
    sparsegpt_prune,
    topk_row_mask,
    wanda_mask,
    wanda_scores,
)

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------
# validation and counts
# ---------------------------------------------------------------------------------------------------------


def test_methods_and_counts():
    assert PRUNING_METHODS == ("magnitude", "wanda", "sparsegpt")
    assert row_keep_count(40, 0.5) == 20
    assert row_keep_count(40, 0.7) == 12  # 40 − floor(28.000000000000004)
    assert row_keep_count(10, 0.0) == 10
    assert check_sparsity(0) == 0.0 and isinstance(check_sparsity(0), float)
    assert parse_pattern("unstructured") is None
    assert parse_pattern("2:4") == (2, 4) and parse_pattern("4:8") == (4, 8)


@pytest.mark.parametrize("bad", [1.0, -0.1, "abc", True, float("nan"), None])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match="sparsity"):
        check_sparsity(bad)


@pytest.mark.parametrize("bad", ["3:2", "2-4", "0:4", "4:4", "", "2:4:8"])
def test_bad_pattern(bad):
    with pytest.raises(ValueError, match="unstructured"):
        parse_pattern(bad)


def test_pattern_fits():
    check_pattern_fits(32, "2:4", "ok")
    check_pattern_fits(30, "unstructured", "ok")
    with pytest.raises(ValueError, match="N:M pattern 2:4 does not divide layer blocks.0.fc with 30 inputs"):
        check_pattern_fits(30, "2:4", "blocks.0.fc")


def test_ties_keep_lower_index():
    scores = torch.ones(2, 6)
    assert topk_row_mask(scores, 0.5).tolist() == [[True, True, True, False, False, False]] * 2
    assert nm_mask(torch.ones(1, 8), 2, 4).tolist() == [[True, True, False, False] * 2]
    flat = magnitude_mask(torch.ones(2, 3), 0.5, granularity="layer")  # floor(3) = 3 pruned, first 3 kept
    assert flat.tolist() == [[True, True, True], [False, False, False]]


# ---------------------------------------------------------------------------------------------------------
# Wanda by hand
# ---------------------------------------------------------------------------------------------------------


def test_wanda_hand_example():
    W = torch.tensor([[1.0, -2.0, 3.0, -4.0], [4.0, 1.0, -1.0, 0.5]])
    norm2 = torch.tensor([16.0, 4.0, 1.0, 0.25])  # sqrt = [4, 2, 1, 0.5]
    # S = |W| * sqrt(norm2):
    #   row 0: [1*4, 2*2, 3*1, 4*0.5] = [4, 4, 3, 2] -> zero floor(0.5*4) = 2 lowest (3, 2): keep cols 0, 1
    #   row 1: [4*4, 1*2, 1*1, 0.5*0.5] = [16, 2, 1, 0.25] -> zero 1, 0.25: keep cols 0, 1
    # (magnitude would keep cols 2, 3 in row 0: Wanda flips the choice.)
    expected_scores = torch.tensor([[4.0, 4.0, 3.0, 2.0], [16.0, 2.0, 1.0, 0.25]])
    assert torch.equal(wanda_scores(W, norm2), expected_scores)
    expected = torch.tensor([[True, True, False, False], [True, True, False, False]])
    assert torch.equal(wanda_mask(W, norm2, 0.5), expected)
    assert torch.equal(magnitude_mask(W, 0.5), torch.tensor([[False, False, True, True], [True, True, False, False]]))
    # 2:4 on one group per row gives the same here; 1:4 keeps only the top score (row 0 tie -> col 0)
    assert torch.equal(wanda_mask(W, norm2, 0.0, "2:4"), expected)
    assert wanda_mask(W, norm2, 0.0, "1:4").tolist() == [[True, False, False, False], [True, False, False, False]]


@pytest.mark.parametrize("s", [0.5, 0.7])
def test_exact_row_counts(s):
    W = torch.randn(16, 40, generator=_gen(1))
    norm2 = torch.rand(40, generator=_gen(2)) + 0.1
    keep_per_row = 40 - math.floor(s * 40)
    for mask in (wanda_mask(W, norm2, s), magnitude_mask(W, s, granularity="row")):
        assert mask.dtype == torch.bool and mask.shape == W.shape
        assert mask.sum(1).tolist() == [keep_per_row] * 16
    layer = magnitude_mask(W, s, granularity="layer")
    assert int(layer.sum()) == 16 * 40 - math.floor(s * 16 * 40)
    assert layer.sum(1).tolist() != [keep_per_row] * 16  # per-layer selection is not per-row balanced
    # layer magnitude keeps exactly the largest |w|
    assert W.abs()[layer].min() >= W.abs()[~layer].max()


# ---------------------------------------------------------------------------------------------------------
# N:M
# ---------------------------------------------------------------------------------------------------------


def _spd(n: int, seed: int) -> torch.Tensor:
    A = torch.randn(n, n, generator=_gen(seed), dtype=torch.float64)
    return A @ A.T / n + 0.1 * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_exact_groups(n, m):
    W = torch.randn(6, 32, generator=_gen(3))
    norm2 = torch.rand(32, generator=_gen(4)) + 0.1
    pattern = f"{n}:{m}"
    masks = {
        "magnitude": magnitude_mask(W, 0.0, pattern),
        "wanda": wanda_mask(W, norm2, 0.0, pattern),
        "sparsegpt": sparsegpt_prune(W, _spd(32, 5), 0.0, pattern, blocksize=8)[1],
    }
    for name, mask in masks.items():
        groups = mask.reshape(6, 32 // m, m).sum(-1)
        assert torch.equal(groups, torch.full_like(groups, n)), name
    new_w, keep = sparsegpt_prune(W, _spd(32, 5), 0.0, pattern, blocksize=8)
    nnz = (new_w != 0).reshape(6, 32 // m, m).sum(-1)
    assert torch.equal(nnz, torch.full_like(nnz, n))
    assert torch.equal(new_w[~keep], torch.zeros(int((~keep).sum())))
    # magnitude N:M keeps the top-n |w| of each group
    g = W.abs().reshape(6, 32 // m, m)
    k = masks["magnitude"].reshape(6, 32 // m, m)
    assert bool((g.masked_fill(~k, float("inf")).amin(-1) >= g.masked_fill(k, -1.0).amax(-1)).all())


# ---------------------------------------------------------------------------------------------------------
# SparseGPT
# ---------------------------------------------------------------------------------------------------------


def test_sparsegpt_identity_hessian_is_blockwise_magnitude():
    W = torch.randn(6, 24, generator=_gen(6))
    H = 3.0 * torch.eye(24)
    s, B = 0.5, 8
    new_w, keep = sparsegpt_prune(W, H, s, blocksize=B)
    assert new_w.dtype == W.dtype
    for j0 in range(0, 24, B):
        block = W[:, j0 : j0 + B].reshape(-1) ** 2
        k = math.floor(s * block.numel())
        expected = torch.ones_like(block, dtype=torch.bool)
        expected[torch.argsort(block)[:k]] = False  # random floats: no ties
        assert torch.equal(keep[:, j0 : j0 + B].reshape(-1), expected)
    assert torch.equal(new_w[keep], W[keep])  # kept weights unchanged: no compensation with H ∝ I
    assert torch.equal(new_w[~keep], torch.zeros(int((~keep).sum())))
    # per-block counts are exact, per-row counts are not equal
    assert [int((~keep[:, j0 : j0 + B]).sum()) for j0 in range(0, 24, B)] == [24, 24, 24]
    assert len(set(keep.sum(1).tolist())) > 1


def test_sparsegpt_dead_columns():
    W = torch.randn(4, 8, generator=_gen(7))
    H = _spd(8, 8)
    H[2, :] = 0
    H[:, 2] = 0
    new_w, keep = sparsegpt_prune(W, H, 0.25, blocksize=4)
    assert torch.equal(new_w[:, 2], torch.zeros(4))
    assert int((~keep).sum()) == 2 * math.floor(0.25 * 16)


def test_sparsegpt_beats_uncompensated_and_magnitude():
    g = _gen(9)
    n_tok, d_in, d_out, s = 512, 32, 8, 0.5
    A = torch.randn(d_in, d_in, generator=g, dtype=torch.float64)
    X = torch.randn(n_tok, d_in, generator=g, dtype=torch.float64) @ A  # correlated inputs
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    stats = CalibrationStats(hessian=True, dtype=torch.float64)
    stats.add(X)
    new_w, keep = sparsegpt_prune(W, stats.H, s, blocksize=8)
    assert int((~keep).sum()) == math.floor(s * W.numel())

    def err(w_hat):
        return float(torch.linalg.norm(X @ W.T - X @ w_hat.T))

    e_sgpt = err(new_w)
    e_same_mask = err(W * keep)
    e_mag = err(W * magnitude_mask(W, s, granularity="layer"))
    e_mag_row = err(W * magnitude_mask(W, s))
    assert e_sgpt < e_same_mask
    assert e_sgpt < e_mag and e_sgpt < e_mag_row
    assert e_sgpt < 0.9 * min(e_same_mask, e_mag, e_mag_row)  # a clear margin (0.84 on this seed)


# ---------------------------------------------------------------------------------------------------------
# calibration statistics
# ---------------------------------------------------------------------------------------------------------


def test_calibration_stats_running_mean():
    g = _gen(10)
    batches = [torch.randn(2, 3, 5, generator=g), torch.randn(7, 5, generator=g), torch.randn(1, 4, 5, generator=g)]
    stats = CalibrationStats(hessian=True, dtype=torch.float64)
    for x in batches:
        stats.add(x)
    X = torch.cat([x.reshape(-1, 5) for x in batches]).double()
    assert stats.n_tokens == 6 + 7 + 4
    torch.testing.assert_close(stats.norm2, (X**2).mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.H, 2.0 / X.shape[0] * X.T @ X, rtol=1e-12, atol=1e-12)
    plain = CalibrationStats()
    plain.add(batches[0])
    assert plain.H is None and plain.norm2.dtype == torch.float32


def test_prune_weight_in_place():
    W = torch.randn(4, 8, generator=_gen(11))
    orig = W.clone()
    stats = CalibrationStats()
    stats.add(torch.randn(10, 8, generator=_gen(12)))
    keep = prune_weight_(W, stats, "wanda", 0.5)
    assert torch.equal(W, orig * keep)
    assert keep.sum(1).tolist() == [4] * 4
    with pytest.raises(ValueError, match="hessian"):
        prune_weight_(orig.clone(), stats, "sparsegpt", 0.5)
    with pytest.raises(ValueError, match="method"):
        prune_weight_(orig.clone(), stats, "random", 0.5)


# ---------------------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------------------


class _BufferLinear(nn.Module):
    """A target whose [out, in] weight is a buffer named W0 (like SEFT's frozen base)."""

    def __init__(self, d_in: int, d_out: int, seed: int) -> None:
        super().__init__()
        self.register_buffer("W0", torch.randn(d_out, d_in, generator=_gen(seed)) / d_in**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W0.T


class _Block(nn.Module):
    def __init__(self, d: int, seed: int, width: int = 16) -> None:
        super().__init__()
        self.up = _BufferLinear(d, width, seed)
        self.down = nn.Linear(width, d)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, None]:
        return h + self.down(torch.relu(self.up(h))), None  # tuple output: the driver takes [0]


class _ToyLM(nn.Module):
    def __init__(self, d: int = 8, vocab: int = 20, n_blocks: int = 2, width: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(_Block(d, 100 + i, width) for i in range(n_blocks))
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h)[0]
        return self.head(h)


def _calib(vocab: int, n: int = 2, b: int = 2, t: int = 8, seed: int = 13) -> list[torch.Tensor]:
    g = _gen(seed)
    return [torch.randint(0, vocab, (b, t), generator=g) for _ in range(n)]


def _tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(cfg)


def _llama_targets(model) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in LLAMA_TARGETS}


def test_driver_validates_before_any_work():
    model = _ToyLM(width=30)  # blocks.*.down has 30 inputs
    down = {"blocks.0.down": model.blocks[0].down}
    both = {"head": model.head, **down}  # head has 8 inputs (fits 2:4), blocks.0.down 30
    before = copy.deepcopy(model.state_dict())
    calib = _calib(20)
    bad_calls = [
        dict(sparsity=1.0),
        dict(sparsity=-0.1),
        dict(sparsity="abc"),
        dict(pattern="3:2"),
        dict(pattern="2-4"),
        dict(pattern="0:4"),
        dict(method="obs"),
        dict(granularity="column"),
        dict(targets={}),
        dict(calibration=[]),
        dict(calibration=[torch.zeros(2, 3)]),  # float, not input_ids
        dict(weight_attr="W0"),  # blocks.0.down has no W0
        dict(targets={"blocks.1.up": model.blocks[0].up}),  # path does not match the module
    ]
    for override in bad_calls:
        kwargs = dict(calibration=calib, targets=down, method="wanda", sparsity=0.5)
        kwargs.update(override)
        with pytest.raises(ValueError):
            prune_model_(model, progress=False, **kwargs)
    # 2:4 on the 30-input layer names it; the other target (8 inputs, pruned first in order) fits
    for method in PRUNING_METHODS:
        with pytest.raises(ValueError, match="does not divide layer blocks.0.down with 30 inputs"):
            prune_model_(model, calib, both, method, 0.5, "2:4", progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training  # mode untouched


def test_llama_sequential_wanda():
    model = _tiny_llama()
    model.train()
    calib = _calib(64, n=2, b=2, t=16)
    base = copy.deepcopy(model)
    targets = _llama_targets(model)
    assert len(targets) == 14
    assert find_blocks(model) is model.model.layers
    originals = {n: m.weight.detach().clone() for n, m in targets.items()}
    masks = prune_model_(model, calib, targets, "wanda", 0.5, progress=False)
    assert list(masks) == list(targets)
    for name, mod in targets.items():
        w, keep = mod.weight, masks[name]
        assert keep.dtype == torch.bool and keep.shape == w.shape
        per_row = row_keep_count(w.shape[1], 0.5)
        assert (w != 0).sum(1).tolist() == [per_row] * w.shape[0], name
        assert torch.equal(w, originals[name] * keep)
    assert mask_sparsity(masks) == 0.5
    assert model.training and all(m.training for m in model.modules())  # mode restored
    out = model(input_ids=calib[0]).logits
    assert out.shape == (2, 16, 64) and torch.isfinite(out).all()

    # one pass: block 0 sees the same inputs (same masks); block 1 sees dense block-0 outputs (masks differ)
    one = copy.deepcopy(base)
    one_masks = prune_model_(one, calib, _llama_targets(one), "wanda", 0.5, sequential=False, progress=False)
    block0 = [n for n in masks if n.startswith("model.layers.0.")]
    block1 = [n for n in masks if n.startswith("model.layers.1.")]
    assert all(torch.equal(masks[n], one_masks[n]) for n in block0)
    assert any(not torch.equal(masks[n], one_masks[n]) for n in block1)
    assert mask_sparsity(one_masks) == 0.5


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_llama_sparsegpt_and_magnitude(pattern):
    model = _tiny_llama()
    calib = _calib(64, n=1, b=2, t=16)
    targets = _llama_targets(model)
    masks = prune_model_(model, calib, targets, "sparsegpt", 0.5, pattern, blocksize=16, progress=False)
    for name, mod in targets.items():
        assert torch.equal(mod.weight[~masks[name]], torch.zeros(int((~masks[name]).sum())))
        if pattern == "2:4":
            groups = masks[name].reshape(mod.weight.shape[0], -1, 4).sum(-1)
            assert torch.equal(groups, torch.full_like(groups, 2))
    assert mask_sparsity(masks) == 0.5
    assert torch.isfinite(model(input_ids=calib[0]).logits).all()
    mag = _tiny_llama()
    mag_masks = prune_model_(mag, [], _llama_targets(mag), "magnitude", 0.5, pattern, progress=False)
    assert mask_sparsity(mag_masks) == 0.5


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_driver_buffer_weight_and_outside_target(method):
    model = _ToyLM()
    calib = _calib(20)
    targets = {f"blocks.{i}.up": model.blocks[i].up for i in range(2)}
    originals = {n: m.W0.clone() for n, m in targets.items()}
    masks = prune_model_(model, calib, targets, method, 0.5, weight_attr="W0", blocksize=4, progress=False)
    for name, mod in targets.items():
        assert torch.equal(mod.W0[~masks[name]], torch.zeros(int((~masks[name]).sum())))
        if method == "wanda":
            assert masks[name].sum(1).tolist() == [4] * 16
            assert torch.equal(mod.W0, originals[name] * masks[name])
    assert mask_sparsity(masks) == 0.5
    # nn.Linear targets inside the blocks plus the head outside them (pruned after a full forward)
    lin = {"blocks.0.down": model.blocks[0].down, "blocks.1.down": model.blocks[1].down, "head": model.head}
    lin_masks = prune_model_(model, calib, lin, method, 0.5, blocksize=4, progress=False)
    assert set(lin_masks) == set(lin)
    assert int((model.head.weight == 0).sum()) >= model.head.weight.numel() // 2
    assert torch.isfinite(model(calib[0])).all()


def test_progress_lines(capsys):
    model = _ToyLM()
    targets = {f"blocks.{i}.up": model.blocks[i].up for i in range(2)}
    prune_model_(model, _calib(20), targets, "wanda", 0.5, weight_attr="W0")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "[pruning] wanda: block 1/2, pruned 1 targets at s=0.5",
        "[pruning] wanda: block 2/2, pruned 1 targets at s=0.5",
    ]
    prune_model_(model, _calib(20), targets, "wanda", 0.5, weight_attr="W0", progress=False)
    assert capsys.readouterr().err == ""
