"""Live tier: needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) and BPF here.

Outside CI a missing privilege skips the tier with the reason; with
CI=true it must run, so the same condition is a failure, never a skip.
"""

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(cond: bool, why: str) -> None:
    if cond:
        return
    if IN_CI:
        pytest.fail(f"live tier cannot run under CI=true: {why}")
    pytest.skip(why)


@pytest.fixture(autouse=True)
def _root():
    require(os.geteuid() == 0, "needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)")
