"""Kernel symbols from /proc/kallsyms, including compiler clones.

GCC renames functions it specialises (``handle_tx.isra.0``,
``vhost_get_vq_desc.constprop.0``, ``foo.cold``): a probe on the plain name
then misses, so lookups return every clone of a name. Addresses read as 0
without CAP_SYSLOG (kptr_restrict); callers say so rather than compare
against 0.
"""

from __future__ import annotations

from dataclasses import dataclass

KALLSYMS = "/proc/kallsyms"
SUFFIXES = (".isra", ".constprop", ".part", ".cold", ".lto_priv", ".llvm")


class SymbolError(Exception):
    """Symbols unreadable or hidden (one line)."""


@dataclass(frozen=True)
class Symbol:
    name: str      # as the kernel lists it (may carry a clone suffix)
    addr: int
    kind: str      # nm type letter: T/t text, D/d data, ...
    module: str    # "" for vmlinux


def base_name(name: str) -> str:
    """``handle_tx.isra.0`` -> ``handle_tx``."""
    i = name.find(".")
    return name if i < 0 else name[:i]


class Kallsyms:
    def __init__(self, path: str = KALLSYMS):
        self.by_base: dict[str, list[Symbol]] = {}
        try:
            with open(path) as f:
                for ln in f:
                    parts = ln.split()
                    if len(parts) < 3:
                        continue
                    mod = parts[3].strip("[]") if len(parts) > 3 else ""
                    s = Symbol(parts[2], int(parts[0], 16), parts[1], mod)
                    self.by_base.setdefault(base_name(s.name), []).append(s)
        except OSError as e:
            raise SymbolError(f"{path}: {e.strerror}") from None
        self.hidden = all(s.addr == 0 for syms in list(self.by_base.values())[:50] for s in syms)

    def lookup(self, name: str, text_only: bool = True) -> list[Symbol]:
        """The symbol and its clones (exact name first), functions only by default."""
        syms = [s for s in self.by_base.get(base_name(name), ())
                if (s.name == name or s.name.startswith(name + ".")) and
                (not text_only or s.kind in "Tt")]
        syms.sort(key=lambda s: (s.name != name, s.name))
        return syms

    def name_at(self, addr: int) -> Symbol | None:
        """The function symbol at exactly ``addr`` (a function pointer read from the kernel)."""
        if not hasattr(self, "_by_addr"):
            self._by_addr = {s.addr: s for syms in self.by_base.values() for s in syms if s.kind in "Tt"}
        return self._by_addr.get(addr)

    def address(self, name: str) -> int:
        """The address of ``name`` itself (not a clone)."""
        if self.hidden:
            raise SymbolError(f"{KALLSYMS} shows zero addresses: run as root (kptr_restrict)")
        for s in self.lookup(name):
            if s.name == name:
                return s.addr
        raise SymbolError(f"{name} is not in {KALLSYMS}")
