import pytest

from eval.config import (
    EvalConfig,
    FinetuneConfig,
    MlpProbeConfig,
    ProbeConfig,
    Protocol,
    load_eval_config,
    parse_protocol,
)
from segloc.errors import UserError
from segloc.params import to_dict


@pytest.mark.parametrize(
    ("name", "kind", "fraction"),
    [
        ("probe", "probe", None),
        ("probe_mlp", "probe_mlp", None),
        ("finetune", "finetune", None),
        ("finetune_10pct", "finetune", 0.1),
        ("finetune_2.5pct", "finetune", 0.025),
        ("finetune_100pct", "finetune", 1.0),
    ],
)
def test_parse_protocol_accepts_the_read_outs(name, kind, fraction):
    protocol = parse_protocol(name)
    assert protocol == Protocol(name, kind, fraction)


@pytest.mark.parametrize(
    "name",
    [
        "linear",
        "Probe",
        "probe_mlp2",
        "finetune_10",
        "finetune_pct",
        "finetune_0pct",
        "finetune_101pct",
        "finetune_-5pct",
        "finetune_10pct ",
        "finetune_1e1pct",
        "",
    ],
)
def test_parse_protocol_rejects_others_in_one_line_naming_the_key(name):
    with pytest.raises(UserError) as err:
        parse_protocol(name, "eval.finetune_protocols[1]")
    message = err.value.message
    assert "\n" not in message
    assert message.startswith(f"params eval.finetune_protocols[1]: {name!r} is no protocol")
    assert "probe, probe_mlp, finetune or finetune_<N>pct" in message
    with pytest.raises(UserError, match=r"^params eval\.protocol: "):
        parse_protocol(name)


def test_eval_config_sections_and_their_checks():
    cfg = load_eval_config({})
    assert cfg == EvalConfig()
    assert isinstance(cfg.probe, ProbeConfig) and not hasattr(cfg.probe, "hidden")
    assert isinstance(cfg.probe_mlp, MlpProbeConfig) and cfg.probe_mlp.augment
    assert isinstance(cfg.finetune, FinetuneConfig)
    assert not hasattr(cfg.instance, "enabled")
    cfg = load_eval_config(
        {
            "eval": {
                "protocol": "finetune_5pct",
                "finetune_protocols": ["finetune_2.5pct"],
                "finetune": {"steps": 7, "scale_range": [1, 2]},
                "probe_mlp": {"hidden": 4, "augment": False},
            }
        }
    )
    assert cfg.finetune.steps == 7 and cfg.finetune.scale_range == (1.0, 2.0)
    assert cfg.probe_mlp == MlpProbeConfig(hidden=4, augment=False)
    assert to_dict(cfg)["finetune_protocols"] == ["finetune_2.5pct"]
    bad = {
        "eval.protocol": ({"protocol": "finetune_10"}, "is no protocol"),
        "eval.finetune_protocols[1]": (
            {"finetune_protocols": ["finetune", "probe_mlp"]},
            "not a fine-tuning protocol",
        ),
        "eval.finetune.steps": ({"finetune": {"steps": 0}}, "expected a positive number"),
        "eval.finetune.scale_range": ({"finetune": {"scale_range": [2, 1]}}, "low <= high"),
        "eval.finetune.batch_size": (
            {"finetune": {"head": "deeplabv3", "batch_size": 1}},
            "at least 2 images",
        ),
        "eval.probe.lr": ({"probe": {"lr": 0}}, "expected a positive number"),
        "eval.probe_mlp.weight_decay": ({"probe_mlp": {"weight_decay": -1}}, "zero or more"),
        "eval.probe_mlp.hidden": ({"probe_mlp": {"hidden": 0}}, "expected a positive number"),
        "eval.instance.repeats": ({"instance": {"repeats": 0}}, "expected a positive number"),
        "eval.instance.momentum": ({"instance": {"momentum": -0.1}}, "zero or more"),
        "eval.instance.enabled": ({"instance": {"enabled": True}}, "unknown key"),
        "eval.probe.hidden": ({"probe": {"hidden": 8}}, "unknown key"),
        "eval.steps": ({"steps": 40}, "unknown key"),
        "eval.threads": ({"threads": -1}, "zero or more"),
    }
    for key, (section, fragment) in bad.items():
        with pytest.raises(UserError) as err:
            load_eval_config({"eval": section})
        assert err.value.message.startswith(f"params {key}: "), err.value.message
        assert fragment in err.value.message
