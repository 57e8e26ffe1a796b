"""HASARD and the RL substrate: rollout machinery, SafePPO's algorithms, the lava-grid effect, ViZDoom restarts.

Formula tests of ``trainer/rl.py`` live in ``tests/test_rl_math.py``; env rules in ``tests/test_vizdoom_env.py``;
subprocess supervision in ``tests/test_env_workers.py``.
"""

from __future__ import annotations

import math
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
    """obs = [step index within the episode], reward 1; truncated after ``horizon`` steps; cost ``cost`` every
    step, or (None) 1 at step 2 only."""

    def __init__(self, horizon: int = 3, cost: float | None = None) -> None:
        self.observation_space = gym.spaces.Box(0, 10, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.horizon, self.cost = horizon, cost
        self.t = 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        cost = float(self.t == 2) if self.cost is None else self.cost
        return np.array([float(self.t)], np.float32), 1.0, False, self.t >= self.horizon, {"cost": cost}


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


# ----------------------------------------------------------------------------------------------
# PPO-Sauté, the recurrent core, the full action space
# ----------------------------------------------------------------------------------------------


class _CostlyDM(RolloutDataModule):
    default_unsafe_reward = -5.0

    def env_factory(self, k):
        return lambda seed: _ScriptedEnv(horizon=4, cost=0.4)  # reward 1, cost 0.4 every step

    @property
    def max_episode_steps(self) -> int:
        return 4


def _fake_trainer(dm, module):
    dm.trainer = type("T", (), {"lightning_module": module, "world_size": 1, "global_rank": 0})()
    return dm


def _saute(dm, **kw) -> SafePPO:
    m = _tiny(**{"algo": "ppo_saute", **kw})
    m.configure_saute(dm)
    return m


def test_saute_safety_state_and_unsafe_reward_in_collection():
    """hasard.md §6: B_d = 1, γ_s = 1, costs 0.4 → z = 0.6, 0.2, −0.2 and the third reward is replaced; z resets
    to 1 on the new episode's first observation (same-step autoreset)."""
    dm = _setup_dm(_CostlyDM(num_envs=1, num_steps=6, update_epochs=1, num_minibatches=1))
    m = _saute(dm, obs_shape=(1,), action_heads=(2,), cost_budget=1.0, saute_gamma=1.0)
    assert m.saute_budget_d == 1.0 and m.unsafe_reward == -5.0, "B_d and the datamodule's unsafe reward"
    flat = dm.collect_rollout(m)
    assert flat["safety"][:, 0].tolist() == pytest.approx([1.0, 0.6, 0.2, -0.2, 1.0, 0.6])
    assert flat["rewards"].tolist() == pytest.approx([1.0, 1.0, -5.0, -5.0, 1.0, 1.0])
    assert dm.policy_state["safety"][0, 0].item() == pytest.approx(0.2), "z carries over to the next rollout"
    # the Doom datamodule's horizon is agent steps (525), not tics; its unsafe reward is the scenario's
    from datamodules.vizdoom import HasardDataModule

    doom = HasardDataModule()
    m = _saute(doom, cost_budget=5.0, obs_shape=(1,), action_heads=(2,))
    assert m.saute_budget_d == pytest.approx(rl.saute_budget(5.0, 0.9999, 525))
    assert m.unsafe_reward == -0.025
    assert _saute(doom, cost_budget=5.0, saute_unsafe_reward=-1.0, obs_shape=(1,), action_heads=(2,)).unsafe_reward == -1.0
    with pytest.raises(ValueError, match="B > 0"):
        _saute(doom, cost_budget=0.0, obs_shape=(1,), action_heads=(2,))


def test_saute_network_receives_the_safety_state():
    m = _saute(_CostlyDM(), cost_budget=1.0)
    assert m.net.extra_dims == 1 and _tiny().net.extra_dims == 0, "only ppo_saute widens the encoder output"
    torch.manual_seed(0)
    for p in m.net.parameters():  # break the near-zero policy init so every input matters visibly
        torch.nn.init.normal_(p)
    obs = torch.rand(3, 14)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = m.act(obs, g(), {"safety": torch.ones(3, 1)})
    b = m.act(obs, g(), {"safety": -torch.ones(3, 1)})
    assert not torch.allclose(a["logp"], b["logp"]) and not torch.allclose(a["value"], b["value"])
    assert not torch.allclose(a["cost_value"], b["cost_value"]), "both critics see z"
    batch = {"obs": obs, "actions": a["action"], "safety": torch.ones(3, 1)}
    assert torch.allclose(m.evaluate(batch)["logp"], a["logp"], atol=1e-6)
    assert not torch.allclose(m.evaluate({**batch, "safety": -torch.ones(3, 1)})["logp"], a["logp"])


def test_recurrent_minibatches_are_whole_chunks_in_time_order():
    dm = _setup_dm(_ScriptedDM(num_envs=2, num_steps=8, update_epochs=2, num_minibatches=2))
    m = _tiny(obs_shape=(1,), action_heads=(2,), recurrence=4)
    batches = list(RolloutDataset(_fake_trainer(dm, m)))
    assert len(batches) == 4 and dm.chunk_len == 4 and dm.chunk_keys == ("hidden",)
    starts = []
    for b in batches:
        assert b["obs"].shape == (8, 1) and b["hidden"].shape == (2, 16) and b["actions"].shape == (8, 1)
        for c in range(2):  # obs = step within a 3-step episode: a chunk from t0 reads (t0 + i) % 3
            seq = b["obs"][4 * c : 4 * c + 4, 0].tolist()
            assert seq in ([0.0, 1.0, 2.0, 0.0], [1.0, 2.0, 0.0, 1.0]), seq
            starts.append((seq[0], bool(b["hidden"][c].abs().sum() > 0)))
    # chunks starting at t = 0 of the first rollout start from the zero state, those at t = 4 do not
    assert sorted(set(starts)) == [(0.0, False), (1.0, True)]
    assert not torch.equal(batches[0]["obs"], batches[2]["obs"]) or not torch.equal(
        batches[0]["hidden"], batches[2]["hidden"]), "update epochs reshuffle the chunks"  # fmt: skip


@pytest.mark.parametrize("algo,recurrence", [("ppo_lag", 0), ("ppo_lag", 4), ("ppo_saute", 4)])
def test_training_forward_reproduces_the_collected_values(algo, recurrence):
    """Before any update, logp/values recomputed on the minibatches (GRU unrolled over whole chunks, reset
    where done) equal those computed step by step during collection."""
    dm = _setup_dm(LavaGridDataModule(max_steps=5, num_envs=2, num_steps=16, update_epochs=1, num_minibatches=2))
    m = _tiny(algo=algo, recurrence=recurrence, cost_budget=0.5)
    if algo == "ppo_saute":
        m.configure_saute(dm)
    _fake_trainer(dm, m)
    RolloutDataset(dm).__iter__().__next__()  # a first rollout, so the second starts from a carried state
    batches = list(RolloutDataset(dm))
    assert any(b["truncated"].sum() > 0 for b in batches), "episodes end inside chunks"
    for b in batches:
        with torch.no_grad():
            ev = m.evaluate(b)
        assert torch.allclose(ev["logp"], b["logp"], atol=1e-5)
        assert torch.allclose(ev["value"], b["values"], atol=1e-5)
        assert torch.allclose(ev["cost_value"], b["cost_values"], atol=1e-5)
        if recurrence:
            assert b["hidden"].shape == (b["obs"].shape[0] // recurrence, 16)


@pytest.mark.parametrize("encoder,shape", [("convnet_simple", (3, 36, 64)), ("mlp", (10,))])
def test_rollout_precision_copy_gives_the_autocast_numbers(encoder, shape):
    """Under bf16-mixed a feed-forward policy collects with a copy whose conv/linear weights are cast once: the
    same bits as autocast op by op; the copy follows weight updates and stays out of the checkpoint."""
    m = _tiny(algo="ppo_lag", encoder=encoder, obs_shape=list(shape), action_heads=[3, 3, 2], cost_budget=1.0)
    g = torch.Generator().manual_seed(0)
    x = (torch.randint(0, 255, (5, *shape), generator=g, dtype=torch.uint8) if encoder != "mlp"
         else torch.randn(5, *shape, generator=g))  # fmt: skip
    for _ in range(2):
        with torch.no_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
                ref = m._step(x, None)
            with m.rollout_precision("bf16-mixed"):
                assert m._rollout_net is not None and m._rollout_net is not m.net
                got = m._step(x, None)
        assert m._rollout_net is None
        assert got["value"].dtype == torch.bfloat16
        assert torch.equal(ref["value"], got["value"]) and torch.equal(ref["cost_value"], got["cost_value"])
        assert all(torch.equal(a, b) for a, b in zip(ref["logits"], got["logits"]))
        with torch.no_grad():  # an "update": the next rollout's copy must follow it
            for p in m.net.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    assert not any("rollout" in k for k in m.state_dict())
    with m.rollout_precision("32-true"):  # full precision: the module's own net
        assert m._rollout_net is None and torch.equal(m._step(x, None)["value"], m.net.step(x)["value"])


@pytest.mark.parametrize("recurrence", [0, 4])
def test_bf16_mixed_collection_matches_the_autocast_update(recurrence):
    """The first minibatch's ratio is 1 to bf16 rounding when collection runs in the trainer's precision
    (cast-once copy, or autocast for the GRU); a float32 collection would be off by bf16's error."""
    dm = _setup_dm(LavaGridDataModule(max_steps=5, num_envs=2, num_steps=16, update_epochs=1, num_minibatches=2))
    m = _tiny(algo="ppo_lag", recurrence=recurrence, cost_budget=0.5)
    _fake_trainer(dm, m)
    dm.trainer.precision = "bf16-mixed"
    for b in RolloutDataset(dm):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            ev = m.evaluate(b)
        with torch.no_grad():
            full = m.evaluate(b)
        err, err32 = (ev["logp"].float() - b["logp"]).abs().max(), (full["logp"] - b["logp"]).abs().max()
        assert err <= 1e-2, err
        assert torch.allclose(ev["value"].float(), b["values"], atol=1e-2)
        assert err32 > 0  # the stored numbers are bf16's, not float32's


def test_running_normalisers_follow_the_rollouts_and_value_heads_learn_normalised_returns():
    """HASARD §3.4 "inputs and returns normalised": after each rollout's update the float64 statistics equal
    the mean / variance of every observation and return seen so far; collection reports values in the env's
    units (head output · std + mean) and the value loss compares normalised targets."""
    dm = _setup_dm(LavaGridDataModule(max_steps=5, num_envs=2, num_steps=16, update_epochs=1, num_minibatches=2))
    m = _tiny(algo="ppo", cost_budget=0.5, normalize_obs=True, normalize_returns=True)
    _fake_trainer(dm, m)
    seen_obs, seen_ret, seen_cret = [], [], []
    for _ in range(3):
        batches = list(RolloutDataset(dm))
        assert m._pending_rollout is not None
        seen_obs.append(m._pending_rollout["obs"]), seen_ret.append(m._pending_rollout["returns"])
        seen_cret.append(m._pending_rollout["cost_returns"])
        m.update_normalisers()
    obs, ret, cret = torch.cat(seen_obs).double(), torch.cat(seen_ret).double(), torch.cat(seen_cret).double()
    assert float(m.obs_stat_count) == obs.shape[0] == 96
    assert torch.allclose(m.obs_stat_mean, obs.mean(0)) and torch.allclose(m.obs_stat_var, obs.var(0, unbiased=False))
    assert torch.allclose(m.net.obs_std, obs.var(0, unbiased=False).add(1e-8).sqrt().float())
    st = m.return_stats
    assert torch.allclose(st[0], torch.stack([torch.tensor(96.0, dtype=torch.float64), ret.mean(), ret.var(unbiased=False)]))
    assert torch.allclose(st[1, 1], cret.mean()) and torch.allclose(st[1, 2], cret.var(unbiased=False))
    # collection de-normalises the heads; the update's targets are normalised with the same statistics
    x = batches[0]["obs"]
    with torch.no_grad():
        head = m.net.step(x)["value"]
        v, _ = m.values(x)
        mean, std = float(st[0, 1]), float(st[0, 2].add(1e-8).sqrt())
        assert torch.allclose(v, head * std + mean, atol=1e-5)
        tg = m._normalised_targets(batches[0])
        assert torch.allclose(tg["returns"], (batches[0]["returns"] - mean) / std, atol=1e-6)
        x_norm = ((x.float() - m.net.obs_mean) / m.net.obs_std).clamp(-5, 5)
        assert torch.allclose(m.net.encoder(x_norm), m.net.features(x))
    assert {"obs_stat_mean", "obs_stat_var", "obs_stat_count", "return_stats", "net.obs_mean"} <= set(m.state_dict())
    with pytest.raises(ValueError, match="obs_norm_clip"):
        _tiny(obs_norm_clip=0.0)


def test_collection_and_update_threads():
    """One torch thread while the games run, the cores per rank during the update (subprocess backend)."""
    dm = LavaGridDataModule(num_envs=2, num_steps=8)
    assert (dm.threads_for("collect"), dm.threads_for("update")) == (1, None)  # in-process envs: torch's own
    dm.vector_backend = "subprocess"
    dm.trainer = type("T", (), {"world_size": 2, "num_nodes": 1})()
    cores = len(os.sched_getaffinity(0))
    assert dm.threads_for("update") == max(1, cores // 2)
    assert LavaGridDataModule(update_threads=3, collect_threads=None).threads_for("update") == 3
    for bad in ({"update_threads": 0}, {"update_threads": "all"}, {"collect_threads": "auto"}, {"collect_threads": 0}):
        with pytest.raises(ValueError, match="threads"):
            LavaGridDataModule(**bad)
    before = torch.get_num_threads()
    dm = _setup_dm(LavaGridDataModule(num_envs=2, num_steps=8, update_epochs=1, num_minibatches=1,
                                      collect_threads=1, update_threads=2))  # fmt: skip
    _fake_trainer(dm, _tiny(algo="ppo", cost_budget=0.5))
    try:
        it = iter(RolloutDataset(dm))
        next(it)
        assert torch.get_num_threads() == 2  # the update passes
    finally:
        torch.set_num_threads(before)


def test_recurrence_layout_errors_and_policy_state_resume():
    with pytest.raises(ValueError, match="divisible by recurrence"):
        _tiny(recurrence=5).check_rollout_layout(LavaGridDataModule(num_envs=2, num_steps=16, num_minibatches=2))
    with pytest.raises(ValueError, match="chunks"):
        _tiny(recurrence=8).check_rollout_layout(LavaGridDataModule(num_envs=3, num_steps=8, num_minibatches=4))
    with pytest.raises(ValueError, match="recurrence"):
        _tiny(recurrence=-1)

    def dm():
        return _setup_dm(LavaGridDataModule(max_steps=7, num_envs=2, num_steps=8, update_epochs=1, num_minibatches=2))

    m = _tiny(algo="ppo_saute", recurrence=4, cost_budget=0.5)
    straight = dm()
    m.configure_saute(straight)
    straight.collect_rollout(m)
    ref = straight.collect_rollout(m)
    first = dm()
    first.collect_rollout(m)
    state = first.state_dict()
    assert set(state["policy_state"]) == {"hidden", "safety"}
    resumed = dm()
    resumed.load_state_dict(state)
    again = resumed.collect_rollout(m)
    for k in ("obs", "actions", "logp", "hidden", "safety", "rewards"):
        assert torch.equal(ref[k], again[k]), k


class _TupleEnv(gym.Env):
    """Tuple(MultiDiscrete([3, 2]), Box(-1, 1, (2,))) actions; records what it receives."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0, 1, (3,), np.float32)
        self.action_space = gym.spaces.Tuple((gym.spaces.MultiDiscrete([3, 2]), gym.spaces.Box(-1, 1, (2,), np.float32)))
        self.received = []

    def reset(self, *, seed=None, options=None):
        return np.zeros(3, np.float32), {}

    def step(self, action):
        disc, box = action
        assert disc.dtype == np.int64 and disc.shape == (2,) and box.shape == (2,)
        self.received.append((disc.copy(), box.copy()))
        return np.full(3, 0.5, np.float32), float(box[0]), False, False, {"cost": float(disc[0] == 2)}


class _TupleDM(RolloutDataModule):
    def env_factory(self, k):
        return lambda seed: _TupleEnv()

    @property
    def max_episode_steps(self) -> int:
        return 100

    default_budget = 1.0


def test_full_action_space_discrete_and_gaussian_box_heads():
    dm = _setup_dm(_TupleDM(num_envs=2, num_steps=16, update_epochs=1, num_minibatches=2))
    assert dm.action_heads == (3, 2) and dm.action_box_dims == 2
    m = _tiny(obs_shape=(3,), action_heads=(3, 2), action_box=2, algo="ppo")
    with torch.no_grad():
        m.net.box_log_std.fill_(math.log(2.0))  # σ = 2: many samples fall outside [-1, 1]
    batches = list(RolloutDataset(_fake_trainer(dm, m)))
    flat = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    a = flat["actions"]
    assert a.dtype == torch.float32 and a.shape == (32, 4)
    assert torch.equal(a[:, :2], a[:, :2].round()) and a[:, 0].max() <= 2 and a[:, 1].max() <= 1
    assert a[:, 2:].abs().max() > 1, "the stored Box sample is the unclipped one"
    received = np.stack([b for env in dm.vec_env.envs for _, b in env.received])
    assert np.abs(received).max() <= 1.0, "the env gets the Box part clipped to [-1, 1]"
    with torch.no_grad():
        ev = m.evaluate(batches[0])
    assert torch.allclose(ev["logp"], batches[0]["logp"], atol=1e-5), "logp sums discrete and Gaussian heads"
    want_h = rl.categorical_entropy(ev["logits"]) + 2 * (0.5 * (1 + math.log(2 * math.pi)) + math.log(2.0))
    assert torch.allclose(ev["entropy"], want_h, atol=1e-5)
    assert torch.isfinite(m.training_step(batches[0], -1))


def test_full_action_space_trains_and_the_doom_datamodule_describes_it():
    pl.seed_everything(0, verbose=False)
    m = _tiny(obs_shape=None, action_heads=None, algo="ppo_lag")
    dm = _TupleDM(num_envs=2, num_steps=8, update_epochs=1, num_minibatches=2, total_env_steps=32)
    trainer = quiet_trainer([], max_epochs=2)
    trainer.fit(m, datamodule=dm)
    assert tuple(m.hparams.action_heads) == (3, 2) and m.hparams.action_box == 2
    assert trainer.global_step == 4
    assert float(m.net.box_log_std.detach().abs().sum()) > 0, "the log-std parameter is trained"
    from datamodules.vizdoom import HasardDataModule

    full = HasardDataModule(action_space="full")
    assert len(full.action_heads) == 9 and full.action_box_dims == 2
    assert HasardDataModule().action_box_dims == 0


@pytest.mark.slow
def test_real_vizdoom_rollout_with_full_actions_gru_and_saute(tmp_path):
    pytest.importorskip("vizdoom")
    from datamodules.vizdoom import HasardDataModule

    dm = HasardDataModule(action_space="full", width=64, height=36, grayscale=True, num_envs=2, num_steps=8,
                          num_minibatches=2, total_env_steps=16)  # fmt: skip
    m = SafePPO(algo="ppo_saute", hidden=32, recurrence=4)
    trainer = quiet_trainer([], max_epochs=1, default_root_dir=str(tmp_path))
    trainer.fit(m, datamodule=dm)
    assert trainer.global_step == 2
    assert tuple(m.hparams.action_heads) == (3, 3, 3, 2, 2, 2, 2, 2, 2) and m.hparams.action_box == 2
    assert set(dm.policy_state) == {"hidden", "safety"} and dm.policy_state["hidden"].shape == (2, 32)
    assert m.unsafe_reward == -0.025
