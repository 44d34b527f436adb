import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from eval.inits import resolve_init
from eval.model import _dilate, build_model, load_init
from segloc.dense import fuse_stride8
from segloc.errors import UserError


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _export(folder, arch="resnet18", seed=1, json_arch=None, method="segloc"):
    """An exported backbone as pretraining writes it: state_dict minus fc, plus its card."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # test-only: the weights just need to differ from the model's init
    net = getattr(torchvision.models, arch)()
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, folder / "backbone.pt")
    card = {"arch": json_arch or arch, "method": method, "steps": 10, "config": {}}
    (folder / "backbone.json").write_text(json.dumps(card))
    return state


def test_exported_backbone_loads_strictly(tmp_path):
    state = _export(tmp_path / "run")
    init = resolve_init(str(tmp_path / "run"))  # a run folder resolves to its backbone.pt
    assert (init.kind, init.label, init.arch) == ("backbone", "segloc", "resnet18")
    model = build_model("resnet18", "fcn", 13, 16, _gen())
    load_init(model, init, "resnet18")
    loaded = model.backbone.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_random_init_differs_from_loaded_and_is_seeded(tmp_path):
    _export(tmp_path / "run")
    a, b = (
        build_model("resnet18", "fcn", 5, 32, _gen(0)),
        build_model("resnet18", "fcn", 5, 32, _gen(0)),
    )
    c = build_model("resnet18", "fcn", 5, 32, _gen(1))
    key = "layer1.0.conv1.weight"
    assert torch.equal(a.backbone.state_dict()[key], b.backbone.state_dict()[key])
    assert not torch.equal(a.backbone.state_dict()[key], c.backbone.state_dict()[key])
    load_init(b, resolve_init(str(tmp_path / "run" / "backbone.pt")), "resnet18")
    assert not torch.equal(a.backbone.state_dict()[key], b.backbone.state_dict()[key])
    # The head is not part of the backbone: a loaded init keeps the seeded head.
    head_a, head_b = a.classifier.parameters(), b.classifier.parameters()
    assert all(torch.equal(x, y) for x, y in zip(head_a, head_b, strict=True))


@pytest.mark.parametrize(
    ("head", "stride"),
    [(h, s) for h in ("fcn", "deeplabv3") for s in (8, 16, 32)] + [("fused", 16)],
)
def test_logits_come_back_at_input_size(head, stride):
    model = build_model("resnet18", head, 4, stride, _gen()).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 40, 56))["out"]
    assert out.shape == (2, 4, 40, 56)
    assert torch.isfinite(out).all()
    # Every parameter and buffer was materialised from the meta device and initialised.
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


def test_manual_dilation_matches_torchvision_for_bottleneck():
    ours = torchvision.models.resnet50()
    _dilate(ours, 8)
    ref = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])

    def layout(net):
        return [
            (n, m.stride, m.dilation, m.padding)
            for n, m in net.named_modules()
            if isinstance(m, nn.Conv2d)
        ]

    assert layout(ours) == layout(ref)


def test_backbone_of_another_architecture_is_refused(tmp_path):
    _export(tmp_path / "r50card", arch="resnet18", json_arch="resnet50")
    model = build_model("resnet18", "fcn", 3, 32, _gen())
    with pytest.raises(UserError, match="backbone is resnet50 but eval.arch is resnet18"):
        load_init(model, resolve_init(str(tmp_path / "r50card")), "resnet18")
    # Without a card, the weights themselves give it away.
    _export(tmp_path / "r34", arch="resnet34")
    (tmp_path / "r34" / "backbone.json").unlink()
    with pytest.raises(UserError, match="unexpected keys: layer1.2.conv1.weight"):
        load_init(model, resolve_init(str(tmp_path / "r34")), "resnet18")


def test_wrong_shapes_and_unexpected_keys_are_named(tmp_path):
    state = _export(tmp_path / "run")
    state["layer1.0.conv1.weight"] = torch.zeros(1)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "run" / "backbone.pt")
    model = build_model("resnet18", "fcn", 3, 32, _gen())
    with pytest.raises(UserError) as err:
        load_init(model, resolve_init(str(tmp_path / "run")), "resnet18")
    assert "unexpected keys: extra.weight" in str(err.value)
    assert "wrong shapes: layer1.0.conv1.weight (1,)" in str(err.value)


def test_imagenet_file_loads_with_its_classifier_dropped(tmp_path):
    torch.manual_seed(3)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")  # fc included
    init = resolve_init(f"imagenet:{tmp_path / 'r18.pth'}")
    model = build_model("resnet18", "fcn", 3, 32, _gen())
    load_init(model, init, "resnet18")
    assert init.kind == "imagenet"


def test_bad_init_specs_are_clear(tmp_path):
    with pytest.raises(UserError, match="never downloads"):
        resolve_init(f"imagenet:{tmp_path / 'resnet18.pth'}")
    with pytest.raises(UserError, match="expected 'random', 'imagenet:PATH' or an exported"):
        resolve_init(str(tmp_path / "nope"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "backbone.pt").write_bytes(b"not a checkpoint")
    model = build_model("resnet18", "fcn", 3, 32, _gen())
    with pytest.raises(UserError, match="cannot load weights"):
        load_init(model, resolve_init(str(tmp_path / "bad")), "resnet18")
    (tmp_path / "bad" / "backbone.json").write_text("{broken")
    with pytest.raises(UserError, match="cannot read backbone config"):
        resolve_init(str(tmp_path / "bad"))


def test_other_input_normalisation_is_warned_about(tmp_path, caplog):
    _export(tmp_path / "run")
    card = json.loads((tmp_path / "run" / "backbone.json").read_text())
    card["input"] = {"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.229, 0.224, 0.225]}}
    (tmp_path / "run" / "backbone.json").write_text(json.dumps(card))
    model = build_model("resnet18", "fcn", 3, 32, _gen())
    load_init(model, resolve_init(str(tmp_path / "run")), "resnet18")
    assert "pretraining normalised with mean=[0.5, 0.5, 0.5]" in caplog.text
    assert "std=" not in caplog.text  # only what differs


def test_fused_head_reads_the_probe_map_and_loads_an_exported_backbone(tmp_path):
    """The fused model's backbone has the ResNet's keys (an export loads as is), and its logits
    are a 1x1 conv of exactly the map the probe reads, upsampled to the input."""
    model = build_model("resnet18", "fused", 5, 16, _gen()).eval()
    state = _export(tmp_path / "run")
    load_init(model, resolve_init(str(tmp_path / "run")), "resnet18")
    for key, value in state.items():
        torch.testing.assert_close(model.backbone.state_dict()[key], value)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        maps = model.backbone(x)
        fused = fuse_stride8([maps["c3"], maps["c4"], maps["c5"]])
        expected = F.interpolate(model.classifier(fused), size=(48, 48), mode="bilinear")
        torch.testing.assert_close(model(x)["out"], expected)
    assert fused.shape[1] == 896  # resnet18: 128 + 256 + 512
    # The classifier starts small: every class near equal probability.
    assert model.classifier[0].weight.abs().max() < 0.1


def test_fused_head_is_as_wide_as_the_fused_map_of_a_bottleneck_resnet():
    model = build_model("resnet50", "fused", 3, 16, _gen())
    assert model.classifier[0].in_channels == 512 + 1024 + 2048
