"""Commands that read a capture (or a JSON Lines trace): report, check (which
also takes a --source) and convert."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from vtrace.cli.options import VtraceError, open_spec, parse_time, refuse_clobber, replay, source_option


@click.command(context_settings={"max_content_width": 100})
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
    from vtrace.pipeline import Pipeline
    from vtrace.runner import new_aggregator
    src = replay(file)
    try:
        snap = Pipeline(src, aggregator=new_aggregator(check=True)).run()
    finally:
        src.close()
    if as_json:
        click.echo(json.dumps(rep.report_json(snap), default=str))
    else:
        click.echo(rep.report_text(snap, hist_top=hist_top, show_all=show_all), nl=False)
    if snap.damage:
        click.echo(f"vtrace: warning: {snap.damage}", err=True)


# check ----------------------------------------------------------------------
@click.command(context_settings={"max_content_width": 100})
@click.argument("file", type=click.Path(dir_okay=False), required=False)
@source_option
@click.option("-d", "--duration", default="10s", show_default=True, callback=parse_time, metavar="TIME",
              help="how long to check a --source (not a FILE) for")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), default="error", show_default=True,
              help="exit 1 when a divergence at or above this severity is found")
@click.option("--max-in-flight", "max_inflight", default="1s", show_default=True, callback=parse_time,
              metavar="TIME", help="inflight-too-long: how long a buffer may stay in flight")
@click.option("--stall", default="1s", show_default=True, callback=parse_time, metavar="TIME",
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
        src, what, dur_ns = replay(file), file, None
    else:
        live = source_spec.startswith("live")
        src = open_spec(source_spec, realtime=live, duration_ns=duration)
        what, dur_ns = f"--source {source_spec}", duration
        if src.kind == "live":  # attached: what happens from here on is checked
            click.echo("Checking virtqueues (live)... Hit Ctrl-C to end.", err=True)
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
@click.command(context_settings={"max_content_width": 100})
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
        refuse_clobber(output, force)
    src = replay(file)
    try:
        with _written_whole(output) as out:
            header = dict(src.header)
            if fmt == "jsonl":
                n = write_jsonl(out, header, src.batches())
            else:
                n = write_perfetto(out, src.batches())
    finally:
        src.close()
    if output != "-":
        click.echo(f"wrote {output}: {n:,} events", err=True)
    dmg = src.damage()
    if dmg:
        click.echo(f"vtrace: warning: {dmg}", err=True)


@contextlib.contextmanager
def _written_whole(output: str):
    """A text stream for ``output`` (- is stdout) that appears under its name
    only once the block ends without error: it is written beside it as
    OUTPUT.tmp-PID and renamed over it, or removed on failure."""
    if output == "-":
        yield sys.stdout
        return
    tmp = f"{output}.tmp-{os.getpid()}"
    try:
        out = open(tmp, "w", encoding="utf-8")
    except OSError as e:
        raise VtraceError(f"cannot write {output}: {e.strerror}") from None
    try:
        with out:
            yield out
        os.replace(tmp, output)
        tmp = None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
