"""The model variant registry and the generation options: complete, consistent, torch-free."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from chatterbox_worker.contract.limits import MODEL_VARIANTS
from chatterbox_worker.contract.request_schema import SUPPORTED_LANGUAGE_IDS
from chatterbox_worker.models.options import GenerationOptions
from chatterbox_worker.models.registry import (
    MULTILINGUAL,
    STANDARD,
    TURBO,
    VARIANTS,
    VariantSpec,
    variant_spec,
)
from chatterbox_worker.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_has_every_field(name):
    spec = VARIANTS[name]
    assert spec.name == name
    for field in dataclasses.fields(VariantSpec):
        assert getattr(spec, field.name) is not None, field.name
    module, sep, cls = spec.model_class_path.partition(":")
    assert sep and module and cls.isidentifier()
    assert spec.recipe == name  # the engine's RECIPES are keyed by variant name
    assert isinstance(spec.defaults, GenerationOptions)
    assert spec.checkpoint_setting in Settings.model_fields
    assert spec.checkpoint_env == spec.checkpoint_setting.upper()
    assert spec.min_prompt_seconds >= 0.0
    assert spec.languages and all(lang == lang.lower() for lang in spec.languages)


def test_the_contract_and_the_settings_read_the_registry():
    assert MODEL_VARIANTS == tuple(VARIANTS) == (STANDARD, MULTILINGUAL, TURBO)
    assert SUPPORTED_LANGUAGE_IDS == VARIANTS[MULTILINGUAL].languages
    assert len(SUPPORTED_LANGUAGE_IDS) == 23 and "en" in SUPPORTED_LANGUAGE_IDS
    assert len({spec.checkpoint_setting for spec in VARIANTS.values()}) == len(VARIANTS)


def test_each_variant_reads_its_own_checkpoint_variable(monkeypatch, tmp_path):
    for name, spec in VARIANTS.items():
        monkeypatch.setenv(spec.checkpoint_env, str(tmp_path / name))
    settings = get_settings()
    for name in VARIANTS:
        assert settings.checkpoint_dir(name) == tmp_path / name


def test_the_variants_defaults_are_their_library_classes():
    assert VARIANTS[STANDARD].defaults == GenerationOptions()
    assert VARIANTS[MULTILINGUAL].defaults.repetition_penalty == 2.0
    turbo = VARIANTS[TURBO].defaults
    assert (turbo.top_k, turbo.top_p, turbo.min_p, turbo.cfg_weight, turbo.exaggeration) == (1000, 0.95, 0.0, 0.0, 0.0)
    assert VARIANTS[TURBO].min_prompt_seconds == 5.0
    assert VARIANTS[TURBO].languages == VARIANTS[STANDARD].languages == ("en",)


def test_unknown_variants_are_named_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown model variant 'tiny'; choose from standard, multilingual, turbo"):
        variant_spec("tiny")


def test_options_are_frozen_and_changed_by_copy():
    base = VARIANTS[TURBO].options(seed=3)
    assert base.seed == 3 and base.top_k == 1000  # the variant's defaults fill the rest
    changed = base.but(language_id="en", watermark=False)
    assert (changed.seed, changed.language_id, changed.watermark) == (3, "en", False)
    assert base.watermark is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.seed = 4  # type: ignore[misc]


@pytest.mark.parametrize("changes, message", [
    ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
    ({"top_k": -1}, "top_k must not be negative"),
])
def test_options_refuse_impossible_values(changes, message):
    with pytest.raises(ValueError, match=message):
        GenerationOptions(**changes)


def test_reading_the_registry_imports_no_torch():
    code = ("import sys, chatterbox_worker.models.registry, chatterbox_worker.settings, "
            "chatterbox_worker.pipeline.speech; "
            "print(sorted({'torch', 'chatterbox'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
