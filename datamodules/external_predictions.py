"""Predictions made elsewhere, per corruption cell, paired with their references (reobench.md §2
``ExternalPredictionsEvalModule``): mmrotate detections on DIOR, VLM captions / answers / boxes on VRSBench,
segmentation masks on Potsdam. Serves them to ``trainer test`` so all six tasks go through the same harness and
``CorruptionSweepCallback``.

Layout read by :class:`ExternalPredictionsDataModule` (corruption folder names may be any alias of reobench.md §4.6,
severity files / folders ``severity_<s>`` or the bare number ``<s>``)::

    predictions_dir/clean.jsonl
    predictions_dir/<corruption>/severity_<s>.jsonl      one JSON record per sample, with "id"
    references                                           a .jsonl file shared by every cell, or a directory
                                                         with the layout of predictions_dir (per-cell
                                                         references: boxes or masks warped by a geometric
                                                         corruption); a cell without its own file there uses
                                                         clean.jsonl for appearance corruptions (targets are
                                                         unchanged, reobench.md §3) and is missing for
                                                         geometric ones

Segmentation uses folders of masks instead of ``.jsonl`` files: ``predictions_dir/clean/<id>.{npy,png}``,
``predictions_dir/<corruption>/severity_<s>/<id>.{npy,png}``, and ``references`` a folder of ``<id>.{npy,png}``
(shared) or with the per-cell layout (``references/clean/`` present).

Records per task (prediction | reference):

| task | prediction record | reference record |
|---|---|---|
| classification | ``label`` (int) | ``label`` |
| detection | ``boxes`` [[x1, y1, x2, y2]], ``scores``, ``labels`` | ``boxes``, ``labels`` |
| caption | ``caption`` | ``caption`` or ``captions`` (list) |
| vqa | ``answer`` | ``answer``, ``question`` (optional, for a judge) |
| grounding | ``box`` [x1, y1, x2, y2] or null (unparsed) | ``box`` |
| segmentation | mask file ``<id>`` (class index per pixel) | mask file ``<id>`` |

The id sets of a cell's predictions and references must be equal (a VLM that gave no usable answer writes its
raw text or null, never nothing). ``test_dataloader()`` returns, in ``grid_index`` order (``("clean", 0)``,
then (c, s) in registry order), loaders whose batches are lists of ``(prediction, reference)`` record pairs
(segmentation: ``{"id", "mask"}`` with the mask as an int64 array). Cells missing on disk are one error listing
them all, or are left out of the grid with ``missing: skip``. Captioning and VQA skip the geometric corruptions
by default, as the authors' VLM scripts do (reobench.md §3). ``train_dataloader()`` serves the clean cell, so
``trainer fit`` is a dry pass (the evaluation module has nothing to train); use ``trainer test``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.eo_folders import build_directory_once, canonical_corruption, corruption_folders, severity_path
from trainer.corruptions import CORRUPTIONS, FAMILIES, PARAMS, corrupt, sample_seed

__all__ = [
    "ExternalPredictionsDataModule", "PREDICTION_TASKS", "SceneRulePredictionsDataModule", "index_jsonl", "read_jsonl",
    "read_mask", "red_roof_boxes",
]  # fmt: skip

#: task → (prediction keys, reference keys) every record must have (besides ``id``).
PREDICTION_TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "classification": (("label",), ("label",)),
    "segmentation": ((), ()),
    "detection": (("boxes", "scores", "labels"), ("boxes", "labels")),
    "caption": (("caption",), ()),
    "vqa": (("answer",), ("answer",)),
    "grounding": (("box",), ("box",)),
}
SKIP_GEOMETRIC_TASKS = ("caption", "vqa")  # reobench.md §3: the VLM scripts skip the geometric corruptions
MASK_EXTENSIONS = (".npy", ".png")


def _iter_jsonl(path: Path):
    """``(line number, byte offset, record)`` of each non-blank line; a record must be an object with an ``id``."""
    with open(path, "rb") as f:
        offset = 0
        for n, line in enumerate(f, 1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from None
            if not isinstance(rec, dict) or "id" not in rec:
                raise ValueError(f"{path}:{n}: a record must be a JSON object with an 'id'")
            yield n, start, rec


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, dict]:
    """id → record of a JSON-lines file (blank lines skipped); a missing id, a duplicate or a record lacking one
    of the ``required`` keys is an error."""
    return {key: rec for key, (_, rec) in _scan_jsonl(Path(path), required, keep=True).items()}


def index_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, int]:
    """id → byte offset of its line, checked like :func:`read_jsonl` but keeping no record (prediction files of
    every cell of a detection benchmark do not fit in memory at once; a record is read when its batch is)."""
    return {key: offset for key, (offset, _) in _scan_jsonl(Path(path), required, keep=False).items()}


def _scan_jsonl(path: Path, required: tuple[str, ...], keep: bool) -> dict[str, tuple[int, dict | None]]:
    out: dict[str, tuple[int, dict | None]] = {}
    for n, offset, rec in _iter_jsonl(path):
        key = str(rec["id"])
        if key in out:
            raise ValueError(f"{path}:{n}: duplicate id {key!r}")
        lacking = [k for k in required if k not in rec]
        if lacking:
            raise ValueError(f"{path}:{n}: record {key!r} lacks {lacking}")
        out[key] = (offset, rec if keep else None)
    return out


def _read_line(path: Path, offset: int) -> dict:
    with open(path, "rb") as f:
        f.seek(offset)
        return json.loads(f.readline())


def read_mask(path: str | Path) -> np.ndarray:
    """A class-index mask from ``.npy`` or a single-channel ``.png`` as int64 ``[H, W]``."""
    path = Path(path)
    if path.suffix == ".npy":
        arr = np.load(path)
    else:
        from PIL import Image

        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"{path}: a mask PNG must be single-channel class indices, got mode {im.mode}")
            arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"{path}: a mask must be 2-D, got shape {arr.shape}")
    return arr.astype(np.int64)


def _mask_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in MASK_EXTENSIONS}


class _PairDataset(Dataset):
    """(prediction, reference) record pairs of one cell. JSON-lines predictions are read from ``pred_path`` at their
    byte offsets on access; segmentation items are ``((id, pred mask path), (id, ref mask path))``, read on access."""

    def __init__(self, pred_path: Path | None, items: list[tuple[Any, Any]], masks: bool) -> None:
        self.pred_path, self.items, self.masks = pred_path, items, masks

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[dict, dict]:
        pred, ref = self.items[i]
        if self.masks:
            return {"id": pred[0], "mask": read_mask(pred[1])}, {"id": ref[0], "mask": read_mask(ref[1])}
        return _read_line(self.pred_path, pred), ref


def _as_list(batch: list) -> list:
    return list(batch)


def _write_unit_test_files(root: Path) -> None:
    (root / "preds" / "gaussian_noise_new").mkdir(parents=True, exist_ok=True)
    (root / "preds" / "rotate").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "rotate").mkdir(parents=True, exist_ok=True)
    refs = [{"id": f"img{i}", "box": [0, 0, 10, 10 + i]} for i in range(4)]
    cells = {"clean": 0.0, "gaussian_noise_new/severity_1": 3.0, "rotate/severity_1": 6.0}
    for cell, shift in cells.items():
        preds = [{"id": r["id"], "box": [shift, 0, 10 + shift, r["box"][3]]} for r in refs]
        (root / "preds" / f"{cell}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    for name in ("clean", "rotate/severity_1"):
        (root / "refs" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))


def _unit_test_files() -> Path:
    """Tiny grounding predictions and references (clean + gaussian noise s1 under an alias + rotate s1) for the
    generic tests."""
    path = Path(tempfile.gettempdir()) / "paper_trainer_external_predictions_unit_v1"
    return build_directory_once(path, _write_unit_test_files)


class ExternalPredictionsDataModule(LightningDataModule):
    """Per-(corruption, severity) prediction files and their references, served in corruption-grid order.

    See the module docstring for the file layout and the records of each task.

    Args:
        task: ``classification``, ``segmentation``, ``detection``, ``caption``, ``vqa`` or ``grounding``.
        predictions_dir: the predictions folder (no default: a data path).
        references: the references ``.jsonl`` file or folder (no default: a data path).
        corruptions: canonical corruption names in order (None = the 12 of ``trainer.corruptions``).
        severities: severities read (reobench.md §3: 1..5).
        skip_geometric: leave out rotate / scale / translate; None = the task's default (True for caption and
            vqa, as the authors' VLM scripts, reobench.md §3; False otherwise).
        missing: ``error`` (default: cells missing on disk are one error listing them) or ``skip`` (left out of
            ``grid_index``).
        batch_size: record pairs per batch.
    """

    def __init__(
        self,
        task: str,
        predictions_dir: str,
        references: str,
        corruptions: tuple[str, ...] | None = None,
        severities: tuple[int, ...] = (1, 2, 3, 4, 5),
        skip_geometric: bool | None = None,
        missing: str = "error",
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        if task not in PREDICTION_TASKS:
            raise ValueError(f"task must be one of {tuple(PREDICTION_TASKS)}, got {task!r}")
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
        bad = [s for s in severities if isinstance(s, bool) or int(s) != s or not 1 <= int(s) <= 5]
        if bad or not severities:
            raise ValueError(f"severities must be integers in 1..5, got {list(severities)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        names = tuple(CORRUPTIONS) if corruptions is None else tuple(canonical_corruption(c) for c in corruptions)
        self.skip_geometric = task in SKIP_GEOMETRIC_TASKS if skip_geometric is None else bool(skip_geometric)
        if self.skip_geometric:
            names = tuple(c for c in names if c not in FAMILIES["geometric"])
        if not names:
            raise ValueError("no corruptions left to evaluate (all were geometric and skip_geometric is on)")
        self.task, self.predictions_dir, self.references = task, predictions_dir, references
        self.names, self.severities, self.missing, self.batch_size = names, tuple(int(s) for s in severities), missing, int(batch_size)
        self._cells: dict[tuple[str, int], tuple[Path | None, list[tuple[Any, Any]]]] | None = None
        self._ref_cache: dict[Path, dict[str, dict]] = {}

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        root = _unit_test_files()
        return {"task": "grounding", "predictions_dir": str(root / "preds"), "references": str(root / "refs"),
                "corruptions": ("gaussian_noise", "rotate"), "severities": (1,), "batch_size": 2}  # fmt: skip

    @property
    def masks(self) -> bool:
        return self.task == "segmentation"

    # ------------------------------------------------------------------ locating cells
    def _cell_source(self, root: Path, folders: dict[str, Path], c: str, s: int) -> Path | None:
        """The prediction (or reference) file / folder of a cell under ``root``, or None."""
        if c == "clean":
            path = root / ("clean" if self.masks else "clean.jsonl")
            return path if path.exists() else None
        if c not in folders:
            return None
        return severity_path(folders[c], s, "" if self.masks else ".jsonl")

    def _folders(self, root: Path) -> dict[str, Path]:
        if not root.is_dir():
            raise ValueError(f"predictions folder {root} does not exist")
        return corruption_folders(root, ignore=("clean",))

    def _reference_source(self, c: str, s: int, ref_folders: dict[str, Path] | None) -> Path | None:
        ref = Path(self.references)
        if not ref.exists():
            raise ValueError(f"references {ref} do not exist")
        per_cell = ref.is_dir() and (ref / ("clean" if self.masks else "clean.jsonl")).exists()
        if ref.is_dir() and not per_cell and not self.masks:
            raise ValueError(f"references folder {ref} has no clean.jsonl (give a .jsonl file or the per-cell layout)")
        if not per_cell:
            return ref  # shared by every cell
        path = self._cell_source(ref, ref_folders or {}, c, s)
        if path is None and c != "clean" and c not in FAMILIES["geometric"]:
            path = self._cell_source(ref, {}, "clean", 0)  # reobench.md §3: appearance corruptions keep targets
        return path

    def _references(self, ref_src: Path) -> dict[str, dict]:
        """The reference records of a file (parsed once: a shared file serves every cell)."""
        if ref_src not in self._ref_cache:
            need = () if self.task == "caption" else PREDICTION_TASKS[self.task][1]
            refs = read_jsonl(ref_src, need)
            if self.task == "caption" and any("caption" not in r and "captions" not in r for r in refs.values()):
                raise ValueError(f"{ref_src}: caption references need 'caption' or 'captions'")
            self._ref_cache[ref_src] = refs
        return self._ref_cache[ref_src]

    def _pairs(self, pred_src: Path, ref_src: Path, cell: str) -> tuple[Path | None, list[tuple[Any, Any]]]:
        if self.masks:
            preds: dict[str, Any] = _mask_files(pred_src)
            refs: dict[str, Any] = _mask_files(ref_src)
        else:
            preds, refs = index_jsonl(pred_src, PREDICTION_TASKS[self.task][0]), self._references(ref_src)
        if set(preds) != set(refs):
            lack, extra = sorted(set(refs) - set(preds)), sorted(set(preds) - set(refs))
            raise ValueError(f"cell {cell}: {len(lack)} reference ids have no prediction (e.g. {lack[:3]}) and "
                             f"{len(extra)} predictions have no reference (e.g. {extra[:3]}) in {pred_src}")  # fmt: skip
        if self.masks:
            return None, [((k, preds[k]), (k, refs[k])) for k in sorted(refs)]
        return pred_src, [(preds[k], refs[k]) for k in refs]

    def _resolve(self) -> dict[tuple[str, int], tuple[Path | None, list[tuple[Any, Any]]]]:
        if self._cells is not None:
            return self._cells
        pred_root = Path(self.predictions_dir)
        folders = self._folders(pred_root)
        ref = Path(self.references)
        ref_folders = corruption_folders(ref, ignore=("clean",)) if ref.is_dir() and not self._shared_mask_folder(ref) else None
        wanted = [("clean", 0)] + [(c, s) for c in self.names for s in self.severities]
        cells, absent = {}, []
        for c, s in wanted:
            name = "clean" if c == "clean" else f"{c}/s{s}"
            p = self._cell_source(pred_root, folders, c, s)
            r = self._reference_source(c, s, ref_folders)
            if p is None or r is None:
                absent.append(f"{name} ({'predictions' if p is None else 'references'})")
                continue
            cells[(c, s)] = self._pairs(p, r, name)
        if absent and (self.missing == "error" or ("clean", 0) not in cells):
            raise ValueError(f"missing cells under {pred_root} / {ref}: {', '.join(absent)}")
        self._cells = cells
        return cells

    def _shared_mask_folder(self, ref: Path) -> bool:
        return self.masks and not (ref / "clean").is_dir()

    # ------------------------------------------------------------------ grid and loaders
    @property
    def grid_index(self) -> list[tuple[str, int]]:
        """``("clean", 0)``, then every (c, s) present, in registry order."""
        return list(self._resolve())

    def setup(self, stage: str | None = None) -> None:
        self._resolve()

    def _loader(self, key: tuple[str, int]) -> DataLoader:
        pred_path, items = self._resolve()[key]
        return DataLoader(_PairDataset(pred_path, items, self.masks), batch_size=self.batch_size, shuffle=False,
                          collate_fn=_as_list)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(("clean", 0))

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(key) for key in self.grid_index]


# ----------------------------------------------------------------------------- offline demo


def red_roof_boxes(img: np.ndarray, min_pixels: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A rule-based red-roof detector (ours, the offline demo's "model"): pixels with R − max(G, B) > 0.2 and R > 0.4,
    4-connected components of at least ``min_pixels`` pixels, their enclosing boxes ``[K, 4]`` (x1, y1, x2, y2) and
    scores (the fraction of the box the component fills)."""
    from scipy import ndimage

    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    red = (r - np.maximum(g, b) > 0.2) & (r > 0.4)
    regions, n = ndimage.label(red)
    boxes, scores = [], []
    for k, sl in enumerate(ndimage.find_objects(regions), 1):
        count = int((regions[sl] == k).sum())
        if count < min_pixels:
            continue
        box = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        boxes.append(box)
        scores.append(count / ((box[2] - box[0]) * (box[3] - box[1])))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64)


def _nearest_centre(boxes: np.ndarray, size: int) -> int:
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    return int(np.argmin(((centres - size / 2) ** 2).sum(1)))


class SceneRulePredictionsDataModule(ExternalPredictionsDataModule):
    """Offline end-to-end demo of the external-predictions path: procedural urban scenes (reobench.md §5) under the
    corruption grid, a rule-based red-roof detector (:func:`red_roof_boxes`) as the "model", its predictions and
    the references written as the files :class:`ExternalPredictionsDataModule` reads, then served from them.

    ``grounding``: the target of each scene is "the red roof nearest the image centre" (its box from
    :func:`datamodules.eo_scenes.urban_scene`, warped with the image by the geometric corruptions), the prediction
    the detected red roof nearest the centre (null when none is found). ``detection``: every red roof (one class,
    ``red_roof``), predictions with their fill-fraction scores. References are written per cell (geometric
    corruptions move the boxes; boxes pushed out of the image are dropped). Scenes without a red roof are skipped.
    Files go to ``<output_dir>/<key>/{predictions,references}`` (key = a hash of every setting and of the
    corruption parameters), written once and atomically.

    Args:
        task: ``grounding`` or ``detection``.
        num_scenes: urban scenes drawn (before skipping those without a red roof).
        size: scene side in pixels.
        corruptions: canonical corruption names in order (None = all 12).
        severities: severities (reobench.md §3: 1..5).
        seed: seeds the scenes and the per-sample corruption seeds.
        output_dir: where the files are written (None = ``$PAPER_TRAINER_CACHE/scene_predictions``, else the
            system temporary directory).
        batch_size: record pairs per batch.
    """

    VERSION = 1  # bump when the scenes, the rule or the file format change

    def __init__(
        self,
        task: str = "grounding",
        num_scenes: int = 64,
        size: int = 64,
        corruptions: tuple[str, ...] | None = None,
        severities: tuple[int, ...] = (1, 2, 3, 4, 5),
        seed: int = 0,
        output_dir: str | None = None,
        batch_size: int = 64,
    ) -> None:
        if task not in ("grounding", "detection"):
            raise ValueError(f"SceneRulePredictionsDataModule: task must be 'grounding' or 'detection', got {task!r}")
        if num_scenes < 1 or size < 16:
            raise ValueError("num_scenes must be ≥ 1 and size ≥ 16")
        root = output_dir or os.environ.get("PAPER_TRAINER_CACHE")
        base = Path(root) / "scene_predictions" if root else Path(tempfile.gettempdir()) / "paper_trainer_scene_predictions"
        names = tuple(CORRUPTIONS) if corruptions is None else tuple(canonical_corruption(c) for c in corruptions)
        sev = tuple(int(s) for s in severities)
        text = repr((self.VERSION, task, int(num_scenes), int(size), names, sev, int(seed), [PARAMS[c] for c in names]))
        self.files_dir = base / hashlib.sha256(text.encode()).hexdigest()[:16]
        super().__init__(task, str(self.files_dir / "predictions"), str(self.files_dir / "references"), names, sev,
                         skip_geometric=False, batch_size=batch_size)  # fmt: skip
        self.num_scenes, self.size, self.seed, self.output_dir = int(num_scenes), int(size), int(seed), output_dir

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"num_scenes": 4, "size": 32, "corruptions": ("gaussian_noise", "rotate"), "severities": (1, 5)}

    def _records(self, img: np.ndarray, boxes: np.ndarray, scene_id: str) -> tuple[dict, dict] | None:
        """The prediction and reference records of one (corrupted) scene, or None if it has no red roof."""
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)  # dropped: pushed out of the image
        boxes = boxes[keep]
        found, scores = red_roof_boxes(img)
        if self.task == "detection":
            return ({"id": scene_id, "boxes": found.tolist(), "scores": scores.tolist(), "labels": [0] * len(found)},
                    {"id": scene_id, "boxes": boxes.tolist(), "labels": [0] * len(boxes)})  # fmt: skip
        if not len(boxes):
            return None
        pred = found[_nearest_centre(found, self.size)].tolist() if len(found) else None
        return {"id": scene_id, "box": pred}, {"id": scene_id, "box": boxes[_nearest_centre(boxes, self.size)].tolist()}

    def write_files(self) -> Path:
        """Draw the scenes, corrupt them, run the rule and write predictions and references (once)."""
        from datamodules.eo_scenes import urban_scene

        if (self.files_dir / ".complete").is_file():
            return self.files_dir
        scenes = []
        for i in range(self.num_scenes):
            img, boxes, labels = urban_scene(self.size, np.random.default_rng([self.seed, 7, i]))
            if (labels == 0).any():
                scenes.append((f"scene{i:05d}", img, boxes[labels == 0]))
        if not scenes:
            raise ValueError("SceneRulePredictionsDataModule: no scene has a red roof; draw more scenes")
        return build_directory_once(self.files_dir, lambda tmp: self._write_cells(tmp, scenes))

    def _write_cells(self, out: Path, scenes: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        cells = [("clean", 0)] + [(c, s) for c in self.names for s in self.severities]
        for c, s in cells:
            preds, refs = [], []
            for k, (scene_id, img, boxes) in enumerate(scenes):
                if c != "clean":
                    img, boxes = corrupt(img, c, s, seed=sample_seed(self.seed, k, c, s), target=boxes)
                img = np.rint(np.clip(img, 0, 1) * 255) / 255  # 8-bit, as image files are
                pair = self._records(img, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), scene_id)
                if pair is not None:
                    preds.append(pair[0])
                    refs.append(pair[1])
            rel = "clean.jsonl" if c == "clean" else f"{c}/severity_{s}.jsonl"
            for top, recs in (("predictions", preds), ("references", refs)):
                path = out / top / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(json.dumps(r) + "\n" for r in recs))

    def prepare_data(self) -> None:
        self.write_files()

    def _resolve(self) -> dict[tuple[str, int], tuple[Path | None, list[tuple[Any, Any]]]]:
        if self._cells is None:
            self.write_files()
        return super()._resolve()
