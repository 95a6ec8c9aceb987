"""kill -9 mid-stream, then restart in the same group: what ends up stored and dead-lettered.

    python bench/kill_restart.py [--events 50000] [--malformed 100] [--store URL]
                                 [--max-poll-interval-ms 30000]

Starts the bundled broker, produces ``--events`` synthetic events twice (the replay is
recognised by event id) plus ``--malformed`` bad messages spread over the partitions, runs
`streamrec ingest --no-update` until a fifth of the events is stored, SIGKILLs it (no
LeaveGroup: the dead member stays in the group until its session times out) and at once starts
`streamrec ingest --idle-exit 5` in the same group. Prints stored / expected, duplicates,
dead letters / malformed and how long the restart took. Defaults match `streamrec ingest`
(a 30 s poll interval and session), so the restart waits for the dead member's session.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

from store.graph import GraphStore
from stream.broker import LocalBroker
from stream.producer import EventProducer, ensure_topic
from stream.synthetic import generate


def ingest(bootstrap: str, store: str, poll_ms: int, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "STREAMREC_BOOTSTRAP": bootstrap, "STREAMREC_STORE": store,
           "STREAMREC_KAFKA_MAX_POLL_INTERVAL_MS": str(poll_ms)}
    cmd = [sys.executable, "-m", "streamrec.cli", "ingest", "--topic", "events", "--group",
           "restart", "--no-update", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--malformed", type=int, default=100)
    parser.add_argument("--store", help="SQLAlchemy URL (default: a fresh SQLite file)")
    parser.add_argument("--max-poll-interval-ms", type=int, default=30_000)
    args = parser.parse_args()
    url = args.store or f"sqlite:///{tempfile.mkdtemp(prefix='kill-restart-')}/store.db"
    events = list(generate(n_events=args.events, seed=7).events())
    with LocalBroker() as broker:
        ensure_topic(broker.bootstrap, "events", 4)
        with EventProducer(broker.bootstrap, "events") as producer:
            for _ in range(2):
                producer.send_all(events)
            for k in range(args.malformed):
                producer.send_raw(b'{"user_id": "u", "ts": "%d"' % k, key=b"bad-%d" % k)
        store = GraphStore(url)
        killed = ingest(broker.bootstrap, url, args.max_poll_interval_ms)
        while store.counts()["interactions"] < args.events // 5:
            if killed.poll() is not None:
                sys.exit(f"ingest exited early: {killed.stderr.read() if killed.stderr else ''}")
            time.sleep(0.1)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        at_kill = store.counts()["interactions"]
        started = time.monotonic()
        restart = ingest(broker.bootstrap, url, args.max_poll_interval_ms, "--idle-exit", "5")
        out, err = restart.communicate()
        took = time.monotonic() - started
    counts = store.counts()
    print(f"stored at kill: {at_kill}; restart exit code {restart.returncode} after {took:.1f}s")
    print(out.strip().splitlines()[-1] if out.strip() else err[-2000:])
    print(f"stored / expected: {counts['interactions']} / {len(events)}; "
          f"dead letters / malformed: {counts['dead_letters']} / {args.malformed}; "
          f"'failed on_partitions_revoked' in log: {'failed on_partitions_revoked' in err}")


if __name__ == "__main__":
    main()
