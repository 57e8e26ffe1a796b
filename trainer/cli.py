"""The ``trainer`` command: a ``LightningCLI`` subclass (DESIGN.md, "The CLI").

``trainer fit --config yaml/<paper>/<experiment>.yaml [--config preset.yaml] [--key value ...]``

What it adds to Lightning's CLI:

- short class names for every module, datamodule and callback of this project (the packages are
  imported here, and class names are unique across the project);
- defaults a user expects without writing them: TensorBoard under
  ``runs/<paper>/<experiment>/version_N``, a Rich progress bar, ``ModelCheckpoint(save_last=True)``,
  a learning-rate monitor, a NaN/Inf guard, a checkpoint on SIGTERM/SIGINT, seed 0;
- the resolved config saved next to the events with the package version and git commit, and
  posted to TensorBoard as text;
- ``omegaconf+`` parsing: several ``--config`` files merge left to right, flags win, ``${...}``
  interpolation is resolved after the merge with paths relative to the subcommand, and
  ``callbacks+:`` appends;
- ``--ckpt_path last`` resumes into the run directory it came from, and refuses a config whose
  change is not resume-safe (with the diff);
- short errors (exit code 2) naming the file, the key and the nearest valid key, and
  ``trainer check --config X`` that reports every problem of a config at once.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml as pyyaml
from jsonargparse import ArgumentParser, Namespace, set_parsing_settings
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

import callbacks  # noqa: F401  (short class names in YAML)
import datamodules  # noqa: F401
import modules  # noqa: F401
import trainer as _pkg
from callbacks.run_safety import NonFiniteLossError, NonFiniteLossGuard, SignalCheckpoint
from trainer.paths import PROJECT_ROOT, resolve_config_path

__all__ = ["TrainerCLI", "ConfigError", "main", "parse_config", "check_config", "PROJECT_ROOT"]

RUNS_DIR = "runs"
# The main job: what a bare ``trainer fit`` runs (NeuroTrails on scikit-learn's digits, a few minutes on CPU).
DEFAULT_EXPERIMENT = "yaml/neurotrails/digits_mlp_neurotrails.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Keys that may change between a run and its resume (flattened, relative to the subcommand).
RESUME_SAFE_PREFIXES = (
    "ckpt_path",
    "allow_config_change",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.min_epochs",
    "trainer.min_steps",
    "trainer.limit_val_batches",
    "trainer.limit_test_batches",
    "trainer.limit_predict_batches",
    "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch",
    "trainer.num_sanity_val_steps",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.accelerator",
    "trainer.profiler",
    "trainer.logger",
    "data.init_args.num_workers",
)

set_parsing_settings(omegaconf_absolute_to_relative_paths=True)


class ConfigError(Exception):
    """A problem with the user's configuration: printed in a few lines, exit code 2.

    ``raw`` keeps jsonargparse's original message and ``key`` the offending key, when known.
    """

    def __init__(self, message: str, raw: str = "", key: str | None = None, parser: Any = None) -> None:
        super().__init__(message)
        self.raw = raw
        self.key = key
        self.parser = parser


# --------------------------------------------------------------------------------------------
# argv helpers
# --------------------------------------------------------------------------------------------


_resolve_config_path = resolve_config_path  # a --config value, as given or under the project root


def _config_args(argv: Sequence[str]) -> Iterator[tuple[int, str]]:
    """(index of the value, value) for every ``--config``/``-c`` in ``argv``."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "-c") and i + 1 < len(argv):
            yield i + 1, argv[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            yield i, a.split("=", 1)[1]
        i += 1


def _prepare_argv(argv: Sequence[str]) -> list[str]:
    """Resolve config paths; fail early, in one line, on a missing config file."""
    out = list(argv)
    for idx, value in _config_args(argv):
        resolved = _resolve_config_path(value)
        if not os.path.isfile(resolved):
            near = _nearest_files(value)
            hint = f" Did you mean {near}?" if near else ""
            raise ConfigError(f"config file not found: {value}.{hint}")
        out[idx] = resolved if out[idx] == value else f"--config={resolved}"
    return out


def _nearest_files(value: str) -> str:
    base = PROJECT_ROOT / "yaml"
    if not base.is_dir():
        return ""
    known = [str(p.relative_to(PROJECT_ROOT)) for p in base.rglob("*.yaml")]
    match = difflib.get_close_matches(value, known, n=1, cutoff=0.5)
    return match[0] if match else ""


def run_name(argv: Sequence[str]) -> tuple[str, str]:
    """(paper, experiment) from the last ``--config`` that is not a ``yaml/_base`` preset."""
    configs = [v for _, v in _config_args(argv)]
    main = [c for c in configs if "_base" not in Path(c).parts]
    if not main:
        return "default", "cli"
    path = Path(main[-1])
    return path.parent.name or "default", path.stem


# --------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------


def git_commit() -> str:
    """The project's git commit (with ``-dirty``), or ``unknown`` outside a checkout."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance_header() -> list[str]:
    import lightning
    import torch

    return [
        f"paper-trainer=={_pkg.__version__} git={git_commit()}",
        f"lightning=={lightning.__version__} torch=={torch.__version__}",
        "command: trainer " + " ".join(sys.argv[1:]),
    ]


# --------------------------------------------------------------------------------------------
# config saving
# --------------------------------------------------------------------------------------------


class RunConfigSaver(SaveConfigCallback):
    """Save the resolved config (with provenance header) into the run directory and to TensorBoard.

    On a resume into the same directory the file is rewritten (the resume guard has already
    compared it with the new config). ``validate`` / ``test`` / ``predict`` save ``config_<stage>.yaml``, so an
    evaluation logged into a training run's directory (``--ckpt_path last``) never replaces its ``config.yaml``.
    """

    def __init__(self, parser: LightningArgumentParser, config: Namespace, **kwargs: Any) -> None:
        kwargs["overwrite"] = True
        super().__init__(parser, config, **kwargs)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        stage = str(getattr(stage, "value", stage))
        if stage != "fit":
            self.config_filename = f"config_{stage}.yaml"
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                header = "\n".join(f"    # {line}" for line in provenance_header())
                body = "\n".join("    " + line for line in text.splitlines())
                logger.experiment.add_text("config", header + "\n" + body, global_step=trainer.global_step)


# --------------------------------------------------------------------------------------------
# the parser: short errors instead of a usage dump
# --------------------------------------------------------------------------------------------


class TrainerArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` that raises instead of printing usage and exiting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["exit_on_error"] = False
        kwargs["allow_abbrev"] = False  # '--trainer.max_epoch' must not silently mean max_epochs
        super().__init__(*args, **kwargs)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a config dict; a ``class_path`` spec flattens to ``.class_path`` and ``.init_args.*``."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v and "class_path" not in v:
                out.update(_flatten(v, key))
            elif isinstance(v, dict) and "class_path" in v:
                out[key + ".class_path"] = v.get("class_path")
                out.update(_flatten(v.get("init_args") or {}, key + ".init_args"))
                out.update(_flatten(v.get("dict_kwargs") or {}, key + ".dict_kwargs"))
            else:
                out[key] = v
    return out


def _yaml_keys_with_files(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(config file, flattened key) for every key written in the ``--config`` files of ``argv``."""
    found = []
    for _, path in _config_args(argv):
        try:
            data = pyyaml.safe_load(Path(path).read_text()) or {}
        except (OSError, pyyaml.YAMLError):
            continue
        if isinstance(data, dict):
            for key in _flatten(data):
                found.append((path, key.replace("+", "")))
    return found


def _display_path(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return path


def _class_init_names(class_path: str) -> list[str]:
    """``__init__`` parameter names of a class (its MRO), for "did you mean" suggestions."""
    import inspect

    try:
        cls = _import_class(class_path)
    except Exception:  # noqa: BLE001 - a suggestion is best-effort
        return []
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            with contextlib.suppress(TypeError, ValueError):
                names += [p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "args", "kwargs")]
    return list(dict.fromkeys(names))


def _import_class(path: str) -> type:
    """Import ``a.b.C``, or find a short name ``C`` among this project's exports."""
    import importlib

    module, _, name = path.rpartition(".")
    if not module:
        for pkg in (modules, datamodules, callbacks):
            if name in getattr(pkg, "__all__", ()):
                return getattr(pkg, name)
        raise ImportError(f"no class named {name!r} in modules, datamodules or callbacks")
    return getattr(importlib.import_module(module), name)


def _known_class_names() -> list[str]:
    import lightning.pytorch.callbacks as lcb

    names = list(lcb.__all__)
    for pkg in (modules, datamodules, callbacks):
        names += list(getattr(pkg, "__all__", []))
    return names


def _nearest(word: str, candidates: Sequence[str]) -> str | None:
    match = difflib.get_close_matches(word, [c for c in candidates if c], n=1, cutoff=0.6)
    return match[0] if match else None


def _parser_keys(parser: ArgumentParser | None, subcommand: str = "fit") -> list[str]:
    """Every option ``dest`` of the subcommand's parser (``trainer.max_epochs``, ``model`` ...)."""
    if parser is None:
        return []
    subs = [parser]
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict) and subcommand in choices:
            subs.append(choices[subcommand])
    return [a.dest for p in subs for a in p._actions if getattr(a, "dest", None) not in (None, "help", "config")]


def _unknown_flags(argv: Sequence[str], parser: ArgumentParser | None) -> list[str]:
    known = set(_parser_keys(parser))
    bad = []
    for a in argv:
        if not a.startswith("--") or a.startswith("--config"):
            continue
        key = a[2:].split("=", 1)[0]
        if key.split(".")[0] in ("model", "data") or key in known or key.rstrip("+") in known:
            continue
        if any(k.startswith(key.split(".")[0] + ".") and key.startswith(k + ".") for k in known):
            continue
        bad.append(key)
    return bad


def _where(key: str, argv: Sequence[str]) -> str:
    """The config file that sets ``key`` last, or "the command line"."""
    flags = [a[2:].split("=", 1)[0].rstrip("+") for a in argv if a.startswith("--") and not a.startswith("--config")]
    if any(key == f or key.startswith(f + ".") for f in flags):
        return "the command line"
    written = _yaml_keys_with_files(argv)
    hits = [f for f, k in written if k == key]
    for depth in (3, 2):  # a list item or a parent key: match on the leading components
        if not hits:
            head = ".".join(key.split(".")[:depth])
            hits = [f for f, k in written if k == head or k.startswith(head + ".")]
    return _display_path(hits[-1]) if hits else "the merged config"


def explain_parse_error(message: str, argv: Sequence[str], parser: ArgumentParser | None = None) -> tuple[str, str, str | None]:
    """(key, problem, suggestion) for a jsonargparse error message."""
    msg = str(message)
    group_m = re.search(r'Parser key "([^"]+)"', msg)
    group = group_m.group(1) if group_m else ""
    cp_m = re.search(r"Problem with given class_path '([^']+)'", msg)
    not_accepted = re.search(r"does not accept (?:option|nested key) '([^']+)'", msg)
    if "unrecognized arguments" in msg or (not_accepted and not re.search(r"class_path '", msg)):
        bad = _unknown_flags(argv, parser)
        key = not_accepted.group(1) if not_accepted else bad[0] if bad else msg.split(":", 1)[-1].strip()
        prefix = key.rsplit(".", 1)[0] if "." in key else ""
        level = [k.split(".")[-1] for k in _parser_keys(parser) if (k.rsplit(".", 1)[0] if "." in k else "") == prefix]
        near = _nearest(key.split(".")[-1], level)
        return key, f"unknown option '{key}'", (f"{prefix}.{near}" if prefix else near) if near else None
    if cp_m:
        class_path = cp_m.group(1)
        sub = msg[cp_m.end():]
        opt = re.search(r"Option '([^']+)' is not accepted", sub) or re.search(r"does not accept nested key '([^']+)'", sub)
        typ = re.search(r'Parser key "([^"]+)":\s*\n\s*(.+)', sub)
        if opt:
            key = f"{group}.init_args.{opt.group(1)}" if group else opt.group(1)
            near = _nearest(opt.group(1), _class_init_names(class_path))
            short = class_path.split(".")[-1]
            return key, f"{short} has no argument '{opt.group(1)}'", f"{key.rsplit('.', 1)[0]}.{near}" if near else None
        if typ:
            key = f"{group}.init_args.{typ.group(1)}" if group else typ.group(1)
            problem = typ.group(2).strip()
            tm = re.match(r"Expected a <class '(\w+)'>\. Got value: (.*)", problem)
            return key, (f"expected {tm.group(1)}, got {tm.group(2)!r}" if tm else problem), None
        imp = re.search(r"\n\s*((?:module|No module|Unable|cannot import|Import)[^\n]*)", sub)
        if imp:
            short = class_path.split(".")[-1]
            return f"{group}.class_path", f"cannot import class '{class_path}' ({imp.group(1).strip()})", _nearest(
                short, _known_class_names()
            )
        first = next((ln.strip() for ln in sub.splitlines()[1:] if ln.strip()), "invalid value")
        return group or "?", first, None
    dot = re.search(r"Expected a dot import path string: (\S+)", msg)
    if dot:
        name = dot.group(1)
        return (f"{group}.class_path" if group else "class_path"), f"unknown class '{name}'", _nearest(
            name.split(".")[-1], _known_class_names()
        )
    expected = [t for t in re.findall(r"Expected a <class '(\w+)'>", msg) if t != "NoneType"]
    given = re.search(r"Given value: (.*)", msg) or re.search(r"Got value: (.*)", msg)
    if expected:
        got = given.group(1).strip() if given else "?"
        return group or "?", f"expected {' or '.join(dict.fromkeys(expected))}, got {got!r}", None
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip() and not ln.strip().startswith(("Subtypes", "Given value type"))]
    return group or "?", " ".join(lines[1:3] or lines[:1])[:300], None


def format_parse_error(
    message: str, argv: Sequence[str], parser: ArgumentParser | None = None, hint: bool = True
) -> str:
    """At most 6 lines: where (file), which key, what is wrong, the nearest valid key."""
    key, problem, suggestion = explain_parse_error(message, argv, parser)
    lines = [f"error in {_where(key, argv)}, key '{key}':", f"  {problem}"]
    if suggestion:
        lines.append(f"  did you mean '{suggestion}'?")
    if hint:
        lines.append("  ('trainer check --config <file>' lists every problem of a config at once)")
    return "\n".join(lines)


def _config_error(exc: BaseException, argv: Sequence[str], parser: ArgumentParser | None) -> ConfigError:
    key = explain_parse_error(str(exc), argv, parser)[0]
    return ConfigError(format_parse_error(str(exc), argv, parser), raw=str(exc), key=key, parser=parser)


# --------------------------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------------------------


class TrainerCLI(LightningCLI):
    """``LightningCLI`` with this project's defaults (module docstring).

    Use it in-process like Lightning's: ``TrainerCLI(args=["fit", "--config", path], run=True)``.
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        argv = list(sys.argv[1:] if args is None else args)
        if argv[:1] == ["fit"] and not any(True for _ in _config_args(argv)) and not any(
            a.startswith(("--model", "-h", "--help", "--print_config")) for a in argv
        ):
            print(f"[trainer] no --config given: running the default experiment {DEFAULT_EXPERIMENT}", file=sys.stderr)
            argv = ["fit", "--config", DEFAULT_EXPERIMENT, *argv[1:]]
        argv = _prepare_argv(argv)
        if not run and argv[:1] and argv[0] in SUBCOMMANDS:
            argv = argv[1:]  # run=False builds a parser without subcommands
        self._argv = argv
        self._paper, self._experiment = run_name(argv)
        self._resume_dir: Path | None = None
        parser_kwargs = kwargs.pop("parser_kwargs", {})
        parser_kwargs.setdefault("parser_mode", "omegaconf+")
        parser_kwargs.setdefault("default_env", False)
        for sub in SUBCOMMANDS:
            parser_kwargs.setdefault(sub, {})
            parser_kwargs[sub].setdefault("parser_mode", "omegaconf+")
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("parser_class", TrainerArgumentParser)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("trainer_defaults", {})
        kwargs["trainer_defaults"].setdefault(
            "logger",
            {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": RUNS_DIR, "name": f"{self._paper}/{self._experiment}"},
            },
        )
        try:
            super().__init__(
                LightningModule,
                LightningDataModule,
                args=argv,
                run=run,
                parser_kwargs=parser_kwargs,
                **kwargs,
            )
        except ConfigError:
            raise
        except Exception as exc:  # jsonargparse raises ArgumentError (exit_on_error=False)
            if type(exc).__name__ in ("ArgumentError", "NSKeyError") or "jsonargparse" in type(exc).__module__:
                if os.environ.get("TRAINER_DEBUG"):
                    raise
                raise _config_error(exc, argv, getattr(self, "parser", None)) from exc
            raise

    # -- parser -----------------------------------------------------------------------------

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # Lightning warns when both sys.argv and args are given; we always pass args explicitly.
        self.config = parser.parse_object(args) if isinstance(args, (dict, Namespace)) else parser.parse_args(args)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs["dump_header"] = provenance_header()
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--allow_config_change",
            type=bool,
            default=False,
            help="With --ckpt_path last: resume even if the config changed in a way that is not resume-safe.",
        )

    # -- resume -----------------------------------------------------------------------------

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        if sub == "fit" and cfg.get("ckpt_path") == "last":
            self._resolve_last_checkpoint(cfg)
        elif sub in ("validate", "test", "predict") and cfg.get("ckpt_path") == "last":
            self._resolve_last_checkpoint(cfg, evaluate=True)

    def _logger_location(self, cfg: Namespace) -> tuple[Path, str] | None:
        logger = cfg.get("trainer", {}).get("logger") if isinstance(cfg.get("trainer"), Namespace) else None
        if isinstance(logger, Namespace) and str(logger.get("class_path", "")).endswith("TensorBoardLogger"):
            init = logger.get("init_args") or Namespace()
            return Path(str(init.get("save_dir") or RUNS_DIR)) / str(init.get("name") or "lightning_logs"), "tb"
        return None

    def _resolve_last_checkpoint(self, cfg: Namespace, evaluate: bool = False) -> None:
        """``--ckpt_path last``: the newest ``last.ckpt`` of this config's run directory. ``fit`` resumes it;
        ``validate`` / ``test`` / ``predict`` (``evaluate``) load it and log into the same run directory, so the
        evaluation sits next to the training curves."""
        loc = self._logger_location(cfg)
        root = loc[0] if loc else Path(cfg.trainer.get("default_root_dir") or ".") / "lightning_logs"
        versions = sorted(
            (p for p in root.glob("version_*") if (p / "checkpoints" / "last.ckpt").is_file()),
            key=lambda p: int(p.name.split("_")[-1]) if p.name.split("_")[-1].isdigit() else -1,
        )
        if not versions:
            if evaluate and not cfg.trainer.get("fast_dev_run"):
                raise ConfigError(f"--ckpt_path last: no last.ckpt under {root}; run `trainer fit` with this config "
                                  "first, or pass the checkpoint's path")  # fmt: skip
            what = "evaluating the initial weights" if evaluate else "starting a new run"
            print(f"[trainer] --ckpt_path last: no last.ckpt under {root}; {what}", file=sys.stderr)
            cfg.ckpt_path = None
            return
        run_dir = versions[-1]
        if not evaluate:
            self._check_resume_safe(run_dir / "config.yaml", cfg)
        cfg.ckpt_path = str(run_dir / "checkpoints" / "last.ckpt")
        self._resume_dir = run_dir
        if loc:
            cfg.trainer.logger.init_args.version = int(run_dir.name.split("_")[-1])
        print(f"[trainer] {'loading' if evaluate else 'resuming from'} {cfg.ckpt_path}", file=sys.stderr)

    def _check_resume_safe(self, saved_path: Path, cfg: Namespace) -> None:
        if not saved_path.is_file():
            return
        saved = _flatten(pyyaml.safe_load(saved_path.read_text()) or {})
        current = _flatten(pyyaml.safe_load(self._parser("fit").dump(cfg, skip_none=False)) or {})
        diff = []
        for key in sorted(set(saved) | set(current)):
            if any(key == p or key.startswith(p + ".") for p in RESUME_SAFE_PREFIXES):
                continue
            if saved.get(key) != current.get(key):
                diff.append(f"  {key}: {saved.get(key)!r} -> {current.get(key)!r}")
        if diff and not cfg.get("allow_config_change"):
            shown = diff[:8] + ([f"  ... and {len(diff) - 8} more"] if len(diff) > 8 else [])
            raise ConfigError(
                f"refusing to resume {saved_path.parent}: the config changed in ways that are not resume-safe:\n"
                + "\n".join(shown)
                + "\n  (pass --allow_config_change true to resume anyway, or drop --ckpt_path to start a new run)"
            )

    # -- trainer ----------------------------------------------------------------------------

    def _instantiate_trainer(self, config: dict[str, Any], callbacks_: list[Callback]) -> Trainer:
        cbs = config.get("callbacks") or []
        if not isinstance(cbs, list):
            cbs = [cbs]
        present = list(cbs) + list(callbacks_)
        defaults: list[Callback] = []
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in present):
            defaults.append(RichProgressBar(leave=True))
        if config.get("enable_checkpointing", True) is not False and not any(
            isinstance(c, ModelCheckpoint) for c in present
        ):
            defaults.append(ModelCheckpoint(save_last=True))
        if config.get("logger", True) not in (False, None) and not any(
            isinstance(c, LearningRateMonitor) for c in present
        ):
            defaults.append(LearningRateMonitor(logging_interval="step"))
        if not any(isinstance(c, NonFiniteLossGuard) for c in present):
            defaults.append(NonFiniteLossGuard())
        if not any(isinstance(c, SignalCheckpoint) for c in present):
            defaults.append(SignalCheckpoint())
        config["callbacks"] = cbs
        return super()._instantiate_trainer(config, list(callbacks_) + defaults)

    def after_fit(self) -> None:
        # trainer.log_dir is a collective (broadcast): read the logger's directly, on rank 0 only.
        log_dir = getattr(self.trainer.logger, "log_dir", None)
        if self.trainer.is_global_zero and log_dir and not self.trainer.fast_dev_run:
            print(f"[trainer] logs: {log_dir}\n[trainer] view: tensorboard --logdir {log_dir} --host 127.0.0.1")


# --------------------------------------------------------------------------------------------
# parse-only and check
# --------------------------------------------------------------------------------------------


class _ParseOnlyCLI(TrainerCLI):
    """Parses and validates like ``TrainerCLI`` but instantiates and runs nothing."""

    def _set_seed(self) -> None:
        pass

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def parse_config(args: Sequence[str]) -> Namespace:
    """Parse ``args`` (``["fit", "--config", ...]``) without instantiating anything."""
    return _ParseOnlyCLI(args=list(args), run=True).config


def check_config(args: Sequence[str], instantiate: bool = True, max_problems: int = 20) -> list[str]:
    """Every problem of a config, as short messages (empty list = valid).

    Parsing stops at the first error, so the offending key is removed from a merged copy of the
    config and parsing is repeated until it succeeds (at most ``max_problems`` rounds). Then, if
    ``instantiate``, the model, datamodule and callbacks are built (without data or training),
    which catches value errors raised by constructors.
    """
    argv = _prepare_argv(list(args))
    if not argv or argv[0] not in SUBCOMMANDS:
        argv = ["fit", *argv]
    problems: list[str] = []
    merged = _merge_configs([v for _, v in _config_args(argv)])
    rest = _strip_configs(argv)
    cfg = None
    for _ in range(max_problems):
        with _temp_yaml(merged) as path:
            try:
                cfg = parse_config([rest[0], "--config", path, *rest[1:]])
                break
            except ConfigError as exc:
                if not exc.raw:
                    problems.append(str(exc))
                    break
                problems.append(format_parse_error(exc.raw, argv, exc.parser, hint=False))
                if not exc.key or not _delete_key(merged, exc.key):
                    break
    if cfg is None or problems or not instantiate:
        return problems
    sub = cfg.get("subcommand")
    section = cfg[sub] if sub else cfg
    for group in ("model", "data"):
        spec = section.get(group)
        if spec is None:
            continue
        try:
            _instantiate(spec)
        except Exception as exc:  # noqa: BLE001 - report, do not crash
            problems.append(f"{group} ({spec.get('class_path')}): {type(exc).__name__}: {exc}")
    for i, spec in enumerate(section.get("trainer", Namespace()).get("callbacks") or []):
        try:
            _instantiate(spec)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"trainer.callbacks[{i}] ({spec.get('class_path')}): {type(exc).__name__}: {exc}")
    return problems


def _instantiate(spec: Namespace) -> Any:
    """Build one ``class_path``/``init_args`` spec (check only: no data is loaded by constructors)."""
    cls = _import_class(str(spec.class_path))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "obj")
    init = spec.get("init_args") or Namespace()
    cfg = parser.parse_object({"obj": init.as_dict() if isinstance(init, Namespace) else dict(init)})
    return parser.instantiate_classes(cfg).obj


def _merge_configs(paths: Sequence[str]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in paths:
        data = pyyaml.safe_load(Path(path).read_text()) or {}
        _deep_merge(merged, data)
    return merged


def _deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if k.endswith("+") and isinstance(v, list):
            base = k[:-1]
            dst[base] = list(dst.get(base) or []) + v
        elif isinstance(v, dict) and isinstance(dst.get(k), dict) and "class_path" not in v:
            _deep_merge(dst[k], v)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict) and v.get("class_path") in (None, dst[k].get("class_path")):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v


def _strip_configs(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in ("--config", "-c"):
            skip = True
            continue
        if a.startswith("--config="):
            continue
        out.append(a)
    return out


@contextlib.contextmanager
def _temp_yaml(data: dict[str, Any]) -> Iterator[str]:
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".yaml", prefix="trainer-check-")
    try:
        with os.fdopen(fd, "w") as f:
            pyyaml.safe_dump(data, f, sort_keys=False)
        yield path
    finally:
        os.unlink(path)


def _delete_key(d: dict[str, Any], dotted: str) -> bool:
    parts = dotted.split(".")
    node: Any = d
    for i, p in enumerate(parts[:-1]):
        key = p if isinstance(node, dict) and p in node else p + "+"
        if not isinstance(node, dict) or key not in node:
            return False
        if isinstance(node[key], list):  # a bad list item (a callback): drop the list
            del node[key]
            return True
        node = node[key]
    if isinstance(node, dict):
        for k in (parts[-1], parts[-1] + "+"):
            if k in node:
                del node[k]
                return True
    return False


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def _check_main(argv: Sequence[str]) -> int:
    try:
        problems = check_config(argv)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print("- " + p.replace("\n", "\n  "), file=sys.stderr)
        return 2
    print("config OK")
    return 0


def prune_command(argv: Sequence[str]) -> Path:
    """``trainer prune --config X.yaml --output DIR [overrides]``: prune the YAML's model with its own
    pruning settings and calibration data (dst_core §10) and save it as a transformers checkpoint.

    The model must offer ``prune_base(datamodule)`` and ``save_pretrained(path)`` (``SEFTCausalLM``,
    ``SEFTLoRABaseline``). Writes ``DIR/`` (weights, config, the datamodule's tokenizer when it has one)
    and ``DIR/pruning.json`` (method, pattern, target and measured sparsity, calibration settings).
    Load the result with ``pretrained: DIR`` and ``prune_method: none``.
    """
    import json

    argv = list(argv)
    if "--output" not in argv or argv.index("--output") + 1 >= len(argv):
        raise ConfigError("trainer prune: give --output DIR (where the pruned model is saved)")
    i = argv.index("--output")
    out = Path(argv[i + 1])
    del argv[i : i + 2]
    cli = TrainerCLI(args=["fit", *argv], run=False)
    model, dm = cli.model, cli.datamodule
    if not (hasattr(model, "prune_base") and hasattr(model, "save_pretrained")):
        raise ConfigError(f"trainer prune: {type(model).__name__} cannot prune (it lacks prune_base/save_pretrained)")
    if dm is not None:
        dm.prepare_data()
        dm.setup("fit")
    model.prune_base(dm)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok = getattr(dm, "tokenizer", None)
    if tok is not None and hasattr(tok, "save_pretrained"):
        tok.save_pretrained(str(out))
    hp = model.hparams
    report = {
        "model": type(model).__name__,
        "prune_method": hp.get("prune_method"),
        "prune_pattern": hp.get("prune_pattern"),
        "sparsity_target": hp.get("sparsity"),
        "sparsity_measured": model.target_sparsity(),
        "calibration_samples": hp.get("calibration_samples"),
        "calibration_source": getattr(dm, "calibration_source", None),
        "targets": list(getattr(model, "target_paths", [])),
    }
    (out / "pruning.json").write_text(json.dumps(report, indent=2))
    print(f"pruned to sparsity {report['sparsity_measured']:.4f} ({report['prune_method']}, "
          f"{report['prune_pattern']}); saved to {out}")  # fmt: skip
    return out


#: Further subcommands, ``name -> "module:function"``; the function takes the arguments after the name
#: and returns the exit code (2 for bad input, with a one-line message on stderr).
EXTRA_COMMANDS: dict[str, str] = {
    "fit-law": "trainer.scaling_law:fit_law_main",  # sparse_scaling.md §2: fit the law to a runs table
    "predict-law": "trainer.scaling_law:predict_law_main",  # predictions and optimal densities
    "sweep": "trainer.sweep:sweep_main",  # expand a sweep file into run YAMLs, run them, tabulate
}


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point: ``trainer <fit|validate|test|predict|check|prune|fit-law|predict-law|sweep> ...``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "check":
        return _check_main(argv[1:])
    if argv and argv[0] in EXTRA_COMMANDS:  # subcommands that do not train, driven by the same YAML
        import importlib

        module_name, func = EXTRA_COMMANDS[argv[0]].split(":")
        return int(getattr(importlib.import_module(module_name), func)(argv[1:]))
    if argv and argv[0] == "prune":
        try:
            prune_command(argv[1:])
        except (ConfigError, ValueError) as exc:
            print(str(exc), file=sys.stderr)
            return 2
        return 0
    try:
        TrainerCLI(args=argv)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 1
    except SIGTERMException:
        return 128 + 15  # the scheduler sees a terminated job, not a finished one
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
