"""Feature bits (VIRTIO 1.2 §6 "Reserved Feature Bits"; 1.3/1.4 drafts for
ADMIN_VQ and SUSPEND) and the negotiation rules the model enforces."""

from __future__ import annotations

from dataclasses import dataclass

INDIRECT_DESC = 28
EVENT_IDX = 29
VERSION_1 = 32
ACCESS_PLATFORM = 33
RING_PACKED = 34
IN_ORDER = 35
ORDER_PLATFORM = 36
SR_IOV = 37
NOTIFICATION_DATA = 38
NOTIF_CONFIG_DATA = 39
RING_RESET = 40
ADMIN_VQ = 41
SUSPEND = 43

NAMES = {
    INDIRECT_DESC: "INDIRECT_DESC", EVENT_IDX: "EVENT_IDX", VERSION_1: "VERSION_1",
    ACCESS_PLATFORM: "ACCESS_PLATFORM", RING_PACKED: "RING_PACKED", IN_ORDER: "IN_ORDER",
    ORDER_PLATFORM: "ORDER_PLATFORM", SR_IOV: "SR_IOV", NOTIFICATION_DATA: "NOTIFICATION_DATA",
    NOTIF_CONFIG_DATA: "NOTIF_CONFIG_DATA", RING_RESET: "RING_RESET", ADMIN_VQ: "ADMIN_VQ",
    SUSPEND: "SUSPEND",
}


def bit(b: int) -> int:
    return 1 << b


class FeatureError(ValueError):
    """A feature set no conformant driver may accept."""


@dataclass(frozen=True)
class Features:
    """A negotiated feature set (64 bits)."""

    bits: int = 0

    def has(self, b: int) -> bool:
        return bool(self.bits >> b & 1)

    @property
    def known(self) -> bool:
        # Every modern device offers VERSION_1 (§6); a set without it is
        # either legacy or simply not observed. Rules that depend on
        # negotiation treat "0" as not observed.
        return self.bits != 0

    @property
    def event_idx(self) -> bool:
        return self.has(EVENT_IDX)

    @property
    def in_order(self) -> bool:
        return self.has(IN_ORDER)

    @property
    def packed(self) -> bool:
        return self.has(RING_PACKED)

    def names(self) -> list[str]:
        return [NAMES.get(b, f"bit{b}") for b in range(64) if self.has(b)]

    @staticmethod
    def negotiate(offered: int, wanted: int) -> "Features":
        """What the driver may write at FEATURES_OK (§3.1.1 "Driver Requirements:
        Device Initialization": a subset of what the device offered), with the
        dependencies §6 states."""
        extra = wanted & ~offered
        if extra:
            raise FeatureError(f"driver accepted features the device did not offer: "
                               f"{Features(extra).names()}")
        f = Features(wanted)
        # §6: ADMIN_VQ, SR_IOV, RING_RESET, SUSPEND and the other 1.x features
        # are only defined for VERSION_1 devices.
        if not f.has(VERSION_1) and wanted >> 33:
            raise FeatureError("features above bit 32 require VERSION_1")
        return f
