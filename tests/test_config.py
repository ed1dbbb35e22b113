"""Config loading and validation: every bad input is a one-line ConfigError naming the field."""

from __future__ import annotations

import pytest
import yaml

from rayfl.aggregation import rule_names
from rayfl.config import (
    ExperimentConfig,
    dump_config,
    load_config,
    preset_names,
)
from rayfl.errors import ConfigError


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_round_trips(name):
    cfg = load_config(name)
    again = load_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_defaults_are_the_spec_paper_profile():
    cfg = load_config("wkafl")
    assert (cfg.data.num_clients, cfg.aggregation.k, cfg.client.batch_size) == (100, 10, 16)
    assert cfg.aggregation.lr == 0.05
    assert rule_names(cfg.aggregation.rules)[0] == "momentum_clip"
    assert cfg.aggregation.optimizer == "sgd"
    assert cfg.clock.kind == "virtual"


def test_extends_merges_and_replaces_the_rule_chain():
    cfg = load_config("kasync")
    assert rule_names(cfg.aggregation.rules) == ["mean", "weighted_sum", "constant_lr"]
    assert cfg.data.num_clients == 100  # inherited from wkafl


def test_overrides_are_typed():
    cfg = load_config(
        "tiny",
        [
            "aggregation.k=5",
            "clock.straggler_fraction=0.1",
            "model.hidden=[32, 16]",
            "data.shard_size=null",
            "aggregation.rules.similarity_select.beta=5",
        ],
    )
    assert cfg.aggregation.k == 5
    assert cfg.clock.straggler_fraction == 0.1
    assert cfg.model.hidden == (32, 16)
    assert cfg.aggregation.rules[3] == {"similarity_select": {"c_min": 0.3, "beta": 5}}
    assert isinstance(cfg.aggregation.lr, float)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data.num_clent=3"], "data.num_clent"),
        (["nonsense=1"], "nonsense"),
        (["data.num_clients=abc"], "data.num_clients"),
        (["data.num_clients=true"], "data.num_clients"),
        (["aggregation.k=200"], "aggregation.k=200 exceeds data.num_clients"),
        (["aggregation.lr=0"], "aggregation.lr"),
        (["aggregation.lr=-0.1"], "aggregation.lr"),
        (["data.dataset=imagenet"], "data.dataset"),
        (["data.partition=zipf"], "data.partition"),
        (["model.name=resnet"], "model.name"),
        (["clock.kind=sundial"], "clock.kind"),
        (["clock.straggler_fraction=2"], "clock.straggler_fraction"),
        (["aggregation.rules.nope.x=1"], "nope"),
        (
            ["aggregation.rules.similarity_select.beta=x"],
            "aggregation.rules.similarity_select.beta",
        ),
        (["aggregation.rules.similarity_select.gamma=1"], "similarity_select"),
        (["aggregation.rules.similarity_select.bta=1"], "did you mean 'beta'?"),
        (["aggregation.rules=[mean, staleness_weight]"], "did you mean 'staleness_weights'?"),
        (["aggregation.optimizer=adamw"], "aggregation.optimizer='adamw' is not a known"),
        (["aggregation.optimizer={sgd: {lr: 1}}"], "aggregation.optimizer.sgd.lr"),
        (["aggregation.rules=[weighted_sum, mean]"], "comes after"),
        (["client.num_gpus=-1"], "client.num_gpus"),
        (["data.samples_max=5"], "data.samples_max"),
        (["iterations=0"], "iterations"),
        (["seed"], "--set"),
        (["name=has space"], "name"),
    ],
)
def test_bad_overrides_name_the_field(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", overrides)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_unknown_rule_in_yaml(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("extends: tiny\naggregation:\n  rules:\n    median: {}\n")
    with pytest.raises(ConfigError, match="median"):
        load_config(str(path))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("- a\n- b\n", "not a mapping"),
        ("data: [1, 2]\n", "data must be a mapping"),
        ("data:\n  num_clients: [\n", "not valid YAML"),
        ("extends: no-such-preset\n", "no preset named"),
        ("iterations: 10\nbogus: 1\n", "bogus"),
    ],
)
def test_bad_files(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(str(path))


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="unreadable|not valid"):
        load_config(str(binary))


def test_extends_loop(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"extends: {b}\n")
    b.write_text(f"extends: {a}\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(str(a))


def test_unknown_preset_suggests_a_close_name():
    with pytest.raises(ConfigError, match="did you mean 'wkafl'"):
        load_config("wkafI")


def test_config_is_frozen():
    cfg = ExperimentConfig()
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]


def test_staleness_true_from_yaml_or_set_is_the_string():
    """YAML reads `true` as a bool; a Literal field whose choices include "true" takes it."""
    assert load_config("tiny", ["aggregation.staleness=true"]).aggregation.staleness == "true"
    assert load_config("tiny", ["aggregation.staleness=nominal"]).aggregation.staleness == "nominal"
    with pytest.raises(ConfigError, match="aggregation.staleness=False is not one of true"):
        load_config("tiny", ["aggregation.staleness=false"])
