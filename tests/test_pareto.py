"""Pareto-front measures, the MGDA min-norm solver and the Pareto-front callback (trainer/pareto.py,
callbacks/pareto.py; moc.md §3 "Min-norm solver", §6, §8).

The pure functions are checked against the hand-computed values of moc.md §6 and against ``moocore`` / brute
force on seeded random inputs; the callback in short real fits of a fake preference-scoring module on CPU
(TensorBoard events and CSV read back).
"""

from __future__ import annotations

import copy
import csv
import pickle

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from callbacks import ParetoFrontEvalCallback
from trainer.pareto import (
    adjacent_pairs,
    diversity,
    examples_markdown,
    front_metrics,
    hypervolume,
    hypervolume_slicing,
    kendall_tau,
    local_order_rate,
    min_norm_2,
    min_norm_frank_wolfe,
    min_norm_weights,
    non_dominated,
    non_dominated_sort,
    preference_kendall_tau,
    reference_point,
    simplex_grid,
    unseen_grid,
)
from trainer.protocols import ScoresPreferences

moocore = pytest.importorskip("moocore")


# ----------------------------------------------------------------------------------------------
# hypervolume (moc.md §6 "Hypervolume")
# ----------------------------------------------------------------------------------------------

FRONT = [(1, 3), (2, 2), (3, 1)]


def test_hypervolume_2d_spec_values():
    assert hypervolume(FRONT, (0, 0)) == pytest.approx(6.0)
    assert hypervolume([*FRONT, (1, 1)], (0, 0)) == pytest.approx(6.0)  # a dominated point adds nothing
    assert hypervolume(FRONT, (0.5, 0.5)) == pytest.approx(3.25)


def test_hypervolume_3d_spec_values():
    assert hypervolume([(1, 1, 1)], (0, 0, 0)) == pytest.approx(1.0)
    assert hypervolume([(2, 1, 1), (1, 2, 1)], (0, 0, 0)) == pytest.approx(3.0)
    assert hypervolume_slicing([(1, 1, 1)], (0, 0, 0)) == pytest.approx(1.0)
    assert hypervolume_slicing([(2, 1, 1), (1, 2, 1)], (0, 0, 0)) == pytest.approx(3.0)


def test_hypervolume_edge_cases():
    assert hypervolume([(2.0,), (3.0,)], (1.0,)) == pytest.approx(2.0)  # N = 1: max − ref
    assert hypervolume(np.zeros((0, 2)), (0, 0)) == 0.0
    assert hypervolume([(0, 5), (5, 0), (-1, 9)], (0, 0)) == 0.0  # not strictly better than ref anywhere
    assert hypervolume([(1, 3), (1, 3), (3, 1)], (0, 0)) == pytest.approx(5.0)  # duplicates count once
    assert hypervolume([(1, 3), (3, 1)], (1, 0)) == pytest.approx(2.0)  # (1, 3) sits on the ref's boundary
    assert hypervolume(torch.tensor(FRONT, dtype=torch.float32), torch.zeros(2)) == pytest.approx(6.0)


def test_hypervolume_agrees_with_moocore_on_random_sets():
    rng = np.random.default_rng(0)
    for case in range(30):
        n = 2 if case < 20 else 3
        pts = rng.uniform(0, 1, size=(int(rng.integers(1, 25)), n))
        ref = rng.uniform(-0.2, 0.3, size=n)
        inside = pts[np.all(pts > ref, axis=1)]
        expected = float(moocore.hypervolume(-inside, ref=-ref)) if len(inside) else 0.0
        assert hypervolume(pts, ref) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert hypervolume_slicing(pts, ref) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_hypervolume_4d_slicing_agrees_with_moocore():
    rng = np.random.default_rng(1)
    for _ in range(5):
        pts, ref = rng.uniform(0, 1, size=(8, 4)), np.zeros(4)
        assert hypervolume(pts, ref) == pytest.approx(hypervolume_slicing(pts, ref), rel=1e-9)


def test_hypervolume_falls_back_without_moocore(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_moocore(name, *args, **kwargs):
        if name == "moocore":
            raise ImportError("hidden for this test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_moocore)
    assert hypervolume([(2, 1, 1), (1, 2, 1)], (0, 0, 0)) == pytest.approx(3.0)


@pytest.mark.parametrize(
    "points, ref",
    [
        ([(1, 2, 3)], (0, 0)),  # ref length != N
        ([1, 2], (0, 0)),  # not 2-D
        ([(1, np.nan)], (0, 0)),
        ([(1, 2)], (0, np.inf)),
    ],
)
def test_hypervolume_bad_input(points, ref):
    with pytest.raises(ValueError):
        hypervolume(points, ref)


def test_reference_point_and_diversity():
    np.testing.assert_allclose(reference_point([(1, 3), (2, 2), (3, 1)]), [0.9, 0.9])
    np.testing.assert_allclose(reference_point([(1, 3), (2, -2)], margin=0.5), [0.5, -2.5])
    assert diversity([(0, 0), (3, 4), (6, 8)]) == pytest.approx((5 + 10 + 5) / 3)
    assert diversity([(1, 1)]) == 0.0
    with pytest.raises(ValueError):
        reference_point(np.zeros((0, 2)))
    with pytest.raises(ValueError):
        diversity([(1, np.nan)])


# ----------------------------------------------------------------------------------------------
# non-dominated filter and sort
# ----------------------------------------------------------------------------------------------


def test_non_dominated_on_crafted_set():
    pts = np.array(
        [
            (3, 1),  # 0 front
            (1, 3),  # 1 front
            (2, 2),  # 2 front
            (2, 2),  # 3 duplicate of a front point: kept
            (2, 1),  # 4 dominated by (3, 1) and (2, 2)
            (1, 1),  # 5 dominated
            (3, 0),  # 6 tie in the first objective, worse in the second: dominated by (3, 1)
            (0, 3),  # 7 dominated by (1, 3)
            (1, 1),  # 8 duplicate of a dominated point: dropped
        ]
    )
    np.testing.assert_array_equal(non_dominated(pts), [1, 1, 1, 1, 0, 0, 0, 0, 0])
    fronts = non_dominated_sort(pts)
    assert [sorted(f.tolist()) for f in fronts] == [[0, 1, 2, 3], [4, 6, 7], [5, 8]]
    assert non_dominated(np.zeros((0, 3))).shape == (0,)
    with pytest.raises(ValueError):
        non_dominated([1, 2, 3])


# ----------------------------------------------------------------------------------------------
# grids
# ----------------------------------------------------------------------------------------------


def test_simplex_grid_sizes_and_order():
    g2 = simplex_grid(2, 0.1)
    assert g2.shape == (11, 2)
    np.testing.assert_allclose(g2[:, 0], np.round(np.linspace(1, 0, 11), 10))
    np.testing.assert_allclose(g2.sum(axis=1), 1.0)
    g3 = simplex_grid(3, 0.1)
    assert g3.shape == (66, 3)
    assert len({tuple(r) for r in g3}) == 66
    np.testing.assert_allclose(g3.sum(axis=1), 1.0)
    assert tuple(g3[0]) == (1.0, 0.0, 0.0) and tuple(g3[-1]) == (0.0, 0.0, 1.0)
    np.testing.assert_array_equal(simplex_grid(1, 0.5), [[1.0]])


def test_unseen_grid_midpoints():
    np.testing.assert_allclose(unseen_grid(2, 0.2)[:, 0], [0.9, 0.7, 0.5, 0.3, 0.1])
    u3, s3 = unseen_grid(3, 0.1), simplex_grid(3, 0.1)
    assert len(u3) == len(simplex_grid(3, 0.05)) - 66
    assert not {tuple(r) for r in u3} & {tuple(r) for r in s3}


@pytest.mark.parametrize("step", [0.3, 0.0, -0.1, 1.5, float("nan")])
def test_grid_bad_step(step):
    with pytest.raises(ValueError):
        simplex_grid(2, step)


def test_grid_bad_n_obj():
    with pytest.raises(ValueError):
        simplex_grid(0, 0.5)


def test_adjacent_pairs():
    assert adjacent_pairs(simplex_grid(2, 0.5), 0.5) == [(0, 1, 0, 1), (1, 2, 0, 1)]
    g3 = simplex_grid(3, 0.5)  # (1,0,0) (.5,.5,0) (.5,0,.5) (0,1,0) (0,.5,.5) (0,0,1)
    pairs = adjacent_pairs(g3, 0.5)
    assert len(pairs) == 9  # the 9 edges of the triangular grid with 3 points a side
    for i, j, a, b in pairs:
        assert a < b
        expected = g3[i].copy()
        expected[a] -= 0.5
        expected[b] += 0.5
        np.testing.assert_allclose(g3[j], expected)


# ----------------------------------------------------------------------------------------------
# Kendall τ and local order rate (moc.md §6)
# ----------------------------------------------------------------------------------------------


def test_kendall_tau_spec_value():
    assert kendall_tau([0, 0.25, 0.5, 0.75, 1], [0.1, 0.2, 0.4, 0.3, 0.9]) == pytest.approx(0.8)
    assert kendall_tau([0, 1, 2], [5, 5, 5]) == 0.0  # constant: undefined → 0
    assert kendall_tau([1.0], [2.0]) == 0.0
    with pytest.raises(ValueError):
        kendall_tau([0, 1], [0, 1, 2])
    with pytest.raises(ValueError):
        kendall_tau([0, np.nan], [0, 1])


def test_preference_kendall_tau():
    g = simplex_grid(2, 0.1)
    assert preference_kendall_tau(g, 2 * g + 1) == pytest.approx(1.0)
    assert preference_kendall_tau(g, -g) == pytest.approx(-1.0)


def test_local_order_rate_spec_values():
    g = simplex_grid(2, 0.1)
    monotone = np.stack([g[:, 0], 1 - g[:, 0]], axis=1)
    assert local_order_rate(g, monotone, 0.1) == pytest.approx(1.0)
    assert local_order_rate(g, np.ones((11, 2)), 0.1) == pytest.approx(0.0)  # ties fail
    reversed_pair = monotone.copy()
    reversed_pair[[4, 5]] = reversed_pair[[5, 4]]
    assert local_order_rate(g, reversed_pair, 0.1) == pytest.approx(0.9)
    half = monotone.copy()
    half[:, 0] = 0.0  # R^a constant: no pair has R^a strictly falling
    assert local_order_rate(g, half, 0.1) == 0.0
    with pytest.raises(ValueError):
        local_order_rate(g, monotone[:5], 0.1)
    with pytest.raises(ValueError):
        local_order_rate(simplex_grid(1, 0.5), np.ones((1, 1)), 0.5)  # no adjacent pairs


# ----------------------------------------------------------------------------------------------
# min-norm (moc.md §3 "Min-norm solver", §6 table)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "v1, v2, gamma, combined",
    [
        ((1, 0), (0, 1), 0.5, (0.5, 0.5)),
        ((1, 0), (-1, 1), 0.6, (0.2, 0.4)),
        ((3, 0), (0, 1), 0.1, (0.3, 0.9)),
        ((1, 0), (2, 0), 0.999, None),
    ],
)
def test_min_norm_2_spec_table(v1, v2, gamma, combined):
    v1, v2 = np.array(v1, float), np.array(v2, float)
    g = min_norm_2(v1 @ v1, v1 @ v2, v2 @ v2)
    assert g == pytest.approx(gamma, abs=1e-9)
    if combined is not None:
        np.testing.assert_allclose(g * v1 + (1 - g) * v2, combined, atol=1e-9)
    gram = np.array([[v1 @ v1, v1 @ v2], [v1 @ v2, v2 @ v2]])
    np.testing.assert_allclose(min_norm_weights(gram), [gamma, 1 - gamma], atol=1e-9)


def test_min_norm_2_other_edge_and_bad_input():
    assert min_norm_2(4.0, 2.0, 1.0) == 0.001  # v1·v2 ≥ v2·v2: v2 is the min-norm point
    with pytest.raises(ValueError):
        min_norm_2(1.0, float("nan"), 1.0)


def test_frank_wolfe_spec_values():
    np.testing.assert_allclose(min_norm_frank_wolfe(np.eye(3)), [1 / 3, 1 / 3, 1 / 3], atol=1e-6)
    np.testing.assert_allclose(min_norm_frank_wolfe(np.eye(3), polish=False), [1 / 3, 1 / 3, 1 / 3], atol=1e-6)
    np.testing.assert_allclose(min_norm_frank_wolfe(np.diag([1.0, 4.0])), [0.8, 0.2], atol=1e-9)
    np.testing.assert_allclose(min_norm_weights(torch.eye(3)), [1 / 3, 1 / 3, 1 / 3], atol=1e-6)


def test_min_norm_weights_edge_cases():
    np.testing.assert_array_equal(min_norm_weights(np.array([[2.0]])), [1.0])
    np.testing.assert_allclose(min_norm_weights(np.zeros((4, 4))), [0.25] * 4)  # all-zero gradients: uniform
    w = min_norm_weights(torch.tensor([[1.0, 1.0, 1.0]] * 3))  # identical vectors: any c, on the simplex
    assert w.dtype == np.float64 and w.sum() == pytest.approx(1.0) and np.all(w >= 0)
    for bad in (np.ones((2, 3)), np.zeros((0, 0)), np.array([[1.0, np.nan], [np.nan, 1.0]])):
        with pytest.raises(ValueError):
            min_norm_weights(bad)
    with pytest.raises(ValueError):
        min_norm_frank_wolfe(np.ones((1, 1)))


def test_closed_form_and_frank_wolfe_agree_on_two_vectors():
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.normal(size=(2, int(rng.integers(2, 9)))) * rng.uniform(0.1, 5.0, size=(2, 1))
        gram = v @ v.T
        closed, fw = min_norm_weights(gram), min_norm_frank_wolfe(gram)
        # the closed form clips an end-point optimum to 0.999 / 0.001; Frank-Wolfe reaches the vertex itself
        np.testing.assert_allclose(fw, closed, atol=1e-3 + 1e-9)
        assert np.linalg.norm(fw @ v) == pytest.approx(np.linalg.norm(closed @ v), abs=1e-3 * np.abs(v).max())


def _quad(gram: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.einsum("...i,ij,...j->...", c, gram, c)


def test_frank_wolfe_is_the_minimum_of_the_qp():
    rng = np.random.default_rng(1)
    for k in (3, 4, 5):
        for case in range(20):
            v = rng.normal(size=(k, int(rng.integers(1, 8)))) * rng.uniform(0.1, 10.0)
            if case % 4 == 0:
                v[1] = 0.7 * v[0] + 0.01 * rng.normal(size=v.shape[1])  # nearly collinear gradients
            gram = v @ v.T
            c = min_norm_frank_wolfe(gram)
            assert np.all(c >= 0) and c.sum() == pytest.approx(1.0)
            others = rng.dirichlet(np.ones(k), size=2000)
            assert _quad(gram, c) <= _quad(gram, others).min() + 1e-6
            if k == 3:  # a fine brute force over the simplex
                n = 200
                grid = np.array([(i, j, n - i - j) for i in range(n + 1) for j in range(n + 1 - i)]) / n
                assert _quad(gram, c) <= _quad(gram, grid).min() + 1e-9


# ----------------------------------------------------------------------------------------------
# one evaluation and its text table
# ----------------------------------------------------------------------------------------------


def test_front_metrics_on_a_linear_front():
    step = 0.1
    seen, unseen = simplex_grid(2, step), unseen_grid(2, step)
    m = front_metrics(seen, seen, (0.0, 0.0), step, unseen_grid=unseen, unseen_rewards=unseen, shares=seen)
    assert m["kendall_tau"] == pytest.approx(1.0)
    assert m["local_order_rate"] == m["local_order_rate_union"] == 1.0
    assert m["front_size"] == 21  # every point of the line p₁ + p₂ = 1 is non-dominated
    assert m["ctl_error"] == 0.0
    assert m["extreme_frac"] == pytest.approx(4 / 11)  # s₁ ∈ {0, .1, .9, 1}
    assert m["hv_seen"] == pytest.approx(hypervolume(seen, (0, 0)))
    # a policy that ignores p: one point, no order
    const = np.full_like(seen, 0.5)
    m = front_metrics(seen, const, (0.0, 0.0), step, unseen_grid=unseen, unseen_rewards=np.full_like(unseen, 0.5))
    assert m["hv_seen"] == pytest.approx(0.25) and m["local_order_rate"] == 0.0 and m["kendall_tau"] == 0.0
    assert "ctl_error" not in m and "extreme_frac" not in m and m["diversity"] == 0.0


def test_examples_markdown_spreads_and_escapes():
    examples = [
        {"preference": (1 - i / 10, i / 10), "prompt": f"q{i}", "response": "a|b\nc", "rewards": (i, -i)}
        for i in range(11)
    ]
    table = examples_markdown(examples, ("harmless", "helpful"), max_preferences=3)
    lines = table.splitlines()
    assert lines[0] == "| p | prompt | response | R harmless | R helpful |"
    assert len(lines) == 2 + 3
    assert "(1.00, 0.00)" in lines[2] and "(0.50, 0.50)" in lines[3] and "(0.00, 1.00)" in lines[4]
    assert "a\\|b c" in lines[2]
    assert examples_markdown([], ("a", "b")) == ""


# ----------------------------------------------------------------------------------------------
# the callback in real fits
# ----------------------------------------------------------------------------------------------


class FakePreferenceScorer(LightningModule):
    """Rewards that follow p (``mode="good"``) or ignore it (``"constant"``), scaled by a trained parameter."""

    def __init__(self, mode: str = "good", names: tuple = ("alpha", "beta")) -> None:
        super().__init__()
        self.mode = mode
        self.objective_names = tuple(names)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[int] = []

    def training_step(self, batch, batch_idx):
        return ((self.w - 1.0) ** 2).sum()  # w moves from 0 towards 1: the "training progress"

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)

    def score_preferences(self, preferences):
        self.calls.append(len(preferences))
        p = np.asarray(preferences, dtype=np.float64)
        progress = float(self.w.detach())
        if self.mode == "good":
            rewards = p * (1.0 + progress)
        else:
            rewards = np.full_like(p, 0.5 + progress)
        return {
            "rewards": rewards,
            "raw_rewards": 10 * rewards,
            "shares": p if self.mode == "good" else None,
            "examples": [
                {"preference": tuple(row), "prompt": "hi", "response": f"r{i}", "rewards": tuple(rewards[i])}
                for i, row in enumerate(p)
            ],
        }


class NoProtocolModule(FakePreferenceScorer):
    score_preferences = None  # type: ignore[assignment]  # a runtime protocol refuses a None method


def _fit(tmp_path, module, callback, max_epochs=2, ckpt_path=None) -> Trainer:
    trainer = Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=TensorBoardLogger(str(tmp_path), name="tb"),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=1,
        callbacks=[callback],
    )  # fmt: skip
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_callback_two_epoch_fit_logs_front(tmp_path):
    module = FakePreferenceScorer("good")
    cb = ParetoFrontEvalCallback(grid_step=0.1)
    trainer = _fit(tmp_path, module, cb)
    assert isinstance(module, ScoresPreferences)
    assert [h["epoch"] for h in cb.history] == [0, 1, 2]
    assert module.calls == [11, 10] * 3  # seen and unseen grid per evaluation
    # the reference point comes from the initial policy (rewards = p) and stays fixed
    np.testing.assert_allclose(cb.ref_point, [-0.1, -0.1])
    np.testing.assert_allclose(cb.initial, simplex_grid(2, 0.1))
    m = cb.last_metrics
    assert m["kendall_tau"] == pytest.approx(1.0) and m["local_order_rate"] == 1.0
    assert m["local_order_rate_union"] == 1.0 and m["ctl_error"] == 0.0 and m["front_size"] == 21
    assert cb.history[-1]["metrics"]["hv_seen"] > cb.history[0]["metrics"]["hv_seen"]  # w grew the front
    acc = _events(trainer.log_dir)
    tags = acc.Tags()
    for name in ("hv_seen", "hv_unseen", "kendall_tau", "local_order_rate", "local_order_rate_union",
                 "front_size", "diversity", "ctl_error", "extreme_frac"):  # fmt: skip
        assert f"pareto/{name}" in tags["scalars"], name
    assert len(acc.Scalars("pareto/hv_seen")) == 3
    assert acc.Scalars("pareto/hv_seen")[-1].value == pytest.approx(m["hv_seen"], rel=1e-6)
    assert "pareto/front" in tags["images"]
    assert any(t.startswith("pareto/examples") for t in tags["tensors"])
    # the CSV of every evaluation
    for epoch in (0, 1, 2):
        path = tmp_path / "tb" / "version_0" / f"pareto_epoch{epoch:03d}.csv"
        with open(path) as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0]) == ["split", "p_1", "p_2", "R_1", "R_2", "raw_1", "raw_2", "ref_1", "ref_2",
                                 "non_dominated"]  # fmt: skip
        assert [r["split"] for r in rows] == ["seen"] * 11 + ["unseen"] * 10
        assert {r["ref_1"] for r in rows} == {repr(-0.1)}
        assert all(r["non_dominated"] == "1" for r in rows)
    h = cb.history[-1]
    np.testing.assert_allclose([float(rows[0]["R_1"]), float(rows[0]["raw_1"])], [h["seen_rewards"][0][0],
                               10 * h["seen_rewards"][0][0]])  # fmt: skip


def test_callback_constant_policy_has_no_order(tmp_path):
    cb = ParetoFrontEvalCallback(grid_step=0.25, every_n_epochs=2, save_csv=False, eval_unseen=False)
    _fit(tmp_path, FakePreferenceScorer("constant"), cb)
    assert [h["epoch"] for h in cb.history] == [0, 2]
    m = cb.last_metrics
    assert m["local_order_rate"] == 0.0 and m["kendall_tau"] == 0.0 and m["front_size"] == 5
    assert "ctl_error" not in m and "hv_unseen" not in m
    assert not list(tmp_path.rglob("*.csv"))


def test_callback_three_objectives_and_given_ref_point(tmp_path):
    cb = ParetoFrontEvalCallback(grid_step=0.5, ref_point=(-1.0, -1.0, -1.0), eval_at_start=False)
    module = FakePreferenceScorer("good", names=("a", "b", "c"))
    _fit(tmp_path, module, cb, max_epochs=1)
    assert module.calls == [6, 6, 9]  # the initial policy (seen grid only), then the seen and unseen grids
    assert cb.ref_point == [-1.0, -1.0, -1.0]
    assert [h["epoch"] for h in cb.history] == [1]
    assert cb.last_metrics["hv_seen"] == pytest.approx(hypervolume(cb.history[0]["seen_rewards"], (-1, -1, -1)))


def test_callback_resume_does_not_redo_the_initial_evaluation(tmp_path):
    module = FakePreferenceScorer("good")
    cb = ParetoFrontEvalCallback(grid_step=0.5, save_csv=False)
    trainer = _fit(tmp_path / "a", module, cb, max_epochs=1)
    ckpt = tmp_path / "one.ckpt"
    trainer.save_checkpoint(str(ckpt))
    cb2 = ParetoFrontEvalCallback(grid_step=0.5, save_csv=False)
    _fit(tmp_path / "b", FakePreferenceScorer("good"), cb2, max_epochs=2, ckpt_path=str(ckpt))
    assert [h["epoch"] for h in cb2.history] == [0, 1, 2]
    assert cb2.ref_point == cb.ref_point and cb2.initial == cb.initial
    assert cb2.history[:2] == cb.history


def test_callback_state_round_trip_after_fit(tmp_path):
    cb = ParetoFrontEvalCallback(grid_step=0.5, save_csv=False)
    _fit(tmp_path, FakePreferenceScorer("good"), cb, max_epochs=1)
    state = cb.state_dict()
    assert set(state) == {"ref_point", "initial", "history"}
    fresh = ParetoFrontEvalCallback(grid_step=0.5)
    fresh.load_state_dict(copy.deepcopy(state))
    assert fresh.state_dict() == state and fresh.last_metrics == cb.last_metrics
    assert fresh.state_key == cb.state_key == "ParetoFrontEvalCallback{'name': 'pareto'}"
    assert pickle.loads(pickle.dumps(cb)).state_dict() == state
    with pytest.raises(KeyError):
        fresh.load_state_dict({**state, "extra": 1})


def test_callback_rejects_a_module_without_the_protocol(tmp_path):
    with pytest.raises(TypeError, match="ScoresPreferences"):
        _fit(tmp_path, NoProtocolModule(), ParetoFrontEvalCallback(save_csv=False), max_epochs=1)


def test_callback_rejects_a_ref_point_of_the_wrong_length(tmp_path):
    with pytest.raises(ValueError, match="ref_point has 3 values"):
        _fit(tmp_path, FakePreferenceScorer(), ParetoFrontEvalCallback(ref_point=(0.0, 0.0, 0.0)), max_epochs=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"every_n_epochs": 0},
        {"grid_step": 0.3},
        {"grid_step": 0.0},
        {"grid_step": 2.0},
        {"ref_margin": -1.0},
        {"ref_point": (0.0, float("nan"))},
        {"example_preferences": -1},
        {"name": ""},
    ],
)
def test_callback_argument_validation(kwargs):
    with pytest.raises(ValueError):
        ParetoFrontEvalCallback(**kwargs)


def test_callback_rejects_malformed_scores(tmp_path):
    class BadShape(FakePreferenceScorer):
        def score_preferences(self, preferences):
            out = super().score_preferences(preferences)
            return {**out, "rewards": out["rewards"][:, :1]}

    with pytest.raises(ValueError, match="'rewards' must be a finite"):
        _fit(tmp_path, BadShape(), ParetoFrontEvalCallback(save_csv=False), max_epochs=1)
