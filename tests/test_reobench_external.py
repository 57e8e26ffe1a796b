"""REOBench's external-prediction tasks (reobench.md §2, §3, §4.4–4.6): task metrics against hand-computed values,
the per-cell prediction files, and the evaluation module through ``trainer test`` and CorruptionSweepCallback."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.external_predictions import ExternalPredictionsDataModule, index_jsonl, read_jsonl, read_mask
from modules.reobench_external import ExternalPredictionsEvalModule
from tests.toy import quiet_trainer
from trainer.metrics.eo_tasks import (
    CaptionSimilarity, DetectionAP, GroundingAccuracy, VQAAccuracy, box_iou_matrix, resolve_callable,
    voc_average_precision,
)  # fmt: skip
from trainer.metrics.robustness import box_iou

# ----------------------------------------------------------------------------- metrics


def test_vqa_rule_chain_and_counted_judge_failures():
    m = VQAAccuracy()
    m.update(["not sure", "12", "Yes.", "A parking lot.", "3", "two"], ["no", "2", "yes", "parking lot", "3", "2"])
    assert float(m.compute()) == pytest.approx(3 / 6)  # reobench.md §4.4: "no"≠"not sure", "2"≠"12", "yes"="Yes."
    calls = []

    def judge(question, truth, pred):
        calls.append((question, truth, pred))
        if pred == "boom":
            raise RuntimeError("rate limited")
        return {"two": True, "dunno": None}.get(pred, False)

    m = VQAAccuracy(judge=judge)
    m.update(["yes", "two", "boom", "dunno", "four"], ["yes", "2", "3", "1", "5"], ["q1", "q2", "q3", "q4", "q5"])
    assert [c[2] for c in calls] == ["two", "boom", "dunno", "four"]  # the judge only sees rule misses
    assert int(m.judge_failures) == 2 and int(m.judge_calls) == 4
    assert float(m.compute()) == pytest.approx(2 / 5)  # failures count as wrong ...
    s = VQAAccuracy(judge=judge, on_judge_failure="skip")
    s.update(["yes", "two", "boom", "dunno", "four"], ["yes", "2", "3", "1", "5"])
    assert float(s.compute()) == pytest.approx(2 / 3) and int(s.judge_failures) == 2  # ... or leave the denominator
    with pytest.raises(ValueError, match="on_judge_failure"):
        VQAAccuracy(on_judge_failure="ignore")


def test_resolve_callable():
    assert resolve_callable("math:sqrt") is math.sqrt and resolve_callable("math.sqrt") is math.sqrt
    assert resolve_callable(None) is None
    with pytest.raises(ValueError, match="cannot import the judge"):
        resolve_callable("math:nope")


def test_grounding_accuracy_continuous_and_inclusive():
    m = GroundingAccuracy()
    m.update([[5, 5, 15, 15], [0, 0, 10, 5], None, [0, 0, 1, 1]], [[0, 0, 10, 10]] * 3 + [[0, 0, 1, 3]])
    # IoU 25/175 (miss), 0.5 (hit, ≥), unparsed (miss), 1/3 (miss)
    assert float(m.compute()) == pytest.approx(1 / 4) and int(m.unparsed) == 1
    inc = GroundingAccuracy(inclusive_pixels=True)
    inc.update([[0, 0, 1, 1]], [[0, 0, 1, 3]])  # (2·2)/(2·4) = 0.5 under the inclusive-pixel convention
    assert float(inc.compute()) == 1.0


def test_box_iou_matrix_equals_box_iou():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 10, (5, 2)), rng.uniform(0, 10, (4, 2))
    a = np.concatenate([a, a + rng.uniform(0, 6, (5, 2))], 1)
    b = np.concatenate([b, b + rng.uniform(0, 6, (4, 2))], 1)
    for inclusive in (False, True):
        mat = box_iou_matrix(torch.tensor(a), torch.tensor(b), inclusive)
        ref = [[box_iou(x, y, inclusive) for y in b] for x in a]
        assert torch.allclose(mat, torch.tensor(ref, dtype=torch.float64))
    assert float(box_iou_matrix(torch.tensor([[0, 0, 10, 10.0]]), torch.tensor([[5, 5, 15, 15.0]]))) == pytest.approx(25 / 175)


def test_voc_ap_hand_computed():
    # ranks: tp, fp, tp against 2 ground truths: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    assert voc_average_precision(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([True, False, True]), 2) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3
    )
    # one of three ground truths never found: recall stops at 2/3
    assert voc_average_precision(torch.tensor([0.9, 0.5]), torch.tensor([True, True]), 3) == pytest.approx(2 / 3)
    assert voc_average_precision(torch.tensor([]), torch.tensor([], dtype=torch.bool), 1) == 0.0


def test_detection_ap_per_class_matching_and_mean():
    m = DetectionAP(num_classes=3)
    preds = [{"boxes": [[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30], [0, 0, 4, 2], [0, 0, 4, 4], [1, 1, 2, 2]],
              "scores": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], "labels": [0, 0, 0, 1, 1, 2]}]  # fmt: skip
    targets = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 4, 4]], "labels": [0, 0, 1]}]
    m.update(preds, targets)
    # class 0: AP 0.8333 (above); class 1: IoU 0.5 hit, then a duplicate on the taken box (fp): AP 1; class 2: no GT
    ap = m.per_class()
    assert ap[0] == pytest.approx(5 / 6) and ap[1] == pytest.approx(1.0) and math.isnan(ap[2])
    assert float(m.compute()) == pytest.approx((5 / 6 + 1) / 2)
    # batching and the sum/cat states: two halves merged equal one pass (what DDP's reduction does)
    one, two = DetectionAP(3), DetectionAP(3)
    one.update(preds, targets)
    two.update([{"boxes": [[0, 0, 3, 3]], "scores": [0.99], "labels": [2]}], [{"boxes": [[0, 0, 3, 3]], "labels": [2]}])
    both = DetectionAP(3)
    both.update(preds + [{"boxes": [[0, 0, 3, 3]], "scores": [0.99], "labels": [2]}],
                targets + [{"boxes": [[0, 0, 3, 3]], "labels": [2]}])  # fmt: skip
    one.merge_state(two)
    assert float(one.compute()) == pytest.approx(float(both.compute())) == pytest.approx((5 / 6 + 1 + 1) / 3)
    # a detection on another image never matches this image's ground truth
    cross = DetectionAP(1)
    cross.update([{"boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [0]}, {"boxes": [], "scores": [], "labels": []}],
                 [{"boxes": [], "labels": []}, {"boxes": [[0, 0, 1, 1]], "labels": [0]}])  # fmt: skip
    assert float(cross.compute()) == 0.0
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        DetectionAP(3).update([{"boxes": [[0, 0, 1, 1]], "scores": [1], "labels": [3]}], [{"boxes": [], "labels": []}])


def test_caption_similarity_hash_and_minilm():
    m = CaptionSimilarity("hash")
    m.update(["an aerial image of farmland", "x"], [["nothing alike", "an aerial image of farmland"], "x"])
    assert float(m.compute()) == pytest.approx(1.0, abs=1e-6)  # best reference, identical texts
    mini = CaptionSimilarity("minilm")
    mini.update(["an aerial image of a harbour with many boats"], ["boats moored in a harbour seen from above"])
    close = float(mini.compute())
    far = CaptionSimilarity(mini.encoder)  # a shared encoder instance
    far.update(["an aerial image of a harbour with many boats"], ["a recipe for chocolate cake"])
    assert 0.4 < close <= 1.0 and float(far.compute()) < close - 0.3
    judged = CaptionSimilarity("hash", judge=lambda cand, refs: {"good": 0.9, "bad": 2.0}.get(cand))
    judged.update(["good", "bad", "none"], ["r", "r", "r"])  # 2.0 is out of range: a failure, like None
    assert int(judged.judge_failures) == 2 and float(judged.compute()) == pytest.approx(0.9 / 3)


# ----------------------------------------------------------------------------- prediction files


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _vqa_tree(tmp: Path) -> tuple[Path, Path]:
    refs = [{"id": f"q{i}", "question": "Is there water?", "answer": a} for i, a in enumerate(["yes", "no", "2", "3"])]
    _jsonl(tmp / "refs.jsonl", refs)
    answers = {"clean": ["yes", "no", "2", "3"], "gaussian_noise_new/severity_1": ["yes", "no", "12", "3"],
               "gaps/2": ["no", "not sure", "2", "three"]}  # fmt: skip
    for cell, ans in answers.items():
        _jsonl(tmp / "preds" / f"{cell}.jsonl", [{"id": r["id"], "answer": a} for r, a in zip(refs, ans)])
    return tmp / "preds", tmp / "refs.jsonl"


def test_datamodule_grid_aliases_and_geometric_default(tmp_path):
    preds, refs = _vqa_tree(tmp_path)
    dm = ExternalPredictionsDataModule("vqa", str(preds), str(refs), corruptions=("gaussian_noise", "data_gaps"),
                                       severities=(1, 2))  # fmt: skip
    with pytest.raises(ValueError, match=r"missing cells .*gaussian_noise/s2 \(predictions\), data_gaps/s1 \(predictions\)"):
        dm.setup("test")
    dm = ExternalPredictionsDataModule("vqa", str(preds), str(refs), corruptions=("gaussian_noise", "data_gaps"),
                                       severities=(1, 2), missing="skip")  # fmt: skip
    assert dm.grid_index == [("clean", 0), ("gaussian_noise", 1), ("data_gaps", 2)]
    loaders = dm.test_dataloader()
    batch = next(iter(loaders[1]))
    assert isinstance(batch, list) and batch[2][0] == {"id": "q2", "answer": "12"} and batch[2][1]["answer"] == "2"
    # caption and vqa skip the geometric corruptions by default (reobench.md §3); others keep them
    assert ExternalPredictionsDataModule("vqa", str(preds), str(refs)).names == (
        "gaussian_noise", "salt_and_pepper_noise", "gaussian_blur", "motion_blur", "brightness_contrast", "clouds",
        "haze", "data_gaps", "compression_artifacts")  # fmt: skip
    assert len(ExternalPredictionsDataModule("grounding", str(preds), str(refs)).names) == 12
    assert len(ExternalPredictionsDataModule("vqa", str(preds), str(refs), skip_geometric=False).names) == 12


def test_datamodule_errors_name_the_problem(tmp_path):
    preds, refs = _vqa_tree(tmp_path)
    with pytest.raises(ValueError, match="task must be one of"):
        ExternalPredictionsDataModule("ocr", str(preds), str(refs))
    with pytest.raises(ValueError, match=f"predictions folder {tmp_path / 'nope'} does not exist"):
        ExternalPredictionsDataModule("vqa", str(tmp_path / "nope"), str(refs)).setup("test")
    _jsonl(preds / "clean.jsonl", [{"id": "q0", "answer": "yes"}, {"id": "q9", "answer": "no"}])
    dm = ExternalPredictionsDataModule("vqa", str(preds), str(refs), corruptions=("gaussian_noise",), severities=(1,))
    with pytest.raises(ValueError, match=r"cell clean: 3 reference ids have no prediction .* 1 predictions have no reference"):
        dm.setup("test")
    (preds / "fog").mkdir()
    with pytest.raises(ValueError, match="unknown corruption folder 'fog'"):
        ExternalPredictionsDataModule("vqa", str(preds), str(refs)).setup("test")
    _jsonl(tmp_path / "dup.jsonl", [{"id": 1}, {"id": 1}])
    with pytest.raises(ValueError, match="duplicate id '1'"):
        read_jsonl(tmp_path / "dup.jsonl")
    _jsonl(tmp_path / "g" / "clean.jsonl", [{"id": 1, "bbox": [0, 0, 1, 1]}])
    dm = ExternalPredictionsDataModule("grounding", str(tmp_path / "g"), str(tmp_path / "g" / "clean.jsonl"),
                                       corruptions=("clouds",), missing="skip")  # fmt: skip
    with pytest.raises(ValueError, match=r"clean.jsonl:1: record '1' lacks \['box'\]"):
        dm.setup("test")


def test_per_cell_references_fall_back_for_appearance_only(tmp_path):
    box = {"id": "a", "box": [0, 0, 10, 10]}
    _jsonl(tmp_path / "refs" / "clean.jsonl", [box])
    _jsonl(tmp_path / "refs" / "rotate_new" / "severity_1.jsonl", [{"id": "a", "box": [1, 1, 11, 11]}])
    for cell in ("clean", "clouds/severity_1", "rotate_new/severity_1", "scale/severity_1"):
        _jsonl(tmp_path / "preds" / f"{cell}.jsonl", [{"id": "a", "box": [1, 1, 11, 11]}])
    dm = ExternalPredictionsDataModule("grounding", str(tmp_path / "preds"), str(tmp_path / "refs"),
                                       corruptions=("clouds", "rotate", "scale"), severities=(1,))  # fmt: skip
    with pytest.raises(ValueError, match=r"missing cells .*scale/s1 \(references\)"):
        dm.setup("test")  # a geometric cell never borrows the clean references
    dm = ExternalPredictionsDataModule("grounding", str(tmp_path / "preds"), str(tmp_path / "refs"),
                                       corruptions=("clouds", "rotate"), severities=(1,))  # fmt: skip
    refs = {key: [r for batch in loader for _, r in batch] for key, loader in zip(dm.grid_index, dm.test_dataloader())}
    assert refs[("clouds", 1)] == [box] and refs[("rotate", 1)][0]["box"] == [1, 1, 11, 11]


# ----------------------------------------------------------------------------- the module through trainer test


def _run_test(model, dm, tmp_path):
    from callbacks.robustness import CorruptionSweepCallback

    sweep = CorruptionSweepCallback(metric=model.metric_name)
    trainer = quiet_trainer([sweep], default_root_dir=str(tmp_path))
    trainer.test(model, datamodule=dm)
    return trainer, sweep


def test_vqa_through_trainer_test_and_the_sweep_callback(tmp_path):
    preds, refs = _vqa_tree(tmp_path)
    dm = ExternalPredictionsDataModule("vqa", str(preds), str(refs), corruptions=("gaussian_noise", "data_gaps"),
                                       severities=(1, 2), missing="skip", batch_size=3)  # fmt: skip
    model = ExternalPredictionsEvalModule("vqa")
    trainer, sweep = _run_test(model, dm, tmp_path)
    assert model.test_results == {"clean": 1.0, "gaussian_noise/s1": 0.75, "data_gaps/s2": 0.25}
    assert trainer.callback_metrics["test/vqa_acc/gaussian_noise/s1"] == pytest.approx(0.75)
    assert sweep.table == {"gaussian_noise": [0.75], "data_gaps": [0.25]}
    with pytest.raises(ValueError, match="but the datamodule serves 'vqa'"):
        quiet_trainer().test(ExternalPredictionsEvalModule("grounding"), datamodule=dm)


def test_grounding_unit_test_params_and_a_dry_fit(tmp_path):
    dm = ExternalPredictionsDataModule(**ExternalPredictionsDataModule.unit_test_params())
    model = ExternalPredictionsEvalModule(**ExternalPredictionsEvalModule.unit_test_params())
    assert not list(model.parameters())
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2 and float(trainer.callback_metrics["train/loss"]) == 0.0  # clean boxes are exact
    _, sweep = _run_test(model, dm, tmp_path)
    # shifts 3 and 6 px of 10-px-wide boxes: IoU 7/13 (hit) and 4/16 (miss)
    assert model.test_results == {"clean": 1.0, "gaussian_noise/s1": 1.0, "rotate/s1": 0.0}
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = ExternalPredictionsEvalModule.load_from_checkpoint(path)
    assert loaded.hparams.task == "grounding" and not loaded.state_dict()


def test_detection_segmentation_and_caption_cells(tmp_path):
    # detection: the clean cell finds both roofs, the noisy one only one of them
    refs = [{"id": "s0", "boxes": [[0, 0, 4, 4], [10, 10, 14, 14]], "labels": [0, 1]}]
    _jsonl(tmp_path / "det_refs.jsonl", refs)
    _jsonl(tmp_path / "det" / "clean.jsonl", [{"id": "s0", "boxes": refs[0]["boxes"], "scores": [0.9, 0.8], "labels": [0, 1]}])
    _jsonl(tmp_path / "det" / "haze" / "3.jsonl", [{"id": "s0", "boxes": [[0, 0, 4, 4]], "scores": [0.9], "labels": [0]}])
    dm = ExternalPredictionsDataModule("detection", str(tmp_path / "det"), str(tmp_path / "det_refs.jsonl"),
                                       corruptions=("haze",), severities=(3,))  # fmt: skip
    model = ExternalPredictionsEvalModule("detection", num_classes=2)
    _run_test(model, dm, tmp_path)
    assert model.test_results == {"clean": 1.0, "haze/s3": 0.5}
    assert all(m.det_scores == [] for m in model.test_metrics)  # each cell is freed once scored
    # segmentation: .npy and .png masks per id
    from PIL import Image

    gt = np.array([[0, 0, 1, 1]] * 4)
    (tmp_path / "seg_refs").mkdir()
    Image.fromarray(gt.astype(np.uint8)).save(tmp_path / "seg_refs" / "m0.png")
    for cell, pred in (("clean", gt), ("clouds/severity_1", np.zeros_like(gt))):
        (tmp_path / "seg" / cell).mkdir(parents=True)
        np.save(tmp_path / "seg" / cell / "m0.npy", pred)
    assert np.array_equal(read_mask(tmp_path / "seg_refs" / "m0.png"), gt)
    dm = ExternalPredictionsDataModule("segmentation", str(tmp_path / "seg"), str(tmp_path / "seg_refs"),
                                       corruptions=("clouds",), severities=(1,))  # fmt: skip
    model = ExternalPredictionsEvalModule("segmentation", num_classes=2)
    _run_test(model, dm, tmp_path)
    assert model.test_results == {"clean": 1.0, "clouds/s1": pytest.approx(0.25)}  # IoU 0.5 (class 0), 0 (class 1)
    # caption (hash encoder, no files): identical captions score 1
    _jsonl(tmp_path / "cap_refs.jsonl", [{"id": "c0", "captions": ["an aerial image of water", "a lake"]}])
    _jsonl(tmp_path / "cap" / "clean.jsonl", [{"id": "c0", "caption": "a lake"}])
    _jsonl(tmp_path / "cap" / "gaussian_blur" / "severity_5.jsonl", [{"id": "c0", "caption": "a parking lot"}])
    dm = ExternalPredictionsDataModule("caption", str(tmp_path / "cap"), str(tmp_path / "cap_refs.jsonl"),
                                       corruptions=("gaussian_blur",), severities=(5,))  # fmt: skip
    model = ExternalPredictionsEvalModule("caption", caption_encoder="hash")
    _run_test(model, dm, tmp_path)
    assert model.test_results["clean"] == pytest.approx(1.0, abs=1e-6) and model.test_results["gaussian_blur/s5"] < 0.9


def test_module_arguments():
    with pytest.raises(ValueError, match="needs num_classes"):
        ExternalPredictionsEvalModule("detection")
    with pytest.raises(ValueError, match="a judge applies to caption and vqa"):
        ExternalPredictionsEvalModule("grounding", judge="math:isclose")
    with pytest.raises(ValueError, match="cannot import the judge"):
        ExternalPredictionsEvalModule("vqa", judge="nowhere:judge")
    assert ExternalPredictionsEvalModule("caption", judge="math:isclose").metric_name == "clair"


# ----------------------------------------------------------------------------- the offline demo


def test_red_roof_rule_finds_the_red_roofs_of_a_clean_scene():
    from datamodules.eo_scenes import urban_scene
    from datamodules.external_predictions import red_roof_boxes

    img, boxes, labels = urban_scene(64, np.random.default_rng([0, 7, 1]))
    found, scores = red_roof_boxes(img)
    red = boxes[labels == 0]
    assert len(found) == len(red) and ((scores > 0) & (scores <= 1)).all()
    assert sorted(map(tuple, found.tolist())) == sorted(map(tuple, red.tolist()))


def test_scene_rule_predictions_write_files_and_score(tmp_path):
    from datamodules.external_predictions import SceneRulePredictionsDataModule

    params = {**SceneRulePredictionsDataModule.unit_test_params(), "output_dir": str(tmp_path)}
    dm = SceneRulePredictionsDataModule(**params)
    assert dm.grid_index == [("clean", 0), ("gaussian_noise", 1), ("gaussian_noise", 5), ("rotate", 1), ("rotate", 5)]
    files = sorted(p.relative_to(dm.files_dir).as_posix() for p in dm.files_dir.rglob("*.jsonl"))
    assert "predictions/rotate/severity_5.jsonl" in files and "references/rotate/severity_5.jsonl" in files
    assert SceneRulePredictionsDataModule(**params).files_dir == dm.files_dir  # same settings, same files
    assert SceneRulePredictionsDataModule(**{**params, "seed": 1}).files_dir != dm.files_dir
    model = ExternalPredictionsEvalModule("grounding")
    _run_test(model, dm, tmp_path)
    assert model.test_results["clean"] == 1.0 and model.test_results["gaussian_noise/s5"] < 1.0
    det = SceneRulePredictionsDataModule(**{**params, "task": "detection"})
    model = ExternalPredictionsEvalModule("detection", num_classes=1)
    _run_test(model, det, tmp_path)
    assert model.test_results["clean"] == 1.0 and set(model.test_results) == {"clean", "gaussian_noise/s1",
                                                                              "gaussian_noise/s5", "rotate/s1", "rotate/s5"}  # fmt: skip
    with pytest.raises(ValueError, match="'grounding' or 'detection'"):
        SceneRulePredictionsDataModule(task="vqa")


def _ddp_worker(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    det, vqa, grd = DetectionAP(2), VQAAccuracy(), GroundingAccuracy()
    if rank == 0:  # rank 1 sees no detection at all: its empty states must still join the gather
        det.update([{"boxes": [[0, 0, 4, 4], [9, 9, 12, 12]], "scores": [0.9, 0.2], "labels": [0, 0]}],
                   [{"boxes": [[0, 0, 4, 4]], "labels": [0]}])  # fmt: skip
    vqa.update(["yes"] if rank == 0 else ["no"], ["yes"])
    grd.update([[0, 0, 2, 2]], [[0, 0, 2, 2] if rank == 0 else [5, 5, 6, 6]])
    values = [float(det.compute()), det.per_class().tolist(), float(vqa.compute()), float(grd.compute())]
    Path(out, f"rank{rank}.json").write_text(json.dumps(values))
    dist.destroy_process_group()


@pytest.mark.ddp
def test_metrics_agree_across_two_cpu_ranks(tmp_path):
    import torch.multiprocessing as mp

    from tests.toy import free_port

    mp.spawn(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    a, b = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert a[0] == b[0] == 1.0 and a[2] == b[2] == 0.5 and a[3] == b[3] == 0.5
    assert a[1][0] == b[1][0] == 1.0 and math.isnan(a[1][1]) and math.isnan(b[1][1])


def test_index_jsonl_offsets_read_back_the_records(tmp_path):
    from datamodules.external_predictions import _read_line

    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "answer": "yés"}\n\n{"id": 2, "answer": "no"}\n')  # a blank line, non-ASCII
    index = index_jsonl(path, ("answer",))
    assert list(index) == ["a", "2"] and {k: _read_line(path, o) for k, o in index.items()} == read_jsonl(path)
    with pytest.raises(ValueError, match=r"p.jsonl:1: record 'a' lacks \['box'\]"):
        index_jsonl(path, ("box",))


def test_segmentation_per_cell_references(tmp_path):
    gt, warped = np.zeros((3, 3), dtype=np.int64), np.ones((3, 3), dtype=np.int64)
    for root, cells in (("preds", {"clean": gt, "rotate/severity_2": warped, "haze/severity_2": gt}),
                        ("refs", {"clean": gt, "rotate/severity_2": warped})):  # fmt: skip
        for cell, mask in cells.items():
            (tmp_path / root / cell).mkdir(parents=True)
            np.save(tmp_path / root / cell / "m.npy", mask)
    dm = ExternalPredictionsDataModule("segmentation", str(tmp_path / "preds"), str(tmp_path / "refs"),
                                       corruptions=("haze", "rotate"), severities=(2,))  # fmt: skip
    model = ExternalPredictionsEvalModule("segmentation", num_classes=2)
    _run_test(model, dm, tmp_path)  # haze borrows the clean masks, rotate has its own warped ones
    assert model.test_results == {"clean": 1.0, "haze/s2": 1.0, "rotate/s2": 1.0}
