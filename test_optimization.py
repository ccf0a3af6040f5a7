"""The voice-path benchmark (legacy vs optimized vs cached): ``python test_optimization.py --quick``.

The benchmark itself lives in ``bench/voice_path.py`` beside the other benchmarks; this
name is the one the guide and existing deployments' notes use.
"""
import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parent / "bench" / "voice_path.py"), run_name="__main__")
