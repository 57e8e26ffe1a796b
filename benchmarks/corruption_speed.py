"""Corruption speed (reobench.md §3, issue 10): images per second of the batched torch path against the reference.

    python benchmarks/corruption_speed.py [--sizes 64 224 512] [--batch 32] [--severity 3] [--repeats 3]
                                          [--min-time 0.5] [--threads 1] [--corruptions gaussian_noise ...] [--quick]

For each of the 12 corruptions and each image side:

* ``ref``: :func:`trainer.corruptions.corrupt` on one H×W×3 float32 NumPy image at a time, in a Python loop (the
  reference implementation of the definitions: NumPy, SciPy and PIL);
* ``batched``: :func:`trainer.corruptions.corrupt_batch` on the same images as one [B, 3, H, W] float32 tensor, with
  the same per-sample seeds (``sample_seed(0, i, name, severity)``).

Images are real photos: scikit-learn's ``load_sample_images()`` (two 427×640 photos), centre-cropped to a square,
resized with PIL (bicubic) to each side and tiled to ``--batch`` images. Ref and batched are timed in alternation,
``--repeats`` times and, for the fast ones, until the reference loop has run for ``--min-time`` seconds in all,
after one warm-up call of each on one image (lazy imports, the cached blur matrices); the table shows the best
(shortest) run of each, as ``timeit`` does: on a shared machine other processes only ever add time, so the minimum
is the least disturbed measurement. ``max abs diff`` is the largest difference between the two outputs (``noise``
for the two noise types, whose per-element draws differ in the batched path: same distribution, other draws).

``--threads`` (default 1) sets ``torch.set_num_threads`` and, when numpy is not imported yet, ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS``: the reference runs on one core (NumPy, SciPy's filters and PIL are
single-threaded here), so one thread is the fair single-core comparison. ``--quick`` measures 64 and 224 px with 4
images and one repeat, to check the script. ``--sizes`` must include 224. Ends with
``RESULT images_per_s=<x> speedup_vs_reference=<y>`` at 224 px: ``x`` = 12·B over the summed batched time of the 12
corruptions, ``y`` = summed ref time / summed batched time.
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

RESULT_SIDE = 224  # the reference size (reobench.md §3: parameters are defined at 224 px)


def sample_photos(side: int) -> list[Any]:
    """scikit-learn's two sample photos, centre-cropped to a square and resized to ``side``, float32 in [0, 1]."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = []
    for img in load_sample_images().images:
        h, w = img.shape[:2]
        c = min(h, w)
        top, left = (h - c) // 2, (w - c) // 2
        sq = Image.fromarray(img[top : top + c, left : left + c]).resize((side, side), Image.Resampling.BICUBIC)
        out.append(np.asarray(sq, dtype=np.float32) / 255.0)
    return out


def measure(name: str, side: int, batch: int, severity: int, repeats: int, min_time: float) -> dict[str, Any]:
    """Best seconds of ``corrupt`` in a loop and of ``corrupt_batch`` over the same ``batch`` images, over at least
    ``repeats`` alternating runs and until the reference runs add up to ``min_time`` seconds."""
    import numpy as np
    import torch

    from trainer.corruptions import corrupt, corrupt_batch, sample_seed

    photos = sample_photos(side)
    imgs = [photos[i % len(photos)] for i in range(batch)]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    seeds = [sample_seed(0, i, name, severity) for i in range(batch)]
    corrupt(imgs[0], name, severity, seed=seeds[0])  # warm-up
    corrupt_batch(x[:1], name, severity, seeds[:1])
    t_ref, t_bat = [], []
    while len(t_ref) < repeats or sum(t_ref) < min_time:
        t0 = time.perf_counter()
        ref = [corrupt(img, name, severity, seed=s) for img, s in zip(imgs, seeds, strict=True)]
        t_ref.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = corrupt_batch(x, name, severity, seeds)
        t_bat.append(time.perf_counter() - t0)
    diff = float(np.abs(out.permute(0, 2, 3, 1).numpy() - np.stack(ref)).max())
    return {"name": name, "side": side, "batch": batch, "ref_s": min(t_ref), "batched_s": min(t_bat),
            "max_diff": diff}  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: corruption × size with ref img/s, batched img/s, speedup, max |Δ|; a total row per size."""
    lines = ["| corruption | size | ref img/s | batched img/s | speedup | max abs diff |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for side in sorted({r["side"] for r in rows}):
        sub = [r for r in rows if r["side"] == side]
        for r in sub:
            diff = "noise" if r["name"] in ("gaussian_noise", "salt_and_pepper_noise") else f"{r['max_diff']:.1e}"
            lines.append(f"| {r['name']} | {side} | {r['batch'] / r['ref_s']:.1f} | {r['batch'] / r['batched_s']:.1f} "
                         f"| {r['ref_s'] / r['batched_s']:.2f} | {diff} |")  # fmt: skip
        tot = totals(sub)
        lines.append(f"| **all {len(sub)}** | {side} | {tot['ref_ips']:.1f} | {tot['batched_ips']:.1f} "
                     f"| {tot['speedup']:.2f} | |")  # fmt: skip
    return "\n".join(lines)


def totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Images per second over all rows (images / summed time) and summed ref time / summed batched time."""
    n = sum(r["batch"] for r in rows)
    ref, bat = sum(r["ref_s"] for r in rows), sum(r["batched_s"] for r in rows)
    return {"ref_ips": n / ref, "batched_ips": n / bat, "speedup": ref / bat}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224, 512], help="image sides in px")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (and per reference loop)")
    parser.add_argument("--severity", type=int, default=3, choices=range(1, 6), help="severity of every corruption")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats at least (the best one counts)")
    parser.add_argument("--min-time", type=float, default=0.5, help="repeat fast ones until the ref runs take this")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fair single-core comparison)")
    parser.add_argument("--corruptions", nargs="+", default=None, help="subset (default: all 12)")
    parser.add_argument("--quick", action="store_true", help="64 and 224 px, 4 images, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.repeats, args.min_time = [64, 224], 4, 1, 0.0
    if RESULT_SIDE not in args.sizes:
        parser.error(f"--sizes must include {RESULT_SIDE} (the RESULT line is at {RESULT_SIDE} px)")
    if "numpy" not in sys.modules:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, str(args.threads))
    import torch

    from trainer.corruptions import CORRUPTIONS

    torch.set_num_threads(args.threads)
    names = args.corruptions or list(CORRUPTIONS)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        parser.error(f"unknown corruptions {unknown}; known: {', '.join(CORRUPTIONS)}")
    print(f"severity {args.severity}, batch {args.batch}, best of ≥ {args.repeats} repeats and ≥ {args.min_time} s, "
          f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    rows = []
    for side in args.sizes:
        for name in names:
            rows.append(measure(name, side, args.batch, args.severity, args.repeats, args.min_time))
    print(table(rows))
    tot = totals([r for r in rows if r["side"] == RESULT_SIDE])
    print(f"RESULT images_per_s={tot['batched_ips']:.1f} speedup_vs_reference={tot['speedup']:.2f}")
    return tot


if __name__ == "__main__":
    main()
