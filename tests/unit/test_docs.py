"""The event reference in docs/events.md says what vtrace.events says."""

import os
import re

from vtrace.events import KIND_FIELDS

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "events.md")
COLUMNS = ("id", "len", "aux", "aux2", "arg")


def _doc_kinds() -> dict[int, tuple[str, dict[str, str]]]:
    rows = {}
    with open(DOC) as f:
        for line in f:
            m = re.match(r"\| (\d+) \| `(\w+)` \|(.*)\|\s*$", line)
            if m:
                cells = [c.strip() for c in m.group(3).split("|")]
                rows[int(m.group(1))] = (m.group(2), {c: v for c, v in zip(COLUMNS, cells) if v})
    return rows


def test_kinds_table_matches_kind_fields():
    doc = _doc_kinds()
    code = {int(k): (k.label, dict(fields)) for k, fields in KIND_FIELDS.items()}
    assert doc == code
