"""Kazoo (Python) in `switchyard bench zk`: creates N ephemeral nodes /bench/n<i> with
create_async, reads them all back with get_async, prints one JSON line and exits WITHOUT
closing its session (closing a session that holds many ephemerals makes ZooKeeper write
all their paths into one transaction, ZOOKEEPER-4306), hence os._exit.

At most `window` requests are in flight (a semaphore released by each result's callback),
as for the bounded Java client and Switchyard's layer; 0 means unbounded.

Run by `switchyard bench zk` from a virtualenv that has `kazoo`; by hand:
    python kazoo_bench.py 127.0.0.1:2181 100000 64 1000
"""

import json
import os
import sys
import threading
import time

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError


def peak_rss_bytes():
    """VmHWM of /proc/self/status, in bytes (0 when unreadable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError as err:
        print(f"kazoo_bench: cannot read /proc/self/status: {err}", file=sys.stderr)
    return 0


class Pipeline:
    """Sends requests with at most `window` outstanding and counts the failed ones."""

    def __init__(self, window, check):
        self.slots = threading.BoundedSemaphore(window) if window > 0 else None
        self.check = check
        self.lock = threading.Lock()
        self.pending = 0
        self.errors = 0
        self.first_error = None
        self.all_done = threading.Event()
        self.sending = True

    def send(self, start_request):
        if self.slots is not None:
            self.slots.acquire()
        with self.lock:
            self.pending += 1
        start_request().rawlink(self._done)

    def _done(self, result):
        try:
            value = result.get_nowait()
            problem = self.check(value)
        except Exception as err:  # a ZooKeeper error code, or a lost connection
            problem = f"{type(err).__name__}: {err}"
        with self.lock:
            if problem is not None:
                self.errors += 1
                if self.first_error is None:
                    self.first_error = problem
            self.pending -= 1
            finished = not self.sending and self.pending == 0
        if self.slots is not None:
            self.slots.release()
        if finished:
            self.all_done.set()

    def wait(self):
        with self.lock:
            self.sending = False
            if self.pending == 0:
                self.all_done.set()
        self.all_done.wait()


def main():
    if len(sys.argv) != 5:
        print("usage: kazoo_bench.py <connect> <nodes> <payload-bytes> <window, 0 = unbounded>",
              file=sys.stderr)
        os._exit(2)
    connect, nodes, payload_bytes, window = (
        sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    payload = b"x" * payload_bytes

    zk = KazooClient(hosts=connect, timeout=6.0)
    zk.start(timeout=60)
    try:
        zk.create("/bench", b"")
    except NodeExistsError:
        pass  # a fresh server has none; tolerate a rerun against the same one

    creates = Pipeline(window, lambda _path: None)
    start = time.perf_counter()
    for i in range(nodes):
        path = f"/bench/n{i}"
        creates.send(lambda path=path: zk.create_async(path, payload, ephemeral=True))
    creates.wait()
    create_secs = time.perf_counter() - start

    def check_read(value):
        data, _stat = value
        return None if len(data) == payload_bytes else "get: wrong payload length"

    reads = Pipeline(window, check_read)
    start = time.perf_counter()
    for i in range(nodes):
        path = f"/bench/n{i}"
        reads.send(lambda path=path: zk.get_async(path))
    reads.wait()
    read_secs = time.perf_counter() - start

    errors = creates.errors + reads.errors
    first = creates.first_error or reads.first_error
    if first is not None:
        print(f"kazoo_bench: {errors} errors; first: {first}", file=sys.stderr)
    print(json.dumps({
        "client": "kazoo",
        "nodes": nodes,
        "create_secs": create_secs,
        "read_secs": read_secs,
        "errors": errors,
        "peak_rss_bytes": peak_rss_bytes(),
    }), flush=True)
    sys.stderr.flush()
    # No zk.stop()/close(): the benchmark kills the server before this session could close.
    os._exit(0)


if __name__ == "__main__":
    main()
