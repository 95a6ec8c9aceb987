"""The ``streamrec`` command line. Each command reads its defaults from ``STREAMREC_*``."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from streamrec.settings import Settings

app = typer.Typer(
    name="streamrec",
    help="A streaming temporal recommender: Kafka events -> graph store -> fresh embeddings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="SQLAlchemy URL of the store [env STREAMREC_STORE; "
                  "default sqlite:///./var/streamrec.db]"),
]
BootstrapOpt = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka HOST:PORT [env STREAMREC_BOOTSTRAP]"),
]
TopicOpt = Annotated[
    str | None, typer.Option("--topic", help="Kafka topic [env STREAMREC_TOPIC; default events]")
]


def _settings(**overrides: object) -> Settings:
    settings = Settings().merged(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # kafka-python warns about its own event-loop timing at WARNING; only errors matter here
    logging.getLogger("kafka").setLevel(logging.ERROR)
    return settings


def _require_bootstrap(settings: Settings) -> str:
    if not settings.bootstrap:
        console.print(
            "[red]error:[/red] no Kafka broker given: pass --bootstrap HOST:PORT or set "
            "STREAMREC_BOOTSTRAP (for development, `streamrec broker` runs a local one)"
        )
        raise typer.Exit(2)
    return settings.bootstrap


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="TCP port to listen on")] = 9092,
    host: Annotated[str, typer.Option(help="address to listen on and advertise")] = "127.0.0.1",
) -> None:
    """Run the bundled local Kafka-compatible broker (memory only; for development and the demo).

    Stops on Ctrl-C. Point other commands at it with --bootstrap HOST:PORT.
    """
    from stream.broker import BrokerUnavailable, LocalBroker

    try:
        local = LocalBroker(port=port, host=host).start()
    except BrokerUnavailable as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"local broker listening on [bold]{local.bootstrap}[/bold] (Ctrl-C to stop)")
    try:
        local.wait()
    except KeyboardInterrupt:
        pass
    finally:
        local.stop()


@app.command()
def produce(
    topic: TopicOpt = None,
    file: Annotated[Path | None, typer.Option("--file", help="read events from this file")] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="movielens (u.data, ratings.dat, ratings.csv), csv "
                          "or jsonl")
    ] = "movielens",
    synthetic: Annotated[
        int | None, typer.Option("--synthetic", help="generate N synthetic events instead")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the synthetic generator")] = 0,
    rate: Annotated[
        float | None, typer.Option(help="send at most this many events per second")
    ] = None,
    partitions: Annotated[
        int | None, typer.Option(help="partitions if the topic must be created [default 4]")
    ] = None,
    user_col: Annotated[str, typer.Option(help="csv/jsonl column of the user id")] = "user_id",
    item_col: Annotated[str, typer.Option(help="csv/jsonl column of the item id")] = "item_id",
    ts_col: Annotated[str, typer.Option(help="csv/jsonl column of the timestamp")] = "ts",
    weight_col: Annotated[str, typer.Option(help="csv/jsonl column of the weight")] = "weight",
    bootstrap: BootstrapOpt = None,
) -> None:
    """Send interaction events to Kafka (key = user id), from a file or a synthetic stream."""
    from tqdm import tqdm

    from stream.producer import EventProducer, ensure_topic
    from stream.sources import ColumnMap, ReadStats, read_events
    from stream.synthetic import generate

    settings = _settings(topic=topic, bootstrap=bootstrap, partitions=partitions)
    server = _require_bootstrap(settings)
    if (file is None) == (synthetic is None):
        console.print("[red]error:[/red] give exactly one of --file PATH or --synthetic N")
        raise typer.Exit(2)
    stats = ReadStats()
    if file is not None:
        columns = ColumnMap(user_id=user_col, item_id=item_col, ts=ts_col, weight=weight_col)
        try:
            events = read_events(file, fmt, columns=columns, stats=stats)
            total = None
        except (FileNotFoundError, ValueError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    else:
        assert synthetic is not None
        events = generate(n_events=synthetic, seed=seed).events()
        total = synthetic
    if ensure_topic(server, settings.topic, settings.partitions):
        console.print(f"created topic {settings.topic!r} with {settings.partitions} partitions")
    with (
        EventProducer(server, settings.topic) as producer,
        tqdm(total=total, unit="ev", desc=f"produce -> {settings.topic}") as bar,
    ):
        try:
            sent = producer.send_all(events, rate=rate, on_sent=bar.update)
        except ValueError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    console.print(f"sent {sent} events to {settings.topic!r}")
    if stats.rejected:
        console.print(f"[yellow]skipped {stats.rejected} invalid lines[/yellow]; first ones:")
        for line, reason in stats.errors[:5]:
            console.print(f"  line {line}: {reason}")


@app.command()
def ingest(
    topic: TopicOpt = None,
    group: Annotated[
        str | None, typer.Option(help="consumer group [env STREAMREC_GROUP]")
    ] = None,
    max_events: Annotated[
        int | None, typer.Option(help="exit after consuming this many messages")
    ] = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="exit after this many seconds without a message")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="records per transaction [default 2000]")
    ] = None,
    store: StoreOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Consume events into the graph store, at-least-once with exactly-once effect.

    Each batch is one database transaction; offsets are committed only after it. Bad
    messages go to the dead_letters table. SIGINT/SIGTERM finish the batch in hand and exit.
    """
    from store.graph import GraphStore
    from stream.consumer import IngestLoop, make_consumer
    from stream.producer import EventProducer

    settings = _settings(
        topic=topic, group=group, store=store, bootstrap=bootstrap, batch_size=batch_size
    )
    server = _require_bootstrap(settings)
    graph = GraphStore(settings.store)
    consumer = make_consumer(
        server, settings.topic, settings.group,
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
    )
    dlq = EventProducer(server, settings.dead_letter_topic) if settings.dead_letter_topic else None
    loop = IngestLoop(
        consumer, graph,
        batch_size=settings.batch_size,
        max_events=max_events,
        idle_exit_s=idle_exit,
        dead_letter_producer=dlq,
        join_grace_s=settings.kafka_max_poll_interval_ms / 1000 + 10,
    )

    def _on_signal(signum: int, _frame: object) -> None:
        console.print(f"{signal.Signals(signum).name}: finishing the current batch")
        loop.stop()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    console.print(f"ingesting {settings.topic!r} (group {settings.group!r}) into {graph!r}")
    try:
        stats = loop.run()
    finally:
        consumer.close(autocommit=False)
        if dlq is not None:
            dlq.close()
    print(f"ingest done: {stats.summary()}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
