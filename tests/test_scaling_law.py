"""The sparse data-constrained scaling law (sparse_scaling.md §3, §6): formulas against hand-computed values,
the paper's qualitative readings, counting, stage selection, the runs CSV, the round trip and the CLI."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import scaling_law as sl
from trainer.scaling_law import (
    MUENNIGHOFF_C4,
    PUBLISHED,
    PUBLISHED_STAGE4_REFIT,
    FitSettings,
    LawCoefficients,
    SparseDCScalingLaw,
)

ROOT = Path(__file__).resolve().parent.parent
TIGHT = FitSettings(tolerance_grad=1e-12, tolerance_change=0.0)


def muennighoff_by_hand(k: LawCoefficients, n: float, d_tokens: float, u: float) -> float:
    """Muennighoff et al. (2023) in plain math: an independent implementation of the dense form."""
    A, B, E = math.exp(k.a), math.exp(k.b), math.exp(k.e)
    G = (k.alpha * A / (k.alpha * B)) ** (1 / (2 * k.alpha))
    u_n = min(n, G * (G * u) ** 1.0)  # β/α = 1
    r_n = max(n / u_n - 1, 0.0)
    r_d = max(d_tokens / u - 1, 0.0)
    n_eff = u_n + u_n * k.rn_star * (1 - math.exp(-r_n / k.rn_star))
    d_eff = u + u * k.rd_star * (1 - math.exp(-r_d / k.rd_star))
    return E + A / n_eff**k.alpha + B / d_eff**k.alpha


# -- the law in float64 (§6) --------------------------------------------------------------------------


@pytest.mark.parametrize("coef", [MUENNIGHOFF_C4, PUBLISHED], ids=["muennighoff", "published"])
@pytest.mark.parametrize(
    "n,d_tokens,u",
    [(1e8, 2e9, 2e9), (6.34e9, 242e9, 25e9), (2e9, 1.6e10, 1e9), (5e7, 4e8, 1e8)],
)
def test_dense_case_equals_muennighoff_by_hand(coef, n, d_tokens, u):
    got = SparseDCScalingLaw(coef).predict(n, 1.0, u, d_tokens)
    assert isinstance(got, float)
    assert got == pytest.approx(muennighoff_by_hand(coef, n, d_tokens, u), rel=1e-12)


def test_datablations_readme_example():
    # github.com/huggingface/datablations README, "Parametric Fit": Figure 1 (right) models.
    law = SparseDCScalingLaw(MUENNIGHOFF_C4)
    assert law.predict(6.34e9, 1.0, 25e9, 242e9) == pytest.approx(2.2256440889984477, abs=1e-4)
    assert law.predict(8.67e9, 1.0, 25e9, 178e9) == pytest.approx(2.2269634075087867, abs=1e-4)


# The authors' held-out runs: (N total, density, U, D, their printed prediction) — fitting notebook.
HELDOUT = [
    (2.68e8, 0.5, 5.2e9, 41.6e9, 2.8764), (2.68e8, 0.5, 5.2e9, 20.8e9, 2.9038),
    (2.68e8, 0.5, 10.4e9, 41.6e9, 2.8634), (5.21e8, 1.0, 2.6e9, 5.2e9, 2.9238),
    (5.21e8, 0.5, 5.2e9, 20.8e9, 2.8343), (5.21e8, 0.25, 5.2e9, 20.8e9, 2.8837),
    (1.17e9, 1.0, 2.6e9, 5.2e9, 2.8703), (1.92e9, 1.0, 2.6e9, 10.4e9, 2.8002),
    (1.92e9, 0.5, 20.8e9, 20.8e9, 2.7250), (3.84e9, 0.5, 2.6e9, 10.4e9, 2.7725),
    (7.68e9, 0.25, 2.6e9, 10.4e9, 2.7790),
]  # fmt: skip


@pytest.mark.parametrize("coef", [PUBLISHED, PUBLISHED_STAGE4_REFIT], ids=["published", "stage4_refit"])
def test_authors_heldout_predictions(coef):
    law = SparseDCScalingLaw(coef)
    n, d, u, D, pred = (np.array(c) for c in zip(*HELDOUT))
    np.testing.assert_allclose(law.predict(n, d, u, D), pred, atol=1e-4)  # printed to 4 decimals


def test_density_factor_pinned_and_g1():
    k = PUBLISHED
    assert sl.density_factor(1.0, k.epsilon, k.c, k.mu) == 1.0
    by_hand = 0.5**-0.00968044 + (-0.27288932) * 0.5**0.84661793
    assert float(sl.density_factor(0.5, k.epsilon, k.c, k.mu)) == pytest.approx(by_hand, rel=1e-14)
    f64 = torch.float64
    t = sl.density_factor(torch.tensor([1.0, 0.5], dtype=f64), torch.tensor(k.epsilon, dtype=f64), k.c,
                          torch.tensor(k.mu, dtype=f64))
    assert float(t[0]) == 1.0 and float(t[1]) == pytest.approx(by_hand, rel=1e-14)
    mu = torch.tensor(k.mu, dtype=torch.float64, requires_grad=True)  # finite gradient at d = 1
    sl.density_factor(torch.tensor([1.0, 0.5], dtype=torch.float64), k.epsilon, k.c, mu).sum().backward()
    assert torch.isfinite(mu.grad)


def test_torch_and_numpy_agree():
    law = SparseDCScalingLaw(PUBLISHED)
    n, d, u = np.array([1e8, 5e8, 2e9]), np.array([1.0, 0.5, 0.0625]), np.array([1e9, 2e9, 3e8])
    D = u * np.array([1, 4, 16])
    ref = law.predict(n, d, u, D)
    assert ref.dtype == np.float64
    got = law.predict(*(torch.tensor(x, dtype=torch.float64) for x in (n, d, u, D)))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-13)


def test_unique_params_bound_and_no_excess_below_g2u():
    law = SparseDCScalingLaw(PUBLISHED)
    k = PUBLISHED
    rng = np.random.default_rng(1)
    d = rng.choice([1.0, 0.5, 0.25, 0.0625], 200)
    n_a = d * np.exp(rng.uniform(np.log(1e6), np.log(1e11), 200))
    u = np.exp(rng.uniform(np.log(1e8), np.log(1e11), 200))
    G = law.G(d)
    u_n = sl.unique_params(n_a, u, G, k.alpha, k.beta)
    assert np.all(u_n <= n_a)
    below = n_a <= G**2 * u  # α = β: G·(G·U)^(β/α) = G²U
    assert below.any() and (~below).any()
    assert np.all(sl.excess_params(n_a, u_n)[below] == 0)
    assert np.all(sl.excess_params(n_a, u_n)[~below] > 0)


@pytest.mark.parametrize("d", [1.0, 0.5, 0.125])
def test_loss_decreases_in_total_tokens_to_a_finite_limit(d):
    law = SparseDCScalingLaw(PUBLISHED)
    n, u = 5e8, 1e9
    epochs = np.logspace(0, 2, 100)  # beyond ≈ 150 epochs exp(−R_D/R_D*) is below float64 resolution
    assert np.all(np.diff(law.predict(n, d, u, epochs * u)) < 0)
    loss = law.predict(n, d, u, np.array([16.0, 1e6]) * u)
    k = PUBLISHED
    rd_s = k.rd_star * (1 + k.lambda1 * (1 - d) + k.sigma1 * (1 - d) ** 2)
    n_a, G = d * n, float(law.G(d))
    u_n = min(n_a, G * G * u)
    rn_s = k.rn_star * (1 + k.lambda2 * (1 - d) + k.sigma2 * (1 - d) ** 2)
    n_eff = u_n + u_n * rn_s * (1 - math.exp(-(n_a / u_n - 1) / rn_s))
    limit = math.exp(k.e) + math.exp(k.a) * float(law.density_factor(d)) / n_eff**k.alpha + math.exp(k.b) / (
        u * (1 + rd_s)
    ) ** k.alpha  # D' → U·(1 + R_D*(S))
    assert loss[0] > loss[1] >= limit and loss[1] == pytest.approx(limit, abs=1e-12)
    assert loss[0] - limit < 1e-2  # 16 epochs is already close to saturation


@pytest.mark.parametrize("d", [1.0, 0.5, 0.0625])
def test_loss_decreases_in_unique_tokens_at_fixed_epochs(d):
    law = SparseDCScalingLaw(PUBLISHED)
    u = np.logspace(8, 11, 100)
    for epochs in (1, 4, 16):
        assert np.all(np.diff(law.predict(1e9, d, u, epochs * u)) < 0)


def test_continuous_at_density_one():
    law = SparseDCScalingLaw(PUBLISHED)
    for n, u, ep in [(1e8, 1e9, 1), (2e9, 1e9, 8), (5e7, 3e8, 16)]:
        at1 = law.predict(n, 1.0, u, ep * u)
        near = law.predict(n, 1 - 1e-10, u, ep * u)
        assert near == pytest.approx(at1, abs=1e-7)


# -- the paper's qualitative readings (§9, §7(a)) -----------------------------------------------------


def test_sparse_acts_as_more_active_params():
    k = PUBLISHED
    for d in (0.5, 0.25, 0.0625):
        g = float(sl.density_factor(d, k.epsilon, k.c, k.mu))
        assert g < 1 and g ** (-1 / k.alpha) > 1
    # g(0.5)^(−1/α) by hand: ≈ 1.61× active parameters
    g = 0.5**k.epsilon + k.c * 0.5**k.mu
    assert float(sl.density_factor(0.5, k.epsilon, k.c, k.mu)) ** (-1 / k.alpha) == pytest.approx(g ** (-1 / k.alpha))
    assert 1.6 < g ** (-1 / k.alpha) < 1.62


def test_half_lives_against_sparsity():
    law = SparseDCScalingLaw(PUBLISHED)
    k = PUBLISHED
    s = np.linspace(1e-3, 1.0, 1000)
    rn_s, rd_s = law.half_lives(s)
    assert np.all(rd_s > k.rd_star)  # delayed saturation for every S in (0, 1]
    crossing = k.lambda2 / abs(k.sigma2)
    assert crossing == pytest.approx(0.68, abs=0.005)
    assert np.all(rn_s[s < crossing - 1e-3] > k.rn_star) and np.all(rn_s[s > crossing + 1e-3] < k.rn_star)
    assert k.lambda1 / abs(k.sigma1) == pytest.approx(1.33, abs=0.005)


def test_loss_optimal_sparsity_is_moderate():
    law = SparseDCScalingLaw(PUBLISHED)
    for u in (1.3e9, 1.3e10, 1.3e11):
        r = law.loss_optimal_density(u)
        assert 0.3 <= r["sparsity"] <= 0.7
        assert r["loss"] == pytest.approx(law.predict(r["n_total"], r["density"], u, r["epochs"] * u))
    # it is interior in d but sits at the grid's edges in N and epochs (more of both always helps at fixed U)
    r = law.loss_optimal_density(1.3e10)
    assert r["epochs"] == 64 and r["n_total"] == pytest.approx(1e11)


def test_compute_optimal_sparsity_above_loss_optimal_and_growing_with_u():
    law = SparseDCScalingLaw(PUBLISHED)
    loss_opt = law.loss_optimal_density(2.6e9)["sparsity"]
    for f in (1e19, 1e20, 1e21):
        r = law.compute_optimal_density(f, 2.6e9)
        assert r["sparsity"] > loss_opt
        assert 6 * r["n_active"] * r["total_tokens"] == pytest.approx(f, rel=1e-9)  # C = 6·N_a·D
        assert r["unique_tokens"] == min(2.6e9, r["total_tokens"])
    for f in (1e20, 1e21):
        s = [law.compute_optimal_density(f, u)["sparsity"] for u in (1.3e9, 1.3e10, 1.3e11)]
        assert s[0] < s[1] <= s[2]
    # at a fixed unique budget it falls as the FLOPs grow
    s = [law.compute_optimal_density(f, 2.6e9)["sparsity"] for f in (1e19, 1e20, 1e21)]
    assert s[0] > s[1] > s[2]


def test_compute_optimal_by_hand_one_density():
    law = SparseDCScalingLaw(PUBLISHED)
    k = PUBLISHED
    f, ub, d, r = 1e20, 2.6e9, 0.5, 2.0
    A, B = math.exp(k.a), math.exp(k.b)
    g = 0.5**k.epsilon + k.c * 0.5**k.mu
    G = (A * g / B) ** (1 / (2 * k.alpha))
    n_a = G * (f / 6) ** 0.5 / r
    D = (f / 6) ** 0.5 / G * r
    expected = law.predict(n_a / d, d, min(ub, D), D)
    curve = law.compute_optimal_curve(f, ub, density_grid=[d], ratios=[r])
    assert float(curve["loss"][0]) == pytest.approx(expected, rel=1e-13)
    assert float(curve["n_active"][0]) == pytest.approx(n_a, rel=1e-13)


# -- counting, stage selection (§6) -------------------------------------------------------------------


def test_counting():
    assert sl.llama_n_total(128, 4, 344, 4096) == 4 * (4 * 128**2 + 3 * 128 * 344 + 2 * 128) + 4096 * 128 == 1_315_840
    # grouped-query attention: k, v of width h·kv/heads = 64
    assert sl.llama_n_total(128, 4, 344, 4096, num_key_value_heads=2, num_attention_heads=4) == 4 * (
        2 * 128**2 + 2 * 128 * 64 + 3 * 128 * 344 + 2 * 128
    ) + 4096 * 128
    assert sl.training_flops(0.5 * 1e9, 2e10) == 6e19


def test_stage_selection():
    d = np.array([1.0, 0.5, 1.0, 0.25])
    u = np.array([1e9, 1e9, 1e9, 1e9])
    D = np.array([1e9, 1e9, 4e9, 4e9])
    assert [sl.stage_of(*x) for x in zip(d, u, D)] == [1, 2, 3, 4]
    assert sl.stage_mask(d, u, D, 1).tolist() == [True, False, False, False]
    assert sl.stage_mask(d, u, D, 2).tolist() == [True, True, False, False]
    assert sl.stage_mask(d, u, D, 3).tolist() == [False, False, True, False]
    assert sl.stage_mask(d, u, D, 4).tolist() == [False, False, False, True]


def test_fit_without_rows_for_a_stage_fails():
    rows = [r for r in sl.synthetic_rows(PUBLISHED) if r["density"] < 1]
    with pytest.raises(ValueError, match=r"^stage 1: no fit rows"):
        SparseDCScalingLaw(PUBLISHED).fit(rows, stages=(1,), grid="reduced")


def test_frozen_stages_keep_their_values_and_heldout_rows_are_ignored():
    rows = sl.synthetic_rows(PUBLISHED, noise=0.0)
    poisoned = rows + [dict(rows[-1], run_id="h", loss=99.0, split="heldout")]
    start = LawCoefficients.from_dict({**PUBLISHED.to_dict(), "rn_star": 3.0, "rd_star": 30.0})
    res = SparseDCScalingLaw(start).fit(poisoned, stages=(3,), grid="reduced", settings=TIGHT)
    got = res.coefficients
    for name in ("a", "b", "e", "alpha", "epsilon", "mu", "c", "lambda1", "sigma1", "lambda2", "sigma2"):
        assert getattr(got, name) == getattr(start, name)
    assert got.rd_star == pytest.approx(PUBLISHED.rd_star, rel=1e-3)
    assert got.rn_star == pytest.approx(PUBLISHED.rn_star, rel=1e-2)
    assert res.stages[0].rows == 30 and res.stages[0].r2 > 0.9999


# -- runs CSV (§2) ---------------------------------------------------------------------------------------

HEADER = "run_id,n_total,density,unique_tokens,total_tokens,loss,split,notes\n"


def test_csv_round_trip(tmp_path):
    rows = sl.synthetic_rows(PUBLISHED)[:7]
    path = tmp_path / "runs.csv"
    sl.write_runs_csv(rows, path)
    back = sl.read_runs_csv(path)
    assert [r["run_id"] for r in back] == [r["run_id"] for r in rows]
    for a, b in zip(rows, back):
        for c in sl.NUMERIC_COLUMNS:
            assert a[c] == b[c]


def test_csv_extra_columns_ignored(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text(HEADER + "x,1e8,0.5,1e9,2e9,3.1,heldout,anything\n")
    (row,) = sl.read_runs_csv(p)
    assert row == {"run_id": "x", "n_total": 1e8, "density": 0.5, "unique_tokens": 1e9, "total_tokens": 2e9,
                   "loss": 3.1, "split": "heldout"}  # fmt: skip


def test_csv_missing_column_one_line(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("run_id,n_total,unique_tokens,total_tokens,loss,split\nx,1e8,1e9,1e9,3.0,fit\n")
    with pytest.raises(ValueError) as err:
        sl.read_runs_csv(p)
    msg = str(err.value)
    assert "\n" not in msg and str(p) in msg and "'density'" in msg


@pytest.mark.parametrize(
    "line,column",
    [
        ("x,1e8,half,1e9,1e9,3.0,fit,", "density"),
        ("x,1e8,1.5,1e9,1e9,3.0,fit,", "density"),
        ("x,1e8,0,1e9,1e9,3.0,fit,", "density"),
        ("x,1e8,0.5,1e9,5e8,3.0,fit,", "total_tokens"),
        ("x,-1e8,0.5,1e9,1e9,3.0,fit,", "n_total"),
        ("x,1e8,0.5,1e9,1e9,0,fit,", "loss"),
        ("x,1e8,0.5,1e9,1e9,3.0,train,", "split"),
    ],
)
def test_csv_bad_row_names_file_row_and_column(tmp_path, line, column):
    p = tmp_path / "r.csv"
    p.write_text(HEADER + "ok,1e8,1,1e9,1e9,3.0,fit,\n" + line + "\n")
    with pytest.raises(ValueError) as err:
        sl.read_runs_csv(p)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{p}: row 2: column '{column}'")


# -- round trip (§6) -----------------------------------------------------------------------------------


def test_synthetic_rows_layout():
    rows = sl.synthetic_rows(PUBLISHED, seed=0)
    assert len(rows) == 180
    stages = [sl.stage_of(r["density"], r["unique_tokens"], r["total_tokens"]) for r in rows]
    assert [stages.count(s) for s in (1, 2, 3, 4)] == [30, 60, 30, 60]
    assert {r["density"] for r in rows} == {1.0, 0.5, 0.25, 0.125, 0.0625}
    assert {round(r["total_tokens"] / r["unique_tokens"]) for r in rows} == {1, 2, 4, 8, 16}
    assert all(1e7 <= r["n_total"] <= 2e9 and 1e8 <= r["unique_tokens"] <= 3e9 for r in rows)
    clean = sl.synthetic_rows(PUBLISHED, seed=0, noise=0.0)
    ratio = np.array([a["loss"] / b["loss"] - 1 for a, b in zip(rows, clean)])
    assert 0.003 < ratio.std() < 0.007  # 0.5% multiplicative noise
    assert sl.synthetic_rows(PUBLISHED, seed=0) == rows and sl.synthetic_rows(PUBLISHED, seed=1) != rows


def test_round_trip_recovers_alpha_and_rd_star():
    rows = sl.synthetic_rows(PUBLISHED, seed=0, noise=0.005)
    t0 = time.perf_counter()
    # start from the dense reference: with all four stages fitted nothing of PUBLISHED can leak in
    res = SparseDCScalingLaw(MUENNIGHOFF_C4).fit(rows, grid="reduced", settings=TIGHT)
    elapsed = time.perf_counter() - t0
    got = res.coefficients
    assert abs(got.alpha - PUBLISHED.alpha) <= 0.02
    assert abs(got.rd_star / PUBLISHED.rd_star - 1) <= 0.15
    assert got.c < 0 and got.rn_star != MUENNIGHOFF_C4.rn_star
    assert [s.stage for s in res.stages] == [1, 2, 3, 4] and all(s.r2 > 0.99 for s in res.stages)
    assert elapsed < 60


def test_noise_free_round_trip_recovers_every_coefficient():
    rows = sl.synthetic_rows(PUBLISHED, seed=0, noise=0.0)
    got = SparseDCScalingLaw(MUENNIGHOFF_C4).fit(rows, grid="reduced", settings=TIGHT).coefficients
    for name, true in PUBLISHED.to_dict().items():
        assert getattr(got, name) == pytest.approx(true, rel=0.05), name


# -- coefficients, config and CLI ---------------------------------------------------------------------


def test_coefficients_json_round_trip(tmp_path):
    p = tmp_path / "c.json"
    PUBLISHED.to_json(p)
    assert LawCoefficients.from_json(p) == PUBLISHED
    with pytest.raises(ValueError, match="did you mean 'alpha'"):
        LawCoefficients.from_dict({**PUBLISHED.to_dict(), "alpah": 1.0})


@pytest.mark.parametrize("name", ["law_published.yaml", "law_roundtrip.yaml"])
def test_repo_law_yamls_load(name):
    cfg = sl.load_law_config(ROOT / "yaml" / "sparse_scaling" / name)
    assert cfg.coefficients == PUBLISHED


def test_law_config_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("law:\n  synthetic: {seed: 0}\n  grdi: reduced\n")
    with pytest.raises(sl.LawConfigError) as err:
        sl.load_law_config(p)
    assert str(err.value) == f"{p}: unknown key 'law.grdi' (did you mean 'law.grid'?)"
    p.write_text("law:\n  grid: {1: {alpah: [0.5]}}\n")
    with pytest.raises(sl.LawConfigError, match=r"law\.grid.*did you mean 'alpha'"):
        sl.load_law_config(p)
    p.write_text("law:\n  runs: a.csv\n  synthetic: {seed: 0}\n")
    with pytest.raises(sl.LawConfigError, match="one data source"):
        sl.load_law_config(p)


def test_fit_law_and_predict_law_main(tmp_path, capsys):
    cfg = tmp_path / "law.yaml"
    cfg.write_text(
        "# smoke\nlaw:\n  synthetic: {seed: 0, noise: 0.005}\n  grid: reduced\n  stages: [1, 3]\n"
        "  optimizer: {outer_steps: 5}\n  flop_budgets: [1.0e20]\n  unique_budgets: [1.3e9]\n"
    )
    out = tmp_path / "fit"
    assert sl.fit_law_main(["--config", str(cfg), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "stage" in printed and "alpha" in printed
    assert (out / "coefficients.json").is_file() and (out / "table.txt").is_file()
    assert list(out.glob("events.out.tfevents.*"))
    fitted = LawCoefficients.from_json(out / "coefficients.json")
    assert fitted.alpha != PUBLISHED.alpha and fitted.epsilon == PUBLISHED.epsilon  # stage 2 frozen

    csv_path = tmp_path / "runs.csv"
    rows = sl.synthetic_rows(PUBLISHED)
    sl.write_runs_csv(rows[:30] + rows[90:120] + [dict(r, split="heldout") for r in rows[30:40]], csv_path)
    out2 = tmp_path / "fit2"
    assert sl.fit_law_main(["--config", str(cfg), "--output", str(out2), "--runs", str(csv_path)]) == 0
    printed = capsys.readouterr().out
    assert "fit-law: 70 runs (60 fit)" in printed and "heldout" in printed
    pred_cfg = tmp_path / "pred.yaml"
    pred_cfg.write_text(
        f"law:\n  coefficients: {out / 'coefficients.json'}\n  flop_budgets: [1.0e20]\n  unique_budgets: [1.3e9]\n"
        "  points:\n    - {n_total: 2.68e8, density: 0.5, unique_tokens: 5.2e9, total_tokens: 4.16e10, loss: 2.88}\n"
    )
    out3 = tmp_path / "pred"
    assert sl.predict_law_main(["--config", str(pred_cfg), "--output", str(out3)]) == 0
    assert (out3 / "predictions.json").is_file() and list(out3.glob("events.out.tfevents.*"))
    assert "compute-optimal" in capsys.readouterr().out


def test_main_bad_input_returns_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("law:\n  coefficients: publshed\n")
    assert sl.predict_law_main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "law.coefficients" in err and "did you mean 'published'" in err
    good = tmp_path / "good.yaml"
    good.write_text("law:\n  grid: reduced\n")
    broken_csv = tmp_path / "runs.csv"
    broken_csv.write_text("run_id,n_total,density,unique_tokens,total_tokens,split\nx,1,1,1,1,fit\n")
    assert sl.fit_law_main(["--config", str(good), "--runs", str(broken_csv), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(broken_csv) in err and "'loss'" in err
    assert sl.fit_law_main(["--config", str(good), "--output", str(tmp_path / "o")]) == 2  # no data source
    assert sl.fit_law_main(["--bogus"]) == 2
