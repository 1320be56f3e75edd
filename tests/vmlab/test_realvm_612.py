"""The realvm tier on bookworm-backports' 6.12 lab host (tests/vmlab/test_realvm.py:
the same tests, a file of its own so that `make test` boots it beside the 6.1 one)."""

import pytest

from tests.vmlab import lab
from tests.vmlab.test_realvm import *  # noqa: F401,F403 - the same tests, on this kernel

pytestmark = pytest.mark.vmlab


@pytest.fixture(scope="module")
def suite():
    return lab.BACKPORTS
