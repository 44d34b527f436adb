import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from eval.outputs import (
    RepeatResult,
    _largest_remainder,
    confusion_records,
    headline,
    metrics_doc,
)
from eval.report import (
    beats,
    by_protocol,
    delta,
    margin,
    protocol_key,
    protocol_title,
    score_table,
    settings_diff,
    side_by_side,
)
from eval.runs import Run, expand, label_runs, load_run
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


def _cell(mean, std, n):
    return {"mean": mean, "std": std, "n": n}


def test_margin_is_the_difference_with_its_standard_error():
    diff, se = margin(_cell(60.0, 2.0, 4), _cell(50.0, 3.0, 9))
    assert diff == pytest.approx(10.0)
    assert se == pytest.approx(math.sqrt(2.0**2 / 4 + 3.0**2 / 9))
    assert margin(_cell(60.0, None, 1), _cell(50.0, 3.0, 9)) == (10.0, None)
    assert margin(_cell(None, None, 2), _cell(50.0, 3.0, 9)) is None
    assert beats((10.0, 4.9)) and not beats((10.0, 5.0)) and not beats((-10.0, 1.0))
    assert not beats((10.0, None)) and not beats(None)


def _doc(cells: dict[str, dict[str, tuple]]) -> dict:
    """results.json-shaped: protocol -> init -> overall fg_miou cell (mean, std, n)."""
    return {
        protocol: {
            init: {"overall": {"fg_miou": _cell(*cell), "miou": _cell(*cell)}}
            for init, cell in inits.items()
        }
        for protocol, inits in cells.items()
    }


def _verdicts(table: str) -> dict[str, str]:
    rows = [line.strip("|").split("|") for line in table.splitlines()[2:]]
    return {row[0].strip(): row[-1].strip() for row in rows}


def test_side_by_side_says_yes_only_beyond_two_standard_errors_under_every_read_out():
    protocols = ["probe", "probe_mlp", "finetune"]
    base = (20.0, 1.0, 3)  # random init: SE of a margin over it >= 1 / sqrt(3)
    strong = (30.0, 1.0, 3)  # +10 ± 0.82 under every read-out
    weak = (21.0, 1.0, 3)  # +1 ± 0.82: within 2 SE
    cells = {p: {"random": base, "clear": strong} for p in protocols}
    # Beyond 2 SE under two read-outs, within them under the third.
    for init, weak_in in (("mlp_weak", "probe_mlp"), ("ft_weak", "finetune")):
        for p in protocols:
            cells[p][init] = weak if p == weak_in else strong
    for p in protocols:
        cells[p]["one_seed"] = (35.0, None, 1)  # no spread: never a win
        cells[p]["one_ft"] = (35.0, None, 1) if p == "finetune" else strong  # ahead, untested
    for p in ("probe", "probe_mlp"):  # missing under one read-out: never a yes either
        cells[p]["missing"] = strong
    doc = _doc(cells)
    table = side_by_side(doc, protocols)
    header = table.splitlines()[0]
    assert header == "| init | probe | probe_mlp | finetune | beats random under every read-out |"
    verdicts = _verdicts(table)
    assert list(verdicts)[0] == "random" and verdicts["random"] == "–"
    assert verdicts == {
        "random": "–",
        "clear": "**yes**",
        "mlp_weak": "no",
        "ft_weak": "no",
        "one_seed": "untested (n=1 under probe, probe_mlp, finetune)",
        "one_ft": "untested (n=1 under finetune)",
        "missing": "no",
    }
    row = next(line for line in table.splitlines() if line.startswith("| clear |"))
    se = math.sqrt(2 / 3)
    assert f"30.0 ± 1.0 (n=3), +10.0 ± {se:.1f}" in row
    one = next(line for line in table.splitlines() if line.startswith("| one_seed |"))
    assert "35.0 (n=1), +15.0 |" in one  # a margin without its error
    missing = next(line for line in table.splitlines() if line.startswith("| missing |"))
    assert missing.endswith("| – | no |")


def test_side_by_side_verdict_sits_on_the_two_se_line():
    """A margin of exactly 2 SE is not a win; a hair above it is."""
    protocols = ["probe", "finetune"]  # SE sqrt(4² / 8 + 4² / 8) = 2, exactly
    for lift, verdict in ((4.0, "no"), (4.01, "**yes**"), (3.99, "no")):
        doc = _doc({p: {"random": (20.0, 4.0, 8), "seg": (20.0 + lift, 4.0, 8)} for p in protocols})
        assert _verdicts(side_by_side(doc, protocols))["seg"] == verdict
    # A read-out without random init cannot be won.
    doc = _doc(
        {
            "probe": {"seg": (90.0, 1.0, 4)},
            "finetune": {"random": (1.0, 1.0, 4), "seg": (90.0, 1.0, 4)},
        }
    )
    assert _verdicts(side_by_side(doc, protocols))["seg"] == "no"
    alone = _doc({p: {"seg": (90.0, 1.0, 4)} for p in protocols})  # no random init at all
    assert _verdicts(side_by_side(alone, protocols)) == {"seg": "no"}
    assert side_by_side({}, protocols) is None


def test_read_outs_come_in_a_fixed_order_with_titles():
    names = [
        "finetune_2.5pct",
        "finetune",
        "probe_mlp",
        "finetune_50pct",
        "probe",
        "finetune_10pct",
    ]
    assert sorted(names, key=protocol_key) == [
        "probe",
        "probe_mlp",
        "finetune",
        "finetune_50pct",
        "finetune_10pct",
        "finetune_2.5pct",
    ]
    assert sorted(["zzz", "finetune_10pct", "probe"], key=protocol_key)[-1] == "zzz"
    assert "(probe)" in protocol_title("probe") and "Linear" in protocol_title("probe")
    assert "(probe_mlp)" in protocol_title("probe_mlp")
    assert protocol_title("finetune_10pct") == (
        "Fine-tuning on 10 % of the labeled scans (finetune_10pct)"
    )
    assert protocol_title("other") == "other"


def test_by_protocol_groups_runs_in_read_out_order():
    runs = []
    for protocol in ("finetune_10pct", "probe_mlp", "finetune", "probe"):
        for label, kind in (("segloc", "backbone"), ("random", "random")):
            run = _run(label, kind, [0.5], f"{protocol}/{label}")
            runs.append(replace(run, config={**run.config, "protocol": protocol}))
    groups = by_protocol(runs)
    assert list(groups) == ["probe", "probe_mlp", "finetune", "finetune_10pct"]
    assert all([r.label for r in g] == ["random", "segloc"] for g in groups.values())


def test_headline_holds_a_few_percentages_and_the_versions():
    mats = [
        np.array([[8, 2, 0], [1, 3, 0], [0, 0, 4]]),
        np.array([[9, 1, 0], [0, 4, 0], [1, 0, 3]]),
    ]
    splits = ("easy", "hard", "hidden", "overall")
    results = [RepeatResult(s, {n: m for n in splits}, [], {}) for s, m in enumerate(mats)]
    doc = metrics_doc(results, ("background", "knife", "gun"), {"label": "random"})
    head = headline(doc)
    assert set(head) == {"fg_miou", "miou", "versions"}
    assert list(head["fg_miou"]) == list(splits) and list(head["miou"]) == ["overall"]
    for split in splits:
        assert head["fg_miou"][split] == round(100 * doc["splits"][split]["mIoU_fg"]["mean"], 2)
    assert head["miou"]["overall"] == round(100 * doc["splits"]["overall"]["mIoU"]["mean"], 2)
    assert head["versions"][0].startswith("python==")
    assert all(isinstance(v, str) and "==" in v for v in head["versions"])
    leaves = [v for k in ("fg_miou", "miou") for v in head[k].values()]
    assert len(leaves) <= 12 and all(isinstance(v, float) for v in leaves)
    # A split where nothing was scored has no number, not a zero.
    doc["splits"]["easy"]["mIoU_fg"]["mean"] = None
    assert headline(doc)["fg_miou"]["easy"] is None


def _write_run(folder: Path, scores_doc: dict | None, headline_doc: dict | None = None) -> None:
    folder.mkdir(parents=True)
    config = {"init": {"label": "random", "kind": "random"}, "protocol": "probe_mlp"}
    (folder / "config.json").write_text(json.dumps(config))
    if scores_doc is not None:
        (folder / "scores.json").write_text(json.dumps(scores_doc))
    if headline_doc is not None:
        (folder / "metrics.json").write_text(json.dumps(headline_doc))


def test_load_run_reads_scores_json_not_the_headline(tmp_path):
    summary = {"mean": 0.5, "std": 0.1, "values": [0.4, 0.6]}
    full = {"repeats": 2, "splits": {"overall": {"mIoU": summary, "mIoU_fg": summary}}}
    _write_run(tmp_path / "new", full, {"fg_miou": {"overall": 12.0}, "miou": {}, "versions": []})
    run = load_run(tmp_path / "new")
    assert run.metrics == full and run.protocol == "probe_mlp" and run.samples is None
    assert run.summary("overall", "mIoU_fg") == summary
    # A folder with only a headline (or a run from before scores.json) is not read as scores.
    _write_run(tmp_path / "headline", None, {"fg_miou": {"overall": 12.0}})
    with pytest.raises(UserError, match=r"headline/scores.json: not found"):
        load_run(tmp_path / "headline")
    _write_run(tmp_path / "wrong", {"fg_miou": {"overall": 12.0}})
    with pytest.raises(UserError, match="scores.json/config.json lack key 'splits'"):
        load_run(tmp_path / "wrong")
