"""vtrace command line: a click group; each command parses, builds objects, runs.

Bad input ends in one line on stderr ("vtrace: ...") and exit status 2;
never a traceback (VTRACE_DEBUG=1 shows one for internal errors).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import click

from vtrace import __version__
from vtrace.fmt import parse_duration

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


class VtraceError(click.ClickException):
    exit_code = EXIT_BAD_INPUT

    def show(self, file=None) -> None:
        click.echo(f"vtrace: {self.message}", err=True)


class Group(click.Group):
    def main(self, *args, standalone_mode: bool = True, **kw):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kw)
        try:
            rv = super().main(*args, standalone_mode=False, **kw)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx else "vtrace"
            click.echo(f"vtrace: {e.format_message()} (see '{where} --help')", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        from vtrace.capture import CaptureError
        from vtrace.sources import SourceError
        try:
            return super().invoke(ctx)
        except (CaptureError, SourceError) as e:
            raise VtraceError(str(e)) from None
        except BrokenPipeError:
            # `vtrace stat | head`: the reader left; not an error.
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:
                pass
            ctx.exit(0)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            ctx.exit(130)
        except Exception as e:  # noqa: BLE001 - last line of defence: one line, no traceback
            if os.environ.get("VTRACE_DEBUG"):
                traceback.print_exc()
            click.echo(f"vtrace: internal error: {type(e).__name__}: {e} "
                       "(set VTRACE_DEBUG=1 for a traceback)", err=True)
            ctx.exit(EXIT_INTERNAL)


def _duration(_ctx, _param, value):
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


SOURCE_HELP = ("where events come from: auto (live when it can run here, else the simulator), live, "
               "sim, sim:KEY=VAL,... (seed, vms, workload=mixed|net|blk, scale, ring, ...), replay:FILE, "
               "qemu:LOG (QEMU's virtio trace events)")


def source_option(f):
    return click.option("--source", "source_spec", default="auto", show_default=True, metavar="SPEC",
                        help=SOURCE_HELP)(f)


def _open(spec: str, *, realtime: bool, duration_ns: int | None = None, stream: bool = True):
    from vtrace.sources import open_source
    src, notice = open_source(spec, realtime=realtime, duration_ns=duration_ns, stream=stream)
    if notice:
        click.echo(f"vtrace: {notice}", err=True)
    return src


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="vtrace", message="%(prog)s %(version)s")
def cli():
    """vtrace: see inside every virtqueue.

    Traces vhost, vfio/virtio-admin, kvm and guest virtio paths with BPF,
    or replays a capture, or simulates a host (labelled as such everywhere).

    \b
    Examples:
      vtrace stat 1 5                      # per-queue table every second, 5 times
      vtrace stat --source sim -j 1 3      # simulated host, JSON lines
      vtrace capture -d 10s -o run.vtrace  # one-shot capture
      vtrace report run.vtrace             # per-queue summary, histograms, admin
      vtrace convert run.vtrace --to perfetto -o run.json
    """


# stat -----------------------------------------------------------------------
@cli.command(context_settings={"max_content_width": 100})
@click.argument("interval", required=False, default="1")
@click.argument("count", required=False, type=int)
@source_option
@click.option("-j", "--json", "as_json", is_flag=True, help="one JSON object per interval")
@click.option("-s", "--sort", type=click.Choice(["name", "avail", "used", "bytes", "inflight", "p99"]),
              default="name", show_default=True, help="row order")
@click.option("-n", "--top", type=click.IntRange(min=1), help="show only the first N rows")
@click.option("--vm", "vms", multiple=True, metavar="NAME", help="only this VM (repeatable)")
@click.option("-a", "--all", "show_all", is_flag=True, help="include idle queues")
@click.option("--stream", is_flag=True,
              help="live: stream every event for exact percentiles (costs more per event; see OVERHEAD)")
def stat(interval, count, source_spec, as_json, sort, top, vms, show_all, stream):
    """Per-virtqueue rates, in flight and latency every INTERVAL.

    INTERVAL defaults to 1 second (also 500ms, 2s, ...); COUNT limits the
    number of reports. Rates are per second; latency is available -> used
    over the interval; K/B and S/B are kicks and signals per used buffer
    (batching: lower is better). Live, the kernel sums events in maps and
    percentiles come from log2 buckets ("~" marks them); --stream sends
    every event up instead, for exact percentiles.

    \b
    Examples:
      vtrace stat                   # every second until Ctrl-C
      vtrace stat 5 3               # three 5-second reports
      vtrace stat -s p99 -n 10      # ten worst queues by p99 latency
      vtrace stat --vm web1 -j 1    # JSON lines for one VM
      vtrace stat --stream 1 10     # exact percentiles (every event to user space)
      vtrace stat --source replay:run.vtrace 1   # per-second rows of a capture
    """
    from vtrace import report
    from vtrace.pipeline import Pipeline
    try:
        interval_ns = parse_duration(interval)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="INTERVAL") from None
    if count is not None and count < 1:
        raise click.BadParameter("must be at least 1", param_hint="COUNT")
    src = _open(source_spec, realtime=True, stream=stream)
    label = "simulated host" if getattr(src, "kind", "") == "sim" else src.kind
    if src.info.get("mode") == "count":
        label += ", counting in kernel"
    click.echo(f"Tracing virtqueues ({label})... Hit Ctrl-C to end.", err=as_json)

    def show(snap):
        qs = report.select(snap, vms=vms, sort=sort, top=top, show_all=show_all)
        if as_json:
            click.echo(json.dumps(report.stat_json(snap, qs), default=str))
        else:
            click.echo()
            click.echo(report.stat_summary(snap))
            click.echo(report.STAT_COLS)
            for row in report.stat_rows(qs):
                click.echo(row)
        sys.stdout.flush()

    pipe = Pipeline(src)
    final = pipe.run(interval_ns=interval_ns, count=count, on_interval=show)
    if count is None or pipe.intervals < count:
        tail = pipe.agg.snapshot()
        if tail.interval_ns > 0:
            show(tail)  # the partial last interval: nothing traced goes unshown
    if final.damage:
        click.echo(f"vtrace: warning: {final.damage}", err=True)
    if hasattr(src, "close"):
        src.close()


# export ---------------------------------------------------------------------
@cli.command(context_settings={"max_content_width": 100})
@click.option("--listen", default="127.0.0.1:9464", show_default=True, metavar="HOST:PORT",
              help="where to serve /metrics (loopback unless told otherwise; :9464 is every interface)")
@click.option("--web-config", "web_config", type=click.Path(dir_okay=False), metavar="FILE",
              help="TLS and basic auth, in the Prometheus exporter-toolkit format (see docs/export.md)")
@source_option
@click.option("--check/--no-check", "check", default=None,
              help="run the spec checker for vtrace_divergences_total (default: when every event streams)")
@click.option("--stream", is_flag=True, help="live: stream every event instead of counting in the kernel")
def export(listen, web_config, source_spec, check, stream):
    """Serve Prometheus metrics of every virtqueue until Ctrl-C.

    Each scrape reads the aggregator's snapshot at that moment: counters
    since vtrace started, in-flight gauges, latency histograms in seconds,
    admin commands, kvm and DMA per VM, divergences, and vtrace's own
    health (events lost, probes attached). Metric table: docs/export.md.

    \b
    Examples:
      sudo vtrace export                          # live, on 127.0.0.1:9464
      vtrace export --source sim --listen :9464   # simulated host, every interface
      vtrace export --web-config web.yml          # TLS and/or basic auth
      curl -s localhost:9464/metrics | grep vtrace_queue_in_flight
    """
    from vtrace import export as ex
    from vtrace.pipeline import Pipeline
    from vtrace.stop import Stop, stoppable
    try:
        web = ex.WebConfig.load(web_config) if web_config else None
        addr = ex.parse_listen(listen)
    except (ex.WebConfigError, ValueError) as e:
        raise VtraceError(str(e)) from None
    src = _open(source_spec, realtime=True, stream=stream)
    checker = None
    if check or (check is None and src.info.get("mode", "stream") == "stream"):
        from vtrace.check import Checker
        checker = Checker()
    agg = ex.SharedAggregator(checker=checker)
    try:
        srv = ex.serve(agg, addr, web)
    except OSError as e:
        raise VtraceError(f"cannot listen on {listen}: {e.strerror or e}") from None
    host, port = srv.server_address[:2]
    what = "simulated host" if getattr(src, "kind", "") == "sim" else src.kind
    click.echo(f"Serving metrics on {srv.scheme}://{host}:{port}/metrics ({what})... Hit Ctrl-C to end.",
               err=True)
    pipe = Pipeline(src, aggregator=agg)
    final = pipe.run()
    if not pipe.interrupted:
        # A replay or a timed source ended: keep serving what it left.
        click.echo("vtrace: source ended; still serving its final counts. Hit Ctrl-C to end.", err=True)
        with stoppable():
            try:
                while True:
                    time.sleep(3600)
            except (KeyboardInterrupt, Stop):
                pass
    srv.shutdown()
    if final.damage:
        click.echo(f"vtrace: warning: {final.damage}", err=True)


# top ------------------------------------------------------------------------
@cli.command(context_settings={"max_content_width": 100})
@click.argument("interval", required=False, default="1")
@source_option
@click.option("--record", type=click.Path(dir_okay=False), metavar="FILE",
              help="also write a capture of everything read while watching")
@click.option("-f", "--force", is_flag=True, help="--record: overwrite FILE")
@click.option("--check/--no-check", "check", default=None,
              help="run the spec checker for the divergences pane (default: when every event streams)")
@click.option("--stream", is_flag=True, help="live: stream every event instead of counting in the kernel")
def top(interval, source_spec, record, force, check, stream):
    """The htop of virtqueues: a live table of every queue, refreshed every INTERVAL.

    INTERVAL defaults to 1 second. Keys: q quit, Enter queue detail,
    / filter, s/S sort, g group by VM, p pause, +/- interval, 1-5 panes
    (queues, admin, KVM, DMA, divergences), [ ] seek a replay, ? help.
    Hit Ctrl-C to end.

    \b
    Examples:
      sudo vtrace top                         # live when it can run here
      vtrace top --source sim                 # a simulated host (labelled so)
      vtrace top --source replay:run.vtrace   # replay a capture at its own pace
      vtrace top 2 --record run.vtrace        # watch and capture at once
    """
    from vtrace.tui import make_app
    try:
        interval_s = parse_duration(interval) / 1e9
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="INTERVAL") from None
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise VtraceError("top needs a terminal; for a pipe use vtrace stat")
    if record:
        _refuse_clobber(record, force)
    src = _open(source_spec, realtime=True, stream=stream)
    reopen = None
    if getattr(src, "kind", "") == "replay":
        from vtrace.sources.replay import ReplaySource
        path = src.path
        reopen = lambda: ReplaySource(path)  # noqa: E731 - seeking re-reads the file
    app = make_app(src, interval=interval_s, record=record, check=check, reopen=reopen, argv=sys.argv[1:])
    app.run()
    if app.feed.error:
        click.echo(f"vtrace: source error: {app.feed.error}", err=True)
    if record:
        click.echo(f"vtrace: recorded {record}", err=True)


# capture --------------------------------------------------------------------
@cli.command(context_settings={"max_content_width": 100})
@click.option("-d", "--duration", callback=_duration, metavar="TIME",
              help="how long to capture (10s, 2m); default until Ctrl-C")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="capture file (default vtrace-YYYYmmdd-HHMMSS.vtrace)")
@click.option("-f", "--force", is_flag=True, help="overwrite an existing file")
@click.option("--realtime/--fast", default=None,
              help="sim only: pace to the wall clock (default: fast when -d is given)")
@click.option("--chunk", type=click.IntRange(1024, 1 << 20), default=65536, show_default=True,
              help="records per compressed chunk")
@source_option
def capture(duration, output, force, realtime, chunk, source_spec):
    """Write every event to a capture file.

    The file is versioned, compressed and written chunk by chunk (mode
    0600): a capture cut short still reads up to the cut. Ctrl-C or
    SIGTERM end the capture cleanly. With the simulator and -d, simulated
    time runs as fast as the machine allows.

    \b
    Examples:
      vtrace capture -d 10s -o run.vtrace
      vtrace capture --source sim:vms=8,seed=7 -d 30s -o sim.vtrace
      vtrace report run.vtrace
    """
    if output is None:
        output = time.strftime("vtrace-%Y%m%d-%H%M%S.vtrace")
    _refuse_clobber(output, force)
    if realtime is None:
        realtime = duration is None
    src = _open(source_spec, realtime=realtime, duration_ns=duration)
    _record(src, output, duration=duration, chunk=chunk,
            announce=f"Capturing to {output} ({'simulated host' if src.info.get('simulated') else src.kind})"
                     f"{'' if duration else '... Hit Ctrl-C to end'}.")


def _record(src, output: str, *, duration: int | None = None, chunk: int = 65536, announce: str = ""):
    """Run ``src`` into a capture file; print what was written. Returns the final snapshot."""
    from vtrace.capture import CaptureWriter, header_for
    from vtrace.pipeline import Pipeline
    writer = CaptureWriter(output, header_for(src, sys.argv[1:]), chunk_records=chunk)
    if announce:  # once the file is open: a bad path is the only line printed
        click.echo(announce, err=True)
    pipe = Pipeline(src, writer=writer)
    t0 = time.monotonic()
    try:
        snap = pipe.run(duration_ns=duration)
    finally:
        agg = pipe.agg
        writer.close({"ts_end": agg.ts_end, "lost_total": agg.lost_total,
                      "interrupted": pipe.interrupted})
    wall = time.monotonic() - t0
    size = os.path.getsize(output)
    span = (snap.ts_end - (snap.ts_first or snap.ts_end)) / 1e9
    per = size / snap.events_total if snap.events_total else 0.0
    click.echo(f"wrote {output}: {snap.events_total:,} events over {span:.2f} s, {size:,} bytes "
               f"({per:.1f} bytes/event), {snap.lost_total:,} lost, {wall:.1f} s wall"
               f"{' (interrupted)' if pipe.interrupted else ''}", err=True)
    if snap.damage:
        click.echo(f"vtrace: warning: {snap.damage}", err=True)
    return snap


def _refuse_clobber(output: str, force: bool) -> None:
    if os.path.exists(output) and not force:
        raise VtraceError(f"{output} exists (use --force to overwrite)")


# doctor / probes ------------------------------------------------------------------
@cli.command(context_settings={"max_content_width": 100})
@click.option("-j", "--json", "as_json", is_flag=True, help="the checks and points as one JSON object")
def doctor(as_json):
    """Check that live tracing can run here; say exactly what to fix.

    Checks privileges, bcc, BTF, tracefs, kernel headers (or the minimal
    tree vtrace builds), kprobe and fentry availability, then attaches
    every probe point and reports each. Exit 0 when live tracing can run.

    \b
    Examples:
      sudo vtrace doctor
      sudo vtrace doctor -j | jq '.points[] | select(.attached | not)'
    """
    from vtrace import doctor as doc
    checks = doc.run_all()
    points = []
    if doc.passed(checks):
        points = _attach_all()
    ok = doc.passed(checks) and any(p.attached for p in points)
    if as_json:
        click.echo(json.dumps({"ok": ok, "checks": [c.__dict__ for c in checks],
                               "points": [p.__dict__ for p in points]}, indent=1))
    else:
        for c in checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "no  ")
            click.echo(f"{mark} {c.name:<10} {c.detail}")
            if not c.ok and c.fix:
                click.echo(f"     {'':<10} fix: {c.fix}")
        if points:
            click.echo("")
            _probe_table(points)
        click.echo("\n" + ("live tracing can run here (--source live)" if ok else
                           "live tracing cannot run here; use --source sim, or fix the FAIL lines above"))
    return 0 if ok else 1


def _attach_all():
    """Attach every point once, detach, and return each point's status."""
    from vtrace.sources.live import LiveError, LiveSource
    try:
        src = LiveSource()
    except LiveError as e:
        raise VtraceError(str(e)) from None
    try:
        src.start()
    except LiveError:
        pass  # nothing attached: the statuses say why
    finally:
        src.close()
    return list(src.probes())


def _missed_cell(p) -> str:
    """A point's skipped runs for a table: the count, '+?' where the kernel skips some uncounted."""
    if not p.attached:
        return "-"
    return f"{p.missed:,}" + ("+?" if p.uncounted else "")


def _uncounted_notes(points) -> None:
    """Say, per point, which skipped runs this kernel does not count (the '+?' of MISSED)."""
    notes = [p for p in points if p.attached and p.uncounted]
    if notes:
        click.echo("\n+? not counted by this kernel:")
        for p in notes:
            click.echo(f"  {p.point}: {p.uncounted}")


def _probe_table(points) -> None:
    click.echo(f"{'LAYER':<13} {'POINT':<18} {'STRATEGY':<38} {'MISSED':>7} STATUS")
    for p in points:
        status = ("attached" + (f" ({p.error})" if p.error else "")) if p.attached else f"failed: {p.error}"
        click.echo(f"{p.layer:<13} {p.point:<18} {p.strategy:<38} {_missed_cell(p):>7} {status}")
    _uncounted_notes(points)


def _probe_stats(duration_ns: int, as_json: bool, stream: bool) -> int:
    """Attach everything, count with kernel.bpf_stats_enabled for a while, report per point."""
    from vtrace.sources.live import LiveError, LiveSource
    knob = "/proc/sys/kernel/bpf_stats_enabled"
    try:
        with open(knob) as f:
            before = f.read().strip()
        with open(knob, "w") as f:
            f.write("1")
    except OSError as e:
        raise VtraceError(f"cannot enable BPF statistics ({knob}: {e.strerror})") from None
    try:
        src = LiveSource(stream=stream)
        try:
            src.start()
        except LiveError as e:
            raise VtraceError(str(e)) from None
        click.echo(f"Counting for {duration_ns / 1e9:g} s with BPF statistics on... Hit Ctrl-C to end.", err=True)
        from vtrace.stop import Stop, stoppable
        try:
            with stoppable():
                time.sleep(duration_ns / 1e9)
        except (KeyboardInterrupt, Stop):
            pass
        rows = src.prog_stats()
        src.close()
        status = {p.point: p for p in src.probes()}
    finally:
        with open(knob, "w") as f:
            f.write(before)
    if as_json:
        for layer, point, cnt, ns in rows:
            click.echo(json.dumps({"layer": layer, "point": point, "run_cnt": cnt, "run_time_ns": ns,
                                   "ns_per_hit": round(ns / cnt, 1) if cnt else None,
                                   "missed": status[point].missed, "uncounted": status[point].uncounted}))
    else:
        click.echo(f"{'LAYER':<13} {'POINT':<18} {'RUNS':>10} {'NS/HIT':>8} {'MISSED':>8}")
        for layer, point, cnt, ns in rows:
            click.echo(f"{layer:<13} {point:<18} {cnt:>10,} {f'{ns / cnt:.0f}' if cnt else '-':>8} "
                       f"{_missed_cell(status[point]):>8}")
        _uncounted_notes([status[point] for _layer, point, _c, _n in rows])
    return 0


@cli.command(context_settings={"max_content_width": 100})
@click.option("--ebpf", is_flag=True, hidden=True, help="print the BPF programs that would be loaded, and exit")
@click.option("-j", "--json", "as_json", is_flag=True, help="one JSON object per point")
@click.option("--stats", "stats_for", callback=_duration, metavar="TIME",
              help="stay attached this long with BPF statistics on; print runs and ns per hit")
@click.option("--stream", is_flag=True,
              help="with --stats/--ebpf: the streaming programs (capture, check), not the counting ones (stat)")
def probes(ebpf, as_json, stats_for, stream):
    """List every probe point, the attach strategy chosen here, and its status.

    Attaches each point for a moment to prove it (needs root), then
    detaches. A point that cannot attach says why.

    \b
    Examples:
      sudo vtrace probes
      sudo vtrace probes -j
      sudo vtrace probes --stats 10s     # runs, mean ns per hit and skipped runs of each point
      sudo vtrace probes --stats 10s --stream   # the same for what capture and check load
    """
    from vtrace.sources import live_available
    from vtrace.sources.live import LiveError, LiveSource
    if ebpf:
        try:
            click.echo(LiveSource(stream=stream).ebpf())
        except LiveError as e:
            raise VtraceError(str(e)) from None
        return 0
    ok, why = live_available()
    if not ok:
        raise VtraceError(why)
    if stats_for:
        return _probe_stats(stats_for, as_json, stream)
    points = _attach_all()
    if as_json:
        for p in points:
            click.echo(json.dumps(p.__dict__))
    else:
        _probe_table(points)
    return 0 if any(p.attached for p in points) else 1


# import -----------------------------------------------------------------------
@cli.group("import", context_settings={"max_content_width": 100})
def import_():
    """Turn another tool's trace into a vtrace capture.

    \b
    Examples:
      vtrace import qemu qemu-trace.log -o guest.vtrace
      vtrace check guest.vtrace
    """


def _type_option(_ctx, _param, values):
    out = {}
    for v in values:
        name, sep, t = v.partition("=")
        if not sep:
            name, t = "*", v  # a bare TYPE: every device the log does not type
        if not name or not t:
            raise click.BadParameter(f"{v!r} is not DEV=TYPE or TYPE (e.g. vdev0=net)")
        out[name] = t
    return out


@import_.command("qemu", context_settings={"max_content_width": 100})
@click.argument("log", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="capture file (default LOG with .vtrace)")
@click.option("-f", "--force", is_flag=True, help="overwrite an existing file")
@click.option("--vm", metavar="NAME", help="VM name for every object (default qemu-PID)")
@click.option("-t", "--type", "types", multiple=True, callback=_type_option, metavar="[DEV=]TYPE",
              help="device type where the log does not say: vdev0=net (DEV is a name or 0xPTR), "
                   "or a bare TYPE for every untyped device; repeatable")
@click.option("--line-time", is_flag=True,
              help="accept a log without timestamps: line N is at N microseconds")
def import_qemu(log, output, force, vm, types, line_time):
    """Import QEMU's virtio trace events (the log backend).

    Run QEMU with its virtio trace events on, timestamps and a log file:

    \b
      qemu-system-x86_64 ... -trace 'virtqueue_*' -trace 'virtio_*' \\
          -trace 'vhost_vdpa_*' -D qemu-trace.log -msg timestamp=on

    then import the log and check QEMU's devices against the model. QEMU
    does not trace descriptor heads or byte counts: heads are numbered per
    popped element, and rules that need lengths say "not checkable".
    Under KVM add ioeventfd=off to a device to see its kicks.

    \b
    Examples:
      vtrace import qemu qemu-trace.log                  # writes qemu-trace.vtrace
      vtrace import qemu qemu-trace.log -t vdev0=net -o web1.vtrace --vm web1
      vtrace import qemu qemu-trace.log -t net           # every untyped device is a NIC
      vtrace check web1.vtrace
    """
    from vtrace.sources.qemulog import QemuLogError, QemuLogSource
    if output is None:
        output = (log[:-4] if log.endswith(".log") else log) + ".vtrace"
    _refuse_clobber(output, force)
    try:
        src = QemuLogSource(log, vm=vm, types=types, line_time=line_time)
    except QemuLogError as e:
        raise VtraceError(str(e)) from None
    _record(src, output)
    for line in src.summary_lines():
        click.echo(line, err=True)


# report ---------------------------------------------------------------------
def _replay(path: str):
    from vtrace.sources.replay import ReplaySource
    return ReplaySource(path)


@cli.command(context_settings={"max_content_width": 100})
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-j", "--json", "as_json", is_flag=True, help="the report as one JSON object")
@click.option("-a", "--all", "show_all", is_flag=True, help="every queue and every histogram")
@click.option("--hist", "hist_top", type=click.IntRange(min=0), default=6, show_default=True,
              help="latency histograms for the N busiest queues")
def report(file, as_json, show_all, hist_top):
    """Summarize a capture (or a JSON Lines trace).

    Per-queue totals, in flight, latency percentiles and log2 histograms,
    admin commands by opcode and status, kvm and DMA per VM, and the
    lifecycle (suspend/resume, vring base, resets) with what was in flight
    at each stop. A damaged or truncated file is reported up to the damage,
    with a warning naming where it starts.

    \b
    Examples:
      vtrace report run.vtrace
      vtrace report --all run.vtrace | less
      vtrace report -j run.vtrace | jq '.queues[] | {name, p99_ns}'
    """
    from vtrace import report as rep
    from vtrace.aggregate import Aggregator
    from vtrace.check import Checker
    from vtrace.pipeline import Pipeline
    src = _replay(file)
    try:
        snap = Pipeline(src, aggregator=Aggregator(checker=Checker())).run()
    finally:
        src.close()
    if as_json:
        click.echo(json.dumps(rep.report_json(snap), default=str))
    else:
        click.echo(rep.report_text(snap, hist_top=hist_top, show_all=show_all), nl=False)
    if snap.damage:
        click.echo(f"vtrace: warning: {snap.damage}", err=True)


# check ----------------------------------------------------------------------
@cli.command(context_settings={"max_content_width": 100})
@click.argument("file", type=click.Path(dir_okay=False), required=False)
@source_option
@click.option("-d", "--duration", default="10s", show_default=True, callback=_duration, metavar="TIME",
              help="how long to check a --source (not a FILE) for")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), default="error", show_default=True,
              help="exit 1 when a divergence at or above this severity is found")
@click.option("--max-in-flight", "max_inflight", default="1s", show_default=True, callback=_duration,
              metavar="TIME", help="inflight-too-long: how long a buffer may stay in flight")
@click.option("--stall", default="1s", show_default=True, callback=_duration, metavar="TIME",
              help="kick-stall / admin-timeout: how long a kick or admin command may go unanswered")
@click.option("--rule", "rules", multiple=True, metavar="ID", help="check only these rules (repeatable)")
@click.option("-j", "--json", "as_json", is_flag=True, help="the result as one JSON object")
@click.option("-v", "--verbose", count=True, help="more divergences per rule (-v 25, -vv all kept)")
@click.option("--list-rules", is_flag=True, help="print the rule catalogue and exit")
def check(file, source_spec, duration, fail_on, max_inflight, stall, rules, as_json, verbose, list_rules):
    """Check a capture (or a trace, or a source) against the VIRTIO spec.

    Replays the events through the reference device model and reports every
    divergence: grouped by rule, with the spec section and the events that
    prove it (their position in the stream, as `vtrace convert --to jsonl`
    numbers them). Rules whose inputs were not observed say "not checkable"
    rather than pass. Exit status: 0 clean, 1 divergences at or above
    --fail-on, 2 bad input.

    \b
    Examples:
      vtrace check run.vtrace
      vtrace check --fail-on warning run.vtrace
      vtrace check trace.jsonl -j | jq '.divergences[] | .message'
      vtrace check --source sim:fault=signal_missing -d 5s
      vtrace check --list-rules
    """
    from vtrace import checkout
    from vtrace.aggregate import Aggregator
    from vtrace.check import Checker
    from vtrace.pipeline import Pipeline
    if list_rules:
        click.echo(checkout.rules_text(), nl=False)
        return 0
    try:
        checker = Checker(inflight_max_ns=max_inflight, stall_ns=stall, rules=rules or None,
                          keep_per_rule=1000 if verbose > 1 or as_json else 50)
    except ValueError as e:
        raise VtraceError(f"--rule: {e} (see --list-rules)") from None
    if file:
        src, what, dur_ns = _replay(file), file, None
    else:
        live = source_spec.startswith("live")
        src = _open(source_spec, realtime=live, duration_ns=duration)
        what, dur_ns = f"--source {source_spec}", duration
    try:
        pipe = Pipeline(src, aggregator=Aggregator(checker=checker))
        snap = pipe.run(duration_ns=dur_ns)
    finally:
        src.close()
    if snap.source.get("simulated"):
        what += " (a simulated host)"
    span = (snap.ts_end - snap.ts_first) / 1e9 if snap.ts_first is not None else 0.0
    if as_json:
        click.echo(json.dumps(checkout.check_json(checker, what=what, events=snap.events_total, span_s=span,
                                                  fail_on=fail_on, damage=snap.damage)))
    else:
        per = {0: 5, 1: 25}.get(verbose, 1000)
        click.echo(checkout.check_text(checker, what=what, events=snap.events_total, span_s=span,
                                       fail_on=fail_on, per_rule=per, damage=snap.damage,
                                       ts0=snap.ts_first), nl=False)
    if snap.damage:
        click.echo(f"vtrace: warning: {snap.damage}", err=True)
    return 1 if checkout.failed(checker, fail_on) else 0


# convert --------------------------------------------------------------------
@cli.command(context_settings={"max_content_width": 100})
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--to", "fmt", type=click.Choice(["perfetto", "jsonl"]), required=True,
              help="perfetto: Chrome/Perfetto trace JSON; jsonl: one event per line")
@click.option("-o", "--output", metavar="FILE", help="output file, - for stdout (default FILE.json/.jsonl)")
@click.option("-f", "--force", is_flag=True, help="overwrite an existing output file")
def convert(file, fmt, output, force):
    """Convert a capture to Perfetto trace JSON or JSON Lines.

    \b
    Examples:
      vtrace convert run.vtrace --to perfetto     # writes run.json; open in ui.perfetto.dev
      vtrace convert run.vtrace --to jsonl -o - | head
    """
    from vtrace.jsonl import write_jsonl
    from vtrace.perfetto import write_perfetto
    if output is None:
        base = file[:-len(".vtrace")] if file.endswith(".vtrace") else file
        output = base + (".json" if fmt == "perfetto" else ".jsonl")
    if output != "-":
        _refuse_clobber(output, force)
    src = _replay(file)
    tmp = None
    try:
        if output == "-":
            out = sys.stdout
        else:
            tmp = f"{output}.tmp-{os.getpid()}"
            try:
                out = open(tmp, "w", encoding="utf-8")
            except OSError as e:
                raise VtraceError(f"cannot write {output}: {e.strerror}") from None
        header = dict(src.header)
        if fmt == "jsonl":
            n = write_jsonl(out, header, src.batches())
        else:
            n = write_perfetto(out, src.batches())
        if tmp:
            out.close()
            os.replace(tmp, output)
            tmp = None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        src.close()
    if output != "-":
        click.echo(f"wrote {output}: {n:,} events", err=True)
    dmg = src.damage()
    if dmg:
        click.echo(f"vtrace: warning: {dmg}", err=True)


def main() -> None:
    cli(prog_name="vtrace")


if __name__ == "__main__":
    main()
