"""HASARD: A Benchmark for Vision-Based Safe Reinforcement Learning in Embodied Agents.

T. Tomilin, M. Fang, M. Pechenizkiy, ICLR 2025, arXiv 2503.08241 (spec: ``papers/hasard.md``).

Six egocentric ViZDoom scenarios with a per-step safety cost; the paper compares PPO-based safe-RL
baselines under an episode cost budget B. :class:`SafePPO` is one LightningModule for the baselines,
selected by ``algo`` (HASARD §3.1):

* ``ppo``: the reward advantage only (the cost critic is still trained, so costs are logged);
* ``ppo_cost``: reward shaping ``r ← r − κ·c`` before GAE;
* ``ppo_lag``: λ ← max(0, λ + η(c̄ − b)) every minibatch (updated first, then used), A = A_R − λ·A_C;
* ``ppo_pid``: PID-Lagrangian λ (Stooke et al. 2020), A = (A_R − λ·A_C)/(1 + λ);
* ``p3o``: A = A_R plus the penalty κ_P3O·max(0, mean(ρ·Â_C) + (c̄ − b));
* ``ppo_saute``: PPO-Sauté (HASARD §3.2): a safety state z per env, z_0 = 1,
  z_{t+1} = (z_t − c_t/B_d)/γ_s with B_d = B(1 − γ_s^H)/((1 − γ_s)H); the reward becomes the scenario's
  ``unsafe_reward`` once z_{t+1} ≤ 0; z is reset to 1 at an episode's start (same-step autoreset: the new
  episode's first observation is seen with z = 1) and concatenated to the encoder output, so the actor
  and both critics see it. z travels as the named policy input ``safety`` (stored in the rollout buffer
  and the minibatches, part of the datamodule's checkpoint with in-process envs). **H is the episode
  horizon in agent steps**, the datamodule's ``max_episode_steps`` (525 for Doom at frame skip 4; the
  authors' code used the 2100 tics here, which gives a smaller B_d).

c̄ is the minibatch's mean per-step cost, all-reduced over ranks, and ``b = B·frame_skip/timeout_tics``
the per-step budget (``budget_mode: per_step``, the authors'); ``per_episode`` (OmniSafe-style) compares
the mean cost of the episodes finished in the rollout with B once per rollout. λ and the PID state are
module buffers updated in closed form, identical on every rank, and checkpointed.

YAML: ``yaml/hasard/`` (``smoke.yaml`` and ``mini_lava_*`` on the lava-grid stand-in;
``mini_remedy_rush_*`` and ``paper_*`` on the real scenarios).

The optional GRU core (``recurrence`` > 0; the paper files use a GRU 512 with recurrence 32 = the
rollout length) and the full action space (9 discrete heads + 2 Gaussian Box heads) live in
:class:`trainer.ppo.PPOBase`.

Deviations: synchronous rollouts instead of Sample Factory's asynchronous sampler; PPO-Sauté's H in
agent steps, not tics (above); inputs are scaled by 1/255, not normalised by running statistics, and
returns are not normalised.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable

from trainer import rl
from trainer.optimization import allow_in_weights_only_checkpoints
from trainer.ppo import PPOAdam, PPOBase

__all__ = ["HasardAdam", "SafePPO"]

ALGOS = ("ppo", "ppo_cost", "ppo_lag", "ppo_pid", "p3o", "ppo_saute")
BUDGET_MODES = ("per_step", "per_episode")
LAGRANGE_OPTIMIZERS = ("gradient_ascent", "adam")
#: scenario statistics averaged into rollout/ep_<key> when the envs report them (hasard.md §8)
EXTRA_EPISODE_KEYS = ("deaths", "deliveries", "weapons_acquired", "excess_weight", "kills", "descent", "discards",
                      "reached_goal")  # fmt: skip


class HasardAdam(PPOAdam):
    """Adam with HASARD's settings: lr 1e-4 constant (hasard.md §3.4), eps 1e-6 (Sample Factory's default)."""

    def __init__(self, params: Any, lr: float = 1e-4, eps: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(params, lr=lr, eps=eps, **kwargs)


allow_in_weights_only_checkpoints(PPOAdam, HasardAdam)  # the defaults, so a fresh process can load too


class SafePPO(PPOBase):
    """PPO, PPO-Cost, PPO-Lagrangian, PID-Lagrangian, P3O and PPO-Sauté (module docstring; HASARD §3.1–3.2).

    Defaults are the authors' Doom settings (hasard.md §3.4); the lava-grid YAMLs override the encoder.

    Args:
        algo: ``ppo``, ``ppo_cost``, ``ppo_lag``, ``ppo_pid``, ``p3o`` or ``ppo_saute``.
        cost_budget: the episode budget B; None = the datamodule's ``default_budget`` (the scenario's value of the
            authors' code, hasard.md §3.3: 5 for RR/CD/DD/AB, 50 for VV/PP; 0 under the hard constraint).
        budget_mode: ``per_step`` (b = datamodule.per_step_budget(B), compared with c̄ every minibatch) or
            ``per_episode`` (mean finished-episode cost vs B, once per rollout).
        lagrange_lr: η_λ (0.01).
        lagrange_init: λ_0 (0).
        lagrange_optimizer: ``gradient_ascent`` (HASARD code) or ``adam`` (OmniSafe) for ``ppo_lag``.
        lagrange_max: cap of λ for ``adam`` (inf).
        pid_kp: K_p (0.1). pid_ki: K_i (0.01). pid_kd: K_d (0.01).
        pid_d_delay: derivative delay in updates (10).
        pid_alpha_p: EMA of the P term (0.95). pid_alpha_d: EMA of the D term (0.95).
        pid_i0: initial integral (0.001).
        pid_penalty_max: cap of λ without normalisation (100).
        pid_sum_norm: A = (A_R − λA_C)/(1+λ) (on).
        pid_diff_norm: λ clamped to [0, 1] and A = (1−λ)A_R − λA_C (off).
        cost_penalty_kappa: κ of ``ppo_cost``; None = the datamodule's ``default_cost_kappa`` (0.1 for
            ArmamentBurden, 1.0 otherwise, hasard.md §3.4), else 1.0.
        p3o_kappa: κ of ``p3o`` (1.0).
        saute_gamma: γ_s of ``ppo_saute`` (0.9999, the authors' code).
        saute_unsafe_reward: ``ppo_saute``'s reward once z ≤ 0; None = the datamodule's ``default_unsafe_reward``
            (the scenario's value, hasard.md §3.2: AB −0.005, CD −0.1, DD −0.01, PP −0.7, RR −0.025, VV −0.01;
            lava grid −0.1).
        obs_shape, action_heads, action_box, encoder, hidden, recurrence, clip_eps, clip_mode, clip_eps_low, clip_eps_high,
        value_clip, vf_coef, ent_coef, exploration_coef, adv_norm, target_kl, anneal_lr, optimizer, normalize_obs,
        normalize_returns, obs_norm_clip: as in :class:`trainer.ppo.PPOBase`, with HASARD's defaults
            (convnet_simple + FC 512, clip 0.1 "unbiased", value clip 0.2, no entropy bonus, symmetric-KL
            exploration 0.001, constant lr 1e-4, inputs and returns normalised, hasard.md §3.4).
    """

    unit_test_datamodule = "LavaGridDataModule"
    episode_keys = PPOBase.episode_keys + EXTRA_EPISODE_KEYS

    def __init__(
        self,
        algo: str = "ppo_lag",
        cost_budget: float | None = None,
        budget_mode: str = "per_step",
        lagrange_lr: float = 0.01,
        lagrange_init: float = 0.0,
        lagrange_optimizer: str = "gradient_ascent",
        lagrange_max: float = float("inf"),
        pid_kp: float = 0.1,
        pid_ki: float = 0.01,
        pid_kd: float = 0.01,
        pid_d_delay: int = 10,
        pid_alpha_p: float = 0.95,
        pid_alpha_d: float = 0.95,
        pid_i0: float = 0.001,
        pid_penalty_max: float = 100.0,
        pid_sum_norm: bool = True,
        pid_diff_norm: bool = False,
        cost_penalty_kappa: float | None = None,
        p3o_kappa: float = 1.0,
        saute_gamma: float = 0.9999,
        saute_unsafe_reward: float | None = None,
        obs_shape: tuple[int, ...] | None = None,
        action_heads: tuple[int, ...] | None = None,
        action_box: int | None = None,
        encoder: str = "convnet_simple",
        hidden: int = 512,
        recurrence: int = 0,
        clip_eps: float = 0.1,
        clip_mode: str = "unbiased",
        clip_eps_low: float | None = None,
        clip_eps_high: float | None = None,
        value_clip: float | None = 0.2,
        vf_coef: float = 0.5,
        ent_coef: float = 0.0,
        exploration_coef: float = 0.001,
        adv_norm: str = "minibatch",
        target_kl: float | None = None,
        anneal_lr: bool = False,
        optimizer: OptimizerCallable = HasardAdam,
        normalize_obs: bool = True,
        normalize_returns: bool = True,
        obs_norm_clip: float = 5.0,
    ) -> None:
        if algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")
        if not 0 < saute_gamma <= 1:
            raise ValueError(f"saute_gamma must be in (0, 1], got {saute_gamma}")
        self.algo = algo  # read by extra_inputs() while PPOBase builds the network
        super().__init__(
            obs_shape=obs_shape, action_heads=action_heads, action_box=action_box, encoder=encoder, hidden=hidden,
            recurrence=recurrence, clip_eps=clip_eps, clip_mode=clip_mode, clip_eps_low=clip_eps_low,
            clip_eps_high=clip_eps_high, value_clip=value_clip, vf_coef=vf_coef, ent_coef=ent_coef,
            exploration_coef=exploration_coef, adv_norm=adv_norm, target_kl=target_kl, anneal_lr=anneal_lr,
            optimizer=optimizer, normalize_obs=normalize_obs, normalize_returns=normalize_returns,
            obs_norm_clip=obs_norm_clip,
        )  # fmt: skip
        self.save_hyperparameters()
        allow_in_weights_only_checkpoints(optimizer)
        if budget_mode not in BUDGET_MODES:
            raise ValueError(f"budget_mode must be one of {BUDGET_MODES}, got {budget_mode!r}")
        if lagrange_optimizer not in LAGRANGE_OPTIMIZERS:
            raise ValueError(f"lagrange_optimizer must be one of {LAGRANGE_OPTIMIZERS}, got {lagrange_optimizer!r}")
        if cost_budget is not None and cost_budget < 0:
            raise ValueError(f"cost_budget must be >= 0, got {cost_budget}")
        self.cost_budget = float("nan") if cost_budget is None else float(cost_budget)
        self.cost_kappa = 1.0 if cost_penalty_kappa is None else float(cost_penalty_kappa)
        if pid_d_delay < 1:
            raise ValueError(f"pid_d_delay must be >= 1, got {pid_d_delay}")
        f64 = torch.float64
        self.register_buffer("lagrange_lambda", torch.tensor(float(lagrange_init), dtype=f64))
        self.register_buffer("lagrange_adam", torch.zeros(3, dtype=f64))  # m, v, t of the adam variant
        pid = rl.PIDLagrangeState.initial(i0=pid_i0, d_delay=pid_d_delay)
        self.register_buffer("pid_terms", torch.tensor([pid.i_term, pid.p_ema, pid.d_ema], dtype=f64))
        self.register_buffer("pid_history", torch.tensor(list(pid.d_history), dtype=f64))
        self.step_budget = float("nan")  # b, set in setup from the datamodule
        self._last_cost = float("nan")
        # PPO-Sauté: B_d and the unsafe reward, set in setup from the datamodule (configure_saute)
        self.saute_budget_d = float("nan")
        self.unsafe_reward = float("nan") if saute_unsafe_reward is None else float(saute_unsafe_reward)
        self._z_final = [0.0, 0.0]  # sum and count of z at the ends of the rollout's episodes

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"algo": "ppo_lag", "obs_shape": (14,), "action_heads": (4,), "encoder": "mlp", "hidden": 16,
                "optimizer": PPOAdam}  # fmt: skip

    # ---------------------------------------------------------------- budget
    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if self.hparams.cost_budget is None:
            if dm is None or not hasattr(dm, "default_budget"):
                raise ValueError("cost_budget is None but the datamodule has no default_budget: set model.cost_budget")
            self.cost_budget = float(dm.default_budget)
        if self.hparams.cost_penalty_kappa is None and dm is not None and hasattr(dm, "default_cost_kappa"):
            self.cost_kappa = float(dm.default_cost_kappa)
        B = self.cost_budget
        self.step_budget = float(dm.per_step_budget(B)) if dm is not None and hasattr(dm, "per_step_budget") else B
        if self.hparams.algo == "ppo_saute":
            self.configure_saute(dm)
        logger = getattr(self.trainer, "logger", None) if self._trainer is not None else None
        exp = getattr(logger, "experiment", None) if self._trainer is not None and self.trainer.is_global_zero else None
        if exp is not None and hasattr(exp, "add_custom_scalars"):
            exp.add_custom_scalars({"HASARD": {
                "episode cost vs budget": ["Multiline", ["hasard/ep_cost", "hasard/budget"]],
                "step cost vs step budget": ["Multiline", ["hasard/step_cost", "hasard/step_budget"]],
                "episode reward": ["Multiline", ["hasard/ep_reward"]],
                "lambda": ["Multiline", ["lagrange/lambda"]],
            }})  # fmt: skip  # hasard.md §8 custom-scalars layout

    # ---------------------------------------------------------------- PPO-Sauté (HASARD §3.2)
    def configure_saute(self, dm: Any) -> None:
        """B_d = saute_budget(B, γ_s, H) with H = ``dm.max_episode_steps`` (agent steps, not tics) and the unsafe
        reward (``saute_unsafe_reward`` or ``dm.default_unsafe_reward``); B must already be resolved."""
        if not self.cost_budget > 0:
            raise ValueError(f"ppo_saute needs a cost budget B > 0 (B_d divides the costs), got {self.cost_budget}")
        horizon = int(dm.max_episode_steps)
        self.saute_budget_d = rl.saute_budget(self.cost_budget, self.hparams.saute_gamma, horizon)  # HASARD §3.2
        if self.hparams.saute_unsafe_reward is None:
            if not hasattr(dm, "default_unsafe_reward"):
                raise ValueError("saute_unsafe_reward is None but the datamodule has no default_unsafe_reward: set "
                                 "model.saute_unsafe_reward")  # fmt: skip
            self.unsafe_reward = float(dm.default_unsafe_reward)

    def extra_inputs(self) -> tuple[tuple[str, int], ...]:
        """PPO-Sauté: the safety state z (one column, ``safety``) joins the encoder output."""
        return (("safety", 1),) if self.algo == "ppo_saute" else ()

    def initial_policy_state(self, n: int) -> dict[str, torch.Tensor]:
        state = super().initial_policy_state(n)
        if self.algo == "ppo_saute":
            state["safety"] = torch.ones(n, 1)  # HASARD §3.2: z_0 = 1
        return state

    def advance(
        self,
        state: dict[str, torch.Tensor],
        out: dict[str, torch.Tensor],
        reward: torch.Tensor,
        cost: torch.Tensor,
        done: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        reward, nxt = super().advance(state, out, reward, cost, done)
        if self.algo == "ppo_saute":
            z = rl.saute_step(state["safety"], cost.reshape(-1, 1), self.saute_budget_d, self.hparams.saute_gamma)
            reward = rl.saute_reward(reward, z.reshape(-1), self.unsafe_reward)  # HASARD §3.2: r̃ = u once z ≤ 0
            nxt["safety"] = z
            if bool(done.any()):
                self._z_final[0] += float(z.reshape(-1)[done].sum())
                self._z_final[1] += float(done.sum())
        return reward, nxt

    def shape_reward(self, reward: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
        """The reward GAE sees: ``r − κ·c`` for ``ppo_cost`` (HASARD §3.1), else ``r``."""
        if self.hparams.algo == "ppo_cost":
            return reward - self.cost_kappa * cost
        return reward

    def _mean_cost(self, costs: torch.Tensor) -> float:
        c = costs.double().mean()
        if self._world_size() > 1:
            c = self.trainer.strategy.reduce(c.to(self.device), reduce_op="mean").cpu()
        return float(c)

    def _update_lambda(self, cost: float, budget: float) -> None:
        hp = self.hparams
        if hp.algo == "ppo_lag":
            if hp.lagrange_optimizer == "gradient_ascent":
                lam = rl.lagrange_gradient_ascent(float(self.lagrange_lambda), cost, budget, hp.lagrange_lr)
            else:
                m, v, t = (float(x) for x in self.lagrange_adam)
                st = rl.lagrange_adam_step(rl.LagrangeAdamState(float(self.lagrange_lambda), m, v, int(t)), cost,
                                           budget, hp.lagrange_lr, lam_max=hp.lagrange_max)  # fmt: skip
                self.lagrange_adam.copy_(torch.tensor([st.m, st.v, float(st.t)], dtype=torch.float64))
                lam = st.lam
        elif hp.algo == "ppo_pid":
            i, p, d = (float(x) for x in self.pid_terms)
            st = rl.PIDLagrangeState(i, p, d, tuple(float(x) for x in self.pid_history), float(self.lagrange_lambda))
            st = rl.pid_lagrange_step(
                st, cost, budget, hp.pid_kp, hp.pid_ki, hp.pid_kd, hp.pid_alpha_p, hp.pid_alpha_d, hp.pid_d_delay,
                hp.pid_penalty_max, hp.pid_sum_norm, hp.pid_diff_norm,
            )  # fmt: skip
            self.pid_terms.copy_(torch.tensor([st.i_term, st.p_ema, st.d_ema], dtype=torch.float64))
            self.pid_history.copy_(torch.tensor(list(st.d_history), dtype=torch.float64))
            lam = st.lam
        else:
            return
        self.lagrange_lambda.fill_(float(lam))

    # ---------------------------------------------------------------- the surrogate
    def policy_advantages(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        if batch_idx >= 0 and hp.algo in ("ppo_lag", "ppo_pid", "p3o"):
            self._last_cost = self._mean_cost(batch["costs"])
            if hp.algo != "p3o":
                if hp.budget_mode == "per_step":  # HASARD §3.1: update first, then use
                    self._update_lambda(self._last_cost, self.step_budget)
                elif batch_idx == 0:  # per_episode: once per rollout, from its finished episodes
                    means = self.episode_means(self.trainer.datamodule.episodes, ("cost",))
                    if "cost" in means:
                        self._update_lambda(means["cost"], self.cost_budget)
        lam = self.lagrange_lambda.to(batch["advantages"].dtype)
        if hp.algo == "ppo_lag":
            return rl.lagrangian_advantage(batch["advantages"], batch["cost_advantages"], lam, "lag")
        if hp.algo == "ppo_pid":
            if hp.pid_diff_norm:
                return (1 - lam) * batch["advantages"] - lam * batch["cost_advantages"]
            mode = "pid" if hp.pid_sum_norm else "lag"
            return rl.lagrangian_advantage(batch["advantages"], batch["cost_advantages"], lam, mode)
        return batch["advantages"]

    def extra_loss(self, batch: dict[str, torch.Tensor], logp: torch.Tensor) -> torch.Tensor | None:
        if self.hparams.algo != "p3o":
            return None
        adv_c = rl.normalize_advantages(batch["cost_advantages"])
        return rl.p3o_penalty(logp, batch["logp"], adv_c, self._last_cost, self.step_budget, self.hparams.p3o_kappa)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if not self._log_this_step():
            return loss
        self.log_dict({"lagrange/lambda": float(self.lagrange_lambda)}, on_step=True, on_epoch=False, batch_size=1)
        if self.hparams.algo == "ppo_pid":
            i, p, d = (float(x) for x in self.pid_terms)
            self.log_dict({"lagrange/i": i, "lagrange/p": p, "lagrange/d": d}, on_step=True, on_epoch=False, batch_size=1)
        return loss

    # ---------------------------------------------------------------- per-rollout scalars
    def rollout_metrics(self, dm: Any) -> dict[str, float]:
        out = {"hasard/budget": self.cost_budget, "hasard/step_budget": self.step_budget,
               "hasard/step_cost": self._mean_cost(torch.tensor(dm.rollout_stats["step_cost"]))}  # fmt: skip
        if self.algo == "ppo_saute":
            tot = self._reduce_sum(torch.tensor(self._z_final, dtype=torch.float64))
            self._z_final = [0.0, 0.0]
            if tot[1] > 0:
                out["saute/z_final"] = float(tot[0] / tot[1])  # mean z at the end of the rollout's episodes
            out["saute/budget_d"] = self.saute_budget_d
        means = self.episode_means(dm.episodes, ("return", "cost"))
        if "cost" in means:
            out["hasard/ep_cost"] = means["cost"]
            out["hasard/ep_reward"] = means["return"]
            if self.cost_budget > 0:
                out["hasard/cost_over_budget"] = means["cost"] / self.cost_budget
        return out
