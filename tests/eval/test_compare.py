"""`make compare`'s pure parts: arms, the job list, and the tables from hand-written run outputs
(no training: run_jobs is stubbed where compare() is run)."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from eval import compare
from eval.cli import main as evaluate_cli
from eval.compare import Arm, Job, aggregate, jobs, load_arms, margins, protocols, render
from segloc.errors import UserError
from segloc.params import load_params
from train.cli import main as pretrain_cli

REPO = Path(__file__).resolve().parents[2]
ARMS = {
    "segloc": {"method": "segloc", "switches": "", "seeds": 2},
    "segloc-single": {"method": "segloc", "switches": "--set pretrain.queue=single", "seeds": 2},
    "moco": {"method": "moco", "switches": None},
}


def _arms() -> list[Arm]:
    return load_arms({"compare": {"arms": ARMS}})


def test_load_arms_reads_method_switches_and_seeds():
    assert _arms() == [
        Arm("segloc", "segloc", (), 2),
        Arm("segloc-single", "segloc", ("--set", "pretrain.queue=single"), 2),
        Arm("moco", "moco", (), 1),  # seeds default to one
    ]
    # The shipped section is valid: every arm and seed count.
    shipped = load_arms(load_params(REPO / "params.yaml"))
    assert [a.name for a in shipped][:2] == ["segloc", "segloc-single"]
    assert all(a.seeds >= 1 for a in shipped)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "params compare.arms: missing"),
        ({"compare": None}, "params compare.arms: missing"),
        ({"compare": {"arms": ["segloc"]}}, "params compare.arms: missing"),
        ({"compare": {"arms": {"x": "segloc"}}}, "params compare.arms.x: expected {method"),
        ({"compare": {"arms": {"x": {"seeds": 2}}}}, "params compare.arms.x: expected {method"),
        ({"compare": {"arms": {"x": {"method": 3}}}}, "params compare.arms.x: expected {method"),
        (
            {"compare": {"arms": {"x": {"method": "moco", "seeds": 0}}}},
            "params compare.arms.x.seeds: expected a positive integer",
        ),
        (
            {"compare": {"arms": {"x": {"method": "moco", "seeds": "2"}}}},
            "params compare.arms.x.seeds: expected a positive integer",
        ),
        (
            {"compare": {"arms": {"x": {"method": "moco", "seeds": 1.5}}}},
            "params compare.arms.x.seeds: expected a positive integer",
        ),
    ],
)
def test_load_arms_errors_name_the_key(params, message):
    with pytest.raises(UserError) as err:
        load_arms(params)
    assert err.value.message.startswith(message) and "\n" not in err.value.message


def test_jobs_pretrain_every_seed_then_score_every_init_under_every_read_out(tmp_path):
    runs, shards, params = tmp_path / "runs", tmp_path / "shards", tmp_path / "params.yaml"
    params.write_text("eval:\n  finetune_protocols: [finetune, finetune_25pct]\n")
    assert protocols(params) == ["probe", "probe_mlp", "finetune", "finetune_25pct"]
    params.write_text("eval: {}\n")  # the code default
    readouts = protocols(params)
    assert readouts == ["probe", "probe_mlp", "finetune", "finetune_10pct"]
    todo = jobs(_arms(), readouts, runs, shards, params)
    backbones = ["segloc-s0", "segloc-s1", "segloc-single-s0", "segloc-single-s1", "moco-s0"]
    assert [j.name for j in todo[:5]] == [f"pretrain {b}" for b in backbones]
    assert [j.name for j in todo[5:]] == [
        f"{p} {init}" for init in ["random", *backbones] for p in readouts
    ]
    assert todo[3] == Job(
        "pretrain segloc-single-s1",
        (
            "pretrain",
            "--method",
            "segloc",
            "--set",
            "pretrain.queue=single",
            "--set",
            "pretrain.seed=1",
            "--shards",
            str(shards),
            "--out",
            str(runs / "pretrain" / "segloc-single-s1"),
            "--params",
            str(params),
        ),
        runs / "pretrain" / "segloc-single-s1",
    )
    random_mlp = todo[5 + 1]
    assert random_mlp.cmd == (
        "evaluate",
        "--init",
        "random",
        "--protocol",
        "probe_mlp",
        "--out",
        str(runs / "eval" / "random" / "probe_mlp"),
        "--set",
        "eval.probe_mlp.repeats=3",  # random init's spread: compare.random_repeats
        "--params",
        str(params),
    )
    random_ft = next(j for j in todo if j.name == "finetune_10pct random")
    assert random_ft.cmd[-4:-2] == ("--set", "eval.finetune.repeats=3")
    last = todo[-1]
    assert last.name == "finetune_10pct moco-s0"
    assert last.cmd[1:5] == (
        "--init",
        str(runs / "pretrain" / "moco-s0"),
        "--protocol",
        "finetune_10pct",
    )
    assert last.out == runs / "eval" / "moco-s0" / "finetune_10pct"
    assert "--set" not in last.cmd  # a backbone's read-outs keep eval's own repeats
    assert len({j.out for j in todo}) == len(todo) == 5 + 6 * 4
    with pytest.raises(UserError, match="compare.random_repeats"):
        compare.load_random_repeats({"compare": {"random_repeats": 1}})
    assert compare.load_random_repeats({"compare": {}}) == 3
    # Every command is one its CLI parses (options and method names exist).
    for job in todo:
        cli = pretrain_cli if job.cmd[0] == "pretrain" else evaluate_cli
        ctx = cli.make_context(job.cmd[0], list(job.cmd[1:]))
        assert ctx.params["out"] is not None


def _summary(values):
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
        "values": values,
    }


def _scores(fg: list[float], miou: list[float]) -> dict:
    """A scores.json whose splits hold the same numbers (easy, overall)."""
    entry = {"mIoU": _summary(miou), "mIoU_fg": _summary(fg), "mAcc": _summary(miou)}
    return {"repeats": len(fg), "splits": {"easy": entry, "overall": entry}}


# Overall fg mIoU per backbone (three repeats each, so n = repeats would be 3) and random init's
# four repeats.
FG = {
    "segloc-s0": [0.49, 0.50, 0.51],
    "segloc-s1": [0.59, 0.60, 0.61],
    "segloc-single-s0": [0.44, 0.45, 0.46],
    "segloc-single-s1": [0.46, 0.47, 0.48],
    "moco-s0": [0.39, 0.40, 0.41],
    "random": [0.30, 0.32, 0.34, 0.36],
}
KNN = {"segloc": [40.0, 44.0], "segloc-single": [30.0, 31.0], "moco": [None]}


def _write_runs(runs: Path, readouts: list[str]) -> None:
    for init, fg in FG.items():
        for k, protocol in enumerate(readouts):
            folder = runs / "eval" / init / protocol
            folder.mkdir(parents=True)
            shifted = [v + 0.01 * k for v in fg]  # each read-out its own numbers
            doc = _scores(shifted, [v + 0.2 for v in shifted])
            (folder / "scores.json").write_text(json.dumps(doc))
    for arm, accs in KNN.items():
        for seed, acc in enumerate(accs):
            folder = runs / "pretrain" / f"{arm}-s{seed}"
            folder.mkdir(parents=True)
            metrics = {} if acc is None else {"knn_acc": acc, "knn_acc_init": 10.0 + seed}
            (folder / "metrics.json").write_text(json.dumps(metrics))


def _pct(values):
    return {
        "mean": pytest.approx(100 * np.mean(values), abs=1e-3),
        "std": None if len(values) == 1 else pytest.approx(100 * np.std(values, ddof=1), abs=1e-3),
        "n": len(values),
    }


def test_aggregate_counts_pretraining_seeds_for_arms_and_repeats_for_random(tmp_path):
    readouts = ["probe", "finetune"]
    _write_runs(tmp_path, readouts)
    doc = aggregate(_arms(), readouts, tmp_path)
    assert set(doc) == {"probe", "finetune", "pretrain"}
    for k, protocol in enumerate(readouts):
        table = doc[protocol]
        assert list(table) == ["random", "segloc", "segloc-single", "moco"]
        for split in ("easy", "overall"):
            # random init: every repeat is a sample.
            random = [v + 0.01 * k for v in FG["random"]]
            assert table["random"][split]["fg_miou"] == _pct(random)
            assert table["random"][split]["miou"] == _pct([v + 0.2 for v in random])
            # an arm: one sample per pretraining seed, its mean over the read-out's repeats.
            seg = [np.mean(FG[f"segloc-s{s}"]) + 0.01 * k for s in range(2)]
            assert table["segloc"][split]["fg_miou"] == _pct(seg)
            assert table["segloc"][split]["miou"] == _pct([v + 0.2 for v in seg])
            assert table["moco"][split]["fg_miou"] == _pct([0.40 + 0.01 * k])
    assert doc["finetune"]["segloc"]["overall"]["fg_miou"]["n"] == 2
    assert doc["finetune"]["random"]["overall"]["fg_miou"]["n"] == 4
    # kNN: an arm over its seeds; random init from every monitored run's step 0; moco's runs
    # have no monitor, so no row.
    assert doc["pretrain"] == {
        "segloc": {"knn_acc": _pct([0.40, 0.44])},
        "segloc-single": {"knn_acc": _pct([0.30, 0.31])},
        "random": {"knn_acc": _pct([0.10, 0.11, 0.10, 0.11])},
    }


def test_margins_over_random_and_between_arms(tmp_path):
    readouts = ["probe", "probe_mlp"]
    _write_runs(tmp_path, readouts)
    doc = aggregate(_arms(), readouts, tmp_path)
    pairs = [("segloc", "random"), ("moco", "random"), ("segloc", "segloc-single")]
    rows = margins(doc, readouts, pairs)
    assert [(r["a"], r["b"], r["protocol"]) for r in rows] == [
        (a, b, p) for a, b in pairs for p in readouts
    ]
    by = {(r["a"], r["b"], r["protocol"]): r for r in rows}
    seg = [100 * np.mean(FG[f"segloc-s{s}"]) for s in range(2)]  # 50, 60
    single = [100 * np.mean(FG[f"segloc-single-s{s}"]) for s in range(2)]  # 45, 47
    random = [100 * v for v in FG["random"]]
    r = by[("segloc", "random", "probe")]
    se = math.sqrt(np.var(seg, ddof=1) / 2 + np.var(random, ddof=1) / 4)
    assert r["diff"] == pytest.approx(np.mean(seg) - np.mean(random), abs=1e-3)
    assert r["se"] == pytest.approx(se, abs=1e-3) and r["beyond_2se"]  # +22 ± 5.0
    r = by[("segloc", "segloc-single", "probe_mlp")]
    se = math.sqrt(np.var(seg, ddof=1) / 2 + np.var(single, ddof=1) / 2)
    assert r["diff"] == pytest.approx(np.mean(seg) - np.mean(single), abs=1e-3)
    assert r["se"] == pytest.approx(se, abs=1e-3) and not r["beyond_2se"]  # +9 ± 5.1
    r = by[("moco", "random", "probe")]  # one seed: no spread, no claim
    assert r["diff"] == pytest.approx(40 - np.mean(random), abs=1e-3)
    assert r["se"] is None and r["beyond_2se"] is False


def _params(tmp_path: Path, arms: dict) -> Path:
    doc = {"compare": {"arms": arms}, "eval": {"finetune_protocols": ["finetune"]}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_compare_writes_margins_with_segloc_against_segloc_single(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(compare, "run_jobs", lambda todo, digest, resume: ran.append(todo))
    shards, runs, out = tmp_path / "shards", tmp_path / "runs", tmp_path / "reports"
    shards.mkdir()
    params = _params(tmp_path, ARMS)
    with pytest.raises(UserError, match="manifest.json: no shards"):
        compare.compare(params, runs, out, shards, resume=False)
    (shards / "manifest.json").write_text("{}")
    readouts = ["probe", "probe_mlp", "finetune"]
    _write_runs(runs, readouts)
    doc = compare.compare(params, runs, out, shards, resume=False)
    assert len(ran) == 1 and len(ran[0]) == 5 + 6 * 3
    assert json.loads((out / "compare.json").read_text()) == doc
    assert doc["seeds"] == {"segloc": 2, "segloc-single": 2, "moco": 1}
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in doc["margins"]))
    assert pairs == [
        ("segloc", "random"),
        ("segloc-single", "random"),
        ("moco", "random"),
        ("segloc", "segloc-single"),
    ]
    assert len(doc["margins"]) == 4 * 3
    md = (out / "compare.md").read_text()
    assert "| init | probe | probe_mlp | finetune | beats random under every read-out |" in md
    assert "| segloc − random | " in md and "(beyond 2 SE)" in md
    row = next(line for line in md.splitlines() if line.startswith("| segloc − segloc-single |"))
    assert row.count("|") == 5 and "(beyond 2 SE)" not in row
    assert "| moco − random | " in md
    assert "| segloc | 42.0 ± 2.8 | 2 |" in md and "| random | 10.5 ± 0.6 | 4 |" in md
    verdicts = {
        line.split("|")[1].strip(): line.split("|")[-2].strip()
        for line in md.splitlines()
        if line.startswith("| ") and line.count("|") == 6
    }
    assert verdicts["segloc"] == "**yes**"
    assert verdicts["moco"].startswith("untested (n=1 under")  # one seed: no SE
    # Without both queue arms there is no per-class-queue row.
    other = tmp_path / "other"
    other.mkdir()
    params = _params(other, {k: ARMS[k] for k in ("segloc", "moco")})
    doc = compare.compare(params, runs, out, shards, resume=False)
    assert {(r["a"], r["b"]) for r in doc["margins"]} == {("segloc", "random"), ("moco", "random")}
    assert "segloc − segloc-single" not in (out / "compare.md").read_text()


def test_render_tables_from_a_compare_document():
    cell = {"mean": 50.0, "std": 2.0, "n": 3}
    doc = {
        "probe": {
            "random": {"overall": {"fg_miou": {"mean": 40.0, "std": 1.0, "n": 3}}},
            "segloc": {"overall": {"fg_miou": cell}},
        },
        "margins": [
            {
                "a": "segloc",
                "b": "random",
                "protocol": "probe",
                "diff": 10.0,
                "se": 1.3,
                "beyond_2se": True,
            },
            {
                "a": "x",
                "b": "random",
                "protocol": "probe",
                "diff": None,
                "se": None,
                "beyond_2se": False,
            },
        ],
        "pretrain": {"segloc": {"knn_acc": {"mean": 41.3, "std": None, "n": 1}}},
    }
    md = render(doc, ["probe"], [Arm("segloc", "segloc", (), 3)], wall=90.0)
    assert "(1.5 min)" in md and "Pretraining seeds per arm: segloc 3" in md
    assert "| segloc − random | +10.0 ± 1.3 (beyond 2 SE) |" in md
    assert "| x − random | n/a |" in md
    assert "| segloc | 41.3 | 1 |" in md
    assert "| segloc | 50.0 ± 2.0 (n=3), +10.0 ± 1.3 | **yes** |" in md


def test_run_jobs_resumes_only_what_finished_with_the_same_command(tmp_path):
    log = tmp_path / "log.txt"
    write = f"open({str(log)!r}, 'a').write('{{}}\\n'.format(__import__('sys').argv[1]))"

    def job(name, out):
        return Job(name, (sys.executable, "-c", write, name), tmp_path / out)

    todo = [job("a", "ra"), job("b", "rb")]
    compare.run_jobs(todo, "digest1", resume=True)
    assert log.read_text().split() == ["a", "b"]
    stamp = json.loads((tmp_path / "ra" / compare.DONE).read_text())
    assert stamp == {"cmd": list(todo[0].cmd), "params": "digest1"}
    compare.run_jobs(todo, "digest1", resume=True)  # both finished: nothing runs
    assert log.read_text().split() == ["a", "b"]
    compare.run_jobs([todo[0], job("c", "rb")], "digest1", resume=True)  # b's command changed
    assert log.read_text().split() == ["a", "b", "c"]
    compare.run_jobs(todo[:1], "digest2", resume=True)  # other params: runs again
    compare.run_jobs(todo[:1], "digest2", resume=False)  # no --resume: always runs
    assert log.read_text().split() == ["a", "b", "c", "a", "a"]
    failing = Job("bad", (sys.executable, "-c", "raise SystemExit(3)"), tmp_path / "rbad")
    with pytest.raises(UserError, match="bad failed"):
        compare.run_jobs([failing, job("d", "rd")], "digest2", resume=True)
    assert not (tmp_path / "rbad" / compare.DONE).exists()
    assert "d" not in log.read_text().split()  # stops at the first failure
