"""The data-flow rules, held by structure: headless modules import neither
textual nor bcc, and outputs read only the Snapshot (they import neither
sources, the live wing, nor the checker)."""

import ast
import os
import pkgutil
import subprocess
import sys

import vtrace

ROOT = os.path.dirname(vtrace.__file__)
# The only modules allowed to import textual (the TUI's widgets) or bcc (the live loader, on demand).
TEXTUAL = {"vtrace.tui.app"}
# Outputs: everything that renders a Snapshot for someone.
OUTPUTS = ("vtrace.report", "vtrace.perfetto", "vtrace.jsonl", "vtrace.export", "vtrace.queuetable",
           "vtrace.vocab", "vtrace.fmt", "vtrace.tui")
NOT_FOR_OUTPUTS = ("vtrace.sources", "vtrace.live", "vtrace.check", "vtrace.kernel")
# The protocol is a type, not a source: the TUI's feed names what it drives.
PROTOCOL = "vtrace.sources.base"


def _all_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([ROOT], "vtrace.") if m.name != "vtrace.cli.__main__")


def _modules_after(mods):
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def _imports_of(module: str) -> set[str]:
    """Every vtrace module ``module``'s source imports, at any depth in the file (lazy imports too)."""
    rel = module.split(".")[1:]
    path = os.path.join(ROOT, *rel)
    path = os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"
    with open(path) as f:
        tree = ast.parse(f.read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("vtrace")}


def test_every_module_is_found():
    mods = _all_modules()
    assert {"vtrace.aggregate", "vtrace.live.source", "vtrace.tui.feed", "vtrace.cli"} <= set(mods)


def test_headless_modules_do_not_import_textual_or_bcc():
    loaded = _modules_after([m for m in _all_modules() if m not in TEXTUAL])
    assert not {m for m in loaded if m == "textual" or m.startswith("textual.")}
    assert "bcc" not in loaded


def test_outputs_do_not_load_sources_or_the_checker():
    outputs = [m for m in _all_modules() if m.startswith(OUTPUTS)]
    loaded = _modules_after(outputs)
    assert not {m for m in loaded if m.startswith(NOT_FOR_OUTPUTS)}


def test_outputs_do_not_import_sources_or_the_checker_even_lazily():
    offenders = {}
    for module in _all_modules():
        if module.startswith(OUTPUTS):
            bad = {m for m in _imports_of(module)
                   if m.startswith(NOT_FOR_OUTPUTS) and not m.startswith(PROTOCOL)}
            if bad:
                offenders[module] = sorted(bad)
    assert offenders == {}


def test_the_tui_does_not_import_the_report():
    """The TUI and report share words through vtrace.vocab, not each other."""
    for module in _all_modules():
        if module.startswith("vtrace.tui"):
            assert "vtrace.report" not in _imports_of(module), module
