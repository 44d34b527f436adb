"""`evaluate --task instance` while `eval.instance.enabled` is false: a stub run, without torch.

The pipeline keeps one instance stage per init so that switching the task on is one param
(`dvc exp run -S eval.instance.enabled=true`). While it is off, each stage only has to say so, and
importing torch and torchvision's detection models (about 6 s per process on a 2-core CPU) for
that would cost the default pipeline half a minute. This module reads params and the init's card
alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eval.config import EvalConfig, load_eval_config, load_run_params
from eval.inits import Init, resolve_init
from segloc.atomic import atomic_dir, write_json
from segloc.params import to_dict

log = logging.getLogger(__name__)

TASK = "instance"


def run_config(cfg: EvalConfig, init: Init) -> dict[str, Any]:
    """The run's config.json: task, resolved eval section and init."""
    return {"task": TASK, "eval": to_dict(cfg), "init": init.describe()}


def write_disabled(out: str | Path, cfg: EvalConfig, init: Init) -> dict[str, Any]:
    """A stub run, so a pipeline stage for instance transfer stays cheap until switched on."""
    log.warning("eval.instance.enabled is false: nothing fine-tuned (set it true to run)")
    metrics = {"task": TASK, "enabled": False, "init": init.label, "repeats": 0, "splits": {}}
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "config.json", run_config(cfg, init))
    return metrics


def stub_if_disabled(
    init: str, out: str | Path, params: str | Path | None, overrides: Iterable[str]
) -> bool:
    """Write the stub run and return True when the task is off; False when it is on.

    Under torchrun only rank 0 writes (RANK as torchrun sets it), as rank 0 writes every run.
    """
    cfg = load_eval_config(load_run_params(params, overrides))
    if cfg.instance.enabled:
        return False
    spec = resolve_init(init)
    if int(os.environ.get("RANK", "0")) == 0:
        write_disabled(out, cfg, spec)
    return True
