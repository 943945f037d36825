"""Run one target of tests/fuzz/targets.py under atheris (coverage-guided):
``python -m tests.fuzz.run_atheris NAME [CORPUS_DIR] [libFuzzer options]``, or ``--list``.

Only lmtpfilter is instrumented, and it must be imported here first, inside
instrument_imports: instrumenting everything loaded (instrument_all) takes minutes.
"""

from __future__ import annotations

import importlib
import sys


def main(argv: list[str]) -> None:
    if argv[1:2] == ["--list"]:
        from tests.fuzz.targets import TARGETS

        print("\n".join(TARGETS))
        return
    # Not a dependency (an optional tool, without type stubs): imported by name so that mypy
    # passes whether it is installed or not.
    atheris = importlib.import_module("atheris")

    with atheris.instrument_imports(include=["lmtpfilter"]):
        import lmtpfilter.config
        import lmtpfilter.headers
        import lmtpfilter.lmtp_events
        import lmtpfilter.lmtp_protocol
        import lmtpfilter.lmtp_server
        import lmtpfilter.message
        import lmtpfilter.options
        import lmtpfilter.reply
        import lmtpfilter.smtp_syntax  # noqa: F401
    from tests.fuzz.targets import TARGETS

    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
