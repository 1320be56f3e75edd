"""The reference virtio device model.

Plain Python that encodes what the VIRTIO specification allows and requires,
one rule per function or method, with the spec section named beside it
(VIRTIO 1.2 is the base; 1.3/1.4 drafts for admin commands and SUSPEND).

It is used three ways:
- as a comparator: ``vtrace.check`` asks it what a conformant device may do
  (``need_event``, ``devtypes.role``, ``admin.member_problem``) and reports
  where observed events differ;
- inside the simulator: ``vtrace.sources.sim`` decides its signals with
  ``vring_need_event``, answers admin commands with ``admin.AdminDevice`` and
  sizes headers from ``devtypes``;
- as a device: the property tests drive its rings (``SplitRing``,
  ``PackedRing``) to produce legal streams for the checker.

Headless: numpy only, no bcc or textual.
"""

from vtrace.model.features import Features
from vtrace.model.ring import PackedRing, RingError, SplitRing, need_event, vring_need_event

__all__ = ["Features", "PackedRing", "RingError", "SplitRing", "need_event", "vring_need_event"]
