"""Commands that say whether live tracing can run here and what attaches:
doctor (the checks, then every probe point) and probes (each point's
strategy and status, or its runs and cost with BPF statistics on)."""

from __future__ import annotations

import json
import time

import click

from vtrace.cli.options import VtraceError, parse_time


@click.command(context_settings={"max_content_width": 100})
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
    from vtrace import probetable
    checks = doc.run_all()
    points = []
    if doc.passed(checks):
        points = _attach_all()
    ok = doc.passed(checks) and any(p.attached for p in points)
    if as_json:
        click.echo(json.dumps({"ok": ok, "checks": [c.__dict__ for c in checks],
                               "points": [p.__dict__ for p in points]}, indent=1))
    else:
        _echo(doc.lines(checks))
        if points:
            click.echo("")
            _echo(probetable.status_lines(points))
        click.echo("\n" + ("live tracing can run here (--source live)" if ok else
                           "live tracing cannot run here; use --source sim, or fix the FAIL lines above"))
    return 0 if ok else 1


@click.command(context_settings={"max_content_width": 100})
@click.option("--ebpf", is_flag=True, hidden=True, help="print the BPF programs that would be loaded, and exit")
@click.option("-j", "--json", "as_json", is_flag=True, help="one JSON object per point")
@click.option("--stats", "stats_for", callback=parse_time, metavar="TIME",
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
    from vtrace import probetable
    from vtrace.live.source import LiveError, LiveSource
    from vtrace.sources import live_available
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
        _echo(probetable.status_lines(points))
    return 0 if any(p.attached for p in points) else 1


def _echo(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


def _attach_all():
    """Attach every point once, detach, and return each point's status."""
    from vtrace.live.source import LiveError, LiveSource
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


def _probe_stats(duration_ns: int, as_json: bool, stream: bool) -> int:
    """Attach everything, count with kernel.bpf_stats_enabled for a while, report per point."""
    from vtrace import probetable
    from vtrace.kernel import bpfstats
    from vtrace.live.source import LiveError, LiveSource
    from vtrace.stop import Stop, stoppable
    try:
        with bpfstats.enabled():
            src = LiveSource(stream=stream)
            try:
                src.start()
            except LiveError as e:
                raise VtraceError(str(e)) from None
            click.echo(f"Counting for {duration_ns / 1e9:g} s with BPF statistics on... Hit Ctrl-C to end.",
                       err=True)
            try:
                with stoppable():
                    time.sleep(duration_ns / 1e9)
            except (KeyboardInterrupt, Stop):
                pass
            rows = src.prog_stats()
            src.close()
            status = {p.point: p for p in src.probes()}
    except bpfstats.BpfStatsError as e:
        raise VtraceError(str(e)) from None
    if as_json:
        for row in probetable.stats_json(rows, status):
            click.echo(json.dumps(row))
    else:
        _echo(probetable.stats_lines(rows, status))
    return 0
