"""vtrace command line: the click group; each command parses, builds objects, runs.

The commands live by family: watch.py (stat, export, top), record.py
(capture, import), files.py (report, check, convert), diagnose.py (doctor,
probes); options.py holds what they share. Bad input ends in one line on
stderr ("vtrace: ...") and exit status 2; never a traceback (VTRACE_DEBUG=1
shows one for internal errors).
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from vtrace import __version__
from vtrace.cli import diagnose, files, record, watch
from vtrace.cli.options import EXIT_INTERNAL, VtraceError

__all__ = ["cli", "main", "VtraceError"]


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


for _command in (watch.stat, watch.export, watch.top, record.capture, record.import_, files.report,
                 files.check, files.convert, diagnose.doctor, diagnose.probes):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="vtrace")
