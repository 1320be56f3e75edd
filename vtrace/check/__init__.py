"""The conformance checker: observed events against the reference model.

``RULES`` is the catalogue (id, title, spec section, severity, explanation).
``Checker.feed(batch)`` replays a batch against per-queue model state and
records a ``Divergence`` wherever the device (or driver) did something the
spec does not allow, naming the events that prove it.

Work is vectorised per queue segment (the events of one queue between two
lifecycle events), so the checker keeps up with the aggregator on streams of
millions of events; the rules themselves live in ``vtrace.model`` and are
cited there and in the catalogue.

Honesty rules:
- A rule is only evaluated on what was observed. A field a probe did not see
  (``UNOBSERVED``), a head first seen in its completion (it may have been made
  available before the trace began), lost events and damaged captures make the
  affected checks "not checkable" and are counted as such — never a pass.
- After a LOST record or a gap in a capture every queue is re-synchronised:
  the checker forgets what it cannot know any more rather than invent a
  divergence from a missing event.

Modules: ``rules`` (the catalogue), ``evidence`` (what is recorded),
``columns`` (the events under check), ``queue`` (per-queue model state),
``ring``, ``notify``, ``lifecycle`` and ``admin`` (the rule families),
``checker`` (the Checker that dispatches to them).
"""

from vtrace.check.checker import NS, Checker
from vtrace.check.evidence import Divergence, Evidence, Findings, RuleTally
from vtrace.check.rules import RULE_BY_ID, RULES, SEVERITIES, SEVERITY_RANK, Rule

__all__ = ["NS", "RULES", "RULE_BY_ID", "SEVERITIES", "SEVERITY_RANK", "Checker", "Divergence", "Evidence",
           "Findings", "Rule", "RuleTally"]
