"""Text and JSON output of ``vtrace check`` (headless; reads a finished Checker)."""

from __future__ import annotations

from vtrace.check import RULES, SEVERITIES, SEVERITY_RANK, Checker


def rule_status(c: Checker, rule_id: str) -> str:
    t = c.tally[rule_id]
    if rule_id not in c.enabled:
        return "disabled"
    if t.found:
        return f"{t.found:,} divergence{'s' if t.found != 1 else ''}"
    if t.checked and not t.unchecked:
        return f"ok ({t.checked:,} checked)"
    if t.checked:
        return f"ok ({t.checked:,} checked; {t.unchecked:,} not checkable: {t.why})"
    if t.unchecked:
        return f"not checkable ({t.unchecked:,}: {t.why})"
    return "not exercised (nothing in the input it applies to)"


def counts_by_severity(c: Checker) -> dict[str, int]:
    out = {s: 0 for s in SEVERITIES}
    for rule, sev, n in c.summary():
        out[sev] += n
    return out


def failed(c: Checker, fail_on: str) -> bool:
    return any(SEVERITY_RANK[sev] <= SEVERITY_RANK[fail_on] for _, sev, _ in c.summary())


def check_text(c: Checker, *, what: str, events: int, span_s: float, fail_on: str,
               per_rule: int = 5, damage: str | None = None, ts0: int | None = None) -> str:
    out: list[str] = []
    w = out.append
    sev = counts_by_severity(c)
    w(f"checked  {what}: {events:,} events over {span_s:.2f} s, {len(c.queues)} queues")
    if c.resyncs:
        w(f"WARNING  {c.resyncs} re-synchronisation(s) after lost events or damage: divergences "
          "spanning them may be missed (never invented)")
    if damage:
        w(f"WARNING  {damage}")
    total = sum(sev.values())
    verdict = "FAIL" if failed(c, fail_on) else "PASS"
    w(f"result   {verdict} (--fail-on {fail_on}): " + (", ".join(f"{n:,} {s}" for s, n in sev.items() if n)
                                                     if total else "no divergences"))
    by_rule: dict[str, list] = {}
    for d in c.divergences:
        by_rule.setdefault(d.rule, []).append(d)
    t0 = ts0 if ts0 is not None else min((d.ts for d in c.divergences), default=0)
    for rule_id, sev_, n in c.summary():
        r = next(r for r in RULES if r.id == rule_id)
        w("")
        w(f"{sev_.upper():<8} {r.id}: {r.title} [{n:,}]")
        w(f"         spec: {r.section}")
        w(f"         why:  {r.explanation}")
        shown = by_rule.get(rule_id, [])[:per_rule]
        for d in shown:
            w(f"  +{(d.ts - t0) / 1e9:.6f}s {d.where}: {d.message}")
            for ev in d.evidence[:4]:
                w(f"      {ev}")
            if len(d.evidence) > 4:
                w(f"      ... {len(d.evidence) - 4} more events")
        if n > len(shown):
            w(f"  ... {n - len(shown):,} more (-v for more, -j for all kept)")
    if c.migrations:
        w("")
        w("CONTINUED IN ANOTHER PROCESS (a restore or migration: checked against the stop in the first)")
        for where, source, dest, ts in sorted(c.migrations, key=lambda link: link[3]):
            w(f"  +{(ts - t0) / 1e9:.6f}s {where}: pid {source} -> pid {dest}")
    w("")
    w("RULES")
    for r in RULES:
        w(f"  {r.severity:<7} {r.id:<28} {rule_status(c, r.id)}")
    return "\n".join(out) + "\n"


def check_json(c: Checker, *, what: str, events: int, span_s: float, fail_on: str,
               damage: str | None = None) -> dict:
    return {
        "input": what, "events": events, "span_s": span_s, "fail_on": fail_on,
        "result": "fail" if failed(c, fail_on) else "pass",
        "counts": counts_by_severity(c), "resyncs": c.resyncs, "damage": damage,
        "rules": [{"id": r.id, "title": r.title, "section": r.section, "severity": r.severity,
                   "checked": c.tally[r.id].checked, "divergences": c.tally[r.id].found,
                   "not_checkable": c.tally[r.id].unchecked, "not_checkable_why": c.tally[r.id].why,
                   "status": rule_status(c, r.id)} for r in RULES],
        "divergences": [d.to_json() for d in c.divergences],
        "migrations": [{"queue": where, "source_pid": source, "pid": dest, "ts": ts}
                       for where, source, dest, ts in c.migrations],
    }


def rules_text() -> str:
    out = []
    for r in RULES:
        out.append(f"{r.id} ({r.severity})\n  {r.title}\n  spec: {r.section}\n  {r.explanation}\n")
    return "\n".join(out)

