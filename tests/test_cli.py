"""The CLI machinery on a toy module: errors, check, composition, run dirs, resume, safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from trainer.cli import TrainerCLI, check_config, main, parse_config

ROOT = Path(__file__).resolve().parent.parent
TOY = str(ROOT / "tests" / "toy.yaml")


def write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def run_main(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.strip() and "Seed set" not in ln]


# -- the four bad-input cases ------------------------------------------------------------------


def test_unknown_key_names_file_key_and_suggestion(in_tmp, capsys):
    bad = write(in_tmp, "bad.yaml", "model:\n  init_args:\n    hiden: 3\n")
    code, lines = run_main(["fit", "--config", TOY, "--config", bad], capsys)
    assert code == 2
    assert len(lines) <= 6
    assert "bad.yaml" in lines[0] and "model.init_args.hiden" in lines[0]
    assert any("did you mean 'model.init_args.hidden'" in ln for ln in lines)


def test_wrong_type(in_tmp, capsys):
    bad = write(in_tmp, "bad.yaml", "trainer:\n  max_epochs: many\n")
    code, lines = run_main(["fit", "--config", TOY, "--config", bad], capsys)
    assert code == 2 and len(lines) <= 6
    assert "bad.yaml" in lines[0] and "trainer.max_epochs" in lines[0]
    assert "expected int" in lines[1] and "many" in lines[1]


def test_unknown_class_path_suggests_project_class(in_tmp, capsys):
    bad = write(in_tmp, "bad.yaml", "trainer:\n  callbacks+:\n    - class_path: NonFiniteLosGuard\n")
    code, lines = run_main(["fit", "--config", TOY, "--config", bad], capsys)
    assert code == 2 and len(lines) <= 6
    assert "bad.yaml" in lines[0] and "class_path" in lines[0]
    assert any("did you mean 'NonFiniteLossGuard'" in ln for ln in lines)


def test_missing_config_file(in_tmp, capsys):
    code, lines = run_main(["fit", "--config", "yaml/neurotrails/smok.yaml"], capsys)
    assert code == 2 and len(lines) <= 6
    assert "smok.yaml" in lines[0] and "not found" in lines[0]


def test_command_line_typo_is_not_abbreviated(in_tmp, capsys):
    code, lines = run_main(["fit", "--config", TOY, "--trainer.max_epoch", "3"], capsys)
    assert code == 2
    assert "command line" in lines[0] and "trainer.max_epoch" in lines[0]
    assert any("did you mean 'trainer.max_epochs'" in ln for ln in lines)


def test_console_script_exit_code_and_no_usage_dump(in_tmp):
    bad = write(in_tmp, "bad.yaml", "model:\n  init_args:\n    hiden: 3\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "fit", "--config", TOY, "--config", bad],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Seed set" not in ln and "Warning" not in ln]
    assert len(lines) <= 6, proc.stderr
    assert "usage:" not in proc.stderr


def test_check_reports_every_problem_at_once(in_tmp):
    bad = write(
        in_tmp,
        "bad.yaml",
        "model:\n  init_args:\n    hiden: 3\ntrainer:\n  max_epoch: 2\n  callbacks+:\n    - class_path: NonFiniteLosGuard\n",
    )
    problems = check_config(["fit", "--config", TOY, "--config", bad])
    joined = "\n".join(problems)
    assert len(problems) == 3, joined
    assert "model.init_args.hiden" in joined and "trainer.max_epoch" in joined and "NonFiniteLossGuard" in joined
    assert check_config(["fit", "--config", TOY]) == []


def test_check_instantiates_and_reports_constructor_errors(in_tmp):
    bad = write(in_tmp, "bad.yaml", "trainer:\n  callbacks+:\n    - class_path: NonFiniteLossGuard\n      init_args: {check_every_n_steps: 0}\n")
    problems = check_config(["fit", "--config", TOY, "--config", bad])
    assert len(problems) == 1 and "check_every_n_steps" in problems[0]


# -- composition ------------------------------------------------------------------------------


def test_interpolation_follows_overrides_and_callbacks_append(in_tmp):
    a = write(in_tmp, "a.yaml", "model:\n  init_args:\n    hidden: ${data.init_args.batch_size}\ntrainer:\n  callbacks+:\n    - class_path: SignalCheckpoint\n")
    b = write(in_tmp, "b.yaml", "trainer:\n  callbacks+:\n    - class_path: NonFiniteLossGuard\n")
    cfg = parse_config(["fit", "--config", TOY, "--config", a, "--config", b, "--data.init_args.batch_size", "4"]).fit
    assert cfg.model.init_args.hidden == 4
    names = [c.class_path.split(".")[-1] for c in cfg.trainer.callbacks]
    assert names == ["SignalCheckpoint", "NonFiniteLossGuard"]


def test_later_config_and_flags_win(in_tmp):
    a = write(in_tmp, "a.yaml", "trainer:\n  max_epochs: 7\n")
    assert parse_config(["fit", "--config", TOY, "--config", a]).fit.trainer.max_epochs == 7
    assert parse_config(["fit", "--config", TOY, "--config", a, "--trainer.max_epochs", "9"]).fit.trainer.max_epochs == 9


# -- run directory, saved config, TensorBoard ---------------------------------------------------


def test_run_dir_config_and_tensorboard_text(in_tmp):
    cli = TrainerCLI(args=["fit", "--config", TOY, "--trainer.max_epochs", "1"])
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir == Path("runs/tests/toy/version_0")
    saved = (log_dir / "config.yaml").read_text()
    assert saved.startswith("# paper-trainer==") and "git=" in saved.splitlines()[0]
    assert yaml.safe_load(saved)["model"]["init_args"]["hidden"] == 16
    assert (log_dir / "checkpoints" / "last.ckpt").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert any("config" in t for t in acc.Tags()["tensors"])
    assert "train/loss" in acc.Tags()["scalars"] or "val/loss" in acc.Tags()["scalars"]
    cbs = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"ModelCheckpoint", "LearningRateMonitor", "NonFiniteLossGuard", "SignalCheckpoint"} <= cbs


# -- resume -----------------------------------------------------------------------------------


def test_resume_same_dir_and_refuse_unsafe_change(in_tmp, capsys):
    TrainerCLI(args=["fit", "--config", TOY, "--trainer.max_epochs", "1"])
    cli = TrainerCLI(args=["fit", "--config", TOY, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert Path(cli.trainer.log_dir) == Path("runs/tests/toy/version_0")
    assert cli.trainer.current_epoch == 2
    assert not Path("runs/tests/toy/version_1").exists()
    code, lines = run_main(
        ["fit", "--config", TOY, "--trainer.max_epochs", "3", "--ckpt_path", "last", "--model.init_args.hidden", "5"],
        capsys,
    )
    assert code == 2
    assert any("model.init_args.hidden: 16 -> 5" in ln for ln in lines)
    cli = TrainerCLI(
        args=["fit", "--config", TOY, "--trainer.max_epochs", "3", "--ckpt_path", "last", "--model.init_args.optimizer.init_args.lr", "0.05"]
    )
    assert cli.trainer.current_epoch == 3


# -- safety -----------------------------------------------------------------------------------


def test_nan_loss_stops_with_step(in_tmp, capsys):
    code, lines = run_main(["fit", "--config", TOY, "--model.init_args.nan_at_step", "11"], capsys)
    assert code == 1
    text = "\n".join(lines)
    assert "global step 11" in text and "nan" in text
    ckpt = torch.load(next(Path("runs").rglob("last.ckpt")), weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 8  # the end-of-epoch checkpoint, not the NaN state
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


@pytest.mark.slow
def test_sigterm_writes_checkpoint(in_tmp):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", "fit", "--config", TOY, "--trainer.max_epochs", "100000",
         "--data.init_args.n", "4096"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    ckpt_dir = Path("runs/tests/toy/version_0/checkpoints")
    deadline = time.time() + 90
    while time.time() < deadline and not any(ckpt_dir.glob("epoch=*.ckpt")):
        time.sleep(0.5)
    assert any(ckpt_dir.glob("epoch=*.ckpt")), "training did not start"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM: checkpoint written" in err
    last = torch.load(ckpt_dir / "last.ckpt", weights_only=False, map_location="cpu")
    epoch_ckpt = torch.load(next(ckpt_dir.glob("epoch=*.ckpt")), weights_only=False, map_location="cpu")
    assert last["global_step"] > epoch_ckpt["global_step"]
