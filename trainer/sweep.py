"""Sweeps from YAML: a grid over a base run YAML, expanded into plain run YAMLs, run, and tabulated.

``trainer sweep --config yaml/<paper>/sweep_<name>.yaml [--only P1,P2] [--jobs N] [--threads T]
[--expand-only] [--dry-run]``

A sweep file has one top-level key, ``sweep``::

    sweep:
      base: plays_tiny_repeat.yaml          # the run YAML every point starts from (relative to this file)
      out: runs/sparse_scaling/sweep_plays_tiny   # default runs/<folder>/<stem>
      axes:                                  # the grid is the product of the axes, in this order
        d: {key: model.init_args.density, values: [1.0, 0.5, 0.25]}
        ep: {key: data.init_args.epochs, values: [1, 4, 16]}
        size:                                # or named sets of overrides
          values:
            20m: {model.init_args.hidden_size: 256, model.init_args.num_hidden_layers: 4}
      set: {trainer.log_every_n_steps: 5}    # fixed overrides for every point (optional)
      split: fit                             # the results table's split column (fit / heldout)

Dotted keys address nested mappings; an integer part indexes a list (``trainer.callbacks.0.init_args.delta_t``).

Each point ``<axis><label>_...`` (``d0.5_ep16``) becomes ``<out>/configs/<point>.yaml``: the base merged
with the point's overrides and a TensorBoard logger writing to ``<out>/<point>/``, so
``trainer fit --config <out>/configs/<point>.yaml`` reproduces it alone. ``trainer sweep`` runs every
point that has not finished (one subprocess each, ``--jobs`` at a time), resumes a point that stopped
with a checkpoint (``--ckpt_path last``), keeps going when one fails, and writes ``<out>/results.csv``
(one row per finished point, the columns of ``trainer fit-law``'s runs table plus the curve summary)
and a summary figure to TensorBoard under ``<out>/summary``.

A run's row is read from its TensorBoard events (:func:`collect_tensorboard_rows`): the last
``val/loss`` (loss), ``model/n_total``, ``model/density``, ``data/unique_tokens``, the last
``data/tokens_seen`` (total_tokens), and from the curves the best validation loss and its step, the
steps and the last ``train/loss``.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml as pyyaml

__all__ = ["RESULT_COLUMNS", "Sweep", "SweepPoint", "collect_run_row", "collect_tensorboard_rows", "load_sweep", "sweep_main"]

#: The runs-table columns of ``trainer fit-law`` (sparse_scaling.md §2), then the curve summary.
LAW_COLUMNS = ("run_id", "n_total", "density", "unique_tokens", "total_tokens", "loss", "split")
RESULT_COLUMNS = LAW_COLUMNS + ("epochs", "steps", "best_val_loss", "best_step", "best_epoch", "final_minus_best", "final_train_loss")
SWEEP_KEYS = ("base", "out", "axes", "set", "split")
AXIS_KEYS = ("key", "values")
DONE_FILE = "DONE.json"


class SweepError(ValueError):
    """A bad sweep file or command line: one line naming the file and key."""


# ----------------------------------------------------------------------------------------------
# the file
# ----------------------------------------------------------------------------------------------


def _label(value: Any) -> str:
    """A short, path-safe label: 0.5 -> 0.5, 1.0 -> 1, 250000 -> 250k, 2600000000 -> 2.6b."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and abs(value) >= 1000:
        for unit, scale in (("t", 10**12), ("b", 10**9), ("m", 10**6), ("k", 10**3)):
            if abs(value) >= scale:
                return f"{value / scale:.4g}{unit}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("/", "-").replace(" ", "")


def set_dotted(config: dict[str, Any], dotted: str, value: Any, where: str = "") -> None:
    """Set ``a.b.0.c`` in nested dicts/lists, creating mappings on the way (a list index must exist)."""
    parts = dotted.split(".")
    node: Any = config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SweepError(f"{where}: {dotted!r}: {'.'.join(parts[:i]) or 'the config'} is a list of {len(node)}; "
                                 f"{part!r} is not an index in it")  # fmt: skip
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise SweepError(f"{where}: {dotted!r}: {'.'.join(parts[:i])} is a value, not a mapping")
        if part not in node and part + "+" in node:  # an appended list (callbacks+:)
            part = part + "+"
        if last:
            node[part] = value
            return
        node = node.setdefault(part, {})


@dataclass
class SweepPoint:
    """One run of a sweep: its name, axis labels and dotted overrides."""

    name: str
    labels: dict[str, str]
    overrides: dict[str, Any]
    sweep: Sweep = field(repr=False)

    @property
    def config_path(self) -> Path:
        """Where the point's run YAML is written."""
        return self.sweep.out / "configs" / f"{self.name}.yaml"

    @property
    def run_dir(self) -> Path:
        """The point's TensorBoard folder (``<out>/<point>``; versions below it)."""
        return self.sweep.out / self.name

    def config(self) -> dict[str, Any]:
        """The base merged with the fixed and the point's overrides, logging to :attr:`run_dir`."""
        from trainer.cli import _merge_configs

        cfg = _merge_configs([str(self.sweep.base)])
        where = str(self.sweep.path)
        for key, value in {**self.sweep.fixed, **self.overrides}.items():
            set_dotted(cfg, key, value, where)
        trainer = cfg.setdefault("trainer", {})
        trainer["logger"] = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(self.sweep.out), "name": self.name},
        }
        return cfg

    def write(self) -> Path:
        """Write the point's run YAML (a plain config with a header) and return its path."""
        from trainer.paths import PROJECT_ROOT

        path = self.config_path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            shown = path.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            shown = path
        src = _shown(self.sweep.path, PROJECT_ROOT)
        header = [
            f"# Point {self.name} of the sweep {src} (base: {_shown(self.sweep.base, PROJECT_ROOT)}).",
            f"# Command: trainer fit --config {shown}",
            "# Overrides: " + (" ".join(f"{k}={v}" for k, v in {**self.sweep.fixed, **self.overrides}.items()) or "none"),
            f"# Written by: trainer sweep --config {src}; rerun that to run it and tabulate.",
        ]
        body = pyyaml.safe_dump(self.config(), sort_keys=False)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(header) + "\n" + body)
        tmp.replace(path)
        return path

    def config_args(self) -> list[str]:
        """``["--config", <written YAML>]`` (writes it first)."""
        return ["--config", str(self.write())]

    @property
    def done(self) -> bool:
        """Whether the point has finished (its ``DONE.json`` exists)."""
        return (self.run_dir / DONE_FILE).is_file()


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


@dataclass
class Sweep:
    """A parsed sweep file (module docstring)."""

    path: Path
    base: Path
    out: Path
    axes: list[tuple[str, list[tuple[str, dict[str, Any]]]]]
    fixed: dict[str, Any]
    split: str

    def points(self) -> list[SweepPoint]:
        """Every point of the grid, in axis order (the last axis varies fastest)."""
        out = []
        for combo in itertools.product(*(values for _, values in self.axes)):
            labels = {name: label for (name, _), (label, _) in zip(self.axes, combo)}
            overrides: dict[str, Any] = {}
            for _, ov in combo:
                overrides.update(ov)
            name = "_".join(f"{axis}{label}" for axis, label in labels.items()) or "point"
            out.append(SweepPoint(name, labels, overrides, self))
        names = [p.name for p in out]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SweepError(f"{self.path}: points share names {dup[:3]}; give the axes distinct labels")
        return out


def _fail(path: Path, key: str, msg: str, known: Sequence[str] = ()) -> SweepError:
    near = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(known), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return SweepError(f"{path}: {key}: {msg}{hint}")


def load_sweep(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Sweep:
    """Parse and check a sweep file; :class:`SweepError` (one line, naming file and key) on bad input."""
    from trainer.paths import PROJECT_ROOT, resolve_config_path

    path = Path(resolve_config_path(path))
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    data = pyyaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or set(data) != {"sweep"} or not isinstance(data["sweep"], dict):
        raise SweepError(f"{path}: a sweep file has exactly one top-level key, 'sweep', holding a mapping")
    spec = data["sweep"]
    for key in spec:
        if key not in SWEEP_KEYS:
            raise _fail(path, f"sweep.{key}", "unknown key", SWEEP_KEYS)
    if "base" not in spec:
        raise SweepError(f"{path}: sweep.base: missing (the run YAML every point starts from)")
    base = Path(str(spec["base"]))
    if not base.is_absolute():
        local = path.parent / base
        base = local if local.is_file() else PROJECT_ROOT / base
    if not base.is_file():
        raise SweepError(f"{path}: sweep.base: file not found: {spec['base']}")
    axes_spec = spec.get("axes") or {}
    if not isinstance(axes_spec, dict) or not axes_spec:
        raise SweepError(f"{path}: sweep.axes: give at least one axis (name: {{key: ..., values: [...]}})")
    axes = []
    for name, axis in axes_spec.items():
        where = f"sweep.axes.{name}"
        if not isinstance(axis, dict):
            raise _fail(path, where, "an axis is a mapping with key/values")
        for k in axis:
            if k not in AXIS_KEYS:
                raise _fail(path, f"{where}.{k}", "unknown key", AXIS_KEYS)
        values = axis.get("values")
        if isinstance(values, dict):
            if "key" in axis:
                raise _fail(path, f"{where}.key", "named values carry their own overrides; drop key")
            if not values or not all(isinstance(v, dict) for v in values.values()):
                raise _fail(path, f"{where}.values", "named values map a label to a mapping of dotted overrides")
            entries = [(str(label), dict(ov)) for label, ov in values.items()]
        elif isinstance(values, list) and values:
            if not isinstance(axis.get("key"), str):
                raise _fail(path, f"{where}.key", "a list of values needs the dotted key they set")
            entries = [(_label(v), {axis["key"]: v}) for v in values]
        else:
            raise _fail(path, f"{where}.values", "give a non-empty list (with key) or a mapping of named overrides")
        axes.append((str(name), entries))
    fixed = spec.get("set") or {}
    if not isinstance(fixed, dict):
        raise _fail(path, "sweep.set", "a mapping of dotted keys to values")
    split = str(spec.get("split", "fit"))
    if split not in ("fit", "heldout"):
        raise _fail(path, "sweep.split", f"'fit' or 'heldout', got {split!r}")
    out_dir = Path(out) if out is not None else Path(str(spec.get("out") or Path("runs") / path.parent.name / path.stem))
    return Sweep(path=path, base=base, out=out_dir, axes=axes, fixed=dict(fixed), split=split)


# ----------------------------------------------------------------------------------------------
# results from TensorBoard
# ----------------------------------------------------------------------------------------------


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a TensorBoard run folder: ``{tag: [(step, value), ...]}`` in write order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, float(e.value)) for e in acc.Scalars(tag)] for tag in acc.Tags().get("scalars", [])}


def collect_run_row(run_dir: str | os.PathLike, run_id: str | None = None, split: str = "fit") -> dict[str, Any] | None:
    """The results row of one training run folder (module docstring), or ``None`` when it lacks
    ``model/n_total`` or a ``val/loss`` (not a finished sparse-scaling run)."""
    run_dir = Path(run_dir)
    tags = _scalars(run_dir)
    if "model/n_total" not in tags or not tags.get("val/loss"):
        return None
    val = tags["val/loss"]
    last = lambda tag, default=math.nan: tags[tag][-1][1] if tags.get(tag) else default  # noqa: E731
    best_step, best = min(val, key=lambda sv: sv[1])
    unique = last("data/unique_tokens")
    seen = last("data/tokens_seen")
    # the data epoch at the best step: tokens seen then / U
    seen_curve = tags.get("data/tokens_seen", [])
    seen_at_best = next((v for s, v in seen_curve if s >= best_step), seen)
    steps = max(s for s, _ in itertools.chain.from_iterable(tags.values()))
    return {
        "run_id": run_id or run_dir.name,
        "n_total": int(last("model/n_total")),
        "density": last("model/density"),
        "unique_tokens": int(unique) if math.isfinite(unique) else unique,
        "total_tokens": int(seen) if math.isfinite(seen) else seen,
        "loss": val[-1][1],
        "split": split,
        "epochs": last("data/epochs"),
        "steps": steps,
        "best_val_loss": best,
        "best_step": best_step,
        "best_epoch": seen_at_best / unique if unique else math.nan,
        "final_minus_best": val[-1][1] - best,
        "final_train_loss": last("train/loss"),
        "val_curve": val,
    }


def _event_dirs(folder: Path) -> list[Path]:
    return sorted({p.parent for p in folder.rglob("events.out.tfevents.*")})


def collect_tensorboard_rows(folder: str | os.PathLike, split: str = "fit") -> list[dict[str, Any]]:
    """Results rows of every training run under ``folder`` (each folder holding event files and the
    ``model/n_total`` scalar); ``run_id`` is the run's path relative to ``folder``. Rows carry the
    columns of :data:`RESULT_COLUMNS` (and ``val_curve``, the (step, loss) pairs)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no TensorBoard folder {folder}")
    rows = []
    for d in _event_dirs(folder):
        row = collect_run_row(d, str(d.relative_to(folder)), split)
        if row is not None:
            rows.append(row)
    return rows


def _latest_version(run_dir: Path) -> Path | None:
    versions = [p for p in run_dir.glob("version_*") if p.is_dir()]
    if not versions:
        return None
    return max(versions, key=lambda p: int(p.name.split("_")[-1]) if p.name.split("_")[-1].isdigit() else -1)


def write_results(rows: list[dict[str, Any]], path: Path) -> None:
    """``results.csv`` with :data:`RESULT_COLUMNS` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    tmp.replace(path)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results as a fixed-width text table (sparse_scaling.md §7 columns)."""
    cols = ("run_id", "density", "epochs", "steps", "best_val_loss", "best_step", "loss", "final_minus_best", "final_train_loss")
    heads = ("run", "d", "epochs", "steps", "best val", "step of best", "final val", "final-best", "final train")
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
    line = lambda vals: "  ".join(str(v).rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(heads), line("-" * w for w in widths), *(line(c) for c in cells)])


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else "nan"
    return str(v)


def summary_figure(rows: list[dict[str, Any]]) -> Any:
    """Validation loss against data epochs, one line per run (colour by density)."""
    from trainer.plots import plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    densities = sorted({r["density"] for r in rows}, reverse=True)
    cmap = plt.get_cmap("viridis", max(len(densities), 2))
    for r in rows:
        curve = r.get("val_curve") or []
        if not curve or not r.get("steps"):
            continue
        epochs = r["epochs"] if math.isfinite(r["epochs"]) else 1.0
        xs = [s / r["steps"] * epochs for s, _ in curve]
        ax.plot(xs, [v for _, v in curve], color=cmap(densities.index(r["density"])), alpha=0.85,
                label=f"d={r['density']:g}, {epochs:g} ep")  # fmt: skip
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("epochs over the unique budget")
    ax.set_ylabel("val/loss")
    ax.set_title("repetition curves")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------


def _run_point(point: SweepPoint, threads: int) -> tuple[SweepPoint, int, float]:
    path = point.write()
    cmd = [sys.executable, "-m", "trainer", "fit", "--config", str(path)]
    if any((v / "checkpoints" / "last.ckpt").is_file() for v in point.run_dir.glob("version_*")):
        cmd += ["--ckpt_path", "last"]  # it stopped with a checkpoint: continue it
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    point.run_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with (point.sweep.out / f"{point.name}.log").open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    return point, rc, time.time() - start


def _finish(point: SweepPoint) -> dict[str, Any] | None:
    version = _latest_version(point.run_dir)
    row = collect_run_row(version, point.name, point.sweep.split) if version else None
    if row is not None:
        record = {k: v for k, v in row.items() if k != "val_curve"}
        (point.run_dir / DONE_FILE).write_text(json.dumps({**record, "run_dir": str(version)}, indent=2))
    return row


def run_sweep(sweep: Sweep, only: Sequence[str] = (), jobs: int = 1, threads: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the points not yet done (``only``: these names), then tabulate every finished point.

    Returns (rows, failed point names); writes ``<out>/results.csv`` and the summary figure.
    """
    points = sweep.points()
    names = {p.name for p in points}
    unknown = [n for n in only if n not in names]
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(names), n=1)
        raise SweepError(f"{sweep.path}: no point {unknown[0]!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    todo = [p for p in points if (not only or p.name in only) and not p.done]
    for p in points:
        p.write()
    failed: list[str] = []
    t0 = time.time()
    print(f"[sweep] {sweep.path.name}: {len(points)} points, {len(todo)} to run, {jobs} at a time; logs in {sweep.out}",
          file=sys.stderr, flush=True)  # fmt: skip
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(_run_point, p, threads) for p in todo]
        for i, future in enumerate(as_completed(futures), 1):  # report each point as it finishes
            point, rc, secs = future.result()
            row = _finish(point) if rc == 0 else None
            status = f"val/loss {row['loss']:.4f}" if row else f"FAILED (exit {rc}; see {sweep.out / (point.name + '.log')})"
            if row is None:
                failed.append(point.name)
            print(f"[sweep] {i}/{len(todo)} {point.name}: {status} in {secs:.0f} s (total {time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
    rows = []
    for p in points:
        version = _latest_version(p.run_dir) if p.done else None
        row = collect_run_row(version, p.name, sweep.split) if version else None
        if row is not None:
            rows.append(row)
    write_results(rows, sweep.out / "results.csv")
    if rows:
        _log_summary(rows, sweep.out / "summary")
    return rows, failed


def _log_summary(rows: list[dict[str, Any]], folder: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    try:
        writer.add_figure("sweep/val_loss_vs_epochs", summary_figure(rows))
        writer.add_text("sweep/results", "```\n" + format_table(rows) + "\n```")
        for r in rows:
            writer.add_scalar(f"sweep/final_val_loss/{r['run_id']}", r["loss"])
    finally:
        writer.close()


def _dry_run(sweep: Sweep) -> int:
    """Expand into a temporary folder and parse every point's YAML; run nothing."""
    import tempfile

    from trainer.cli import ConfigError, parse_config

    with tempfile.TemporaryDirectory(prefix="sweep-dry-") as tmp:
        sweep.out = Path(tmp)
        points = sweep.points()
        for p in points:
            try:
                parse_config(["fit", *p.config_args()])
            except ConfigError as exc:
                print(f"[sweep] point {p.name}: {exc}", file=sys.stderr)
                return 2
    print(f"[sweep] {len(points)} points parse: " + ", ".join(p.name for p in points))
    return 0


def sweep_main(argv: Sequence[str]) -> int:
    """``trainer sweep --config S.yaml [--out DIR] [--only A,B] [--jobs N] [--threads T] [--expand-only] [--dry-run]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="trainer sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the sweep file")
    parser.add_argument("--out", default=None, help="override sweep.out")
    parser.add_argument("--only", default="", help="comma-separated point names to run")
    parser.add_argument("--jobs", type=int, default=1, help="points run at a time (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of each run (default: inherit)")
    parser.add_argument("--expand-only", action="store_true", help="write the run YAMLs and print their commands")
    parser.add_argument("--dry-run", action="store_true", help="expand into a temporary folder and parse every point")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        sweep = load_sweep(args.config, args.out)
        if args.jobs < 1:
            raise SweepError(f"--jobs must be at least 1, got {args.jobs}")
        if args.dry_run:
            return _dry_run(sweep)
        if args.expand_only:
            for p in sweep.points():
                print(f"trainer fit --config {p.write()}")
            return 0
        only = [n for n in args.only.split(",") if n]
        rows, failed = run_sweep(sweep, only, args.jobs, args.threads)
    except SweepError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(format_table(rows))
    print(f"[sweep] results: {sweep.out / 'results.csv'} ({len(rows)} rows); view: tensorboard --logdir {sweep.out}")
    if failed:
        print(f"[sweep] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
