"""The row process: a forked child of a generate batch that turns the teacher's answers into rows
(parse, build, check), records them in the response cache and writes the shards, while the
request loop in the parent only talks HTTP.

Why a process: against a fast endpoint the client's CPU is the limit, and with everything in one
process the loop spent ~0.1 ms per answer on rows, cache and shards (bench/teacher_throughput.py
--regime cpu: ~65 us in the loop's thread, ~40 us in the shard writer's, which holds the GIL for
its Arrow conversion). Threads cannot run that beside the loop under the GIL; a second process
can, on the second core. Forked, not spawned: the child needs the batch's templates, requests and
settings, which it inherits, and a spawned interpreter importing them took 2.5 s of CPU here.

What the parent sends per batch of answers is only (index of the request, reply fields); the child
owns its own catalog connection, answer journal and shard writer, made after the fork.

Guarantees, as in one process: an answer is in the response cache before its rows are written,
and a run that stops in order (the end, Ctrl-C, a failed request loop) has every answer it got in
shards. A kill -9 of the parent alone: the child reads the end of the pipe, journals what it had
been sent and exits without writing shards, as the killed process would have (the next run folds
its journal). A kill -9 of both re-sends at most the requests in flight plus the answers handed
over but not yet journaled, which the parent bounds (WINDOW).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from multiprocessing import Pipe

from flows.settings import row_process_min
from flows.teachers.base import Reply

# Answers handed to the child but not yet journaled, at most; past it the loop waits.
WINDOW = 256
# Fewer requests than this to send: rows are built in the loop (a fork, a catalog connection and
# the first shard's Arrow start-up cost more than they save on a short run).
MIN_REQUESTS = 512
# STAIRS_ROW_PROCESS_MIN overrides it; 0 turns the row process off (flows/settings.py).


def worth_a_row_process(n_requests: int) -> bool:
    if not hasattr(os, "fork"):
        return False
    least = row_process_min(MIN_REQUESTS)
    return least > 0 and n_requests >= least


class RowProcess:
    def __init__(self, requests: list, make_recorder):
        """`requests`: the batch's requests, which the child inherits (answers travel as their
        index); `make_recorder()`: called in the child, a Recorder with its own cache and
        writer (flows/generate/dispatch.py)."""
        self._index = {id(r): i for i, r in enumerate(requests)}
        parent_end, child_end = Pipe()
        sys.stdout.flush()  # nothing buffered is printed twice, by both processes
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            parent_end.close()
            _child(child_end, requests, make_recorder)  # never returns
        child_end.close()
        self._conn = parent_end
        self._handed = self._acked = 0
        self._failed = False  # its failure was raised already

    def send(self, answers, tally, progress) -> None:
        """Hand over answers that arrived together; count what the budget needs here."""
        for _req, reply in answers:
            if not reply.transient:
                tally.prompt_tokens += reply.prompt_tokens or 0
                tally.completion_tokens += reply.completion_tokens or 0
        try:
            self._conn.send([(self._index[id(req)], reply.text, reply.finish_reason,
                              reply.prompt_tokens, reply.completion_tokens, reply.logprobs,
                              reply.error, reply.transient) for req, reply in answers])
        except OSError:  # it has ended: say why (its last words are still in the pipe)
            while True:
                self._receive()
        self._handed += len(answers)
        self._take_acks(block=self._handed - self._acked > WINDOW)
        if progress is not None:
            progress.advance(len(answers))

    def _take_acks(self, *, block: bool) -> None:
        """Count the child's acknowledgements (ints: answers journaled); its counts come only
        after close() asks for them."""
        conn = self._conn
        while block or conn.poll():
            self._acked += self._receive()
            block = self._handed - self._acked > WINDOW

    def _receive(self):
        try:
            message = self._conn.recv()
        except EOFError:
            self._failed = True
            raise RuntimeError(f"the row process {self.pid} ended without a word") from None
        if isinstance(message, tuple) and message[0] == "error":
            self._failed = True
            raise RuntimeError(f"the row process failed: {message[1]}")
        return message

    def close(self) -> dict | None:
        """Ask the child to write what it holds and wait for it: its counts (a dict), the
        child's error raised here, or None when that error was raised before."""
        try:
            if self._failed:
                return None
            try:
                self._conn.send(None)
            except OSError:
                pass  # it is gone; what it said last is still in the pipe
            while not isinstance(message := self._receive(), tuple):
                pass  # acknowledgements of the last answers
            return message[1]
        finally:
            self._conn.close()
            os.waitpid(self.pid, 0)


def _child(conn, requests: list, make_recorder) -> None:
    status = 1
    try:
        # Ctrl-C and SIGTERM reach the whole process group: the parent stops in order and then
        # tells this process to finish, so it must not die of them first.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        recorder = make_recorder()
        while True:
            try:
                batch = conn.recv()
            except EOFError:  # the parent was killed: its answers are journaled, nothing more
                return
            if batch is None:
                break
            recorder.take([(requests[i], Reply(text=text, finish_reason=finish,
                                               prompt_tokens=prompt, completion_tokens=completion,
                                               logprobs=logprobs, error=error,
                                               transient=transient))
                           for i, text, finish, prompt, completion, logprobs, error, transient
                           in batch])
            conn.send(len(batch))
        try:
            recorder.writer.flush()
        finally:
            recorder.cache.close()
        t = recorder.tally
        conn.send(("done", {"answered": t.answered, "unanswered": t.unanswered,
                            "prompt_tokens": t.prompt_tokens,
                            "completion_tokens": t.completion_tokens, "errors": dict(t.errors),
                            "rows_written": recorder.writer.rows_written,
                            "shards": recorder.writer.shards, "pid": os.getpid(),
                            "cpu_s": time.process_time()}))
        status = 0
    except BaseException as e:  # noqa: BLE001 - every failure goes to the parent, then exit
        try:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        except Exception:  # noqa: BLE001
            pass
    finally:
        os._exit(status)  # never back into the parent's stack, atexit handlers or finalizers
