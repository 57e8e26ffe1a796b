"""FiCSUM miniature (ficsum.md §7): every arm on the recurring streams, 5 seeds, through Lightning.

    python benchmarks/ficsum_concepts.py [--seeds 0 1 2 3 4] [--streams stagger sea ...] [--arms ficsum ...]
                                         [--workers 2]

Streams and arms are read from the run YAMLs of ``yaml/ficsum/``: a stream's datamodule from
``<stream>_ficsum.yaml``; an arm's ``ConceptDriftCallback`` settings from ``stagger_<arm>.yaml`` or
``rtree_sample_<arm>.yaml`` (no callback = the one-tree baseline), so the table measures exactly what
the YAML files run. Seed s sets the stream seed (concept c uses generator seed s + c; real contexts are
shuffled with s) and the run seed. Each (stream, seed) runs in its own process, ``--workers`` at a
time; obs/s is each run's observations over the wall time of its ``trainer.fit`` (stream building and
process start excluded), so with 2 workers it is the throughput per core of a 2-core machine.

Prints mean (sd) over seeds per stream and arm, then
``RESULT ficsum_cf1=<mean C-F1 of FiCSUM over the streams> best_baseline_cf1=<best reset/one-tree arm>
ficsum_obs_per_s=<mean FiCSUM throughput> ...`` (per-stream values follow).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import mean_sd, run_in_workers  # noqa: E402

YAML_DIR = ROOT / "yaml" / "ficsum"
STREAMS = ("stagger", "sea", "agrawal", "random_rbf", "rtree_sample", "weather_seasons")
ARMS = ("ficsum", "uniform_weights", "supervised_only", "adwin_reset", "page_hinkley_reset", "kswin_reset",
        "one_tree", "oracle")  # fmt: skip
BASELINES = ("adwin_reset", "page_hinkley_reset", "kswin_reset", "one_tree")


def stream_config(stream: str) -> dict[str, Any]:
    data = yaml.safe_load((YAML_DIR / f"{stream}_ficsum.yaml").read_text())["data"]
    return {"class_path": data["class_path"], "init_args": dict(data["init_args"])}


def arm_callback(arm: str) -> dict[str, Any] | None:
    for stem in ("stagger", "rtree_sample"):
        path = YAML_DIR / f"{stem}_{arm}.yaml"
        if path.is_file():
            cbs = yaml.safe_load(path.read_text())["trainer"].get("callbacks+") or []
            return dict(cbs[0]["init_args"]) if cbs else None
    raise FileNotFoundError(f"no yaml/ficsum/stagger_{arm}.yaml or rtree_sample_{arm}.yaml")


def run_job(job: tuple[str, int, tuple[str, ...]]) -> list[dict[str, Any]]:
    """All arms on one (stream, seed); one process."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import lightning.pytorch as pl
    import torch

    torch.set_num_threads(1)
    import datamodules
    from callbacks.drift import ConceptDriftCallback
    from modules.ficsum import FiCSUMStreamModule
    from tests.toy import quiet_trainer

    stream, seed, arms = job
    cfg = stream_config(stream)
    rows = []
    for arm in arms:
        dm = getattr(datamodules, cfg["class_path"])(**{**cfg["init_args"], "seed": seed})
        dm.stream()
        pl.seed_everything(seed, verbose=False)
        model = FiCSUMStreamModule(learner="hoeffding_tree", sample_weight=6.0)
        cb_args = arm_callback(arm)
        cb = ConceptDriftCallback(**{**cb_args, "figure_every": 0, "seed": seed}) if cb_args is not None else None
        trainer = quiet_trainer([cb] if cb else [], max_epochs=1)
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        sec = time.perf_counter() - t0
        s = model.stream_summary()
        d = cb.compute_summary() if cb is not None else {}
        repeats = int(cfg["init_args"].get("repeats", 3))
        rows.append({
            "stream": stream, "arm": arm, "seed": seed, "acc": s["acc"], "kappa": s["kappa"], "kappa_t": s["kappa_t"],
            "c_f1": d["c_f1"], "R": repeats, "reset_cf1": 2 / (repeats + 1), "states": d["n_states"],
            "detections": d["n_detections"], "delay": d["delay_mean"], "false_alarms": d["false_alarms"],
            "missed": d["missed"], "acc_drift250": d["acc_drift250"], "obs_per_s": s["observations"] / sec, "sec": sec,
        })  # fmt: skip
        print(f"  {stream:16s} seed {seed} {arm:18s} acc {s['acc']:.3f} C-F1 {d['c_f1']:.3f} "
              f"states {d['n_states']:.0f} {s['observations'] / sec:,.0f} obs/s", flush=True)  # fmt: skip
    return rows


COLUMNS = ("acc", "kappa", "kappa_t", "c_f1", "states", "detections", "delay", "false_alarms", "acc_drift250",
           "obs_per_s", "sec")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--streams", nargs="+", default=list(STREAMS), choices=STREAMS)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    t0 = time.time()
    jobs = [(s, seed, tuple(args.arms)) for s in args.streams for seed in args.seeds]
    rows = [r for out in run_in_workers(run_job, jobs, args.workers) for r in out]
    print()
    head = f"{'stream':16s} {'arm':18s} " + " ".join(f"{c:>15s}" for c in COLUMNS) + f" {'R':>2s} {'2/(R+1)':>7s}"
    print(head)
    summary: dict[tuple[str, str], dict[str, float]] = {}
    for stream in args.streams:
        for arm in args.arms:
            sel = [r for r in rows if r["stream"] == stream and r["arm"] == arm]
            if not sel:
                continue
            cells, means = [], {}
            for c in COLUMNS:
                m, sd = mean_sd(r[c] for r in sel)
                means[c] = m
                fmt = "{:,.0f}" if c in ("obs_per_s",) else "{:.1f}" if c in ("sec", "delay", "states", "detections", "false_alarms") else "{:.3f}"
                cells.append(f"{fmt.format(m)} ({fmt.format(sd)})")
            summary[(stream, arm)] = means
            print(f"{stream:16s} {arm:18s} " + " ".join(f"{c:>15s}" for c in cells)
                  + f" {sel[0]['R']:>2d} {sel[0]['reset_cf1']:>7.3f}")  # fmt: skip
    print(f"\n{len(rows)} runs, {len(args.seeds)} seeds, {time.time() - t0:.0f} s wall")

    def avg(arm: str, key: str) -> float:
        return mean_sd(summary[(s, arm)][key] for s in args.streams if (s, arm) in summary)[0]

    fic = avg("ficsum", "c_f1") if "ficsum" in args.arms else float("nan")
    base = max((avg(a, "c_f1") for a in BASELINES if a in args.arms), default=float("nan"))
    result = [f"ficsum_cf1={fic:.4f}", f"best_baseline_cf1={base:.4f}",
              f"ficsum_obs_per_s={avg('ficsum', 'obs_per_s'):.0f}" if "ficsum" in args.arms else "ficsum_obs_per_s=nan"]  # fmt: skip
    for a in ("adwin_reset", "page_hinkley_reset", "kswin_reset", "oracle"):
        if a in args.arms:
            result.append(f"{a}_obs_per_s={avg(a, 'obs_per_s'):.0f}")
    for s in args.streams:
        for a in ("ficsum", "adwin_reset", "oracle"):
            if (s, a) in summary:
                result.append(f"{s}_{a}_cf1={summary[(s, a)]['c_f1']:.4f}")
                result.append(f"{s}_{a}_acc={summary[(s, a)]['acc']:.4f}")
    print("RESULT " + " ".join(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
