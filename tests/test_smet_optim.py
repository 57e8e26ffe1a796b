"""SMET optimizer pieces: compact layout, compact MaskedAdam state, RegrowthWarmup (dst_core.md §1, §5, §9).

Closed forms of the Adam cold start (dst_core §9.5, smet.md §6) for both layouts, compact invariants
after every update (§9.2), bitwise resume of a compact run (§8), layouts agreeing, and density-aware LR
applied before the scheduler captures its base lrs.
"""

from __future__ import annotations

import functools
import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import TensorDataset

from callbacks.regrowth_warmup import RegrowthWarmup
from callbacks.sparse_topology import SparseTopology
from tests.test_dst_core import _assert_equal_nested
from tests.toy import quiet_trainer
from trainer.data import seeded_train_loader
from trainer.optimization import configure_optimization, split_decay_groups
from trainer.sparse.masks import mask_set_density
from trainer.sparse.spikes import cold_start_updates
from trainer.sparse import (
    CompactSparseLinear,
    MaskedAdam,
    MaskedModuleMixin,
    attach_masks,
    compact_count,
    compactify_linears,
    init_mask,
    reset_entries,
)

# ------------------------------------------------------------------------------------------------
# cold start (dst_core §9.5, smet.md §6), dense and compact layouts
# ------------------------------------------------------------------------------------------------


def _cold_start(layout: str, policy: str, tau: int, steps: int, lr: float = 0.01, **kw) -> list[float]:
    """Entry/slot 1 is regrown after global step tau − 1 under a constant gradient; its updates (units of lr)."""
    return cold_start_updates(layout, policy, tau, steps, lr, **kw)


LAYOUTS = ("dense", "compact")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cold_start_p0(layout):
    b1, b2 = 0.9, 0.999
    for tau in (2, 50, 5001):
        expected = ((1 - b1) / (1 - b1**tau)) / math.sqrt((1 - b2) / (1 - b2**tau))  # dst_core §9.5
        assert _cold_start(layout, "P0", tau, 1)[0] == pytest.approx(expected, rel=1e-6)
    assert _cold_start(layout, "P0", 5001, 1)[0] == pytest.approx(3.1516, abs=1e-4)
    assert _cold_start(layout, "P0", 10**7, 1)[0] == pytest.approx(3.1623, abs=1e-4)  # tends to sqrt(10)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cold_start_p2_is_exactly_lr(layout):
    ks = _cold_start(layout, "P2", 500, 100)
    assert ks == pytest.approx([1.0] * 100, rel=1e-9)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cold_start_p3(layout):
    lin = _cold_start(layout, "P3", 500, 100, warmup_steps=100, warmup_mode="linear_lr")
    assert lin[0] == pytest.approx(0.01, rel=1e-9) and sum(lin) == pytest.approx(50.5, rel=1e-6)
    damp1 = _cold_start(layout, "P3", 500, 100, warmup_steps=100, warmup_mode="m_damping", reset_step=1)
    assert damp1[0] == pytest.approx(0.014883, abs=1e-6) and sum(damp1) == pytest.approx(16.21, abs=0.01)
    damp0 = _cold_start(layout, "P3", 500, 1, warmup_steps=100, warmup_mode="m_damping")
    assert damp0[0] == pytest.approx(0.01, rel=1e-9)


def test_compact_state_is_one_dimensional_and_reset_keeps_shapes():
    p = nn.Parameter(torch.randn(6))
    opt = MaskedAdam([p], lr=0.1, state_policy="P3", warmup_steps=4, reset_step=1)
    opt.attach_masks({p: torch.tensor([9, 2, 7, 0, 4, 11])})
    for _ in range(3):
        p.grad = torch.randn(6)
        opt.step()
    st = opt.state[p]
    assert [st[k].shape for k in ("exp_avg", "exp_avg_sq", "step_i")] == [torch.Size([6])] * 3
    assert st["step_i"].dtype == torch.int32 and st["step_i"].tolist() == [3] * 6
    groups = len(opt.param_groups)
    reset_entries(opt, p, torch.tensor([1, 4]))
    assert st["exp_avg"][[1, 4]].eq(0).all() and st["exp_avg_sq"][[1, 4]].eq(0).all()
    assert st["step_i"].tolist() == [3, 1, 3, 3, 1, 3]
    assert len(opt.param_groups) == groups and st["exp_avg"].shape == (6,)
    sd = opt.state_dict()
    fresh = MaskedAdam([nn.Parameter(p.detach().clone())], lr=0.1)
    fresh.load_state_dict(sd)
    for k, v in sd["state"][0].items():
        w = fresh.state_dict()["state"][0][k]
        assert v.dtype == w.dtype and torch.equal(v, w)


# ------------------------------------------------------------------------------------------------
# the compact layer (dst_core §1)
# ------------------------------------------------------------------------------------------------


def test_compact_linear_forward_index_and_gradients():
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    seq = nn.Sequential(lin)
    assert compactify_linears(seq, 0.3, include=(r"^0$",), seed=11) == ["0"]
    cl = seq[0]
    assert isinstance(cl, CompactSparseLinear)
    c = compact_count(30, 0.3)
    assert cl.index.numel() == cl.values.numel() == c == 9 and cl.index.dtype == torch.int32  # positions < 2**31: int32
    assert torch.equal(cl.index, init_mask(30, c, 11, 0).nonzero().squeeze(1))  # layer generator, exact count
    assert cl.index.unique().numel() == c
    dense = torch.zeros(30)
    dense[cl.index] = lin.weight.detach().reshape(-1)[cl.index]
    x = torch.randn(4, 6)
    assert torch.allclose(cl(x), F.linear(x, dense.view(5, 6), lin.bias), atol=0, rtol=0)
    # dense gradient kept only while requested, summed over micro-batches
    cl.keep_dense_grad = True
    x2 = torch.randn(3, 6)
    cl(x).sum().backward()
    cl(x2).sum().backward()
    expected = torch.ones(4, 5).T @ x + torch.ones(3, 5).T @ x2
    assert torch.allclose(cl.dense_grad, expected, atol=1e-6)
    assert cl.values.grad.shape == (c,)
    assert torch.allclose(cl.values.grad, expected.reshape(-1)[cl.index], atol=1e-6)
    assert set(cl.state_dict()) == {"values", "index", "bias"}


# ------------------------------------------------------------------------------------------------
# a tiny module: dense or compact layout, HasLrMultiplier, injected optimizer and scheduler
# ------------------------------------------------------------------------------------------------


class SMETOptTinyNet(MaskedModuleMixin, pl.LightningModule):
    """A 3-layer MLP on random 8-feature data, all linears sparse in the chosen layout."""

    def __init__(
        self,
        layout: str = "compact",
        density: float = 0.3,
        lr: float = 1e-2,
        samples: int = 48,
        batch_size: int = 4,
        scheduler: bool = False,
        optimizer=None,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        if layout == "dense":
            attach_masks(self)
        else:
            compactify_linears(self, density, include=(r"^net\.\d$",), seed=_seed())
        self.lr = lr
        self.samples = samples
        self.batch_size = batch_size
        self.use_scheduler = scheduler
        self.optimizer_factory = optimizer or functools.partial(MaskedAdam, lr=lr)
        self.lr_multiplier = 1.0
        self.lr_scaling_groups = "all"

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        groups = split_decay_groups(self, sparse_names=self.mask_set())
        sched = functools.partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda s: 1.0 / (1 + s))
        return configure_optimization(
            groups,
            self.optimizer_factory,
            sched if self.use_scheduler else None,
            "step",
            self.lr_multiplier,
            self.lr_scaling_groups,
        )

    def train_dataloader(self):
        g = torch.Generator().manual_seed(7)
        x = torch.randn(self.samples, 8, generator=g)
        y = torch.randint(0, 4, (self.samples,), generator=g)
        return seeded_train_loader(TensorDataset(x, y), self.batch_size, self.trainer)


def _seed() -> int:
    import os

    return int(os.environ.get("PL_GLOBAL_SEED", "0") or 0)


def _trainer(callbacks, **kwargs) -> pl.Trainer:
    return quiet_trainer(callbacks, **kwargs)


class SMETCompactProbe(pl.Callback):
    """Placed after ``SparseTopology``: checks dst_core §9.2 for the compact layout after every step."""

    def __init__(self, topo: SparseTopology) -> None:
        self.topo = topo
        self.updates_seen = 0
        self.stashes = 0
        self.last = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.topo.config.needs_gradient and self.topo.is_update(trainer.global_step + 1):
            stash = self.topo._stash  # the summed dense gradients of the materialised weights (dst_core §6)
            assert set(stash) == set(self.topo.layer_names) and all(g.abs().sum() > 0 for g in stash.values())
            self.stashes += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.last:
            return
        self.last = trainer.global_step
        opt = trainer.optimizers[0]
        cfg = self.topo.config
        for (name, entry), c in zip([(n, pl_module.mask_set()[n]) for n in self.topo.layer_names], self.topo.counts):
            values, index = entry.weight, entry.mask
            st = opt.state[values]
            assert entry.layout == "compact"
            lens = {values.numel(), index.numel(), st["exp_avg"].numel(), st["exp_avg_sq"].numel()}
            if "step_i" in st:
                lens.add(st["step_i"].numel())
            assert lens == {c}, (name, lens, c)  # dst_core §9.2
            assert index.unique().numel() == c and int(index.min()) >= 0
            res = self.topo.last_results.get(name)
            if res is not None and self.topo.is_update(trainer.global_step) and res.k:
                self.updates_seen += 1
                assert res.dropped.numel() == res.grown.numel() == math.floor(self.topo.fraction(trainer.global_step) * c)
                if not cfg.regrow_dropped:
                    assert not torch.isin(res.grown, res.dropped).any()
                slots = torch.isin(index, res.newly_active).nonzero().squeeze(1)
                assert slots.numel() == res.newly_active.numel()
                assert not torch.isin(index, res.removed).any()
                assert values.detach()[slots].eq(0).all()
                assert st["exp_avg"][slots].eq(0).all() and st["exp_avg_sq"][slots].eq(0).all()
                if "step_i" in st:
                    assert st["step_i"][slots].eq(cfg.reset_step).all()


@pytest.mark.parametrize(
    "overrides,accumulate",
    [
        (dict(preset="smet"), 1),
        (dict(preset="rigl", state_policy="P2", regrow_dropped=True), 2),  # gradient growth over micro-batches
        (dict(preset="rigl", state_policy="P0", drop="magnitude_noise"), 1),
    ],
)
def test_compact_invariants_in_training(overrides, accumulate):
    pl.seed_everything(5, verbose=False)
    model = SMETOptTinyNet(layout="compact", density=0.3)
    topo = SparseTopology(density=0.3, delta_t=2, total_steps=12, include=(r"^net\.",), **overrides)
    topo.record_results = True
    probe = SMETCompactProbe(topo)
    index_before = [e.mask.clone() for e in model.mask_set().values()]
    _trainer([topo, probe], max_steps=12, accumulate_grad_batches=accumulate).fit(model)
    assert probe.updates_seen > 0 and topo.updates == sum(topo.is_update(t) for t in range(1, 13)) >= 4
    assert probe.stashes == (topo.updates if topo.config.needs_gradient else 0)
    assert any(not torch.equal(a, e.mask) for a, e in zip(index_before, model.mask_set().values()))
    for layer in model.modules():
        if isinstance(layer, CompactSparseLinear):
            assert layer.dense_grad is None and not layer.keep_dense_grad  # the stash is freed


def test_compact_and_dense_layouts_agree():
    """Same seed, same initial positions: weights after 3ΔT steps agree (smet.md §6, ≤ 1e-6)."""
    out = {}
    for layout in LAYOUTS:
        pl.seed_everything(9, verbose=False)
        model = SMETOptTinyNet(layout=layout, density=0.3)
        topo = SparseTopology(
            preset="smet", density=0.3, delta_t=3, total_steps=9, include=(r"^net\.",), drop_fraction=0.3
        )
        _trainer([topo], max_steps=9).fit(model)
        assert topo.updates == 2
        weights = []
        for mod in model.net:
            if isinstance(mod, CompactSparseLinear):
                weights.append(mod.dense_weight().detach())
            elif isinstance(mod, nn.Linear):
                weights.append(mod.weight.detach())
        out[layout] = weights
    for a, b in zip(out["dense"], out["compact"]):
        assert torch.equal(a != 0, b != 0)
        assert (a - b).abs().max() <= 1e-6


# ------------------------------------------------------------------------------------------------
# resume (dst_core §8)
# ------------------------------------------------------------------------------------------------


class SMETStopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def _resume_run(tmp_path, stop: bool, ckpt: str | None):
    pl.seed_everything(3, verbose=False)
    topo = SparseTopology(preset="smet", density=0.3, delta_t=3, include=(r"^net\.",))
    warm = RegrowthWarmup(warmup_steps=4)
    model = SMETOptTinyNet(layout="compact", density=0.3, scheduler=True)  # 12 optimizer steps per epoch
    callbacks = [warm, topo, ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)]
    if stop:
        callbacks.append(SMETStopAfterFirstEpoch())
    trainer = _trainer(callbacks, max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, ckpt_path=ckpt)
    return model, trainer, topo


@pytest.mark.slow
def test_compact_resume_is_bitwise_identical(tmp_path):
    straight, t_straight, topo_straight = _resume_run(tmp_path / "a", stop=False, ckpt=None)
    half, _, topo_half = _resume_run(tmp_path / "b", stop=True, ckpt=None)
    mid = {k: v.clone() for k, v in half.state_dict().items()}
    resumed, t_resumed, topo_resumed = _resume_run(tmp_path / "c", stop=False, ckpt=str(tmp_path / "b" / "last.ckpt"))
    assert t_straight.global_step == t_resumed.global_step == 24
    assert topo_half.updates > 0 and topo_resumed.updates > topo_half.updates
    _assert_equal_nested(straight.state_dict(), resumed.state_dict())  # values, index, biases
    _assert_equal_nested(t_straight.optimizers[0].state_dict(), t_resumed.optimizers[0].state_dict())
    _assert_equal_nested(topo_straight.state_dict(), topo_resumed.state_dict())
    _assert_equal_nested(
        t_straight.lr_scheduler_configs[0].scheduler.state_dict(), t_resumed.lr_scheduler_configs[0].scheduler.state_dict()
    )
    assert any(not torch.equal(mid[k], v) for k, v in resumed.state_dict().items() if k.endswith("values"))
    assert any(not torch.equal(mid[k], v) for k, v in resumed.state_dict().items() if k.endswith("index"))
    step_i = [v["step_i"] for v in t_resumed.optimizers[0].state.values() if "step_i" in v]
    assert step_i and all(s.dtype == torch.int32 and s.dim() == 1 for s in step_i)


# ------------------------------------------------------------------------------------------------
# RegrowthWarmup: density-aware LR before the scheduler, P3 options in either order
# ------------------------------------------------------------------------------------------------


class SMETLrCapture(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
        self.names = [g["name"] for g in trainer.optimizers[0].param_groups]
        self.base_lrs = list(trainer.lr_scheduler_configs[0].scheduler.base_lrs)
        self.groups = [dict(g) for g in trainer.optimizers[0].param_groups]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("warm_first", [True, False])
@pytest.mark.parametrize("groups", ["all", "sparse_only"])
def test_density_lr_scaling_and_p3_options(layout, warm_first, groups):
    pl.seed_everything(1, verbose=False)
    model = SMETOptTinyNet(layout=layout, density=0.25, lr=1e-3, scheduler=True)
    topo = SparseTopology(preset="smet", density=0.25, delta_t=2, total_steps=2, include=(r"^net\.",))
    warm = RegrowthWarmup(warmup_steps=7, mode="linear_lr", scope="regrown", reset_step=2, lr_scaling_groups=groups)
    cap = SMETLrCapture()
    cbs = [warm, topo, cap] if warm_first else [topo, warm, cap]
    _trainer(cbs, max_steps=2).fit(model)
    d = mask_set_density(model, (r"^net\.",)) if layout == "compact" else 0.25
    assert d == pytest.approx(0.25, abs=0.01) and warm.density == pytest.approx(d)
    for name, lr, base in zip(cap.names, cap.lrs, cap.base_lrs):
        scaled = groups == "all" or name == "sparse"
        expected = 1e-3 / d if scaled else 1e-3
        assert lr == pytest.approx(expected, rel=1e-12) and base == pytest.approx(expected, rel=1e-12)
    assert "sparse" in cap.names and len(cap.names) >= 2
    sparse_group = cap.groups[cap.names.index("sparse")]
    assert sparse_group["state_policy"] == "P3"
    assert (sparse_group["warmup_steps"], sparse_group["warmup_mode"], sparse_group["reset_step"]) == (7, "linear_lr", 2)
    assert topo.config.state_policy == "P3" and topo.config.warmup_steps == 7 and topo.config.reset_step == 2
    dense_groups = [g for g in cap.groups if g["name"] != "sparse"]
    assert all(g["state_policy"] != "P3" for g in dense_groups)  # scope regrown: no dense tensor is warmed


def test_regrowth_warmup_scope_all_and_errors():
    pl.seed_everything(1, verbose=False)
    model = SMETOptTinyNet(layout="compact", density=0.25, scheduler=True)
    topo = SparseTopology(preset="smet", density=0.25, delta_t=2, total_steps=2, include=(r"^net\.",))
    cap = SMETLrCapture()
    _trainer([topo, RegrowthWarmup(warmup_steps=3, scope="all"), cap], max_steps=1).fit(model)
    assert all(g["state_policy"] == "P3" and g["warmup_scope"] == "all" for g in cap.groups)
    # a plain optimizer is refused with a clear message
    model = SMETOptTinyNet(layout="compact", density=0.25, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    topo = SparseTopology(preset="smet", density=0.25, delta_t=2, total_steps=2, include=(r"^net\.",), state_policy="P5")
    with pytest.raises(TypeError, match="MaskedAdam"):
        _trainer([RegrowthWarmup(density_lr_scaling=False), topo], max_steps=1).fit(model)
    with pytest.raises(ValueError):
        RegrowthWarmup(mode="cosine")
    with pytest.raises(ValueError):
        RegrowthWarmup(scope="dense")
