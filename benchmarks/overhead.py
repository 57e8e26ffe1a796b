"""What the trainer costs per training step, steady state (start-up and epoch ends excluded).

Two comparisons, each the median over several alternating runs in this one process:

1. ``trainer fit`` (our CLI with every default on) against a plain hand-written PyTorch loop, on a
   wide MLP whose plain step takes 50-150 ms on this CPU (the batch size is calibrated to ~100 ms).
2. ``trainer fit`` with all our defaults (Rich progress bar, TensorBoard, checkpointing, LR
   monitor, NaN guard, signal checkpoint) against a bare Lightning ``Trainer`` with its extras off
   (no logger, checkpointing, progress bar or model summary), on the digits MLP
   (``yaml/neurotrails/digits_mlp_single.yaml``).

A step's time is the wall time between the starts of consecutive training batches of one epoch,
so it contains data loading, forward, backward, optimizer and every per-step hook.

    python benchmarks/overhead.py            # ~3-4 minutes on 2 cores
    python benchmarks/overhead.py --quick    # fewer repeats

Last line: ``RESULT overhead_ratio=<(1)> defaults_ratio=<(2)> defaults_ms_per_step=<extra ms in (2)>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.cli import OptimizerCallable  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from trainer.data import seeded_train_loader  # noqa: E402

IN, HIDDEN, OUT, N_BATCHES = 1024, 2048, 10, 24


class StepTimer(pl.Callback):
    """Records the start time of every training batch with its epoch."""

    def __init__(self) -> None:
        self.marks: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.marks.append((trainer.current_epoch, time.perf_counter()))


def step_times(marks: list[tuple[int, float]], skip: int) -> list[float]:
    """Seconds between consecutive batch starts of the same epoch, after ``skip`` warm-up steps."""
    out = [t1 - t0 for (e0, t0), (e1, t1) in zip(marks, marks[1:]) if e0 == e1]
    return out[skip:]


def wide_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, OUT),
    )


class OverheadWideMLP(pl.LightningModule):
    """The wide MLP of comparison (1) as a LightningModule.

    Args:
        optimizer: injected optimizer.
        batch_size: samples per batch (calibrated by the script).
    """

    def __init__(self, optimizer: OptimizerCallable = torch.optim.SGD, batch_size: int = 256) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = wide_mlp()
        self.optimizer = optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return self.optimizer(self.parameters())


class OverheadData(pl.LightningDataModule):
    """Random inputs and labels for comparison (1), ``N_BATCHES`` batches per epoch.

    Args:
        batch_size: samples per batch.
    """

    def __init__(self, batch_size: int = 256) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(0)
        n = self.batch_size * N_BATCHES
        self.ds = TensorDataset(torch.randn(n, IN, generator=g), torch.randint(0, OUT, (n,), generator=g))

    def train_dataloader(self):
        return seeded_train_loader(self.ds, self.batch_size, self.trainer)


def plain_loop(batch_size: int, epochs: int) -> list[float]:
    """A hand-written loop over the same data loader, model and optimizer."""
    dm = OverheadData(batch_size)
    dm.setup("fit")
    loader = dm.train_dataloader()
    model = wide_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    marks = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            marks.append((epoch, time.perf_counter()))
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            float(loss)  # what a logger would read
    return step_times(marks, skip=3)


def cli_fit(args: list[str], workdir: str) -> list[float]:
    from trainer.cli import TrainerCLI

    timer = StepTimer()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        cli = TrainerCLI(args=args, run=False)
        cli.trainer.callbacks.insert(0, timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        os.chdir(cwd)
    return step_times(timer.marks, skip=3)


def bare_lightning_digits(epochs: int) -> list[float]:
    """The digits MLP and data built from the same YAML, trained by a bare ``Trainer``."""
    from trainer.cli import TrainerCLI

    cli = TrainerCLI(
        args=["fit", "--config", str(ROOT / "yaml/neurotrails/digits_mlp_single.yaml"), "--trainer.logger", "false",
              "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false"],
        run=False,
    )
    timer = StepTimer()
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    trainer.fit(cli.model, datamodule=cli.datamodule)
    return step_times(timer.marks, skip=3)


def calibrate(target_s: float = 0.1) -> int:
    batch = 256
    for _ in range(4):
        t = statistics.median(plain_loop(batch, 1))
        batch = max(32, int(batch * target_s / t / 32) * 32)
    return batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 repeats instead of 4")
    args = ap.parse_args()
    repeats = 2 if args.quick else 4
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    pl.seed_everything(0)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    batch = calibrate()
    plain_ms, fit_ms = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            plain_ms.append(1e3 * statistics.median(plain_loop(batch, 2)))
            fit_ms.append(1e3 * statistics.median(cli_fit(
                ["fit", "--model", "__main__.OverheadWideMLP", "--model.init_args.batch_size", str(batch),
                 "--data", "__main__.OverheadData", "--data.init_args.batch_size", str(batch),
                 "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0"], tmp)))
        digits = str(ROOT / "yaml/neurotrails/digits_mlp_single.yaml")
        bare_ms, defaults_ms = [], []
        for _ in range(repeats):
            bare_ms.append(1e3 * statistics.median(bare_lightning_digits(epochs=6)))
            defaults_ms.append(1e3 * statistics.median(cli_fit(["fit", "--config", digits, "--trainer.max_epochs", "6"], tmp)))

    p, f, b, d = (statistics.median(v) for v in (plain_ms, fit_ms, bare_ms, defaults_ms))
    rows = [
        ("(1) plain PyTorch loop, wide MLP", f"batch {batch}", p),
        ("(1) trainer fit, all defaults", f"batch {batch}", f),
        ("(2) bare Lightning Trainer, digits MLP", "extras off", b),
        ("(2) trainer fit, all defaults, digits MLP", "defaults on", d),
    ]
    print(f"\n{'setting':46s} {'':12s} {'ms/step':>9s}   runs (ms/step)")
    runs = [plain_ms, fit_ms, bare_ms, defaults_ms]
    for (name, note, v), r in zip(rows, runs):
        print(f"{name:46s} {note:12s} {v:9.2f}   " + " ".join(f"{x:.2f}" for x in r))
    print(f"\nRESULT overhead_ratio={f / p:.3f} defaults_ratio={d / b:.3f} defaults_ms_per_step={d - b:.3f}")


if __name__ == "__main__":
    main()
