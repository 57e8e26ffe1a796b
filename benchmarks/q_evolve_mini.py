"""Q-Evolve miniatures (q_evolve.md §7): BC and each Q-Evolve iteration, plus the ablations, on held-out games.

    python benchmarks/q_evolve_mini.py [--env textworld|twx|scienceworld] [--variants qevolve no_gae ...]
                                       [--seeds 0] [--workers 1] [--quick] [--set=--model.init_args.X=Y ...]
                                       [--json rows.json] [--load rows.json ...]

Each run is exactly a YAML of ``yaml/q_evolve/`` (``mini_textworld_<variant>.yaml``, ``mini_twx_cooking_qevolve.yaml``,
``mini_scienceworld_qevolve.yaml``) built with ``TrainerCLI(run=False)``. BC is iteration 0 of every run (the same
seed gives the same BC phase), so the ``bc`` row is read from the full run. ``--quick`` shrinks the protocol
(fewer games and epochs) for a smoke check of the script. Prints the table of q_evolve.md §7 (success and score
as mean ± sd over the seeds when there are several), the held-out success of every seed with how many failed
held-out episodes end in a greedy cycle (the same action in the same observation ≥ 3 times), whether the expected
effects held, then ``RESULT bc_success=<x> qevolve_success=<y> iterations=<n>`` (held-out success %, mean over
the seeds, the full method's last iteration). ``--json`` also writes every per-seed row to a file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import mean_sd, run_in_workers  # noqa: E402

YAML = ROOT / "yaml" / "q_evolve"
FILES = {
    "textworld": {v: YAML / f"mini_textworld_{v}.yaml" for v in ("qevolve", "no_gae", "no_weights", "no_aux", "awr", "rerank")},
    "twx": {"qevolve": YAML / "mini_twx_cooking_qevolve.yaml"},
    "scienceworld": {"qevolve": YAML / "mini_scienceworld_qevolve.yaml"},
}
QUICK = ["--data.init_args.max_steps", "15", "--model.init_args.critic_epochs", "5", "--model.init_args.bc_epochs", "3"]
QUICK_DATA = {
    "textworld": ["--data.init_args.num_games", "12", "--data.init_args.num_train", "8"],
    "twx": ["--data.init_args.num_train", "8", "--data.init_args.num_eval", "4"],
    "scienceworld": ["--data.init_args.train_variations", "2", "--data.init_args.eval_variations", "1"],
}


def run_job(job: tuple[str, str, int, bool, tuple[str, ...]]) -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import lightning.pytorch as pl
    import torch

    from trainer.cli import TrainerCLI

    env, variant, seed, quick, extra = job
    args = ["fit", "--config", str(FILES[env][variant]), "--seed_everything", str(seed),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.default_root_dir", tempfile.mkdtemp(prefix="q_evolve_mini_")]  # fmt: skip
    if quick:
        args += QUICK + QUICK_DATA[env]
    args += list(extra)
    cli = TrainerCLI(args=args, run=False)
    model, dm = cli.model, cli.datamodule
    per_iter: dict[int, dict[str, float]] = {}

    class Record(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            phase, it, _, last = pl_module.evolve_phase(trainer.current_epoch)
            if phase == "policy" and last:
                store = trainer.datamodule.store
                neg = [i for i in range(len(store)) if store.advantage[i] < 0]
                states = [store.trajectories[store.locate(i)[0]].state(store.locate(i)[1]) for i in neg]
                cands = [store.trajectories[store.locate(i)[0]].candidates[store.locate(i)[1]] for i in neg]
                acts = [store.trajectories[store.locate(i)[0]].actions[store.locate(i)[1]] for i in neg]
                now = pl_module.action_log_probs(states, cands, acts) if neg else torch.zeros(0)
                old = torch.tensor([store.logp_old[i] for i in neg])
                per_iter.setdefault(it, {})["dlogp_neg"] = float((now - old).mean()) if neg else float("nan")

    cli.trainer.callbacks.insert(0, Record())
    loops: dict[int, tuple[int, int]] = {}  # iteration -> (failed held-out episodes, those that loop)
    evaluate, run_episodes = dm.evaluate, dm.run_episodes

    def evaluate_counting_loops(agent: Any, iteration: int) -> dict[str, Any]:
        def run(tasks, decide, source, it, on_reset=None):  # type: ignore[no-untyped-def]
            trs = run_episodes(tasks, decide, source, it, on_reset)
            failed = [tr for tr in trs if tr.task[-1] != "train" and not tr.success]
            loops[iteration] = (len(failed), sum(_loops(tr) for tr in failed))
            return trs

        dm.run_episodes = run
        try:
            return evaluate(agent, iteration)
        finally:
            dm.run_episodes = run_episodes

    dm.evaluate = evaluate_counting_loops
    t0 = time.perf_counter()
    cli.trainer.fit(model, datamodule=dm)
    sec = time.perf_counter() - t0  # the whole run (every row of it)
    rows = []
    for r in model.eval_results:
        it = int(r["iteration"])
        rows.append({
            "env": env, "method": "bc" if it == 0 else variant, "iter": it, "seed": seed,
            "seen": r["success_seen"], "unseen": r["success_unseen"], "score": r["score_unseen"],
            "spearman": float(model.spearman_history.get(it, float("nan"))),
            "dlogp_neg": per_iter.get(it, {}).get("dlogp_neg", float("nan")),
            "env_steps": r["env_steps"], "sec": sec, "failed_unseen": loops.get(it, (0, 0))[0],
            "looping_unseen": loops.get(it, (0, 0))[1],
        })  # fmt: skip
    return {"variant": variant, "env": env, "seed": seed, "rows": rows}


def _loops(tr: Any, repeats: int = 3) -> bool:
    """The episode took the same action in the same observation at least ``repeats`` times (a greedy cycle such as
    "take X from Y" / "put X on Y")."""
    from collections import Counter

    pairs = Counter(zip(tr.observations[:-1], (tr.action_text(t) for t in range(len(tr)))))
    return bool(pairs) and max(pairs.values()) >= repeats


def _vs_bc(rows: list[dict[str, Any]], bc_seed: dict[int, float]) -> str:
    """Held-out success minus the same seed's BC: how many seeds are above, and the paired mean ± sd with its
    standard error (the spread a difference must beat)."""
    diff = [r["unseen"] - bc_seed[r["seed"]] for r in rows if r["seed"] in bc_seed]
    mu, sd = mean_sd(diff)
    se = sd / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return (f"above BC on {sum(d > 0 for d in diff)}/{len(diff)} seeds; per-seed difference {_fmt(mu)} ± {_fmt(sd)} "
            f"points, standard error {_fmt(se)}")


def _fmt(x: float, nd: int = 1) -> str:
    return "—" if x != x else f"{x:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="textworld", choices=sorted(FILES))
    ap.add_argument("--variants", nargs="+", default=None, help="default: every file of the env")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a shrunken protocol to check the script")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="ARG",
                    help="extra CLI arguments for every run, e.g. --set=--model.init_args.policy_lr=1e-3 (repeatable)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the per-seed rows to this JSON file")
    ap.add_argument("--load", nargs="+", default=None, metavar="JSON",
                    help="print the table from the rows of earlier --json files instead of running (e.g. seeds run apart)")
    args = ap.parse_args(argv)
    if args.load:
        rows = [r for path in args.load for r in json.loads(Path(path).read_text())["rows"]]
        rows = [r for r in rows if r["env"] == args.env]
        if not rows:
            ap.error(f"no {args.env} rows in {args.load}")
        return report(rows, args.env, sorted({r["method"] for r in rows if r["iter"] > 0}), sorted({r["seed"] for r in rows}))
    variants = args.variants or list(FILES[args.env])
    bad = [v for v in variants if v not in FILES[args.env]]
    if bad:
        ap.error(f"unknown variants for {args.env}: {bad}; known: {list(FILES[args.env])}")
    if args.env == "textworld":  # generate the games once, before the runs, as the runs' --set asks (q_evolve.md §4)
        from trainer.cli import TrainerCLI

        extra = [*(QUICK_DATA["textworld"] if args.quick else []), *args.set]
        TrainerCLI(args=["fit", "--config", str(FILES["textworld"]["qevolve"]), *extra], run=False).datamodule.prepare_data()
    jobs = [(args.env, v, s, args.quick, tuple(args.set)) for v in variants for s in args.seeds]
    results = list(run_in_workers(run_job, jobs, args.workers)) if args.workers > 1 else [run_job(j) for j in jobs]
    rows = [r for res in results for r in res["rows"]]
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv[1:] if argv is None else argv, "rows": rows}, indent=1))
    return report(rows, args.env, variants, args.seeds)


def report(rows: list[dict[str, Any]], env: str, variants: list[str], seeds: list[int]) -> int:
    """Print the §7 table, the per-seed held-out success, the expected effects and the RESULT line."""
    # the BC row once per seed (every run has the same BC phase)
    table, seen_bc = [], set()
    for r in sorted(rows, key=lambda r: (r["iter"] != 0, r["method"], r["iter"], r["seed"])):
        if r["iter"] == 0:
            if r["seed"] in seen_bc:
                continue
            seen_bc.add(r["seed"])
        table.append(r)
    head = ("env", "method", "iter", "seen success %", "unseen success %", "mean score ×100", "Spearman(V, MC)",
            "Δlog π on A<0", "env steps used", "wall-clock s")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in table:
        groups.setdefault((r["method"], r["iter"]), []).append(r)
    several = len(seeds) > 1
    for (method, it), rs in groups.items():
        def m(key: str) -> float:
            return mean_sd(x[key] for x in rs)[0]

        def ms(key: str) -> str:  # mean ± sd over the seeds
            mu, sd = mean_sd(x[key] for x in rs)
            return f"{_fmt(mu)} ± {_fmt(sd)}" if several else _fmt(mu)

        print(f"| {env} | {method} | {it} | {ms('seen')} | {ms('unseen')} | {ms('score')} | "
              f"{_fmt(m('spearman'), 3)} | {_fmt(m('dlogp_neg'), 3)} | {int(m('env_steps'))} | {_fmt(m('sec'), 0)} |")  # fmt: skip
    print()
    bc_seed = {r["seed"]: r["unseen"] for r in table if r["method"] == "bc"}
    for (method, it), rs in groups.items():
        per_seed = ", ".join(f"seed {r['seed']}: {_fmt(r['unseen'])}" for r in sorted(rs, key=lambda r: r["seed"]))
        failed, looping = sum(r.get("failed_unseen", 0) for r in rs), sum(r.get("looping_unseen", 0) for r in rs)
        vs_bc = "" if method == "bc" else f"; {_vs_bc(rs, bc_seed)}"
        print(f"held-out success % {method} iter {it}: {per_seed}; failed held-out episodes that loop: {looping}/{failed}"
              f"{vs_bc}")

    def last(method: str, key: str = "unseen") -> float:
        rs = [r for r in table if r["method"] == method]
        if not rs:
            return float("nan")
        k = max(r["iter"] for r in rs)
        return mean_sd(r[key] for r in rs if r["iter"] == k)[0]

    bc, qe = last("bc"), last("qevolve")
    # per seed: the full method's last iteration against the same seed's BC row
    qe_rows = [r for r in table if r["method"] == "qevolve"]
    k = max((r["iter"] for r in qe_rows), default=0)
    checks = [("Q-Evolve held-out success ≥ BC + 10 points", qe >= bc + 10),
              (f"Q-Evolve held-out success > BC (mean; {_vs_bc([r for r in qe_rows if r['iter'] == k], bc_seed)})",
               qe > bc)]
    if "no_weights" in variants and "qevolve" in variants:
        checks.append(("weighted critic Spearman ≥ unweighted", last("qevolve", "spearman") >= last("no_weights", "spearman")))
    for v in ("no_gae", "awr"):
        if v in variants:
            checks.append((f"{v} held-out success < Q-Evolve", last(v) < qe))
    print()
    for name, ok in checks:
        print(f"{'held' if ok else 'NOT held'}: {name}")
    iters = max((r["iter"] for r in table if r["method"] == "qevolve"), default=0)
    print(f"RESULT bc_success={_fmt(bc)} qevolve_success={_fmt(qe)} iterations={iters}")
    return 0 if not math.isnan(qe) else 1


if __name__ == "__main__":
    raise SystemExit(main())
