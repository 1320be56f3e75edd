"""What every vtrace command shares: the one-line error, the TIME and
--source options, opening a source, and not overwriting files unasked."""

from __future__ import annotations

import os

import click

from vtrace.fmt import parse_duration

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


class VtraceError(click.ClickException):
    exit_code = EXIT_BAD_INPUT

    def show(self, file=None) -> None:
        click.echo(f"vtrace: {self.message}", err=True)


def parse_time(_ctx, _param, value):
    """Option callback: a TIME (10s, 500ms, 2m) in nanoseconds."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


SOURCE_HELP = ("where events come from: auto (live when it can run here, else the simulator), live, "
               "live:PROGRAM,... (only those probe programs, e.g. live:vhost,kvm), "
               "sim, sim:KEY=VAL,... (seed, vms, workload=mixed|net|blk, scale, ring, ...), replay:FILE, "
               "qemu:LOG (QEMU's virtio trace events)")


def source_option(f):
    return click.option("--source", "source_spec", default="auto", show_default=True, metavar="SPEC",
                        help=SOURCE_HELP)(f)


def open_spec(spec: str, *, realtime: bool, duration_ns: int | None = None, stream: bool = True):
    """The source a --source SPEC names; a fallback notice goes to stderr."""
    from vtrace.sources import open_source
    src, notice = open_source(spec, realtime=realtime, duration_ns=duration_ns, stream=stream)
    if notice:
        click.echo(f"vtrace: {notice}", err=True)
    return src


def replay(path: str):
    """A capture or JSON Lines trace, as a source."""
    from vtrace.sources.replay import ReplaySource
    return ReplaySource(path)


def refuse_clobber(output: str, force: bool) -> None:
    if os.path.exists(output) and not force:
        raise VtraceError(f"{output} exists (use --force to overwrite)")
