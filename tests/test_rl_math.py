"""The pure RL math of ``trainer/rl.py`` against the worked numbers of rl_core.md §8 and hasard.md §6.

Every expected value below is hand-computed (or an independent plain-Python re-derivation), never produced
by the function under test.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch

from trainer import rl
from trainer.rl import (
    LagrangeAdamState,
    PIDLagrangeState,
    RunningMeanStd,
    approx_kl,
    categorical_entropy,
    clip_bounds,
    clip_fraction,
    clipped_surrogate,
    expectile_loss,
    explained_variance,
    gae,
    global_advantage_stats,
    lagrange_adam_step,
    lagrange_gradient_ascent,
    lagrangian_advantage,
    log_prob_heads,
    merge_moments,
    normalize_advantages,
    p3o_penalty,
    per_step_budget,
    pid_lagrange_step,
    saute_budget,
    saute_reward,
    saute_step,
    symmetric_kl_to_uniform,
    value_loss,
)

# ----------------------------------------------------------------------------------------------------------
# GAE (rl_core.md §8): gamma 0.9, lambda 0.8, r = [1, 0, 2], V = [0.5, 0.4, 0.3], bootstrap 0.2
# ----------------------------------------------------------------------------------------------------------

GAMMA, LAM = 0.9, 0.8
R_ = [1.0, 0.0, 2.0]
V_ = [0.5, 0.4, 0.3]
BOOT = 0.2


def _col(x):
    return torch.tensor(x, dtype=torch.float32).unsqueeze(1)


def _gae_single(rewards=R_, values=V_, term=(0, 0, 0), trunc=(0, 0, 0), final=(0.0, 0.0, 0.0), boot=BOOT,
                gamma=GAMMA, lam=LAM):
    return gae(_col(rewards), _col(values), _col(term).bool(), _col(trunc).bool(), _col(final),
               torch.tensor([boot]), gamma, lam)


def _close(t, expected, tol=1e-6):
    assert torch.allclose(t.reshape(-1).double(), torch.tensor(expected, dtype=torch.float64), atol=tol, rtol=0), (
        t.reshape(-1).tolist(), expected)


def test_gae_no_dones():
    adv, ret = _gae_single()
    assert adv.dtype == torch.float32 and ret.dtype == torch.float32 and adv.shape == (3, 1)
    _close(adv, [1.740992, 1.2236, 1.88])
    _close(ret, [2.240992, 1.6236, 2.18])


def test_gae_terminated_cuts_the_recursion():
    adv, ret = _gae_single(term=(0, 1, 0))
    _close(adv, [0.572, -0.4, 1.88])
    _close(ret, [1.072, 0.0, 2.18])


def test_gae_truncated_bootstraps_from_final_value():
    adv, _ = _gae_single(trunc=(0, 1, 0), final=(float("nan"), 1.0, float("nan")))
    _close(adv, [1.22, 0.5, 1.88])  # NaNs where not truncated must not leak


def test_gae_terminated_wins_over_truncated():
    adv, _ = _gae_single(term=(0, 1, 0), trunc=(0, 1, 0), final=(0.0, 1.0, 0.0))
    _close(adv, [0.572, -0.4, 1.88])


def test_gae_float_flags_equal_bool_flags():
    a_bool, _ = _gae_single(term=(0, 1, 0))
    a_float, _ = gae(_col(R_), _col(V_), _col([0.0, 1.0, 0.0]), _col([0.0, 0.0, 0.0]), _col([0.0] * 3),
                     torch.tensor([BOOT]), GAMMA, LAM)
    assert torch.equal(a_bool, a_float)


def test_gae_lambda_one_is_monte_carlo():
    adv, _ = _gae_single(lam=1.0)
    mc = 1.0 + 0.9 * 0.0 + 0.81 * 2.0 + 0.729 * BOOT  # discounted return with bootstrap
    assert abs(float(adv[0, 0]) - 2.2658) < 1e-6
    assert abs(float(adv[0, 0]) - (mc - 0.5)) < 1e-6


def test_gae_lambda_zero_is_td_error():
    adv, _ = _gae_single(lam=0.0)
    deltas = [1 + 0.9 * 0.4 - 0.5, 0 + 0.9 * 0.3 - 0.4, 2 + 0.9 * 0.2 - 0.3]
    _close(adv, deltas)
    _close(adv, [0.86, -0.13, 1.88])


def test_gae_two_envs_match_single_env_columns():
    r2, v2, term2, boot2 = [0.5, 1.0, -1.0], [0.1, 0.2, 0.3], [0, 1, 0], 0.7
    rewards = torch.tensor([R_, r2], dtype=torch.float32).T
    values = torch.tensor([V_, v2], dtype=torch.float32).T
    term = torch.tensor([[0, 0, 0], term2]).T.bool()
    trunc = torch.zeros(3, 2, dtype=torch.bool)
    adv, ret = gae(rewards, values, term, trunc, torch.zeros(3, 2), torch.tensor([BOOT, boot2]), GAMMA, LAM)
    a0, r0 = _gae_single()
    a1, r1 = _gae_single(rewards=r2, values=v2, term=term2, boot=boot2)
    assert torch.allclose(adv[:, :1], a0) and torch.allclose(ret[:, :1], r0)
    assert torch.allclose(adv[:, 1:], a1) and torch.allclose(ret[:, 1:], r1)
    _close(adv[:, 0], [1.740992, 1.2236, 1.88])
    # column 1 by hand: delta_2 = -1 + 0.9*0.7 - 0.3, delta_1 = 1 - 0.2 (terminal), delta_0 = 0.5 + 0.9*0.2 - 0.1
    _close(adv[:, 1], [0.58 + 0.72 * 0.8, 0.8, -1 + 0.63 - 0.3])


def test_gae_rejects_bad_shapes():
    with pytest.raises(ValueError, match="bootstrap"):
        gae(_col(R_), _col(V_), _col([0, 0, 0]), _col([0, 0, 0]), _col([0.0] * 3), torch.tensor([0.1, 0.2]),
            GAMMA, LAM)


# ----------------------------------------------------------------------------------------------------------
# Clipped surrogate (objective before the minus sign, gradient w.r.t. rho)
# ----------------------------------------------------------------------------------------------------------


def _surrogate(rho: float, a: float, lo: float, hi: float) -> tuple[float, float]:
    """Objective value and d objective / d rho for a single sample."""
    rho_t = torch.tensor([rho], dtype=torch.float64, requires_grad=True)
    loss = clipped_surrogate(torch.log(rho_t), torch.zeros(1, dtype=torch.float64),
                             torch.tensor([a], dtype=torch.float64), lo, hi)
    (-loss).backward()
    return float(-loss.detach()), float(rho_t.grad[0])


@pytest.mark.parametrize(
    ("rho", "a", "value", "grad"),
    [(1.5, 2.0, 2.4, 0.0), (0.5, -1.0, -0.8, 0.0), (0.7, 2.0, 1.4, 2.0), (1.3, -1.0, -1.3, -1.0)],
)
def test_clipped_surrogate_standard(rho, a, value, grad):
    lo, hi = clip_bounds(0.2)
    val, g = _surrogate(rho, a, lo, hi)
    assert val == pytest.approx(value, abs=1e-9)
    assert g == pytest.approx(grad, abs=1e-9)


@pytest.mark.parametrize(
    ("rho", "a", "value", "grad"),
    [(0.75, -1.0, -0.75, -1.0), (0.6, -1.0, -0.7, 0.0), (1.25, 1.0, 1.2, 0.0)],
)
def test_clipped_surrogate_asymmetric(rho, a, value, grad):
    lo, hi = clip_bounds(0.2, "asymmetric", eps_low=0.3, eps_high=0.2)
    assert (lo, hi) == pytest.approx((0.7, 1.2))
    val, g = _surrogate(rho, a, lo, hi)
    assert val == pytest.approx(value, abs=1e-9)
    assert g == pytest.approx(grad, abs=1e-9)


def test_asymmetric_case_is_zero_gradient_under_symmetric_clip():
    val, g = _surrogate(0.75, -1.0, *clip_bounds(0.2))
    assert val == pytest.approx(-0.8) and g == 0.0


def test_clip_bounds_modes():
    assert clip_bounds(0.1, "unbiased") == pytest.approx((0.909091, 1.1), abs=1e-6)
    assert clip_bounds(0.2, "standard") == pytest.approx((0.8, 1.2))
    assert clip_bounds(0.2, "asymmetric") == pytest.approx((0.8, 1.2))  # eps_low / eps_high default to eps
    assert clip_bounds(0.2, "asymmetric", eps_high=0.28) == pytest.approx((0.8, 1.28))
    with pytest.raises(ValueError, match="standard, asymmetric, unbiased"):
        clip_bounds(0.2, "dual")


def test_clipped_surrogate_unbiased_clips_below():
    lo, hi = clip_bounds(0.1, "unbiased")
    val, g = _surrogate(0.8, -1.0, lo, hi)
    assert val == pytest.approx(-1.0 / 1.1) and g == 0.0


def test_clipped_surrogate_is_a_mean():
    lo, hi = clip_bounds(0.2)
    rho = torch.tensor([1.5, 0.7])
    loss = clipped_surrogate(torch.log(rho), torch.zeros(2), torch.tensor([2.0, 2.0]), lo, hi)
    assert float(loss) == pytest.approx(-(2.4 + 1.4) / 2)


# ----------------------------------------------------------------------------------------------------------
# Value loss, entropy, log-probs, exploration loss
# ----------------------------------------------------------------------------------------------------------


def test_value_loss_plain_and_clipped():
    v, r, v_old = torch.tensor([1.5]), torch.tensor([2.0]), torch.tensor([1.0])
    assert float(value_loss(v, r)) == pytest.approx(0.125)
    assert float(value_loss(v, r, v_old, 0.2)) == pytest.approx(0.32)
    assert float(value_loss(v, r, v_old, None)) == pytest.approx(0.125)  # both needed for the clipped variant
    # unclipped error larger: (3 - 2)^2 vs (1.2 - 2)^2 -> 0.5 * 1
    assert float(value_loss(torch.tensor([3.0]), r, v_old, 0.2)) == pytest.approx(0.5)


def test_entropy_uniform_and_heads():
    h = categorical_entropy([torch.zeros(2, 3)])
    assert h.shape == (2,)
    assert torch.allclose(h, torch.full((2,), 1.098612), atol=1e-6)
    two = categorical_entropy([torch.zeros(1, 3), torch.log(torch.tensor([[0.25, 0.75]]))])
    expected = math.log(3) - (0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert float(two[0]) == pytest.approx(expected, abs=1e-6)


def test_entropy_with_masked_action_is_finite():
    h = categorical_entropy([torch.tensor([[0.0, 0.0, float("-inf")]])])
    assert float(h[0]) == pytest.approx(math.log(2), abs=1e-6)


def test_log_prob_heads_sums_heads():
    l1 = torch.log(torch.tensor([[0.2, 0.8], [0.5, 0.5]]))
    l2 = torch.log(torch.tensor([[0.1, 0.3, 0.6], [0.7, 0.2, 0.1]]))
    lp = log_prob_heads([l1, l2], torch.tensor([[1, 2], [0, 1]]))
    _close(lp, [math.log(0.8 * 0.6), math.log(0.5 * 0.2)], tol=1e-6)


def test_symmetric_kl_uniform_is_zero_and_hand_case():
    assert torch.allclose(symmetric_kl_to_uniform([torch.zeros(3, 4), torch.full((3, 2), 5.0)]), torch.zeros(3),
                          atol=1e-7)
    logits = torch.tensor([[0.0, math.log(2.0)]])  # pi = [1/3, 2/3]
    p = [1 / 3, 2 / 3]
    kl_u_pi = sum(0.5 * math.log(0.5 / pa) for pa in p)
    kl_pi_u = sum(pa * math.log(pa / 0.5) for pa in p)
    got = symmetric_kl_to_uniform([logits])
    assert float(got[0]) == pytest.approx(kl_u_pi + kl_pi_u, abs=1e-6)
    assert float(got[0]) > 0
    both = symmetric_kl_to_uniform([logits, torch.zeros(1, 3)])  # second head uniform adds 0
    assert float(both[0]) == pytest.approx(kl_u_pi + kl_pi_u, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Advantage normalisation and global statistics
# ----------------------------------------------------------------------------------------------------------


def test_normalize_advantages_mean_zero_unbiased_std_one():
    a = torch.tensor([1.0, 2.0, 4.0, 9.0])
    out = normalize_advantages(a)
    assert abs(float(out.mean())) < 1e-6
    assert float(out.std()) == pytest.approx(1.0, abs=1e-6)  # unbiased std, like CleanRL
    assert float(out.std(unbiased=False)) != pytest.approx(1.0, abs=1e-3)


def test_normalize_advantages_constant_and_single_stay_finite():
    const = normalize_advantages(torch.full((5,), 3.0))
    assert torch.isfinite(const).all() and torch.equal(const, torch.zeros(5))
    one = normalize_advantages(torch.tensor([7.0]))
    assert torch.isfinite(one).all() and float(one[0]) == 0.0


def test_normalize_advantages_with_given_stats():
    out = normalize_advantages(torch.tensor([3.0, 5.0]), stats=(torch.tensor(1.0), torch.tensor(2.0)))
    _close(out, [1.0, 2.0], tol=1e-6)


def test_global_stats_single_process_equal_local():
    a = torch.randn(37, generator=torch.Generator().manual_seed(0)) * 3 + 1
    mean, std = global_advantage_stats(a)
    assert float(mean) == pytest.approx(float(a.mean()), abs=1e-6)
    assert float(std) == pytest.approx(float(a.std()), abs=1e-6)
    assert torch.allclose(normalize_advantages(a, stats=(mean, std)), normalize_advantages(a), atol=1e-6)


def _simulated_all_reduce(parts, fn):
    """Run ``fn(part, all_reduce)`` for every 'rank' in lockstep threads; all_reduce sums over the ranks."""
    world = len(parts)
    slots: list = [None] * world
    barrier = threading.Barrier(world, timeout=30)
    results: list = [None] * world
    errors: list = []

    def worker(rank):
        def all_reduce(t):
            slots[rank] = t.clone()
            barrier.wait()
            total = sum(slots[1:], slots[0].clone())  # same order on every rank
            barrier.wait()
            return total

        try:
            results[rank] = fn(parts[rank], all_reduce)
        except Exception as exc:  # surfaced below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_global_stats_two_ranks_equal_whole_batch():
    a = torch.randn(40, generator=torch.Generator().manual_seed(1)) * 2 - 0.5
    halves = [a[:20], a[20:]]
    (m0, s0), (m1, s1) = _simulated_all_reduce(halves, lambda x, ar: global_advantage_stats(x, ar))
    assert float(m0) == float(m1) and float(s0) == float(s1)
    assert float(m0) == pytest.approx(float(a.mean()), abs=1e-6)
    assert float(s0) == pytest.approx(float(a.std()), abs=1e-6)
    assert float(m0) != pytest.approx(float(halves[0].mean()), abs=1e-3)


# ----------------------------------------------------------------------------------------------------------
# Diagnostics and expectile
# ----------------------------------------------------------------------------------------------------------


def test_approx_kl_and_clip_fraction():
    rho = torch.tensor([1.0, 2.0, 0.5])
    logp_new, logp_old = torch.log(rho), torch.zeros(3)
    assert float(approx_kl(logp_new, logp_old)) == pytest.approx(((1 - math.log(2)) + (-0.5 + math.log(2))) / 3)
    assert float(clip_fraction(logp_new, logp_old, 0.8, 1.2)) == pytest.approx(2 / 3)
    assert float(clip_fraction(logp_new, logp_old, 0.4, 2.5)) == 0.0


def test_explained_variance():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert float(explained_variance(r, r)) == pytest.approx(1.0)
    assert float(explained_variance(torch.full((4,), float(r.mean())), r)) == pytest.approx(0.0, abs=1e-6)
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])  # R - V = [0, 0, 0, 2]: Var 0.75; Var(R) = 3.5
    assert float(explained_variance(v, r)) == pytest.approx(1 - 0.75 / 3.5)
    zero = explained_variance(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 2.0]))
    assert float(zero) == 0.0  # documented choice for Var(R) == 0


def test_expectile_cases():
    u = torch.tensor([1.0, -1.0])
    _close(expectile_loss(u, 0.9), [0.9, 0.1], tol=1e-7)
    _close(expectile_loss(torch.tensor([2.0, -2.0]), 0.7), [2.8, 1.2], tol=1e-6)
    assert expectile_loss(torch.zeros(2, 3), 0.9).shape == (2, 3)


# ----------------------------------------------------------------------------------------------------------
# Lagrange multipliers
# ----------------------------------------------------------------------------------------------------------


def test_lagrange_gradient_ascent_sequence():
    lam, seq = 0.0, []
    for j in [3, 2, 0, 0, 0, 0]:
        lam = lagrange_gradient_ascent(lam, j, budget=1.0, lr=0.1)
        seq.append(lam)
    assert seq == pytest.approx([0.2, 0.3, 0.2, 0.1, 0.0, 0.0], abs=1e-12)
    assert min(seq) >= 0.0


def test_lagrange_adam_matches_torch_adam():
    costs, budget, lr = [3.0, 2.0, 0.5, 4.0, 1.5, 2.5], 1.0, 0.05
    p = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([p], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    state = LagrangeAdamState(lam=0.5)
    for c in costs:
        opt.zero_grad()
        (-p * (c - budget)).backward()
        opt.step()
        state = lagrange_adam_step(state, c, budget, lr)
        assert state.lam == pytest.approx(float(p.detach()), abs=1e-12)
    assert state.t == len(costs) and state.lam != pytest.approx(0.5, abs=1e-3)


def test_lagrange_adam_clamps():
    state = LagrangeAdamState(lam=0.0)
    for _ in range(3):
        state = lagrange_adam_step(state, cost=0.0, budget=1.0, lr=0.1)
        assert state.lam == 0.0
    state = LagrangeAdamState(lam=0.95)
    state = lagrange_adam_step(state, cost=5.0, budget=1.0, lr=0.1, lam_max=1.0)
    assert state.lam == 1.0


def _pid_run(costs, **kw):
    state = PIDLagrangeState.initial(i0=0.001, d_delay=kw.get("d_delay", 10))
    out = []
    for c in costs:
        state = pid_lagrange_step(state, c, 1.0, **kw)
        out.append(state.lam)
    return out, state


def test_pid_golden():
    lams, state = _pid_run([3.0, 3.0, 1.0])
    assert lams == pytest.approx([0.0325, 0.063425, 0.062804], abs=1e-6)
    assert len(state.d_history) == 10 and state.d_history[-1] == pytest.approx(0.327875)


def test_pid_short_delay_by_hand():
    # d_delay = 1: the reference is the previous D_ema (0.15, then 0.2925).
    lams, _ = _pid_run([3.0, 3.0, 1.0], d_delay=1)
    assert lams == pytest.approx([0.0325, 0.061925, 0.05987875], abs=1e-9)


def test_pid_delay_matches_plain_reimplementation():
    costs = [3.0, 0.5, 2.0, 4.0, 0.0, 1.0, 2.5, 3.0, 0.2, 1.1, 5.0, 0.3, 2.2, 1.9]
    i, p, d, hist, expected = 0.001, 0.0, 0.0, [], []
    for c in costs:
        delta = c - 1.0
        i = max(0.0, i + 0.01 * delta)
        p = 0.95 * p + 0.05 * delta
        d = 0.95 * d + 0.05 * c
        ref = hist[-3] if len(hist) >= 3 else 0.0
        expected.append(max(0.0, 0.1 * p + i + 0.01 * max(0.0, d - ref)))
        hist.append(d)
    lams, _ = _pid_run(costs, d_delay=3)
    assert lams == pytest.approx(expected, abs=1e-12)
    assert lams != pytest.approx(_pid_run(costs, d_delay=10)[0], abs=1e-9)


def test_pid_penalty_max_and_norm_flags():
    capped, _ = _pid_run([3.0, 3.0, 1.0], penalty_max=0.05, sum_norm=False, diff_norm=False)
    assert capped == pytest.approx([0.0325, 0.05, 0.05], abs=1e-9)
    uncapped, _ = _pid_run([3.0, 3.0, 1.0], penalty_max=0.05, sum_norm=True)
    assert uncapped[1] == pytest.approx(0.063425, abs=1e-6)
    big, _ = _pid_run([200.0, 200.0], diff_norm=True, sum_norm=False)
    assert big[-1] == 1.0
    nonneg, _ = _pid_run([0.0] * 5)
    assert min(nonneg) >= 0.0 and nonneg[-1] == 0.0


def test_lagrangian_advantage_modes():
    a_r, a_c = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.0])
    _close(lagrangian_advantage(a_r, a_c, 2.0, "lag"), [0.0, -4.0])
    _close(lagrangian_advantage(a_r, a_c, 2.0, "pid"), [0.0, -4.0 / 3.0])
    _close(lagrangian_advantage(a_r, a_c, torch.tensor(2.0), "pid"), [0.0, -4.0 / 3.0])
    assert torch.equal(lagrangian_advantage(a_r, a_c, 2.0, "none"), a_r)
    with pytest.raises(ValueError, match="lag, pid, none"):
        lagrangian_advantage(a_r, a_c, 2.0, "saute")


def test_p3o_penalty_zero_when_inside_negative():
    logp_new = torch.log(torch.tensor([1.0, 1.2])).requires_grad_(True)
    a_c = torch.tensor([1.0, -1.0])  # mean(rho * A_C) = (1 - 1.2) / 2 = -0.1
    pen = p3o_penalty(logp_new, torch.zeros(2), a_c, mean_cost=0.02, budget=0.05, kappa=20.0)
    pen.backward()
    assert float(pen.detach()) == 0.0
    assert torch.equal(logp_new.grad, torch.zeros(2))


def test_p3o_penalty_positive_with_gradient():
    rho = torch.tensor([1.0, 1.2])
    logp_new = torch.log(rho).requires_grad_(True)
    a_c = torch.tensor([1.0, 0.5])  # mean(rho*A) = (1 + 0.6)/2 = 0.8; inside = 0.8 + (0.1 - 0.05) = 0.85
    pen = p3o_penalty(logp_new, torch.zeros(2), a_c, mean_cost=torch.tensor(0.1), budget=0.05, kappa=2.0)
    pen.backward()
    assert float(pen.detach()) == pytest.approx(1.7, abs=1e-6)
    # d/dlogp_i of kappa * mean(rho * A) = kappa * rho_i * A_i / n (unclipped rho)
    assert torch.allclose(logp_new.grad, torch.tensor([1.0, 0.6]), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Budgets and Sauté (hasard.md §3.1, §3.2, §6)
# ----------------------------------------------------------------------------------------------------------


def test_per_step_budget():
    assert per_step_budget(5) == pytest.approx(0.0095238, abs=1e-7)
    assert per_step_budget(50) == pytest.approx(0.095238, abs=1e-6)
    assert per_step_budget(5, frame_skip=2, timeout_tics=1000) == pytest.approx(0.01)


def test_saute_budget():
    assert saute_budget(5.0, 1.0, 525) == 5.0
    g, h = 0.9, 3
    assert saute_budget(6.0, g, h) == pytest.approx(6.0 * (1 + 0.9 + 0.81) / 3)
    assert saute_budget(5.0, 0.9999, 525) == pytest.approx(5.0, rel=0.03)  # close to the gamma_s = 1 limit
    assert saute_budget(5.0, 0.9999, 525) < 5.0


def test_saute_golden_floats_and_tensors():
    z, zs, rewards = 1.0, [], []
    for r, c in zip([1.0, 2.0, 3.0], [0.4, 0.4, 0.4]):
        z = saute_step(z, c, budget_d=1.0, gamma_s=1.0)
        zs.append(z)
        rewards.append(saute_reward(r, z, unsafe_reward=-0.7))
    assert zs == pytest.approx([0.6, 0.2, -0.2], abs=1e-12)
    assert rewards == pytest.approx([1.0, 2.0, -0.7])

    zt = torch.ones(2)
    zt = saute_step(zt, torch.tensor([0.4, 1.2]), 1.0, 1.0)
    _close(zt, [0.6, -0.2])
    _close(saute_reward(torch.tensor([1.0, 2.0]), zt, -0.01), [1.0, -0.01])
    assert saute_step(1.0, 0.5, budget_d=2.0, gamma_s=0.5) == pytest.approx(1.5)


# ----------------------------------------------------------------------------------------------------------
# Running statistics
# ----------------------------------------------------------------------------------------------------------


def _data(n=64, shape=(3,), seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 4 + 2


def test_merge_moments_by_hand():
    # {1, 3} and {5}: count 3, mean 3, M2 = (4 + 0 + 4) = 8
    n, mean, m2 = merge_moments(2.0, 2.0, 2.0, 1.0, 5.0, 0.0)
    assert (n, mean, m2) == pytest.approx((3.0, 3.0, 8.0))
    assert merge_moments(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)[0] == 0.0


def test_running_mean_std_merge_halves_equals_full():
    x = _data()
    full = RunningMeanStd((3,)).update(x)
    assert torch.allclose(full.mean, x.mean(0), atol=1e-6)
    assert torch.allclose(full.var, x.var(0, unbiased=False), atol=1e-6)
    a, b = RunningMeanStd((3,)).update(x[:20]), RunningMeanStd((3,)).update(x[20:])
    merged = a.merge(b)
    assert float(merged.count) == 64.0
    assert torch.allclose(merged.mean, full.mean, atol=1e-6) and torch.allclose(merged.var, full.var, atol=1e-6)
    seq = RunningMeanStd((3,)).update(x[:10]).update(x[10:33]).update(x[33:])
    assert torch.allclose(seq.mean, full.mean, atol=1e-6) and torch.allclose(seq.var, full.var, atol=1e-6)
    half = RunningMeanStd((3,)).update(x[:20])
    assert not torch.allclose(half.mean, full.mean, atol=1e-3)


def test_running_mean_std_two_rank_update_equals_one_rank():
    first, second = _data(32, seed=1), _data(40, seed=2)
    one_rank = RunningMeanStd((3,)).update(first).update(second)

    def rank_fn(halves, all_reduce):
        rms = RunningMeanStd((3,))
        rms.update(halves[0], all_reduce)
        rms.update(halves[1], all_reduce)
        return rms

    parts = [(first[:16], second[:25]), (first[16:], second[25:])]
    r0, r1 = _simulated_all_reduce(parts, rank_fn)
    for r in (r0, r1):
        assert float(r.count) == 72.0
        assert torch.allclose(r.mean, one_rank.mean, atol=1e-6) and torch.allclose(r.var, one_rank.var, atol=1e-6)
    assert torch.equal(r0.mean, r1.mean) and torch.equal(r0.var, r1.var)


def test_running_mean_std_normalize_and_state_dict():
    fresh = RunningMeanStd(())
    y = torch.tensor([1.0, -2.0])
    assert torch.allclose(fresh.normalize(y), y, atol=1e-6)  # identity before any data
    x = _data(50, shape=(), seed=3)
    rms = RunningMeanStd(()).update(x)
    out = rms.normalize(x.float())
    assert out.dtype == torch.float32
    assert abs(float(out.mean())) < 1e-5 and float(out.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    assert float(rms.normalize(torch.tensor([1e6]), clip=5.0)[0]) == 5.0
    clone = RunningMeanStd(())
    clone.load_state_dict(rms.state_dict())
    assert torch.equal(clone.mean, rms.mean) and torch.equal(clone.var, rms.var) and torch.equal(clone.count, rms.count)
    with pytest.raises(KeyError):
        clone.load_state_dict({"mean": rms.mean})
    with pytest.raises(ValueError):
        RunningMeanStd((2,)).load_state_dict(rms.state_dict())


def test_all_exports_exist_and_are_documented():
    assert rl.__doc__
    for name in rl.__all__:
        obj = getattr(rl, name)
        if callable(obj):
            assert obj.__doc__, name


def test_gaussian_log_prob_and_entropy_of_box_heads():
    # N(0, 1) at x = 1 per dim: -1/2 - log(2π)/2; two dims sum; σ = e: -(x/e)^2/2 - 1 - log(2π)/2
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    lp = rl.gaussian_log_prob(torch.zeros(1, 2), torch.zeros(2), torch.ones(1, 2))
    assert lp.item() == pytest.approx(2 * (-0.5 - half_log_2pi))
    lp = rl.gaussian_log_prob(torch.tensor([[1.0]]), torch.tensor([1.0]), torch.tensor([[1.0 + math.e]]))
    assert lp.item() == pytest.approx(-0.5 - 1.0 - half_log_2pi)
    # entropy of N(μ, σ²) is 1/2 + log(2π)/2 + log σ, summed over dims, one value per row
    h = rl.gaussian_entropy(torch.tensor([0.0, math.log(2.0)]), 3)
    assert h.shape == (3,) and h[0].item() == pytest.approx(2 * (0.5 + half_log_2pi) + math.log(2.0))
