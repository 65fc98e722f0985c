"""verticalft.logs: where the library's log records go once an entry point asks."""

import logging

from verticalft.logs import LineHandler, show_logs


def test_records_reach_the_writer_as_their_bare_message_once(capsys):
    got: list[str] = []
    try:
        show_logs(got.append)
        show_logs(got.append)  # a second command in the same process: still one line per record
        log = logging.getLogger("verticalft.stages.distill")
        log.info("  student %s: done", "s")
        log.warning("  chat template: odd")
        log.debug("hidden")
        logging.getLogger("transformers").warning("not ours")
        assert got == ["  student s: done", "  chat template: odd"]
        show_logs()  # the launched ranks: stdout, flushed per line
        log.info("  teacher cache: reusing x (rank 1)")
        assert capsys.readouterr().out == "  teacher cache: reusing x (rank 1)\n"
    finally:
        pkg = logging.getLogger("verticalft")
        for h in [h for h in pkg.handlers if isinstance(h, LineHandler)]:
            pkg.removeHandler(h)
        pkg.setLevel(logging.NOTSET)
