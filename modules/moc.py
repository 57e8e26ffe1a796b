"""MOC: one preference-conditioned language model for many objectives (``../shared/papers/moc.md``).

Paper: Q. He, Y. Yang, T. Zhou, M. Fang, M. Pechenizkiy, S. Maghsudi, "One Model for All: Multi-Objective
Controllable Language Models", arXiv 2604.04497.

MOC trains **one** policy, conditioned on a user preference vector p on the simplex Δ^{N−1} over N reward
objectives, with PPO once. Every objective k has its own terminal reward (the N quality rewards, each normalised
RiC-style, plus a *control* reward that is high when the achieved reward shares follow p) and its own value head
and GAE advantage A^k. Instead of solving the multi-objective problem over the parameters, the MGDA min-norm
weights c are computed over the gradients of each objective's PPO loss with respect to the policy's *outputs*
(the log-probabilities of the sampled tokens): with ρ = 1 these are proportional to the advantage vectors, so the
K × K Gram matrix costs nothing and one PPO backward pass of Σ_k c_k L_clip(A^k) trains the model (Eq. 7).

No code is public. The equations are our reading of the abstract, a public summary and the public reviews, which
cite the equation numbers; moc.md §3 flags the reconstructed parts and every open choice is a switch here:

- conditioning: ``pref_format`` (``decimal``: ``<pref> vowels: 0.30 digits: 0.70 </pref>``; ``rank``: the objectives
  ordered by weight; ``embedding``: a learned soft prefix token for the LM, the raw vector for the MLP) and
  ``pref_position`` (``prepend`` / ``append``);
- rewards: R̃^i = (R^i − μ_i)/σ_i with μ, σ measured once on ``norm_samples`` samples of the initial policy and
  kept as buffers (RiC); control score s(R̃) = softmax(R̃ / T_s) (or ``minmax``), r_ctl = −max(0, ‖s − p‖² − φ);
- the policy-level min-norm step: ``mgda_scope`` ``rollout`` (default) / ``minibatch`` / ``preference_group``,
  ``grad_normalization`` ``none`` / ``l2``; the solver is :func:`trainer.pareto.min_norm_weights` (closed form for
  two objectives, Frank–Wolfe otherwise); the Gram matrix is all-reduced over DDP ranks so c is identical;
- baselines in the same module: ``weighting: linear`` (MORLHF-style conditioned scalarisation, c_k = p_k per
  sample, advantage Σ_k p_k A^k, no control term) and ``weighting: fixed`` (p not shown, c = 1/N).

Policies: ``causal_lm`` (``"tiny"``: a 2-layer LLaMA over :func:`trainer.text_scoring.char_tokenizer`; the packaged
``"smollm2-135m-instruct"``; any HF name or path, e.g. ``meta-llama/Llama-2-7b-hf`` with ``lora_rank: 64`` and
``load_in_4bit: true``), with K = N + 1 linear value heads on the final hidden state; ``mlp`` for the toy MDPs
(Fishwood). The reference policy π_ref is a frozen copy of the initial policy, or, with LoRA, the base model with
its adapters disabled (moc.md §4). The per-token KL penalty −β(log π − log π_ref) is added to every objective.

Deviations: the module is its own ``LightningModule`` over :mod:`trainer.rl` rather than a subclass of
:class:`trainer.ppo.PPOBase`, whose collection is built around observation-based ``PolicyNet`` envs; Rewarded Soups
is not included (moc.md §3 lists it as optional).

YAML: ``yaml/moc/smoke.yaml``, ``mini_synthetic_{moc,linear,fixed}.yaml``, ``mini_synthetic3_{moc,linear}.yaml``,
``mini_fishwood_{moc,linear}.yaml``, ``mini_smollm2_{moc,linear}.yaml``, ``paper_llama2_7b_*.yaml``.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from trainer import rl
from trainer.pareto import min_norm_weights

__all__ = ["MOC"]

POLICIES = ("causal_lm", "mlp")
WEIGHTINGS = ("min_norm", "linear", "fixed", "single")
#: weightings whose policy does not see the preference
BLIND = ("fixed", "single")
PREF_FORMATS = ("decimal", "rank", "embedding")
PREF_POSITIONS = ("prepend", "append")
MGDA_SCOPES = ("rollout", "minibatch", "preference_group")
GRAD_NORMS = ("none", "l2")
CONTROL_SCORES = ("softmax", "minmax")
ADV_SCALES = ("running_std", "rollout_std", "none")
CONTROL_MODES = ("constraint", "objective")


# ----------------------------------------------------------------------------------------------
# preferences
# ----------------------------------------------------------------------------------------------


def check_preferences(preferences: Any, n_objectives: int, atol: float = 1e-4) -> Tensor:
    """``preferences`` as a float32 ``[M, N]`` tensor, each row on the simplex; ``ValueError`` otherwise."""
    p = torch.as_tensor(np.asarray(preferences, dtype=np.float64), dtype=torch.float64)
    if p.dim() == 1:
        p = p.unsqueeze(0)
    if p.dim() != 2 or p.shape[1] != n_objectives:
        raise ValueError(f"a preference vector must have {n_objectives} entries (one per objective), got shape {tuple(p.shape)}")
    if not torch.isfinite(p).all():
        raise ValueError("a preference vector must be finite")
    if (p < -atol).any() or ((p.sum(1) - 1).abs() > atol).any():
        bad = p[((p < -atol).any(1)) | ((p.sum(1) - 1).abs() > atol)][0].tolist()
        raise ValueError(f"a preference vector must lie on the simplex (entries ≥ 0 summing to 1), got {bad}")
    return p.clamp(min=0).float()


def render_preference(p: Sequence[float], labels: Sequence[str], fmt: str = "decimal") -> str:
    """The preference tag put into the prompt (moc.md §3 "Conditioning").

    ``decimal``: ``<pref> vowels: 0.30 digits: 0.70 </pref>``; ``rank``: ``<pref> digits > vowels </pref>`` (ties
    ``=``); ``embedding``: the empty string (the vector enters as a soft prefix instead).
    """
    if fmt not in PREF_FORMATS:
        raise ValueError(f"pref_format must be one of {PREF_FORMATS}, got {fmt!r}")
    p = [float(x) for x in p]
    if len(p) != len(labels):
        raise ValueError(f"render_preference: {len(p)} weights for {len(labels)} objectives")
    if fmt == "embedding":
        return ""
    if fmt == "decimal":
        return "<pref> " + " ".join(f"{lab}: {w:.2f}" for lab, w in zip(labels, p)) + " </pref>"
    order = sorted(range(len(p)), key=lambda k: -p[k])
    text = labels[order[0]]
    for a, b in zip(order, order[1:]):
        text += (" = " if abs(p[a] - p[b]) < 5e-3 else " > ") + labels[b]
    return f"<pref> {text} </pref>"


def parse_preference(text: str, labels: Sequence[str]) -> np.ndarray:
    """Invert :func:`render_preference` (``decimal``): the weights found in ``text``, in ``labels`` order."""
    out = []
    for lab in labels:
        m = re.search(re.escape(lab) + r":\s*([0-9]*\.?[0-9]+)", text)
        if m is None:
            raise ValueError(f"parse_preference: no weight for {lab!r} in {text!r}")
        out.append(float(m.group(1)))
    return np.asarray(out)


def compose_prompt(prompt: str, pref_text: str, position: str = "prepend") -> str:
    """The user-visible prompt with the preference tag before or after it (moc.md §3: the position is open)."""
    if position not in PREF_POSITIONS:
        raise ValueError(f"pref_position must be one of {PREF_POSITIONS}, got {position!r}")
    if not pref_text:
        return prompt
    return f"{pref_text} {prompt}" if position == "prepend" else f"{prompt} {pref_text}"


# ----------------------------------------------------------------------------------------------
# rewards
# ----------------------------------------------------------------------------------------------


def normalise_rewards(raw: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """R̃^i = (R^i − μ_i) / σ_i (moc.md §3 "Rewards", RiC-style)."""
    return (raw - mean) / std


def control_score(r_norm: Tensor, mode: str = "softmax", temperature: float = 1.0) -> Tensor:
    """s(R̃) on the simplex, one row per sample (moc.md §3, reconstruction).

    ``softmax``: softmax(R̃ / T_s). ``minmax``: (R̃_k − min_j R̃_j) / Σ_j (R̃_j − min_j R̃_j), uniform when all are
    equal (our reading of the option).
    """
    if mode == "softmax":
        return torch.softmax(r_norm / temperature, dim=-1)
    if mode == "minmax":
        shifted = r_norm - r_norm.min(dim=-1, keepdim=True).values
        total = shifted.sum(dim=-1, keepdim=True)
        uniform = torch.full_like(shifted, 1.0 / shifted.shape[-1])
        return torch.where(total > 1e-12, shifted / total.clamp(min=1e-12), uniform)
    raise ValueError(f"control_score must be one of {CONTROL_SCORES}, got {mode!r}")


def control_reward(share: Tensor, p: Tensor, tolerance: float = 0.0) -> Tensor:
    """r_ctl = −max(0, ‖s(R̃) − p‖² − φ) (moc.md §3 "Control score", reconstruction; φ = ``tolerance``)."""
    return -torch.clamp(((share - p) ** 2).sum(-1) - tolerance, min=0.0)


def terminal_step_rewards(step_rewards: Tensor, mask: Tensor, mean: Tensor, std: Tensor, r_ctl: Tensor) -> Tensor:
    """Per-step rewards ``[B, T, N + 1]`` of the N quality objectives and the control objective.

    Quality: r_t / σ at every step and −μ / σ added at the last valid step, so that each episode's return is its
    normalised reward R̃ (for a text response all raw reward sits on its last token). Control: r_ctl at the last
    valid step.
    """
    b, t, n = step_rewards.shape
    last = (mask.sum(1).long() - 1).clamp(min=0)
    out = torch.zeros(b, t, n + 1, dtype=torch.float32, device=step_rewards.device)
    out[..., :n] = step_rewards * mask.unsqueeze(-1) / std
    rows = torch.arange(b, device=step_rewards.device)
    out[rows, last, :n] -= mean / std
    out[rows, last, n] += r_ctl
    return out


def sequence_gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """GAE per objective over padded sequences: ``rewards`` and ``values`` ``[B, T, K]``, ``mask`` ``[B, T]``.

    Each sequence terminates at its last valid step (no bootstrap); padded steps get zero advantage. Calls
    :func:`trainer.rl.gae` on ``[T, B·K]``. Returns ``(advantages, returns)`` ``[B, T, K]``.
    """
    b, t, k = rewards.shape
    valid = mask.bool()
    last = valid.sum(1) - 1
    after = torch.arange(t, device=rewards.device).unsqueeze(0) >= last.unsqueeze(1)  # at or after the last step
    r = (rewards * valid.unsqueeze(-1)).permute(1, 0, 2).reshape(t, b * k)
    v = (values * valid.unsqueeze(-1)).permute(1, 0, 2).reshape(t, b * k)
    term = after.unsqueeze(-1).expand(b, t, k).permute(1, 0, 2).reshape(t, b * k)
    zeros = torch.zeros_like(r)
    adv, ret = rl.gae(r, v, term, torch.zeros_like(term), zeros, zeros[0], gamma, lam)
    adv = adv.reshape(t, b, k).permute(1, 0, 2) * valid.unsqueeze(-1)
    ret = ret.reshape(t, b, k).permute(1, 0, 2) * valid.unsqueeze(-1)
    return adv, ret


# ----------------------------------------------------------------------------------------------
# the policy-level multi-objective step
# ----------------------------------------------------------------------------------------------


def unclipped_indicator(rho: Tensor, adv: Tensor, lo: float, hi: float) -> Tensor:
    """1 where the gradient of min(ρA, clip(ρ)A) with respect to log ρ is ρA (the term is not clipped), else 0."""
    inside = (rho >= lo) & (rho <= hi)
    return inside | (rho * adv < rho.clamp(lo, hi) * adv)


def surrogate_logp_grad(logp_new: Tensor, logp_old: Tensor, adv: Tensor, mask: Tensor, lo: float, hi: float) -> Tensor:
    """g_k[t] = ∂L_k / ∂log π(y_t) = −(1/n) ρ_t A^k_t 1[term t unclipped] (moc.md §3, closed form).

    ``adv`` ``[..., K]`` (one column per objective) against ``logp`` ``[...]``; ``n`` = the number of valid entries
    of ``mask``. Returns ``[..., K]`` (zero where masked).
    """
    n = mask.sum().clamp(min=1)
    rho = torch.exp(logp_new - logp_old).unsqueeze(-1)
    keep = unclipped_indicator(rho, adv, lo, hi) & mask.bool().unsqueeze(-1)
    return -(rho * adv * keep) / n


def gram_matrix(grads: Tensor) -> Tensor:
    """G = [g_k · g_l] of output-space gradients ``[..., K]`` (float64)."""
    g = grads.reshape(-1, grads.shape[-1]).double()
    return g.T @ g


def normalise_gram(gram: Tensor, mode: str) -> Tensor:
    """``l2``: G_kl / (‖g_k‖ ‖g_l‖) (moc.md §3 "Gradient normalisation"); ``none``: unchanged."""
    if mode == "none":
        return gram
    if mode != "l2":
        raise ValueError(f"grad_normalization must be one of {GRAD_NORMS}, got {mode!r}")
    norms = gram.diagonal().clamp(min=0).sqrt().clamp(min=1e-12)
    return gram / norms.unsqueeze(0) / norms.unsqueeze(1)


def weighted_clip_loss(
    logp_new: Tensor, logp_old: Tensor, adv: Tensor, weights: Tensor, mask: Tensor, lo: float, hi: float
) -> tuple[Tensor, Tensor]:
    """L = Σ_k c_k L_clip(A^k) (Eq. 7), with per-sample weights ``weights`` ``[B, K]`` over ``adv`` ``[B, T, K]``.

    L_clip(A^k) = −(1/n) Σ_valid min(ρ A^k, clip(ρ, lo, hi) A^k) with n the number of valid tokens. Returns the
    total and the per-objective losses ``[K]`` (unweighted), so that with one c for the whole batch the total equals
    Σ_k c_k L_k.
    """
    m = mask.float()
    n = m.sum().clamp(min=1)
    rho = torch.exp(logp_new - logp_old.detach()).unsqueeze(-1)
    surr = torch.minimum(rho * adv, rho.clamp(lo, hi) * adv) * m.unsqueeze(-1)  # [B, T, K]
    per_k = -surr.sum(dim=(0, 1)) / n
    total = -(surr * weights.unsqueeze(1)).sum() / n
    return total, per_k


def combined_clip_loss(logp_new: Tensor, logp_old: Tensor, adv: Tensor, mask: Tensor, lo: float, hi: float) -> Tensor:
    """The clipped surrogate of one (already combined) advantage ``[B, T]`` over valid tokens (linear / fixed)."""
    valid = mask.bool()
    return rl.clipped_surrogate(logp_new[valid], logp_old[valid], adv[valid], lo, hi)  # rl_core.md §7, L_pi


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.float()
    return (x * m).sum() / m.sum().clamp(min=1)


def _dist_sum(t: Tensor) -> Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


# ----------------------------------------------------------------------------------------------
# the module
# ----------------------------------------------------------------------------------------------


class _MLPPolicy(nn.Module):
    """Two tanh layers over ``obs ⊕ p`` → action logits and K values (Fishwood; moc.md §2 ``mlp``)."""

    def __init__(self, in_dim: int, num_actions: int, k: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.logits = nn.Linear(hidden, num_actions)
        self.values = nn.Linear(hidden, k)
        nn.init.orthogonal_(self.logits.weight, 0.01)
        nn.init.zeros_(self.logits.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.logits(h), self.values(h)


class MOC(pl.LightningModule):
    """MOC (moc.md): a preference-conditioned policy trained by PPO with policy-level min-norm weighting.

    One epoch is one rollout (collected by the datamodule, ``datamodules.preference_prompts``) and its
    ``update_epochs × num_minibatches`` PPO minibatches. Implements :class:`trainer.protocols.ScoresPreferences`.

    Args:
        policy: ``causal_lm`` (text) or ``mlp`` (toy MDPs such as Fishwood).
        model: the LM for ``causal_lm``: ``"tiny"`` (random-init 2-layer LLaMA over the character tokenizer),
            ``"smollm2-135m-instruct"`` (the packaged checkpoint) or an HF name / local path.
        num_objectives: N, the number of reward objectives; must match the datamodule's objectives.
        weighting: ``min_norm`` (MOC), ``linear`` (conditioned linear scalarisation, c = p, no control term),
            ``fixed`` (p not shown, c = 1/N) or ``single`` (p not shown, objective ``single_objective`` alone: one
            member of a Rewarded Soup).
        single_objective: the objective a ``single`` run optimises (0-based).
        soup_members: Rewarded-Soups evaluation (moc.md §3 baselines, a predict-time option): checkpoints of N
            ``single`` runs, one per objective in order; ``score_preferences`` then evaluates, for each p, the
            policy whose trainable weights are Σ_k p_k θ_k (this module's own weights are restored afterwards).
        control_term: train the control objective (k = N + 1) at all (``min_norm`` only).
        control_mode: how the control objective enters the ``min_norm`` step (a reconstruction either way):
            ``constraint`` (default): c is the min-norm solution over the N quality objectives and the control loss
            is added with the fixed weight ``control_weight``, L = Σ_{k≤N} c_k L_k + w_ctl L_ctl; ``objective``: the
            control objective is the (N+1)-th vector of the min-norm problem, as moc.md §3 writes it. With two
            directly conflicting quality objectives the hull of their gradients contains 0 once the policy is on
            the front, so under ``objective`` the min-norm point gives the control term (and every other) weight
            ~0 and the policy stops moving along the front (measured in yaml/moc/README.md).
        control_weight: w_ctl of the ``constraint`` mode.
        control_score: ``softmax`` (default, T_s = ``control_temperature``) or ``minmax``.
        control_temperature: T_s of the softmax control score (moc.md §3 default 1).
        control_tolerance: φ, the tolerance of the control reward (not reported; default 0).
        pref_format: ``decimal``, ``rank`` or ``embedding`` (a learned soft prefix token; for ``mlp`` the vector is
            always an input).
        pref_position: ``prepend`` or ``append`` the preference tag to the prompt.
        mgda_scope: ``rollout`` (one c per rollout, from ρ = 1 advantages), ``minibatch`` (per minibatch, with the
            current ρ and clipping) or ``preference_group`` (one c per training preference of a grid sampler).
        grad_normalization: ``none`` or ``l2`` normalisation of the output-space gradients before the min-norm solve.
        clip_eps: PPO clip ε (moc.md §3 defaults: 0.2).
        kl_beta: β of the per-token KL penalty to π_ref (moc.md §3 defaults: 0.05).
        gamma: discount within a response / episode.
        gae_lambda: GAE λ.
        value_coef: c_v, the weight of the summed value losses.
        entropy_coef: weight of the entropy bonus (0 for LMs).
        adv_scale: scale each objective's advantages by its ``running_std`` (moc.md §3), this rollout's
            ``rollout_std``, or ``none``.
        max_new_tokens: response length limit (moc.md §3 defaults: 128; the synthetic task uses 12).
        stop_at_eos: end a response at EOS; ``False`` bans EOS so every response has ``max_new_tokens`` tokens
            (the synthetic task: "responses are 12 tokens").
        temperature: sampling temperature (the same in the PPO log-probabilities).
        use_chat_template: wrap prompts in the tokenizer's chat template when it has one.
        norm_samples: samples of the initial policy that measure the reward normalisation μ, σ (moc.md §3: 512).
        tiny_hidden: hidden width of the ``"tiny"`` LM (moc.md §5: 64).
        tiny_layers: layers of the ``"tiny"`` LM (moc.md §5: 2).
        tiny_heads: attention heads of the ``"tiny"`` LM (moc.md §5: 4).
        lora_rank: LoRA rank on the LM's attention projections; 0 = full fine-tuning (paper scale: 64).
        lora_alpha: LoRA α (default 2 × rank).
        lora_dropout: LoRA dropout.
        lora_targets: module names LoRA adapts.
        load_in_4bit: load the LM in 4-bit NF4 through bitsandbytes (the paper's single-GPU setting; needs LoRA).
        dtype: dtype of a pretrained LM (``None`` = float32).
        obs_dim: observation width of the ``mlp`` policy.
        num_actions: actions of the ``mlp`` policy.
        mlp_hidden: hidden width of the ``mlp`` policy.
        optimizer: the optimizer over the trainable parameters (moc.md §3 defaults: lr 5e-4 tiny, 1e-4 LoRA).
        seed: seeds the tiny LM's initialisation.
    """

    unit_test_datamodule = "PreferencePromptDataModule"

    def __init__(
        self,
        policy: str = "causal_lm",
        model: str = "tiny",
        num_objectives: int = 2,
        weighting: str = "min_norm",
        single_objective: int = 0,
        soup_members: tuple[str, ...] = (),
        control_term: bool = True,
        control_mode: str = "constraint",
        control_weight: float = 1.0,
        control_score: str = "softmax",
        control_temperature: float = 1.0,
        control_tolerance: float = 0.0,
        pref_format: str = "decimal",
        pref_position: str = "prepend",
        mgda_scope: str = "rollout",
        grad_normalization: str = "none",
        clip_eps: float = 0.2,
        kl_beta: float = 0.05,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        adv_scale: str = "running_std",
        max_new_tokens: int = 128,
        stop_at_eos: bool = True,
        temperature: float = 1.0,
        use_chat_template: bool = True,
        norm_samples: int = 512,
        tiny_hidden: int = 64,
        tiny_layers: int = 2,
        tiny_heads: int = 4,
        lora_rank: int = 0,
        lora_alpha: int | None = None,
        lora_dropout: float = 0.05,
        lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
        load_in_4bit: bool = False,
        dtype: str | None = None,
        obs_dim: int = 3,
        num_actions: int = 2,
        mlp_hidden: int = 64,
        optimizer: OptimizerCallable = torch.optim.Adam,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("policy", policy, POLICIES), ("weighting", weighting, WEIGHTINGS), ("pref_format", pref_format, PREF_FORMATS),
            ("pref_position", pref_position, PREF_POSITIONS), ("mgda_scope", mgda_scope, MGDA_SCOPES),
            ("grad_normalization", grad_normalization, GRAD_NORMS), ("control_score", control_score, CONTROL_SCORES),
            ("adv_scale", adv_scale, ADV_SCALES), ("control_mode", control_mode, CONTROL_MODES),
        ):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"MOC: {name} must be one of {allowed}, got {value!r}")
        if not 0 <= int(single_objective) < int(num_objectives):
            raise ValueError(f"MOC: single_objective must be in [0, {num_objectives}), got {single_objective}")
        if soup_members and len(soup_members) != int(num_objectives):
            raise ValueError(f"MOC: soup_members needs one checkpoint per objective ({num_objectives}), got {len(soup_members)}")
        if int(num_objectives) < 1:
            raise ValueError(f"MOC: num_objectives must be ≥ 1, got {num_objectives}")
        if not 0 < clip_eps < 1:
            raise ValueError(f"MOC: clip_eps must be in (0, 1), got {clip_eps}")
        if load_in_4bit and not lora_rank:
            raise ValueError("MOC: load_in_4bit needs LoRA (lora_rank > 0): 4-bit weights cannot be fine-tuned directly")
        if max_new_tokens < 1 or norm_samples < 2:
            raise ValueError("MOC: max_new_tokens must be ≥ 1 and norm_samples ≥ 2")
        self.save_hyperparameters()
        self.optimizer_fn = optimizer
        self.n_obj = int(num_objectives)
        self.k_obj = self.n_obj + 1  # N quality objectives + the control objective (moc.md §3)
        self.clip_lo, self.clip_hi = 1.0 - clip_eps, 1.0 + clip_eps
        #: short labels of the objectives (set by the datamodule in ``setup``; used in prompts and plots)
        self.objective_labels: tuple[str, ...] = tuple(f"r{i + 1}" for i in range(self.n_obj))
        self.register_buffer("reward_mean", torch.zeros(self.n_obj))
        self.register_buffer("reward_std", torch.ones(self.n_obj))
        self.register_buffer("reward_stats_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("adv_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("adv_mean", torch.zeros(self.k_obj, dtype=torch.float64))
        self.register_buffer("adv_var", torch.ones(self.k_obj, dtype=torch.float64))
        self.tokenizer: Any = None
        self.lm: nn.Module | None = None
        self.ref_lm: nn.Module | None = None
        self.mlp: _MLPPolicy | None = None
        self.ref_mlp: _MLPPolicy | None = None
        self.pref_proj: nn.Module | None = None
        self.ref_pref_proj: nn.Module | None = None
        self._lora = bool(lora_rank)
        if policy == "causal_lm":
            self._build_lm()
        else:
            in_dim = int(obs_dim) + self.n_obj
            self.mlp = _MLPPolicy(in_dim, int(num_actions), self.k_obj, int(mlp_hidden))
            self.ref_mlp = copy.deepcopy(self.mlp).requires_grad_(False)
        self._rollout_log: dict[str, float] = {}
        self._banned: Tensor | None = None

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"max_new_tokens": 4, "stop_at_eos": False, "norm_samples": 8, "tiny_hidden": 16, "tiny_heads": 2}

    # ------------------------------------------------------------------ building
    def _build_lm(self) -> None:
        from trainer.text_scoring import char_tokenizer, load_scoring_lm, tiny_causal_lm

        h = self.hparams
        if h.model == "tiny":
            self.tokenizer = char_tokenizer()
            lm = tiny_causal_lm(self.tokenizer, hidden=h.tiny_hidden, layers=h.tiny_layers, heads=h.tiny_heads, seed=h.seed)
        elif h.load_in_4bit:
            from transformers import BitsAndBytesConfig

            from trainer.text import build_causal_lm, load_tokenizer

            self.tokenizer = load_tokenizer(h.model)
            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
            lm = build_causal_lm({"quantization_config": quant}, pretrained=h.model, dtype=h.dtype or "bfloat16")
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        else:
            lm, self.tokenizer = load_scoring_lm(h.model, dtype=h.dtype)
        hidden = int(lm.config.hidden_size)
        if self._lora:
            from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

            if h.load_in_4bit:
                lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
            config = LoraConfig(
                r=int(h.lora_rank), lora_alpha=int(h.lora_alpha or 2 * h.lora_rank), lora_dropout=float(h.lora_dropout),
                target_modules=list(h.lora_targets), task_type="CAUSAL_LM",
            )  # fmt: skip
            lm = get_peft_model(lm, config)  # π_ref = the same model with the adapters disabled (moc.md §4)
        self.lm = lm.train()
        self.value_head = nn.Linear(hidden, self.k_obj)  # K = N + 1 value heads on the final hidden state
        nn.init.normal_(self.value_head.weight, std=1.0 / math.sqrt(hidden))
        nn.init.zeros_(self.value_head.bias)
        if self.hparams.pref_format == "embedding":
            self.pref_proj = nn.Linear(self.n_obj, hidden)
        if not self._lora:
            self.ref_lm = copy.deepcopy(self.lm).requires_grad_(False).eval()
            if self.pref_proj is not None:
                self.ref_pref_proj = copy.deepcopy(self.pref_proj).requires_grad_(False)

    # ------------------------------------------------------------------ protocol / wiring
    @property
    def objective_names(self) -> tuple[str, ...]:
        """The objectives' labels: the attached datamodule's (callbacks may ask before this module's ``setup``)."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        labels = getattr(dm, "objective_labels", None)
        return tuple(labels) if labels is not None and len(labels) == self.n_obj else self.objective_labels

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "objective_labels"):
            raise TypeError("MOC needs a preference datamodule (datamodules.preference_prompts / datamodules.mo_toys)")
        labels = tuple(dm.objective_labels)
        if len(labels) != self.n_obj:
            raise ValueError(f"MOC: num_objectives={self.n_obj} but the datamodule has {len(labels)} objectives {labels}")
        if (self.hparams.policy == "mlp") != bool(getattr(dm, "is_mdp", False)):
            raise ValueError(f"MOC: policy={self.hparams.policy!r} does not fit {type(dm).__name__}")
        self.objective_labels = labels

    def score_preferences(self, preferences: Any, datamodule: Any = None) -> dict[str, Any]:
        """Generate on the datamodule's fixed evaluation inputs for each preference row and score them (protocol).

        With ``soup_members`` every row is scored by the interpolated policy Σ_k p_k θ_k (Rewarded Soups).
        """
        p = check_preferences(preferences, self.n_obj)
        dm = datamodule if datamodule is not None else self.trainer.datamodule
        if not self.hparams.soup_members:
            return dm.evaluate_preferences(self, p)
        members = [self._member_weights(path) for path in self.hparams.soup_members]
        own = {k: v.detach().clone() for k, v in self.state_dict().items()}
        names = {n for n, q in self.named_parameters() if q.requires_grad}
        parts = []
        try:
            for row in p:
                mix = {k: sum(float(w) * m[k].to(v.dtype) for w, m in zip(row, members)) if k in names else v
                       for k, v in own.items()}  # fmt: skip
                self.load_state_dict(mix)
                parts.append(dm.evaluate_preferences(self, row[None]))
        finally:
            self.load_state_dict(own)
        out = {key: np.concatenate([q[key] for q in parts]) for key in ("rewards", "raw_rewards", "shares")}
        out["examples"] = [e for q in parts for e in q["examples"]]
        return out

    def _member_weights(self, path: str) -> dict[str, Tensor]:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        except (OSError, KeyError) as err:
            raise ValueError(f"MOC: soup member {path!r} is not a readable Lightning checkpoint ({err})") from None
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise ValueError(f"MOC: soup member {path!r} does not match this model (missing {missing[:3]})")
        return state

    # ------------------------------------------------------------------ rewards
    def set_reward_stats(self, raw: Tensor) -> None:
        """μ, σ per objective from raw rewards ``[S, N]`` of the initial policy (moc.md §3); σ < 1e-6 becomes 1."""
        raw = raw.to(self.reward_mean.device, torch.float32)
        std = raw.std(0, unbiased=False)
        self.reward_mean.copy_(raw.mean(0))
        self.reward_std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))
        self.reward_stats_ready.fill_(True)

    def reward_views(self, raw: Tensor, prefs: Tensor) -> dict[str, Tensor]:
        """Normalised rewards R̃, control shares s(R̃) and control rewards r_ctl of raw episode rewards ``[B, N]``."""
        h = self.hparams
        raw = raw.to(self.reward_mean.device, torch.float32)
        norm = normalise_rewards(raw, self.reward_mean, self.reward_std)
        share = control_score(norm, h.control_score, h.control_temperature)
        ctl = control_reward(share, prefs.to(norm.device), h.control_tolerance)
        return {"norm": norm, "share": share, "ctl": ctl}

    # ------------------------------------------------------------------ text policy
    def prompt_text(self, prompt: str, pref: Sequence[float]) -> str:
        """The prompt the LM sees for one preference (``fixed`` shows none)."""
        h = self.hparams
        tag = "" if h.weighting in BLIND else render_preference(pref, self.objective_labels, h.pref_format)
        text = compose_prompt(prompt, tag, h.pref_position)
        tok = self.tokenizer
        if h.use_chat_template and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        return text

    def _soft(self) -> bool:
        return self.hparams.pref_format == "embedding" and self.hparams.weighting not in BLIND

    def encode_prompts(self, prompts: Sequence[str], prefs: Tensor) -> dict[str, Tensor]:
        """Left-padded prompt ids ``[B, L]`` and attention mask (a placeholder first token for the soft prefix)."""
        tok = self.tokenizer
        rows = []
        for prompt, p in zip(prompts, prefs.tolist()):
            ids = tok(self.prompt_text(prompt, p), add_special_tokens=False)["input_ids"]
            rows.append(([tok.pad_token_id] if self._soft() else []) + list(ids))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        soft = torch.zeros(len(rows), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            attn[i, width - len(r) :] = 1
            soft[i] = width - len(r)
        return {"prompt_ids": ids, "prompt_mask": attn, "soft_index": soft}

    def _banned_ids(self) -> Tensor:
        if self._banned is None:
            tok = self.tokenizer
            banned = {int(i) for i in getattr(tok, "all_special_ids", [])}
            keep = {tok.eos_token_id} if self.hparams.stop_at_eos else set()
            banned -= keep
            vocab = int(self.lm.get_output_embeddings().weight.shape[0])
            self._banned = torch.tensor(sorted(i for i in banned if i < vocab), dtype=torch.long)
        return self._banned

    def _mask_logits(self, logits: Tensor) -> Tensor:
        banned = self._banned_ids().to(logits.device)
        if banned.numel():
            logits = logits.index_fill(-1, banned, float("-inf"))
        return logits / self.hparams.temperature

    def _embed(self, lm: nn.Module, proj: nn.Module | None, ids: Tensor, prefs: Tensor, soft_index: Tensor) -> Tensor:
        emb = lm.get_input_embeddings()(ids)
        if proj is not None and self._soft():
            rows = torch.arange(ids.shape[0], device=ids.device)
            emb = emb.clone()
            emb[rows, soft_index.to(ids.device)] = proj(prefs.to(emb.device, emb.dtype)).to(emb.dtype)
        return emb

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], prefs: Tensor, seed: int, greedy: bool = False) -> dict[str, Any]:
        """Sample responses for ``prompts`` under ``prefs`` (a KV-cached loop with a seeded generator)."""
        h, tok, lm = self.hparams, self.tokenizer, self.lm
        dev = self.device
        enc = self.encode_prompts(prompts, prefs)
        ids, attn = enc["prompt_ids"].to(dev), enc["prompt_mask"].to(dev)
        was_training = lm.training
        lm.eval()
        g = torch.Generator(device=dev).manual_seed(int(seed))
        b, t_max = ids.shape[0], int(h.max_new_tokens)
        resp = torch.full((b, t_max), tok.pad_token_id, dtype=torch.long, device=dev)
        resp_mask = torch.zeros((b, t_max), dtype=torch.long, device=dev)
        finished = torch.zeros(b, dtype=torch.bool, device=dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        emb = self._embed(lm, self.pref_proj, ids, prefs, enc["soft_index"])
        out = lm(inputs_embeds=emb, attention_mask=attn, position_ids=pos, use_cache=True)
        next_pos = pos[:, -1:] + 1
        for t in range(t_max):
            logits = self._mask_logits(out.logits[:, -1].float())
            if greedy:
                token = logits.argmax(-1)
            else:
                token = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(-1)
            token = torch.where(finished, torch.full_like(token, tok.pad_token_id), token)
            resp[:, t] = token
            resp_mask[:, t] = (~finished).long()
            if h.stop_at_eos:
                finished = finished | (token == tok.eos_token_id)
            if t == t_max - 1 or bool(finished.all()):
                break
            attn = torch.cat([attn, resp_mask[:, t : t + 1]], dim=1)
            out = lm(
                inputs_embeds=lm.get_input_embeddings()(token[:, None]), attention_mask=attn, position_ids=next_pos,
                past_key_values=out.past_key_values, use_cache=True,
            )  # fmt: skip
            next_pos = next_pos + 1
        lm.train(was_training)
        texts = [tok.decode(r[m.bool()].tolist(), skip_special_tokens=True).strip() for r, m in zip(resp.cpu(), resp_mask.cpu())]
        return {**enc, "response": resp.cpu(), "mask": resp_mask.cpu(), "texts": texts}

    def _lm_forward(self, batch: dict[str, Tensor], reference: bool = False) -> dict[str, Tensor]:
        """log π(y_t), entropies and values ``[B, T, K]`` of the responses (or log π_ref with ``reference``)."""
        dev = self.device
        p_ids, p_mask = batch["prompt_ids"].to(dev), batch["prompt_mask"].to(dev)
        resp, mask = batch["response"].to(dev), batch["mask"].to(dev)
        lp = p_ids.shape[1]
        ids = torch.cat([p_ids, resp], 1)
        attn = torch.cat([p_mask, mask], 1)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        prefs = batch["prefs"].to(dev)
        if reference and self._lora:
            with self.lm.disable_adapter():
                emb = self._embed(self.lm, self.pref_proj, ids, prefs, batch["soft_index"])
                out = self.lm(inputs_embeds=emb, attention_mask=attn, position_ids=pos)
        elif reference:
            emb = self._embed(self.ref_lm, self.ref_pref_proj, ids, prefs, batch["soft_index"])
            out = self.ref_lm(inputs_embeds=emb, attention_mask=attn, position_ids=pos)
        else:
            emb = self._embed(self.lm, self.pref_proj, ids, prefs, batch["soft_index"])
            out = self.lm(inputs_embeds=emb, attention_mask=attn, position_ids=pos, output_hidden_states=True)
        logits = self._mask_logits(out.logits[:, lp - 1 : -1].float())
        logp_all = torch.log_softmax(logits, -1)
        logp = logp_all.gather(-1, resp.unsqueeze(-1)).squeeze(-1) * mask
        result = {"logp": logp}
        if not reference:
            probs = logp_all.exp()
            result["entropy"] = -(probs * logp_all.nan_to_num(neginf=0.0)).sum(-1)
            hidden = out.hidden_states[-1][:, lp - 1 : -1].float()
            result["values"] = self.value_head(hidden)
        return result

    # ------------------------------------------------------------------ MDP policy
    def _mlp_input(self, obs: Tensor, prefs: Tensor) -> Tensor:
        p = prefs.to(obs.device, obs.dtype)
        if self.hparams.weighting in BLIND:
            p = torch.zeros_like(p)  # p is not shown to the fixed-weights baseline
        while p.dim() < obs.dim():
            p = p.unsqueeze(-2)
        return torch.cat([obs, p.expand(*obs.shape[:-1], p.shape[-1])], -1)

    @torch.no_grad()
    def act(self, obs: Tensor, prefs: Tensor, generator: torch.Generator, greedy: bool = False) -> Tensor:
        """Actions ``[B]`` of the ``mlp`` policy for observations ``[B, D]`` under preferences ``[B, N]``."""
        logits, _ = self.mlp(self._mlp_input(obs.to(self.device), prefs))
        if greedy:
            return logits.argmax(-1).cpu()
        probs = torch.softmax(logits.float().cpu(), -1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def _mlp_forward(self, batch: dict[str, Tensor], reference: bool = False) -> dict[str, Tensor]:
        net = self.ref_mlp if reference else self.mlp
        x = self._mlp_input(batch["obs"].to(self.device), batch["prefs"].to(self.device))
        logits, values = net(x)
        logp_all = torch.log_softmax(logits.float(), -1)
        mask = batch["mask"].to(self.device)
        logp = logp_all.gather(-1, batch["actions"].to(self.device).unsqueeze(-1)).squeeze(-1) * mask
        if reference:
            return {"logp": logp}
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return {"logp": logp, "entropy": entropy, "values": values.float()}

    def policy_outputs(self, batch: dict[str, Tensor], reference: bool = False) -> dict[str, Tensor]:
        return (self._lm_forward if self.hparams.policy == "causal_lm" else self._mlp_forward)(batch, reference)

    # ------------------------------------------------------------------ rollout processing
    @torch.no_grad()
    def prepare_rollout(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Add log π_old, log π_ref, values, per-objective advantages and returns, and the weights c to a rollout.

        ``batch`` holds the policy inputs, ``prefs`` ``[B, N]``, ``mask`` ``[B, T]``, raw ``step_rewards``
        ``[B, T, N]`` and, for grid samplers, ``pref_group`` ``[B]`` with ``num_groups``.
        """
        h = self.hparams
        was_training = self.training
        self.eval()
        cur = self.policy_outputs(batch)
        ref = self.policy_outputs(batch, reference=True)
        self.train(was_training)
        mask = batch["mask"].to(self.device).float()
        prefs = batch["prefs"].to(self.device)
        raw = batch["step_rewards"].to(self.device).float().sum(1)  # R^i of each episode / response
        views = self.reward_views(raw, prefs)
        rewards = terminal_step_rewards(batch["step_rewards"].to(self.device).float(), mask, self.reward_mean,
                                        self.reward_std, views["ctl"])  # fmt: skip
        kl = (cur["logp"] - ref["logp"]) * mask
        rewards = rewards - h.kl_beta * kl.unsqueeze(-1)  # per-token KL penalty on every objective (moc.md §3)
        adv, ret = sequence_gae(rewards, cur["values"], mask, h.gamma, h.gae_lambda)  # GAE per objective
        adv = self._scale_advantages(adv, mask)
        num_groups = int(batch.get("num_groups", 0))
        batch = {k: v for k, v in batch.items() if isinstance(v, Tensor)}
        batch.update(logp_old=cur["logp"].cpu(), values_old=cur["values"].cpu(), adv=adv.cpu(), returns=ret.cpu())
        weights, c_log = self._rollout_weights(adv, mask, prefs, batch.get("pref_group"), num_groups)
        batch["weights"] = weights.cpu()
        n_tok = _dist_sum(mask.sum().reshape(1))[0].clamp(min=1)
        stats = {
            "moc/kl_ref": float(_dist_sum(kl.sum().reshape(1))[0] / n_tok),
            "moc/reward_ctl": float(views["ctl"].mean()),
            "moc/ctl_error": float((views["share"] - prefs).abs().sum(-1).mean() / 2),
            "rollout/response_length": float(mask.sum(1).mean()),
        }
        for i, lab in enumerate(self.objective_labels):
            stats[f"moc/reward_{lab}"] = float(raw[:, i].mean())
            stats[f"moc/reward_norm_{lab}"] = float(views["norm"][:, i].mean())
        stats.update(c_log)
        self._rollout_log = stats
        return batch

    def _scale_advantages(self, adv: Tensor, mask: Tensor) -> Tensor:
        """A^k divided by its running (or this rollout's) std over valid tokens, all-reduced (moc.md §3)."""
        mode = self.hparams.adv_scale
        if mode == "none":
            return adv
        flat = adv[mask.bool()].double()  # [n, K]
        if mode == "rollout_std":
            n = _dist_sum(torch.tensor([float(flat.shape[0])], dtype=torch.float64, device=adv.device))
            s1 = _dist_sum(flat.sum(0))
            s2 = _dist_sum((flat**2).sum(0))
            var = (s2 / n - (s1 / n) ** 2).clamp(min=0)
        else:
            rms = rl.RunningMeanStd((self.k_obj,))
            rms.load_state_dict({"count": self.adv_count.cpu(), "mean": self.adv_mean.cpu(), "var": self.adv_var.cpu()})
            dev = adv.device
            rms.update(flat.cpu(), all_reduce=lambda t: _dist_sum(t.to(dev)).cpu())  # identical on every rank
            self.adv_count.copy_(rms.count)
            self.adv_mean.copy_(rms.mean)
            self.adv_var.copy_(rms.var)
            var = self.adv_var
        return adv / (var.float().to(adv.device).sqrt() + 1e-8)

    def _min_norm(self, gram: Tensor) -> Tensor:
        gram = normalise_gram(_dist_sum(gram), self.hparams.grad_normalization)  # identical on every rank (moc.md §4)
        return torch.as_tensor(min_norm_weights(gram.cpu().numpy()), dtype=torch.float32)

    def _objectives(self) -> int:
        """How many objectives enter the min-norm problem (N, or N + 1 with the control term as an objective)."""
        h = self.hparams
        return self.k_obj if h.control_term and h.control_mode == "objective" else self.n_obj

    def _rollout_weights(
        self, adv: Tensor, mask: Tensor, prefs: Tensor, groups: Tensor | None, num_groups: int
    ) -> tuple[Tensor, dict[str, float]]:
        """Per-sample objective weights ``[B, K]`` for this rollout (and their logged means)."""
        h = self.hparams
        b = adv.shape[0]
        weights = torch.zeros(b, self.k_obj, device=adv.device)
        k = self._objectives()
        if h.weighting == "min_norm" and h.control_term and h.control_mode == "constraint":
            weights[:, self.n_obj] = h.control_weight  # the controllability constraint, outside the min-norm
        if h.weighting == "linear":
            weights[:, : self.n_obj] = prefs  # c_k = p_k per sample, no control term (moc.md §3 baselines)
        elif h.weighting == "fixed":
            weights[:, : self.n_obj] = 1.0 / self.n_obj
        elif h.weighting == "single":
            weights[:, h.single_objective] = 1.0  # one Rewarded-Soups member: RL on objective k alone
        elif h.mgda_scope == "rollout":
            # ρ = 1 right after collection: g_k = −(1/n) A^k, so G is a Gram matrix of advantage vectors (moc.md §3)
            n = _dist_sum(mask.sum().reshape(1))[0].clamp(min=1)
            g = -(adv[..., :k] * mask.unsqueeze(-1)) / n
            weights[:, :k] = self._min_norm(gram_matrix(g)).to(adv.device)
        elif h.mgda_scope == "preference_group":
            if groups is None or num_groups < 1:
                raise ValueError("MOC: mgda_scope='preference_group' needs a grid preference sampler (train_preferences='grid')")
            n = _dist_sum(mask.sum().reshape(1))[0].clamp(min=1)
            g = -(adv[..., :k] * mask.unsqueeze(-1)) / n
            grams = torch.zeros(num_groups, k, k, dtype=torch.float64, device=adv.device)
            for q in range(num_groups):
                sel = groups.to(adv.device) == q
                if sel.any():
                    grams[q] = gram_matrix(g[sel])
            grams = _dist_sum(grams)
            for q in range(num_groups):
                sel = groups.to(adv.device) == q
                if sel.any():
                    gq = normalise_gram(grams[q], h.grad_normalization)
                    weights[sel, :k] = torch.as_tensor(min_norm_weights(gq.cpu().numpy()), dtype=torch.float32, device=adv.device)
        names = [*self.objective_labels, "ctl"]
        if h.weighting == "min_norm" and h.mgda_scope == "minibatch":
            return weights, {}  # the weights are computed (and logged) per minibatch in training_step
        return weights, {f"moc/c_{names[i]}": float(weights[:, i].mean()) for i in range(self.k_obj)}

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        h = self.hparams
        out = self.policy_outputs(batch)
        mask = batch["mask"].float()
        adv, weights = batch["adv"], batch["weights"]
        logp, logp_old = out["logp"], batch["logp_old"]
        if h.weighting == "min_norm":
            if h.mgda_scope == "minibatch":
                k = self._objectives()
                with torch.no_grad():
                    n_local = mask.sum().clamp(min=1)
                    n = _dist_sum(n_local.reshape(1))[0]
                    g = surrogate_logp_grad(logp.detach(), logp_old, adv[..., :k], mask, self.clip_lo, self.clip_hi)
                    g = g * n_local / n  # the global 1/n
                    c = self._min_norm(gram_matrix(g)).to(adv.device)
                weights = weights.clone()
                weights[:, :k] = c
                for i, name in enumerate([*self.objective_labels, "ctl"][:k]):
                    self.log(f"moc/c_{name}", float(c[i]), on_step=True, on_epoch=False, batch_size=1)
            policy_loss, per_k = weighted_clip_loss(logp, logp_old, adv, weights, mask, self.clip_lo, self.clip_hi)  # Eq. 7
        else:
            combined = (adv * weights.unsqueeze(1)).sum(-1)  # linear: Σ_k p_k A^k; fixed: mean_k A^k
            policy_loss = combined_clip_loss(logp, logp_old, combined, mask, self.clip_lo, self.clip_hi)
            per_k = None
        v_err = (out["values"] - batch["returns"]) ** 2 * mask.unsqueeze(-1)
        value_loss = 0.5 * v_err.sum() / mask.sum().clamp(min=1)  # Σ_k 0.5 mean (V_k − R_k)²
        entropy = _masked_mean(out["entropy"], mask)
        loss = policy_loss + h.value_coef * value_loss - h.entropy_coef * entropy  # Eq. 7 + c_v Σ_k L_V^k
        with torch.no_grad():
            valid = mask.bool()
            kl = rl.approx_kl(logp[valid], logp_old[valid])
            clip = rl.clip_fraction(logp[valid], logp_old[valid], self.clip_lo, self.clip_hi)
        logs = {
            "train/loss": loss.detach(), "train/policy_loss": policy_loss.detach(), "train/value_loss": value_loss.detach(),
            "train/entropy": entropy.detach(), "train/approx_kl": kl, "train/clipfrac": clip,
        }  # fmt: skip
        if per_k is not None:
            for i, name in enumerate([*self.objective_labels, "ctl"]):
                logs[f"train/policy_loss_{name}"] = per_k[i].detach()
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=int(mask.shape[0]))
        if batch_idx == 0 and self._rollout_log:
            self.log_dict(self._rollout_log, on_step=False, on_epoch=True, batch_size=1, sync_dist=True)
        return loss

    def trainable_parameters(self) -> list[nn.Parameter]:
        skip = {id(p) for m in (self.ref_lm, self.ref_mlp, self.ref_pref_proj) if m is not None for p in m.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in skip]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_fn(self.trainable_parameters())
