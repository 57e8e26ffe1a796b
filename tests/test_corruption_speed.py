"""Smoke test of benchmarks/corruption_speed.py (reobench.md §3 corruptions, issue 10 speed benchmark)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "corruption_speed.py"


def _load():
    spec = importlib.util.spec_from_file_location("corruption_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_prints_table_and_result(capsys):
    mod = _load()
    tot = mod.main(["--quick", "--batch", "2", "--corruptions", "gaussian_blur", "motion_blur", "clouds"])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    m = re.fullmatch(r"RESULT images_per_s=(\d+\.\d) speedup_vs_reference=(\d+\.\d\d)", lines[-1])
    assert m, lines[-1]
    assert float(m.group(1)) == pytest.approx(tot["batched_ips"], abs=0.05)
    assert float(m.group(2)) == pytest.approx(tot["speedup"], abs=0.005)
    assert sum(line.startswith("RESULT") for line in lines) == 1
    rows = [line for line in lines if line.startswith("| motion_blur |")]
    assert [row.split("|")[2].strip() for row in rows] == ["64", "224"]
    assert all(float(row.split("|")[6]) < 1e-4 for row in rows)  # batched == reference (max abs diff)


def test_sample_photos_shape_and_range():
    photos = _load().sample_photos(48)
    assert len(photos) == 2
    for p in photos:
        assert p.shape == (48, 48, 3) and p.dtype.name == "float32" and 0 <= p.min() and p.max() <= 1


def test_sizes_must_include_224():
    with pytest.raises(SystemExit):
        _load().main(["--sizes", "64"])
