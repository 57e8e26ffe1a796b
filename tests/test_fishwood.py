"""trainer/fishwood.py: the Fishwood MDP (moc.md §5) and its analytic front.

Statistical checks run 2000 seeded episodes and allow 3 (single checks) or 4 (many checks) standard errors
of the mean, so they are deterministic and far from flaky; exact values (zero fish in the woods, the front's
hand-computed points) are checked exactly.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from trainer.fishwood import (
    MOVE,
    RIVER,
    WOODS,
    WORK,
    FishwoodVec,
    fishwood_front,
    scripted_split_policy,
    split_returns,
)

H, PF, PW = 50, 0.1, 0.9


def rollout(env: FishwoodVec, policy) -> np.ndarray:
    """Run one batch of episodes to the end; returns the per-episode returns ``[B, 2]``."""
    obs = env.reset()
    total = np.zeros((env.n_envs, 2))
    for step in range(env.horizon):
        obs, rewards, done = env.step(policy(obs))
        total += rewards
        assert done.all() == (step == env.horizon - 1) and done.any() == done.all()
    np.testing.assert_array_equal(total, env.returns)
    return total


def test_observation_layout_and_episode_end():
    env = FishwoodVec(4, horizon=3, start="river", seed=1)
    obs = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (4, 3)
    np.testing.assert_array_equal(obs, [[0, 1, 0]] * 4)
    obs, rewards, done = env.step(np.array([WORK, MOVE, WORK, MOVE]))
    assert rewards.dtype == np.float32 and rewards.shape == (4, 2) and done.dtype == bool
    np.testing.assert_array_equal(obs[:, :2], [[0, 1], [1, 0], [0, 1], [1, 0]])
    np.testing.assert_allclose(obs[:, 2], 1 / 3)
    assert np.all(rewards[[1, 3]] == 0)  # a move collects nothing
    assert np.all(rewards[:, 1] == 0)  # no wood at the river
    env.step(np.zeros(4, dtype=np.int64))
    obs, _, done = env.step(np.zeros(4, dtype=np.int64))
    assert done.all() and np.allclose(obs[:, 2], 1.0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4, dtype=np.int64))
    env.reset()  # a new batch of episodes
    env.step(np.zeros(4, dtype=np.int64))


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError, match="reset"):
        FishwoodVec(2).step(np.zeros(2, dtype=np.int64))


def _random_trajectory(seed: int, start: str = "random") -> list[np.ndarray]:
    env = FishwoodVec(8, horizon=20, start=start, seed=seed)
    actions = np.random.default_rng(123)
    out = [env.reset()]
    for _ in range(20):
        obs, rewards, _ = env.step(actions.integers(0, 2, size=8))
        out += [obs, rewards]
    return out


def test_same_seed_same_trajectory():
    a, b = _random_trajectory(0), _random_trajectory(0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = _random_trajectory(1)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_state_round_trip_mid_episode_continues_identically():
    actions = np.random.default_rng(7).integers(0, 2, size=(30, 16))
    env = FishwoodVec(16, horizon=30, start="random", seed=3)
    env.reset()
    for a in actions[:12]:
        env.step(a)
    state = pickle.loads(pickle.dumps(env.get_state()))
    straight = [env.step(a) for a in actions[12:]]

    resumed = FishwoodVec(16, horizon=30, start="random", seed=99)  # another seed: the state must override it
    resumed.set_state(state)
    again = [resumed.step(a) for a in actions[12:]]
    for (o1, r1, d1), (o2, r2, d2) in zip(straight, again):
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(env.returns, resumed.returns)
    assert sum(r.sum() for _, r, _ in straight) > 0  # the continuation collected something: not vacuous
    np.testing.assert_array_equal(env.reset(), resumed.reset())  # the generator state came along too


def test_set_state_rejects_other_settings_and_keys():
    env = FishwoodVec(4, seed=0)
    state = env.get_state()
    with pytest.raises(ValueError, match="settings"):
        FishwoodVec(4, horizon=10).set_state(state)
    with pytest.raises(ValueError, match="keys"):
        env.set_state({k: v for k, v in state.items() if k != "t"})


def test_stay_in_woods_gives_wood_only():
    returns = rollout(FishwoodVec(2000, seed=0), lambda obs: np.zeros(len(obs), dtype=np.int64))
    assert np.all(returns[:, 0] == 0)
    se = math.sqrt(H * PW * (1 - PW) / 2000)
    assert abs(returns[:, 1].mean() - PW * H) < 3 * se  # 45


def test_move_to_river_then_stay_gives_fish_only():
    returns = rollout(FishwoodVec(2000, seed=1), scripted_split_policy(0, H))
    assert np.all(returns[:, 1] == 0)
    se = math.sqrt((H - 1) * PF * (1 - PF) / 2000)
    assert abs(returns[:, 0].mean() - PF * (H - 1)) < 3 * se  # 4.9


def test_front_hand_values():
    # H = 3 from the woods: stay (0, 2.7); k=1 (0.1, 0.9); k=0 (0.2, 0); k=2 (0, 1.8) is dominated by stay
    np.testing.assert_allclose(fishwood_front(3, 0.1, 0.9), [[0.0, 2.7], [0.1, 0.9], [0.2, 0.0]])
    np.testing.assert_allclose(fishwood_front(1), [[0.0, 0.9]])  # one step: no time to move and fish
    front = fishwood_front()
    assert front.shape == (H, 2) and np.all(np.diff(front[:, 0]) > 0) and np.all(np.diff(front[:, 1]) < 0)
    np.testing.assert_allclose(front[0], [0.0, PW * H])  # stay
    np.testing.assert_allclose(front[-1], [PF * (H - 1), 0.0])  # move at once, fish the rest
    # linear with one kink: every split lies on wood = PW (H - 1) - (PW / PF) fish; stay is PW above it
    line = PW * (H - 1) - (PW / PF) * front[:, 0]
    np.testing.assert_allclose(front[1:, 1], line[1:], atol=1e-9)
    assert front[0, 1] - line[0] == pytest.approx(PW)


def test_front_river_start_mirrors_woods_start():
    river = fishwood_front(20, fish_prob=0.3, wood_prob=0.6, start="river")
    woods = fishwood_front(20, fish_prob=0.6, wood_prob=0.3, start="woods")[:, ::-1]
    np.testing.assert_allclose(river, woods[np.argsort(woods[:, 0])])


@pytest.mark.parametrize("start", ["woods", "river"])
def test_split_policies_match_the_front(start):
    front = fishwood_front(start=start)
    loc = WOODS if start == "woods" else RIVER
    for k in (0, 10, 25, 48, 49, 50):
        expected = split_returns(k, H, PF, PW, loc)
        returns = rollout(FishwoodVec(2000, start=start, seed=10 + k), scripted_split_policy(k, H))
        se = returns.std(axis=0) / math.sqrt(len(returns)) + 1e-9
        assert np.all(np.abs(returns.mean(axis=0) - expected) < 4 * se + 1e-9), (k, returns.mean(0), expected)
        on_front = bool(np.any(np.all(np.isclose(front, expected), axis=1)))
        assert on_front == (k != H - 1), k  # moving on the last step wastes it: dominated by staying


def test_random_start_front_contains_the_stay_policy():
    front = fishwood_front(start="random")
    stay = 0.5 * (split_returns(H, start_location=WOODS) + split_returns(H, start_location=RIVER))
    assert np.any(np.all(np.isclose(front, stay), axis=1))
    returns = rollout(FishwoodVec(2000, start="random", seed=5), lambda obs: np.zeros(len(obs), dtype=np.int64))
    se = returns.std(axis=0) / math.sqrt(len(returns))
    assert np.all(np.abs(returns.mean(axis=0) - stay) < 4 * se)  # (2.5, 22.5)
    assert np.all(np.diff(front[:, 0]) > 0) and np.all(np.diff(front[:, 1]) < 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fish_prob": -0.1}, {"fish_prob": 1.5}, {"wood_prob": 2.0}, {"horizon": 0}, {"horizon": 2.5},
        {"start": "lake"}, {"n_envs": 0},
    ],
)  # fmt: skip
def test_bad_settings_raise(kwargs):
    args = {"n_envs": 2, **kwargs}
    with pytest.raises(ValueError):
        FishwoodVec(**args)
    if "n_envs" not in kwargs:
        with pytest.raises(ValueError):
            fishwood_front(**kwargs)


@pytest.mark.parametrize("actions", [np.zeros(3), np.zeros((2, 1)), np.array([0, 2]), np.array([0.5, 0]), 0])
def test_bad_actions_raise(actions):
    env = FishwoodVec(2)
    env.reset()
    with pytest.raises(ValueError):
        env.step(actions)
