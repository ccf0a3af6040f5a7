"""Chatterbox :class:`Conditionals` on disk without pickle: :class:`ConditionalsCodec`.

The conditionals cache (:mod:`conditionals.cache`) sizes, saves and loads its entries
through a codec; this is the one for the real models' tensors (safetensors).
"""
from __future__ import annotations

from pathlib import Path

import torch
from chatterbox.models.t3.modules.cond_enc import T3Cond
from chatterbox.tts import Conditionals
from safetensors import safe_open
from safetensors.torch import load_file, save_file

CONDITIONALS_FORMAT = "chatterbox-conditionals-v1"
# Derived per call by T3 from the prompt tokens; never cached or persisted.
_T3_DERIVED_FIELDS = ("cond_prompt_speech_emb",)


class ConditionalsCodec:
    """Sizes and stores :class:`Conditionals` without pickle (safetensors).

    Only the tensors that define a voice are kept: T3's derived prompt embedding is
    recomputed per call, and ``None`` fields are listed in the metadata.
    """

    def __init__(self, device: str):
        self.device = device

    @staticmethod
    def _tensors(conds: Conditionals) -> dict[str, torch.Tensor | None]:
        fields = {f"t3.{k}": v for k, v in vars(conds.t3).items() if k not in _T3_DERIVED_FIELDS}
        fields.update({f"gen.{k}": v for k, v in conds.gen.items()})
        return fields

    def nbytes(self, conds: Conditionals) -> int:
        return sum(
            v.numel() * v.element_size() for v in self._tensors(conds).values() if torch.is_tensor(v)
        )

    def save(self, conds: Conditionals, path: Path, metadata: dict[str, str]) -> None:
        fields = self._tensors(conds)
        tensors = {k: v.detach().cpu().contiguous() for k, v in fields.items() if torch.is_tensor(v)}
        nones = ",".join(k for k, v in fields.items() if v is None)
        save_file(tensors, str(path), metadata={**metadata, "format": CONDITIONALS_FORMAT, "none": nones})

    def load(self, path: Path, expected_metadata: dict[str, str]) -> Conditionals:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        expected = {**expected_metadata, "format": CONDITIONALS_FORMAT}
        mismatched = {k: metadata.get(k) for k, v in expected.items() if metadata.get(k) != v}
        if mismatched:
            raise ValueError(f"metadata does not match: {mismatched}")
        tensors = load_file(str(path), device="cpu")
        fields: dict[str, torch.Tensor | None] = dict(tensors)
        fields.update({k: None for k in metadata.get("none", "").split(",") if k})
        t3 = {k[3:]: v for k, v in fields.items() if k.startswith("t3.")}
        gen = {k[4:]: v for k, v in fields.items() if k.startswith("gen.")}
        if "speaker_emb" not in t3 or "prompt_feat" not in gen:
            raise ValueError("missing tensors")
        return Conditionals(T3Cond(**t3), gen).to(self.device)
