"""The ``diffseg`` console command: ``train``, ``predict``, ``eval``, ``info`` and ``export`` (a bioimage.io model
package) on folders of images and models, and ``project create | train | status | export`` on the project store
that the napari plugin shares.

A thin argparse front end over ``napari_diffseg.core``: it parses options, reads files through ``core.data.io``,
drives the engine's generators (training events, project rounds, prediction tile progress) with tqdm progress
bars and logs, and maps errors to exit codes. A user mistake (``DiffsegError``, a bad option, an unusable path)
ends with one line ``diffseg: error: <message>`` on stderr and exit code 2; an unexpected failure prints one line
plus a hint to rerun with ``--debug`` (which shows the traceback) and exits 1; Ctrl-C exits 130 (training saves
``last.pt`` first and says how to resume), and SIGTERM / SIGHUP do the same with exit 143 / 129 (``_signals``).
Torch is imported lazily so ``diffseg --help`` is instant.
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
from io import StringIO
import sys

from napari_diffseg.cli._common import EXIT_INTERRUPTED, EXIT_OK, EXIT_UNEXPECTED, EXIT_USER_ERROR, PROG  # noqa: F401
from napari_diffseg.cli._output import _logging, _TrainDisplay  # noqa: F401 (_TrainDisplay: tests drive it)
from napari_diffseg.cli._parser import _UsageError, build_parser
from napari_diffseg.cli._signals import signals_as_interrupt, stop_description
from napari_diffseg.core.errors import DiffsegError
from napari_diffseg.core.data.io import one_line


def _error(message: str) -> None:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)


_ANSWERING_COMMANDS = frozenset({"_cmd_eval", "_cmd_info", "_cmd_project_status"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 unexpected failure, 2 user mistake, 130 Ctrl-C,
    143 SIGTERM, 129 SIGHUP)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as error:
        _error(str(error))
        return EXIT_USER_ERROR
    except SystemExit as exit_:  # --help, --version
        return int(exit_.code or 0)
    # -q: nothing but warnings and errors from the commands that work; those that answer a question (eval, info,
    # project status) still print their answer
    silent = args.quiet and args.handler.__name__ not in _ANSWERING_COMMANDS
    with _logging(args.quiet, args.verbose), contextlib.redirect_stdout(StringIO()) if silent \
            else contextlib.nullcontext(), signals_as_interrupt() as stop:
        try:
            return stop.exit_code(args.handler(args, argv))
        except DiffsegError as error:
            _error(str(error))
            return EXIT_USER_ERROR
        except KeyboardInterrupt as interrupt:
            print(f"{PROG}: {stop_description(interrupt)}", file=sys.stderr)
            return stop.exit_code(EXIT_INTERRUPTED)
        except OSError as error:  # permissions, full disk, ...: fixable by the user
            if args.debug:
                raise
            where = f"{error.filename}: " if getattr(error, "filename", None) else ""
            _error(f"{where}{error.strerror or error}")
            return EXIT_USER_ERROR
        except Exception as error:
            if args.debug:
                raise
            hint = ""
            if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
                hint = " (out of memory: try a smaller --patch-size / --batch-size / --tile, or --device cpu)"
            _error(f"unexpected {type(error).__name__}: {error}{hint}; run with --debug for the traceback")
            return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
