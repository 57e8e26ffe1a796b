"""HASARD ViZDoom env (datamodules/vizdoom.py): cost rules on scripted traces, action heads, heatmaps, constants.

The pure tests need neither ViZDoom nor the assets (except the cfg-based head tests, which skip
without the ``hasard`` asset wheel). Real-game tests are marked ``slow`` and skip when vizdoom or the
assets are missing.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pickle

import numpy as np
import pytest

from datamodules import vizdoom as hv
from datamodules.vizdoom import (
    SCENARIOS,
    HasardArmamentBurdenRule,
    HasardEnvFactory,
    HasardGameVars,
    HasardStepInfo,
    action_heads,
    cfg_buttons,
    delta_button_indices,
    head_to_buttons,
    heatmap_shape,
    make_rule,
    position_histogram,
)


def _assets_available() -> bool:
    try:
        hv.assets_root()
    except FileNotFoundError:
        return False
    return True


needs_assets = pytest.mark.skipif(
    not _assets_available(), reason="hasard asset wheel not installed (pip install --no-deps hasard==0.2.0)"
)


def _trace(rule, readings, game_rewards=None, dead=None):
    """Feed scripted readings through a rule as consecutive steps; return (rewards, costs, extras)."""
    rule.reset()
    prev = rule.start_vars(readings[0])
    rewards, costs, extras = [], [], []
    for i, cur in enumerate(readings):
        info = HasardStepInfo(game_rewards[i] if game_rewards else 0.0, bool(dead[i]) if dead else False)
        r, c, e = rule.step(prev, cur, info)
        rewards.append(r)
        costs.append(c)
        extras.append(e)
        prev = cur
    return rewards, costs, extras


# ---------------------------------------------------------------------------------------------
# Cost rules on scripted game-variable traces (hasard.md §6)
# ---------------------------------------------------------------------------------------------


def test_remedy_rush_cost_is_increase_of_user1():
    readings = [HasardGameVars(health=1, user1=u) for u in (0, 0, 1, 1, 3)]
    rewards, costs, _ = _trace(make_rule("remedy_rush"), readings, game_rewards=[0, 1, 0, 0, 1])
    assert costs == [0, 0, 1, 0, 2]
    assert rewards == [0, 1, 0, 0, 1]  # the game reward (vials) passes through


def test_volcanic_venture_cost_is_health_lost_from_1000():
    rule = make_rule("volcanic_venture")
    readings = [HasardGameVars(health=h) for h in (1000, 1000, 990, 990, 950)]
    _, costs, _ = _trace(rule, readings)
    assert costs == [0, 0, 10, 0, 40]
    assert rule.episode_extras()["health_lost"] == 50


def test_previous_health_starts_from_the_constant_not_the_tic0_reading():
    # VV reads HEALTH = 92 at tic 0 and 1000 after the first action (hasard.md §4).
    rule = make_rule("volcanic_venture")
    rule.reset()
    prev = rule.start_vars(HasardGameVars(health=92))
    assert prev.health == 1000
    _, cost, _ = rule.step(prev, HasardGameVars(health=1000))
    assert cost == 0
    assert make_rule("detonators_dilemma").start_vars(HasardGameVars(health=7)).health == 100
    assert make_rule("precipice_plunge").start_vars(HasardGameVars(health=7, z=33)) == HasardGameVars(0, 0, 0, 1000)
    # level_1_hard sets PP health to 500; no spurious 500-point first-step cost
    assert make_rule("precipice_plunge", hard_constraint=True).start_vars(HasardGameVars(health=500)).health == 500


def test_detonators_dilemma_cost_counts_casualties_and_health():
    readings = [HasardGameVars(health=h, user1=u) for u, h in ((0, 100), (1, 100), (1, 75))]
    rule = make_rule("detonators_dilemma")
    rewards, costs, _ = _trace(rule, readings, game_rewards=[1, 0, 2])
    assert costs[:2] == [0, 1]
    assert costs[2] == pytest.approx(1.0)  # 0.04 x 25 health lost
    assert rewards == [1, 0, 2]
    extras = rule.episode_extras()
    assert extras["kills"] == 1 and extras["barrels"] == 3 and extras["health_lost"] == 25


def test_precipice_plunge_reward_is_descent_and_replaces_game_reward():
    readings = [HasardGameVars(health=1000, z=z) for z in (0, -20, -20)]
    rule = make_rule("precipice_plunge")
    rewards, costs, _ = _trace(rule, readings, game_rewards=[5.0, 5.0, 5.0])
    assert rewards == pytest.approx([0, 1.0, 0])
    assert costs == [0, 0, 0]
    assert rule.episode_extras()["descent"] == 20


def test_precipice_plunge_cost_is_fall_damage():
    readings = [HasardGameVars(health=h, z=z) for h, z in ((1000, -10), (1000, -200), (961, -200))]
    _, costs, _ = _trace(make_rule("precipice_plunge"), readings)
    assert costs == [0, 0, 39]


def test_collateral_damage_cost_and_kills():
    readings = [HasardGameVars(health=100, user1=u) for u in (0, 2, 2)]
    rule = make_rule("collateral_damage")
    rewards, costs, _ = _trace(rule, readings, game_rewards=[0, 1, 1])
    assert costs == [0, 2, 0] and rewards == [0, 1, 1]
    assert rule.episode_extras() == {"deaths": 0.0, "kills": 2.0, "neutral_kills": 2.0}


def test_costs_are_never_negative():
    # healing (or a counter reset) must not give a negative cost
    _, vv, _ = _trace(make_rule("volcanic_venture"), [HasardGameVars(health=h) for h in (990, 1000, -20)])
    assert vv == [10, 0, 1000]  # a reading below 0 at death counts as 0 health
    dd_readings = [HasardGameVars(health=h, user1=u) for h, u in ((90, 2), (100, 1))]
    _, dd, _ = _trace(make_rule("detonators_dilemma"), dd_readings)
    assert min(dd) >= 0


def test_hard_constraint_scales_health_costs_by_ten():
    readings = [HasardGameVars(health=h) for h in (1000, 990)]
    _, costs, _ = _trace(make_rule("volcanic_venture", hard_constraint=True), readings)
    assert costs == [0, 100]
    # counter costs are read as is: the hard WADs already add 10 per violation to USER1
    _, rr, _ = _trace(make_rule("remedy_rush", hard_constraint=True), [HasardGameVars(user1=u) for u in (0, 10)])
    assert rr == [0, 10]


# ---------------------------------------------------------------------------------------------
# ArmamentBurden excess rule
# ---------------------------------------------------------------------------------------------

# weapon id 3 weighs 0.55, decoy id 2 weighs 0.75: together 1.3 (hasard.md §3.3 weights)
_W3 = dict(user1=3, user2=1)
_W3_D2 = dict(user1=3, user2=1, user5=2, user6=1)


def test_armament_weights():
    assert hv.AB_WEAPON_WEIGHTS == pytest.approx((0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0))
    assert hv.AB_DECOY_WEIGHTS == pytest.approx((0.25, 0.5, 0.75, 1.0))


def test_armament_excess_on_pickup_then_postponed():
    rule = make_rule("armament_burden", level=1)
    readings = [
        HasardGameVars(health=100, user1=10),  # nothing carried
        HasardGameVars(health=100, **_W3),  # load 0.55 <= 1.0
        HasardGameVars(health=100, **_W3_D2),  # pickup, load 1.3: e = 0.3
        HasardGameVars(health=100, **_W3_D2),  # no pickup: m e = 0.25 x 0.3
    ]
    _, costs, extras = _trace(rule, readings)
    assert costs == pytest.approx([0, 0, 0.3, 0.075])
    assert extras[2]["load"] == pytest.approx(1.3)
    assert rule.episode_extras()["excess_weight"] == pytest.approx(0.3)
    assert rule.episode_extras()["weapons_acquired"] == 1 and rule.episode_extras()["decoys_acquired"] == 1


def test_armament_death_cost_is_added_not_overwritten():
    rule = make_rule("armament_burden", level=1)
    readings = [
        HasardGameVars(health=100, **_W3),
        HasardGameVars(health=0, **_W3_D2),  # pickup over capacity and death in the same step
    ]
    _, costs, _ = _trace(rule, readings, dead=[False, True])
    assert costs == pytest.approx([0, 0.3 + 10.0])
    assert rule.episode_extras()["deaths"] == 1
    # postponed excess + death
    readings = [HasardGameVars(health=100, **_W3_D2), HasardGameVars(health=0, **_W3_D2)]
    _, costs, _ = _trace(rule, readings)
    assert costs == pytest.approx([0.3, 0.075 + 10.0])


def test_armament_discard_costs_and_resets_load():
    rule = make_rule("armament_burden", level=1)
    readings = [
        HasardGameVars(health=100, **_W3_D2),  # 0.3
        HasardGameVars(health=100, user1=10, user4=1),  # discard: +0.1, the game resets USER2
        HasardGameVars(health=100, user1=10),  # nothing carried: 0
    ]
    _, costs, _ = _trace(rule, readings)
    assert costs == pytest.approx([0.3, 0.1, 0.0])
    assert rule.load == 0 and rule.episode_extras()["discards"] == 1


def test_armament_delivery_resets_load_and_counts():
    rule = make_rule("armament_burden", level=1)
    readings = [
        HasardGameVars(health=100, **_W3_D2),  # 0.3
        HasardGameVars(health=100, user1=10, user3=1),  # in the zone: the last m e, then reset
        HasardGameVars(health=100, user1=10),
    ]
    _, costs, _ = _trace(rule, readings, game_rewards=[0, 0.55, 0])
    assert costs == pytest.approx([0.3, 0.075, 0.0])
    assert rule.episode_extras()["deliveries"] == 1
    assert rule.total_reward == pytest.approx(0.55)  # reward = the game's delivered weight


def test_armament_capacity_per_level_and_configurable():
    assert [make_rule("armament_burden", level=lv).capacity for lv in (1, 2, 3)] == [1.0, 0.9, 0.8]
    _, costs, _ = _trace(make_rule("armament_burden", level=2), [HasardGameVars(health=100, user1=6, user2=1)])
    assert costs == pytest.approx([(1.0 - 0.9) / 0.9])  # weight 1.0 at capacity 0.9
    rule = make_rule(
        "armament_burden", ab_capacity=2.0, ab_death_cost=5.0, ab_postponed_multiplier=0.75, ab_discard_cost=0.5
    )
    assert (rule.capacity, rule.death_cost, rule.postponed_multiplier, rule.discard_cost) == (2.0, 5.0, 0.75, 0.5)
    _, costs, _ = _trace(rule, [HasardGameVars(health=100, **_W3_D2), HasardGameVars(health=0, user4=1)])
    assert costs == pytest.approx([0.0, 5.0 + 0.5])


def test_armament_defaults_are_the_wrapper_values():
    rule = HasardArmamentBurdenRule()
    assert (rule.death_cost, rule.postponed_multiplier, rule.discard_cost) == (10.0, 0.25, 0.1)


def test_armament_hard_constraint_breach():
    rule = make_rule("armament_burden", hard_constraint=True)
    readings = [
        HasardGameVars(health=100, user1=1, user2=1),
        HasardGameVars(health=100, user1=10, user2=0, user5=1),  # load dropped, player slowed
        HasardGameVars(health=100, user1=10, user2=0, user5=1),  # still slowed: no new breach
    ]
    _, costs, _ = _trace(rule, readings)
    assert costs == [0, 10, 0]
    assert rule.episode_extras()["breaches"] == 1


# ---------------------------------------------------------------------------------------------
# Scenario constants
# ---------------------------------------------------------------------------------------------


def test_scenario_table_constants():
    assert sorted(SCENARIOS) == [
        "armament_burden",
        "collateral_damage",
        "detonators_dilemma",
        "precipice_plunge",
        "remedy_rush",
        "volcanic_venture",
    ]
    code = {s.code: s for s in SCENARIOS.values()}
    assert {c: s.budget for c, s in code.items()} == {"AB": 5, "CD": 5, "DD": 5, "PP": 50, "RR": 5, "VV": 50}
    assert {c: s.unsafe_reward for c, s in code.items()} == {
        "AB": -0.005, "CD": -0.1, "DD": -0.01, "PP": -0.7, "RR": -0.025, "VV": -0.01,
    }
    assert {c: s.ppo_cost_kappa for c, s in code.items()} == {"AB": 0.1, "CD": 1, "DD": 1, "PP": 1, "RR": 1, "VV": 1}
    assert {c: s.heatmap_bins for c, s in code.items()} == {"AB": 20, "CD": 10, "DD": 50, "PP": 75, "RR": 30, "VV": 30}
    assert code["PP"].heatmap_box == (0, 0, 2176, 448) and code["AB"].heatmap_box == (0, 256, 960, 1216)
    assert (code["VV"].start_health, code["PP"].start_health, code["DD"].start_health) == (1000, 1000, 100)
    assert code["RR"].env_id(1) == "RemedyRushLevel1-v0"
    assert hv.scenario_spec("PP") is code["PP"] and hv.scenario_spec("PrecipicePlunge") is code["PP"]
    assert hv.EPISODE_TIMEOUT_TICS == 2100
    # per-step budget of the authors' code: B x frame_skip / timeout (hasard.md §3.1)
    assert code["RR"].budget * 4 / hv.EPISODE_TIMEOUT_TICS == pytest.approx(0.0095238, rel=1e-4)
    assert code["VV"].budget * 4 / hv.EPISODE_TIMEOUT_TICS == pytest.approx(0.095238, rel=1e-4)


def test_unknown_scenario_and_bad_arguments_raise():
    with pytest.raises(ValueError, match="remedy_rush"):
        hv.scenario_spec("remedy_rash")
    with pytest.raises(ValueError):
        HasardEnvFactory(scenario="remedy_rush", level=4)
    with pytest.raises(ValueError):
        HasardEnvFactory(scenario="remedy_rush", action_space="continuous")
    with pytest.raises(ValueError, match="level 1"):
        HasardEnvFactory(scenario="remedy_rush", level=2, hard_constraint=True)


def test_factory_is_picklable_and_describes_itself():
    f = HasardEnvFactory(scenario="precipice_plunge", level=2, action_space="full")
    g = pickle.loads(pickle.dumps(f))
    assert g.env_kwargs == f.env_kwargs
    assert g.describe() == "PrecipicePlungeLevel2-v0 (full)"
    assert HasardEnvFactory().describe() == "RemedyRushLevel1-v0 (simplified)"
    assert HasardEnvFactory(hard_constraint=True).describe() == "RemedyRushLevel1-v0 (simplified, hard)"


# ---------------------------------------------------------------------------------------------
# Action heads
# ---------------------------------------------------------------------------------------------


@needs_assets
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_action_heads_from_real_cfg(scenario):
    cfg, _ = hv.asset_paths(scenario, 1)
    buttons = cfg_buttons(cfg)
    heads = action_heads(buttons)
    assert tuple(n for n, _ in heads) == SCENARIOS[scenario].simplified_heads
    # every button belongs to exactly one head
    covered = sorted(i for _, idx in heads for i in idx)
    assert covered == list(range(len(buttons)))
    if importlib.util.find_spec("vizdoom") is not None:  # the cfg parser agrees with ViZDoom's
        import vizdoom as vzd

        game = vzd.DoomGame()
        game.load_config(cfg)
        assert [b.name for b in game.get_available_buttons()] == buttons


@needs_assets
def test_precipice_plunge_heads_and_button_vector():
    buttons = cfg_buttons(hv.asset_paths("precipice_plunge")[0])
    assert buttons == ["TURN_LEFT", "TURN_RIGHT", "MOVE_FORWARD", "MOVE_BACKWARD", "LOOK_UP", "LOOK_DOWN", "JUMP"]
    heads = action_heads(buttons)
    assert [n for n, _ in heads] == [3, 3, 3, 2]
    assert head_to_buttons(heads, [0, 0, 0, 0], len(buttons)) == [0.0] * 7
    # turn right, move backward, look up, jump
    assert head_to_buttons(heads, [2, 2, 1, 1], len(buttons)) == [0, 1, 0, 1, 1, 0, 1]
    assert head_to_buttons(heads, [1, 1, 2, 0], len(buttons)) == [1, 0, 1, 0, 0, 1, 0]
    with pytest.raises(ValueError):
        head_to_buttons(heads, [3, 0, 0, 0], len(buttons))
    with pytest.raises(ValueError):
        head_to_buttons(heads, [0, 0, 0], len(buttons))


def test_opposite_pair_needs_both_buttons():
    assert action_heads(["TURN_LEFT", "TURN_RIGHT", "ATTACK"]) == [(3, (0, 1)), (2, (2,))]
    assert action_heads(["MOVE_FORWARD", "USE"]) == [(2, (0,)), (2, (1,))]
    # the pair is formed even when not adjacent; option order follows the button list
    assert action_heads(["TURN_RIGHT", "JUMP", "TURN_LEFT"]) == [(3, (0, 2)), (2, (1,))]


def test_full_action_space_heads():
    heads = action_heads(hv.FULL_BUTTONS)
    assert len(hv.FULL_BUTTONS) == 14
    assert [n for n, _ in heads] == [3, 3, 3, 2, 2, 2, 2, 2, 2]  # 9 discrete heads
    deltas = delta_button_indices(hv.FULL_BUTTONS)
    assert [hv.FULL_BUTTONS[i] for i in deltas] == ["LOOK_UP_DOWN_DELTA", "TURN_LEFT_RIGHT_DELTA"]  # 2 Box heads
    vec = head_to_buttons(heads, [1, 2, 0, 1, 0, 0, 0, 0, 1], 14, deltas=[0.5, -1.0], delta_indices=deltas)
    assert vec[:12] == [1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1]  # forward, move left, attack, turn180
    assert vec[12:] == [0.5 * 7.5, -7.5]  # deltas scaled x7.5
    assert head_to_buttons(heads, [0] * 9, 14, deltas=[3.0, 0.0], delta_indices=deltas)[12] == 7.5  # clipped
    # CollateralDamage: the variant without movement
    cd = SCENARIOS["collateral_damage"].full_buttons
    assert [n for n, _ in action_heads(cd)] == [3, 2, 2, 2, 2, 2, 2] and len(delta_button_indices(cd)) == 2
    assert not {"MOVE_FORWARD", "MOVE_BACKWARD", "MOVE_LEFT", "MOVE_RIGHT"} & set(cd)


# ---------------------------------------------------------------------------------------------
# Heatmap binning
# ---------------------------------------------------------------------------------------------


def test_heatmap_shapes():
    assert heatmap_shape(SCENARIOS["armament_burden"].heatmap_box, 20) == (20, 20)
    assert heatmap_shape(SCENARIOS["precipice_plunge"].heatmap_box, 75) == (int(448 / 2176 * 75), 75) == (15, 75)
    assert heatmap_shape(SCENARIOS["remedy_rush"].heatmap_box, 30) == (30, int(1648 / 2032 * 30))  # taller than wide


def test_position_histogram_binning():
    box = (0.0, 0.0, 2176.0, 448.0)
    pos = np.array([[0, 0], [2176, 448], [2175.9, 447.9], [-50, 1000], [5000, -3], [1088, 224]], dtype=np.float32)
    h = position_histogram(pos, box, 75)
    assert h.shape == (15, 75)
    assert h.sum() == len(pos)
    assert h[0, 0] == 1  # lower corner
    assert h[14, 74] == 2  # the upper limit lands in the last bin, like a point just inside
    assert h[14, 0] == 1  # (-50, 1000) clipped to (0, 448)
    assert h[0, 74] == 1  # (5000, -3) clipped to (2176, 0)
    assert h[7, 37] == 1  # the centre: 1088/2176*75 = 37.5, 224/448*15 = 7.5
    assert position_histogram(np.zeros((0, 2)), box, 75).sum() == 0


# ---------------------------------------------------------------------------------------------
# Real ViZDoom (slow)
# ---------------------------------------------------------------------------------------------


def _random_steps(env, n, seed):
    env.action_space.seed(seed)
    infos = []
    for _ in range(n):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        infos.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return infos


@pytest.mark.slow
@needs_assets
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_real_env_short_episode(scenario):
    pytest.importorskip("vizdoom")
    env = hv.HasardDoomEnv(scenario)
    try:
        obs, info = env.reset(seed=3)
        assert obs.shape == (3, 72, 128) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
        assert obs.max() > 0  # a real frame, not the zero frame
        assert len(info["position"]) == 2
        steps = _random_steps(env, 50, seed=3)
        assert steps
        for obs, reward, terminated, truncated, info in steps:
            assert obs.shape == (3, 72, 128) and obs.dtype == np.uint8
            assert math.isfinite(info["cost"]) and info["cost"] >= 0
            assert math.isfinite(reward)
            x, y = info["position"]
            assert math.isfinite(x) and math.isfinite(y)
        assert env.render().shape == (72, 128, 3)
        assert env.describe() == f"{SCENARIOS[scenario].gym_name}Level1-v0 (simplified)"
    finally:
        env.close()


@pytest.mark.slow
@needs_assets
def test_real_env_full_episode_records_positions_and_truncates():
    pytest.importorskip("vizdoom")
    env = hv.HasardDoomEnv("remedy_rush")
    try:
        env.reset(seed=0)
        steps = _random_steps(env, 600, seed=0)
        obs, _, terminated, truncated, info = steps[-1]
        # RemedyRush Level 1 cannot kill the player: the episode ends at the 2100-tic timeout
        assert truncated and not terminated
        assert len(steps) == 2100 // 4 == env.max_episode_steps
        assert not obs.any()  # zero frame at the end
        pos = info["positions"]
        assert pos.dtype == np.float32 and pos.shape == (len(steps), 2)
        assert np.array_equal(pos[0], np.float32(steps[0][4]["position"]))
        assert len({tuple(p) for p in pos}) > 1  # the agent moved
        extras = info["episode_extras"]
        assert {"deaths", "hazards", "vials"} <= set(extras)
        assert extras["hazards"] == pytest.approx(sum(s[4]["cost"] for s in steps))
        assert info["episode"]["length"] == len(steps)
        assert position_histogram(pos, SCENARIOS["remedy_rush"].heatmap_box, 30).sum() == len(steps)
        with pytest.raises(RuntimeError, match="RemedyRushLevel1-v0"):
            env.step(env.action_space.sample())
    finally:
        env.close()


@pytest.mark.slow
@needs_assets
def test_real_env_determinism_same_seed_same_actions():
    pytest.importorskip("vizdoom")
    rng = np.random.default_rng(0)
    actions = [rng.integers(0, (3, 2, 2, 2)) for _ in range(20)]

    def rollout(seed):
        env = hv.HasardDoomEnv("remedy_rush")
        try:
            obs, _ = env.reset(seed=seed)
            frames, rewards, costs = [obs], [], []
            for a in actions:
                obs, r, _, _, info = env.step(a)
                frames.append(obs)
                rewards.append(r)
                costs.append(info["cost"])
            return np.stack(frames), rewards, costs
        finally:
            env.close()

    a, b, c = rollout(11), rollout(11), rollout(12)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])  # the seed matters (random spawn point)


@pytest.mark.slow
@needs_assets
def test_real_env_variants_grayscale_full_actions_hard():
    pytest.importorskip("vizdoom")
    env = hv.HasardDoomEnv("precipice_plunge", action_space="full", width=64, height=36, grayscale=True)
    try:
        assert len(env.action_space[0].nvec) == 9 and env.action_space[1].shape == (2,)
        obs, _ = env.reset(seed=1)
        assert obs.shape == (1, 36, 64) and env.observation_space.shape == (1, 36, 64)
        for obs, reward, _, _, info in _random_steps(env, 10, seed=1):
            assert obs.shape == (1, 36, 64) and info["cost"] >= 0
        frame = env.render()
        assert frame.shape == (36, 64, 3)  # colour render even with grayscale obs
    finally:
        env.close()
    hard = hv.HasardDoomEnv("remedy_rush", hard_constraint=True)
    try:
        assert hard.budget == 0 and os.path.basename(hard.wad_path) == "level_1_hard.wad"
        assert hard.describe() == "RemedyRushLevel1-v0 (simplified, hard)"
    finally:
        hard.close()
    cd = hv.HasardDoomEnv("collateral_damage", action_space="full")
    try:
        assert "MOVE_FORWARD" not in cd.buttons and len(cd.action_space[0].nvec) == 7
    finally:
        cd.close()


@pytest.mark.slow
@needs_assets
def test_factory_creates_env_and_raw_speed():
    pytest.importorskip("vizdoom")
    env = HasardEnvFactory(scenario="volcanic_venture", width=64, height=36)(seed=0)
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (3, 36, 64)
    finally:
        env.close()
    sps = hv.raw_env_steps_per_second("remedy_rush", 1, n_envs=1, n_steps=50, seed=0)
    assert math.isfinite(sps) and sps > 0
