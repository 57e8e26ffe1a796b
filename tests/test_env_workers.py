"""Subprocess vector envs (trainer/env_workers.py; rl_core.md §3 autoreset, §4 supervision, §5 seeds).

The fake envs live in tests/fake_envs.py. A spawned worker imports torch (about 2 s), so the
protocol tests share one ``spawn`` vec env and the restart-heavy tests use the ``forkserver``
context with torch preloaded in the server: a restart there costs milliseconds, not seconds.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

from tests.fake_envs import BuildFailFactory, ScriptedEnvFactory
from trainer import env_workers
from trainer.env_workers import EnvWorkerError, SubprocVecEnv, restart_seed

# Forked workers then start with torch, gymnasium and the fake envs already imported.
multiprocessing.set_forkserver_preload(["torch", "gymnasium", "numpy", "trainer.env_workers", "tests.fake_envs"])

pytestmark = [pytest.mark.filterwarnings("ignore:SubprocVecEnv:RuntimeWarning"), pytest.mark.timeout(120)]

SEEDS = (10, 20)


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _reference(factory: ScriptedEnvFactory, seed: int, actions: list[int]) -> list[tuple]:
    """Run one env in-process with same-step autoreset: [(obs, reward, term, trunc, final_obs | None)]."""
    env = factory(seed)
    obs, _ = env.reset(seed=seed)
    out = [(obs, 0.0, False, False, None)]
    for a in actions:
        obs, reward, term, trunc, _ = env.step(a)
        final = None
        if term or trunc:
            final, (obs, _) = obs, env.reset()
        out.append((obs, reward, term, trunc, final))
    env.close()
    return out


@pytest.fixture(scope="module")
def pair():
    """Two spawned envs: episodes of 3 steps ending by termination, of 5 steps ending by truncation."""
    factories = [ScriptedEnvFactory("term3", episode_len=3), ScriptedEnvFactory("trunc5", episode_len=5, truncate=True)]
    vec = SubprocVecEnv(factories, seeds=SEEDS)
    yield vec, factories
    vec.close()


def test_spaces_and_reset(pair):
    vec, _ = pair
    assert vec.num_envs == 2 and vec.single_action_space.n == 3 and vec.single_observation_space.shape == (4,)
    obs, infos = vec.reset()
    assert obs.shape == (2, 4) and obs.dtype == np.float32
    for k in range(2):  # each env reset with its own seed
        np.testing.assert_array_equal(obs[k], _reference(pair[1][k], SEEDS[k], [])[0][0])
        assert infos[k]["cost"] == 0.0 and infos[k]["reset_of_episode"] == 0


def test_matches_in_process_envs(pair):
    vec, factories = pair
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 3, size=(12, 2))
    refs = [_reference(factories[k], SEEDS[k], [int(a) for a in actions[:, k]]) for k in range(2)]
    obs, _ = vec.reset()
    np.testing.assert_array_equal(obs, np.stack([refs[0][0][0], refs[1][0][0]]))
    for t in range(12):
        obs, reward, term, trunc, infos = vec.step(actions[t] if t % 2 else [int(a) for a in actions[t]])
        assert reward.dtype == np.float32 and term.dtype == np.bool_ and trunc.dtype == np.bool_
        for k in range(2):
            ref_obs, ref_r, ref_term, ref_trunc, ref_final = refs[k][t + 1]
            np.testing.assert_array_equal(obs[k], ref_obs)
            assert reward[k] == np.float32(ref_r) and term[k] == ref_term and trunc[k] == ref_trunc
            assert isinstance(infos[k]["cost"], float)
            if ref_final is None:
                assert "final_obs" not in infos[k] and "episode" not in infos[k]
            else:
                np.testing.assert_array_equal(infos[k]["final_obs"], ref_final)
    assert vec.restarts == 0 and vec.restarts_per_env == [0, 0]


def test_same_step_autoreset(pair):
    vec, _ = pair
    vec.reset()
    for a in (1, 0):  # steps 1 and 2 of env 0's 3-step episode
        _, _, term, trunc, infos = vec.step([a, 2])
        assert not term.any() and not trunc.any() and "episode" not in infos[0]
    obs, reward, term, trunc, infos = vec.step([2, 2])  # step 3 ends env 0's episode
    assert term.tolist() == [True, False] and trunc.tolist() == [False, False]
    final = infos[0]["final_obs"]
    assert final[0] == 0 and final[1] == 3 and final[3] == 2  # the true last obs: episode 0, t = 3, action 2
    assert obs[0][0] == 1 and obs[0][1] == 0 and obs[0][3] == 0  # already the reset obs of episode 1
    assert reward[0] == np.float32(3.2)
    ep = infos[0]["episode"]
    assert ep["return"] == pytest.approx(1.1 + 2.0 + 3.2) and ep["cost"] == 1.0 and ep["length"] == 3
    assert ep["scenario_id"] == 7 and infos[0]["positions"] == [3, 2] and infos[0]["cost"] == 0.0
    assert "episode" not in infos[1] and "final_obs" not in infos[1]
    # env 1 ends by truncation at step 5; the new episode's stats start from zero
    vec.step([0, 1])
    obs, _, term, trunc, infos = vec.step([0, 0])
    assert trunc.tolist() == [False, True] and not term.any()
    assert infos[1]["final_obs"][1] == 5 and obs[1][1] == 0
    assert infos[1]["episode"]["length"] == 5 and infos[1]["episode"]["cost"] == 1.0
    assert infos[1]["episode"]["return"] == pytest.approx(1.2 + 2.2 + 3.2 + 4.1 + 5.0)


def test_render_and_call(pair):
    vec, _ = pair
    vec.reset()
    vec.step([0, 0])
    vec.step([0, 0])
    frame = vec.render(1)
    assert frame.shape == (4, 5, 3) and frame.dtype == np.uint8 and (frame == 2).all()
    assert vec.render().shape == (4, 5, 3)
    assert vec.call(0, "get_state")[:2] == (0, 2)
    assert vec.call(1, "add", 2, b=3) == 5
    assert vec.call(0, "episode_len") == 3 and vec.call(1, "episode_len") == 5  # attributes are read
    with pytest.raises(EnvWorkerError, match="AttributeError"):
        vec.call(0, "no_such_method")
    _, reward, _, _, infos = vec.step([0, 0])  # the worker survived the remote exception
    assert reward.tolist() == [3.0, 3.0] and vec.restarts == 0 and "restarted" not in infos[0]


def test_restart_after_exception_on_fifth_step():
    """Default ``spawn`` context: the env raises on its 5th step; the transition is cut, not finished."""
    factories = [
        ScriptedEnvFactory("ok", episode_len=100),
        ScriptedEnvFactory("flaky", episode_len=100, fail_at_step=5),
    ]
    vec = SubprocVecEnv(factories, seeds=SEEDS)
    try:
        vec.reset()
        old_pid = vec.worker_pids()[1]
        last_obs = None
        for _ in range(4):
            last_obs, reward, _, trunc, _ = vec.step([1, 1])
            assert not trunc.any()
        with pytest.warns(RuntimeWarning, match=r"env 1 \(ScriptedEnv\[flaky\]\).*restart 1 with seed 7939"):
            obs, reward, term, trunc, infos = vec.step([1, 1])
        assert vec.restarts == 1 and vec.restarts_per_env == [0, 1]
        assert trunc.tolist() == [False, True] and term.tolist() == [False, False]
        assert reward[0] == np.float32(5.1) and reward[1] == 0.0
        info = infos[1]
        assert info["restarted"] is True and info["cost"] == 0.0 and "episode" not in info
        assert info["error"] == "ValueError: scripted failure at step 5"
        np.testing.assert_array_equal(info["final_obs"], last_obs[1])  # bootstrap from the last good obs
        assert "restarted" not in infos[0] and obs[0][1] == 5
        # the new worker: a new process, built and reset with seed + 7919
        assert restart_seed(SEEDS[1], 1) == SEEDS[1] + 7919
        ref = _reference(factories[1], SEEDS[1] + 7919, [2, 0, 1])
        np.testing.assert_array_equal(obs[1], ref[0][0])
        assert vec.worker_pids()[1] != old_pid and not _pid_alive(old_pid)
        for t in range(3):
            obs, reward, _, trunc, infos = vec.step([0, [2, 0, 1][t]])
            np.testing.assert_array_equal(obs[1], ref[t + 1][0])
            assert reward[1] == np.float32(ref[t + 1][1]) and not trunc.any()
        assert vec.restarts == 1
    finally:
        vec.close()


def test_worker_killed_between_steps_is_restarted():
    factories = [
        ScriptedEnvFactory("victim", episode_len=100, launch_child=True),
        ScriptedEnvFactory("bystander", episode_len=100),
    ]
    vec = SubprocVecEnv(factories, seeds=SEEDS, context="forkserver")
    try:
        vec.reset()
        child = vec.call(0, "child_pid")  # a program the env launched, like ViZDoom's game process
        assert _pid_alive(child)
        vec.step([0, 0])
        last_obs, *_ = vec.step([0, 0])
        victim = vec.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.2)
        obs, reward, term, trunc, infos = vec.step([1, 1])
        assert vec.restarts == 1 and vec.restarts_per_env == [1, 0]
        assert trunc.tolist() == [True, False] and reward.tolist() == [0.0, np.float32(3.1)]
        assert infos[0]["restarted"] and "episode" not in infos[0] and "restarted" not in infos[1]
        pipe_errors = {"EOFError", "ConnectionResetError", "BrokenPipeError", "WorkerExited"}
        assert infos[0]["error"].split(":")[0] in pipe_errors
        np.testing.assert_array_equal(infos[0]["final_obs"], last_obs[0])
        np.testing.assert_array_equal(obs[0], _reference(factories[0], SEEDS[0] + 7919, [])[0][0])
        assert not _pid_alive(victim) and victim not in vec.worker_pids() and len(vec.worker_pids()) == 2
        assert not _pid_alive(child)  # the orphaned program went with its worker's process group
        _, reward, _, trunc, _ = vec.step([0, 0])
        assert reward.tolist() == [1.0, 4.0] and not trunc.any()
    finally:
        vec.close()


def test_hanging_step_times_out_and_restarts():
    vec = SubprocVecEnv([ScriptedEnvFactory("hangs", episode_len=100, hang_at_step=2, hang_s=60.0)], seeds=(3,),
                        step_timeout_s=1.0, context="forkserver")
    try:
        vec.reset()
        vec.step([0])
        hung = vec.worker_pids()[0]
        start = time.monotonic()
        obs, reward, _, trunc, infos = vec.step([0])
        elapsed = time.monotonic() - start
        assert 0.9 <= elapsed < 10.0, elapsed
        assert trunc[0] and reward[0] == 0.0 and vec.restarts == 1
        assert infos[0]["error"].startswith("TimeoutError") and "episode" not in infos[0]
        assert not _pid_alive(hung)
        # the replacement answers in sync (no stale reply of the hung worker)
        _, reward, _, trunc, infos = vec.step([2])
        assert reward[0] == np.float32(1.2) and not trunc[0] and "restarted" not in infos[0]
    finally:
        vec.close()


def test_always_failing_env_raises_after_six_consecutive_failures():
    vec = SubprocVecEnv([ScriptedEnvFactory("always-fails", fail_every=1)], seeds=(0,), context="forkserver")
    try:
        vec.reset()
        for n in range(1, 6):  # failures 1..5 are restarted
            _, _, _, trunc, infos = vec.step([0])
            assert trunc[0] and infos[0]["restarted"] and vec.restarts == n
        with pytest.raises(RuntimeError) as err:
            vec.step([0])  # failure 6
        message = str(err.value)
        assert "\n" not in message
        assert "env 0" in message and "ScriptedEnv[always-fails]" in message
        assert "ValueError: scripted failure at step 1" in message and "6 consecutive" in message
        assert vec.restarts == 5 and vec.worker_pids() == []
    finally:
        vec.close()


def test_successful_step_resets_the_consecutive_count():
    vec = SubprocVecEnv([ScriptedEnvFactory("every-2nd", fail_every=2, episode_len=100)], seeds=(0,),
                        context="forkserver")
    try:
        vec.reset()
        truncs = [bool(vec.step([0])[3][0]) for _ in range(14)]  # 7 failures, never two in a row
        assert truncs == [False, True] * 7 and vec.restarts == 7
    finally:
        vec.close()


def test_failures_during_construction_and_reset_are_retried():
    factories = [
        BuildFailFactory(fail_seeds=(4,), name="bad-build"),
        ScriptedEnvFactory("bad-reset", fail_reset_seeds=(5,)),
    ]
    vec = SubprocVecEnv(factories, seeds=(4, 5), context="forkserver")
    try:
        assert vec.restarts_per_env == [1, 0]  # the construction failure was restarted with seed 4 + 7919
        obs, infos = vec.reset()
        assert vec.restarts_per_env == [1, 1] and vec.restarts == 2
        assert infos[1]["restarted"] and infos[1]["error"] == "ValueError: scripted reset failure for seed 5"
        np.testing.assert_array_equal(obs[0], _reference(factories[0], 4 + 7919, [])[0][0])
        np.testing.assert_array_equal(obs[1], _reference(factories[1], 5 + 7919, [])[0][0])
        _, reward, _, trunc, _ = vec.step([0, 1])
        assert reward.tolist() == [1.0, np.float32(1.1)] and not trunc.any()
    finally:
        vec.close()


def test_close_leaves_no_worker_alive():
    vec = SubprocVecEnv([ScriptedEnvFactory("a"), ScriptedEnvFactory("b")], seeds=SEEDS, context="forkserver")
    vec.reset()
    pids = vec.worker_pids()
    assert len(pids) == 2 and all(_pid_alive(p) for p in pids)
    vec.close()
    assert not any(_pid_alive(p) for p in pids) and vec.worker_pids() == []
    vec.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        vec.step([0, 0])


def test_atexit_hook_kills_remaining_workers(monkeypatch):
    vec = SubprocVecEnv([ScriptedEnvFactory("left-open")], seeds=(1,), context="forkserver")
    pids = vec.worker_pids()
    ours = {w.process: os.getpid() for w in vec._workers}
    monkeypatch.setattr(env_workers, "_LIVE_WORKERS", ours)  # leave other tests' workers alone
    env_workers._kill_remaining_workers()
    assert pids and not any(_pid_alive(p) for p in pids) and ours == {}
    vec.close()
