"""Text-env adapters and the supervised env pool (datamodules/text_envs.py; q_evolve.md §4, §5).

The toy env and the pool run everywhere; TextWorld, TextWorldExpress and ScienceWorld tests skip when their
package (or Java, for the last two) is missing. One small TextWorld game pair is generated per module.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from datamodules import text_envs
from datamodules.text_envs import (
    TextEnvPool,
    TextEnvUsageError,
    TextStep,
    TextTask,
    ToyTextAdapter,
    check_java,
    clean_textworld_feedback,
    generate_textworld_games,
    make_adapter,
    normalise_command,
    score_deltas,
    validate_task,
)

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="Java 17 runtime not on PATH")


def _play(adapter: ToyTextAdapter | TextEnvPool, actions: list[str], slot: int = 0) -> list[TextStep]:
    if isinstance(adapter, TextEnvPool):
        return [adapter.step(slot, a) for a in actions]
    return [adapter.step(a) for a in actions]


# ----------------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------------


def test_score_deltas_difference_cumulative_scores():
    assert score_deltas([0, 1, 1, 3]) == [0, 1, 0, 2]
    assert score_deltas([0, 1, 1, 3], max_score=4) == [0, 0.25, 0, 0.5]
    assert score_deltas([]) == []
    with pytest.raises(ValueError, match="max_score"):
        score_deltas([0, 1], max_score=0)


def test_clean_textworld_feedback_drops_prompt_and_status_line():
    raw = "\nYou open the cuboid locker, revealing a book.\n\n\n>" + " " * 40 + "-= Studio =-0/4"
    assert clean_textworld_feedback(raw) == "You open the cuboid locker, revealing a book."
    assert clean_textworld_feedback("\nThat's not a verb I recognise.\n\n>   -= Cellar =-0/1") == \
        "That's not a verb I recognise."
    assert normalise_command("  Take   Red KEY ") == "take red key"


# ----------------------------------------------------------------------------------------------------
# Toy room games
# ----------------------------------------------------------------------------------------------------


def test_toy_gold_wins_on_many_seeds():
    adapter = ToyTextAdapter()
    lengths = []
    for seed in range(30):
        first = adapter.reset(TextTask("toy", "rooms", seed))
        assert first.reward == 0.0 and not first.done and first.score == 0.0
        gold = adapter.gold_actions()
        lengths.append(len(gold))
        assert 3 <= len(gold) <= 8
        assert gold[0] == first.expert_next
        steps = _play(adapter, gold)
        assert [s.reward for s in steps] == [0.0] * (len(gold) - 1) + [1.0]
        assert steps[-1].won and steps[-1].done and steps[-1].score == 1.0 and not steps[-1].lost
        assert not any(s.invalid for s in steps)
        assert all(s.done == (i == len(steps) - 1) for i, s in enumerate(steps))
    assert len(set(lengths)) >= 3  # a spread of difficulties


def test_toy_seeds_give_different_games_and_the_same_seed_the_same_game():
    adapter = ToyTextAdapter()
    firsts = [adapter.reset(TextTask("toy", "rooms", s)) for s in range(40)]
    assert len({f.obs for f in firsts}) == 40
    assert len({f.instruction for f in firsts}) >= 30
    again = ToyTextAdapter().reset(TextTask("toy", "rooms", 7))
    assert again == firsts[7]


def test_toy_expert_next_wins_after_detours():
    adapter = ToyTextAdapter(max_steps=60)
    for seed in range(20):
        rng = random.Random(seed)
        step = adapter.reset(TextTask("toy", "rooms", seed))
        for _ in range(40):
            if step.done:
                break
            assert step.expert_next in step.admissible
            action = rng.choice(step.admissible) if rng.random() < 0.4 else step.expert_next
            step = adapter.step(action)
        while not step.done:
            step = adapter.step(step.expert_next)
        assert step.won and step.expert_next is None and step.admissible == []


def test_toy_invalid_commands_and_usage_errors():
    adapter = ToyTextAdapter(max_steps=3)
    with pytest.raises(TextEnvUsageError, match="reset"):
        adapter.step("look")
    first = adapter.reset(TextTask("toy", "rooms", 1))
    assert first.admissible == sorted(first.admissible) and {"look", "inventory"} <= set(first.admissible)
    bad = adapter.step("dance wildly")
    assert bad.invalid and bad.obs == "I don't understand that." and bad.reward == 0.0 and not bad.done
    assert bad.expert_next == first.expert_next  # the state did not change
    with pytest.raises(TextEnvUsageError, match="right after reset"):
        adapter.gold_actions()
    assert adapter.step("look").invalid is False
    assert adapter.step("inventory").done  # max_steps = 3: out of steps, neither won nor lost
    with pytest.raises(ValueError, match="known games: rooms"):
        adapter.reset(TextTask("toy", "castle", 0))


# ----------------------------------------------------------------------------------------------------
# TextWorld
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tw_games(tmp_path_factory) -> list[Path]:
    pytest.importorskip("textworld", reason="textworld 1.7.0 not installed")
    cache = tmp_path_factory.mktemp("tw-cache")
    return generate_textworld_games([0, 1], cache, nb_rooms=2, nb_objects=3, quest_length=2, progress=False, workers=2)


def test_textworld_generation_is_cached_and_atomic(tw_games):
    folder = tw_games[0].parent
    assert [p.name for p in tw_games] == ["game_0.z8", "game_1.z8"]
    assert folder.parent.name == "textworld" and len(folder.name) == 12
    assert sorted(p.name for p in folder.iterdir()) == ["game_0.json", "game_0.z8", "game_1.json", "game_1.z8"]
    mtime = tw_games[0].stat().st_mtime_ns
    again = generate_textworld_games([1, 0], folder.parent.parent, nb_rooms=2, nb_objects=3, quest_length=2,
                                     progress=False)
    assert again == tw_games[::-1] and tw_games[0].stat().st_mtime_ns == mtime
    assert tw_games[0].with_suffix(".json").read_text() != tw_games[1].with_suffix(".json").read_text()


def test_textworld_games_made_side_by_side_equal_those_made_in_process(tw_games, tmp_path):
    """The fixture made its two games in two processes; one made here in this process is the same game."""
    (alone,) = generate_textworld_games([1], tmp_path, nb_rooms=2, nb_objects=3, quest_length=2, progress=False,
                                        workers=1)  # fmt: skip
    assert alone != tw_games[1]
    assert alone.with_suffix(".json").read_text() == tw_games[1].with_suffix(".json").read_text()


def test_textworld_games_made_in_a_daemonic_process_are_made_in_it(tw_games, tmp_path):
    """A pool worker (daemonic: a benchmark run) may not start processes; asked for two processes, it makes the games itself."""
    import multiprocessing as mp

    kwargs = {"nb_rooms": 2, "nb_objects": 3, "quest_length": 2, "progress": False, "workers": 2}
    proc = mp.get_context("spawn").Process(target=generate_textworld_games, args=([0, 1], tmp_path), kwargs=kwargs,
                                           daemon=True)  # fmt: skip
    proc.start()
    proc.join(240)
    assert proc.exitcode == 0
    made = sorted(tmp_path.glob("textworld/*/game_*.json"))
    assert [p.name for p in made] == ["game_0.json", "game_1.json"]
    assert [p.read_text() for p in made] == [g.with_suffix(".json").read_text() for g in tw_games]


def test_textworld_walkthrough_and_planner_win(tw_games):
    adapter = make_adapter("textworld", max_steps=20)
    try:
        firsts = []
        for path in tw_games:
            task = TextTask("textworld", str(path))
            first = adapter.reset(task)
            firsts.append(first)
            assert first.instruction and first.instruction in first.obs and first.admissible
            assert first.expert_next in first.admissible and first.score == 0.0
            gold = adapter.gold_actions()
            steps = _play(adapter, gold)
            assert steps[-1].won and steps[-1].done and steps[-1].score == 1.0
            assert sum(s.reward for s in steps) == pytest.approx(1.0)
            assert not steps[0].obs.splitlines()[-1].startswith(">")  # the prompt and status line are gone

            step = adapter.reset(task)  # a detour, then the planner (it replans from the current state)
            step = adapter.step("look")
            assert not step.invalid and step.reward == 0.0
            for _ in range(12):
                if step.done:
                    break
                step = adapter.step(step.expert_next)
            assert step.won and step.expert_next is None

            adapter.reset(task)
            bad = adapter.step("xyzzy frobnicate")
            assert bad.invalid and bad.reward == 0.0 and not bad.done
        assert firsts[0].obs != firsts[1].obs  # the seeds made different games
    finally:
        adapter.close()


def test_textworld_missing_game_file(tmp_path):
    missing = tmp_path / "nope" / "game_3.z8"
    with pytest.raises(FileNotFoundError, match="game_3.z8"):
        validate_task(TextTask("textworld", str(missing)))
    pytest.importorskip("textworld", reason="textworld 1.7.0 not installed")
    with pytest.raises(FileNotFoundError, match=str(missing)):
        make_adapter("textworld").reset(TextTask("textworld", str(missing)))


# ----------------------------------------------------------------------------------------------------
# TextWorldExpress and ScienceWorld
# ----------------------------------------------------------------------------------------------------


@needs_java
def test_twx_cookingworld_gold_path_wins():
    pytest.importorskip("textworld_express", reason="textworld-express 1.1.0 not installed")
    adapter = make_adapter("twx", max_steps=80)
    try:
        first = adapter.reset(TextTask("twx", "cookingworld", 0, "train"))
        assert first.instruction and first.admissible == sorted(first.admissible) and first.expert_next is None
        gold = adapter.gold_actions()
        steps = _play(adapter, gold)
        assert steps[-1].won and steps[-1].done and steps[-1].score == 1.0
        assert sum(s.reward for s in steps) == pytest.approx(1.0)
        assert not any(s.invalid for s in steps)
        adapter.reset(TextTask("twx", "cookingworld", 0, "train"))
        assert adapter.step("xyzzy").invalid
    finally:
        adapter.close()


@needs_java
def test_scienceworld_gold_replay_reaches_full_score():
    pytest.importorskip("scienceworld", reason="scienceworld 1.2.3 not installed")
    adapter = make_adapter("scienceworld", valid_actions=False)
    try:
        first = adapter.reset(TextTask("scienceworld", "find-living-thing", 0))
        assert "living thing" in first.instruction and first.admissible == [] and first.expert_next is None
        gold = adapter.gold_actions()
        steps = _play(adapter, gold)
        assert steps[-1].done and steps[-1].won and steps[-1].score == 1.0
        assert [s.reward for s in steps] == [0.0] * (len(steps) - 1) + [1.0]  # sparse r_env (q_evolve.md §4)
        assert not any(s.done for s in steps[:-1])
        adapter.reset(TextTask("scienceworld", "find-living-thing", 0))
        assert adapter.step("xyzzy").invalid
    finally:
        adapter.close()


# ----------------------------------------------------------------------------------------------------
# Clear errors before training
# ----------------------------------------------------------------------------------------------------


def test_unknown_names_give_one_line_errors():
    with pytest.raises(ValueError, match="known envs: toy, textworld, twx, scienceworld"):
        make_adapter("webshop")
    with pytest.raises(ValueError, match="known envs"):
        validate_task(TextTask("alfworld", "x"))
    with pytest.raises(ValueError, match="unknown split"):
        validate_task(TextTask("toy", "rooms", 0, "holdout"))
    pytest.importorskip("scienceworld", reason="scienceworld 1.2.3 not installed")
    pytest.importorskip("textworld_express", reason="textworld-express 1.1.0 not installed")
    with pytest.raises(ValueError, match="unknown ScienceWorld task 'find-unicorn'.*find-living-thing") as info:
        validate_task(TextTask("scienceworld", "find-unicorn"))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown split"):
        text_envs.scienceworld_variations("find-living-thing", "val")
    with pytest.raises(ValueError, match="unknown TextWorldExpress game 'zork'.*cookingworld"):
        validate_task(TextTask("twx", "zork"))


def test_missing_java_is_reported_before_a_jvm_starts(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    for call in (check_java, lambda: validate_task(TextTask("twx", "coin")),
                 lambda: validate_task(TextTask("scienceworld", "boil")),
                 lambda: make_adapter("twx"), lambda: make_adapter("scienceworld"),
                 lambda: TextEnvPool("scienceworld", 1)):
        with pytest.raises(ValueError, match=r"Java 17 runtime not found: .*openjdk-17-jre-headless"):
            call()
    validate_task(TextTask("toy", "rooms", 3))  # no Java needed


# ----------------------------------------------------------------------------------------------------
# The pool
# ----------------------------------------------------------------------------------------------------


class AlwaysFailingAdapter:
    """A test-only adapter whose reset works and whose every step raises (a JVM that keeps dying)."""

    def reset(self, task: TextTask) -> TextStep:
        return TextStep(obs="start", instruction="fail")

    def step(self, action: str) -> TextStep:
        raise ConnectionError("simulated JVM crash")

    def gold_actions(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


def test_pool_restarts_a_killed_worker_and_replays_the_episode():
    seed = 11
    ref_adapter = ToyTextAdapter()
    ref_adapter.reset(TextTask("toy", "rooms", seed))
    gold = ref_adapter.gold_actions()
    actions = ["look", "dance"] + gold
    reference = _play(ref_adapter, actions)
    with TextEnvPool("toy", 2) as pool:
        firsts = pool.reset_many([0, 1], [TextTask("toy", "rooms", seed), TextTask("toy", "rooms", seed + 1)])
        assert firsts[0].obs != firsts[1].obs and pool.task(1) == TextTask("toy", "rooms", seed + 1)
        assert pool.gold_actions(0) == gold
        got = [pool.step_many([0, 1], [a, "look"])[0] for a in actions[:3]]
        pid = pool._pid(0)
        os.kill(pid, signal.SIGKILL)
        got += [pool.step(0, a) for a in actions[3:]]
        assert got == reference and got[-1].won
        assert pool.restarts == 1 and pool.restarts_per_slot == [1, 0] and pool._pid(0) != pid
        with pytest.raises(TextEnvUsageError, match="right after reset"):
            pool.gold_actions(0)
        with pytest.raises(ValueError, match="known games"):  # bad input: raised as it is, no restart
            pool.reset(1, TextTask("toy", "castle"))
        assert pool.restarts == 1
        pids = [pool._pid(0), pool._pid(1)]
    for p in pids:  # closed and reaped: no orphan processes
        with pytest.raises(ProcessLookupError):
            os.kill(p, 0)


def test_pool_rejects_bad_arguments_without_restarts():
    with pytest.raises(ValueError, match="bad adapter options"):
        TextEnvPool("toy", 1, {"no_such_option": 1}, in_process=True)
    with pytest.raises(ValueError, match="known envs"):
        TextEnvPool("webshop", 1)
    with TextEnvPool("toy", 2, in_process=True) as pool:
        with pytest.raises(TextEnvUsageError, match="reset slot 0"):
            pool.step(0, "look")
        pool.reset(0, TextTask("toy", "rooms", 2))
        with pytest.raises(ValueError, match="repeated slots"):
            pool.step_many([0, 0], ["look", "look"])
        with pytest.raises(ValueError, match="out of range"):
            pool.step(2, "look")
        assert pool._pid(0) is None and pool.restarts == 0


def test_pool_gives_up_after_consecutive_failures():
    task = TextTask("toy", "rooms", 0)
    pool = TextEnvPool("failing", 2, {"adapter_factory": AlwaysFailingAdapter}, in_process=True,
                       max_consecutive_failures=3)
    try:
        pool.reset(0, task)
        with pytest.raises(RuntimeError) as info:
            pool.step(0, "look")
        message = str(info.value)
        assert "\n" not in message and "TextEnvPool(failing)" in message and "'rooms' variation 0" in message
        assert "3 consecutive" in message and "ConnectionError: simulated JVM crash" in message
        assert pool.restarts == 2
    finally:
        pool.close()


def test_pool_times_out_a_stuck_worker():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"TimeoutError: worker start took longer than 0.5 s"):
        TextEnvPool("sleepy", 1, {"adapter_factory": functools.partial(time.sleep, 30)}, timeout_s=0.5,
                    max_consecutive_failures=2)
    assert time.monotonic() - start < 10
