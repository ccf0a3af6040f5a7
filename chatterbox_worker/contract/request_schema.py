"""The job contract as data: one typed request model per operation.

Every field the deployed worker accepted is accepted here, with the same defaults.
A rejected job becomes a :class:`JobError` naming the field and the rule it broke.
Which operation takes which model is the operation registry's business (``operations``).
"""
from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chatterbox_worker.contract.errors import JobError
from chatterbox_worker.contract.limits import (
    LIBRARY_MAX_NEW_TOKENS,
    MAX_DESCRIPTION_CHARS,
    MAX_GENDER_CHARS,
    MAX_NAME_CHARS,
    MAX_SEED,
    MAX_TEXT_CHARS,
    MODEL_VARIANTS,
    OUTPUT_FORMATS,
)
from chatterbox_worker.models.registry import MULTILINGUAL, VARIANTS
from chatterbox_worker.pipeline.pause_tags import check_speakable

DEFAULT_SAMPLE_TEXT = "Hello! This is a sample of my cloned voice, ready for text to speech."
# Clients of the old worker echo back "none" for a voice they did not set.
_ABSENT = {"", "none", "null"}

OutputFormat = Literal[OUTPUT_FORMATS]
ModelVariant = Literal[MODEL_VARIANTS]
Exaggeration = Annotated[float, Field(ge=0.0, le=2.0)]
CfgWeight = Annotated[float, Field(ge=0.0, le=3.0)]
Temperature = Annotated[float, Field(gt=0.0, le=5.0)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
MaxNewTokens = Annotated[int, Field(ge=1, le=LIBRARY_MAX_NEW_TOKENS)]
OutputSampleRate = Annotated[int, Field(ge=8000, le=48000)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
VoiceName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS)]
Gender = Annotated[str, Field(min_length=1, max_length=MAX_GENDER_CHARS)]


# The multilingual model's languages (chatterbox.mtl_tts.SUPPORTED_LANGUAGES, which the model
# registry copies so that validation needs no torch).
SUPPORTED_LANGUAGE_IDS = VARIANTS[MULTILINGUAL].languages
DEFAULT_LANGUAGE_ID = "en"


class _Request(BaseModel):
    # Strict types: "0.5" for a float or 1 for a bool is a client bug worth reporting.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    # Voice fields where "none" (or "") means "no voice given", as old clients send it.
    _optional_voice_fields: ClassVar[tuple[str, ...]] = ("voice_id", "voice_name")

    @model_validator(mode="before")
    @classmethod
    def _drop_absent_voices(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in cls._optional_voice_fields:
                value = data.get(key)
                if isinstance(value, str) and value.strip().lower() in _ABSENT:
                    data.pop(key)
        return data


def _only_one(request: BaseModel, fields: tuple[str, ...], *, required: bool) -> None:
    given = [f for f in fields if getattr(request, f) is not None]
    if len(given) > 1:
        raise ValueError(f"give only one of {', '.join(fields)} (got {', '.join(given)})")
    if required and not given:
        raise ValueError(f"one of {', '.join(fields)} is required")


class _Generation(_Request):
    """Sampling knobs shared by every operation that generates speech."""

    temperature: Temperature = 0.8
    seed: Seed | None = None
    max_new_tokens: MaxNewTokens | None = None
    repetition_penalty: Annotated[float, Field(ge=1.0, le=3.0)] = 1.2
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    output_format: OutputFormat = "wav"
    sample_rate: OutputSampleRate | None = None
    audio_normalization: Literal["peak", "rms"] | None = None
    model: ModelVariant = "standard"
    language_id: Annotated[str, Field(min_length=2, max_length=8)] | None = None
    cache: bool = True

    @model_validator(mode="after")
    def _check_language(self) -> _Generation:
        if self.language_id is None:
            return self
        if self.model != MULTILINGUAL:
            raise ValueError("language_id is only for model 'multilingual'")
        if self.language_id.lower() not in SUPPORTED_LANGUAGE_IDS:
            raise ValueError(f"language_id {self.language_id!r} is not supported; "
                             f"supported: {', '.join(SUPPORTED_LANGUAGE_IDS)}")
        return self

    @property
    def effective_language_id(self) -> str | None:
        if self.model != MULTILINGUAL:
            return None
        return (self.language_id or DEFAULT_LANGUAGE_ID).lower()


class TTSRequest(_Generation):
    operation: Literal["tts"] = "tts"
    mode: Literal["basic", "streaming", "streaming_voice_cloning"] = "basic"
    text: Text
    voice_id: str | None = None
    voice_name: VoiceName | None = None
    reference_audio: str | None = None
    max_reference_duration_sec: Annotated[float, Field(gt=0.0, le=60.0)] = 30.0
    exaggeration: Exaggeration | None = None
    cfg_weight: CfgWeight | None = None
    cfg: CfgWeight | None = None
    chunk_size: Annotated[int, Field(ge=1, le=LIBRARY_MAX_NEW_TOKENS)] | None = None

    _check_text = field_validator("text")(check_speakable)

    @model_validator(mode="after")
    def _check(self) -> TTSRequest:
        _only_one(self, ("voice_id", "voice_name", "reference_audio"),
                  required=self.mode == "streaming_voice_cloning")
        if self.cfg is not None and self.cfg_weight is not None and self.cfg != self.cfg_weight:
            raise ValueError("cfg is an alias of cfg_weight; give one, or the same value")
        if not self.text.strip():
            raise ValueError("text must not be blank")
        return self

    @property
    def voice_cloning_mode(self) -> bool:
        return self.mode == "streaming_voice_cloning"

    @property
    def effective_exaggeration(self) -> float:
        if self.exaggeration is not None:
            return self.exaggeration
        return 0.7 if self.voice_cloning_mode else 0.5

    @property
    def effective_cfg_weight(self) -> float:
        for value in (self.cfg_weight, self.cfg):
            if value is not None:
                return value
        return 0.3 if self.voice_cloning_mode else 0.5

    @property
    def effective_chunk_size(self) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return 25 if self.voice_cloning_mode else 50


def _savable_name(name: str | None) -> str | None:
    if name is not None and name.strip().lower() in _ABSENT:
        raise ValueError(f"{name!r} cannot name a voice: other jobs read it as 'no voice'")
    return name


class VoiceCloningRequest(_Generation):
    _optional_voice_fields = ()  # voice_name names the voice to save
    operation: Literal["voice_cloning"]
    reference_audio: str
    voice_name: VoiceName | None = None
    voice_description: Description = ""
    gender: Gender = "unknown"
    save_to_library: bool = True
    text: Text = DEFAULT_SAMPLE_TEXT
    exaggeration: Exaggeration = 0.5
    cfg_weight: CfgWeight | None = None
    cfg: CfgWeight | None = None

    _check_name = field_validator("voice_name")(_savable_name)
    _check_text = field_validator("text")(check_speakable)

    @model_validator(mode="after")
    def _check(self) -> VoiceCloningRequest:
        if self.save_to_library and self.voice_name is None:
            raise ValueError("voice_name is required when save_to_library is true")
        return self

    @property
    def effective_cfg_weight(self) -> float:
        return next((v for v in (self.cfg_weight, self.cfg) if v is not None), 0.5)


class UploadVoiceRequest(_Request):
    _optional_voice_fields = ()  # voice_name names the voice to save
    operation: Literal["upload_voice"]
    voice_name: VoiceName
    reference_audio: str
    voice_description: Description = ""
    gender: Gender = "unknown"

    _check_name = field_validator("voice_name")(_savable_name)


class ListVoicesRequest(_Request):
    operation: Literal["list_local_voices", "list_voices"]


class DeleteVoiceRequest(_Request):
    operation: Literal["delete_voice"]
    voice_id: str | None = None
    voice_name: VoiceName | None = None

    @model_validator(mode="after")
    def _check(self) -> DeleteVoiceRequest:
        _only_one(self, ("voice_id", "voice_name"), required=True)
        return self


class SearchVoicesRequest(_Request):
    operation: Literal["search_local_voices"]
    query: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    gender: Annotated[str, Field(max_length=MAX_GENDER_CHARS)] | None = None


class _ConversionRequest(_Request):
    """The fields both voice-changing operations share: the source clip and the output."""
    input_audio: str
    voice_name: VoiceName | None = None
    voice_id: str | None = None
    no_watermark: bool = False
    output_format: OutputFormat = "wav"
    sample_rate: OutputSampleRate | None = None
    seed: Seed | None = None
    cache: bool = True


class VoiceConversionRequest(_ConversionRequest):
    operation: Literal["voice_conversion"]
    target_speaker: str | None = None

    @model_validator(mode="after")
    def _check(self) -> VoiceConversionRequest:
        _only_one(self, ("target_speaker", "voice_name", "voice_id"), required=True)
        return self


class VoiceTransferRequest(_ConversionRequest):
    operation: Literal["voice_transfer"]
    transfer_mode: Literal["embedding", "audio"] = "embedding"
    target_audio: str | None = None

    @model_validator(mode="after")
    def _check(self) -> VoiceTransferRequest:
        if self.transfer_mode == "embedding":
            if self.target_audio is not None:
                raise ValueError("target_audio is for transfer_mode 'audio'; give voice_name or voice_id")
            _only_one(self, ("voice_name", "voice_id"), required=True)
        else:
            if self.target_audio is None:
                raise ValueError("target_audio is required when transfer_mode is 'audio'")
            for name in ("voice_name", "voice_id"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is for transfer_mode 'embedding'; transfer_mode 'audio' takes "
                                     "target_audio")
        return self


def _field(error: dict, model: type[BaseModel]) -> str:
    """The field an error is about; a whole-model rule names the first field it mentions."""
    if error["loc"]:
        return ".".join(str(part) for part in error["loc"])
    message = error["msg"]
    mentioned = [(message.find(name), name) for name in model.model_fields if re.search(rf"\b{name}\b", message)]
    return min(mentioned)[1] if mentioned else "input"


def _describe(error: dict, model: type[BaseModel]) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field (not part of this operation's contract)"
    return f"{_field(error, model)}: {message}"


def validate_request(model: type[BaseModel], raw: dict[str, Any], *,
                     reject_unknown: bool = True) -> tuple[BaseModel, list[str]]:
    """``raw`` as ``model``; returns the request and warnings for fields it ignored.

    Every rule a job breaks is reported; the error's field is the first one's.
    """
    data, warnings = dict(raw), []
    if not reject_unknown:
        for name in sorted(set(data) - set(model.model_fields)):
            data.pop(name)
            warnings.append(f"{name}: unknown field ignored")
    try:
        return model.model_validate(data), warnings
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        field = _field(errors[0], model)
        message = "; ".join(_describe(e, model) for e in errors)
        raise JobError(field, message.removeprefix(f"{field}: ")) from None
