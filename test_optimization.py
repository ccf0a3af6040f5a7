"""The voice-path benchmark (legacy vs optimized vs cached): ``python test_optimization.py --quick``.

Not a test (pytest collects only ``tests/``): the benchmark itself lives in
``bench/voice_path.py`` beside the other benchmarks, and takes the same flags. This name is
the one the guide and existing deployments' notes use.
"""
import sys

from bench.voice_path import main

if __name__ == "__main__":
    sys.exit(main())
