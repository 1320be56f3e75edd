"""Commands that watch a source as it runs: stat (a table every interval),
export (Prometheus metrics) and top (the TUI)."""

from __future__ import annotations

import json
import sys
import time

import click

from vtrace.cli.options import VtraceError, open_spec, refuse_clobber, source_option
from vtrace.fmt import parse_duration


# stat -----------------------------------------------------------------------
@click.command(context_settings={"max_content_width": 100})
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
    src = open_spec(source_spec, realtime=True, stream=stream)
    label = "simulated host" if src.kind == "sim" else src.kind
    if src.info.get("mode") == "count":
        label += ", counting in kernel"
    click.echo(f"Tracing virtqueues ({label})... Hit Ctrl-C to end.", err=as_json)

    def show(snap):
        qs = report.select(snap, vms=vms, sort=sort, top=top, show_all=show_all)
        if as_json:
            click.echo(json.dumps(report.stat_json(snap, qs, vms), default=str))
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
    src.close()


# export ---------------------------------------------------------------------
@click.command(context_settings={"max_content_width": 100})
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
    from vtrace.runner import new_aggregator
    from vtrace.stop import Stop, stoppable
    try:
        web = ex.WebConfig.load(web_config) if web_config else None
        addr = ex.parse_listen(listen)
    except (ex.WebConfigError, ValueError) as e:
        raise VtraceError(str(e)) from None
    src = open_spec(source_spec, realtime=True, stream=stream)
    agg = new_aggregator(check=bool(check or (check is None and src.info.get("mode", "stream") == "stream")),
                         factory=ex.SharedAggregator)
    try:
        srv = ex.serve(agg, addr, web)
    except OSError as e:
        raise VtraceError(f"cannot listen on {listen}: {e.strerror or e}") from None
    host, port = srv.server_address[:2]
    what = "simulated host" if src.kind == "sim" else src.kind
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
@click.command(context_settings={"max_content_width": 100})
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
        refuse_clobber(record, force)
    src = open_spec(source_spec, realtime=True, stream=stream)
    reopen = None
    if src.kind == "replay":
        from vtrace.sources.replay import ReplaySource
        path = src.path
        reopen = lambda: ReplaySource(path)  # noqa: E731 - seeking re-reads the file
    app = make_app(src, interval=interval_s, record=record, check=check, reopen=reopen, argv=sys.argv[1:])
    app.run()
    if app.feed.error:
        click.echo(f"vtrace: source error: {app.feed.error}", err=True)
    if record:
        click.echo(f"vtrace: recorded {record}", err=True)

