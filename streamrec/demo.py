"""`streamrec demo`: the whole loop on embedded defaults, paced for a terminal.

local broker -> synthetic stream -> ingest into SQLite -> full retrain -> live loop (a user's
top-10 before and after a burst of new events) -> evaluation report. Every step runs the same
code the real commands run; only the sizes are small.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from store.embeddings import EmbeddingStore
from store.graph import GraphStore, WriteResult
from stream.broker import LocalBroker
from stream.consumer import IngestLoop, IngestStats, join_timeout_s, make_consumer
from stream.events import Event
from stream.producer import EventProducer, ensure_topic
from stream.synthetic import DAY, SyntheticStream, generate
from streamrec.live import LiveUpdater
from streamrec.queries import QueryService
from streamrec.retrain import RetrainPlan, retrain


@dataclass
class DemoConfig:
    """Sizes and places of the demo (defaults finish in about two minutes on 2 cores)."""

    events: int = 20_000
    burst: int = 12
    model: str = "trend"
    epochs: int = 5
    seed: int = 7
    store: str = "sqlite:///./var/demo.db"
    out: Path = Path("var/demo-report")
    bootstrap: str | None = None
    topic: str = "demo-events"
    max_poll_interval_ms: int = 3000


@dataclass
class DemoSummary:
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, step: str, seconds: float, what: str) -> None:
        self.rows.append((step, f"{seconds:.1f}s", what))

    def table(self) -> Table:
        table = Table(title="streamrec demo")
        for name in ("step", "time", "result"):
            table.add_column(name)
        for row in self.rows:
            table.add_row(*row)
        return table


@contextlib.contextmanager
def _broker(bootstrap: str | None, console: Console) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    with LocalBroker() as local:
        console.print(f"started the bundled broker at [bold]{local.bootstrap}[/bold]")
        yield local.bootstrap


def _ingest(
    bootstrap: str, cfg: DemoConfig, group: str, store: GraphStore, n: int,
    on_batch: Callable[[WriteResult], None] | None = None,
) -> IngestStats:
    consumer = make_consumer(bootstrap, cfg.topic, group,
                             max_poll_interval_ms=cfg.max_poll_interval_ms)
    try:
        loop = IngestLoop(consumer, store, max_events=n, idle_exit_s=10.0, on_batch=on_batch,
                          join_grace_s=join_timeout_s(cfg.max_poll_interval_ms))
        return loop.run()
    finally:
        consumer.close(autocommit=False)


def _burst(stream: SyntheticStream, user: int, n: int, rng: np.random.Generator) -> list[Event]:
    """``n`` new events of ``user`` on items of a taste the user has not shown so far."""
    mine = stream.item_topic[stream.item[stream.user == user]]
    shown = np.bincount(mine, minlength=stream.config.n_topics)
    new_topic = int(np.argmin(shown))
    candidates = np.flatnonzero(stream.item_topic == new_topic)
    counts = np.bincount(stream.item, minlength=len(stream.item_topic))[candidates]
    popular = candidates[np.argsort(-counts, kind="stable")][: max(n, 1)]
    t0 = float(stream.ts[-1]) + 60.0
    picks = rng.choice(popular, size=n, replace=len(popular) < n)
    return [Event.create(f"u{user}", f"i{int(i)}", t0 + 30.0 * k) for k, i in enumerate(picks)]


def _top_table(title: str, before: dict, after: dict) -> Table:
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("before")
    table.add_column("after")
    old = {r["item_id"] for r in before["items"]}
    for rank, (b, a) in enumerate(zip(before["items"], after["items"], strict=False), 1):
        mark = "" if a["item_id"] in old else " [green](new)[/green]"
        table.add_row(str(rank), b["item_id"], a["item_id"] + mark)
    return table


def run_demo(cfg: DemoConfig, console: Console | None = None) -> DemoSummary:
    """Run the demo; returns the summary rows (also printed)."""
    console = console or Console()
    summary = DemoSummary()
    db_path = Path(cfg.store.split(":///", 1)[1]) if cfg.store.startswith("sqlite:///") else None
    if db_path is not None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    rng = np.random.default_rng(cfg.seed)
    with _broker(cfg.bootstrap, console) as bootstrap:
        graph = GraphStore(cfg.store)
        embeddings = EmbeddingStore(graph.engine)

        console.rule("1. produce a synthetic stream")
        t = time.perf_counter()
        stream = generate(n_events=cfg.events, seed=cfg.seed, days=21.0)
        ensure_topic(bootstrap, cfg.topic, 4)
        from tqdm import tqdm

        with EventProducer(bootstrap, cfg.topic) as producer, tqdm(
            total=cfg.events, unit="ev", desc="produce"
        ) as bar:
            producer.send_all(stream.events(), on_sent=bar.update)
        summary.add("produce", time.perf_counter() - t,
                    f"{cfg.events:,} events, {len(np.unique(stream.user)):,} users, "
                    f"{len(np.unique(stream.item)):,} items over 21 days")

        console.rule("2. ingest into the graph store")
        t = time.perf_counter()
        group = f"demo-{uuid.uuid4().hex[:6]}"  # one group: the burst continues after the stream
        stats = _ingest(bootstrap, cfg, group, graph, cfg.events)
        summary.add("ingest", time.perf_counter() - t,
                    f"stored {stats.stored:,}, duplicates {stats.duplicates}, "
                    f"dead letters {stats.dead_letters}")
        console.print(f"ingest: {stats.summary()}")

        console.rule(f"3. full retrain ({cfg.model})")
        t = time.perf_counter()
        info = retrain(graph, embeddings, RetrainPlan(model=cfg.model, epochs=cfg.epochs,
                                                      seed=cfg.seed))
        summary.add("retrain", time.perf_counter() - t,
                    f"{info.name} active, valid recall@20="
                    f"{info.metrics.get('valid_recall@20', float('nan')):.3f}")

        console.rule("4. live loop: a burst of one user's events")
        service = QueryService(graph, embeddings)
        active = np.bincount(stream.user)
        user = int(np.argsort(-active, kind="stable")[len(active) // 10])
        before = service.recommend(f"u{user}", k=10)
        burst = _burst(stream, user, cfg.burst, rng)
        t = time.perf_counter()
        live = LiveUpdater(graph, embeddings)
        live(WriteResult())  # load the base and its updater before the burst arrives
        with EventProducer(bootstrap, cfg.topic) as producer:
            producer.send_all(burst)
        _ingest(bootstrap, cfg, group, graph, len(burst), on_batch=live)
        service.refresh()
        after = service.recommend(f"u{user}", k=10)
        changed = len({r["item_id"] for r in after["items"]}
                      - {r["item_id"] for r in before["items"]})
        console.print(_top_table(f"top-10 of u{user} before and after {cfg.burst} new events",
                                 before, after))
        emb = service.embedding("user", f"u{user}")
        summary.add("live loop", time.perf_counter() - t,
                    f"u{user}: {changed} of 10 recommendations changed; embedding from "
                    f"{emb['source']} (incremental update, no retrain)")

        console.rule("5. evaluation report")
        t = time.perf_counter()
        from evaluation.runner import run_evaluation
        from models import make_model

        snapshot = graph.snapshot()
        result = run_evaluation(
            snapshot, [cfg.model],
            model_factory=lambda name, **kw: make_model(name, **{**_epochs(name, cfg.epochs),
                                                                 **kw}),
            seed=cfg.seed, out_dir=str(cfg.out), dataset_name="demo synthetic stream",
            max_windows=2, n_bootstrap=200,
        )
        top = result["headline"]
        served = top["entries"][cfg.model]
        summary.add("evaluate", time.perf_counter() - t,
                    f"served {cfg.model} recall@20 {served['value']:.3f} = "
                    f"{served['ratio']:.2f}x the best trending list ({top['best_baseline']} "
                    f"{top['best_baseline_value']:.3f}); report in {cfg.out}/report.html")
        graph.engine.dispose()
    console.print(summary.table())
    console.print(f"report: {cfg.out / 'report.md'}  store: {cfg.store}")
    return summary


def _epochs(name: str, epochs: int) -> dict[str, object]:
    """The demo's short training, passed to the model or to the ranker's base."""
    from models import model_arguments

    accepted = model_arguments(name)
    if "epochs" in accepted:
        return {"epochs": epochs}
    return {"base_kwargs": {"epochs": epochs}} if "base_kwargs" in accepted else {}


__all__ = ["DAY", "DemoConfig", "DemoSummary", "run_demo"]
