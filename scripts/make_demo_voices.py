"""Generate the demo voice library shipped with the worker, using espeak-ng.

The demo voices let the worker answer voice_id / voice_name jobs out of the box and
give the tests a real library to load. They are synthetic (espeak-ng formant speech),
so they are meant for smoke tests, not for quality. Every voice is written through
OptimizedVoiceLibrary.save_voice, so the catalog is exactly what the worker writes.

    python scripts/make_demo_voices.py [--out DIR]

Writes DIR/voice_catalog.json, DIR/name_mapping.json and DIR/voice_embeddings/<id>.flac.
Requires the espeak-ng command (Debian: apt-get install espeak-ng).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from chatterbox_worker.voices.catalog_store import LOCK_FILENAME  # noqa: E402
from optimized_voice_library import OptimizedVoiceLibrary  # noqa: E402

logger = logging.getLogger("make_demo_voices")

TARGET_SAMPLE_RATE = 24000  # the rate of legacy library clips and of S3Gen's prompt
PEAK_LEVEL = 0.9
PCM16_SCALE = 32768
MIN_DURATION_S = 8.0
MAX_DURATION_S = 12.0
MAX_LIBRARY_BYTES = 10 * 1024 * 1024
ESPEAK_TIMEOUT_S = 60


@dataclass(frozen=True)
class DemoVoice:
    voice_id: str
    name: str
    gender: str
    espeak_voice: str  # language voice + variant, e.g. "en-us+f3"
    pitch: int  # espeak-ng -p, 0-99 (50 is the voice's default)
    speed: int  # espeak-ng -s, words per minute
    text: str


DEMO_VOICES = (
    DemoVoice(
        "de16e46c", "Amy", "female", "en-us+f3", 55, 170,
        "Good morning, and welcome to the station. The next train to the city centre "
        "leaves from platform two in about ten minutes. Please keep your ticket with you "
        "until the end of your journey.",
    ),
    DemoVoice(
        "a1b2c3d4", "Aaron", "male", "en-gb+m3", 35, 160,
        "I have been walking along this coast for most of my life. In winter the wind "
        "comes off the sea so hard that the gulls give up and sit on the rocks. "
        "Still, I would not live anywhere else.",
    ),
    DemoVoice(
        "5e7f9a0b", "Bella", "female", "en-gb-x-rp+f4", 85, 185,
        "Thank you for calling. Our opening hours are nine till five on weekdays, "
        "and ten till two on Saturdays. If you would like to book an appointment, "
        "please stay on the line and someone will be with you shortly.",
    ),
    DemoVoice(
        "c4d5e6f7", "Christopher", "male", "en-us+m7", 12, 170,
        "The recipe is simpler than it looks. Chop two onions, warm the oil, and let "
        "them soften slowly before you add the garlic. Then stir in the tomatoes "
        "and let it simmer for twenty minutes.",
    ),
    DemoVoice(
        "9d8c7b6a", "Dana", "female", "en-gb-scotland+f2", 38, 165,
        "Our survey counted more than forty kinds of birds this spring. The numbers "
        "were highest near the old reservoir, where the reeds have grown back. "
        "We will repeat the count in autumn and compare the results.",
    ),
    DemoVoice(
        "2f4e6d8c", "Eric", "male", "en-us+m2", 65, 175,
        "Before you start, check that the power cable is firmly connected and the "
        "green light on the front panel is on. Press the reset button once, wait for "
        "the short beep, and the device will be ready to use.",
    ),
)


def synthesize(voice: DemoVoice, work_dir: Path) -> tuple[np.ndarray, int]:
    wav_path = work_dir / f"{voice.voice_id}.wav"
    subprocess.run(
        [
            "espeak-ng", "-v", voice.espeak_voice, "-p", str(voice.pitch), "-s", str(voice.speed),
            "-w", str(wav_path), voice.text,
        ],
        check=True,
        timeout=ESPEAK_TIMEOUT_S,
        capture_output=True,
    )
    samples, rate = sf.read(str(wav_path), dtype="float32", always_2d=True)
    return samples.mean(axis=1), rate


def prepare(samples: np.ndarray, rate: int, name: str) -> np.ndarray:
    audio = librosa.resample(samples, orig_sr=rate, target_sr=TARGET_SAMPLE_RATE)
    audio = np.trim_zeros(audio.astype(np.float32))
    duration = len(audio) / TARGET_SAMPLE_RATE
    if not MIN_DURATION_S <= duration <= MAX_DURATION_S:
        raise SystemExit(
            f"{name}: {duration:.1f} s of speech; the demo wants {MIN_DURATION_S:.0f}-{MAX_DURATION_S:.0f} s "
            "(adjust its text or speed)"
        )
    audio = audio * (PEAK_LEVEL / np.max(np.abs(audio)))
    # espeak-ng's output is 16-bit; rounding to the 16-bit grid drops only resampling
    # residue and lets FLAC store the 24-bit file at roughly 16-bit size.
    return (np.round(audio * PCM16_SCALE) / PCM16_SCALE).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="library directory (default: repo root)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    library = OptimizedVoiceLibrary(out_dir)

    with tempfile.TemporaryDirectory(prefix="demo-voices-") as tmp:
        for voice in DEMO_VOICES:
            samples, rate = synthesize(voice, Path(tmp))
            audio = prepare(samples, rate, voice.name)
            entry = library.save_voice(
                voice.name,
                audio,
                TARGET_SAMPLE_RATE,
                description=f"Demo voice: espeak-ng {voice.espeak_voice}, pitch {voice.pitch}",
                gender=voice.gender,
                original_file=f"espeak-ng_{voice.espeak_voice}.wav",
                voice_id=voice.voice_id,
                deletable=False,  # shipped voices are never deleted by jobs
            )
            logger.info("%s (%s): %.1f s -> %s", voice.name, voice.voice_id, entry["duration"], entry["embedding_file"])

    # Only this process used the lock; leaving it would put a stray file in the repo.
    (out_dir / LOCK_FILENAME).unlink(missing_ok=True)

    files = [out_dir / "voice_catalog.json", out_dir / "name_mapping.json"]
    files += [out_dir / library.get_voice_info(v.voice_id)["embedding_file"] for v in DEMO_VOICES]
    total = sum(f.stat().st_size for f in files)
    logger.info("Demo library: %d voices, %.2f MB in %s", len(DEMO_VOICES), total / 1e6, out_dir)
    if total > MAX_LIBRARY_BYTES:
        raise SystemExit(f"demo library is {total / 1e6:.1f} MB; keep it under {MAX_LIBRARY_BYTES / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
