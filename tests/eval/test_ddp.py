import json

import pytest
import torch

from eval.data import load_sets, resolve_data
from segloc.dist import DistEnv
from tests.eval import ddp_worker
from tests.launch import torchrun


@pytest.mark.ddp
def test_two_process_scores_equal_one_process(pidray, tmp_path):
    torchrun(["-m", "tests.eval.ddp_worker", str(pidray), str(tmp_path / "ddp")], cwd=tmp_path)
    ddp = json.loads((tmp_path / "ddp" / "scores.json").read_text())
    assert ddp["world"] == 2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = ddp_worker.score(
            load_sets(resolve_data({}, pidray)),
            DistEnv(rank=0, world=1, local_world=1, device=torch.device("cpu")),
        )
    finally:
        torch.set_num_threads(threads)
    assert ddp["matrices"] == single
    # A 2-process fine-tune writes the same outputs, once.
    config = json.loads((tmp_path / "ddp" / "run" / "config.json").read_text())
    assert config["world_size"] == 2
    assert config["protocol"] == "finetune"
    scores = json.loads((tmp_path / "ddp" / "run" / "scores.json").read_text())
    assert scores["splits"]["overall"]["mIoU"]["mean"] is not None
    assert scores["repeats"] == 1 and scores["seeds"] == [0]
    headline = json.loads((tmp_path / "ddp" / "run" / "metrics.json").read_text())
    assert headline["miou"]["overall"] == round(
        100 * scores["splits"]["overall"]["mIoU"]["mean"], 2
    )
