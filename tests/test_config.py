"""Config schema: defaults, types, key paths in messages, CLI exit codes."""
import subprocess
import sys
import time

import pytest
import yaml

from brainalign.config import load_config, parse_config
from brainalign.errors import ConfigError


def _write(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_demo_config_validates(repo_root):
    cfg = load_config(repo_root / "configs" / "demo.yaml")
    assert cfg.feature_sets == ["joint", "no_vision", "no_language", "crossmodal"]
    assert cfg.data.bold.tr == 1.49
    assert cfg.pipeline[0] == "simulate"
    assert "crossmodal" in cfg.text


@pytest.mark.parametrize("data, message", [
    ({"fit": {"alphass": [1]}}, "fit.alphass: unknown key"),
    ({"fit": {"alphas": "ten"}}, "fit.alphas: expected a list"),
    ({"fit": {"alphas": [1, "x"]}}, "fit.alphas[1]: expected a number, got 'x'"),
    ({"fit": {"alphas": [1, -2]}}, "fit.alphas: needs one or more positive values"),
    ({"fit": {"backend": "jax"}}, "fit.backend: expected one of"),
    ({"model": {"conditions": ["joint", "no_smell"]}}, "model.conditions[1]: unknown condition 'no_smell'"),
    ({"model": {"batch_size": 1.5}}, "model.batch_size: expected an integer, got 1.5"),
    ({"align": {"zscore": "yes"}}, "align.zscore: expected true/false"),
    ({"align": {"residuals": [{"name": "r", "target": "joint", "predictors": ["no_audio"]}]}},
     "align.residuals[0].predictors[0]: 'no_audio' is not in model.conditions"),
    ({"stats": {"contrasts": [{"name": "c", "a": "joint", "b": "nope"}]}}, "stats.contrasts[0].b: 'nope'"),
    ({"data": {"episodes": ["a", "b"]}}, "data.episodes: nested cross-validation by runs needs at least 3"),
    ({"pipeline": ["extract", "dance"]}, "pipeline[1]: unknown stage 'dance'"),
    ({"data": {"bold": {"tr": 0}}}, "data.bold.tr: must be positive"),
    ({"data": {"bold": 5}}, "data.bold: expected a mapping"),
    ({"model": {"variants": [{"name": "ft/1", "checkpoint": "x.pt"}]}}, "model.variants[0].name: needs letters"),
    ({"model": {"variants": [{"name": "ft"}]}}, "model.variants[0].checkpoint: needs a checkpoint path"),
    ({"stats": {"contrasts": [{"name": "c", "a": "joint@ft"}]}}, "stats.contrasts[0].a: 'joint@ft'"),
])
def test_bad_config_names_key(data, message):
    with pytest.raises(ConfigError) as e:
        parse_config(data, source="x.yaml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("config x.yaml: ")


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    p = _write(tmp_path, "fit: [unclosed\n")
    with pytest.raises(ConfigError, match=r"line \d+: not valid YAML"):
        load_config(p)
    p = _write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


def test_yaml_is_safe_loaded(tmp_path):
    p = _write(tmp_path, "name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_overrides(tmp_path):
    p = _write(tmp_path, {"name": "x"})
    cfg = load_config(p, {"fit.backend": "torch", "fit.alphas": [1, 2]})
    assert cfg.fit.backend == "torch" and cfg.fit.alphas == [1.0, 2.0]
    assert "torch" in cfg.text


def test_cli_exit_codes(tmp_path, repo_root):
    p = _write(tmp_path, {"fit": {"nope": 1}})
    out = subprocess.run([sys.executable, str(repo_root / "bin" / "brainalign"), "validate", str(p)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "fit.nope: unknown key" in out.stderr
    assert "Traceback" not in out.stderr
    ok = subprocess.run([sys.executable, str(repo_root / "bin" / "brainalign"), "validate",
                         str(repo_root / "configs" / "demo.yaml")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    helptext = subprocess.run([sys.executable, str(repo_root / "bin" / "brainalign"), "--help"],
                              capture_output=True, text=True).stdout
    for verb in ("simulate", "extract", "align", "fit", "stats", "report", "run"):
        assert f"  {verb}" in helptext


def test_variants_make_feature_sets_for_the_fine_tuning_contrast():
    cfg = parse_config({"model": {"conditions": ["joint", "no_vision"],
                                  "variants": [{"name": "ft", "checkpoint": "results/ft/model.pt"}]},
                        "align": {"residuals": [{"name": "r_ft", "target": "joint@ft", "predictors": ["no_vision@ft"]}]},
                        "stats": {"contrasts": [{"name": "ft_vs_pre", "a": "joint@ft", "b": "joint"}]}})
    assert cfg.feature_sets == ["joint", "no_vision", "joint@ft", "no_vision@ft", "r_ft"]


def _laughs(levels, width=9):
    """The billion-laughs document: level i is a list of ``width`` aliases of level i-1 (width**levels values)."""
    lines = ['name: &l0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    lines.append(f"output: *l{levels}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [6, 9])
def test_alias_expansion_is_bounded_and_the_error_is_short(tmp_path, levels):
    """The campaign's 2.9 KB billion-laughs config: 9**6 = 531441 values gave a 312 MB one-line error; 9**9
    ran for minutes and died of a MemoryError. Both are refused at load, in one short line, at once."""
    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs(levels))
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "brainalign", "validate", str(path)], capture_output=True, text=True,
                       timeout=120)
    assert time.monotonic() - t0 < 60
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 500, lines[0][:1000]
    assert f"config {path}: line " in lines[0]
    assert "not valid YAML (its aliases expand to more than 100000 values" in lines[0]


def test_ordinary_anchors_still_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: anchors\noutput: out\nfit: &f {alphas: [1.0, 10.0]}\nstats: {q: 0.05}\n")
    assert load_config(path).fit.alphas == [1.0, 10.0]


def test_self_referencing_alias_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: &a [*a]\n")
    with pytest.raises(ConfigError, match="an alias refers to a node that contains it"):
        load_config(path)


def test_a_long_value_gives_a_short_message(tmp_path):
    """No error message is longer than a few hundred characters, whatever the value it quotes."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": ["lol"] * 5000, "output": "o"}))
    p = subprocess.run([sys.executable, "-m", "brainalign", "validate", str(path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2
    (line,) = p.stderr.strip().splitlines()
    assert len(line) <= 600 and "name: expected" in line and "more characters)" in line
