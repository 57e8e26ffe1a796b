"""Invariants of the dynamic-sparse-training substrate (dst_core.md §9) and its callback.

Pure functions are checked against hand-computed values; the ``SparseTopology`` callback runs inside
a plain Lightning ``Trainer`` on a tiny module defined here (hook order, timing, update invariants,
resume equivalence, 2-rank consistency).
"""

from __future__ import annotations

import functools
import io
import math
import os

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import TensorDataset

from callbacks.sparse_topology import SparseTopology
from tests.toy import quiet_trainer
from trainer.callback_state import StatefulCallback
from trainer.data import seeded_train_loader
from trainer.sparse import (
    DST_PRESETS,
    MaskedAdam,
    MaskedModuleMixin,
    MaskedSGD,
    apply_drop_grow_,
    attach_masks,
    drop_fraction,
    drop_grow,
    erk_densities,
    exact_counts,
    init_mask,
    init_masks_,
    is_update_step,
    layer_counts,
    layer_generator,
    raw_scores,
    reset_entries,
    resolve_preset,
    select_drop,
    select_grow,
    topk_indices,
    uniform_counts,
)

# ------------------------------------------------------------------------------------------------
# a tiny module, data and helpers
# ------------------------------------------------------------------------------------------------


class DSTTinyNet(MaskedModuleMixin, pl.LightningModule):
    """A 3-layer MLP on random 8-feature data with mask buffers on every linear."""

    def __init__(self, optimizer=None, hidden: int = 32, samples: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 4)
        )
        attach_masks(self)
        self.optimizer_factory = optimizer or functools.partial(MaskedAdam, lr=1e-2)
        self.samples = samples
        self.batch_size = batch_size

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

    def train_dataloader(self):
        g = torch.Generator().manual_seed(7)
        x = torch.randn(self.samples, 8, generator=g)
        y = torch.randint(0, 4, (self.samples,), generator=g)
        return seeded_train_loader(TensorDataset(x, y), self.batch_size, self.trainer)


class DSTMemoryLogger(Logger):
    """Keeps every ``log_metrics`` call in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))

    def series(self, key: str) -> dict[int, float]:
        return {s: m[key] for s, m in self.rows if key in m}


def _trainer(callbacks, logger=False, **kwargs) -> pl.Trainer:
    return quiet_trainer(callbacks, logger=logger, log_every_n_steps=1, **kwargs)


def _sparse_entries(module, topo):
    entries = module.mask_set()
    return [(n, entries[n]) for n in topo.layer_names]


class DSTProbe(pl.Callback):
    """Placed after ``SparseTopology``: checks §9.2/§9.3 after every optimizer step and update."""

    def __init__(self, topo: SparseTopology) -> None:
        self.topo = topo
        self.update_steps: list[int] = []
        self.steps_checked = 0
        self.before_opt_steps: list[int] = []
        self._seen_updates = 0
        self._last = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before_opt_steps.append(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        t = trainer.global_step
        if t == self._last:
            return
        self._last = t
        topo = self.topo
        for name, e in _sparse_entries(pl_module, topo):
            # §9.3: after every optimizer step, weights outside the mask are exactly 0 (all policies)
            assert torch.all(e.weight.detach()[~e.mask] == 0), (name, t)
        self.steps_checked += 1
        if topo.updates == self._seen_updates:
            return
        self._seen_updates = topo.updates
        self.update_steps.append(t)
        f_t = topo.fraction(t)
        policy = topo.config.state_policy
        opt = trainer.optimizers[0]
        for i, (name, e) in enumerate(_sparse_entries(pl_module, topo)):
            res = topo.last_results[name]
            c = topo.counts[i]
            assert int(e.mask.sum()) == c  # §9.2: per-layer nnz unchanged
            k = math.floor(f_t * c) if c < e.mask.numel() else 0
            if not topo.config.regrow_dropped:
                k = min(k, e.mask.numel() - c)
            assert res.dropped.numel() == res.grown.numel() == k  # §9.2: |D| == |R| == floor(f_t·c)
            if not topo.config.regrow_dropped:
                assert not torch.isin(res.grown, res.dropped).any()  # §9.2: R ∩ D = ∅
            w = e.weight.detach().reshape(-1)
            assert torch.all(w[res.newly_active] == 0) and torch.all(w[res.removed] == 0)  # §9.2
            if policy != "P5":
                state = opt.state[e.weight]
                inactive = ~e.mask
                for key in ("exp_avg", "exp_avg_sq", "step_i", "momentum_buffer"):
                    if key in state:
                        assert torch.all(state[key][inactive] == 0), (key, name, t)  # §9.2: slots 0
                        assert torch.all(
                            state[key].reshape(-1)[res.newly_active]
                            == (opt.param_groups[0].get("reset_step", 0) if key == "step_i" else 0)
                        ), (key, name, t)  # reset entries hold their reset values


def _assert_equal_nested(a, b, path="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            _assert_equal_nested(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_nested(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


# ------------------------------------------------------------------------------------------------
# §7 randomness
# ------------------------------------------------------------------------------------------------


def test_layer_generator_is_deterministic_and_keyed_and_leaves_global_rng_alone():
    before = torch.random.get_rng_state()
    a = torch.rand(5, generator=layer_generator(3, "grow", 100, 2))
    b = torch.rand(5, generator=layer_generator(3, "grow", 100, 2))
    assert torch.equal(a, b)
    for other in [(4, "grow", 100, 2), (3, "drop", 100, 2), (3, "grow", 101, 2), (3, "grow", 100, 3)]:
        assert not torch.equal(a, torch.rand(5, generator=layer_generator(*other)))
    assert torch.equal(before, torch.random.get_rng_state())


# ------------------------------------------------------------------------------------------------
# §2 / §9.1 initialisation
# ------------------------------------------------------------------------------------------------


def test_erk_hand_computed_counts():
    # r = (20/100, 200/10000) = (0.2, 0.02); eps = 1010/(0.2·100 + 0.02·10000) = 4.5909
    # d = (0.91818, 0.091818); floors (91, 918) sum 1009; K = 1010; the leftover goes to layer 0 (.818 > .182)
    assert layer_counts([(10, 10), (100, 100)], 0.1, "erk") == [92, 918]
    # layer 0 would exceed density 1 (eps·r = 4.8): it joins Dn; eps = (2003.2 − 16)/200 → d_1 = 0.19872
    dens, dn = erk_densities([(4, 4), (100, 100)], 0.2)
    assert dn == {0} and dens[0] == 1.0 and dens[1] == pytest.approx(0.19872)
    assert layer_counts([(4, 4), (100, 100)], 0.2, "erk") == [16, 1987]


def test_er_uses_channels_only_and_erk_uses_kernel_dims():
    assert raw_scores([(8, 4, 3, 3)], "erk") == [pytest.approx((8 + 4 + 3 + 3) / (8 * 4 * 9))]
    assert raw_scores([(8, 4, 3, 3)], "er") == [pytest.approx((8 + 4) / (8 * 4 * 9))]
    assert raw_scores([(6, 5)], "er") == raw_scores([(6, 5)], "erk")


@pytest.mark.parametrize("init", ["uniform", "er", "erk"])
def test_init_invariants(init):
    shapes = [(16, 3, 3, 3), (32, 16, 3, 3), (32, 16, 3, 3), (64, 32, 3, 3), (64, 64), (64, 64), (10, 64)]
    numels = [math.prod(s) for s in shapes]
    d = 0.2
    counts = layer_counts(shapes, d, init, dense=[0] if init != "uniform" else [])
    if init != "uniform":
        assert sum(counts) == math.floor(d * sum(numels) + 0.5)  # Σ c_l == K
        assert counts[0] == numels[0]  # forced dense
    assert all(1 <= c <= n for c, n in zip(counts, numels))  # all d_l ≤ 1
    assert abs(counts[1] - counts[2]) <= 1 and abs(counts[4] - counts[5]) <= 1  # equal shapes
    masks = [torch.ones(s, dtype=torch.bool) for s in shapes]
    weights = [torch.randn(s) for s in shapes]
    init_masks_(masks, counts, seed=5, weights=weights)
    for m, w, c in zip(masks, weights, counts):
        assert int(m.sum()) == c  # per-layer nnz == c_l
        assert torch.all(w[~m] == 0) and torch.all(w[m] != 0)  # inactive weights exactly 0
    again = [torch.ones(s, dtype=torch.bool) for s in shapes]
    init_masks_(again, counts, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(masks, again))  # pure function of (seed, layer)
    other = [torch.ones(s, dtype=torch.bool) for s in shapes]
    init_masks_(other, counts, seed=6)
    assert not torch.equal(masks[3], other[3])


def test_erk_density_is_monotone_in_raw_score():
    g = torch.Generator().manual_seed(0)
    shapes = [tuple(int(v) for v in torch.randint(2, 60, (2,), generator=g)) for _ in range(25)]
    shapes += [(int(a), int(b), 3, 3) for a, b in torch.randint(2, 20, (10, 2), generator=g)]
    shapes += [(2, 3), (3, 2)]  # tiny layers that must end dense
    dens, _ = erk_densities(shapes, 0.15)
    r = raw_scores(shapes)
    order = sorted(range(len(shapes)), key=lambda i: r[i])
    ds = [dens[i] for i in order]
    assert all(b >= a - 1e-12 for a, b in zip(ds, ds[1:]))  # never decreases as r_l grows
    assert any(d == 1.0 for d in dens) and any(d < 1.0 for d in dens)  # the test is not vacuous
    counts = exact_counts([math.prod(s) for s in shapes], dens, [i for i, d in enumerate(dens) if d == 1.0], 0.15)
    assert sum(counts) == math.floor(0.15 * sum(math.prod(s) for s in shapes) + 0.5)


def test_init_errors():
    with pytest.raises(ValueError, match="forced dense"):
        erk_densities([(100, 100), (10, 10)], 0.1, dense=[0])
    with pytest.raises(ValueError, match="outside"):
        uniform_counts([10, 1000], 0.01)  # floor(0.1 + 0.5) = 0 active entries in layer 0
    assert uniform_counts([10, 1000], 0.25) == [3, 250]


# ------------------------------------------------------------------------------------------------
# §3 criteria
# ------------------------------------------------------------------------------------------------


def test_topk_ties_break_to_lower_index():
    s = torch.tensor([1.0, 3.0, 2.0, 3.0, 2.0, 2.0])
    assert topk_indices(s, 3).tolist() == [1, 2, 3]
    assert topk_indices(s, 2, largest=False).tolist() == [0, 2]
    assert topk_indices(torch.zeros(5), 2).tolist() == [0, 1]


def test_drop_criteria_hand_values():
    w = torch.tensor([0.5, -0.1, 0.2, -0.3, 0.05, -0.01])
    assert select_drop("magnitude", w, 2).tolist() == [4, 5]
    # set_signed, k = 3: floor(3/2) = 1 smallest positive (0.05) + 2 negatives closest to 0 (−0.01, −0.1)
    assert select_drop("set_signed", w, 3).tolist() == [1, 4, 5]
    g = torch.tensor([0.1, 10.0, 1.0, 1.0, 100.0, 1.0])
    assert select_drop("sensitivity", w, 2, grad=g).tolist() == [0, 5]  # |w·G| = .05 1 .2 .3 5 .01


def test_criteria_change_the_selected_set():
    # §9.8: switching the criterion on a fixed input changes D (drop) or R (grow)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(400, generator=g) + 0.3  # more positive weights: set_signed differs from magnitude
    grad = torch.randn(400, generator=g)
    chosen = {
        crit: tuple(select_drop(crit, w, 100, grad=grad, generator=layer_generator(0, "drop", 1, 0)).tolist())
        for crit in ("magnitude", "set_signed", "soft_magnitude", "random", "sensitivity")
    }
    assert len(set(chosen.values())) == len(chosen)
    cand = torch.arange(0, 400, 2)
    grown = {
        crit: tuple(select_grow(crit, cand, 30, 400, grad=grad, generator=layer_generator(0, "grow", 1, 0)).tolist())
        for crit in ("random", "gradient")
    }
    assert grown["random"] != grown["gradient"]
    assert set(grown["gradient"]) <= set(cand.tolist())
    assert grown["gradient"] == tuple(sorted(cand[torch.topk(grad[cand].abs(), 30).indices].tolist()))


def test_magnitude_noise_only_breaks_near_ties():
    w = torch.tensor([1.0, 2.0, 3.0, 1e-7, 4.0])
    assert select_drop("magnitude_noise", w, 1, generator=layer_generator(0, "drop", 1, 0)).tolist() == [3]


@pytest.mark.parametrize("temperature,expected", [(1.0, [0.1, 0.2, 0.3, 0.4]), (3.0, [0.01, 0.08, 0.27, 0.64])])
def test_soft_magnitude_keep_frequencies(temperature, expected):
    # neurotrails.md §6: keep 1 of |w| = [1, 2, 3, 4]; frequencies ∝ |w|^T over 4000 draws, ± 0.025
    w = torch.tensor([1.0, -2.0, 3.0, -4.0])
    kept = torch.zeros(4)
    for step in range(4000):
        dropped = select_drop(
            "soft_magnitude", w, 3, generator=layer_generator(11, "drop", step, 0), temperature=temperature
        )
        keep = torch.ones(4, dtype=torch.bool)
        keep[dropped] = False
        kept += keep.float()
    freq = kept / 4000
    assert torch.allclose(freq, torch.tensor(expected), atol=0.025), freq


def test_soft_magnitude_is_deterministic_for_seed_step_layer():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(50, 20, generator=g)
    m = torch.rand(50, 20, generator=g) < 0.5
    w = w * m
    grad = torch.randn(50, 20, generator=g)
    kw = dict(drop="soft_magnitude", grow="gradient", regrow_dropped=True, grad=grad, seed=3)
    a = drop_grow(w, m, 0.4, step=10, layer_index=1, **kw)
    b = drop_grow(w, m, 0.4, step=10, layer_index=1, **kw)
    assert torch.equal(a.dropped, b.dropped) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.dropped, drop_grow(w, m, 0.4, step=11, layer_index=1, **kw).dropped)
    assert not torch.equal(a.dropped, drop_grow(w, m, 0.4, step=10, layer_index=2, **kw).dropped)


# ------------------------------------------------------------------------------------------------
# §3 / §9.2 drop_grow
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop", ["magnitude", "magnitude_noise", "set_signed", "soft_magnitude", "random"])
@pytest.mark.parametrize("grow", ["random", "gradient"])
@pytest.mark.parametrize("regrow", [False, True])
def test_drop_grow_invariants(drop, grow, regrow):
    g = torch.Generator().manual_seed(4)
    m = torch.zeros(30, 40, dtype=torch.bool)
    m.view(-1)[init_mask(1200, 300, 0, 0)] = True
    w = torch.randn(30, 40, generator=g) * m
    grad = torch.randn(30, 40, generator=g)
    w0, m0 = w.clone(), m.clone()
    res = drop_grow(w, m, 0.3, drop, grow, regrow, grad=grad, seed=1, step=7, layer_index=0)
    assert torch.equal(w, w0) and torch.equal(m, m0)  # pure
    k = math.floor(0.3 * 300)
    assert res.k == k and res.dropped.numel() == res.grown.numel() == k  # |D| == |R| == floor(f·c)
    assert int(res.mask.sum()) == 300  # nnz unchanged
    assert bool(m0.view(-1)[res.dropped].all())  # D ⊆ A
    if not regrow:
        assert not torch.isin(res.grown, res.dropped).any()  # R ∩ D = ∅
    assert not bool(m0.view(-1)[res.newly_active].any())  # R \ A was inactive
    apply_drop_grow_(w, m, res)
    flat = w.view(-1)
    assert torch.equal(m.view(-1), res.mask)
    assert torch.all(flat[res.newly_active] == 0) and torch.all(flat[res.removed] == 0)
    assert torch.equal(flat[res.kept], w0.view(-1)[res.kept])  # R ∩ D keeps its value
    assert torch.all(flat[~res.mask] == 0)


def test_regrow_dropped_keeps_value_of_reactivated_entries():
    w = torch.tensor([0.1, 0.0, 5.0, 0.0, 3.0, 0.0])
    m = w != 0
    grad = torch.tensor([100.0, 0.0, 0.0, 1.0, 0.0, 0.0])  # the dropped 0.1 has the largest gradient
    res = drop_grow(w, m, 0.34, "magnitude", "gradient", regrow_dropped=True, grad=grad)
    assert res.dropped.tolist() == [0] and res.grown.tolist() == [0] and res.kept.tolist() == [0]
    res2 = drop_grow(w, m, 0.34, "magnitude", "gradient", regrow_dropped=False, grad=grad)
    assert res2.grown.tolist() == [3] and res2.removed.tolist() == [0]


def test_drop_grow_noop_cases():
    w = torch.randn(10)
    assert drop_grow(w, torch.ones(10, dtype=torch.bool), 0.5).k == 0  # c == n
    m = torch.zeros(10, dtype=torch.bool)
    m[:3] = True
    assert drop_grow(w * m, m, 0.3).k == 0  # floor(0.9) == 0


# ------------------------------------------------------------------------------------------------
# §4 schedules
# ------------------------------------------------------------------------------------------------


def test_drop_fraction_closed_forms():
    T = 1000
    # cosine (RigL), T_end = 0.75 T: f0 at 0, f0/2 at T_end/2, 0 at T_end
    assert drop_fraction(0, 0.3, "cosine", T, 0.75) == pytest.approx(0.3)
    assert drop_fraction(375, 0.3, "cosine", T, 0.75) == pytest.approx(0.15)
    assert drop_fraction(750, 0.3, "cosine", T, 0.75) == pytest.approx(0.0, abs=1e-12)
    # cosine_floor: f0 at 0, (f0 + f_min)/2 at T/2, f_min at T and beyond
    assert drop_fraction(0, 0.5, "cosine_floor", T) == pytest.approx(0.5)
    assert drop_fraction(500, 0.5, "cosine_floor", T) == pytest.approx((0.5 + 0.005) / 2)
    assert drop_fraction(1000, 0.5, "cosine_floor", T) == pytest.approx(0.005)
    assert drop_fraction(1500, 0.5, "cosine_floor", T) == pytest.approx(0.005)
    # linear: f0, f0/2, 0
    assert [drop_fraction(t, 0.2, "linear", T) for t in (0, 500, 1000)] == pytest.approx([0.2, 0.1, 0.0])
    assert [drop_fraction(t, 0.3, "constant", T) for t in (0, 500, 1000)] == [0.3, 0.3, 0.3]


def test_is_update_step():
    steps = [t for t in range(0, 40) if is_update_step(t, 5, 0.75 * 40)]
    assert steps == [5, 10, 15, 20, 25]
    assert [t for t in range(0, 21) if is_update_step(t, 10, 20.0)] == [10]


# ------------------------------------------------------------------------------------------------
# presets, options, StatefulCallback
# ------------------------------------------------------------------------------------------------


def test_presets_and_overrides():
    assert set(DST_PRESETS) >= {"set", "rigl", "neurotrails_cv", "neurotrails_lm", "smet", "sparse_dc"}
    rigl = DST_PRESETS["rigl"]
    assert (rigl.init, rigl.delta_t, rigl.drop_fraction, rigl.decay, rigl.end_fraction) == (
        "erk",
        100,
        0.3,
        "cosine",
        0.75,
    )
    assert (rigl.drop, rigl.grow, rigl.regrow_dropped, rigl.state_policy) == ("magnitude_noise", "gradient", True, "P1")
    lm = DST_PRESETS["neurotrails_lm"]
    assert (lm.drop, lm.soft_temperature, lm.state_policy, lm.delta_t) == ("soft_magnitude", 3.0, "P5", 50)
    smet = DST_PRESETS["smet"]
    assert (smet.state_policy, smet.warmup_steps, smet.reset_step, smet.warmup_mode) == ("P3", 100, 1, "m_damping")
    cfg = resolve_preset("rigl", drop="random", density=None, include=["^net"])
    assert cfg.drop == "random" and cfg.density == rigl.density and cfg.include == ("^net",)
    with pytest.raises(dataclasses_frozen_error()):
        rigl.drop = "random"  # type: ignore[misc]


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    "kwargs,nearest",
    [
        (dict(preset="rigel"), "rigl"),
        (dict(drop="magnitud"), "magnitude"),
        (dict(grow="gradients"), "gradient"),
        (dict(decay="cosin"), "cosine"),
        (dict(state_policy="p2"), "P2"),
        (dict(init="erkk"), "erk"),
    ],
)
def test_unknown_options_name_the_nearest(kwargs, nearest):
    with pytest.raises(ValueError, match=f"Did you mean '{nearest}'"):
        SparseTopology(**kwargs)


def test_unknown_override_key_names_the_nearest():
    with pytest.raises(ValueError, match="Did you mean 'drop_fraction'"):
        resolve_preset("rigl", drop_fractoin=0.1)


def test_stateful_callback_state_round_trip_and_errors():
    a = SparseTopology(**SparseTopology.unit_test_params())
    a.updates, a.regrown_total, a.last_step = 3, 17, 9
    a.last_grown = {"net.0.weight": torch.tensor([1, 5], dtype=torch.int32)}
    b = SparseTopology(**SparseTopology.unit_test_params())
    b.load_state_dict(a.state_dict())
    _assert_equal_nested(a.state_dict(), b.state_dict())
    assert SparseTopology(density=0.3).state_key == SparseTopology(density=0.9).state_key  # not from hparams
    assert SparseTopology(name="other").state_key != a.state_key
    with pytest.raises(KeyError, match="unknown"):
        b.load_state_dict({**a.state_dict(), "bogus": 1})
    state = a.state_dict()
    state.pop("updates")
    with pytest.raises(KeyError, match="missing"):
        b.load_state_dict(state)
    import pickle

    assert pickle.loads(pickle.dumps(a)).state_dict()["updates"] == 3
    assert issubclass(SparseTopology, StatefulCallback)


# ------------------------------------------------------------------------------------------------
# §5 optimizers
# ------------------------------------------------------------------------------------------------


def _one_entry_cold_start(policy: str, tau: int, steps: int, lr: float = 0.01, **kw) -> list[float]:
    """Entry 1 is regrown after global step tau − 1 under a constant gradient; its updates (units of lr)."""
    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))  # float64: the increments are read back exactly
    mask = torch.tensor([True, False])
    opt = MaskedAdam([p], lr=lr, eps=0.0, betas=(0.9, 0.999), state_policy=policy, **kw)
    opt.attach_masks({p: mask})
    p.grad = torch.ones(2, dtype=torch.float64)
    opt.step()  # allocate state
    opt.state[p]["step"].fill_(tau - 1)
    if "step_i" in opt.state[p]:
        opt.state[p]["step_i"][0] = tau - 1
    mask[1] = True
    reset_entries(opt, p, torch.tensor([1]))
    out = []
    for _ in range(steps):
        before = p.detach()[1].item()
        p.grad = torch.ones(2, dtype=torch.float64)
        opt.step()
        out.append((before - p.detach()[1].item()) / lr)
    return out


def test_cold_start_p0_global_step_bias_correction():
    b1, b2 = 0.9, 0.999
    for tau in (2, 50, 5001):
        first = _one_entry_cold_start("P0", tau, 1)[0]
        expected = ((1 - b1) / (1 - b1**tau)) / math.sqrt((1 - b2) / (1 - b2**tau))  # §9.5
        assert first == pytest.approx(expected, rel=1e-5)
    assert _one_entry_cold_start("P0", 5001, 1)[0] == pytest.approx(3.1516, abs=1e-4)
    assert _one_entry_cold_start("P1", 10**7, 1)[0] == pytest.approx(3.1623, abs=1e-4)  # tends to √10
    ks = _one_entry_cold_start("P0", 10**7, 100)
    assert max(ks) == pytest.approx(6.5685, abs=1e-3) and ks.index(max(ks)) == 11  # peak at k = 12


def test_cold_start_p2_is_exactly_lr():
    ks = _one_entry_cold_start("P2", 500, 100)
    assert ks == pytest.approx([1.0] * 100, rel=1e-5)  # §9.5: exactly lr every step
    assert sum(ks) == pytest.approx(100.0, rel=1e-5)


def test_cold_start_p3():
    lin = _one_entry_cold_start("P3", 500, 100, warmup_steps=100, warmup_mode="linear_lr")
    assert lin[0] == pytest.approx(0.01, rel=1e-5) and sum(lin) == pytest.approx(50.5, rel=1e-4)
    damp = _one_entry_cold_start("P3", 500, 1, warmup_steps=100, warmup_mode="m_damping", reset_step=1)
    assert damp[0] == pytest.approx(0.014883, abs=1e-6)  # smet.md §6 (code: reset_step 1)
    damp0 = _one_entry_cold_start("P3", 500, 1, warmup_steps=100, warmup_mode="m_damping")
    assert damp0[0] == pytest.approx(0.01, rel=1e-5)
    damp_all = _one_entry_cold_start("P3", 500, 100, warmup_steps=100, warmup_mode="m_damping", reset_step=1)
    assert sum(damp_all) == pytest.approx(16.21, abs=0.01)


def _masked_setup(opt_cls, policy, **kw):
    g = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(6, 5, generator=g))
    b = nn.Parameter(torch.randn(5, generator=g))
    mask = torch.rand(6, 5, generator=g) < 0.5
    with torch.no_grad():
        w.mul_(mask)
    opt = opt_cls([{"params": [w]}, {"params": [b]}], state_policy=policy, **kw)
    opt.attach_masks({w: mask})
    return w, b, mask, opt, g


@pytest.mark.parametrize("policy", ["P0", "P1", "P2", "P5"])
def test_masked_adam_inactive_entries(policy):
    w, b, mask, opt, g = _masked_setup(MaskedAdam, policy, lr=0.05, weight_decay=0.01)
    for _ in range(5):
        w.grad = torch.randn(6, 5, generator=g)
        b.grad = torch.randn(5, generator=g)
        opt.step()
        assert torch.all(w.detach()[~mask] == 0)  # §9.3, P5 included
    st = opt.state[w]
    if policy == "P5":
        assert torch.all(st["exp_avg"][~mask] != 0)  # dense states
    else:
        for key in ("exp_avg", "exp_avg_sq") + (("step_i",) if policy == "P2" else ()):
            assert torch.all(st[key][~mask] == 0)
        if policy == "P2":
            assert st["step_i"].dtype == torch.int32 and torch.all(st["step_i"][mask] == 5)


def test_masked_adam_matches_adamw_without_masks_and_on_active_entries():
    g = torch.Generator().manual_seed(1)
    p1 = nn.Parameter(torch.randn(4, 3, generator=g))
    p2 = nn.Parameter(p1.detach().clone())
    ours = MaskedAdam([p1], lr=0.01, weight_decay=0.1)
    ref = torch.optim.AdamW([p2], lr=0.01, weight_decay=0.1)
    for _ in range(10):
        grad = torch.randn(4, 3, generator=g)
        p1.grad, p2.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    assert torch.allclose(p1, p2, atol=1e-6)


def test_masked_sgd_matches_sgd_and_masks_momentum():
    g = torch.Generator().manual_seed(2)
    p1 = nn.Parameter(torch.randn(4, 3, generator=g))
    p2 = nn.Parameter(p1.detach().clone())
    ours = MaskedSGD([p1], lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    ref = torch.optim.SGD([p2], lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    for _ in range(10):
        grad = torch.randn(4, 3, generator=g)
        p1.grad, p2.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    assert torch.allclose(p1, p2, atol=1e-6)
    w, b, mask, opt, g = _masked_setup(MaskedSGD, "P1", lr=0.1, momentum=0.9)
    for _ in range(3):
        w.grad = torch.randn(6, 5, generator=g)
        opt.step()
    assert torch.all(w.detach()[~mask] == 0) and torch.all(opt.state[w]["momentum_buffer"][~mask] == 0)
    assert torch.all(opt.state[w]["momentum_buffer"][mask] != 0)
    with pytest.raises(ValueError, match="P2"):
        MaskedSGD([p1], state_policy="P2")


@pytest.mark.parametrize("opt_cls,policy", [(MaskedAdam, "P1"), (MaskedAdam, "P2"), (MaskedSGD, "P1")])
def test_resets_keep_shapes_and_groups_and_set_reset_values(opt_cls, policy):
    kw = dict(momentum=0.9) if opt_cls is MaskedSGD else dict(reset_step=3)
    w, b, mask, opt, g = _masked_setup(opt_cls, policy, lr=0.01, **kw)
    for _ in range(3):
        w.grad = torch.randn(6, 5, generator=g)
        b.grad = torch.randn(5, generator=g)
        opt.step()
    shapes = {k: (v.shape, v.dtype) for k, v in opt.state[w].items()}
    n_groups = len(opt.param_groups)
    grown = (~mask).view(-1).nonzero().squeeze(1)[:3]
    removed = mask.view(-1).nonzero().squeeze(1)[:3]
    mask.view(-1)[grown] = True
    mask.view(-1)[removed] = False
    reset_entries(opt, w, grown)
    reset_entries(opt, w, removed, removed=True)
    assert len(opt.param_groups) == n_groups  # §9.6
    assert {k: (v.shape, v.dtype) for k, v in opt.state[w].items()} == shapes
    for key, v in opt.state[w].items():
        if key == "step":
            continue
        flat = v.view(-1)
        assert torch.all(flat[removed] == 0)
        assert torch.all(flat[grown] == (3 if key == "step_i" else 0))


@pytest.mark.parametrize("opt_cls,policy", [(MaskedAdam, "P2"), (MaskedAdam, "P5"), (MaskedSGD, "P1")])
def test_optimizer_state_dict_round_trip_is_bitwise(opt_cls, policy):
    kw = dict(momentum=0.9) if opt_cls is MaskedSGD else {}
    w, b, mask, opt, g = _masked_setup(opt_cls, policy, lr=0.01, **kw)
    grads = [(torch.randn(6, 5, generator=g), torch.randn(5, generator=g)) for _ in range(6)]
    for gw, gb in grads[:3]:
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "w": w.detach(), "b": b.detach()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    w2, b2 = nn.Parameter(saved["w"].clone()), nn.Parameter(saved["b"].clone())
    opt2 = opt_cls([{"params": [w2]}, {"params": [b2]}], lr=0.5, state_policy="P1", **kw)
    opt2.attach_masks({w2: mask.clone()})
    opt2.load_state_dict(saved["opt"])
    _assert_equal_nested(opt.state_dict(), opt2.state_dict())
    for gw, gb in grads[3:]:
        w.grad, b.grad = gw.clone(), gb.clone()
        w2.grad, b2.grad = gw.clone(), gb.clone()
        opt.step()
        opt2.step()
    assert torch.equal(w, w2) and torch.equal(b, b2)
    _assert_equal_nested(opt.state_dict(), opt2.state_dict())


def test_skip_next_step_runs_closure_only():
    w, b, mask, opt, g = _masked_setup(MaskedAdam, "P1", lr=0.1)
    w.grad = torch.ones(6, 5)
    before = w.detach().clone()
    calls = []
    opt.skip_next_step = True
    opt.step(lambda: calls.append(1))
    assert calls == [1] and torch.equal(before, w.detach()) and not opt.state
    opt.step()
    assert not torch.equal(before, w.detach())


# ------------------------------------------------------------------------------------------------
# §6 hook order (pinned Lightning)
# ------------------------------------------------------------------------------------------------


def test_hook_order_of_pinned_lightning():
    rec: list = []

    class RecordingAdam(MaskedAdam):
        def step(self, closure=None):
            out = super().step(closure)
            rec.append("step")
            return out

    class Net(DSTTinyNet):
        def training_step(self, batch, batch_idx):
            rec.append("training_step")
            return super().training_step(batch, batch_idx)

        def optimizer_zero_grad(self, *args, **kwargs):
            rec.append("zero_grad")
            super().optimizer_zero_grad(*args, **kwargs)

        def on_after_backward(self):
            rec.append("backward")

    class Recorder(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            rec.append(("batch_start", trainer.global_step))

        def on_before_optimizer_step(self, trainer, *args):
            rec.append(("before_optimizer_step", trainer.global_step))

        def on_train_batch_end(self, trainer, *args):
            rec.append(("batch_end", trainer.global_step))

    model = Net(optimizer=functools.partial(RecordingAdam, lr=0.01))
    _trainer([Recorder()], max_steps=2, accumulate_grad_batches=2).fit(model)
    window = [
        ("batch_start", 0), "training_step", "zero_grad", "backward", ("batch_end", 0),
        ("batch_start", 0), "training_step", "backward", ("before_optimizer_step", 0), "step", ("batch_end", 1),
    ]  # fmt: skip
    assert rec[: len(window)] == window
    assert rec[len(window) :] == [(e[0], e[1] + 1) if isinstance(e, tuple) else e for e in window]


# ------------------------------------------------------------------------------------------------
# the callback inside a Trainer
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accumulate", [1, 4])
def test_update_timing_and_fractions(accumulate):
    pl.seed_everything(0, verbose=False)
    topo = SparseTopology(
        preset="rigl", density=0.3, delta_t=2, dense_first_layer=False, skip_step_on_update=False, drop="magnitude"
    )
    topo.record_results = True
    probe = DSTProbe(topo)
    logger = DSTMemoryLogger()
    model = DSTTinyNet(samples=64, batch_size=2)
    _trainer([topo, probe], logger=logger, max_steps=12, accumulate_grad_batches=accumulate).fit(model)
    assert probe.update_steps == [2, 4, 6, 8]  # {ΔT, 2ΔT, …} < T_end = 0.75·12
    assert probe.before_opt_steps == list(range(12))  # once per real optimizer step
    assert probe.steps_checked == 12
    fr = logger.series("sparse/drop_fraction")
    assert fr == {t: pytest.approx(0.15 * (1 + math.cos(math.pi * t / 9))) for t in (2, 4, 6, 8)}


@pytest.mark.parametrize(
    "preset,opt,overrides",
    [
        ("rigl", functools.partial(MaskedAdam, lr=0.01), dict(state_policy="P2", reset_step=2, delta_t=3)),
        ("set", functools.partial(MaskedSGD, lr=0.05, momentum=0.9), dict(delta_t=3)),
        ("neurotrails_lm", functools.partial(torch.optim.Adam, lr=0.01), dict(delta_t=3, density=0.6)),
        ("smet", functools.partial(MaskedAdam, lr=0.01), dict(delta_t=3, warmup_steps=4)),
        ("sparse_dc", functools.partial(MaskedAdam, lr=0.01), dict(delta_t=3)),  # sparse_scaling.md §6 "DST"
    ],
)
def test_callback_invariants_in_training(preset, opt, overrides):
    pl.seed_everything(1, verbose=False)
    kw = dict(density=0.3, **{k: v for k, v in overrides.items() if k != "density"})
    kw["density"] = overrides.get("density", 0.3)
    topo = SparseTopology(preset=preset, **kw)
    topo.record_results = True
    probe = DSTProbe(topo)
    logger = DSTMemoryLogger()
    model = DSTTinyNet(optimizer=opt)
    w0 = [e.weight.detach().clone() for e in model.mask_set().values()]
    _trainer([topo, probe], logger=logger, max_steps=16).fit(model)
    assert len(probe.update_steps) >= 3 and probe.steps_checked == 16
    counts = topo.counts
    entries = _sparse_entries(model, topo)
    assert [int(e.mask.sum()) for _, e in entries] == counts
    assert any(not torch.equal(a, e.weight.detach()) for a, (_, e) in zip(w0, entries))
    last = logger.rows
    keys = set().union(*(m.keys() for _, m in last))
    for key in (
        "sparse/density",
        "sparse/drop_fraction",
        "sparse/regrown",
        "sparse/removed",
        "sparse/mask_change_from_init",
        "sparse/regrown_survival",
        "sparse/optimizer_state_bytes",
        f"sparse/density/{topo.layer_names[0]}",
    ):
        assert key in keys, key
    change = logger.series("sparse/mask_change_from_init")
    assert 0 < max(change.values()) <= 2.0
    assert all(0.0 <= v <= 1.0 for v in logger.series("sparse/regrown_survival").values())
    total = sum(math.prod(e.weight.shape) for _, e in entries)
    assert logger.series("sparse/density")[0] == pytest.approx(sum(counts) / total)


def test_delta_t_epoch_and_skip_step_on_update():
    pl.seed_everything(0, verbose=False)
    topo = SparseTopology(preset="set", density=0.4, state_policy="P1")  # ΔT = one epoch = 8 steps
    model = DSTTinyNet(samples=64, batch_size=8)
    probe = DSTProbe(topo)
    topo.record_results = True
    _trainer([topo, probe], max_steps=24).fit(model)
    assert probe.update_steps == [8, 16]  # constant ζ, no end: every epoch before T = 24
    pl.seed_everything(0, verbose=False)
    topo = SparseTopology(preset="rigl", density=0.4, delta_t=2, dense_first_layer=False)  # RigL skips the step
    model = DSTTinyNet()
    trainer = _trainer([topo], max_steps=12)
    trainer.fit(model)
    assert topo.config.skip_step_on_update and topo.updates == 4  # updates after steps 2, 4, 6, 8
    steps = {int(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert steps == {12 - 4}  # the optimizer really stepped only on the other iterations


def test_mask_change_matches_recomputed_initial_mask():
    pl.seed_everything(2, verbose=False)
    topo = SparseTopology(preset="rigl", density=0.4, delta_t=2, dense_first_layer=False, drop="random", grow="random")
    logger = DSTMemoryLogger()
    model = DSTTinyNet()
    init_masks = None

    class Grab(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            nonlocal init_masks
            init_masks = [e.mask.clone() for _, e in _sparse_entries(pl_module, topo)]

    _trainer([topo, Grab()], logger=logger, max_steps=4).fit(model)
    masks = [e.mask for _, e in _sparse_entries(model, topo)]
    hamming = sum(int((a != b).sum()) for a, b in zip(init_masks, masks))
    change = logger.series("sparse/mask_change_from_init")
    assert list(change) == [2]  # T_end = 0.75·4 = 3: the only update follows step 2
    assert hamming > 0 and change[2] == pytest.approx(hamming / sum(topo.counts))


def test_plain_optimizer_needs_p5_and_non_haspmasks_module_fails():
    pl.seed_everything(0, verbose=False)
    topo = SparseTopology(preset="rigl", density=0.5, state_policy="P1", skip_step_on_update=False)
    model = DSTTinyNet(optimizer=functools.partial(torch.optim.Adam, lr=0.01))
    with pytest.raises(TypeError, match="MaskedAdam or MaskedSGD"):
        _trainer([topo], max_steps=1).fit(model)

    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(2, 2)

    with pytest.raises(TypeError, match="HasMasks"):
        SparseTopology().setup(_trainer([]), Plain(), "fit")


def test_check_consistency_raises_on_rank_mismatch(monkeypatch, tmp_path):
    import torch.distributed as dist

    topo = SparseTopology(density=0.5, check_consistency=True, dense_first_layer=False)
    model = DSTTinyNet()
    topo.setup(_trainer([]), model, "fit")
    layers = topo._layers(model)
    topo._check_ranks(layers, 1)  # not initialised: a no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        topo._check_ranks(layers, 1)  # one rank agrees with itself

        def fake_all_gather(out, rows):
            out[0].copy_(rows)
            out[1].copy_(rows)
            out[1][0, 1] += 1  # the other rank saw a different index sum

        monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
        monkeypatch.setattr(dist, "all_gather", fake_all_gather)
        with pytest.raises(RuntimeError, match="masks differ"):
            topo._check_ranks(layers, 1)
    finally:
        dist.destroy_process_group()


class DSTStopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def _resume_run(tmp_path, stop: bool, ckpt: str | None):
    pl.seed_everything(3, verbose=False)
    topo = SparseTopology(preset="rigl", density=0.3, delta_t=3, state_policy="P2", reset_step=1)
    model = DSTTinyNet(samples=48, batch_size=4)  # 12 optimizer steps per epoch
    callbacks = [topo, ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)]
    if stop:
        callbacks.append(DSTStopAfterFirstEpoch())
    trainer = _trainer(callbacks, max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, ckpt_path=ckpt)
    return model, trainer, topo


def test_resume_is_bitwise_identical(tmp_path):
    straight, t_straight, topo_straight = _resume_run(tmp_path / "a", stop=False, ckpt=None)
    half, _, topo_half = _resume_run(tmp_path / "b", stop=True, ckpt=None)
    mid_weights = {k: v.clone() for k, v in half.state_dict().items()}
    updates_mid = topo_half.updates
    resumed, t_resumed, topo_resumed = _resume_run(tmp_path / "c", stop=False, ckpt=str(tmp_path / "b" / "last.ckpt"))
    assert t_straight.global_step == t_resumed.global_step == 24
    assert topo_straight.updates > topo_resumed.updates - updates_mid > 0 and updates_mid > 0  # updates on both sides
    _assert_equal_nested(straight.state_dict(), resumed.state_dict())  # weights and masks
    _assert_equal_nested(t_straight.optimizers[0].state_dict(), t_resumed.optimizers[0].state_dict())
    _assert_equal_nested(topo_straight.state_dict(), topo_resumed.state_dict())
    assert any(not torch.equal(mid_weights[k], v) for k, v in resumed.state_dict().items() if k.endswith("weight"))
    assert any(not torch.equal(mid_weights[k], v) for k, v in resumed.state_dict().items() if k.endswith("mask"))
    step_i = [v["step_i"] for v in t_resumed.optimizers[0].state.values() if "step_i" in v]
    assert step_i and all(s.dtype == torch.int32 for s in step_i)


# ------------------------------------------------------------------------------------------------
# §7 / §9.7: two CPU ranks
# ------------------------------------------------------------------------------------------------


class DSTMaskDump(pl.Callback):
    """Each rank saves its masks after every update, and its final (gathered) weights."""

    def __init__(self, topo: SparseTopology, out_dir: str, tag: str) -> None:
        self.topo = topo
        self.out_dir = out_dir
        self.tag = tag
        self.history: list = []
        self._updates = 0

    def on_train_batch_end(self, trainer, pl_module, *args):
        if self.topo.updates != self._updates:
            self._updates = self.topo.updates
            self.history.append({n: e.mask.clone() for n, e in _sparse_entries(pl_module, self.topo)})

    def on_train_end(self, trainer, pl_module):
        weights = {
            k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone() for k, v in pl_module.state_dict().items()
        }
        path = os.path.join(self.out_dir, f"{self.tag}_rank{trainer.global_rank}.pt")
        torch.save({"history": self.history, "weights": weights}, path)


class DSTTinyShardedNet(DSTTinyNet):
    """``DSTTinyNet`` that shards every linear with FSDP2 under ``ModelParallelStrategy`` (else dense)."""

    def configure_model(self) -> None:
        if self.device_mesh is None:
            return
        from torch.distributed.fsdp import FSDPModule, fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear) and not isinstance(layer, FSDPModule):
                fully_shard(layer, mesh=mesh)
        if not isinstance(self.net, FSDPModule):
            fully_shard(self.net, mesh=mesh)


def dst_two_rank_run(out_dir: str, strategy, tag: str) -> None:
    """Train the tiny sharded-capable net on 2 CPU ranks with ``check_consistency`` and dump masks."""
    pl.seed_everything(4, verbose=False)
    topo = SparseTopology(
        preset="rigl",
        density=0.3,
        delta_t=2,
        drop="magnitude_noise",
        grow="random",
        state_policy="P2",
        check_consistency=True,
    )
    model = DSTTinyShardedNet(samples=64, batch_size=4, hidden=30)  # 30 rows: uneven shards are fine
    _trainer([topo, DSTMaskDump(topo, out_dir, tag)], strategy=strategy, devices=2, max_steps=8).fit(model)


def _load_ranks(tmp_path, tag):
    return [torch.load(tmp_path / f"{tag}_rank{r}.pt") for r in (0, 1)]


@pytest.mark.ddp
def test_two_rank_ddp_masks_agree(tmp_path):
    dst_two_rank_run(str(tmp_path), "ddp_spawn", "ddp")
    r0, r1 = _load_ranks(tmp_path, "ddp")
    assert len(r0["history"]) == len(r1["history"]) == 2  # updates at 2 and 4 < T_end = 0.75·8
    _assert_equal_nested(r0["history"], r1["history"])
    _assert_equal_nested(r0["weights"], r1["weights"])
    assert any(not torch.equal(a, b) for a, b in zip(r0["history"][0].values(), r0["history"][-1].values()))


_FSDP2_SCRIPT = """
import sys
from lightning.pytorch.strategies import ModelParallelStrategy
from tests.test_dst_core import dst_two_rank_run
dst_two_rank_run(sys.argv[1], ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1), "fsdp2")
"""


@pytest.mark.ddp
@pytest.mark.slow
def test_fsdp2_two_ranks_match_ddp(tmp_path):
    """FSDP2 (DTensor weights, replicated masks) gives the masks of DDP on the same 2-rank run."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "fsdp2_run.py"
    script.write_text(_FSDP2_SCRIPT)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    f0, f1 = _load_ranks(tmp_path, "fsdp2")
    _assert_equal_nested(f0["history"], f1["history"])
    dst_two_rank_run(str(tmp_path), "ddp_spawn", "ddp")
    d0, _ = _load_ranks(tmp_path, "ddp")
    assert len(f0["history"]) == 2
    _assert_equal_nested(f0["history"], d0["history"])  # same topology decisions as DDP
    for key, value in d0["weights"].items():
        assert torch.allclose(f0["weights"][key].float(), value.float(), atol=1e-5), key


def dst_fsdp2_resume_run(mode: str, out_dir: str) -> None:
    """FSDP2 on 2 CPU ranks: ``straight`` (2 epochs), ``half`` (stops after 1), ``resumed`` (from half)."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    pl.seed_everything(5, verbose=False)
    topo = SparseTopology(
        preset="rigl", density=0.3, delta_t=3, grow="gradient", state_policy="P2", reset_step=1, check_consistency=True
    )
    model = DSTTinyShardedNet(samples=64, batch_size=4, hidden=30)  # 8 steps per epoch and rank
    callbacks = [topo, ModelCheckpoint(dirpath=os.path.join(out_dir, mode), save_last=True, save_top_k=0)]
    if mode == "half":
        callbacks.append(DSTStopAfterFirstEpoch())
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    trainer = _trainer(callbacks, strategy=strategy, devices=2, max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, ckpt_path=os.path.join(out_dir, "half", "last.ckpt") if mode == "resumed" else None)

    def full(v):
        return (v.full_tensor() if hasattr(v, "full_tensor") else v).clone()

    names = {id(p): n for n, p in model.named_parameters()}
    result = {
        "weights": {k: full(v) for k, v in model.state_dict().items()},
        "optimizer": {names[id(p)]: {k: full(v) for k, v in s.items()} for p, s in trainer.optimizers[0].state.items()},
        "callback": topo.state_dict(),
        "step": trainer.global_step,
    }
    if trainer.global_rank == 0:
        torch.save(result, os.path.join(out_dir, f"{mode}.pt"))


_FSDP2_RESUME_SCRIPT = """
import sys
from tests.test_dst_core import dst_fsdp2_resume_run
dst_fsdp2_resume_run(sys.argv[1], sys.argv[2])
"""


@pytest.mark.ddp
@pytest.mark.slow
def test_fsdp2_resume_is_bitwise_identical(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "fsdp2_resume.py"
    script.write_text(_FSDP2_RESUME_SCRIPT)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for mode in ("straight", "half", "resumed"):
        proc = subprocess.run(
            [sys.executable, str(script), mode, str(tmp_path)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    straight, half, resumed = (torch.load(tmp_path / f"{m}.pt") for m in ("straight", "half", "resumed"))
    assert straight["step"] == resumed["step"] == 16 and half["step"] == 8
    assert 0 < half["callback"]["updates"] < resumed["callback"]["updates"]
    for key in ("weights", "optimizer", "callback"):
        _assert_equal_nested(straight[key], resumed[key], key)
    assert any(not torch.equal(half["weights"][k], v) for k, v in resumed["weights"].items() if k.endswith("mask"))
