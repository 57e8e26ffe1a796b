"""PPO inside Lightning: the policy network and :class:`PPOBase` (rl_core.md §1, §7, §9).

:class:`PPOBase` is the LightningModule that paper modules subclass. It implements the
:class:`trainer.protocols.ActorCritic` protocol a :class:`trainer.rollout.RolloutDataModule` collects
with, assembles the loss of rl_core.md §7 from :mod:`trainer.rl` (clipped surrogate, clipped value
loss for the reward and the cost critic, entropy bonus, Sample Factory's symmetric-KL exploration
loss), normalises advantages over the configured scope, stops a rollout's updates early on KL, and logs
``train/*``, ``rollout/*`` and ``env/*``. Subclasses change the advantage (``policy_advantages``) and
add loss terms (``extra_loss``).

:class:`PolicyNet`: a shared encoder (``mlp``: two tanh layers; ``convnet_simple``: Sample Factory's
conv(32, 8×8, s4) → conv(64, 4×4, s2) → conv(128, 3×3, s2), ELU, FC; uint8 frames are scaled by 1/255)
with optional extra inputs concatenated to the encoder output (PPO-Sauté's safety state), an optional GRU
core (``recurrence`` > 0, rl_core.md §2), one logit block per discrete action head, optional Gaussian Box
heads (state-independent log-std), a value head and a cost-value head, orthogonally initialised (policy
gain 0.01, values 1). Stateful policies (GRU state, extra inputs) follow the protocol described in
:mod:`trainer.rollout`: ``initial_policy_state``, ``act(obs, generator, state)``, ``values(obs, state)``,
``advance`` and ``evaluate`` (the training-time forward over minibatches of whole chunks).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from trainer import rl

__all__ = ["PPOAdam", "PPOBase", "PolicyNet"]

ENCODERS = ("mlp", "convnet_simple")
ADV_NORM_SCOPES = ("minibatch", "global", "none")


class PPOAdam(torch.optim.Adam):
    """Adam with PPO's defaults: lr 2.5e-4, eps 1e-5 (rl_core.md §7 table: CleanRL, MEAL)."""

    def __init__(self, params: Any, lr: float = 2.5e-4, eps: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(params, lr=lr, eps=eps, **kwargs)


def _ortho(layer: nn.Module, gain: float) -> nn.Module:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class PolicyNet(nn.Module):
    """Shared encoder (⊕ extra inputs) → optional GRU core → per-head logits, Box means, value and cost value.

    Args:
        obs_shape: one observation's shape (``(d,)`` for ``mlp``; ``(C, H, W)`` for ``convnet_simple``).
        action_heads: options per discrete head.
        encoder: ``mlp`` or ``convnet_simple``.
        hidden: width of the MLP layers / of the conv encoder's FC layer (and of the GRU).
        extra_dims: width of the extra inputs concatenated to the encoder output (PPO-Sauté's safety state
            z: 1); 0 = none.
        recurrent: a ``GRUCell`` of width ``hidden`` after the encoder (rl_core.md §2 recurrent policies).
        box_dims: continuous (Box) action dimensions: a Gaussian per dimension with a state-independent
            log-std parameter (0 = discrete heads only).
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        action_heads: Sequence[int],
        encoder: str = "mlp",
        hidden: int = 64,
        extra_dims: int = 0,
        recurrent: bool = False,
        box_dims: int = 0,
        obs_norm_clip: float | None = None,
    ):
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        self.action_heads = tuple(int(h) for h in action_heads)
        self.extra_dims, self.box_dims, self.recurrent = int(extra_dims), int(box_dims), bool(recurrent)
        #: dtype the encoder input is cast to (None = float32); set on :meth:`PPOBase.rollout_precision`'s copy
        self.compute_dtype: torch.dtype | None = None
        obs_shape = tuple(int(s) for s in obs_shape)
        # running input normalisation (HASARD §3.4 "inputs normalised"): (x − mean) / std clipped to ±clip, the
        # statistics refreshed by PPOBase after every update; None = off
        self.obs_norm_clip = None if obs_norm_clip is None else float(obs_norm_clip)
        if self.obs_norm_clip is not None:
            self.register_buffer("obs_mean", torch.zeros(obs_shape))
            self.register_buffer("obs_std", torch.ones(obs_shape))
        if encoder == "mlp":
            self.encoder = nn.Sequential(
                nn.Flatten(), _ortho(nn.Linear(int(np.prod(obs_shape)), hidden), math.sqrt(2)), nn.Tanh(),
                _ortho(nn.Linear(hidden, hidden), math.sqrt(2)), nn.Tanh(),
            )  # fmt: skip
        else:
            if len(obs_shape) != 3:
                raise ValueError(f"convnet_simple needs (C, H, W) observations, got shape {obs_shape}")
            conv = nn.Sequential(
                nn.Conv2d(obs_shape[0], 32, 8, stride=4), nn.ELU(),
                nn.Conv2d(32, 64, 4, stride=2), nn.ELU(),
                nn.Conv2d(64, 128, 3, stride=2), nn.ELU(), nn.Flatten(),
            )  # fmt: skip  # HASARD §3.4 "convnet_simple"
            with torch.no_grad():
                n_flat = conv(torch.zeros(1, *obs_shape)).shape[1]
            self.encoder = nn.Sequential(conv, nn.Linear(n_flat, hidden), nn.ELU())
        width = hidden + self.extra_dims  # HASARD §3.2: z is concatenated to the encoder output
        self.core = nn.GRUCell(width, hidden) if self.recurrent else None  # HASARD §3.4 "GRU 512"
        if self.recurrent:
            width = hidden
        self.policy = _ortho(nn.Linear(width, sum(self.action_heads)), 0.01)
        self.value = _ortho(nn.Linear(width, 1), 1.0)
        self.cost_value = _ortho(nn.Linear(width, 1), 1.0)
        if self.box_dims:
            self.box_mean = _ortho(nn.Linear(width, self.box_dims), 0.01)
            self.box_log_std = nn.Parameter(torch.zeros(self.box_dims))  # state-independent log σ

    def features(self, obs: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output ⊕ extra inputs, ``[B, hidden + extra_dims]``."""
        x = obs.float() / 255.0 if obs.dtype == torch.uint8 else obs.float()
        if self.obs_norm_clip is not None:
            x = ((x - self.obs_mean) / self.obs_std).clamp(-self.obs_norm_clip, self.obs_norm_clip)
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)  # what autocast does to a conv / linear input
        h = self.encoder(x)
        if self.extra_dims:
            if extra is None or extra.shape[-1] != self.extra_dims:
                got = None if extra is None else tuple(extra.shape)
                raise ValueError(f"PolicyNet expects {self.extra_dims} extra input columns, got {got}")
            h = torch.cat([h, extra.to(h.dtype)], dim=-1)
        return h

    def heads(self, h: torch.Tensor) -> dict[str, Any]:
        """Per-head logits, Box means (None without Box heads), value and cost value from core features."""
        return {
            "logits": list(torch.split(self.policy(h), self.action_heads, dim=-1)),
            "mean": self.box_mean(h) if self.box_dims else None,
            "value": self.value(h).squeeze(-1),
            "cost_value": self.cost_value(h).squeeze(-1),
        }

    def step(
        self, obs: torch.Tensor, extra: torch.Tensor | None = None, hidden: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """One step for ``B`` envs; with the GRU, ``hidden`` ``[B, hidden]`` (None = zeros) is the state before
        the step and ``out["hidden"]`` the state after it."""
        h = self.features(obs, extra)
        new_hidden = None
        if self.core is not None:
            if hidden is None:
                hidden = h.new_zeros(h.shape[0], self.core.hidden_size)
            h = new_hidden = self.core(h, hidden.to(h.dtype))
        out = self.heads(h)
        out["hidden"] = new_hidden
        return out

    def sequence(
        self,
        obs: torch.Tensor,
        extra: torch.Tensor | None,
        hidden0: torch.Tensor,
        done: torch.Tensor,
        chunk_len: int,
    ) -> dict[str, Any]:
        """The GRU over whole chunks: ``obs`` ``[C·L, ...]`` (chunk-major), ``hidden0`` ``[C, hidden]`` (the
        stored state at each chunk's start), ``done`` ``[C·L]``; the state is zeroed after a done step, as
        in collection (rl_core.md §2). Returns the heads for every step, ``[C·L]`` rows."""
        feats = self.features(obs, extra)
        C, L = hidden0.shape[0], int(chunk_len)
        feats = feats.reshape(C, L, feats.shape[-1])
        keep = (1.0 - done.float()).reshape(C, L, 1).to(feats.dtype)
        h, outs = hidden0.to(feats.dtype), []
        for i in range(L):
            h = self.core(feats[:, i], h)
            outs.append(h)
            h = h * keep[:, i]  # a new episode starts from a zero state
        return self.heads(torch.stack(outs, dim=1).reshape(C * L, -1))

    def forward(
        self, obs: torch.Tensor, extra: torch.Tensor | None = None, hidden: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        out = self.step(obs, extra, hidden)
        return out["logits"], out["value"], out["cost_value"]


class PPOBase(pl.LightningModule):
    """PPO (Schulman et al. 2017) as a LightningModule over a ``RolloutDataModule`` (rl_core.md §7).

    ``obs_shape``/``action_heads`` left ``None`` are read from the datamodule in ``setup`` and recorded
    in the hyperparameters, so a checkpoint rebuilds the same network.

    Args:
        obs_shape: observation shape; None = from the datamodule.
        action_heads: options per discrete action head; None = from the datamodule.
        action_box: continuous (Box) action dimensions after the discrete heads (a Gaussian each, with a
            state-independent log-std; actions are ``[N, heads + box]`` floats, the env gets the Box part
            clipped to [-1, 1] and the log-probability uses the unclipped sample); None = from the datamodule
            (0 without one).
        encoder: ``mlp`` or ``convnet_simple``.
        hidden: encoder width (and the GRU's).
        recurrence: 0 = feed-forward (default); L > 0 = a GRU of width ``hidden`` after the encoder, trained
            on chunks of L steps (rl_core.md §2: the buffer keeps the state at each chunk's start,
            minibatches are whole chunks shuffled by chunk, the state is zeroed where an episode ended);
            ``num_steps`` must be divisible by L and the number of chunks by ``num_minibatches``.
        clip_eps: PPO clip ε (0.2, CleanRL).
        clip_mode: ``standard`` [1−ε, 1+ε], ``unbiased`` [1/(1+ε), 1+ε] (Sample Factory) or ``asymmetric``.
        clip_eps_low: lower ε of ``asymmetric`` (None = clip_eps).
        clip_eps_high: upper ε of ``asymmetric`` (None = clip_eps).
        value_clip: ε_v of the clipped value loss; None = unclipped (CleanRL: on, = clip ε).
        vf_coef: c_v (0.5).
        ent_coef: entropy bonus c_ent (0.01).
        exploration_coef: symmetric-KL-to-uniform loss coefficient c_x (0; HASARD 0.001).
        adv_norm: advantage normalisation scope: ``minibatch`` (default, CleanRL), ``global`` (mean and std
            all-reduced over the ranks' minibatches) or ``none``.
        target_kl: stop a rollout's updates when approx KL exceeds 1.5·target_kl; None = never.
        anneal_lr: linear LR decay to 0 over ``datamodule.total_updates`` (CleanRL: on).
        optimizer: the optimizer factory (default :class:`PPOAdam`: lr 2.5e-4, eps 1e-5).
        normalize_obs: running input normalisation (Sample Factory / HASARD: on; CleanRL: off): per-element
            mean and variance of the observations (after uint8 → [0, 1]), ``(x − mean)/std`` clipped to
            ±``obs_norm_clip``.
        normalize_returns: running return normalisation (Sample Factory / HASARD: on): the value heads predict
            ``(R − mean)/std`` of the reward and of the cost returns; collection de-normalises, so GAE sees
            returns in the env's units.
        obs_norm_clip: clip of the normalised inputs (5, Sample Factory).

    The normalisers' statistics (float64 buffers, part of the checkpoint) take in each rollout after its
    update passes, so collection and update of one rollout see the same statistics; under DDP the batch
    moments are summed over the ranks first, so every rank holds the same numbers (rl_core.md §6).
    """

    def __init__(
        self,
        obs_shape: tuple[int, ...] | None = None,
        action_heads: tuple[int, ...] | None = None,
        action_box: int | None = None,
        encoder: str = "mlp",
        hidden: int = 64,
        recurrence: int = 0,
        clip_eps: float = 0.2,
        clip_mode: str = "standard",
        clip_eps_low: float | None = None,
        clip_eps_high: float | None = None,
        value_clip: float | None = 0.2,
        vf_coef: float = 0.5,
        ent_coef: float = 0.01,
        exploration_coef: float = 0.0,
        adv_norm: str = "minibatch",
        target_kl: float | None = None,
        anneal_lr: bool = True,
        optimizer: OptimizerCallable = PPOAdam,
        normalize_obs: bool = False,
        normalize_returns: bool = False,
        obs_norm_clip: float = 5.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not obs_norm_clip > 0:
            raise ValueError(f"obs_norm_clip must be > 0, got {obs_norm_clip}")
        f64 = torch.float64
        if normalize_returns:  # count, mean, var of the reward returns (row 0) and the cost returns (row 1)
            self.register_buffer("return_stats", torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=f64))
        self._pending_rollout: dict[str, torch.Tensor] | None = None  # the rollout the normalisers take in next
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        if adv_norm not in ADV_NORM_SCOPES:
            raise ValueError(f"adv_norm must be one of {ADV_NORM_SCOPES}, got {adv_norm!r}")
        if int(recurrence) < 0:
            raise ValueError(f"recurrence must be >= 0 (0 = feed-forward), got {recurrence}")
        if action_box is not None and int(action_box) < 0:
            raise ValueError(f"action_box must be >= 0, got {action_box}")
        self.recurrence = int(recurrence)
        self.clip_lo, self.clip_hi = rl.clip_bounds(clip_eps, clip_mode, clip_eps_low, clip_eps_high)
        self.optimizer_factory = optimizer
        self.net: PolicyNet | None = None
        # plain attributes, kept out of the module tree (and the checkpoint): the policy collection runs under
        # rollout_precision (None = self.net) and the cached low-precision copy behind it
        self.__dict__["_rollout_net"] = None
        self.__dict__["_rollout_copy"] = None
        self.stop_updates = False
        self._rollout_adv_stats: tuple[int, torch.Tensor, torch.Tensor] | None = None
        if obs_shape is not None and action_heads is not None:
            self._build(obs_shape, action_heads, int(action_box or 0))

    # ---------------------------------------------------------------- network
    #: per-env policy-state entries kept only at the start of each recurrence chunk (the others every step)
    chunk_state_keys: tuple[str, ...] = ("hidden",)

    def extra_inputs(self) -> tuple[tuple[str, int], ...]:
        """Named per-env inputs concatenated to the encoder output, ``((name, width), ...)`` (none here;
        PPO-Sauté: ``(("safety", 1),)``). Collection keeps them in the policy state, the buffer stores them
        and the minibatches carry them under the same names."""
        return ()

    def _build(self, obs_shape: Sequence[int], action_heads: Sequence[int], action_box: int = 0) -> None:
        extra = sum(int(d) for _, d in self.extra_inputs())
        norm = self.hparams.get("normalize_obs", False)
        self.net = PolicyNet(obs_shape, action_heads, self.hparams.encoder, self.hparams.hidden, extra_dims=extra,
                             recurrent=self.recurrence > 0, box_dims=int(action_box),
                             obs_norm_clip=self.hparams.obs_norm_clip if norm else None)  # fmt: skip
        if norm:  # float64 running statistics of the inputs (the net holds their float32 mean / std)
            shape = tuple(int(x) for x in obs_shape)
            self.register_buffer("obs_stat_count", torch.zeros((), dtype=torch.float64))
            self.register_buffer("obs_stat_mean", torch.zeros(shape, dtype=torch.float64))
            self.register_buffer("obs_stat_var", torch.ones(shape, dtype=torch.float64))

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "action_heads"):
            if self.net is None:
                raise ValueError(f"{type(self).__name__} needs obs_shape and action_heads, or a RolloutDataModule")
            return
        shape, heads = tuple(dm.observation_shape), tuple(dm.action_heads)
        box = int(getattr(dm, "action_box_dims", 0))
        self.check_rollout_layout(dm)
        if self.net is None:
            self.hparams.obs_shape, self.hparams.action_heads, self.hparams.action_box = shape, heads, box
            self._build(shape, heads, box)
        elif (tuple(self.hparams.obs_shape), tuple(self.hparams.action_heads), self.net.box_dims) != (shape, heads, box):
            raise ValueError(
                f"{type(self).__name__} was built for observations {tuple(self.hparams.obs_shape)}, action heads "
                f"{tuple(self.hparams.action_heads)} and {self.net.box_dims} Box dims, but the datamodule gives "
                f"{shape}, {heads} and {box}: set model.obs_shape={list(shape)}, model.action_heads={list(heads)} and "
                f"model.action_box={box} (or leave them null)"
            )

    def check_rollout_layout(self, dm: Any) -> None:
        """``num_steps`` divisible by ``recurrence`` and the chunk count by ``num_minibatches`` (ValueError)."""
        L = self.recurrence
        if L <= 0 or not hasattr(dm, "num_steps"):
            return
        if dm.num_steps % L:
            raise ValueError(f"num_steps = {dm.num_steps} is not divisible by recurrence = {L}")
        chunks = dm.num_steps // L * dm.num_envs
        if chunks % dm.num_minibatches:
            raise ValueError(f"the rollout's {chunks} chunks of {L} steps (num_envs*num_steps/recurrence) are not "
                             f"divisible by num_minibatches = {dm.num_minibatches}")  # fmt: skip

    def forward(self, obs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        out = self._step(obs, None)
        return out["logits"], out["value"], out["cost_value"]

    # ---------------------------------------------------------------- policy state (per env)
    def initial_policy_state(self, n: int) -> dict[str, torch.Tensor]:
        """The per-env state at an episode's start, CPU tensors ``[n, ...]``: the GRU state (zeros) when
        recurrent, plus the subclass's extra inputs. A datamodule carries it across steps and rollouts."""
        return {"hidden": torch.zeros(n, int(self.hparams.hidden))} if self.recurrence > 0 else {}

    def advance(
        self,
        state: dict[str, torch.Tensor],
        out: dict[str, torch.Tensor],
        reward: torch.Tensor,
        cost: torch.Tensor,
        done: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """After an env step: the reward GAE sees and the next policy state (before the datamodule resets the
        rows whose episode ended, ``done``, to :meth:`initial_policy_state`)."""
        nxt = {"hidden": out["hidden"]} if self.recurrence > 0 else {}
        return self.shape_reward(reward, cost), nxt

    def _extra(self, src: dict[str, torch.Tensor] | None, n: int) -> torch.Tensor | None:
        keys = self.extra_inputs()
        if not keys:
            return None
        if src is None or any(k not in src for k, _ in keys):
            src = {**self.initial_policy_state(n), **(src or {})}
        return torch.cat([src[k].reshape(n, d).float() for k, d in keys], dim=-1).to(self.device)

    def _step(self, obs: torch.Tensor, state: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        n = obs.shape[0]
        hidden = None
        if self.recurrence > 0:
            hidden = state["hidden"] if state is not None and "hidden" in state else None
            hidden = None if hidden is None else hidden.to(self.device)
        net = self.__dict__["_rollout_net"]
        net = self.net if net is None else net
        return net.step(obs, self._extra(state, n), hidden)

    #: autocast dtypes of Lightning's mixed precisions
    MIXED_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}

    @contextmanager
    def rollout_precision(self, precision: str | None) -> Iterator[None]:
        """Run :meth:`act` / :meth:`values` in the trainer's precision during one rollout.

        Under ``bf16-mixed`` / ``16-mixed`` a feed-forward policy is copied once per rollout with its conv and
        linear weights cast to the autocast dtype: the numbers autocast would produce op by op (the update
        runs under autocast), without casting the weights again at every env step. Recurrent policies run under
        the same autocast as the update; other precisions as they are."""
        dtype = self.MIXED_DTYPES.get(str(precision))
        if dtype is None or self.net is None or self.net.recurrent:
            # Lightning's MixedPrecision.forward_context: autocast without the weight cache
            ctx = nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype, cache_enabled=False)
            with ctx:
                yield
            return
        self.__dict__["_rollout_net"] = self._low_precision_copy(dtype)
        try:
            yield
        finally:
            self.__dict__["_rollout_net"] = None

    def _low_precision_copy(self, dtype: torch.dtype) -> PolicyNet:
        """``self.net`` with every Conv2d / Linear weight and bias in ``dtype`` (cached; refreshed in place)."""
        cached = self.__dict__.get("_rollout_copy")
        src = dict(self.net.named_parameters())
        if cached is None or cached.compute_dtype != dtype or next(cached.parameters()).device != self.device:
            cached = copy.deepcopy(self.net).requires_grad_(False).eval()
            for m in cached.modules():
                if isinstance(m, nn.Conv2d | nn.Linear):
                    m.to(dtype)
            cached.compute_dtype = dtype
            self.__dict__["_rollout_copy"] = cached
        bufs = dict(self.net.named_buffers())
        with torch.no_grad():
            for name, p in cached.named_parameters():
                p.copy_(src[name])
            for name, b in cached.named_buffers():  # the input normaliser's mean / std
                b.copy_(bufs[name])
        return cached

    # ---------------------------------------------------------------- ActorCritic protocol
    def _pad_index(self) -> tuple[torch.Tensor, int, int]:
        """Index that lays the concatenated head logits out as ``[H, max options]`` (missing options point
        at an appended −inf column), so every head is sampled by one vectorised Gumbel-max."""
        heads = self.net.action_heads
        if getattr(self, "_pad", None) is None or self._pad[1:] != (len(heads), max(heads)):
            total, width = sum(heads), max(heads)
            idx, start = [], 0
            for n in heads:
                idx += list(range(start, start + n)) + [total] * (width - n)
                start += n
            self._pad = (torch.tensor(idx), len(heads), width)
        return self._pad

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, generator: torch.Generator, state: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Sample actions; ``state`` is the per-env policy state (None = :meth:`initial_policy_state`). Returns
        ``action`` (``[N, heads]`` long, or ``[N, heads + box]`` float with Box heads: the unclipped Gaussian
        sample), ``logp`` (summed over all heads), ``value``, ``cost_value`` and, when recurrent, ``hidden``
        (the GRU state after the step, CPU)."""
        out = self._step(obs, state)
        idx, n_heads, width = self._pad_index()
        flat = torch.cat(out["logits"], dim=-1).float().cpu()  # sampled on CPU: one CPU generator for every device
        flat = torch.cat([flat, flat.new_full((flat.shape[0], 1), -math.inf)], dim=-1)
        logp_all = torch.log_softmax(flat[:, idx].view(-1, n_heads, width), dim=-1)
        u = torch.rand(logp_all.shape, generator=generator).clamp_(1e-20, 1.0)
        action = torch.argmax(logp_all - torch.log(-torch.log(u)), dim=-1)  # Gumbel-max: a sample of each head
        logp = logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1).sum(-1)
        if self.net.box_dims:
            mean, log_std = out["mean"].float().cpu(), self.net.box_log_std.detach().float().cpu()
            eps = torch.randn(mean.shape, generator=generator)
            box = mean + log_std.exp() * eps  # stored unclipped; the env gets clip(box, -1, 1)
            logp = logp + rl.gaussian_log_prob(mean, log_std, box)
            action = torch.cat([action.float(), box], dim=-1)
        value, cost_value = self._denormalise(out["value"].float(), out["cost_value"].float())
        res = {"action": action, "logp": logp, "value": value, "cost_value": cost_value}
        if out["hidden"] is not None:
            res["hidden"] = out["hidden"].float().cpu()
        return res

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor, state: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The argmax of every discrete head (and the Box means), in :meth:`act`'s action layout."""
        out = self._step(obs, state)
        action = torch.stack([lg.argmax(dim=-1) for lg in out["logits"]], dim=-1)
        if self.net.box_dims:
            action = torch.cat([action.float(), out["mean"].float()], dim=-1)
        return action

    @torch.no_grad()
    def values(
        self, obs: torch.Tensor, state: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._step(obs, state)
        return self._denormalise(out["value"].float(), out["cost_value"].float())

    # ---------------------------------------------------------------- running normalisers
    def _return_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std ``[2]`` (reward, cost) of the return normaliser, float32."""
        st = self.return_stats
        return st[:, 1].float(), st[:, 2].add(1e-8).sqrt().float()

    def _denormalise(self, value: torch.Tensor, cost_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Value-head outputs in the env's units (the heads predict normalised returns when
        ``normalize_returns``)."""
        if not self.hparams.normalize_returns:
            return value, cost_value
        mean, std = (t.to(value.device) for t in self._return_moments())
        return value * std[0] + mean[0], cost_value * std[1] + mean[1]

    def _normalised_targets(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Returns and stored values in the value heads' units."""
        keys = ("returns", "values", "cost_returns", "cost_values")
        if not self.hparams.normalize_returns:
            return {k: batch[k] for k in keys}
        mean, std = (t.to(batch["returns"].device) for t in self._return_moments())
        return {k: (batch[k] - mean[int("cost" in k)]) / std[int("cost" in k)] for k in keys}

    def observe_rollout(self, flat: dict[str, torch.Tensor]) -> None:
        """Called by :class:`trainer.rollout.RolloutDataset` with each rollout; the normalisers take it in at
        the end of its update passes (:meth:`update_normalisers`)."""
        if self.hparams.normalize_obs or self.hparams.normalize_returns:
            self._pending_rollout = {k: flat[k] for k in ("obs", "returns", "cost_returns")}

    def update_normalisers(self) -> None:
        """Merge the pending rollout into the running statistics (Chan's formula; moments summed over ranks)."""
        pending, self._pending_rollout = self._pending_rollout, None
        if pending is None:
            return
        reduce = None
        if self._world_size() > 1:
            reduce = lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        if self.hparams.normalize_obs:
            obs = pending["obs"]
            x = obs.double() / 255.0 if obs.dtype == torch.uint8 else obs.double()
            rms = self._bind_rms(self.obs_stat_count, self.obs_stat_mean, self.obs_stat_var)
            rms.update(x.to(self.obs_stat_mean.device), reduce)
            self.obs_stat_count.copy_(rms.count), self.obs_stat_mean.copy_(rms.mean), self.obs_stat_var.copy_(rms.var)
            self.net.obs_mean.copy_(rms.mean.float())
            self.net.obs_std.copy_(rms.var.add(1e-8).sqrt().float())
        if self.hparams.normalize_returns:
            for row, key in enumerate(("returns", "cost_returns")):
                st = self.return_stats[row]
                rms = self._bind_rms(st[0], st[1], st[2])
                rms.update(pending[key].to(st.device), reduce)
                st.copy_(torch.stack([rms.count, rms.mean, rms.var]).to(st.dtype))

    @staticmethod
    def _bind_rms(count: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> rl.RunningMeanStd:
        rms = rl.RunningMeanStd(tuple(mean.shape))
        rms.count, rms.mean, rms.var = count.clone(), mean.clone(), var.clone()
        return rms

    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The policy on a minibatch (with gradients): ``logits``, ``value``, ``cost_value``, ``logp`` and
        ``entropy`` (both summed over every head, Box heads included). Recurrent: the minibatch is whole
        chunks (``batch["hidden"]`` holds each chunk's starting state) and the GRU is unrolled over them."""
        obs = batch["obs"]
        n = obs.shape[0]
        extra = self._extra(batch, n)
        if self.recurrence > 0:
            done = (batch["terminated"] + batch["truncated"]).clamp(max=1)
            out = self.net.sequence(obs, extra, batch["hidden"], done, self.recurrence)
        else:
            out = self.net.step(obs, extra)
        actions = batch["actions"]
        nd = len(out["logits"])
        logp = rl.log_prob_heads(out["logits"], actions[:, :nd].long())
        entropy = rl.categorical_entropy(out["logits"])
        if self.net.box_dims:
            log_std = self.net.box_log_std
            logp = logp + rl.gaussian_log_prob(out["mean"], log_std, actions[:, nd:].to(out["mean"].dtype))
            entropy = entropy + rl.gaussian_entropy(log_std, n)
        out.update(logp=logp, entropy=entropy)
        return out

    # ---------------------------------------------------------------- hooks for subclasses
    def shape_reward(self, reward: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
        """The reward GAE sees, from the env's reward and cost at collection time (identity here)."""
        return reward

    def policy_advantages(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The advantage the surrogate maximises (PPO: the reward advantage)."""
        return batch["advantages"]

    def extra_loss(self, batch: dict[str, torch.Tensor], logp: torch.Tensor) -> torch.Tensor | None:
        """An additional loss term (P3O's penalty); None = nothing."""
        return None

    # ---------------------------------------------------------------- update
    def _world_size(self) -> int:
        return int(self._trainer.world_size) if self._trainer is not None else 1

    def _normalise(self, adv: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scope = self.hparams.adv_norm
        if scope == "none":
            return adv
        if scope == "minibatch":
            return rl.normalize_advantages(adv)
        reduce = None
        if self._world_size() > 1:
            reduce = lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        return rl.normalize_advantages(adv, stats=rl.global_advantage_stats(adv, reduce))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        ev = self.evaluate(batch)
        logits, value, cost_value, logp = ev["logits"], ev["value"], ev["cost_value"], ev["logp"]
        adv = self._normalise(self.policy_advantages(batch, batch_idx), batch)
        policy_loss = rl.clipped_surrogate(logp, batch["logp"], adv, self.clip_lo, self.clip_hi)  # rl_core.md §7
        tg = self._normalised_targets(batch)  # the value heads' units (normalised returns when normalize_returns)
        v_old = tg["values"] if hp.value_clip is not None else None
        c_old = tg["cost_values"] if hp.value_clip is not None else None
        value_loss = rl.value_loss(value, tg["returns"], v_old, hp.value_clip)
        cost_value_loss = rl.value_loss(cost_value, tg["cost_returns"], c_old, hp.value_clip)
        entropy = ev["entropy"].mean()
        loss = policy_loss + hp.vf_coef * (value_loss + cost_value_loss) - hp.ent_coef * entropy
        if hp.exploration_coef:
            loss = loss + hp.exploration_coef * rl.symmetric_kl_to_uniform(logits).mean()  # HASARD §3.4
        extra = self.extra_loss(batch, logp)
        if extra is not None:
            loss = loss + extra
        with torch.no_grad():
            kl = rl.approx_kl(logp, batch["logp"])
            self._maybe_stop(kl)
            if not self._log_this_step():
                return loss
            raw = batch["advantages"]
            self.log_dict({
                "train/loss": loss.detach(), "train/policy_loss": policy_loss.detach(),
                "train/value_loss": value_loss.detach(), "train/cost_value_loss": cost_value_loss.detach(),
                "train/entropy": entropy.detach(), "train/approx_kl": kl,
                "train/clipfrac": rl.clip_fraction(logp, batch["logp"], self.clip_lo, self.clip_hi),
                "train/explained_variance": rl.explained_variance(batch["values"], batch["returns"]),
                "train/adv_mean": raw.mean(), "train/adv_std": raw.std() if raw.numel() > 1 else raw.new_zeros(()),
            }, on_step=True, on_epoch=False, batch_size=batch["obs"].shape[0])  # fmt: skip
        return loss

    def _log_this_step(self) -> bool:
        """Per-minibatch scalars only on the steps the logger writes (``trainer.log_every_n_steps``):
        Lightning's ``self.log`` costs milliseconds per call, as much as a small minibatch's update."""
        every = int(getattr(self._trainer, "log_every_n_steps", 1) or 1) if self._trainer is not None else 1
        return self._trainer is None or self._trainer.global_step % every == 0

    def _maybe_stop(self, kl: torch.Tensor) -> None:
        if self.hparams.target_kl is None:
            return
        flag = (kl > 1.5 * self.hparams.target_kl).float()
        if self._world_size() > 1:  # every rank stops at the same minibatch
            flag = self.trainer.strategy.reduce(flag, reduce_op="max")
        self.stop_updates = bool(flag > 0)

    # ---------------------------------------------------------------- epoch end: rollout metrics
    #: episode statistics averaged into ``rollout/ep_<key>`` (subclasses add scenario extras)
    episode_keys: tuple[str, ...] = ("return", "length", "cost")

    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self._world_size() > 1:
            return self.trainer.strategy.reduce(t.to(self.device), reduce_op="sum").cpu()
        return t

    def episode_means(self, episodes: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
        """Means over the episodes all ranks finished in the last rollout (every rank gets the same
        numbers; a key no episode carries is left out)."""
        sums = torch.tensor([[float(e[k]) if k in e else 0.0 for k in keys] for e in episodes] or [[0.0] * len(keys)])
        counts = torch.tensor([[1.0 if k in e else 0.0 for k in keys] for e in episodes] or [[0.0] * len(keys)])
        tot = self._reduce_sum(torch.stack([sums.sum(0), counts.sum(0)]).double())
        return {k: float(tot[0, j] / tot[1, j]) for j, k in enumerate(keys) if tot[1, j] > 0}

    def on_train_epoch_end(self) -> None:
        self.update_normalisers()  # before ModelCheckpoint saves (a monitoring callback: it runs after this hook)
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "rollout_stats"):
            return
        st = dm.rollout_stats
        env = self._reduce_sum(torch.tensor([st["steps_per_sec"], st["restarts"]], dtype=torch.float64))
        metrics = {"env/steps": st["env_steps"], "env/steps_per_sec": float(env[0]), "env/restarts": float(env[1])}
        metrics.update({f"rollout/ep_{k}": v for k, v in self.episode_means(dm.episodes, self.episode_keys).items()})
        metrics.update(self.rollout_metrics(dm))
        for k, v in metrics.items():  # identical on every rank already: no sync needed
            self.log(k, float(v), on_step=False, on_epoch=True)
        if dm.budget_reached():
            self.trainer.should_stop = True

    def rollout_metrics(self, dm: Any) -> dict[str, float]:
        """Extra per-rollout scalars of a subclass (identical on every rank)."""
        return {}

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(self.parameters())
        if not self.hparams.anneal_lr:
            return opt
        dm = self.trainer.datamodule if self._trainer is not None else None
        total = max(1, int(getattr(dm, "total_updates", 1)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / total))  # CleanRL anneal
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
