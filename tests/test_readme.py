"""The README documents every config key and every verb (so the docs cannot drift from the schema)."""
import dataclasses
import typing

from brainalign import config
from brainalign.cli import VERBS


def _keys(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _keys(tp, key + ".")
        else:
            yield key


def test_readme_lists_every_config_key(repo_root):
    text = (repo_root / "README.md").read_text()
    def documented(k):
        section, _, leaf = k.rpartition(".")
        # grouped rows like `finetune.epochs` / `batch_size` document several keys of one section
        return f"`{k}`" in text or any(f"`{section}.{first}`" in text and f"`{leaf}`" in text
                                        for first in ("hidden", "epochs", "seed", "n_train", "bootstrap", "ceiling_floor",
                                                      "noise_ceiling_repeats", "permutation_layer", "fps"))
    missing = [k for k in _keys(config.Config) if not documented(k)]
    assert not missing, f"README lacks config keys: {missing}"


def test_readme_lists_every_verb(repo_root):
    text = (repo_root / "README.md").read_text()
    assert text.index("make demo") < text.index("## The pipeline")
    for verb in VERBS:
        assert f"brainalign {verb}" in text, verb
