"""HASARD miniatures (hasard.md §7): PPO vs the safe variants on the lava grid and on real RemedyRush Level 1.

    python benchmarks/hasard_mini.py [--envs lava remedy_rush] [--budget auto|<B>] [--seeds 0] [--workers 1]
                                     [--steps <env steps per run; default: the YAML's>]

Each run is exactly a YAML of ``yaml/hasard/`` (``mini_lava_<algo>.yaml``, ``mini_remedy_rush_<algo>.yaml``)
built with ``TrainerCLI(run=False)``; only the budget (and ``--steps``) are overridden. ``--budget auto``
(RemedyRush): the budget is half of the random policy's mean episode cost over 8 episodes, measured
first and printed (hasard.md §7.2); the lava grid keeps its 0.5 lava steps. Episode statistics are the
last 20 episodes of each run. Prints the table of hasard.md §7, whether each expected relation held,
and ``RESULT ppo_cost=<x> ppolag_cost=<y> budget=<b> ppo_return=<r1> ppolag_return=<r2>`` for the
real scenario (the lava grid's values follow as ``lava_*``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import mean_sd, run_in_workers  # noqa: E402

YAML = ROOT / "yaml" / "hasard"
ALGOS = {"lava": ("ppo", "ppo_lag", "ppo_cost", "ppo_pid"), "remedy_rush": ("ppo", "ppo_lag", "ppo_cost")}


def random_policy_cost(episodes: int = 8, seed: int = 0) -> tuple[float, float]:
    """Mean episode cost and return of uniformly random actions on RemedyRush Level 1 (64×36 grayscale)."""
    import numpy as np

    from datamodules.vizdoom import HasardDoomEnv

    env = HasardDoomEnv("remedy_rush", 1, width=64, height=36, grayscale=True)
    env.action_space.seed(seed)
    costs, rets = [], []
    try:
        for ep in range(episodes):
            env.reset(seed=seed + ep)
            c = r = 0.0
            done = False
            while not done:
                _, rew, te, tr, info = env.step(env.action_space.sample())
                c, r, done = c + info["cost"], r + rew, te or tr
            costs.append(c)
            rets.append(r)
    finally:
        env.close()
    return float(np.mean(costs)), float(np.mean(rets))


def run_job(job: tuple[str, str, int, float | None, int | None]) -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import lightning.pytorch as pl
    import numpy as np
    import torch

    from trainer.cli import TrainerCLI

    torch.set_num_threads(1)
    import tempfile

    env, algo, seed, budget, steps = job
    path = YAML / f"mini_{env}_{algo}.yaml"
    args = ["fit", "--config", str(path), "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.default_root_dir", tempfile.mkdtemp(prefix="hasard_mini_")]  # fmt: skip
    if budget is not None:
        args += ["--model.init_args.cost_budget", str(budget)]
    if steps is not None:
        args += ["--data.init_args.total_env_steps", str(steps)]
    cli = TrainerCLI(args=args, run=False)
    episodes: list[dict[str, float]] = []

    class Record(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            episodes.extend({k: float(e[k]) for k in ("return", "cost")} for e in trainer.datamodule.episodes)

    cli.trainer.callbacks.append(Record())
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    last = episodes[-20:]
    return {
        "env": env, "algo": algo, "seed": seed, "env_steps": cli.datamodule.env_steps,
        "reward": float(np.mean([e["return"] for e in last])) if last else float("nan"),
        "cost": float(np.mean([e["cost"] for e in last])) if last else float("nan"),
        "budget": float(cli.model.cost_budget), "lambda": float(cli.model.lagrange_lambda),
        "sec": time.perf_counter() - t0, "episodes": len(episodes),
    }  # fmt: skip


def relations(rows: list[dict[str, Any]], env: str) -> list[tuple[str, bool]]:
    m = {r["algo"]: r for r in rows if r["env"] == env}
    out = []
    if "ppo" in m:
        out.append((f"{env}: PPO cost > budget", m["ppo"]["cost"] > m["ppo"]["budget"]))
    if "ppo_lag" in m:
        lag = m["ppo_lag"]
        out.append((f"{env}: PPO-Lag lambda > 0", lag["lambda"] > 0))
        out.append((f"{env}: PPO-Lag cost <= 1.2 x budget", lag["cost"] <= 1.2 * lag["budget"]))
        if "ppo" in m:
            out.append((f"{env}: PPO-Lag cost < PPO cost", lag["cost"] < m["ppo"]["cost"]))
    if "ppo_cost" in m:
        others = [r["cost"] for a, r in m.items() if a != "ppo_cost"]
        out.append((f"{env}: PPO-Cost has the lowest cost", all(m["ppo_cost"]["cost"] <= c for c in others)))
        if env == "lava":
            out.append(("lava: PPO-Cost avoids lava (cost <= 0.6)", m["ppo_cost"]["cost"] <= 0.6))
        elif "ppo_lag" in m:
            out.append((f"{env}: PPO-Cost reward <= PPO-Lag reward", m["ppo_cost"]["reward"] <= m["ppo_lag"]["reward"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", nargs="+", default=["lava", "remedy_rush"], choices=sorted(ALGOS))
    ap.add_argument("--budget", default="auto", help="RemedyRush episode budget, or 'auto' (half the random cost)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="env steps per run (default: each YAML's)")
    args = ap.parse_args(argv)
    budget = None
    if "remedy_rush" in args.envs:
        if args.budget == "auto":
            cost, ret = random_policy_cost()
            budget = cost / 2
            print(f"random policy on RemedyRush L1: episode cost {cost:.2f}, return {ret:.2f} -> budget {budget:.2f}")
        else:
            budget = float(args.budget)
    jobs = [(e, a, s, budget if e == "remedy_rush" else None, args.steps)
            for e in args.envs for a in ALGOS[e] for s in args.seeds]  # fmt: skip
    # pool workers are daemonic and cannot start the game processes: ViZDoom runs go one by one in this process
    doom = [j for j in jobs if j[0] != "lava"]
    lava = [j for j in jobs if j[0] == "lava"]
    rows = list(run_in_workers(run_job, lava, args.workers)) if args.workers > 1 else [run_job(j) for j in lava]
    rows += [run_job(j) for j in doom]
    for r in sorted(rows, key=lambda r: (r["env"], r["algo"], r["seed"])):
        print(f"  {r['env']:12s} {r['algo']:9s} seed {r['seed']}: reward {r['reward']:.3f} cost {r['cost']:.3f} "
              f"lambda {r['lambda']:.3f} ({r['episodes']} episodes, {r['sec']:.0f} s)")  # fmt: skip
    print("\n| env | algo | env steps | ep reward (last 20) | ep cost (last 20) | budget | cost / budget | final λ | wall-clock s |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary: list[dict[str, Any]] = []
    for e in args.envs:
        for a in ALGOS[e]:
            sel = [r for r in rows if r["env"] == e and r["algo"] == a]
            agg = {k: mean_sd(r[k] for r in sel) for k in ("env_steps", "reward", "cost", "budget", "lambda", "sec")}
            row = {"env": e, "algo": a, **{k: v[0] for k, v in agg.items()}}
            summary.append(row)
            print(f"| {e} | {a} | {row['env_steps']:,.0f} | {row['reward']:.3f} ({agg['reward'][1]:.3f}) | "
                  f"{row['cost']:.3f} ({agg['cost'][1]:.3f}) | {row['budget']:.3f} | {row['cost'] / row['budget']:.2f} | "
                  f"{row['lambda']:.3f} | {row['sec']:.0f} |")  # fmt: skip
    print()
    for e in args.envs:
        for text, ok in relations(summary, e):
            print(f"{'held' if ok else 'NOT held'}: {text}")
    m = {(r["env"], r["algo"]): r for r in summary}
    out = []
    main_env = "remedy_rush" if "remedy_rush" in args.envs else args.envs[0]
    for prefix, env in (("", main_env), ("lava_", "lava")):
        if (env, "ppo") in m and (env, "ppo_lag") in m and (prefix == "" or env != main_env):
            p, lg = m[(env, "ppo")], m[(env, "ppo_lag")]
            out += [f"{prefix}ppo_cost={p['cost']:.3f}", f"{prefix}ppolag_cost={lg['cost']:.3f}",
                    f"{prefix}budget={lg['budget']:.3f}", f"{prefix}ppo_return={p['reward']:.3f}",
                    f"{prefix}ppolag_return={lg['reward']:.3f}"]  # fmt: skip
    print("RESULT " + " ".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
