"""HASARD throughput (hasard.md §2, rl_core.md §10): env steps per second of training vs the raw env loop.

    python benchmarks/hasard_speed.py [--scenarios remedy_rush ...|all] [--num-envs 16] [--steps 4096]
                                      [--setting paper|mini] [--precision bf16-mixed 32-true] [--repeats 3]

For each scenario:

* ``raw 1 env``: one game in this process, random actions (``raw_env_steps_per_second``);
* ``raw vec``: the same ``SubprocVecEnv`` training uses (one supervised process per game, ``--num-envs``
  games stepped in parallel), random actions: the raw environment loop with the same number of envs;
* ``train``: ``SafePPO`` (PPO-Lagrangian) through Lightning on ``HasardDataModule`` with the same envs:
  env steps over the wall time of ``trainer.fit`` after the first rollout (process start-up excluded),
  i.e. collection with the live policy **plus** the update passes.

``--setting paper`` (default): the authors' shape (128×72 RGB, FC 512, 32-step rollouts, 1 epoch × 1
minibatch; hasard.md §3.4); ``mini``: the CPU miniature (64×36 grayscale, FC 256, 128-step rollouts,
4 epochs × 4 minibatches, ``yaml/hasard/mini_remedy_rush_*.yaml``). ``--precision`` lists the trainer
precisions to measure (``bf16-mixed``, the ``yaml/_base/trainer/cpu_bf16.yaml`` preset, autocasts collection
and update alike; ``32-true`` is Lightning's default). The datamodule's defaults give the policy one torch
thread during collection (the games own the cores) and all cores during the update.

A shared machine's speed drifts by tens of percent within minutes, so ``raw vec`` and ``train`` are
measured ``--repeats`` times in alternation and each ratio is taken from neighbouring measurements; the
table shows medians. Ends with ``RESULT train_sps=<x> raw_sps=<y> ratio=<median ratio>`` for the first
scenario, action space and precision, followed by ``ratio_<precision>=`` for every precision measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "mini": {"width": 64, "height": 36, "grayscale": True, "hidden": 256, "num_steps": 128, "update_epochs": 4,
             "num_minibatches": 4},
    "paper": {"width": 128, "height": 72, "grayscale": False, "hidden": 512, "num_steps": 32, "update_epochs": 1,
              "num_minibatches": 1},
}  # fmt: skip


def raw_vec_sps(scenario: str, num_envs: int, steps: int, env_kwargs: dict) -> float:
    from datamodules.vizdoom import HasardEnvFactory
    from trainer.env_workers import SubprocVecEnv

    venv = SubprocVecEnv([HasardEnvFactory(scenario=scenario, **env_kwargs)] * num_envs, list(range(num_envs)))
    try:
        venv.reset()
        space = venv.single_action_space
        space.seed(0)
        n = steps // num_envs
        t0 = time.perf_counter()
        for _ in range(n):
            venv.step([space.sample() for _ in range(num_envs)])
        return n * num_envs / (time.perf_counter() - t0)
    finally:
        venv.close()


def train_sps(scenario: str, num_envs: int, steps: int, setting: dict, env_kwargs: dict, space: str,
              precision: str = "32-true") -> float:
    import lightning.pytorch as pl
    import torch

    from datamodules.vizdoom import HasardDataModule
    from modules.hasard import SafePPO
    from tests.toy import quiet_trainer
    from trainer.ppo import PPOAdam

    per_rollout = num_envs * setting["num_steps"]
    dm = HasardDataModule(scenario=scenario, num_envs=num_envs, num_steps=setting["num_steps"],
                          update_epochs=setting["update_epochs"], num_minibatches=setting["num_minibatches"],
                          total_env_steps=per_rollout * (1 + max(1, steps // per_rollout)), action_space=space,
                          **env_kwargs)  # fmt: skip
    model = SafePPO(algo="ppo_lag", hidden=setting["hidden"], optimizer=PPOAdam)
    marks: list[tuple[float, int]] = []

    class Clock(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            marks.append((time.perf_counter(), trainer.datamodule.env_steps))

    quiet_trainer([Clock()], max_epochs=-1, precision=precision).fit(model, datamodule=dm)
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return (s1 - s0) / (t1 - t0)


def measure(sc: str, space: str, precision: str, args: argparse.Namespace, setting: dict,
            env_kwargs: dict) -> dict[str, float]:
    """Medians over ``args.repeats`` alternating raw / train measurements (ratio from each pair)."""
    from statistics import median

    raws, trains, ratios = [], [], []
    for _ in range(args.repeats):
        vec = raw_vec_sps(sc, args.num_envs, args.steps, {"action_space": space, **env_kwargs})
        tr = train_sps(sc, args.num_envs, args.steps, setting, env_kwargs, space, precision)
        raws.append(vec), trains.append(tr), ratios.append(tr / vec)
    return {"raw": median(raws), "train": median(trains), "ratio": median(ratios),
            "lo": min(ratios), "hi": max(ratios)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from datamodules.vizdoom import SCENARIOS, raw_env_steps_per_second

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", nargs="+", default=["remedy_rush"])
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4096, help="env steps per measurement")
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="paper")
    ap.add_argument("--precision", nargs="+", default=["bf16-mixed", "32-true"],
                    help="trainer precisions to measure (bf16-mixed, 32-true)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating raw/train measurements per row")
    ap.add_argument("--spaces", nargs="+", default=["simplified", "full"], choices=["simplified", "full"])
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.num_envs < 1 or args.steps < 1:
        ap.error("--repeats, --num-envs and --steps must be >= 1")
    scenarios = list(SCENARIOS) if args.scenarios == ["all"] else args.scenarios
    setting = SETTINGS[args.setting]
    env_kwargs = {k: setting[k] for k in ("width", "height", "grayscale")}
    rows = []
    print(f"setting {args.setting}: {setting}, {args.num_envs} envs, {args.steps} steps per measurement, "
          f"{args.repeats} alternating repeats (medians)")  # fmt: skip
    print(f"{'scenario':20s} {'actions':10s} {'precision':10s} {'raw 1 env':>10s} {'raw vec':>10s} {'train':>10s} "
          f"{'train/raw':>9s} {'range':>11s}")  # fmt: skip
    for sc in scenarios:
        for space in args.spaces:
            one = raw_env_steps_per_second(sc, 1, 1, args.steps // 2, space, 0, **env_kwargs)
            for prec in args.precision:
                m = measure(sc, space, prec, args, setting, env_kwargs)
                rows.append((sc, space, prec, m))
                print(f"{sc:20s} {space:10s} {prec:10s} {one:10,.0f} {m['raw']:10,.0f} {m['train']:10,.0f} "
                      f"{m['ratio']:9.2f} {m['lo']:5.2f}–{m['hi']:4.2f}", flush=True)  # fmt: skip
    sc, space, prec, m = rows[0]
    per_prec = " ".join(f"ratio_{p.replace('-', '_')}={r['ratio']:.3f}" for s_, a_, p, r in rows
                        if (s_, a_) == (sc, space))  # fmt: skip
    print(f"RESULT train_sps={m['train']:.0f} raw_sps={m['raw']:.0f} ratio={m['ratio']:.3f} {per_prec} scenario={sc} "
          f"actions={space} setting={args.setting} num_envs={args.num_envs} precision={prec}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
