"""Device status and lifecycle (VIRTIO 1.2 §2.1 "Device Status Field",
§3.1 "Device Initialization", §2.6.1 "Virtqueue Reset"; SUSPEND from the
1.4 draft, "Device Suspension")."""

from __future__ import annotations

from vtrace.model.features import SUSPEND, Features

ACKNOWLEDGE = 1
DRIVER = 2
DRIVER_OK = 4
FEATURES_OK = 8
STATUS_SUSPEND = 16
DEVICE_NEEDS_RESET = 64
FAILED = 128

STATUS_NAMES = {ACKNOWLEDGE: "ACKNOWLEDGE", DRIVER: "DRIVER", DRIVER_OK: "DRIVER_OK",
                FEATURES_OK: "FEATURES_OK", STATUS_SUSPEND: "SUSPEND",
                DEVICE_NEEDS_RESET: "DEVICE_NEEDS_RESET", FAILED: "FAILED"}


class StatusError(Exception):
    """A status write the spec does not allow; the message names the section."""


def status_names(v: int) -> str:
    return "|".join(n for b, n in STATUS_NAMES.items() if v & b) or "RESET"


class DeviceStatus:
    """The status byte as both sides drive it, with the ordering rules of §3.1.1."""

    def __init__(self, offered: int):
        self.offered = offered
        self.status = 0
        self.features = Features(0)

    @property
    def running(self) -> bool:
        return bool(self.status & DRIVER_OK) and not self.status & (STATUS_SUSPEND | DEVICE_NEEDS_RESET)

    def write(self, value: int, *, features: int | None = None) -> None:
        """The driver writes the status field."""
        if value == 0:
            # §2.1.2 / §3.1.1: writing 0 resets the device.
            self.status, self.features = 0, Features(0)
            return
        old = self.status
        if old & ~value & ~STATUS_SUSPEND:
            # §2.1.2 "Driver Requirements": the driver MUST NOT clear a device
            # status bit (other than by reset; SUSPEND is the 1.4 exception).
            raise StatusError(f"driver cleared {status_names(old & ~value)} without reset (§2.1.2)")
        new = value & ~old
        if new & DRIVER and not value & ACKNOWLEDGE:
            raise StatusError("DRIVER before ACKNOWLEDGE (§3.1.1 steps 2-3)")
        if new & FEATURES_OK:
            if not value & DRIVER:
                raise StatusError("FEATURES_OK before DRIVER (§3.1.1 step 5)")
            if features is None:
                raise StatusError("FEATURES_OK without negotiated features (§3.1.1 step 4)")
            self.features = Features.negotiate(self.offered, features)
        if new & DRIVER_OK and not value & FEATURES_OK:
            raise StatusError("DRIVER_OK before FEATURES_OK (§3.1.1 step 8)")
        if new & STATUS_SUSPEND:
            if not self.features.has(SUSPEND):
                raise StatusError("SUSPEND set but VIRTIO_F_SUSPEND not negotiated (1.4 'Device Suspension')")
            if not value & DRIVER_OK:
                raise StatusError("SUSPEND before DRIVER_OK (1.4 'Device Suspension')")
        if new & DEVICE_NEEDS_RESET:
            raise StatusError("DEVICE_NEEDS_RESET is set by the device, not the driver (§2.1.1)")
        self.status = value

    def device_error(self) -> None:
        """The device hit an error it cannot recover from (§2.1.1): it sets
        DEVICE_NEEDS_RESET and, if DRIVER_OK was set, notifies a config change."""
        self.status |= DEVICE_NEEDS_RESET
