"""audio_io: decoding uploads, resampling, normalising, encoding results, joining chunks.

Two directions matter:

* in: whatever audio file a client sends (WAV, FLAC, OGG, MP3; mono or stereo; int or
  float; any rate; raw base64 or a data: URI) decodes to mono float32 at its own rate,
  and anything else is refused with a :class:`JobError` that names the job field;
* out: every output format is a file that a standard decoder reads back at the rate and
  duration the worker reports (``pcm_16`` is raw little-endian int16, no header).
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf

from chatterbox_worker.audio.codec import (
    CROSSFADE_MS,
    OPUS_RATES,
    PAUSE_MS,
    PEAK_TARGET,
    RMS_TARGET_DBFS,
    SILENCE_PEAK,
    DecodedAudio,
    audio_fingerprint,
    decode_audio_base64,
    encode_audio,
    encode_audio_base64,
    join_audio_chunks,
    normalize_audio,
    resample,
    trim_to_seconds,
)
from chatterbox_worker.contract.errors import JobError
from chatterbox_worker.contract.limits import OUTPUT_FORMATS
from chatterbox_worker.settings import Settings, mb_to_bytes
from chatterbox_worker.testing.audio_payloads import make_wav_b64

MAX_AUDIO_BASE64_BYTES = mb_to_bytes(Settings.model_fields["max_audio_base64_mb"].default)

FIELD = "target_speaker"  # any job field; errors must name the one they were given
SR = 24000
TONE_HZ = 440.0
AMPLITUDE = 0.5
SECONDS = 1.0
# Lossy codecs pad the stream (MP3 frames of 1152 samples and encoder delay, Vorbis and
# Opus pre-skip and whole Ogg pages). libsndfile trims that padding from the stream's
# metadata, but how exactly depends on the encoder and library version, so lossy
# durations are checked to within a few codec frames rather than to the sample.
LOSSY_DURATION_TOLERANCE_S = 0.05
LOSSY_FORMATS = ("mp3", "ogg", "opus")
LOSSLESS_FORMATS = ("wav", "flac")
OUTPUT_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
INPUT_RATES = (8000, 22050, 48000)
# One float32 rounding step is the most a lossless round trip may move a sample by.
PCM16_STEP = 1 / 32767
FLOAT_TOLERANCE = 1e-6
# soxr keeps a pure tone's frequency; a bin of the FFT of 1 s is 1 Hz wide.
FREQUENCY_TOLERANCE_HZ = 2.0


def tone(seconds: float = SECONDS, sr: int = SR, freq: float = TONE_HZ, amplitude: float = AMPLITUDE,
         phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def audio_file(samples: np.ndarray, sr: int, container: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format=container, subtype=subtype)
    return buf.getvalue()


def read_back(data: bytes) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(data), dtype="float32")


def dominant_frequency(wav: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav))
    return float(np.fft.rfftfreq(wav.size, 1 / sr)[spectrum.argmax()])


def max_jump(wav: np.ndarray) -> float:
    return float(np.abs(np.diff(wav)).max())


# -- decoding: what is accepted ----------------------------------------------------------

# (container, subtype) for every kind of file a client may send; Opus only exists at its
# own rates, so it gets one of those.
INPUT_KINDS = {
    "wav-int16": ("WAV", "PCM_16"),
    "wav-int24": ("WAV", "PCM_24"),
    "wav-float": ("WAV", "FLOAT"),
    "flac": ("FLAC", "PCM_16"),
    "ogg-vorbis": ("OGG", "VORBIS"),
    "ogg-opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
LOSSY_INPUTS = {"ogg-vorbis", "ogg-opus", "mp3"}


def input_rate(kind: str, rate: int) -> int:
    return rate if kind != "ogg-opus" or rate in OPUS_RATES else OPUS_RATES[-1]


@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize("rate", INPUT_RATES)
@pytest.mark.parametrize("kind", list(INPUT_KINDS))
def test_decode_accepts_every_input_kind(kind, rate, channels):
    rate = input_rate(kind, rate)
    mono = tone(sr=rate, freq=300.0)
    samples = np.stack([mono] * channels, axis=1) if channels == 2 else mono
    decoded = decode_audio_base64(b64(audio_file(samples, rate, *INPUT_KINDS[kind])), FIELD)
    assert isinstance(decoded, DecodedAudio)
    assert decoded.sample_rate == rate
    assert decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    assert decoded.samples.flags.c_contiguous
    tolerance = LOSSY_DURATION_TOLERANCE_S if kind in LOSSY_INPUTS else 0.0
    assert abs(decoded.duration - SECONDS) <= tolerance
    assert abs(dominant_frequency(decoded.samples, rate) - 300.0) < FREQUENCY_TOLERANCE_HZ


def test_decode_lossless_keeps_the_samples():
    samples = tone(sr=16000)
    decoded = decode_audio_base64(b64(audio_file(samples, 16000, "WAV", "FLOAT")), FIELD)
    np.testing.assert_allclose(decoded.samples, samples, atol=FLOAT_TOLERANCE)
    decoded16 = decode_audio_base64(b64(audio_file(samples, 16000, "WAV", "PCM_16")), FIELD)
    np.testing.assert_allclose(decoded16.samples, samples, atol=PCM16_STEP)


def test_decode_mixes_stereo_to_the_channel_mean():
    # librosa.load's mono mix, which the library's own voices went through.
    left, right = tone(amplitude=0.4), tone(amplitude=0.2)
    data = audio_file(np.stack([left, right], axis=1), SR, "WAV", "FLOAT")
    decoded = decode_audio_base64(b64(data), FIELD)
    np.testing.assert_allclose(decoded.samples, (left + right) / 2, atol=FLOAT_TOLERANCE)


def test_decode_accepts_the_helper_prompt():
    decoded = decode_audio_base64(make_wav_b64(seconds=2.0, sr=16000), FIELD)
    assert decoded.sample_rate == 16000 and decoded.duration == pytest.approx(2.0)


@pytest.mark.parametrize("prefix", [
    "data:audio/wav;base64,",
    "data:audio/x-wav;base64,",
    "DATA:AUDIO/WAV;BASE64,",
    "data:audio/ogg;codecs=opus;base64,",
    "data:application/octet-stream;base64,",
])
def test_decode_accepts_a_data_uri_prefix(prefix):
    decoded = decode_audio_base64(prefix + b64(audio_file(tone(), SR, "WAV", "PCM_16")), FIELD)
    assert decoded.duration == pytest.approx(SECONDS)


def test_decode_accepts_a_data_uri_with_a_space_before_a_parameter():
    uri = "data:audio/ogg; codecs=opus;base64," + b64(audio_file(tone(), SR, "OGG", "OPUS"))
    assert decode_audio_base64(uri, FIELD).sample_rate == SR


def test_decode_accepts_wrapped_padded_and_url_safe_base64():
    raw = audio_file(tone(), SR, "WAV", "PCM_16")
    text = b64(raw)
    wrapped = "\n".join(text[i:i + 76] for i in range(0, len(text), 76))  # MIME line length
    for payload in (f"  {text}\n", wrapped, base64.urlsafe_b64encode(raw).decode("ascii")):
        assert decode_audio_base64(payload, FIELD).duration == pytest.approx(SECONDS)


def test_decode_accepts_unpadded_url_safe_base64():
    raw = audio_file(tone(seconds=SECONDS + 1 / SR), SR, "WAV", "PCM_16")  # a length that needs padding
    payload = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
    assert len(payload) % 4
    assert decode_audio_base64(payload, FIELD).sample_rate == SR


@pytest.mark.parametrize("fmt", [f for f in OUTPUT_FORMATS if f != "pcm_16"])
def test_worker_output_decodes_as_a_voice_upload(fmt):
    # Clients re-upload generated clips as voices; the worker must read its own files.
    decoded = decode_audio_base64(encode_audio_base64(tone(), SR, fmt), FIELD)
    assert decoded.sample_rate == SR
    assert abs(decoded.duration - SECONDS) <= LOSSY_DURATION_TOLERANCE_S


def test_min_seconds_is_enforced_with_the_duration_in_the_message():
    with pytest.raises(JobError) as info:
        decode_audio_base64(b64(audio_file(tone(), SR, "WAV", "PCM_16")), FIELD, min_seconds=5.0)
    assert info.value.field == FIELD and "1.00 s" in info.value.message and "5 s" in info.value.message


# -- decoding: what is refused -----------------------------------------------------------

_GOOD_WAV = audio_file(tone(sr=16000), 16000, "WAV", "PCM_16")
_WAV_HEADER_BYTES = 44


def float_wav(samples: np.ndarray) -> bytes:
    """Float WAV keeps NaN and inf as they are, as a broken client's file could."""
    return audio_file(np.asarray(samples, dtype=np.float32), 16000, "WAV", "FLOAT")


REJECTED = {
    "empty": ("", "is empty"),
    "whitespace": (" \n\t ", "is empty"),
    "empty-data-uri": ("data:audio/wav;base64,", "is empty"),
    "not-base64": ("this is not base64!", "not valid base64"),
    "bad-base64-chars": ("UklGR$%^&*()", "not valid base64"),
    "data-uri-no-comma": ("data:audio/wav;base64" + b64(_GOOD_WAV)[:64], "data: URI"),
    "data-uri-no-base64": ("data:audio/wav," + b64(_GOOD_WAV), "data: URI"),
    "data-uri-no-mime": ("data:;base64," + b64(_GOOD_WAV), "data: URI"),
    "data-uri-bad-mime": ("data:audiowav;base64," + b64(_GOOD_WAV), "data: URI"),
    "garbage-bytes": (b64(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()),
                      "not a readable audio file"),
    "plain-text": (b64(b"plain text, not an audio file " * 8), "not a readable audio file"),
    "riff-no-format": (b64(b"RIFF" + bytes(1000)), "not a readable audio file"),
    "truncated-in-header": (b64(_GOOD_WAV[:20]), "not a readable audio file"),
    "header-only": (b64(_GOOD_WAV[:_WAV_HEADER_BYTES]), "no audio samples"),
    "silence": (b64(float_wav(np.zeros(16000))), "silent"),
    "near-silence": (b64(float_wav(np.full(16000, SILENCE_PEAK / 2))), "silent"),
    "stereo-opposite-phase": (b64(audio_file(np.stack([tone(), -tone()], axis=1), SR, "WAV", "FLOAT")),
                              "silent"),
    "nan": (b64(float_wav(np.full(16000, np.nan))), "NaN or infinite"),
    "one-nan": (b64(float_wav(np.r_[tone(sr=16000), np.nan])), "NaN or infinite"),
    "inf": (b64(float_wav(np.r_[np.full(100, 0.1), np.inf])), "NaN or infinite"),
    "minus-inf": (b64(float_wav(np.r_[np.full(100, 0.1), -np.inf])), "NaN or infinite"),
}


@pytest.mark.parametrize("payload, reason", list(REJECTED.values()), ids=list(REJECTED))
def test_decode_rejects_bad_payloads_naming_the_field(payload, reason):
    with pytest.raises(JobError) as info:
        decode_audio_base64(payload, FIELD)
    error = info.value
    assert error.field == FIELD
    assert str(error).startswith(f"{FIELD}: ")
    assert reason in error.message
    # libsndfile's own message names an in-memory object; the client must not see that.
    assert "BytesIO" not in str(error)


@pytest.mark.parametrize("value", [None, 42, b"UklGRg==", ["UklGRg=="], {"data": "x"}],
                         ids=["none", "int", "bytes", "list", "dict"])
def test_decode_rejects_non_strings(value):
    with pytest.raises(JobError) as info:
        decode_audio_base64(value, FIELD)
    assert info.value.field == FIELD and "base64 string" in info.value.message


def test_decode_rejects_over_the_size_cap_before_decoding():
    payload = b64(_GOOD_WAV)
    with pytest.raises(JobError) as info:
        decode_audio_base64(payload, FIELD, max_base64_bytes=len(payload) - 1)
    assert info.value.field == FIELD and "limit" in info.value.message
    # At the cap exactly, it is accepted.
    assert decode_audio_base64(payload, FIELD, max_base64_bytes=len(payload)).sample_rate == 16000


def test_default_size_cap_applies():
    # Not valid audio at all: the length check must come first, or this would be a decode error.
    with pytest.raises(JobError) as info:
        decode_audio_base64("A" * (MAX_AUDIO_BASE64_BYTES + 4), FIELD)
    assert "MAX_AUDIO_BASE64_MB" in info.value.message


def test_truncated_wav_body_keeps_what_is_there():
    # A header that claims more than the body holds: the samples present are decoded
    # (then min_seconds, where a job sets it, refuses a clip that came out too short).
    half = _GOOD_WAV[: len(_GOOD_WAV) // 2]
    decoded = decode_audio_base64(b64(half), FIELD)
    assert 0 < decoded.duration < SECONDS
    with pytest.raises(JobError, match=FIELD):
        decode_audio_base64(b64(half), FIELD, min_seconds=SECONDS)


# -- encoding ----------------------------------------------------------------------------


def expected_output_rate(fmt: str, rate: int) -> int:
    return OPUS_RATES[-1] if fmt == "opus" and rate not in OPUS_RATES else rate


@pytest.mark.parametrize("rate", OUTPUT_RATES)
@pytest.mark.parametrize("fmt", [f for f in OUTPUT_FORMATS if f != "pcm_16"])
def test_every_output_format_decodes_at_its_rate_and_duration(fmt, rate):
    samples = resample(tone(), SR, rate)
    wav, out_rate = read_back(encode_audio(samples, rate, fmt))
    assert out_rate == expected_output_rate(fmt, rate)
    duration = len(wav) / out_rate
    if fmt in LOSSLESS_FORMATS:
        assert len(wav) == len(samples)
    else:
        assert abs(duration - len(samples) / rate) <= LOSSY_DURATION_TOLERANCE_S
    assert abs(dominant_frequency(wav, out_rate) - TONE_HZ) < FREQUENCY_TOLERANCE_HZ


@pytest.mark.parametrize("rate", OUTPUT_RATES)
def test_pcm_16_is_raw_little_endian_int16(rate):
    samples = resample(tone(), SR, rate)
    data = encode_audio(samples, rate, "pcm_16")
    assert len(data) == 2 * len(samples)  # two bytes a sample, no header
    decoded = np.frombuffer(data, dtype="<i2")
    np.testing.assert_array_equal(decoded, np.round(samples * 32767).astype(np.int16))


def test_pcm_16_byte_order_and_full_scale():
    data = encode_audio(np.array([1.0, -1.0, 0.0], dtype=np.float32), SR, "pcm_16")
    assert data == b"\xff\x7f" + b"\x01\x80" + b"\x00\x00"  # 32767, -32767, 0 little-endian


@pytest.mark.parametrize("fmt", ["wav", "flac", "pcm_16"])
def test_out_of_range_samples_are_clipped_not_wrapped(fmt):
    samples = np.array([1.5, -1.5, 2.0, -3.0] * 100, dtype=np.float32)
    data = encode_audio(samples, SR, fmt)
    back = np.frombuffer(data, "<i2") / 32767 if fmt == "pcm_16" else read_back(data)[0]
    assert np.all(np.sign(back) == np.sign(samples))  # wrap-around would flip the sign
    assert np.abs(back).max() <= 1.0


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_encode_base64_is_text_of_the_same_file(fmt):
    text = encode_audio_base64(tone(), SR, fmt)
    assert isinstance(text, str)  # RunPod drops results that contain bytes
    data = base64.b64decode(text, validate=True)
    if fmt in ("wav", "flac", "pcm_16"):  # Ogg streams get random serial numbers
        assert data == encode_audio(tone(), SR, fmt)


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_encode_empty_audio_is_readable_or_refused(fmt):
    try:
        data = encode_audio(np.zeros(0, dtype=np.float32), SR, fmt)
    except ValueError:
        return  # refusing with a clear error is as good as an empty file
    if fmt == "pcm_16":
        assert data == b""  # raw samples: none is the right answer
    else:
        assert len(read_back(data)[0]) == 0


def test_encode_rejects_an_unknown_format():
    with pytest.raises(ValueError, match="aiff"):
        encode_audio(tone(), SR, "aiff")


# -- resampling, trimming, normalising ---------------------------------------------------


@pytest.mark.parametrize("orig, target", [(24000, 16000), (24000, 22050), (16000, 24000), (44100, 24000),
                                          (24000, 48000), (8000, 24000)])
def test_resample_gives_the_right_length_and_keeps_pitch(orig, target):
    samples = tone(sr=orig)
    out = resample(samples, orig, target)
    assert out.dtype == np.float32
    # librosa rounds the length up from a float product, so it may be one sample long.
    assert abs(len(out) - len(samples) * target / orig) <= 1
    assert abs(dominant_frequency(out, target) - TONE_HZ) < FREQUENCY_TOLERANCE_HZ


def test_resample_same_rate_and_empty_are_unchanged():
    samples = tone()
    assert resample(samples, SR, SR) is samples
    assert resample(np.zeros(0, dtype=np.float32), SR, 16000).size == 0


def test_resample_converts_to_float32():
    assert resample(tone().astype(np.float64), SR, SR).dtype == np.float32


@pytest.mark.parametrize("max_seconds, expected", [(0.5, SR // 2), (SECONDS, SR), (10.0, SR), (0.0, 0)])
def test_trim_to_seconds(max_seconds, expected):
    assert len(trim_to_seconds(tone(), SR, max_seconds)) == expected


def test_normalize_peak_hits_the_target():
    out = normalize_audio(tone(amplitude=0.2), "peak")
    assert float(np.abs(out).max()) == pytest.approx(PEAK_TARGET, abs=1e-6)
    assert out.dtype == np.float32


def test_normalize_rms_hits_the_target():
    out = normalize_audio(tone(amplitude=0.05), "rms")
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(np.square(out, dtype=np.float64))))
    assert rms_dbfs == pytest.approx(RMS_TARGET_DBFS, abs=0.01)
    assert float(np.abs(out).max()) <= PEAK_TARGET


def test_normalize_rms_never_clips_a_spiky_signal():
    # A click in near-silence: reaching -20 dBFS RMS would push the click far past full scale.
    spiky = np.zeros(SR, dtype=np.float32)
    spiky[::4800] = 0.5
    out = normalize_audio(spiky, "rms")
    assert float(np.abs(out).max()) == pytest.approx(PEAK_TARGET, abs=1e-6)


@pytest.mark.parametrize("mode", ["peak", "rms"])
def test_normalize_leaves_silence_and_empty_alone(mode):
    silent = np.zeros(100, dtype=np.float32)
    np.testing.assert_array_equal(normalize_audio(silent, mode), silent)
    assert normalize_audio(np.zeros(0, dtype=np.float32), mode).size == 0


def test_normalize_none_is_identity_and_unknown_is_refused():
    samples = tone()
    assert normalize_audio(samples, None) is samples
    with pytest.raises(ValueError, match="loud"):
        normalize_audio(samples, "loud")


# -- joining chunks ----------------------------------------------------------------------


def click_prone_chunks() -> list[np.ndarray]:
    """Sines of different pitch, amplitude and phase, cut mid-cycle: every edge is far from zero."""
    chunks = [tone(0.503, freq=220.0, amplitude=0.9, phase=0.3),
              tone(0.417, freq=330.0, amplitude=0.4, phase=1.9),
              tone(0.31, freq=150.0, amplitude=0.7, phase=2.5)]
    for chunk in chunks:
        assert abs(chunk[0]) > 0.1 or abs(chunk[-1]) > 0.1
    return chunks


@pytest.mark.parametrize("pause_ms", [PAUSE_MS, 0.0])
def test_join_has_no_clicks(pause_ms):
    chunks = click_prone_chunks()
    inside = max(max_jump(chunk) for chunk in chunks)
    # Sanity: joined naively, these chunks do click.
    assert max_jump(np.concatenate(chunks)) > 5 * inside
    joined = join_audio_chunks(chunks, SR, pause_ms=pause_ms)
    pause = int(SR * pause_ms / 1000)
    start = 0
    for chunk in chunks[:-1]:
        end = start + len(chunk)
        # From the last faded samples of one chunk, across the pause, into the next one.
        window = joined[end - 2: end + pause + 2]
        assert max_jump(window) <= inside
        start = end + pause
    assert max_jump(joined) <= inside + FLOAT_TOLERANCE


def test_join_length_is_chunks_plus_pauses():
    chunks = click_prone_chunks()
    joined = join_audio_chunks(chunks, SR)
    pause = int(SR * PAUSE_MS / 1000)
    assert len(joined) == sum(len(c) for c in chunks) + pause * (len(chunks) - 1)
    assert joined.dtype == np.float32


def test_join_leaves_the_middle_of_each_chunk_untouched():
    chunks = click_prone_chunks()
    joined = join_audio_chunks(chunks, SR)
    fade = int(SR * CROSSFADE_MS / 1000)
    first = chunks[0]
    np.testing.assert_array_equal(joined[: len(first) - fade], first[: len(first) - fade])


def test_join_of_one_chunk_is_that_chunk_and_of_none_is_empty():
    chunk = tone()
    np.testing.assert_array_equal(join_audio_chunks([chunk], SR), chunk)
    assert join_audio_chunks([], SR).size == 0
    assert join_audio_chunks([np.zeros(0, dtype=np.float32)] * 3, SR).size == 0


def test_join_skips_empty_chunks():
    a, b = tone(0.2), tone(0.3, freq=330.0)
    empty = np.zeros(0, dtype=np.float32)
    np.testing.assert_array_equal(join_audio_chunks([a, empty, b], SR), join_audio_chunks([a, b], SR))


# -- fingerprints ------------------------------------------------------------------------


def test_fingerprint_is_stable_and_content_based():
    samples = tone()
    key = audio_fingerprint(samples, SR)
    assert len(key) == 64 and int(key, 16) >= 0
    assert audio_fingerprint(samples.copy(), SR) == key
    assert audio_fingerprint(samples.astype(np.float64), SR) == key  # same values, other dtype
    assert audio_fingerprint(samples[::-1][::-1], SR) == key  # a view, not contiguous memory


def test_fingerprint_changes_with_rate_and_content():
    samples = tone()
    key = audio_fingerprint(samples, SR)
    changed = samples.copy()
    changed[123] += 1e-3
    assert audio_fingerprint(samples, 16000) != key
    assert audio_fingerprint(changed, SR) != key
    assert audio_fingerprint(samples[:-1], SR) != key
