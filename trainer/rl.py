"""Pure on-policy RL math shared by every RL module: GAE, PPO losses, diagnostics and constrained-RL updates.

Specification: ``papers/rl_core.md`` §6 (what needs communication under DDP), §7 (the formulas), §8 (the
worked numbers the tests check) and ``papers/hasard.md`` §3.1 (Lagrangian / PID / P3O surrogates, budget
conversion), §3.2 (Sauté) and §6.

Contents:

- **Advantages**: :func:`gae` (same-step autoreset with truncation bootstrap; also used for costs),
  :func:`normalize_advantages`, :func:`global_advantage_stats` (all-reduced moments for the ``global``
  normalisation scope).
- **PPO losses**: :func:`clip_bounds` (standard / asymmetric / Sample-Factory "unbiased" ratio bounds),
  :func:`clipped_surrogate`, :func:`value_loss` (optionally clipped), :func:`categorical_entropy`,
  :func:`log_prob_heads` (multi-discrete heads), :func:`symmetric_kl_to_uniform` (Sample Factory's
  exploration loss), :func:`expectile_loss` (IQL / Q-Evolve).
- **Diagnostics**: :func:`approx_kl`, :func:`clip_fraction`, :func:`explained_variance`.
- **Lagrange multipliers** (closed form, no autograd, so λ can live in a module buffer and never be a DDP
  parameter): :func:`lagrange_gradient_ascent`, :class:`LagrangeAdamState` + :func:`lagrange_adam_step`,
  :class:`PIDLagrangeState` + :func:`pid_lagrange_step`, :func:`lagrangian_advantage`, :func:`p3o_penalty`.
- **Budgets and Sauté**: :func:`per_step_budget`, :func:`saute_budget`, :func:`saute_step`,
  :func:`saute_reward`.
- **Running statistics**: :func:`merge_moments` (Chan et al. parallel variance) and :class:`RunningMeanStd`.

Everything here is a plain function of tensors or floats: no Lightning imports, no global state, no RNG.
Choices the spec leaves open are documented where they are made (unbiased std in advantage
normalisation, 0 for an undefined explained variance, the PID delay buffer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "gae",
    "clip_bounds",
    "CLIP_MODES",
    "clipped_surrogate",
    "value_loss",
    "normalize_advantages",
    "global_advantage_stats",
    "categorical_entropy",
    "log_prob_heads",
    "gaussian_log_prob",
    "gaussian_entropy",
    "symmetric_kl_to_uniform",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "expectile_loss",
    "lagrange_gradient_ascent",
    "LagrangeAdamState",
    "lagrange_adam_step",
    "PIDLagrangeState",
    "pid_lagrange_step",
    "LAGRANGIAN_MODES",
    "lagrangian_advantage",
    "p3o_penalty",
    "per_step_budget",
    "saute_budget",
    "saute_step",
    "saute_reward",
    "merge_moments",
    "RunningMeanStd",
]

#: Valid ``mode`` values of :func:`clip_bounds`.
CLIP_MODES = ("standard", "asymmetric", "unbiased")
#: Valid ``mode`` values of :func:`lagrangian_advantage`.
LAGRANGIAN_MODES = ("lag", "pid", "none")


# ----------------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------------


def _as_bool(flags: Tensor) -> Tensor:
    flags = torch.as_tensor(flags)
    return flags if flags.dtype == torch.bool else flags != 0


def gae(
    rewards: Tensor,
    values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    final_values: Tensor,
    bootstrap: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation with same-step autoreset and truncation bootstrap.

    Under same-step autoreset the observation stored after a finished step ``t`` already belongs to the next
    episode, so the successor value of step ``t`` is taken from ``final_values`` (the value of the true final
    observation) on truncation, is 0 on termination, and the recursion is cut at every episode boundary.
    The same function computes cost advantages from costs and the cost value head.

    Args:
        rewards: ``[T, N]`` rewards (or costs) of each step.
        values: ``[T, N]`` value estimates V(obs_t).
        terminated: ``[T, N]`` bool or 0/1 flags, the episode ended in a terminal state at step t.
        truncated: ``[T, N]`` bool or 0/1 flags, the episode was cut (time limit, env restart) at step t.
        final_values: ``[T, N]`` V(final_obs_t); only read where ``truncated`` and not ``terminated``
            (other entries may hold anything, including NaN).
        bootstrap: ``[N]`` V(obs_T), the value of the observation after the last step.
        gamma: discount factor.
        lam: GAE λ (1 gives Monte-Carlo returns with bootstrap, 0 gives one-step TD errors).

    Returns:
        ``(advantages, returns)``, both float32 ``[T, N]``; ``returns = advantages + values`` is the
        λ-return value target.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    values = torch.as_tensor(values, dtype=torch.float32, device=rewards.device)
    final_values = torch.as_tensor(final_values, dtype=torch.float32, device=rewards.device)
    bootstrap = torch.as_tensor(bootstrap, dtype=torch.float32, device=rewards.device)
    term = _as_bool(terminated).to(rewards.device)
    trunc = _as_bool(truncated).to(rewards.device)
    if rewards.dim() != 2:
        raise ValueError(f"gae: rewards must be [T, N], got shape {tuple(rewards.shape)}")
    for name, t in (("values", values), ("terminated", term), ("truncated", trunc), ("final_values", final_values)):
        if t.shape != rewards.shape:
            raise ValueError(f"gae: {name} has shape {tuple(t.shape)}, expected {tuple(rewards.shape)}")
    if bootstrap.shape != rewards.shape[1:]:
        raise ValueError(f"gae: bootstrap has shape {tuple(bootstrap.shape)}, expected {tuple(rewards.shape[1:])}")

    T = rewards.shape[0]
    done = term | trunc
    # Successor values: V_{t+1} inside the rollout, the bootstrap after the last step.  # rl_core.md §7
    next_v = torch.cat([values[1:], bootstrap.unsqueeze(0)], dim=0)
    next_v = torch.where(trunc, final_values, next_v)  # trunc_t and not term_t -> V(final_obs_t)
    next_v = torch.where(term, torch.zeros_like(next_v), next_v)  # term_t -> 0
    delta = rewards + gamma * next_v - values  # rl_core.md §7
    carry = (1.0 - done.float()) * (gamma * lam)
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(bootstrap)  # A_T = 0
    for t in range(T - 1, -1, -1):
        last = delta[t] + carry[t] * last  # A_t = delta_t + gamma*lam*(1-done_t)*A_{t+1}
        adv[t] = last
    return adv, adv + values  # R_t = A_t + V_t


def normalize_advantages(
    adv: Tensor, eps: float = 1e-8, stats: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """``(A - mean) / (std + eps)`` over the given tensor, or with precomputed statistics.

    The std is torch's default **unbiased** estimate (``adv.std()``), as in CleanRL. With a single element the
    unbiased std is undefined; it is treated as 0, so the output stays finite (it is 0).

    Args:
        adv: advantages, any shape.
        eps: added to the std (rl_core.md §7 uses 1e-8); keeps a constant input finite.
        stats: optional ``(mean, std)`` already computed, e.g. by :func:`global_advantage_stats` for the
            ``global`` scope; when given, ``adv`` is not reduced at all.

    Returns:
        The normalised advantages, same shape and dtype as ``adv``.
    """
    if stats is not None:
        mean, std = stats
    elif adv.numel() == 0:
        return adv
    else:
        mean = adv.mean()
        std = adv.std() if adv.numel() > 1 else torch.zeros_like(mean)
    return (adv - mean) / (std + eps)  # rl_core.md §7


def global_advantage_stats(
    adv: Tensor, all_reduce: Callable[[Tensor], Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Mean and unbiased std over the advantages of all ranks (the ``global`` scope of rl_core.md §6).

    The local count, sum and sum of squares are packed into one float64 tensor ``[count, sum, sumsq]``
    and passed once to ``all_reduce``; the mean and std are then derived from the merged moments, so every
    rank gets identical values.

    Args:
        adv: this rank's advantages, any shape.
        all_reduce: ``f(tensor) -> tensor`` returning the elementwise sum over ranks, for example
            ``lambda t: (torch.distributed.all_reduce(t), t)[1]``; ``None`` for a single process.

    Returns:
        ``(mean, std)`` as 0-dim tensors in ``adv``'s dtype and device; std is 0 when the global count is < 2.
    """
    x = adv.detach().reshape(-1).to(torch.float64)
    count = torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)
    moments = torch.stack([count, x.sum(), (x * x).sum()])
    if all_reduce is not None:
        moments = all_reduce(moments)  # rl_core.md §6: sum, sum of squares and count are all-reduced
    n, s, ss = moments[0], moments[1], moments[2]
    mean = s / n.clamp_min(1.0)
    var = ((ss - s * mean) / (n - 1.0).clamp_min(1.0)).clamp_min(0.0)  # unbiased, from the merged moments
    std = torch.where(n > 1.0, var.sqrt(), torch.zeros_like(var))
    return mean.to(adv.dtype), std.to(adv.dtype)


# ----------------------------------------------------------------------------------------------------------
# PPO losses
# ----------------------------------------------------------------------------------------------------------


def clip_bounds(
    eps: float, mode: str = "standard", eps_low: float | None = None, eps_high: float | None = None
) -> tuple[float, float]:
    """The ratio bounds ``(lo, hi)`` of the clipped surrogate.

    Args:
        eps: clip ε.
        mode: ``"standard"`` → ``(1 - eps, 1 + eps)``; ``"asymmetric"`` (Q-Evolve) →
            ``(1 - eps_low, 1 + eps_high)``; ``"unbiased"`` (Sample Factory, HASARD) → ``(1/(1+eps), 1+eps)``.
        eps_low: lower ε of the asymmetric mode; defaults to ``eps``.
        eps_high: upper ε of the asymmetric mode; defaults to ``eps``.

    Returns:
        ``(lo, hi)`` as floats.

    Raises:
        ValueError: on an unknown mode or a negative ε.
    """
    if mode not in CLIP_MODES:
        raise ValueError(f"clip_bounds: unknown mode {mode!r}; valid modes are {', '.join(CLIP_MODES)}")
    if mode == "asymmetric":
        low = eps if eps_low is None else eps_low
        high = eps if eps_high is None else eps_high
    else:
        low = high = eps
    if low < 0 or high < 0:
        raise ValueError(f"clip_bounds: clip epsilons must be >= 0, got eps_low={low}, eps_high={high}")
    if mode == "standard":
        return 1.0 - eps, 1.0 + eps  # rl_core.md §7, standard PPO
    if mode == "asymmetric":
        return 1.0 - low, 1.0 + high  # rl_core.md §7, asymmetric (Q-Evolve)
    return 1.0 / (1.0 + eps), 1.0 + eps  # rl_core.md §7, Sample-Factory "unbiased" (HASARD Sec. 3.1)


def clipped_surrogate(logp_new: Tensor, logp_old: Tensor, adv: Tensor, lo: float, hi: float) -> Tensor:
    """The PPO clipped-surrogate loss ``-mean(min(rho*A, clip(rho, lo, hi)*A))``.

    Args:
        logp_new: log-probabilities of the taken actions under the current policy (differentiable).
        logp_old: log-probabilities under the behaviour policy (treated as constants).
        adv: (normalised) advantages, same shape.
        lo: lower ratio bound (see :func:`clip_bounds`).
        hi: upper ratio bound.

    Returns:
        The scalar loss (to minimise).
    """
    rho = torch.exp(logp_new - logp_old.detach())  # rl_core.md §7
    unclipped = rho * adv
    clipped = rho.clamp(lo, hi) * adv
    return -torch.minimum(unclipped, clipped).mean()  # rl_core.md §7, L_pi


def value_loss(v: Tensor, ret: Tensor, v_old: Tensor | None = None, clip_eps: float | None = None) -> Tensor:
    """The value loss ``0.5*mean((V - R)^2)``, or its clipped variant.

    Args:
        v: current value predictions.
        ret: value targets R (λ-returns).
        v_old: values predicted at collection time; the clipped variant is used only when both ``v_old``
            and ``clip_eps`` are given.
        clip_eps: ε_v of the clipped variant.

    Returns:
        The scalar loss. Clipped: ``0.5*mean(max((V-R)^2, (V_old + clip(V-V_old, -eps, eps) - R)^2))``.
    """
    err = (v - ret) ** 2
    if v_old is None or clip_eps is None:
        return 0.5 * err.mean()  # rl_core.md §7, L_V
    v_clipped = v_old + (v - v_old).clamp(-clip_eps, clip_eps)
    return 0.5 * torch.maximum(err, (v_clipped - ret) ** 2).mean()  # rl_core.md §7, clipped L_V


def _head_log_probs(logits: Tensor) -> Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    # Masked actions (logit -inf) would give 0 * -inf = nan; clamp like torch.distributions.Categorical.
    return logp.clamp_min(torch.finfo(logp.dtype).min)


def categorical_entropy(logits_per_head: Sequence[Tensor]) -> Tensor:
    """Entropy of a (multi-)discrete policy: the sum over heads of each head's categorical entropy.

    Args:
        logits_per_head: one ``[B, K_h]`` logits tensor per head.

    Returns:
        ``[B]`` per-row entropy (nats), summed over heads (rl_core.md §7: tuple spaces sum over heads).
    """
    if len(logits_per_head) == 0:
        raise ValueError("categorical_entropy: need at least one head")
    total = None
    for logits in logits_per_head:
        logp = _head_log_probs(logits)
        h = -(logp.exp() * logp).sum(-1)  # H(pi) = -sum_a pi_a log pi_a
        total = h if total is None else total + h
    return total


def log_prob_heads(logits_per_head: Sequence[Tensor], actions: Tensor) -> Tensor:
    """Log-probability of a multi-discrete action: the sum over heads of each chosen action's log-softmax.

    Args:
        logits_per_head: one ``[B, K_h]`` logits tensor per head.
        actions: ``[B, n_heads]`` long tensor of chosen indices (a ``[B]`` tensor is accepted for one head).

    Returns:
        ``[B]`` log-probabilities.
    """
    if actions.dim() == 1:
        actions = actions.unsqueeze(-1)
    if actions.shape[-1] != len(logits_per_head):
        raise ValueError(f"log_prob_heads: {actions.shape[-1]} action columns for {len(logits_per_head)} heads")
    total = None
    for h, logits in enumerate(logits_per_head):
        lp = torch.log_softmax(logits, dim=-1).gather(-1, actions[:, h : h + 1].long()).squeeze(-1)
        total = lp if total is None else total + lp
    return total


def gaussian_log_prob(mean: Tensor, log_std: Tensor, x: Tensor) -> Tensor:
    """Log-density of a diagonal Gaussian, summed over the last dimension (one term per Box head).

    Args:
        mean: ``[B, D]`` means.
        log_std: ``[D]`` (state-independent) or ``[B, D]`` log standard deviations.
        x: ``[B, D]`` samples (the unclipped ones: the env sees them clipped to the Box).

    Returns:
        ``[B]`` ``sum_d -(x_d - mu_d)^2 / (2 sigma_d^2) - log sigma_d - log(2 pi)/2``.
    """
    log_std = log_std.expand_as(mean)
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: Tensor, batch: int) -> Tensor:
    """Entropy of a diagonal Gaussian with state-independent ``log_std`` ``[D]``, summed over D, for ``batch``
    rows: ``sum_d (1 + log(2 pi))/2 + log sigma_d`` (nats), shape ``[batch]``."""
    h = (0.5 * (1.0 + math.log(2 * math.pi)) + log_std).sum()
    return h.expand(batch)


def symmetric_kl_to_uniform(logits_per_head: Sequence[Tensor]) -> Tensor:
    """Sample Factory's exploration loss: ``KL(U || pi) + KL(pi || U)`` per head, summed over heads.

    U is the uniform distribution over each head's K actions. ``KL(U||pi) = -log K - mean_a log pi_a`` and
    ``KL(pi||U) = log K - H(pi)``. Actions with probability exactly 0 make ``KL(U||pi)`` infinite; the log
    probabilities are clamped to the dtype's minimum, so it stays finite but huge.

    Args:
        logits_per_head: one ``[B, K_h]`` logits tensor per head.

    Returns:
        ``[B]`` per-row loss, 0 exactly for uniform logits and positive otherwise (rl_core.md §7).
    """
    if len(logits_per_head) == 0:
        raise ValueError("symmetric_kl_to_uniform: need at least one head")
    total = None
    for logits in logits_per_head:
        k = logits.shape[-1]
        logp = _head_log_probs(logits)
        log_u = -math.log(k)
        kl_u_pi = (log_u - logp).mean(-1)  # sum_a (1/K) (log(1/K) - log pi_a)   # HASARD Sec. 3.1, L_symKL
        kl_pi_u = (logp.exp() * (logp - log_u)).sum(-1)  # sum_a pi_a (log pi_a - log(1/K))
        kl = kl_u_pi + kl_pi_u
        total = kl if total is None else total + kl
    return total


def expectile_loss(u: Tensor, tau: float) -> Tensor:
    """The asymmetric squared (expectile) loss ``|tau - 1[u < 0]| * u^2``, elementwise (no reduction).

    Args:
        u: residuals (e.g. ``Q - V``).
        tau: expectile in (0, 1); 0.5 gives half the squared error.

    Returns:
        A tensor of the same shape as ``u``.
    """
    return (tau - (u < 0).to(u.dtype)).abs() * u**2  # rl_core.md §7, L2_tau


# ----------------------------------------------------------------------------------------------------------
# Diagnostics
# ----------------------------------------------------------------------------------------------------------


def approx_kl(logp_new: Tensor, logp_old: Tensor) -> Tensor:
    """The low-variance KL estimate ``mean((rho - 1) - log rho)`` (always >= 0).

    Args:
        logp_new: current log-probabilities of the taken actions.
        logp_old: behaviour log-probabilities.

    Returns:
        A 0-dim tensor; differentiable through ``logp_new`` (detach it for logging).
    """
    log_rho = logp_new - logp_old
    return ((log_rho.exp() - 1.0) - log_rho).mean()  # rl_core.md §7, approx_kl


def clip_fraction(logp_new: Tensor, logp_old: Tensor, lo: float, hi: float) -> Tensor:
    """Fraction of samples whose ratio lies outside ``[lo, hi]``.

    Args:
        logp_new: current log-probabilities.
        logp_old: behaviour log-probabilities.
        lo: lower ratio bound.
        hi: upper ratio bound.

    Returns:
        A 0-dim float tensor in [0, 1] (not differentiable).
    """
    rho = (logp_new - logp_old).detach().exp()
    return ((rho < lo) | (rho > hi)).float().mean()  # rl_core.md §7, clipfrac


def explained_variance(values: Tensor, returns: Tensor) -> Tensor:
    """``1 - Var(R - V) / Var(R)``: 1 for perfect values, 0 for a constant predictor, negative when worse.

    Population variances are used (the ratio is the same as with unbiased ones for n >= 2, and a single
    sample is then well defined). When ``Var(R) == 0`` the ratio is undefined; this returns **0** (where
    CleanRL returns NaN) so the logged scalar stays finite.

    Args:
        values: value predictions V.
        returns: value targets R.

    Returns:
        A 0-dim tensor.
    """
    values = values.detach().reshape(-1)
    returns = returns.detach().reshape(-1)
    var_r = returns.var(unbiased=False) if returns.numel() else returns.new_zeros(())
    if not bool(var_r > 0):
        return torch.zeros((), dtype=returns.dtype, device=returns.device)
    return 1.0 - (returns - values).var(unbiased=False) / var_r  # rl_core.md §7, explained_variance


# ----------------------------------------------------------------------------------------------------------
# Lagrange multipliers
# ----------------------------------------------------------------------------------------------------------


def lagrange_gradient_ascent(lam: float, cost: float, budget: float, lr: float) -> float:
    """One projected gradient-ascent step of the multiplier (the HASARD code's ``gradient_ascent``).

    Args:
        lam: current multiplier λ.
        cost: cost statistic J_c (a float or 0-dim tensor, already all-reduced).
        budget: budget d, in the units of ``cost``.
        lr: multiplier learning rate η.

    Returns:
        ``max(0, lam + lr * (cost - budget))``.
    """
    return max(0.0, float(lam) + lr * (float(cost) - float(budget)))  # rl_core.md §7, HASARD Sec. 3.1


@dataclass(frozen=True)
class LagrangeAdamState:
    """State of the closed-form Adam multiplier update.

    Args:
        lam: multiplier λ.
        m: Adam's first-moment estimate.
        v: Adam's second-moment estimate.
        t: number of steps taken.
    """

    lam: float = 0.0
    m: float = 0.0
    v: float = 0.0
    t: int = 0


def lagrange_adam_step(
    state: LagrangeAdamState,
    cost: float,
    budget: float,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    lam_max: float = float("inf"),
) -> LagrangeAdamState:
    """One Adam step on the loss ``-lam * (J_c - d)`` (OmniSafe's Lagrange), then clamp to ``[0, lam_max]``.

    The gradient w.r.t. λ is ``-(J_c - d)``; the moments and bias correction follow ``torch.optim.Adam``
    (no weight decay, no amsgrad), so without clamping the result equals that optimizer on a scalar.

    Args:
        state: current state.
        cost: cost statistic J_c (float or 0-dim tensor).
        budget: budget d.
        lr: Adam learning rate.
        betas: Adam's ``(beta1, beta2)``.
        eps: Adam's epsilon.
        lam_max: upper clamp of λ.

    Returns:
        The new :class:`LagrangeAdamState`.
    """
    b1, b2 = betas
    g = -(float(cost) - float(budget))  # d/dlam of -lam*(J_c - d)   # rl_core.md §7, adam
    t = state.t + 1
    m = b1 * state.m + (1.0 - b1) * g
    v = b2 * state.v + (1.0 - b2) * g * g
    m_hat = m / (1.0 - b1**t)
    denom = math.sqrt(v) / math.sqrt(1.0 - b2**t) + eps
    lam = state.lam - lr * m_hat / denom
    lam = min(max(lam, 0.0), lam_max)  # clamp to [0, lam_max]
    return LagrangeAdamState(lam=lam, m=m, v=v, t=t)


@dataclass(frozen=True)
class PIDLagrangeState:
    """State of the PID Lagrangian (Stooke et al. 2020).

    Args:
        i_term: integral term I.
        p_ema: exponential moving average of ``delta = J_c - d`` (the proportional signal P).
        d_ema: exponential moving average of ``J_c`` (the derivative signal).
        d_history: past ``d_ema`` values, oldest first; ``d_history[-d_delay]`` is the value ``d_delay``
            updates ago. Starts filled with ``d_delay`` zeros, so the delayed reference is 0 at first.
        lam: the current multiplier λ.
    """

    i_term: float
    p_ema: float
    d_ema: float
    d_history: tuple[float, ...]
    lam: float

    @classmethod
    def initial(cls, i0: float = 0.001, d_delay: int = 10) -> PIDLagrangeState:
        """The state before any update.

        Args:
            i0: initial integral term (OmniSafe ``lagrangian_multiplier_init``; HASARD code 0.001).
            d_delay: length of the derivative delay buffer.

        Returns:
            A state with ``I = i0``, zero P, D and λ, and ``d_delay`` zeros of history.
        """
        return cls(i_term=float(i0), p_ema=0.0, d_ema=0.0, d_history=(0.0,) * int(d_delay), lam=0.0)


def pid_lagrange_step(
    state: PIDLagrangeState,
    cost: float,
    budget: float,
    kp: float = 0.1,
    ki: float = 0.01,
    kd: float = 0.01,
    alpha_p: float = 0.95,
    alpha_d: float = 0.95,
    d_delay: int = 10,
    penalty_max: float = 100.0,
    sum_norm: bool = True,
    diff_norm: bool = False,
) -> PIDLagrangeState:
    """One PID-Lagrangian update (rl_core.md §7; OmniSafe / HASARD code).

    Args:
        state: current state (see :meth:`PIDLagrangeState.initial`).
        cost: cost statistic J_c (float or 0-dim tensor).
        budget: budget d.
        kp: proportional gain K_p.
        ki: integral gain K_i.
        kd: derivative gain K_d.
        alpha_p: EMA factor of the proportional signal.
        alpha_d: EMA factor of the derivative signal.
        d_delay: how many updates back the derivative compares against (>= 1).
        penalty_max: cap on λ, applied only when neither normalisation flag is set.
        sum_norm: the advantage is divided by ``1 + lam`` by the caller; disables the ``penalty_max`` cap.
        diff_norm: λ is capped at 1 (and the ``penalty_max`` cap is off).

    Returns:
        The new :class:`PIDLagrangeState`; its ``lam`` is the multiplier to use now.
    """
    if d_delay < 1:
        raise ValueError(f"pid_lagrange_step: d_delay must be >= 1, got {d_delay}")
    cost = float(cost)
    delta = cost - float(budget)  # rl_core.md §7, pid
    i_term = max(0.0, state.i_term + ki * delta)  # I <- max(0, I + K_i delta)
    p_ema = alpha_p * state.p_ema + (1.0 - alpha_p) * delta  # P <- a_p P + (1 - a_p) delta
    d_ema = alpha_d * state.d_ema + (1.0 - alpha_d) * cost  # D <- a_d D + (1 - a_d) J_c
    hist = state.d_history
    reference = hist[-d_delay] if len(hist) >= d_delay else 0.0  # D_ema d_delay updates ago (0 before)
    lam = max(0.0, kp * p_ema + i_term + kd * max(0.0, d_ema - reference))  # rl_core.md §7, lam
    if diff_norm:
        lam = min(1.0, lam)
    if not (sum_norm or diff_norm):
        lam = min(lam, penalty_max)
    new_hist = (hist + (d_ema,))[-d_delay:]
    return PIDLagrangeState(i_term=i_term, p_ema=p_ema, d_ema=d_ema, d_history=new_hist, lam=lam)


def lagrangian_advantage(adv_r: Tensor, adv_c: Tensor, lam: float | Tensor, mode: str) -> Tensor:
    """The surrogate advantage of a Lagrangian method.

    Args:
        adv_r: reward advantages A_R.
        adv_c: cost advantages A_C.
        lam: multiplier λ (float or 0-dim tensor, treated as a constant).
        mode: ``"lag"`` → ``A_R - lam*A_C``; ``"pid"`` → ``(A_R - lam*A_C)/(1+lam)``; ``"none"`` → ``A_R``.

    Returns:
        The combined advantages, shape of ``adv_r``.

    Raises:
        ValueError: on an unknown mode.
    """
    if mode not in LAGRANGIAN_MODES:
        raise ValueError(f"lagrangian_advantage: unknown mode {mode!r}; valid modes are {', '.join(LAGRANGIAN_MODES)}")
    if isinstance(lam, Tensor):
        lam = lam.detach()
    if mode == "none":
        return adv_r
    combined = adv_r - lam * adv_c  # HASARD Sec. 3.1, ppo_lag
    if mode == "pid":
        return combined / (1.0 + lam)  # HASARD Sec. 3.1, ppo_pid
    return combined


def p3o_penalty(
    logp_new: Tensor,
    logp_old: Tensor,
    adv_c_normalised: Tensor,
    mean_cost: float | Tensor,
    budget: float,
    kappa: float,
) -> Tensor:
    """P3O's exact-penalty term ``kappa * max(0, mean(rho * A_C_hat) + (c_bar - b))`` with unclipped rho.

    Args:
        logp_new: current log-probabilities (differentiable).
        logp_old: behaviour log-probabilities.
        adv_c_normalised: cost advantages normalised per minibatch (A_C_hat).
        mean_cost: mean per-step cost of the minibatch c_bar (all-reduced), a constant.
        budget: per-step budget b.
        kappa: penalty coefficient κ_p3o.

    Returns:
        A 0-dim tensor; it and its gradient are zero when the inside is negative.
    """
    if isinstance(mean_cost, Tensor):
        mean_cost = mean_cost.detach()
    rho = torch.exp(logp_new - logp_old.detach())  # unclipped   # HASARD Sec. 3.1, p3o
    inside = (rho * adv_c_normalised).mean() + (mean_cost - budget)
    return kappa * torch.relu(inside)  # HASARD Sec. 3.1, p3o


# ----------------------------------------------------------------------------------------------------------
# Budgets and Sauté
# ----------------------------------------------------------------------------------------------------------


def per_step_budget(episode_budget: float, frame_skip: int = 4, timeout_tics: int = 2100) -> float:
    """The authors' conversion of an episode cost budget into a per-step bound.

    Args:
        episode_budget: episode budget B.
        frame_skip: game tics per agent step.
        timeout_tics: episode length in game tics.

    Returns:
        ``B * frame_skip / timeout_tics`` (5 → 0.0095238).
    """
    return float(episode_budget) * frame_skip / timeout_tics  # HASARD Sec. 3.1, budget conversion


def saute_budget(episode_budget: float, gamma_s: float, horizon: int) -> float:
    """Sauté's discounted per-step budget ``B_d = B (1 - gamma_s^H) / ((1 - gamma_s) H)``.

    Args:
        episode_budget: episode budget B.
        gamma_s: Sauté discount γ_s (HASARD code default 0.9999).
        horizon: episode horizon H (agent steps, 525 in HASARD; the authors' code used 2100 tics).

    Returns:
        B_d; for ``gamma_s == 1`` the limit B.
    """
    if gamma_s == 1.0:
        return float(episode_budget)  # limit of the geometric sum / H
    return float(episode_budget) * (1.0 - gamma_s**horizon) / ((1.0 - gamma_s) * horizon)  # HASARD Sec. 3.2


def saute_step(z: float | Tensor, cost: float | Tensor, budget_d: float, gamma_s: float) -> float | Tensor:
    """The Sauté safety-state update ``z_{t+1} = (z_t - c_t / B_d) / gamma_s`` (elementwise).

    Args:
        z: current safety state (1 at episode start).
        cost: cost of the step.
        budget_d: B_d from :func:`saute_budget`.
        gamma_s: Sauté discount.

    Returns:
        ``z_next``, a float or tensor like the inputs.
    """
    return (z - cost / budget_d) / gamma_s  # HASARD Sec. 3.2


def saute_reward(reward: float | Tensor, z_next: float | Tensor, unsafe_reward: float) -> float | Tensor:
    """Sauté's reward: the reward while the safety state is positive, ``unsafe_reward`` once it is not.

    Args:
        reward: environment reward r_t.
        z_next: safety state after the step, z_{t+1}.
        unsafe_reward: the scenario's replacement reward (HASARD Sec. 3.2 table).

    Returns:
        ``reward`` where ``z_next > 0`` else ``unsafe_reward``; a tensor if either input is a tensor.
    """
    if isinstance(reward, Tensor) or isinstance(z_next, Tensor):
        r = torch.as_tensor(reward)
        z = torch.as_tensor(z_next, device=r.device)
        if not r.is_floating_point():
            r = r.float()
        return torch.where(z > 0, r, torch.full_like(r, float(unsafe_reward)))  # HASARD Sec. 3.2
    return reward if z_next > 0 else unsafe_reward  # HASARD Sec. 3.2


# ----------------------------------------------------------------------------------------------------------
# Running statistics
# ----------------------------------------------------------------------------------------------------------


def merge_moments(
    count_a: float | Tensor,
    mean_a: float | Tensor,
    m2_a: float | Tensor,
    count_b: float | Tensor,
    mean_b: float | Tensor,
    m2_b: float | Tensor,
) -> tuple[float | Tensor, float | Tensor, float | Tensor]:
    """Chan et al.'s parallel merge of two sets of moments (count, mean, M2 = sum of squared deviations).

    Args:
        count_a: number of samples of the first set (float or tensor).
        mean_a: mean of the first set.
        m2_a: sum of squared deviations of the first set.
        count_b: number of samples of the second set.
        mean_b: mean of the second set.
        m2_b: sum of squared deviations of the second set.

    Returns:
        ``(count, mean, m2)`` of the union; with a zero total count the first mean is kept.
    """
    n = count_a + count_b
    if not bool(n > 0):
        return n, mean_a, m2_a + m2_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / n)  # rl_core.md §7, Chan/parallel merge
    m2 = m2_a + m2_b + delta * delta * (count_a * count_b / n)
    return n, mean, m2


class RunningMeanStd:
    """Running mean and (population) variance over a fixed feature shape, mergeable across ranks.

    Statistics are float64 tensors. Before any data ``count = 0``, ``mean = 0`` and ``var = 1``, so
    :meth:`normalize` is the identity (up to ``eps``). For DDP, pass ``all_reduce`` to :meth:`update`: the
    batch moments are summed over ranks before they are merged, so every rank keeps identical statistics
    (rl_core.md §6) without double counting earlier data.

    Args:
        shape: feature shape of one sample (``()`` for scalars such as returns).
        eps: added to the variance in :meth:`normalize`.
    """

    def __init__(self, shape: Sequence[int] = (), eps: float = 1e-8) -> None:
        self.shape = tuple(shape)
        self.eps = eps
        self.count = torch.zeros((), dtype=torch.float64)
        self.mean = torch.zeros(self.shape, dtype=torch.float64)
        self.var = torch.ones(self.shape, dtype=torch.float64)

    def _check_batch(self, batch: Tensor) -> Tensor:
        batch = torch.as_tensor(batch).detach().to(torch.float64)
        nd = len(self.shape)
        if batch.dim() < nd or tuple(batch.shape[batch.dim() - nd :]) != self.shape:
            raise ValueError(f"RunningMeanStd: batch shape {tuple(batch.shape)} does not end in {self.shape}")
        return batch.reshape(-1, *self.shape)

    def update(self, batch: Tensor, all_reduce: Callable[[Tensor], Tensor] | None = None) -> RunningMeanStd:
        """Merge a batch ``[..., *shape]`` into the statistics (Chan's batch update).

        Args:
            batch: samples; all leading dimensions are flattened.
            all_reduce: optional ``f(tensor) -> tensor`` summing over ranks; the batch moments (shifted by
                the current mean, which is identical on all ranks) are reduced in one call.

        Returns:
            ``self``.
        """
        x = self._check_batch(batch).to(self.mean.device)
        shifted = x - self.mean  # shift by the running mean: better-conditioned sums
        packed = torch.cat(
            [torch.tensor([float(x.shape[0])], dtype=torch.float64, device=x.device),
             shifted.sum(0).reshape(-1), (shifted * shifted).sum(0).reshape(-1)]
        )
        if all_reduce is not None:
            packed = all_reduce(packed)
        k = self.mean.numel()
        n_b = packed[0]
        if not bool(n_b > 0):
            return self
        s1 = packed[1 : 1 + k].reshape(self.shape)
        s2 = packed[1 + k : 1 + 2 * k].reshape(self.shape)
        mean_b = self.mean + s1 / n_b
        m2_b = (s2 - s1 * s1 / n_b).clamp_min(0.0)
        self._merge(n_b, mean_b, m2_b)
        return self

    def _merge(self, count_b: Tensor, mean_b: Tensor, m2_b: Tensor) -> None:
        n, mean, m2 = merge_moments(self.count, self.mean, self.var * self.count, count_b, mean_b, m2_b)
        self.count = torch.as_tensor(n, dtype=torch.float64)
        self.mean = mean
        self.var = m2 / n if bool(n > 0) else torch.ones_like(self.mean)

    def merge(self, other: RunningMeanStd) -> RunningMeanStd:
        """Merge another instance's statistics into this one (Chan's parallel formula).

        Args:
            other: statistics over the same shape.

        Returns:
            ``self``.
        """
        if other.shape != self.shape:
            raise ValueError(f"RunningMeanStd.merge: shapes differ, {self.shape} vs {other.shape}")
        self._merge(other.count.clone(), other.mean.clone(), other.var * other.count)
        return self

    @property
    def std(self) -> Tensor:
        """``sqrt(var)``."""
        return self.var.sqrt()

    def normalize(self, x: Tensor, clip: float | None = None) -> Tensor:
        """``(x - mean) / sqrt(var + eps)``, optionally clipped to ``[-clip, clip]``, in ``x``'s dtype.

        Args:
            x: samples ``[..., *shape]``.
            clip: symmetric clip of the result; ``None`` for none.

        Returns:
            The normalised tensor.
        """
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        std = torch.sqrt(self.var + self.eps).to(device=x.device, dtype=x.dtype)
        y = (x - mean) / std
        return y.clamp(-clip, clip) if clip is not None else y

    def state_dict(self) -> dict[str, Tensor]:
        """The checkpointable statistics.

        Returns:
            ``{"count", "mean", "var"}`` as cloned tensors.
        """
        return {"count": self.count.clone(), "mean": self.mean.clone(), "var": self.var.clone()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore statistics from :meth:`state_dict`.

        Args:
            state: mapping with exactly the keys ``count``, ``mean`` and ``var``.

        Raises:
            KeyError: on missing or unknown keys.
            ValueError: on a shape mismatch.
        """
        expected = {"count", "mean", "var"}
        if set(state) != expected:
            raise KeyError(f"RunningMeanStd: expected keys {sorted(expected)}, got {sorted(state)}")
        mean = torch.as_tensor(state["mean"], dtype=torch.float64).clone()
        var = torch.as_tensor(state["var"], dtype=torch.float64).clone()
        if tuple(mean.shape) != self.shape or tuple(var.shape) != self.shape:
            raise ValueError(f"RunningMeanStd: state shapes {tuple(mean.shape)}/{tuple(var.shape)} != {self.shape}")
        self.count = torch.as_tensor(state["count"], dtype=torch.float64).clone().reshape(())
        self.mean = mean
        self.var = var
