"""The reference virtio device model.

Plain Python that encodes what the VIRTIO specification allows and requires,
one rule per function or method, with the spec section named beside it
(VIRTIO 1.2 is the base; 1.3/1.4 drafts for admin commands and SUSPEND; see
../shared/SPEC-NOTES.md in the source tree).

It is used twice (DESIGN.md):
- as a comparator: ``vtrace.check`` asks it what a conformant device may do
  and reports where observed events differ;
- as a device: the simulator and the property tests drive its rings, and its
  vectorised rule functions (``need_event``) make the simulator's decisions.

Headless: numpy only, no bcc or textual.
"""

from vtrace.model.features import Features
from vtrace.model.ring import PackedRing, RingError, SplitRing, need_event, vring_need_event

__all__ = ["Features", "PackedRing", "RingError", "SplitRing", "need_event", "vring_need_event"]
