"""Is the embedded default learnable? A full fine-tune from random init, all labels, on a CPU budget.

    make repro                                      # first: the demo data this reads (data/demo)
    .venv/bin/python bench/learnable.py             # 1,500 steps, one repeat (~10 min, 2 cores)
    .venv/bin/python bench/learnable.py --steps 300 --set eval.finetune.crop_size=96

Runs, in this order and in this process's working directory (params.yaml's data paths):
1. the baseline: `evaluate --protocol probe` (the linear probe) on random init, one repeat;
2. `evaluate --protocol finetune` from random init with every label for --steps steps, with the
   pipeline's fine-tuning recipe (eval.finetune: the fused stride-8 head, AdamW) but whole 112-px
   scans (RECIPE); --set overrides it.
Prints each one's foreground mIoU per test split, its wall time, and the fine-tune's figure as a
ratio of the baseline's. Outputs go to a temporary folder; nothing in runs/ is touched.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
RECIPE = [
    "eval.finetune.head=fused",  # 1x1 conv on C3 + C4 + C5 at stride 8: items many cells wide
    "eval.finetune.optimizer=adamw",
    "eval.finetune.batch_size=16",
    "eval.finetune.crop_size=112",  # whole scans at base_size 112 (scale jitter 0.75-1.5 kept)
]


def evaluate(out: Path, protocol: str, overrides: list[str]) -> tuple[dict, float]:
    args = [str(BIN / "evaluate"), "--init", "random", "--protocol", protocol, "--out", str(out)]
    for item in ["eval.probe.repeats=1", "eval.finetune.repeats=1", *overrides]:
        args += ["--set", item]
    start = time.perf_counter()
    subprocess.run(args, check=True)
    wall = time.perf_counter() - start
    return json.loads((out / "scores.json").read_text()), wall


def fg(metrics: dict) -> dict[str, float]:
    return {s: 100 * e["mIoU_fg"]["mean"] for s, e in metrics["splits"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="fine-tuning steps")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="extra eval override for the fine-tune, KEY=VALUE (repeatable)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="learnable-") as tmp:
        base, base_s = evaluate(Path(tmp) / "probe", "probe", [])
        tuned, tuned_s = evaluate(
            Path(tmp) / "finetune",
            "finetune",
            [f"eval.finetune.steps={args.steps}", *RECIPE, *args.overrides],
        )
    rows = [
        ("probe, random init (baseline)", base, base_s),
        (f"fine-tune from random init, {args.steps} steps", tuned, tuned_s),
    ]
    splits = list(fg(base))
    print("\nforeground mIoU (%), one repeat\n")
    print(f"| run | {' | '.join(splits)} | wall |")
    print(f"|---|{'---|' * len(splits)}---|")
    for name, metrics, wall in rows:
        cells = " | ".join(f"{v:.1f}" for v in fg(metrics).values())
        print(f"| {name} | {cells} | {wall / 60:.1f} min |")
    ratio = fg(tuned)["overall"] / max(fg(base)["overall"], 1e-9)
    print(f"\nfine-tune / baseline, overall foreground mIoU: {ratio:.1f}x")


if __name__ == "__main__":
    main()
