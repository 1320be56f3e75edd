"""Commands that write a capture file: capture (from a source) and import
(another tool's trace, read as a source)."""

from __future__ import annotations

import os
import sys
import time

import click

from vtrace.cli.options import VtraceError, open_spec, parse_time, refuse_clobber, source_option


# capture --------------------------------------------------------------------
@click.command(context_settings={"max_content_width": 100})
@click.option("-d", "--duration", callback=parse_time, metavar="TIME",
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
    refuse_clobber(output, force)
    if realtime is None:
        realtime = duration is None
    src = open_spec(source_spec, realtime=realtime, duration_ns=duration)
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


# import -----------------------------------------------------------------------
@click.group("import", context_settings={"max_content_width": 100})
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
    refuse_clobber(output, force)
    try:
        src = QemuLogSource(log, vm=vm, types=types, line_time=line_time)
    except QemuLogError as e:
        raise VtraceError(str(e)) from None
    _record(src, output)
    for line in src.summary_lines():
        click.echo(line, err=True)

