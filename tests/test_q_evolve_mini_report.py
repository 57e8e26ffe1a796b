"""benchmarks/q_evolve_mini.py without training (q_evolve.md §7): the greedy-cycle count and the table rebuilt with
``--load`` from per-seed rows written by ``--json``."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from trainer.trajectories import Trajectory

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "q_evolve_mini.py"


def _load():
    spec = importlib.util.spec_from_file_location("q_evolve_mini", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["q_evolve_mini"] = mod
    spec.loader.exec_module(mod)
    return mod


def _traj(acts: list[str], obs: list[str]) -> Trajectory:
    cands = sorted(set(acts))
    return Trajectory(task=("textworld", "g", 0, "test"), instruction="do it", observations=obs,
                      candidates=[cands] * len(acts), actions=[cands.index(a) for a in acts],
                      rewards=[0.0] * len(acts), invalid=[False] * len(acts), terminated=False, success=False,
                      score=0.0)  # fmt: skip


def test_loops_counts_a_repeated_observation_action_pair():
    mod = _load()
    cycle = _traj(["take x", "put x", "take x", "put x", "take x"], ["a", "b", "a", "b", "a", "b"])
    assert mod._loops(cycle)  # ("a", "take x") three times
    assert not mod._loops(_traj(["take x", "put x", "take x", "put x"], ["a", "b", "a", "b", "a"]))  # twice only
    assert not mod._loops(_traj(["take x", "take x", "take x"], ["a", "b", "c", "d"]))  # new observation each time


def _row(method, it, seed, unseen, failed=0, looping=0):
    return {"env": "textworld", "method": method, "iter": it, "seed": seed, "seen": 30.0, "unseen": unseen,
            "score": unseen, "spearman": 0.5, "dlogp_neg": -0.1, "env_steps": 100, "sec": 1.0,
            "failed_unseen": failed, "looping_unseen": looping}  # fmt: skip


def test_load_rebuilds_the_table_over_files(tmp_path, capsys):
    mod = _load()
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"rows": [_row("bc", 0, 0, 20.0, 40, 39), _row("qevolve", 1, 0, 24.0), _row("qevolve", 2, 0, 30.0)]}))
    b.write_text(json.dumps({"rows": [_row("bc", 0, 1, 30.0, 35, 35), _row("qevolve", 1, 1, 26.0), _row("qevolve", 2, 1, 26.0)]}))
    assert mod.main(["--load", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| textworld | bc | 0 | 30.0 ± 0.0 | 25.0 ± 7.1 |" in out
    assert "held-out success % bc iter 0: seed 0: 20.0, seed 1: 30.0; failed held-out episodes that loop: 74/75" in out
    # per seed: +10 and -4 points; mean 3.0, sample sd 9.9, standard error 9.9 / sqrt(2) = 7.0
    assert ("held: Q-Evolve held-out success > BC (mean; above BC on 1/2 seeds; per-seed difference 3.0 ± 9.9 points, "
            "standard error 7.0)") in out
    # iteration 1: +4 and -4 points
    assert ("held-out success % qevolve iter 1: seed 0: 24.0, seed 1: 26.0; failed held-out episodes that loop: 0/0; "
            "above BC on 1/2 seeds; per-seed difference 0.0 ± 5.7 points, standard error 4.0") in out
    assert out.strip().splitlines()[-1] == "RESULT bc_success=25.0 qevolve_success=28.0 iterations=2"
