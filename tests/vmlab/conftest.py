"""vmlab tier: Debian's stock kernel under QEMU (TCG), built on first use.

Outside CI a missing QEMU or busybox skips the tier with the reason; with
CI=true the tier must run, so the same condition is a failure, never a skip.
`make test` installs both (scripts/install-system-deps.sh).
"""

import os
import shutil

import pytest

from tests.tiers import require


@pytest.fixture(autouse=True)
def _tools():
    from tests.vmlab import lab
    require(shutil.which(lab.QEMU) is not None, f"{lab.QEMU} is not installed (apt-get install qemu-system-x86)",
            "vmlab")
    require(os.path.exists(lab.BUSYBOX), f"{lab.BUSYBOX} is missing (apt-get install busybox-static)", "vmlab")
    require(shutil.which("apt-get") is not None, "apt-get is needed to fetch the stock kernel", "vmlab")
