"""What the checker records: the events that prove a divergence
(``Evidence``), the divergence itself, per-rule tallies of what was checked,
found and not checkable, and ``Findings``, which keeps all three."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from vtrace.check.rules import RULE_BY_ID, RULES


@dataclass(frozen=True)
class Evidence:
    """One event that proves a divergence: its position in the stream
    (0-based, the order ``vtrace convert --to jsonl`` writes events), time,
    kind and the fields that matter."""

    ordinal: int
    ts: int
    kind: str
    fields: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict:
        return {"event": self.ordinal, "ts": self.ts, "kind": self.kind, **dict(self.fields)}

    def __str__(self) -> str:
        shown = " ".join(f"{name}={value}" for name, value in self.fields)
        return f"#{self.ordinal} {self.kind} ts={self.ts}{' ' + shown if shown else ''}"


@dataclass(frozen=True)
class Divergence:
    rule: str
    severity: str
    ts: int
    where: str
    message: str
    evidence: tuple[Evidence, ...] = ()

    def to_json(self) -> dict:
        rule = RULE_BY_ID.get(self.rule)
        return {"rule": self.rule, "severity": self.severity, "ts": self.ts, "where": self.where,
                "message": self.message, "section": rule.section if rule else "",
                "evidence": [ev.to_json() for ev in self.evidence]}


@dataclass
class RuleTally:
    checked: int = 0  # observations the rule was evaluated on
    found: int = 0
    unchecked: int = 0  # observations it could not decide
    why: str = ""  # the first reason it could not


class Findings:
    """Per-rule tallies and the divergences kept (at most ``keep`` per rule).

    Every rule counts what it checked and what it could not decide; only
    enabled rules record divergences."""

    def __init__(self, enabled: set[str], keep: int):
        self.enabled = enabled
        self.keep = keep
        self.tally: dict[str, RuleTally] = {rule.id: RuleTally() for rule in RULES}
        self.divergences: list[Divergence] = []

    def checked(self, rule: str, count: int = 1) -> None:
        self.tally[rule].checked += count

    def unchecked(self, rule: str, count: int, why: str) -> None:
        if count:
            tally = self.tally[rule]
            tally.unchecked += count
            tally.why = tally.why or why

    def found(self, rule: str, ts: int, where: str, message: str, evidence: Iterable[Evidence] = ()) -> None:
        if rule not in self.enabled:
            return
        tally = self.tally[rule]
        tally.found += 1
        if tally.found <= self.keep:
            self.divergences.append(Divergence(rule, RULE_BY_ID[rule].severity, int(ts), where, message,
                                               tuple(evidence)))


def heads_text(heads) -> str:
    """The first 16 heads of a list, and how many more."""
    heads = [int(head) for head in heads]
    shown = ", ".join(map(str, heads[:16]))
    return shown + (f" and {len(heads) - 16} more" if len(heads) > 16 else "")
