"""The generic test matrix (STYLE.md): every plug-in and every YAML passes these without writing them.

Discovery walks the packages' ``__all__`` and ``yaml/**`` (tests/discovery.py); nothing is listed here.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

import callbacks as callbacks_pkg
from tests import discovery as disc
from tests.toy import quiet_trainer
from trainer.cli import TrainerCLI, main, parse_config
from trainer.protocols import HasMasks

ROOT = disc.ROOT
SMOKE = disc.smoke_yaml()
IDS = {p: disc.rel(p) for p in disc.all_yaml()}


def _ids(paths):
    return [disc.rel(p) for p in paths]


# ----------------------------------------------------------------------------------------------
# YAML: parses, has its header, is named by its README
# ----------------------------------------------------------------------------------------------


def _header_and_readme(path: Path) -> None:
    head = disc.header(path)
    assert head, f"{disc.rel(path)} must open with a comment header"
    commands = [ln for ln in head if ln.startswith("Command:")]
    assert commands and disc.rel(path) in commands[0] and "trainer " in commands[0], (
        f"{disc.rel(path)}: header needs 'Command: trainer <subcommand> --config {disc.rel(path)}'"
    )
    readme = path.parent / "README.md"
    assert readme.is_file(), f"{disc.rel(path.parent)} needs a README.md"
    assert path.name in readme.read_text(), f"{disc.rel(readme)} does not mention {path.name}"


@pytest.mark.parametrize("path", disc.run_yaml(), ids=_ids(disc.run_yaml()))
def test_yaml_parses_with_header_and_readme(path):
    cfg = parse_config(["fit", "--config", str(path)]).fit
    assert cfg.model is not None and cfg.model.class_path, "a run YAML names its model"
    _header_and_readme(path)


@pytest.mark.parametrize("path", disc.other_yaml(), ids=_ids(disc.other_yaml()))
def test_law_and_sweep_yaml_validate(path, tmp_path):
    """Law files load with every key checked; sweep files expand, and every expanded run YAML parses."""
    kind = disc.yaml_kind(path)
    if kind == "law":
        from trainer.scaling_law import load_law_config

        load_law_config(path)
    else:
        from trainer.sweep import load_sweep

        points = load_sweep(path, out=tmp_path).points()
        assert points, f"{disc.rel(path)} expands to no run"
        for point in points[:3] + points[-1:]:  # the first and last points cover every axis' ends
            assert parse_config(["fit", *point.config_args()]).fit.model is not None
    _header_and_readme(path)


@pytest.mark.parametrize("preset", disc.presets(), ids=_ids(disc.presets()))
def test_preset_parses_with_every_smoke(preset):
    assert disc.header(preset), f"{disc.rel(preset)} must open with a comment header"
    assert SMOKE, "no smoke.yaml found under yaml/"
    for smoke in SMOKE:
        cfg = parse_config(["fit", "--config", str(smoke), "--config", str(preset)]).fit
        assert cfg.trainer is not None


def test_every_paper_folder_has_readme_and_smoke():
    for folder in sorted(p for p in disc.YAML_DIR.iterdir() if p.is_dir() and not p.name.startswith("_")):
        assert (folder / "README.md").is_file(), folder
        assert (folder / "smoke.yaml").is_file(), folder


# ----------------------------------------------------------------------------------------------
# fast_dev_run of every CPU-runnable YAML
# ----------------------------------------------------------------------------------------------


def _finite_train_losses(trainer: pl.Trainer) -> dict[str, float]:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/") and "loss" in k}
    assert metrics, f"no train/*loss* metric logged; got {sorted(trainer.callback_metrics)}"
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    assert not bad, f"non-finite losses: {bad}"
    return metrics


@pytest.mark.parametrize("path", disc.cpu_runnable_yaml(), ids=_ids(disc.cpu_runnable_yaml()))
def test_fast_dev_run(path, in_tmp):
    cli = TrainerCLI(
        args=["fit", "--config", str(path), "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"]
    )
    assert cli.trainer.global_step == 1
    _finite_train_losses(cli.trainer)


# ----------------------------------------------------------------------------------------------
# module conformance
# ----------------------------------------------------------------------------------------------


def _class_by_name(name: str) -> type:
    for cls in disc.exported(object):
        if cls.__name__ == name:
            return cls
    raise LookupError(name)


def _instantiate(cls: type) -> Any:
    assert hasattr(cls, "unit_test_params"), f"{cls.__name__} lacks unit_test_params() (discovery requires it)"
    return cls(**cls.unit_test_params())


def _tiny_trainer(tmp_path: Path, max_steps: int, callbacks=()) -> pl.Trainer:
    return quiet_trainer(callbacks, max_steps=max_steps, limit_val_batches=0, default_root_dir=str(tmp_path))


@pytest.mark.parametrize("cls", disc.lightning_modules(), ids=lambda c: c.__name__)
def test_module_conformance(cls, tmp_path):
    pl.seed_everything(0)
    model = _instantiate(cls)
    dm_name = getattr(cls, "unit_test_datamodule", None)
    assert dm_name, f"{cls.__name__} needs a class attribute unit_test_datamodule naming a datamodule"
    dm_cls = _class_by_name(dm_name)
    # a module may ask for its datamodule in another mode (e.g. segmentation masks instead of labels)
    dm_params = {**dm_cls.unit_test_params(), **getattr(cls, "unit_test_datamodule_params", dict)()}
    dm = dm_cls(**dm_params)

    # hparams hold every __init__ argument
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    missing = [p for p in params if p not in model.hparams]
    assert not missing, f"hparams lack {missing}: call self.save_hyperparameters()"

    extra = []
    if isinstance(model, HasMasks) and "SparseTopology" in callbacks_pkg.__all__:
        topo_cls = getattr(callbacks_pkg, "SparseTopology")
        extra.append(topo_cls(**topo_cls.unit_test_params()))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = _tiny_trainer(tmp_path, 2, extra)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    masks = {name: entry.mask for name, entry in model.mask_set().items()} if isinstance(model, HasMasks) else {}
    unchanged = []
    for name, p in model.named_parameters():
        if name not in before:
            continue
        mask = masks.get(name)
        if mask is not None and mask.dtype == torch.bool and mask.shape == p.shape:
            assert torch.count_nonzero(p.detach()[~mask]) == 0, f"{name}: masked entries are not zero"
            changed = not torch.equal(before[name][mask], p.detach()[mask])
        else:
            changed = not torch.equal(before[name], p.detach())
        if not changed:
            unchanged.append(name)
    assert not unchanged, f"parameters that did not change in two steps: {unchanged}"

    # checkpoint round trip
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = cls.load_from_checkpoint(path, map_location="cpu")
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), f"checkpoint round trip changed {k}"


# ----------------------------------------------------------------------------------------------
# callback state
# ----------------------------------------------------------------------------------------------


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{prefix}{k} (missing on one side)" for k in set(a) ^ set(b)]
        for k in sorted(set(a) & set(b), key=str):
            out += _differences(a[k], b[k], f"{prefix}{k}.")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += _differences(x, y, f"{prefix}{i}.")
        return out
    return [] if _equal(a, b) else [prefix.rstrip(".")]


@pytest.mark.parametrize("cls", disc.callback_classes(), ids=lambda c: c.__name__)
def test_callback_state_round_trip(cls):
    cb = _instantiate(cls)
    state = cb.state_dict()
    fresh = _instantiate(cls)
    fresh.load_state_dict(copy.deepcopy(state))
    assert _equal(fresh.state_dict(), state)
    assert fresh.state_key == cb.state_key == _instantiate(cls).state_key
    clone = pickle.loads(pickle.dumps(cb))
    assert _equal(clone.state_dict(), state)
    if state:  # declared state: unknown keys are refused, not silently dropped
        with pytest.raises((KeyError, ValueError)):
            fresh.load_state_dict({**copy.deepcopy(state), "not_a_state_key": 1})


# ----------------------------------------------------------------------------------------------
# resume equivalence (bitwise on CPU)
# ----------------------------------------------------------------------------------------------


def _fit(workdir: Path, smoke: Path, *extra: str) -> TrainerCLI:
    workdir.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return TrainerCLI(
            args=[
                "fit", "--config", str(smoke), "--trainer.enable_progress_bar", "false",
                "--trainer.max_steps", "-1", *extra,
            ]
        )
    finally:
        os.chdir(cwd)


def _last_ckpt(workdir: Path) -> Path:
    found = sorted(workdir.rglob("last.ckpt"))
    assert len(found) == 1, found
    return found[0]


def _project_callback_states(ckpt: dict) -> dict:
    ours = tuple(callbacks_pkg.__all__)
    return {k: v for k, v in ckpt.get("callbacks", {}).items() if k.split("{")[0] in ours}


@pytest.mark.slow
@pytest.mark.parametrize("smoke", SMOKE, ids=_ids(SMOKE))
def test_resume_equivalence(smoke, tmp_path):
    straight = tmp_path / "straight"
    _fit(straight, smoke, "--trainer.max_epochs", "2")
    resumed = tmp_path / "resumed"
    _fit(resumed, smoke, "--trainer.max_epochs", "1")
    mid_path = tmp_path / "after_epoch1.ckpt"
    shutil.copy(_last_ckpt(resumed), mid_path)
    _fit(resumed, smoke, "--trainer.max_epochs", "2", "--ckpt_path", "last")

    a = torch.load(_last_ckpt(straight), map_location="cpu", weights_only=False)
    b = torch.load(_last_ckpt(resumed), map_location="cpu", weights_only=False)
    mid = torch.load(mid_path, map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] > mid["global_step"] > 0
    assert a["state_dict"].keys() == b["state_dict"].keys()
    diff = _differences(a["state_dict"], b["state_dict"])
    assert not diff, f"weights differ after resume: {diff[:5]}"
    weights_moved = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], mid["state_dict"][k])]
    assert weights_moved, "weights did not change in the second epoch: the test would pass vacuously"
    diff = _differences(a["optimizer_states"], b["optimizer_states"])
    assert not diff, f"optimizer state differs after resume: {diff[:5]}"
    diff = _differences(a.get("lr_schedulers", []), b.get("lr_schedulers", []))
    assert not diff, f"scheduler state differs after resume: {diff[:5]}"
    diff = _differences(_project_callback_states(a), _project_callback_states(b))
    assert not diff, f"callback state differs after resume: {diff[:5]}"


# ----------------------------------------------------------------------------------------------
# 2-rank CPU DDP (and FSDP2 through ModelParallelStrategy) in a subprocess
# ----------------------------------------------------------------------------------------------


def _run_cli_subprocess(tmp_path: Path, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
    )


def _rank_check_args(report: Path) -> list[str]:
    return [
        "--trainer.callbacks+=RankConsistencyCheck",
        f"--trainer.callbacks.report_path={report}",
        "--trainer.enable_progress_bar=false",
        "--trainer.max_epochs=1",
        "--trainer.max_steps=-1",
    ]


@pytest.mark.ddp
@pytest.mark.parametrize("smoke", SMOKE, ids=_ids(SMOKE))
def test_ddp_cpu2_ranks_agree(smoke, tmp_path):
    report = tmp_path / "ranks.json"
    proc = _run_cli_subprocess(
        tmp_path,
        ["fit", "--config", str(smoke), "--config", str(disc.BASE_DIR / "trainer" / "ddp_cpu2.yaml"), *_rank_check_args(report)],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["world_size"] == 2
    assert data["checks"] >= 2, "ranks were compared fewer than twice"


def _overrides_configure_model(smoke: Path) -> bool:
    import yaml

    from trainer.cli import _import_class

    cls = _import_class(yaml.safe_load(smoke.read_text())["model"]["class_path"])
    ours = [klass for klass in cls.__mro__ if not klass.__module__.startswith(("lightning", "builtins", "torch"))]
    return any("configure_model" in vars(klass) for klass in ours)


SHARDABLE_SMOKE = [p for p in SMOKE if _overrides_configure_model(p)]


@pytest.mark.ddp
@pytest.mark.parametrize("smoke", SHARDABLE_SMOKE, ids=_ids(SHARDABLE_SMOKE))
def test_model_parallel_fsdp2_on_cpu(smoke, tmp_path):
    report = tmp_path / "ranks.json"
    proc = _run_cli_subprocess(
        tmp_path,
        [
            "fit", "--config", str(smoke), "--config", str(disc.BASE_DIR / "trainer" / "model_parallel.yaml"),
            "--trainer.accelerator=cpu", "--trainer.devices=2", *_rank_check_args(report),
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["world_size"] == 2 and data["checks"] >= 2


# ----------------------------------------------------------------------------------------------
# README commands
# ----------------------------------------------------------------------------------------------


def _readme_trainer_commands(readme: Path) -> list[str]:
    cmds, in_code = [], False
    for line in readme.read_text().splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
            continue
        s = line.strip()
        if in_code and re.match(r"^trainer (fit|validate|test|predict|check|fit-law|predict-law|sweep)(\s|$)", s):
            cmds.append(s.split(" #")[0].strip())
    return cmds


PAPER_READMES = sorted(p / "README.md" for p in disc.YAML_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))
README_COMMANDS = [(r, c) for r in PAPER_READMES + [ROOT / "README.md"] if r.is_file() for c in _readme_trainer_commands(r)]


@pytest.mark.slow
@pytest.mark.parametrize("readme,command", README_COMMANDS, ids=[f"{disc.rel(r)}::{c}" for r, c in README_COMMANDS])
def test_readme_command_runs(readme, command, in_tmp):
    import shlex

    argv = shlex.split(command)[1:]
    if argv[0] in ("fit-law", "predict-law"):  # seconds on CPU: run as written
        assert main(argv) == 0
        return
    if argv[0] == "sweep":  # hours of training: expand, check every run YAML, run nothing
        assert main([*argv, "--dry-run"]) == 0
        return
    configs = [argv[i + 1] for i, a in enumerate(argv) if a == "--config" and i + 1 < len(argv)]
    needs = [r for c in configs for r in disc.requires(ROOT / c) if (ROOT / c).is_file()]
    if argv[0] == "check" or needs:  # GPU/paper-data commands: must at least validate completely
        argv = argv[1:] if argv[0] == "check" else argv
        assert main(["check", *[a for a in argv if a != "fit"]]) == 0
        return
    assert main([*argv, "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"]) == 0


def test_top_readme_has_exactly_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", section, flags=re.S)
    commands = [ln for b in blocks for ln in b.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(commands) == 2, commands
    assert "trainer fit" in commands[0] and "pytest" in commands[1]


# ----------------------------------------------------------------------------------------------
# project checks
# ----------------------------------------------------------------------------------------------


def _project_classes() -> list[tuple[str, str]]:
    found = []
    for pkg in ("trainer", "modules", "datamodules", "callbacks"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    found.append((node.name, str(path.relative_to(ROOT))))
    return found


def test_class_names_unique_across_project():
    seen: dict[str, str] = {}
    dups = []
    for name, where in _project_classes():
        if name in seen:
            dups.append(f"{name}: {seen[name]} and {where}")
        seen[name] = where
    assert not dups, dups


IMMUTABLE = (type(None), bool, int, float, str, tuple, type)


@pytest.mark.parametrize("cls", disc.exported(object), ids=lambda c: c.__name__)
def test_public_class_documented_with_immutable_defaults(cls):
    if not inspect.isclass(cls):
        return
    assert (cls.__doc__ or "").strip(), f"{cls.__name__} has no docstring"
    if not issubclass(cls, (pl.LightningModule, pl.LightningDataModule, pl.Callback)):
        return
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if p.default is inspect.Parameter.empty:
            continue
        ok = isinstance(p.default, IMMUTABLE) or callable(p.default) or hasattr(p.default, "__members__")
        assert ok and not isinstance(p.default, (list, dict, set)), (
            f"{cls.__name__}.{name} has a mutable default {p.default!r}"
        )
    doc = inspect.getdoc(cls) or ""
    init_doc = inspect.getdoc(cls.__init__) or ""
    for name in inspect.signature(cls.__init__).parameters:
        if name in ("self", "args", "kwargs"):
            continue
        assert re.search(rf"\b{name}\b", doc + init_doc), f"{cls.__name__}: argument '{name}' is not documented"


@pytest.mark.slow
def test_main_job_default_experiment_runs(in_tmp):
    """The README's first command ends in a bare ``trainer fit``: the embedded default experiment."""
    cli = TrainerCLI(args=["fit", "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"])
    assert type(cli.model).__name__.startswith("NeuroTrails")
    _finite_train_losses(cli.trainer)
