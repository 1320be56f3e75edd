"""`vtrace top`: the textual app. Reads Snapshots from a Feed (feed.py) on a
timer and shows them; every figure comes from the Snapshot (or, for the
divergence pane, from the feed's checker)."""

from __future__ import annotations

import asyncio
import signal
from collections import deque

import numpy as np

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import (DataTable, Footer, Input, Sparkline, Static, TabbedContent, TabPane)

from vtrace import vfio
from vtrace.fmt import bytes_, dur, log2_hist_lines, mb, si
from vtrace.tui import view
from vtrace.tui.feed import Feed

HISTORY = 120  # refreshes of used/s kept per queue for the detail sparkline
MIN_W, MIN_H = 40, 10
INTERVALS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0)

KEYS = """\
 q / Ctrl-C   quit                    p      pause (replay: stop reading)
 Enter        queue detail            Esc    back / clear the filter
 /            filter (VM, device, queue, state, backend)
 s / S        sort by next column / reverse the order (or click a header)
 g            group rows by VM        a      show or hide idle queues
 + / -        refresh interval        1-5    queues, admin, KVM, DMA, divergences
 [ / ]        replay: seek 10 s back / forward
 ?            this help
"""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "close")]

    def compose(self) -> ComposeResult:
        yield Static("vtrace top: keys\n\n" + KEYS, id="help")


class DetailScreen(Screen):
    """One queue: latency histogram, throughput sparkline, in-flight buffers
    with ages, lifecycle timeline, what was in flight at the last suspend."""

    BINDINGS = [Binding("escape,enter", "app.pop_screen", "back"), Binding("q", "app.quit", "quit")]

    def __init__(self, obj: int):
        super().__init__()
        self.obj = obj

    def compose(self) -> ComposeResult:
        yield Static(id="dtitle")
        yield Sparkline([], id="spark")
        with VerticalScroll():
            yield Static(id="dbody")
        yield Footer()

    def on_mount(self) -> None:
        self.show(self.app.snap)

    def show(self, snap) -> None:
        if snap is None:
            return
        t = snap.table
        rows = [i for i, o in enumerate(t["obj"]) if o == self.obj]
        if not rows:
            self.query_one("#dtitle", Static).update("queue gone (evicted or reset)")
            return
        q = t.row(rows[0])
        self.query_one("#dtitle", Static).update(
            f"{q.label}  [{q.layer}] {q.dev_type}{f' on {q.backend}' if q.backend else ''} ring {q.size or '?'}"
            f"  state {q.state}  "
            f"used {si(q.used_rate)}/s  {mb(q.bytes_rate)} MB/s  in flight {q.in_flight}  "
            f"p50 {dur(q.p50_ns, not q.latency_exact)}  p99 {dur(q.p99_ns, not q.latency_exact)}")
        hist = self.app.history.get(self.obj)
        self.query_one("#spark", Sparkline).data = list(hist) if hist else [0.0]
        out = ["used/s over the last refreshes (above)", "", "completion latency (lifetime, log2 buckets)"]
        out += log2_hist_lines(q.latency_hist, width=30) or ["  no completions yet"]
        infl = snap.in_flight_buffers(self.obj)
        out += ["", f"in flight now: {len(infl)}"]
        out += [f"  head {h:>6}  age {dur(a)}" for h, a in infl[:30]]
        if len(infl) > 30:
            out.append(f"  ... {len(infl) - 30} more")
        out += ["", "lifecycle (latest last)"]
        t0 = snap.ts_first or 0
        out += [f"  +{(e.ts - t0) / 1e9:10.3f}s  {e.what} {e.detail}" for e in q.timeline] or ["  nothing yet"]
        r = q.last_suspend
        out += ["", "in flight at the last suspend"]
        if r is None:
            out.append("  never suspended or stopped")
        else:
            out.append(f"  {r.reason} at +{(r.ts - t0) / 1e9:.3f}s: {r.in_flight} buffers"
                       + (f", base {r.base}" if r.base is not None else "")
                       + (f", restored {r.restored_base}" if r.restored_base is not None else ""))
            out += [f"  head {h:>6}  age {dur(a)}" for h, a in list(zip(r.heads, r.ages_ns))[:30]]
        # A Text keeps the histogram's leading spaces (markup would eat them).
        self.query_one("#dbody", Static).update(Text("\n".join(out), no_wrap=True, overflow="crop"))


class TopApp(App):
    CSS = """
    #head { height: 2; background: $boost; text-wrap: nowrap; text-overflow: ellipsis; }
    #banner { height: auto; background: $error; color: $text; display: none; }
    #banner.on { display: block; }
    #filter { display: none; height: 3; }
    #filter.on { display: block; }
    #foot { height: 1; color: $text-muted; }
    #toosmall { display: none; }
    Screen.tiny #main { display: none; }
    Screen.tiny #toosmall { display: block; }
    #help { width: 76; height: auto; border: round $accent; padding: 1 2; background: $panel; }
    HelpScreen { align: center middle; }
    DataTable { height: 1fr; }
    #spark { height: 5; }
    """
    TITLE = "vtrace top"
    BINDINGS = [
        Binding("q", "quit", "quit"), Binding("ctrl+c", "quit", "quit", show=False, priority=True),
        Binding("p", "pause", "pause"), Binding("slash", "filter", "filter"),
        Binding("s", "sort(1)", "sort"), Binding("S", "reverse", "reverse", show=False),
        Binding("g", "group", "group VM"), Binding("a", "idle", "idle", show=False),
        Binding("plus,equals_sign", "interval(1)", "slower", show=False),
        Binding("minus", "interval(-1)", "faster", show=False),
        Binding("question_mark", "help", "help"), Binding("escape", "clear_filter", show=False),
        Binding("left_square_bracket", "seek(-10)", show=False),
        Binding("right_square_bracket", "seek(10)", show=False),
        Binding("1", "tab('queues')", show=False), Binding("2", "tab('admin')", show=False),
        Binding("3", "tab('kvm')", show=False), Binding("4", "tab('dma')", show=False),
        Binding("5", "tab('divergences')", show=False),
    ]

    def __init__(self, feed: Feed, *, interval: float = 1.0, on_exit=None):
        super().__init__()
        self.feed = feed
        self.interval = interval
        self.v = view.View()
        self.snap = None
        self.history: dict[int, deque] = {}
        self.frozen = False  # live source: pause freezes the view
        self._timer = None
        self._cols: tuple = ()
        self._on_exit = on_exit
        self.shown = 0  # rows in the table

    def compose(self) -> ComposeResult:
        yield Static(id="head")
        yield Static(id="banner")
        yield Static("terminal too small", id="toosmall")
        with Vertical(id="main"):
            yield Input(placeholder="filter: part of VM/device/queue or a state; Enter applies, Esc clears",
                        id="filter")
            with TabbedContent(initial="queues", id="tabs"):
                with TabPane("Queues", id="queues"):
                    yield DataTable(id="qt", cursor_type="row", zebra_stripes=True)
                    yield Static(id="foot")
                with TabPane("Admin", id="admin"):
                    yield DataTable(id="admint", cursor_type="row")
                with TabPane("KVM", id="kvm"):
                    yield DataTable(id="kvmt", cursor_type="row")
                with TabPane("DMA/IOMMU", id="dma"):
                    yield DataTable(id="dmat", cursor_type="row")
                with TabPane("Divergences", id="divergences"):
                    yield DataTable(id="divt", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.exit)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        for tid, cols in (("#admint", ("OPCODE", "STATUS", "COUNT", "P50", "P99", "MAX", "QUALIFIERS")),
                          ("#kvmt", ("VM", "PID", "EXITS", "TOP EXIT REASONS", "PIO", "MMIO", "IOEVENTFD",
                                     "IRQFD", "SET_IRQ", "MSI", "NON-COHERENT DMA")),
                          ("#dmat", ("VM", "MAPS", "MAPPED", "UNMAPS", "UNMAPPED", "MIGRATION", "VFIO IOCTLS",
                                     "FAILED", "REGION R/W", "MMAPS")),
                          ("#divt", ("RULE", "SEVERITY", "COUNT", "LAST EVIDENCE", "SPEC"))):
            self.query_one(tid, DataTable).add_columns(*cols)
        self._layout_columns(self.size.width)
        self.query_one("#qt", DataTable).focus()
        self.tick()
        self._timer = self.set_interval(self.interval, self.tick)

    def on_unmount(self) -> None:
        if self._on_exit is not None:
            self._on_exit()

    # refresh -----------------------------------------------------------------
    def tick(self) -> None:
        if not self.is_running:  # shutting down: textual closes the screens before the timers
            return
        if self.frozen or self.feed.paused:
            self._banner()
            return
        self.update(self.feed.snapshot())

    def update(self, snap) -> None:
        self.snap = snap
        t = snap.table
        for o, r in zip(t["obj"], np.asarray(t["used_rate"]).tolist()):
            h = self.history.get(o)
            if h is None:
                h = self.history[o] = deque(maxlen=HISTORY)
            h.append(r)
        if len(self.history) > 2 * len(t):  # queues evicted or reset since: drop their history
            live = set(t["obj"])
            self.history = {o: h for o, h in self.history.items() if o in live}
        self._show_header()
        self._banner()
        tab = self.query_one("#tabs", TabbedContent).active
        if tab == "queues":
            self._fill_queues(snap)
        else:
            self._fill_pane(tab, snap)
        if isinstance(self.screen, DetailScreen):
            self.screen.show(snap)

    def _banner(self) -> None:
        msg = []
        if self.feed.error:
            msg.append(f"source error: {self.feed.error} (showing the last data)")
        elif self.feed.ended:
            msg.append("the source ended (showing its last data)")
        if self.snap is not None and self.snap.damage:
            msg.append(self.snap.damage)
        b = self.query_one("#banner", Static)
        b.update("  ".join(msg))
        b.set_class(bool(msg), "on")

    def _layout_columns(self, width: int) -> None:
        cols = view.columns(width)
        if cols == self._cols:
            return
        self._cols = cols
        qt = self.query_one("#qt", DataTable)
        qt.clear(columns=True)
        for c in cols:
            qt.add_column(self._title(c), key=c.key, width=c.width)
        if self.snap is not None:
            self._fill_queues(self.snap)

    def _title(self, c) -> str:
        if c.key != self.v.sort:
            return c.title
        return c.title + ("▼" if self.v.reverse else "▲")

    def _fill_queues(self, snap) -> None:
        qt = self.query_one("#qt", DataTable)
        keep = None
        if qt.row_count and qt.cursor_row is not None:
            try:
                keep = qt.coordinate_to_cell_key((qt.cursor_row, 0)).row_key.value
            except Exception:  # noqa: BLE001 - no row under the cursor
                keep = None
        idx = view.order(snap, self.v)
        shown = idx[:view.MAX_ROWS]
        objs = snap.table["obj"]
        rows = view.cells(snap, shown, self._cols)
        keys = [str(objs[i]) for i in shown.tolist()]
        qt.clear()
        for c in self._cols:
            qt.columns[c.key].label = self._label(c)
        for r, k in zip(rows, keys):
            qt.add_row(*r, key=k)
        self.shown = len(rows)
        if keep is not None and keep in keys:
            qt.move_cursor(row=keys.index(keep), animate=False)
        foot = f"{len(idx)} of {len(snap.table)} queues"
        if len(idx) > len(shown):
            foot += f", first {len(shown)} shown: filter (/) to narrow"
        foot += f"  sort {view.COLUMN[self.v.sort].title} {'desc' if self.v.reverse else 'asc'}"
        if self.v.filter:
            foot += f"  filter '{self.v.filter}'"
        if self.v.group_vm:
            foot += "  grouped by VM"
        if not self.v.show_idle:
            foot += "  idle hidden"
        self.query_one("#foot", Static).update(foot)

    def _label(self, c) -> Text:
        return Text(self._title(c))

    def _fill_pane(self, tab: str, snap) -> None:
        if tab == "admin":
            rows = [(a.opcode_name, a.status_name, str(a.count), dur(a.p50_ns), dur(a.p99_ns), dur(a.max_ns),
                     " ".join(f"{k}:{n}" for k, n in a.qualifiers)) for a in snap.admin]
            self._fill("#admint", rows)
        elif tab == "kvm":
            rows = []
            for m in snap.vms:
                exits = sum(n for _r, n in m.exits_by_reason)
                top = sorted(m.exits_by_reason, key=lambda x: -x[1])[:3]
                rows.append((m.vm, str(m.pid), si(exits), " ".join(f"{r}:{si(n)}" for r, n in top),
                             si(m.pio_total), si(m.mmio_total), si(m.ioeventfd_total), si(m.irqfd_total),
                             si(m.set_irq_total), si(m.msi_total),
                             ("YES" if m.noncoherent_dma else "no") + f" ({m.noncoherent_registers_total} reg)"))
            self._fill("#kvmt", rows)
        elif tab == "dma":
            rows = [(m.vm, si(m.dma_map_total), bytes_(m.dma_map_bytes_total), si(m.dma_unmap_total),
                     bytes_(m.dma_unmap_bytes_total), vfio.mig_state_name(m.migration_state),
                     si(sum(r[2] for r in m.vfio_ioctls)), si(sum(r[3] for r in m.vfio_ioctls)),
                     f"{si(m.vfio_region_reads_total)}/{si(m.vfio_region_writes_total)}", si(m.vfio_mmaps_total))
                    for m in snap.vms]
            self._fill("#dmat", rows)
        elif tab == "divergences":
            rows = [(r, s, str(n), ev[:120], sec) for r, s, n, ev, sec in self.feed.divergences()]
            if self.feed.checker is None:
                rows = [("(checker off)", "", "", "counting in the kernel: run with --stream for divergences", "")]
            self._fill("#divt", rows)

    def _fill(self, tid: str, rows) -> None:
        t = self.query_one(tid, DataTable)
        t.clear()
        for r in rows:
            t.add_row(*r)

    # events ------------------------------------------------------------------
    def on_resize(self, event) -> None:
        w, h = event.size.width, event.size.height
        self.screen.set_class(w < MIN_W or h < MIN_H, "tiny")
        self.query_one("#toosmall", Static).update(
            f"terminal too small: {w}x{h}, vtrace top needs {MIN_W}x{MIN_H}")
        self._layout_columns(w)

    def on_tabbed_content_tab_activated(self, _event) -> None:
        if self.snap is not None:
            self.update(self.snap)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        if event.data_table.id == "qt":
            self.v.sort_by(event.column_key.value)
            self.refill()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "qt" and event.row_key is not None:
            self.push_screen(DetailScreen(int(event.row_key.value)))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.v.filter = event.value.strip()
        event.input.remove_class("on")
        self.query_one("#qt", DataTable).focus()
        self.refill()

    def refill(self) -> None:
        """Redraw the queue table from the current Snapshot, after a change
        to the view (``app.v``: sort, filter, grouping, idle)."""
        if self.snap is not None:
            self._fill_queues(self.snap)

    @property
    def queue_columns(self) -> tuple:
        """The queue table's columns now (view.Column; the narrow set below
        view.NARROW cells)."""
        return self._cols

    # actions -----------------------------------------------------------------
    def action_pause(self) -> None:
        if self.feed.kind == "live":
            self.frozen = not self.frozen
        else:
            self.feed.pause(not self.feed.paused)
        self._show_header()

    def _show_header(self) -> None:
        if self.snap is not None:
            a, b = view.header(self.snap, paused=self.frozen or self.feed.paused, interval_s=self.interval)
            self.query_one("#head", Static).update(Text(f"{a}\n{b}", no_wrap=True, overflow="ellipsis"))

    def action_filter(self) -> None:
        i = self.query_one("#filter", Input)
        i.add_class("on")
        i.value = self.v.filter
        i.focus()

    def action_clear_filter(self) -> None:
        i = self.query_one("#filter", Input)
        i.remove_class("on")
        if self.v.filter:
            self.v.filter = ""
            self.refill()
        self.query_one("#qt", DataTable).focus()

    def action_sort(self, step: int) -> None:
        self.v.cycle_sort(step)
        self.refill()

    def action_reverse(self) -> None:
        self.v.reverse = not self.v.reverse
        self.refill()

    def action_group(self) -> None:
        self.v.group_vm = not self.v.group_vm
        self.refill()

    def action_idle(self) -> None:
        self.v.show_idle = not self.v.show_idle
        self.refill()

    def action_interval(self, step: int) -> None:
        i = min(range(len(INTERVALS)), key=lambda k: abs(INTERVALS[k] - self.interval))
        self.interval = INTERVALS[max(0, min(len(INTERVALS) - 1, i + step))]
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_interval(self.interval, self.tick)
        self._show_header()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab

    def action_seek(self, delta: int) -> None:
        if not self.feed.seek(delta):
            self.notify("seek works on replay sources only", severity="warning")
        else:
            self.notify(f"seek {delta:+d} s")

