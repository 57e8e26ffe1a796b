"""SMET (smet.md): the module, its bad-input errors, the loss-spike probe, int16 counters, accumulation.

The optimizer's closed forms (cold start, both layouts) are in ``tests/test_smet_optim.py``; the generic
matrix runs ``yaml/smet/*.yaml`` (fast_dev_run, resume, 2-rank DDP).
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from callbacks import GlobalBatchSize, LossSpikeProbe, RegrowthWarmup, SparseTopology
from datamodules.text import TextCorpusDataModule
from modules.smet import SMETLlama, sparse_layer_paths
from tests.toy import quiet_trainer
from trainer.data import accumulation_steps
from trainer.optimization import warmup_cosine_factor
from trainer.sparse import CompactSparseLinear, MaskedAdam
from trainer.sparse.spikes import loss_spike, probe_steps, regrown_update_ratio, windows_holding
from trainer.text import build_causal_lm, llama_config

TINY = SMETLlama.unit_test_params()


def _dm(**kw) -> TextCorpusDataModule:
    return TextCorpusDataModule(**{**TextCorpusDataModule.unit_test_params(), **kw})


def _trainer(callbacks=(), **kw) -> pl.Trainer:
    return quiet_trainer(callbacks, **{"limit_val_batches": 2, **kw})


# ------------------------------------------------------------------------------------------------
# the module
# ------------------------------------------------------------------------------------------------


def test_default_sparse_layers_are_the_seven_projections_and_embedding_head_stay_dense():
    model = SMETLlama(**TINY)
    names = list(model.mask_set())
    assert len(names) == 7 * TINY["num_hidden_layers"]
    assert {n.split(".")[-2] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert isinstance(model.model.model.embed_tokens, nn.Embedding) and type(model.model.lm_head) is nn.Linear
    assert not hasattr(model.model.lm_head, "weight_mask")
    assert model.sparse_density() == pytest.approx(0.5, abs=1e-3)
    for layer in model.modules():
        if isinstance(layer, CompactSparseLinear):
            assert layer.index.dtype == torch.int32 and layer.index.unique().numel() == layer.values.numel()


def test_sparse_layers_is_a_yaml_choice():
    lm = build_causal_lm(llama_config("llama_tiny", {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
                                                     "num_attention_heads": 2, "vocab_size": 512}))  # fmt: skip
    assert len(sparse_layer_paths(lm, ("q_proj",))) == 2
    assert sparse_layer_paths(lm, (r"layers\.1\.mlp",)) == [f"model.layers.1.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]
    model = SMETLlama(**{**TINY, "sparse_layers": ("gate_proj", "up_proj", "down_proj", "lm_head")})
    assert len(model.mask_set()) == 7 and isinstance(model.model.lm_head, CompactSparseLinear)
    with pytest.raises(ValueError, match="select no nn.Linear"):
        SMETLlama(**{**TINY, "sparse_layers": ("nope",)})


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_outside_unit_interval_is_rejected(density):
    with pytest.raises(ValueError, match=r"density must lie in \(0, 1\]"):
        SMETLlama(**{**TINY, "density": density})
    with pytest.raises(ValueError, match=r"density must lie in \(0, 1\]"):
        SparseTopology(preset="smet", density=density)


def test_sequence_longer_than_context_fails_before_training():
    model = SMETLlama(**TINY)  # context 64
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="exceeds the model context"):
        _trainer(max_steps=2).fit(model, _dm(seq_len=128))
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # no step was taken


def test_empty_corpus_fails_before_training(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty corpus"):
        _trainer(max_steps=2).fit(SMETLlama(**TINY), _dm(source="files", paths=(str(tmp_path),)))


def test_dense_layout_density_must_match_the_topology():
    model = SMETLlama(**{**TINY, "layout": "dense", "density": 0.5})
    with pytest.raises(ValueError, match="module's density is 0.5"):
        _trainer([SparseTopology(preset="smet", density=0.25, delta_t=2)], max_steps=2).fit(model, _dm())
    with pytest.raises(ValueError, match="module's density"):  # no topology drew the masks at all
        _trainer(max_steps=2).fit(SMETLlama(**{**TINY, "layout": "dense", "density": 0.5}), _dm())


def test_compact_topology_refuses_a_different_density():
    with pytest.raises(ValueError, match="compact layers were built at density 0.5"):
        _trainer([SparseTopology(preset="smet", density=0.25, delta_t=2)], max_steps=2).fit(SMETLlama(**TINY), _dm())


def test_training_lr_scaling_tokens_and_ppl():
    """RegrowthWarmup scales every group's lr by 1/d; tokens_seen counts label tokens; val/ppl = exp(val/loss)."""
    pl.seed_everything(0, verbose=False)
    model = SMETLlama(**{**TINY, "density": 0.25})
    dm = _dm()
    topo = SparseTopology(preset="smet", delta_t=3)
    trainer = _trainer([topo, RegrowthWarmup(warmup_steps=4)], max_steps=6, val_check_interval=6)
    trainer.fit(model, dm)
    opt = trainer.optimizers[0]
    assert isinstance(opt, MaskedAdam) and topo.updates == 1
    d = model.sparse_density()
    assert d == pytest.approx(0.25, abs=1e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 / d] * len(opt.param_groups))
    assert {g["state_policy"] for g in opt.param_groups if g["name"] == "sparse"} == {"P3"}
    assert int(model.tokens_seen) == 6 * dm.batch_size * dm.seq_len
    m = trainer.callback_metrics
    assert float(m["val/ppl"]) == pytest.approx(math.exp(float(m["val/loss"])), rel=1e-5)


def test_warmup_cosine_schedule_closed_forms():
    # smet.md §3: linear warm-up over 5% of steps, then cosine to 0.1 × peak
    assert warmup_cosine_factor(0, 1000, 50, 0.1) == 0.0
    assert warmup_cosine_factor(25, 1000, 50, 0.1) == pytest.approx(0.5)
    assert warmup_cosine_factor(50, 1000, 50, 0.1) == pytest.approx(1.0)
    assert warmup_cosine_factor(525, 1000, 50, 0.1) == pytest.approx(0.55)
    assert warmup_cosine_factor(1000, 1000, 50, 0.1) == pytest.approx(0.1)
    assert warmup_cosine_factor(2000, 1000, 50, 0.1) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------------
# int16 saturating step counters
# ------------------------------------------------------------------------------------------------


def test_int16_step_counters_saturate_and_match_int32():
    runs = {}
    for dtype in ("int32", "int16"):
        p = nn.Parameter(torch.ones(4))
        opt = MaskedAdam([p], lr=1e-3, state_policy="P2", step_dtype=dtype)
        opt.attach_masks({p: torch.tensor([0, 1, 2, 3])})
        p.grad = torch.full((4,), 0.5)
        opt.step()
        opt.state[p]["step_i"].fill_(32765)
        opt.state[p]["step"].fill_(32765)
        for _ in range(5):
            p.grad = torch.full((4,), 0.5)
            opt.step()
        runs[dtype] = (p.detach().clone(), opt.state[p]["step_i"].clone())
    assert runs["int16"][1].dtype == torch.int16 and runs["int16"][1].tolist() == [32767] * 4  # saturated, no wrap
    assert runs["int32"][1].tolist() == [32770] * 4
    assert torch.equal(runs["int16"][0], runs["int32"][0])  # 1 − β^s is 1.0 in fp32 either way
    with pytest.raises(ValueError, match="int16"):
        MaskedAdam([nn.Parameter(torch.ones(1))], step_dtype="int16", warmup_steps=40000)
    with pytest.raises(ValueError, match="step_dtype"):
        MaskedAdam([nn.Parameter(torch.ones(1))], step_dtype="int8")


def test_state_bytes_formula_for_int16_and_int32():
    """smet.md §6: optimizer state of a compact matrix = 8c + b·c (b = 4 int32, 2 int16) + the scalar step."""
    for dtype, b in (("int32", 4), ("int16", 2)):
        layer = CompactSparseLinear(64, 32, bias=False, density=0.1)
        c = layer.values.numel()
        opt = MaskedAdam([layer.values], state_policy="P3", warmup_steps=10, step_dtype=dtype)
        opt.attach_masks({layer.values: layer.index})
        layer(torch.randn(3, 64)).sum().backward()
        opt.step()
        state = sum(v.numel() * v.element_size() for v in opt.state[layer.values].values())
        assert state == 8 * c + b * c + 4
        assert layer.index.element_size() == 4  # int32 index: 4c bytes of overhead


# ------------------------------------------------------------------------------------------------
# loss spikes (smet.md §7)
# ------------------------------------------------------------------------------------------------


def test_loss_spike_hand_values():
    losses = {45: 2.0, 46: 2.0, 47: 2.2, 48: 1.8, 49: 2.0, 50: 2.5, 51: 2.6, 52: 3.1, 53: 2.4, 60: 2.1, 61: 9.0}
    # max L(51..60) − mean L(45..49) = 3.1 − 2.0 (L(50), the step of the update, is on neither side; 61 is outside)
    assert loss_spike(losses, 50) == pytest.approx(1.1)
    assert loss_spike(losses, 50, before=2, after=2) == pytest.approx(3.1 - 1.9)
    with pytest.raises(ValueError):
        loss_spike({50: 1.0}, 50)
    assert probe_steps([50, 100], 5, 10) == set(range(45, 61)) | set(range(95, 111))
    is_upd = lambda t: t % 50 == 0  # noqa: E731
    assert windows_holding(44, is_upd) == [] and windows_holding(45, is_upd) == [50]
    assert windows_holding(60, is_upd) == [50] and windows_holding(61, is_upd) == []
    assert windows_holding(7, lambda t: t % 4 == 0, 2, 3) == [4, 8]  # overlapping windows both hold step 7


def test_regrown_update_ratio_hand_values():
    r, o, ratio = regrown_update_ratio(torch.zeros(2), torch.tensor([0.6, -0.2]), torch.tensor([1.0, -1.0]),
                                       torch.tensor([1.1, -1.1]), steps=2)  # fmt: skip
    assert r == pytest.approx(0.2) and o == pytest.approx(0.05) and ratio == pytest.approx(4.0)
    assert math.isnan(regrown_update_ratio(torch.zeros(1), torch.ones(1), torch.ones(2), torch.ones(2), 1)[2])


def _probe_run(policy: str, warmup: bool) -> LossSpikeProbe:
    pl.seed_everything(0, verbose=False)
    topo = SparseTopology(preset="smet", delta_t=4, drop_fraction=0.3, state_policy=policy, reset_step=0)
    probe = LossSpikeProbe(before=2, after=3, batch_size=4)
    cbs = [topo, RegrowthWarmup(warmup_steps=100, density_lr_scaling=False)] if warmup else [topo]
    _trainer([*cbs, probe], max_steps=13, limit_val_batches=0).fit(SMETLlama(**TINY), _dm())
    return probe


def test_probe_records_windows_and_ratios_in_training():
    probe = _probe_run("P2", warmup=False)
    assert sorted(probe.spikes) == [4, 8] and sorted(probe.losses) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    for u, s in probe.spikes.items():
        assert s == pytest.approx(max(probe.losses[u + k] for k in (1, 2, 3)) - (probe.losses[u - 2] + probe.losses[u - 1]) / 2)
    assert set(probe.ratios) == {4, 8} and probe.summary()["windows"] == 2
    assert probe.snapshot["step"] == 12  # the update at 12 still has its window open at the end (step 13)
    # P2's first update of a regrown entry is exactly ±lr, more than a typical old entry's; SMET's damped
    # warm-up (W = 100, m *= s/W) makes the regrown entries move far less than the old ones
    assert all(r > 1.0 for r in probe.ratios.values())
    damped = _probe_run("P3", warmup=True)
    assert all(damped.ratios[u] < 0.2 * probe.ratios[u] for u in (4, 8))
    assert all(len(o) <= 65536 for o in probe.snapshot["old"].values())


def test_probe_follows_at_most_max_tracked_old_entries():
    pl.seed_everything(0, verbose=False)
    topo = SparseTopology(preset="smet", delta_t=4, drop_fraction=0.3, state_policy="P2")
    probe = LossSpikeProbe(before=2, after=3, batch_size=4, max_tracked=50)
    _trainer([topo, probe], max_steps=13, limit_val_batches=0).fit(SMETLlama(**TINY), _dm())
    assert set(probe.ratios) == {4, 8} and all(math.isfinite(r) for r in probe.ratios.values())
    snap = probe.snapshot
    assert all(len(snap["old"][n]) == 50 == len(snap["old_w"][n]) for n in topo.layer_names)
    assert all(not torch.isin(snap["old"][n], snap["regrown"][n]).any() for n in topo.layer_names)


def test_probe_needs_topology_first_or_delta_t():
    with pytest.raises(ValueError, match="after SparseTopology"):
        _trainer([LossSpikeProbe(), SparseTopology(preset="smet", delta_t=4)], max_steps=1).fit(SMETLlama(**TINY), _dm())
    with pytest.raises(ValueError, match="give delta_t"):
        _trainer([LossSpikeProbe()], max_steps=1).fit(SMETLlama(**TINY), _dm())
    probe = LossSpikeProbe(before=1, after=2, batch_size=2, delta_t=3)
    _trainer([probe], max_steps=7, limit_val_batches=0).fit(SMETLlama(**{**TINY, "layout": "dense", "density": 1.0}), _dm())
    assert sorted(probe.spikes) == [3] and sorted(probe.losses) == [2, 3, 4, 5, 6, 7]  # 6's window ends past the run


# ------------------------------------------------------------------------------------------------
# total batch → accumulation (smet.md §4, defect 2)
# ------------------------------------------------------------------------------------------------


def test_accumulation_is_derived_and_bad_totals_are_rejected():
    assert accumulation_steps(512, 64, 8) == 1 and accumulation_steps(512, 16, 4) == 8
    with pytest.raises(ValueError, match="not a multiple"):
        accumulation_steps(512, 24, 2)
    with pytest.raises(ValueError, match="must be positive"):
        accumulation_steps(512, 0, 1)
    cb = GlobalBatchSize(total_batch_size=32)
    trainer = _trainer([cb], max_steps=2, limit_val_batches=0)
    trainer.fit(SMETLlama(**TINY), _dm(batch_size=8))
    assert cb.accumulation == 4 and trainer.accumulate_grad_batches == 4
    with pytest.raises(ValueError, match="not a multiple"):
        _trainer([GlobalBatchSize(total_batch_size=30)], max_steps=1).fit(SMETLlama(**TINY), _dm(batch_size=8))


def test_compact_layout_refuses_sharded_strategies():
    from lightning.pytorch.strategies import ModelParallelStrategy

    model = SMETLlama(**TINY)
    model.trainer = pl.Trainer(accelerator="cpu", devices=1, strategy=ModelParallelStrategy(), logger=False)
    with pytest.raises(ValueError, match="compact layout runs on one device or under DDP"):
        model.setup("fit")


def test_regrowth_warmup_with_neurotrails_lm():
    """The warm-up is cross-cutting: NeuroTrailsLM + neurotrails_lm topology + RegrowthWarmup + MaskedAdam."""
    from modules.neurotrails import NeuroTrailsLM

    pl.seed_everything(0, verbose=False)
    model = NeuroTrailsLM(**NeuroTrailsLM.unit_test_params())
    topo = SparseTopology(preset="neurotrails_lm", density=0.5, delta_t=2, grow="random")
    warm = RegrowthWarmup(warmup_steps=10)
    _trainer([topo, warm], max_steps=4, limit_val_batches=0).fit(model, _dm())
    opt = model.trainer.optimizers[0]
    assert topo.updates == 1 and topo.config.state_policy == "P3"
    sparse_groups = [g for g in opt.param_groups if any(opt.mask_of(p) is not None for p in g["params"])]
    assert sparse_groups and all(g["state_policy"] == "P3" and g["warmup_steps"] == 10 for g in sparse_groups)
    assert all(g["lr"] == pytest.approx(opt.defaults["lr"] / warm.density) for g in opt.param_groups)
    for name, e in model.mask_set().items():
        if name in topo.layer_names:
            st = opt.state[e.weight]
            assert torch.count_nonzero(e.weight.detach()[~e.mask]) == 0
            assert torch.count_nonzero(st["exp_avg"][~e.mask]) == 0 and "step_i" in st  # P3: masked state


def test_pretrained_path_loads_and_sparsifies(tmp_path):
    """``pretrained``: a local Hugging Face folder; the compact values start from its weights at the index."""
    lm = build_causal_lm(llama_config("llama_tiny", {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64,
                                                     "num_attention_heads": 2, "vocab_size": 512}))  # fmt: skip
    lm.save_pretrained(str(tmp_path / "tiny"))
    model = SMETLlama(pretrained=str(tmp_path / "tiny"), density=0.5)
    q = model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q, CompactSparseLinear)
    dense_q = lm.model.layers[0].self_attn.q_proj.weight.detach().reshape(-1)
    assert torch.equal(q.values.detach(), dense_q[q.index.long()])
    assert torch.equal(model.model.lm_head.weight, lm.lm_head.weight)
    with pytest.raises(ValueError, match="not available"):
        SMETLlama(pretrained=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="exactly one of shape"):
        SMETLlama(shape="llama_tiny", pretrained=str(tmp_path / "tiny"))


def test_compact_refuses_explicit_non_uniform_init():
    with pytest.raises(ValueError, match="need the dense layout"):
        _trainer([SparseTopology(preset="smet", init="erk", delta_t=2)], max_steps=1).fit(SMETLlama(**TINY), _dm())
    with pytest.raises(ValueError, match="need the dense layout"):
        _trainer([SparseTopology(preset="smet", dense_first_layer=True)], max_steps=1).fit(SMETLlama(**TINY), _dm())
