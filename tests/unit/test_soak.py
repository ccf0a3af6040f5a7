"""A short soak run through the same code as ``scripts/soak.py``: mixed good and malformed
jobs through ``handler.handler`` with the stub model, failing on any leak or bad outcome."""
from __future__ import annotations

import pytest

from chatterbox_worker.testing.soak import SoakConfig, soak

pytestmark = pytest.mark.soak

# Past the warm-up (30 jobs), so the figures compare a settled worker with its end state;
# with the stub model this takes a few seconds.
SHORT_SOAK_JOBS = 60


def test_a_short_soak_run_has_no_failures():
    figures = soak(SoakConfig(jobs=SHORT_SOAK_JOBS))
    assert figures["failures"] == [], figures["first_failures"]
    assert figures["jobs"] == SHORT_SOAK_JOBS
    assert figures["outcomes"]["ok"] > 0 and figures["outcomes"]["rejected"] > 0
