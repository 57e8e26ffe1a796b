"""HASARD and the RL substrate: rollout machinery, SafePPO's algorithms, the lava-grid effect, ViZDoom restarts.

Formula tests of ``trainer/rl.py`` live in ``tests/test_rl_math.py``; env rules in ``tests/test_vizdoom_env.py``;
subprocess supervision in ``tests/test_env_workers.py``.
"""

from __future__ import annotations

import os
import signal

import gymnasium as gym
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from datamodules.safety_grid import LavaGridDataModule, LavaGridEnv
from modules.hasard import SafePPO
from tests.toy import quiet_trainer
from trainer import rl
from trainer.rollout import InProcessVecEnv, RolloutDataModule, RolloutDataset


def _tiny(**kw) -> SafePPO:
    return SafePPO(**{**SafePPO.unit_test_params(), **kw})


class _ScriptedEnv(gym.Env):
    """obs = [step index within the episode]; the episode is truncated after 3 steps; cost 1 at step 2."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0, 10, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([float(self.t)], np.float32), 1.0, False, self.t >= 3, {"cost": float(self.t == 2)}


class _ScriptedDM(RolloutDataModule):
    def env_factory(self, k):
        return lambda seed: _ScriptedEnv()

    @property
    def max_episode_steps(self) -> int:
        return 3


class _ObsValuePolicy(torch.nn.Module):
    """V(s) = 10·obs[0]: the stored bootstrap values reveal which observation they were computed on."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.device = torch.device("cpu")

    def act(self, obs, generator):
        n = obs.shape[0]
        v = 10 * obs[:, 0].float()
        return {"action": torch.zeros(n, 1, dtype=torch.long), "logp": torch.zeros(n), "value": v, "cost_value": v}

    def values(self, obs):
        v = 10 * obs[:, 0].float()
        return v, v


def _setup_dm(dm: RolloutDataModule) -> RolloutDataModule:
    dm.trainer = None
    dm.setup("fit")
    return dm


def test_same_step_autoreset_bootstraps_from_the_final_observation():
    dm = _setup_dm(_ScriptedDM(num_envs=1, num_steps=4, update_epochs=1, num_minibatches=1, gamma=0.9, gae_lambda=1.0))
    flat = dm.collect_rollout(_ObsValuePolicy())
    obs = flat["obs"][:, 0].tolist()
    assert obs == [0.0, 1.0, 2.0, 0.0], "the step after the time limit starts a new episode"
    assert flat["truncated"].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert flat["final_values"][2] == 30.0, "V(final_obs) = V([3]) bootstraps the truncated step"
    # A_2 = r + γ·V(final) − V_2 = 1 + 0.9·30 − 20; the reset observation (V = 0) never follows step 2
    assert flat["advantages"][2] == pytest.approx(1 + 0.9 * 30 - 20)
    assert flat["costs"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert dm.episodes and dm.episodes[0]["length"] == 3 and dm.episodes[0]["cost"] == 1.0


def test_rollout_dataset_yields_every_sample_once_per_epoch_and_is_reproducible():
    def run(seed):
        dm = _setup_dm(LavaGridDataModule(num_envs=2, num_steps=8, update_epochs=3, num_minibatches=4, seed=seed))
        module = _tiny()
        dm.trainer = type("T", (), {"lightning_module": module, "world_size": 1, "global_rank": 0})()
        batches = list(RolloutDataset(dm))
        return dm, batches

    dm, batches = run(0)
    assert len(batches) == len(RolloutDataset(dm)) == 12
    assert all(b["obs"].shape == (4, 14) for b in batches)
    flat = torch.cat([b["advantages"] for b in batches[:4]]).sort().values
    for epoch in (1, 2):  # each epoch is a permutation of the same 16 samples
        assert torch.equal(torch.cat([b["advantages"] for b in batches[epoch * 4 : epoch * 4 + 4]]).sort().values, flat)
    assert not torch.equal(batches[0]["advantages"], batches[4]["advantages"]), "epochs are reshuffled"
    _, again = run(0)
    assert all(torch.equal(a["obs"], b["obs"]) and torch.equal(a["actions"], b["actions"]) for a, b in zip(batches, again))
    _, other = run(1)
    assert not all(torch.equal(a["actions"], b["actions"]) for a, b in zip(batches, other))


def test_in_process_vec_env_state_round_trip_continues_identically():
    venv = InProcessVecEnv([lambda s: LavaGridEnv()] * 2, [0, 1])
    venv.reset()
    for a in ([3, 0], [3, 3]):
        venv.step(np.array(a))
    blob = venv.get_state()
    ref = [venv.step(np.array([3, 1]))[0] for _ in range(3)]
    venv.set_state(blob)
    again = [venv.step(np.array([3, 1]))[0] for _ in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(ref, again))


def test_ppo_cost_shapes_the_reward_before_gae():
    r, c = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 2.0])
    assert torch.allclose(_tiny(algo="ppo_cost", cost_penalty_kappa=0.1).shape_reward(r, c), torch.tensor([1.0, 0.3]))
    assert torch.equal(_tiny(algo="ppo_lag").shape_reward(r, c), r)


def _batch(costs):
    n = len(costs)
    return {"advantages": torch.linspace(-1, 1, n), "cost_advantages": torch.linspace(1, -1, n).abs(),
            "costs": torch.tensor(costs)}  # fmt: skip


def test_ppo_lag_updates_lambda_first_then_uses_it():
    m = _tiny(algo="ppo_lag", lagrange_lr=0.1)
    m.step_budget = 1.0
    lams = []
    for jc in (3, 2, 0, 0, 0, 0):  # rl_core.md §8 sequence
        b = _batch([float(jc)] * 4)
        adv = m.policy_advantages(b, 1)
        lams.append(float(m.lagrange_lambda))
        assert torch.allclose(adv, b["advantages"] - lams[-1] * b["cost_advantages"])
    assert lams == pytest.approx([0.2, 0.3, 0.2, 0.1, 0.0, 0.0])


def test_ppo_pid_buffers_follow_the_golden_sequence_and_divide_by_one_plus_lambda():
    m = _tiny(algo="ppo_pid")
    m.step_budget = 1.0
    for jc, want in zip((3, 3, 1), (0.0325, 0.063425, 0.062804)):
        b = _batch([float(jc)] * 4)
        adv = m.policy_advantages(b, 1)
        lam = float(m.lagrange_lambda)
        assert lam == pytest.approx(want, abs=1e-6)
        assert torch.allclose(adv, (b["advantages"] - lam * b["cost_advantages"]) / (1 + lam))
    # the PID state lives in buffers: a checkpoint carries it
    assert {"lagrange_lambda", "pid_terms", "pid_history"} <= set(m.state_dict())


def test_p3o_penalty_only_when_the_constraint_is_active():
    m = _tiny(algo="p3o", p3o_kappa=1.0)
    m.step_budget = 1.0
    logp = torch.zeros(4, requires_grad=True)
    b = {**_batch([0.0] * 4), "logp": torch.zeros(4)}
    m.policy_advantages(b, 1)  # records c̄ = 0 < b
    assert float(m.extra_loss(b, logp).detach()) == 0.0
    b = {**_batch([3.0] * 4), "logp": torch.zeros(4)}
    m.policy_advantages(b, 1)
    pen = m.extra_loss(b, logp)
    assert float(pen) > 0
    pen.backward()
    assert logp.grad.abs().sum() > 0
    assert float(m.lagrange_lambda) == 0.0, "P3O has no multiplier"


def test_per_episode_budget_updates_once_per_rollout():
    m = _tiny(algo="ppo_lag", budget_mode="per_episode", lagrange_lr=0.1, cost_budget=1.0)
    m._trainer = type("T", (), {"datamodule": type("D", (), {"episodes": [{"cost": 3.0}, {"cost": 5.0}]})(),
                                "world_size": 1})()  # fmt: skip
    m.policy_advantages(_batch([9.0] * 4), 0)
    assert float(m.lagrange_lambda) == pytest.approx(0.1 * (4.0 - 1.0))
    m.policy_advantages(_batch([9.0] * 4), 1)  # later minibatches of the rollout: no update
    assert float(m.lagrange_lambda) == pytest.approx(0.3)


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="algo"):
        SafePPO(algo="trpo")
    with pytest.raises(ValueError, match="budget_mode"):
        SafePPO(budget_mode="sometimes")
    with pytest.raises(ValueError, match="divisible"):
        LavaGridDataModule(num_envs=3, num_steps=5, num_minibatches=4)
    with pytest.raises(ValueError, match="size"):
        LavaGridDataModule(size=6)
    m = _tiny(obs_shape=(50,))
    with pytest.raises(ValueError, match="obs_shape"):
        quiet_trainer([], max_steps=1).fit(m, datamodule=LavaGridDataModule(**LavaGridDataModule.unit_test_params()))


def test_budget_conversion_of_the_doom_datamodule():
    from datamodules.vizdoom import HasardDataModule

    dm = HasardDataModule()
    assert dm.per_step_budget(5) == pytest.approx(0.0095238, abs=1e-7)
    assert dm.per_step_budget(50) == pytest.approx(0.095238, abs=1e-6)
    assert dm.max_episode_steps == 525


def _lava_run(algo: str, steps: int, seed: int = 0, workdir=None):
    """The lava-grid miniature exactly as ``yaml/hasard/mini_lava_<algo>.yaml`` runs it (shorter)."""
    from tests import discovery as disc
    from trainer.cli import TrainerCLI

    path = disc.YAML_DIR / "hasard" / f"mini_lava_{algo}.yaml"
    cli = TrainerCLI(args=["fit", "--config", str(path), "--seed_everything", str(seed), "--trainer.logger", "false",
                           "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
                           "--data.init_args.total_env_steps", str(steps),
                           "--trainer.default_root_dir", str(workdir)], run=False)  # fmt: skip
    costs, lams = [], []

    class Record(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.datamodule.episodes:
                costs.append(np.mean([e["cost"] for e in trainer.datamodule.episodes]))
                lams.append(float(pl_module.lagrange_lambda))

    cli.trainer.callbacks.append(Record())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return float(np.mean(costs[-5:])), lams[-1]


@pytest.mark.slow
def test_lava_grid_ppo_violates_and_ppo_lag_respects_the_budget(tmp_path):
    """hasard.md §6 "Lava grid (fast)": PPO's cost exceeds the budget; PPO-Lag ends <= 1.2 × budget, λ > 0."""
    budget = 0.5
    ppo_cost, _ = _lava_run("ppo", 30_000, workdir=tmp_path / "ppo")
    lag_cost, lam = _lava_run("ppo_lag", 100_000, workdir=tmp_path / "lag")
    assert ppo_cost > budget, ppo_cost
    assert lag_cost <= 1.2 * budget, lag_cost
    assert lam > 0, lam


@pytest.mark.slow
def test_killed_vizdoom_process_is_restarted_and_training_goes_on(tmp_path):
    pytest.importorskip("vizdoom")
    from datamodules.vizdoom import HasardDataModule

    dm = HasardDataModule(width=64, height=36, grayscale=True, num_envs=2, num_steps=16, num_minibatches=2,
                          total_env_steps=10_000)  # fmt: skip
    m = SafePPO(algo="ppo_lag", hidden=32)
    killed = []

    class Killer(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                pid = trainer.datamodule.vec_env.worker_pids()[1]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    trainer = quiet_trainer([Killer()], max_epochs=3, default_root_dir=str(tmp_path))
    trainer.fit(m, datamodule=dm)
    assert killed and trainer.current_epoch == 3 and trainer.global_step == 3 * 2
    assert float(trainer.callback_metrics["env/restarts"]) >= 1.0


def test_vectorised_sampler_draws_each_head_from_its_softmax():
    """``act`` samples all heads with one Gumbel-max over padded logits: frequencies follow each head's
    softmax and the returned logp equals the summed per-head log-probabilities."""
    m = _tiny(obs_shape=(14,), action_heads=(3, 2, 4))
    with torch.no_grad():
        m.net.policy.bias.copy_(torch.tensor([2.0, 0.0, -1.0, 1.0, -1.0, 0.5, 0.0, -0.5, 1.5]))
    obs = torch.zeros(40_000, 14)
    out = m.act(obs, torch.Generator().manual_seed(0))
    logits, _, _ = m.net(obs[:1])
    for h, lg in enumerate(logits):
        freq = torch.bincount(out["action"][:, h], minlength=lg.shape[-1]).float() / obs.shape[0]
        assert torch.allclose(freq, torch.softmax(lg[0].detach(), -1), atol=0.01), (h, freq)
    want = rl.log_prob_heads([lg.detach().expand(obs.shape[0], -1) for lg in logits], out["action"])
    assert torch.allclose(out["logp"], want, atol=1e-5)
    again = m.act(obs[:100], torch.Generator().manual_seed(0))["action"]
    assert torch.equal(again, out["action"][:100]), "seeded sampling is reproducible"
