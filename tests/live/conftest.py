"""Live tier: needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) and BPF here;
must run under CI=true (tests/tiers.py)."""

import os

import pytest

from tests.tiers import require


@pytest.fixture(autouse=True)
def _root():
    require(os.geteuid() == 0, "needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)", "live")
    # the tests' own witness programs (bare bcc tracepoints) need tracefs as vtrace does
    from vtrace.kernel import attach
    root, why = attach.ensure_tracefs()
    require(root is not None, why, "live")
