"""Preference-conditioned rollouts for MOC (moc.md §2 "datamodules", §3, §5, §7).

One training epoch is one on-policy rollout followed by its PPO minibatches (rl_core.md §2): every rank samples
``rollout_size`` preferences (Dirichlet(α) over the simplex or a grid), has the live policy generate one response
(or play one episode) per preference, scores it with the reward objectives and hands the rollout to the module's
``prepare_rollout`` (advantages per objective and the min-norm weights), then yields ``update_epochs ×
num_minibatches`` shuffled minibatches. Before the first rollout the reward normalisation (μ, σ per objective) is
measured on ``norm_samples`` samples of the initial policy, gathered from all ranks (moc.md §3 "Rewards").

- :class:`PreferenceRolloutDataModule`: the base (preference sampler, the rollout dataset, evaluation grids,
  resume state); subclasses implement ``rollout`` and ``evaluate_preferences``.
- :class:`PreferencePromptDataModule`: prompts × preferences for a causal LM, with any number of reward objectives
  from :mod:`trainer.mo_rewards` (``vowel_frac``, ``digit_frac``, ``neg_length``, ``keyword:<w>``,
  ``lexicon:<name>``, ``minilm_sim:<anchor>``, ``hf_rm:<name>``). Prompts: ``synthetic`` (random 4-character
  strings, moc.md §5), ``builtin`` (the 60 everyday requests shipped in ``datamodules/data/moc_prompts.jsonl``, for
  the SmolLM2 miniature), a ``.jsonl`` file, or a ``datasets`` name (``Anthropic/hh-rlhf`` at paper scale: the
  first human turn of each ``chosen`` dialogue).

Randomness: the preferences and the sampling seeds of each rollout come from ``(seed, epoch, rank)``; evaluation
uses a fixed seed, so every rank computes the same evaluation. The checkpointed state is the epoch counter (the
rollout itself is rebuilt from the restored weights), so resume is exact.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from trainer.pareto import simplex_grid
from trainer.rollout import minibatch_permutation

__all__ = ["PreferencePromptDataModule", "PreferenceRolloutDataModule", "builtin_prompts", "synthetic_prompts"]

PREF_SAMPLERS = ("dirichlet", "grid")
EVAL_MODES = ("sample", "greedy")
BUILTIN_PROMPTS = Path(__file__).with_name("data") / "moc_prompts.jsonl"


def _seed(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def synthetic_prompts(n: int, length: int = 4, seed: int = 0) -> list[str]:
    """``n`` random lowercase strings of ``length`` letters (moc.md §5: "prompts are random 4-character strings")."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, size=length)) for _ in range(n)]


def builtin_prompts() -> list[str]:
    """The shipped offline prompt set (short everyday requests written for this project)."""
    return _read_jsonl(BUILTIN_PROMPTS, "prompt")


def _read_jsonl(path: Path, field: str) -> list[str]:
    if not path.is_file():
        raise ValueError(f"prompt file {str(path)!r} does not exist")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{i + 1}: not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise ValueError(f"{path}:{i + 1}: no string field {field!r}")
        out.append(row[field])
    if not out:
        raise ValueError(f"prompt file {str(path)!r} has no prompts")
    return out


def first_human_turn(dialogue: str) -> str:
    """The first ``Human:`` turn of an HH-RLHF dialogue (``\\n\\nHuman: … \\n\\nAssistant: …``)."""
    text = dialogue.split("Human:", 1)[-1]
    return text.split("\n\nAssistant:", 1)[0].strip()


def _dist_info(trainer: Any) -> tuple[int, int]:
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


class _PreferenceRollouts(IterableDataset):
    """One epoch: collect one rollout with the live module, prepare it, yield its shuffled minibatches."""

    def __init__(self, dm: PreferenceRolloutDataModule) -> None:
        self.dm = dm

    def __len__(self) -> int:
        return self.dm.update_epochs * self.dm.num_minibatches

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        dm = self.dm
        trainer = dm.trainer
        module = trainer.lightning_module
        # Lightning may build the first iterator of a resumed run before the epoch counter is restored, so the
        # datamodule keeps its own (checkpointed) count.
        epoch = max(dm.data_epoch, trainer.current_epoch)
        dm.data_epoch = epoch + 1
        rank, _ = _dist_info(trainer)
        dm.ensure_reward_stats(module)
        seed = _seed(dm.seed, "rollout", epoch, rank)
        prefs, groups = dm.sample_preferences(dm.rollout_size, seed)
        batch = dm.rollout(module, prefs, seed)
        if groups is not None:
            batch["pref_group"] = groups
            batch["num_groups"] = int(dm.train_grid().shape[0])
        batch = module.prepare_rollout(batch)
        n, mb = dm.rollout_size, dm.rollout_size // dm.num_minibatches
        for ep in range(dm.update_epochs):
            perm = minibatch_permutation(n, dm.seed, rank, epoch, ep)
            for j in range(dm.num_minibatches):
                idx = perm[j * mb : (j + 1) * mb]
                yield {k: v[idx] for k, v in batch.items() if isinstance(v, Tensor) and v.dim() and v.shape[0] == n}


class PreferenceRolloutDataModule(pl.LightningDataModule):
    """Base of the MOC datamodules: the preference sampler, the rollout dataset and the evaluation hooks.

    Args:
        rollout_size: preferences (one response / episode each) per rollout and rank (moc.md §3 defaults: 64).
        update_epochs: PPO passes over each rollout (moc.md §3 defaults: 4).
        num_minibatches: minibatches per pass; must divide ``rollout_size``.
        train_preferences: ``dirichlet`` (Dirichlet(α), moc.md §3 defaults) or ``grid`` (uniform over
            ``simplex_grid(N, train_grid_step)``; moc.md §7 trains the synthetic task on {0, .2, …, 1}).
        dirichlet_alpha: α of the Dirichlet sampler (1 = uniform on the simplex).
        train_grid_step: step of the training grid of the ``grid`` sampler.
        seed: seeds the preferences and the sampling of every rollout.
    """

    is_mdp = False

    def __init__(
        self,
        rollout_size: int = 64,
        update_epochs: int = 4,
        num_minibatches: int = 4,
        train_preferences: str = "dirichlet",
        dirichlet_alpha: float = 1.0,
        train_grid_step: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if train_preferences not in PREF_SAMPLERS:
            raise ValueError(f"train_preferences must be one of {PREF_SAMPLERS}, got {train_preferences!r}")
        if rollout_size < 1 or num_minibatches < 1 or rollout_size % num_minibatches:
            raise ValueError(f"num_minibatches ({num_minibatches}) must divide rollout_size ({rollout_size})")
        if update_epochs < 1 or dirichlet_alpha <= 0:
            raise ValueError("update_epochs must be ≥ 1 and dirichlet_alpha > 0")
        self.rollout_size, self.update_epochs, self.num_minibatches = int(rollout_size), int(update_epochs), int(num_minibatches)
        self.train_preferences, self.dirichlet_alpha = train_preferences, float(dirichlet_alpha)
        self.train_grid_step, self.seed = float(train_grid_step), int(seed)
        self.data_epoch = 0

    # ------------------------------------------------------------------ subclass interface
    @property
    def objective_labels(self) -> tuple[str, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_objectives(self) -> int:
        return len(self.objective_labels)

    def rollout(self, module: Any, prefs: Tensor, seed: int) -> dict[str, Any]:  # pragma: no cover - abstract
        """One response / episode per preference row: the policy inputs, ``prefs``, ``mask`` ``[B, T]`` and raw
        ``step_rewards`` ``[B, T, N]``."""
        raise NotImplementedError

    def evaluate_preferences(self, module: Any, prefs: Tensor) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ preferences
    def train_grid(self) -> np.ndarray:
        return simplex_grid(self.num_objectives, self.train_grid_step)

    def sample_preferences(self, n: int, seed: int) -> tuple[Tensor, Tensor | None]:
        """``n`` training preferences ``[n, N]`` (and their grid indices for the ``grid`` sampler)."""
        rng = np.random.default_rng(seed)
        if self.train_preferences == "grid":
            grid = self.train_grid()
            idx = rng.integers(0, grid.shape[0], size=n)
            return torch.as_tensor(grid[idx], dtype=torch.float32), torch.as_tensor(idx, dtype=torch.long)
        p = rng.dirichlet(np.full(self.num_objectives, self.dirichlet_alpha), size=n)
        return torch.as_tensor(p, dtype=torch.float32), None

    # ------------------------------------------------------------------ reward normalisation
    def ensure_reward_stats(self, module: Any) -> None:
        """Measure μ, σ of every objective on ``module.hparams.norm_samples`` samples of the initial policy, split
        over the ranks and gathered, once (moc.md §3: "measured once on 512 samples of the initial policy")."""
        if bool(module.reward_stats_ready):
            return
        rank, world = _dist_info(self.trainer)
        per_rank = math.ceil(int(module.hparams.norm_samples) / world)
        raws, done, chunk = [], 0, 0
        while done < per_rank:
            n = min(self.rollout_size, per_rank - done)
            seed = _seed(self.seed, "norm", chunk, rank)
            prefs, _ = self.sample_preferences(n, seed)
            raws.append(self.rollout(module, prefs, seed)["step_rewards"].float().sum(1))
            done, chunk = done + n, chunk + 1
        raw = torch.cat(raws).to(module.device)
        if world > 1:
            raw = module.all_gather(raw).reshape(-1, raw.shape[-1])
        module.set_reward_stats(raw)

    def summarise(self, module: Any, prefs: Tensor, raw: Tensor, groups: int) -> dict[str, Any]:
        """Per-preference means of raw and normalised rewards and control shares (``raw`` ``[M·groups, N]``)."""
        views = module.reward_views(raw, prefs.repeat_interleave(groups, 0))
        m = prefs.shape[0]
        return {
            "rewards": views["norm"].reshape(m, groups, -1).mean(1).cpu().numpy(),
            "raw_rewards": raw.reshape(m, groups, -1).mean(1).cpu().numpy(),
            "shares": views["share"].reshape(m, groups, -1).mean(1).cpu().numpy(),
        }

    # ------------------------------------------------------------------ Lightning
    def train_dataloader(self) -> DataLoader:
        return DataLoader(_PreferenceRollouts(self), batch_size=None, num_workers=0)

    def state_dict(self) -> dict[str, Any]:
        return {"data_epoch": self.data_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.data_epoch = int(state_dict["data_epoch"])


class PreferencePromptDataModule(PreferenceRolloutDataModule):
    """Prompts × preferences for a preference-conditioned causal LM, scored by a reward registry (moc.md §2).

    Args:
        objectives: reward specs of :mod:`trainer.mo_rewards`, one per objective (moc.md §5 synthetic task:
            ``vowel_frac``, ``digit_frac``); checked when the datamodule is built, models loaded on first use.
        prompts: ``synthetic``, ``builtin``, a ``.jsonl`` path, or a ``datasets`` name.
        prompt_field: the JSONL / dataset field holding the prompt (``chosen`` for HH-RLHF).
        split: the dataset split for a ``datasets`` name.
        num_prompts: training prompts (``synthetic``: generated; otherwise the first ``num_prompts``; None = all).
        prompt_length: characters of a synthetic prompt (moc.md §5: 4).
        eval_prompts: fixed evaluation prompts (held out from the training prompts).
        eval_sampling: ``sample`` (seeded, the same on every rank) or ``greedy`` decoding in evaluation.
        eval_seed: seed of the evaluation sampling.
        eval_batch_size: sequences per generation call in evaluation and normalisation.
        examples_per_preference: prompts per preference kept as text examples in evaluation.
        rollout_size: see :class:`PreferenceRolloutDataModule`.
        update_epochs: see :class:`PreferenceRolloutDataModule`.
        num_minibatches: see :class:`PreferenceRolloutDataModule`.
        train_preferences: see :class:`PreferenceRolloutDataModule`.
        dirichlet_alpha: see :class:`PreferenceRolloutDataModule`.
        train_grid_step: see :class:`PreferenceRolloutDataModule`.
        seed: see :class:`PreferenceRolloutDataModule`.
    """

    def __init__(
        self,
        objectives: tuple[str, ...] = ("vowel_frac", "digit_frac"),
        prompts: str = "synthetic",
        prompt_field: str = "prompt",
        split: str = "train",
        num_prompts: int | None = 512,
        prompt_length: int = 4,
        eval_prompts: int = 16,
        eval_sampling: str = "sample",
        eval_seed: int = 1234,
        eval_batch_size: int = 256,
        examples_per_preference: int = 3,
        rollout_size: int = 64,
        update_epochs: int = 4,
        num_minibatches: int = 4,
        train_preferences: str = "dirichlet",
        dirichlet_alpha: float = 1.0,
        train_grid_step: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(rollout_size, update_epochs, num_minibatches, train_preferences, dirichlet_alpha,
                         train_grid_step, seed)  # fmt: skip
        from trainer.mo_rewards import validate_reward_specs

        if eval_sampling not in EVAL_MODES:
            raise ValueError(f"eval_sampling must be one of {EVAL_MODES}, got {eval_sampling!r}")
        if eval_prompts < 1 or prompt_length < 1:
            raise ValueError("eval_prompts and prompt_length must be ≥ 1")
        self.objectives = tuple(objectives)
        self._labels = tuple(validate_reward_specs(list(objectives)))  # unknown names fail here, loading nothing
        self.prompts, self.prompt_field, self.split = prompts, prompt_field, split
        self.num_prompts, self.prompt_length = num_prompts, int(prompt_length)
        self.eval_prompts, self.eval_sampling, self.eval_seed = int(eval_prompts), eval_sampling, int(eval_seed)
        self.eval_batch_size, self.examples_per_preference = int(eval_batch_size), int(examples_per_preference)
        self._train: list[str] | None = None
        self._eval: list[str] | None = None
        self._rewards: list[Any] | None = None

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"rollout_size": 4, "update_epochs": 1, "num_minibatches": 2, "eval_prompts": 2, "num_prompts": 8}

    @property
    def objective_labels(self) -> tuple[str, ...]:
        return self._labels

    # ------------------------------------------------------------------ prompts and rewards
    def _load_prompts(self) -> tuple[list[str], list[str]]:
        if self._train is None:
            src = self.prompts
            if src == "synthetic":
                n = int(self.num_prompts or 512)
                self._train = synthetic_prompts(n, self.prompt_length, _seed(self.seed, "prompts"))
                self._eval = synthetic_prompts(self.eval_prompts, self.prompt_length, _seed(self.seed, "eval-prompts"))
            else:
                if src == "builtin":
                    rows = builtin_prompts()
                elif src.endswith(".jsonl"):
                    rows = _read_jsonl(Path(src), self.prompt_field)
                else:
                    rows = self._dataset_prompts(src)
                if len(rows) <= self.eval_prompts:
                    raise ValueError(f"{src!r}: {len(rows)} prompts, need more than eval_prompts={self.eval_prompts}")
                self._eval = rows[-self.eval_prompts :]
                train = rows[: -self.eval_prompts]
                self._train = train[: self.num_prompts] if self.num_prompts else train
        return self._train, self._eval

    def _dataset_prompts(self, name: str) -> list[str]:
        try:
            import datasets

            ds = datasets.load_dataset(name, split=self.split)
        except Exception as err:  # noqa: BLE001 - offline / unknown dataset: one line naming it
            raise ValueError(f"prompt dataset {name!r} is not available ({type(err).__name__}); "
                             "offline, use prompts: synthetic, builtin or a .jsonl file") from None  # fmt: skip
        field = self.prompt_field if self.prompt_field in ds.column_names else ("chosen" if "chosen" in ds.column_names else None)
        if field is None:
            raise ValueError(f"prompt dataset {name!r} has no field {self.prompt_field!r} (fields: {ds.column_names})")
        rows = [str(x) for x in ds[field]]
        if "Human:" in rows[0]:  # HH-RLHF dialogues: the first human turn is the prompt
            rows = [first_human_turn(r) for r in rows]
        return rows

    def reward_models(self) -> list[Any]:
        if self._rewards is None:
            from trainer.mo_rewards import build_rewards

            self._rewards = build_rewards(list(self.objectives))
        return self._rewards

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """Raw rewards ``[B, N]`` of the responses (each reward model sees the prompt without the preference tag)."""
        return torch.stack([rm(list(prompts), list(responses)).float().cpu() for rm in self.reward_models()], dim=1)

    def setup(self, stage: str) -> None:
        self._load_prompts()

    # ------------------------------------------------------------------ rollouts
    def rollout(self, module: Any, prefs: Tensor, seed: int) -> dict[str, Any]:
        train, _ = self._load_prompts()
        rng = np.random.default_rng(seed)
        prompts = [train[i] for i in rng.integers(0, len(train), size=prefs.shape[0])]
        out = module.generate(prompts, prefs, seed)
        raw = self.score(prompts, out["texts"])
        mask = out["mask"]
        last = (mask.sum(1) - 1).clamp(min=0)
        step = torch.zeros(*mask.shape, raw.shape[1])
        step[torch.arange(mask.shape[0]), last] = raw  # the whole reward of a response sits on its last token
        return {
            "prompt_ids": out["prompt_ids"], "prompt_mask": out["prompt_mask"], "soft_index": out["soft_index"],
            "response": out["response"], "mask": mask, "prefs": prefs, "step_rewards": step,
        }  # fmt: skip

    def evaluate_preferences(self, module: Any, prefs: Tensor) -> dict[str, Any]:
        """Generate for every (preference, evaluation prompt) pair with a fixed seed and average per preference."""
        self.ensure_reward_stats(module)
        _, evals = self._load_prompts()
        m, e = prefs.shape[0], len(evals)
        all_p = prefs.repeat_interleave(e, 0)
        all_prompts = [evals[j] for _ in range(m) for j in range(e)]
        raws, texts = [], []
        for s in range(0, len(all_prompts), self.eval_batch_size):
            chunk = slice(s, s + self.eval_batch_size)
            out = module.generate(all_prompts[chunk], all_p[chunk], _seed(self.eval_seed, s),
                                  greedy=self.eval_sampling == "greedy")  # fmt: skip
            raws.append(self.score(all_prompts[chunk], out["texts"]))
            texts += out["texts"]
        raw = torch.cat(raws)
        result = self.summarise(module, prefs, raw, e)
        keep = min(self.examples_per_preference, e)
        result["examples"] = [
            {"preference": tuple(round(float(x), 3) for x in prefs[i]), "prompt": evals[j], "response": texts[i * e + j],
             "rewards": tuple(round(float(x), 4) for x in raw[i * e + j])}
            for i in range(m) for j in range(keep)
        ]  # fmt: skip
        return result
