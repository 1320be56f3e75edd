"""What the tiers that need more than Python (system, live, vmlab) do when they cannot run.

Outside CI a missing privilege or tool skips the tier with the reason; with
CI=true the tier must run, so the same condition is a failure, never a skip.
"""

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(cond: bool, why: str, tier: str) -> None:
    if cond:
        return
    if IN_CI:
        pytest.fail(f"{tier} tier cannot run under CI=true: {why}")
    pytest.skip(why)
