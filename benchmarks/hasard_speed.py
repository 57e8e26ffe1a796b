"""HASARD throughput (hasard.md §2, rl_core.md §10): env steps per second of training vs the raw env loop.

    python benchmarks/hasard_speed.py [--scenarios remedy_rush ...|all] [--num-envs 2] [--steps 4096]
                                      [--setting mini|paper]

For each scenario:

* ``raw 1 env``: one game in this process, random actions (``raw_env_steps_per_second``);
* ``raw vec``: the same ``SubprocVecEnv`` training uses (one supervised process per game, ``--num-envs``
  games stepped in parallel), random actions: the raw environment loop with the same number of envs;
* ``train``: ``SafePPO`` (PPO-Lagrangian) through Lightning on ``HasardDataModule`` with the same envs:
  env steps over the wall time of ``trainer.fit`` after the first rollout (process start-up excluded),
  i.e. collection with the live policy **plus** the update passes.

``--setting mini``: the CPU miniature (64×36 grayscale, FC 256, 2×128 steps, 4 epochs × 4 minibatches,
``yaml/hasard/mini_remedy_rush_*.yaml``); ``paper``: the authors' shape (128×72 RGB, FC 512, 32-step
rollouts, 1 epoch × 1 minibatch; hasard.md §3.4). Ends with
``RESULT train_sps=<x> raw_sps=<y> ratio=<x/y>`` for the first scenario's simplified action space.
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


def train_sps(scenario: str, num_envs: int, steps: int, setting: dict, env_kwargs: dict, space: str) -> float:
    import lightning.pytorch as pl
    import torch

    from datamodules.vizdoom import HasardDataModule
    from modules.hasard import SafePPO
    from tests.toy import quiet_trainer
    from trainer.ppo import PPOAdam

    torch.set_num_threads(1)
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

    quiet_trainer([Clock()], max_epochs=-1).fit(model, datamodule=dm)
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return (s1 - s0) / (t1 - t0)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from datamodules.vizdoom import SCENARIOS, raw_env_steps_per_second

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", nargs="+", default=["remedy_rush"])
    ap.add_argument("--num-envs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4096, help="env steps per measurement")
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="mini")
    args = ap.parse_args(argv)
    scenarios = list(SCENARIOS) if args.scenarios == ["all"] else args.scenarios
    setting = SETTINGS[args.setting]
    env_kwargs = {k: setting[k] for k in ("width", "height", "grayscale")}
    rows = []
    print(f"setting {args.setting}: {setting}, {args.num_envs} envs, {args.steps} steps per measurement")
    print(f"{'scenario':20s} {'actions':10s} {'raw 1 env':>10s} {'raw vec':>10s} {'train':>10s} {'train/raw':>9s}")
    for sc in scenarios:
        for space in ("simplified", "full"):
            one = raw_env_steps_per_second(sc, 1, 1, args.steps // 2, space, 0, **env_kwargs)
            vec = raw_vec_sps(sc, args.num_envs, args.steps, {"action_space": space, **env_kwargs})
            tr = train_sps(sc, args.num_envs, args.steps, setting, env_kwargs, space)
            if space == "simplified":
                rows.append((sc, tr, vec))
            print(f"{sc:20s} {space:10s} {one:10,.0f} {vec:10,.0f} {tr:10,.0f} {tr / vec:9.2f}", flush=True)
    sc, tr, vec = rows[0]
    print(f"RESULT train_sps={tr:.0f} raw_sps={vec:.0f} ratio={tr / vec:.3f} scenario={sc} setting={args.setting} "
          f"num_envs={args.num_envs}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
