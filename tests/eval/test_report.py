import math
from pathlib import Path

import numpy as np
import pytest

from eval.outputs import RepeatResult, _largest_remainder, confusion_records, metrics_doc
from eval.report import delta, score_table, settings_diff
from eval.runs import Run, expand, label_runs
from segloc.errors import UserError


def _run(label, kind, values, folder=None, steps=10):
    summary = {
        "mean": float(np.mean(values)),
        "values": values,
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
    }
    metrics = {"repeats": len(values), "splits": {"overall": {"mIoU": summary}}}
    config = {"init": {"label": label, "kind": kind}, "eval": {"steps": steps}}
    return Run(Path(folder or label), label, metrics, config, None)


def test_delta_is_difference_of_means_with_its_standard_error():
    base = _run("random", "random", [0.50, 0.52, 0.54])
    seg = _run("segloc", "backbone", [0.60, 0.61, 0.65])
    se = math.sqrt(0.02**2 / 3 + np.std([0.60, 0.61, 0.65], ddof=1) ** 2 / 3)
    assert delta(seg, base, "overall") == f"+{100 * (0.62 - 0.52):.1f} ± {100 * se:.1f}"
    one = _run("moco", "backbone", [0.40])
    assert delta(one, base, "overall") == "-12.0"  # no std with one repeat: no error shown


def test_runs_get_unique_labels_and_random_comes_first():
    runs = label_runs(
        [
            _run("segloc", "backbone", [0.6], "a/x"),
            _run("segloc", "backbone", [0.7], "b/y"),
            _run("random", "random", [0.5]),
        ]
    )
    assert [r.label for r in runs] == ["random", "segloc (x)", "segloc (y)"]
    table = score_table(runs, "mIoU").splitlines()
    assert table[2] == "| random | 1 | 50.0 |"
    assert settings_diff(runs) == []
    assert settings_diff(runs + [_run("moco", "backbone", [0.5], steps=20)]) == ["steps"]


def test_expand_globs_in_order_without_repeats(tmp_path):
    for name in ("b", "a", "c"):
        (tmp_path / name).mkdir()
    found = expand([str(tmp_path / "c"), str(tmp_path / "*")], "--runs")
    assert [p.name for p in found] == ["c", "a", "b"]
    with pytest.raises(UserError, match="--runs .*: matches nothing"):
        expand([str(tmp_path / "z*")], "--runs")


def test_confusion_records_are_row_percentages():
    rng = np.random.default_rng(0)
    for _ in range(20):
        quotas = rng.dirichlet(np.ones(7)) * 100
        counts = _largest_remainder(quotas)
        assert counts.sum() == 100 and np.all(np.abs(counts - quotas) < 1)
    mat = np.array([[90, 10, 0], [0, 0, 0], [1, 1, 1]])
    records = confusion_records(mat, ("bg", "a", "b"))
    assert len(records) == 200  # class "a" has no ground truth: no row
    assert records.count({"actual": "bg", "predicted": "a"}) == 10
    assert records.count({"actual": "b", "predicted": "b"}) == 33  # 33.3 rounds down, one gets 34


def test_metrics_doc_summarises_repeats():
    mats = [np.array([[8, 2], [0, 0]]), np.array([[8, 0], [0, 2]])]  # knife: FP only, perfect
    results = [RepeatResult(s, {"overall": m}, [], {}) for s, m in enumerate(mats)]
    doc = metrics_doc(results, ("background", "knife"), {"label": "random"})
    entry = doc["splits"]["overall"]
    assert entry["mIoU"]["values"] == [pytest.approx(0.4), 1.0]
    assert entry["mIoU"]["std"] == pytest.approx(np.std([0.4, 1.0], ddof=1))
    assert entry["per_class_iou"] == {"background": pytest.approx(0.9), "knife": 0.5}
    assert doc["seeds"] == [0, 1] and doc["repeats"] == 2
