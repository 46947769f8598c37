"""Every config error path gives a one-line error naming the dotted key."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neox_acodm.config import ConfigError, load_config, parse_config
from neox_acodm.mixers import requirements

BASE = {"domains": [{"name": "a", "weight": 1.0}, {"name": "b", "weight": 2.0}]}


def with_(**over):
    return {**BASE, **over}


CASES = [
    (with_(agnet={}), "acodm.agnet: unknown key; did you mean 'agent'?"),
    (with_(agent={"gama": 0.9}), "acodm.agent.gama: unknown key; did you mean 'gamma'?"),
    (with_(agent={"gamma": 1.5}), "acodm.agent.gamma: must be in [0, 1), got 1.5"),
    (with_(agent={"gamma": "high"}), "acodm.agent.gamma: expected a number, got 'high'"),
    (with_(agent={"batch_size": 3.5}), "acodm.agent.batch_size: expected an integer"),
    (with_(agent={"batch_size": 0}), "acodm.agent.batch_size: must be in [1, inf)"),
    (with_(mixer="acdom"), "acodm.mixer: got 'acdom'; did you mean 'acodm'?"),
    (with_(reward={"mode": "papers"}), "acodm.reward.mode: got 'papers'; did you mean 'paper'?"),
    (with_(reward={"importance_correction": "yes"}), "acodm.reward.importance_correction: expected true or false"),
    (with_(reward={"params": {"layers": "every-other"}}), "acodm.reward.params.layers:"),
    (with_(reward={"params": {"layers": []}}), "acodm.reward.params.layers: must select at least one"),
    (with_(reward={"params": {"module": "mlp(["}}), "acodm.reward.params.module: invalid regular expression"),
    (with_(reward={"params": {"modul": "x"}}), "acodm.reward.params.modul: unknown key; did you mean 'module'?"),
    (with_(state={"normalize": "minmax"}), "acodm.state.normalize: got 'minmax'"),
    (with_(sampling={"min_weight": 0.6}), "acodm.sampling.min_weight: 0.6 x 2 domains exceeds 1"),
    (with_(sampling={"max_weight": 0.3}), "acodm.sampling.max_weight: 0.3 x 2 domains is below 1"),
    (with_(sampling={"min_weight": 0.5, "max_weight": 0.5}), "acodm.sampling.min_weight: must be below max_weight"),
    (with_(proxy={"role": "target"}), "acodm.proxy.policy_path: required when proxy.role is 'target'"),
    (
        with_(mixer="odm", proxy={"role": "source", "policy_path": "p.pt"}),
        "acodm.proxy.role: proxy mode needs mixer 'acodm'",
    ),
    (with_(total_steps=0), "acodm.total_steps: must be in [1, inf)"),
    ({"domains": []}, "acodm.domains: at least one domain is required"),
    ({}, "acodm.domains: required key is missing"),
    ({"domains": "a,b"}, "acodm.domains: domain list file 'a,b' not found"),
    ({"domains": [{"name": "a"}, {"name": "a"}]}, "acodm.domains[1].name: duplicate domain name 'a'"),
    ({"domains": [{"weight": 1.0}]}, "acodm.domains[0].name: required key is missing"),
    ({"domains": [{"name": "a", "weight": -1}]}, "acodm.domains[0].weight: must be in (0, inf)"),
    ({"domains": [{"name": "a", "wieght": 1}]}, "acodm.domains[0].wieght: unknown key; did you mean 'weight'?"),
    ({"domains": [{"name": "a"}], "initial_weights": "config"}, "acodm.initial_weights: 'config' needs a weight"),
    ({"domains": [{"name": "a"}], "agent": [1, 2]}, "acodm.agent: expected a mapping"),
    ({"domains": [{"name": "a"}], "seed": True}, "acodm.seed: expected an integer"),
    ({"domains": [{"name": "a"}], "reward": {"clip": float("nan")}}, "acodm.reward.clip: must be finite"),
]


@pytest.mark.parametrize("block,expected", CASES, ids=[c[1].split(":")[0] for c in CASES])
def test_error_names_key(block, expected):
    with pytest.raises(ConfigError) as e:
        parse_config(block)
    msg = str(e.value)
    assert msg.startswith(expected), msg
    assert "\n" not in msg


def test_defaults_and_types():
    cfg = parse_config(
        {"domains": [{"name": "x", "train_path": "data/x"}, {"name": "y"}], "reward": {"params": {"layers": [-1, -3]}}}
    )
    assert cfg.num_domains == 2 and cfg.domain_names == ("x", "y")
    assert cfg.reward.params.layers == (-1, -3)
    assert cfg.agent.gamma == 0.95 and cfg.agent.tau == 0.001
    assert cfg.state.norm_params.layers == "first_and_even"
    assert requirements(cfg).gram and requirements(cfg).norms
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # frozen


def test_round_trip_to_dict():
    cfg = parse_config({**BASE, "agent": {"gamma": 0.5}})
    assert parse_config(cfg.to_dict()) == cfg


def test_load_config_from_neox_yaml(tmp_path):
    f = tmp_path / "neox.yml"
    f.write_text("train_iters: 10\nacodm:\n  mixer: odm\n  domains:\n    - {name: a}\n    - {name: b}\n")
    assert load_config(f).mixer == "odm"
    f.write_text("train_iters: 10\n")
    with pytest.raises(ConfigError, match="no 'acodm:' block"):
        load_config(f)
    f.write_text("acodm: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yml")


def test_cli_check_config(tmp_path):
    good = tmp_path / "good.yml"
    good.write_text("acodm:\n  domains: [{name: a, weight: 1}, {name: b, weight: 3}]\n")
    bad = tmp_path / "bad.yml"
    bad.write_text("acodm:\n  domains: [{name: a}]\n  agent: {gama: 0.9}\n")
    cmd = [sys.executable, "-m", "neox_acodm.tools.cli", "check-config"]
    ok = subprocess.run(cmd + [str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and '"mixer": "acodm"' in ok.stdout
    err = subprocess.run(cmd + [str(bad)], capture_output=True, text=True)
    assert err.returncode == 2
    assert err.stderr.strip() == (
        "error: acodm.agent.gama: unknown key; did you mean 'gamma'? (valid: " + err.stderr.split("(valid: ")[1].strip()
    )
    ref = subprocess.run(cmd + ["--reference"], capture_output=True, text=True)
    assert "`acodm.reward.mode`" in ref.stdout and "`acodm.agent.tau`" in ref.stdout


def test_docs_config_reference_is_current():
    from pathlib import Path

    from neox_acodm.config import config_reference

    page = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert config_reference() in page, (
        "docs/config.md is stale: regenerate it with `neox-acodm check-config --reference`"
    )


def test_shipped_configs_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.rglob("*.yml"))
    assert len(files) >= 5
    for f in files:
        cfg = load_config(f)
        assert cfg.num_domains >= 3
    pile = load_config(root / "acodm" / "pythia-1b.yml")
    assert pile.num_domains == 22 and abs(sum(d.weight for d in pile.domains) - 1.0) < 1e-3
    src, tgt = (
        load_config(root / "acodm" / "proxy-410m-source.yml"),
        load_config(root / "acodm" / "proxy-1b-target.yml"),
    )
    assert (src.proxy.role, tgt.proxy.role) == ("source", "target")
    assert src.proxy.policy_path == tgt.proxy.policy_path
    assert src.state.norm_params == tgt.state.norm_params


def test_domains_can_come_from_one_shared_file(tmp_path):
    from neox_acodm.domain_files import DOMAIN_LISTS

    root = Path(__file__).resolve().parents[1] / "configs" / "acodm"
    cfgs = [load_config(f) for f in sorted(root.glob("*.yml"))]
    assert len(cfgs) == 6 and all(c.domains == cfgs[0].domains and c.num_domains == 22 for c in cfgs)
    assert all(yaml.safe_load(f.read_text())["acodm"]["domains"] == "pile-22.yml" for f in root.glob("*.yml"))
    assert (DOMAIN_LISTS / "pile-22.yml").is_file()
    (tmp_path / "mine.yml").write_text("- {name: a}\n- {name: b}\n")  # a bare list, next to the block
    (tmp_path / "run.yml").write_text("acodm:\n  domains: mine.yml\n  mixer: static\n")
    assert load_config(tmp_path / "run.yml").domain_names == ("a", "b")
    (tmp_path / "bad.yml").write_text("acodm:\n  domains: missing.yml\n")
    with pytest.raises(ConfigError, match=r"acodm\.domains: domain list file 'missing.yml' not found"):
        load_config(tmp_path / "bad.yml")
    (tmp_path / "scalar.yml").write_text("3\n")
    with pytest.raises(ConfigError, match=r"must hold a list of domains"):
        parse_config({"domains": str(tmp_path / "scalar.yml")})
