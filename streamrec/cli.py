"""The ``streamrec`` command line. Each command reads its defaults from ``STREAMREC_*``."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from streamrec.settings import Settings

#: the model retrain, schedule and run fit when none is named; `evaluate` evaluates it: the
#: trend-aware ranker over LightGCN base embeddings (models/trend)
DEFAULT_MODEL = "trend"
#: what `evaluate` evaluates without --models: what retrain serves, then the base embedding
#: models (the trending baselines are always added); extend it with a new served model
EVALUATE_MODELS: tuple[str, ...] = tuple(dict.fromkeys((DEFAULT_MODEL, "lightgcn", "pinsage")))

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
    typer.Option("--store", help="SQLAlchemy URL of the store (env STREAMREC_STORE; "
                  "default sqlite:///./var/streamrec.db)"),
]
BootstrapOpt = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka HOST:PORT (env STREAMREC_BOOTSTRAP)"),
]
TopicOpt = Annotated[
    str | None, typer.Option("--topic", help="Kafka topic (env STREAMREC_TOPIC; default events)")
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
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader narrates each attempt
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

    local = LocalBroker(port=port, host=host)
    stop_requested: list[str] = []

    def _stop(signum: int, _frame: object) -> None:
        stop_requested.append(signal.Signals(signum).name)

    # handlers first: a Ctrl-C during start-up must not leave the broker behind
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        local.start()
    except BrokerUnavailable as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"local broker listening on [bold]{local.bootstrap}[/bold] (Ctrl-C to stop)")
    try:
        while local.running and not stop_requested:
            time.sleep(0.1)
    finally:
        if stop_requested:
            console.print(f"{stop_requested[0]}: stopping the broker")
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
        int | None, typer.Option(help="partitions if the topic must be created (default 4)")
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
        str | None, typer.Option(help="consumer group (env STREAMREC_GROUP)")
    ] = None,
    max_events: Annotated[
        int | None, typer.Option(help="exit after consuming this many messages")
    ] = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="exit after this many seconds without a message")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="records per transaction (default 2000)")
    ] = None,
    update: Annotated[
        bool, typer.Option("--update/--no-update", help="run the incremental updater on each "
                           "batch (overlay rows of the active version)")
    ] = True,
    drift_retrain: Annotated[
        bool, typer.Option("--drift-retrain/--no-drift-retrain", help="watch the prequential "
                           "hit-rate@20 with ADWIN and ask `streamrec schedule` for an early "
                           "retrain on a drop (env STREAMREC_DRIFT_RETRAIN; default off)")
    ] = False,
    drift_model: Annotated[
        str, typer.Option(help="model of a drift-triggered retrain")
    ] = DEFAULT_MODEL,
    metrics_port: Annotated[
        int | None, typer.Option(help="serve Prometheus metrics (consumer lag, event counts, "
                                 "update latency) at http://0.0.0.0:PORT/metrics; 0: off "
                                 "(env STREAMREC_METRICS_PORT; default off)")
    ] = None,
    store: StoreOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Consume events into the graph store, at-least-once with exactly-once effect.

    Each batch is one database transaction; offsets are committed only after it. Bad
    messages go to the dead_letters table. SIGINT/SIGTERM finish the batch in hand and exit.
    """
    from store.embeddings import EmbeddingStore
    from store.engine import WalCheckpointer
    from store.graph import GraphStore
    from stream.consumer import IngestLoop, join_timeout_s, make_consumer
    from stream.producer import EventProducer
    from stream.retry import RetryPolicy

    settings = _settings(
        topic=topic, group=group, store=store, bootstrap=bootstrap, batch_size=batch_size,
        metrics_port=metrics_port,
    )
    server = _require_bootstrap(settings)
    metrics = metrics_server = None
    if settings.metrics_port:
        from streamrec.metrics import serve_ingest_metrics

        try:
            metrics, metrics_server = serve_ingest_metrics(settings.metrics_port)
        except OSError as exc:
            # checked before joining the group, so a taken port costs no rebalance
            console.print(f"[red]error:[/red] cannot serve metrics on port "
                          f"{settings.metrics_port}: {exc}; pick a free --metrics-port")
            raise typer.Exit(2) from exc
        console.print(f"metrics on http://0.0.0.0:{settings.metrics_port}/metrics")
    graph = GraphStore(settings.store)
    embeddings = EmbeddingStore(graph.engine)  # one per process: updater and drift share it
    consumer = make_consumer(
        server, settings.topic, settings.group,
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
    )
    dlq = EventProducer(server, settings.dead_letter_topic) if settings.dead_letter_topic else None
    retry = RetryPolicy()  # the event write and every update hook wait outages out alike
    live = None
    if update:
        import torch

        from streamrec.live import LiveUpdater

        # measured: 1 thread is ~6x faster than 2 on a loaded 2-core machine (OpenMP spin)
        torch.set_num_threads(settings.torch_threads)
        live = LiveUpdater(graph, embeddings, retry=retry, settle_every=settings.settle_every)
    # the update latency histogram times the updater alone, as `streamrec run` does
    update_hook = live if metrics is None or live is None else metrics.timed(live)
    on_batch = update_hook
    if drift_retrain or settings.drift_retrain:
        from streamrec.drift import DriftHook, PrequentialDrift, chain, retried, service_top_k
        from streamrec.queries import QueryService
        from streamrec.scheduler import RetrainScheduler

        service = QueryService(graph, embeddings)
        early = RetrainScheduler(settings.store, model=drift_model)  # never started here
        drift = PrequentialDrift(service_top_k(service, k=20), on_drift=early.trigger_early,
                                 enabled=True, sample_every=10)
        drift_hook = retried(DriftHook(drift, service), retry, lambda: loop.stopping)
        on_batch = chain(drift_hook, update_hook)
        console.print("drift watch on: a hit-rate drop asks the scheduler for an early retrain")
    if metrics is not None:
        on_batch = metrics.counted(on_batch)
    loop = IngestLoop(
        consumer, graph,
        batch_size=settings.batch_size,
        max_events=max_events,
        idle_exit_s=idle_exit,
        retry=retry,
        dead_letter_producer=dlq,
        join_grace_s=join_timeout_s(settings.kafka_max_poll_interval_ms),
        on_batch=on_batch,
        on_lag=None if metrics is None else metrics.set_lags,
    )

    def _on_signal(signum: int, _frame: object) -> None:
        console.print(f"{signal.Signals(signum).name}: finishing the current batch")
        loop.stop()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    console.print(f"ingesting {settings.topic!r} (group {settings.group!r}) into {graph!r}")
    if live is not None:
        live.should_stop = lambda: loop.stopping
    try:
        # the watcher replays a new base and folds in other processes' events between batches
        with WalCheckpointer(graph.engine), live or contextlib.nullcontext():
            stats = loop.run()
    finally:
        consumer.close(autocommit=False)
        if dlq is not None:
            dlq.close()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    line = f"ingest done: {stats.summary()}"
    if live is not None:
        ls = live.stats
        line += (f" updated_events={ls.events} replayed={ls.replayed_events} "
                 f"rewinds={ls.rewinds} rebuilds={ls.rebuilds} overlay_rows={ls.rows_written} "
                 f"update_seconds={ls.seconds:.1f}")
    print(line)


def _parse_ts(value: str | None) -> float | None:
    """Epoch seconds (or ms) or ISO-8601 with zone -> epoch seconds."""
    if value is None:
        return None
    from stream.events import InvalidEvent, parse_timestamp

    try:
        return parse_timestamp(value)
    except InvalidEvent as exc:
        console.print(f"[red]error:[/red] {exc.reason.replace('field ' + repr('ts'), 'TS')}")
        raise typer.Exit(2) from None


@app.command()
def items(
    file: Annotated[Path, typer.Argument(help="movies.dat (id::Title (year)::Genre|Genre), "
                                         "MovieLens-100K u.item, MovieLens movies.csv, or a "
                                         "CSV with item_id, year and tags (|-separated) "
                                         "columns")],
    store: StoreOpt = None,
) -> None:
    """Import items' metadata (tags such as genres, release year) into the store.

    The trend ranker's next retrain adds each user's tag and release-age affinities to its
    score, with weights chosen on validation (0 when they do not help). Rows are keyed by
    item id: an import replaces earlier metadata of the same items, and items without events
    yet get their content when their first event arrives.
    """
    from store.graph import GraphStore
    from store.item_metadata import ItemMetadata
    from stream.item_metadata import read_items

    try:
        records, stats = read_items(file)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if not records:
        first = f" (line {stats.errors[0][0]}: {stats.errors[0][1]})" if stats.errors else ""
        console.print(f"[red]error:[/red] {file} holds no item record{first}")
        raise typer.Exit(2)
    graph = GraphStore(_settings(store=store).store)
    meta = ItemMetadata(graph)
    written = meta.write(records)
    known = len(graph.node_index("item", (r.item_id for r in records)))
    print(f"imported {written} items ({stats.rejected} lines rejected); {known} of them have "
          f"events in the store, {meta.count()} items have metadata")


@app.command()
def retrain(
    model: Annotated[str, typer.Option(
        help="trend (the trend-aware ranker over LightGCN embeddings), lightgcn, pinsage, mf "
             "or popularity")] = DEFAULT_MODEL,
    cutoff: Annotated[
        str | None, typer.Option(help="use events up to this time (epoch s or ISO-8601)")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="training epochs (model default)")] = None,
    dim: Annotated[int | None, typer.Option(help="embedding dimension (model default 64)")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    keep: Annotated[int, typer.Option(help="embedding versions to keep")] = 3,
    processes: Annotated[int, typer.Option(
        min=1, help="fit LightGCN / MF-BPR (the trend ranker's base too) data-parallel in "
                    "this many local processes (torch.distributed, gloo): the same "
                    "embeddings as one process within float tolerance")] = 1,
    job_id: Annotated[str | None, typer.Option(
        hidden=True, help="run the retrain job the scheduler claimed for this process")] = None,
    store: StoreOpt = None,
) -> None:
    """Full retrain from the store snapshot; writes and activates a new embedding version.

    A failed retrain leaves the previous version serving. It takes the store's one retrain
    slot (table retrain_jobs), as scheduled and HTTP retrains do: while another retrain runs
    it exits with status 75 and says which.
    """
    from store.embeddings import EmbeddingStore
    from store.graph import GraphStore
    from store.retrain_jobs import RetrainJobStore
    from streamrec.retrain import RetrainError, RetrainPlan
    from streamrec.retrain import retrain as run_retrain
    from streamrec.retrain_runner import RetrainBusy, RetrainSlot

    settings = _settings(store=store)
    plan = RetrainPlan(model=model, cutoff=_parse_ts(cutoff), epochs=epochs, dim=dim, seed=seed,
                       keep=keep, processes=processes)
    graph = GraphStore(settings.store)
    jobs = RetrainJobStore(graph.engine)
    try:
        slot = (RetrainSlot.adopt(jobs, job_id) if job_id is not None else RetrainSlot.claim(
            jobs, model, {"epochs": epochs, "dim": dim, "cutoff": plan.cutoff}, origin="cli"))
    except RetrainBusy as exc:
        console.print(f"[red]error:[/red] another retrain is running: {exc}; wait for it to "
                      "finish and try again")
        raise typer.Exit(75) from None
    except KeyError as exc:  # --job-id of a job that is no longer live
        console.print(f"[red]error:[/red] {exc.args[0]}")
        raise typer.Exit(1) from None
    try:
        with slot:
            info = run_retrain(graph, EmbeddingStore(graph.engine), plan)
            slot.succeeded(info)
    except RetrainError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in info.metrics.items())
    print(f"{info.name} active: model={info.model} cutoff={info.cutoff:.0f} dim={info.dim} "
          f"users={info.num_users} items={info.num_items} {metrics}")


def _query_service(store: str | None):  # type: ignore[no-untyped-def]
    from store.embeddings import EmbeddingStore
    from store.graph import GraphStore
    from streamrec.queries import QueryService

    settings = _settings(store=store)
    graph = GraphStore(settings.store)
    return QueryService(graph, EmbeddingStore(graph.engine))


def _answer(fn, as_json: bool, render) -> None:  # type: ignore[no-untyped-def]
    """Run a query, print JSON or a table; map domain errors to exit codes."""
    import json

    from store.embedding_schema import NoActiveVersionError
    from streamrec.queries import UnknownItem, UnknownUser

    try:
        result = fn()
    except NoActiveVersionError:
        console.print("[red]error:[/red] no embedding version is active yet: run "
                      "`streamrec retrain` first")
        raise typer.Exit(1) from None
    except (UnknownItem, UnknownUser, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc.args[0] if exc.args else exc}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(result))
    else:
        render(result)


def _render_items(title: str, result: dict) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("item_id")
    table.add_column("score", justify="right")
    for rank, row in enumerate(result["items"], start=1):
        table.add_row(str(rank), row["item_id"], f"{row['score']:.4f}")
    Console().print(table)


@app.command()
def recommend(
    user: Annotated[str, typer.Option("--user", help="external user id")],
    k: Annotated[int, typer.Option("-k", "--k", help="how many items")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    store: StoreOpt = None,
) -> None:
    """Top-K items the user has not seen (recent popularity for unknown users)."""
    service = _query_service(store)

    def render(r: dict) -> None:
        note = " (popular fallback: unknown user)" if r["fallback"] else ""
        _render_items(f"top {k} for {r['user_id']} from {r['version']}{note}", r)

    _answer(lambda: service.recommend(user, k), as_json, render)


@app.command()
def similar(
    item: Annotated[str, typer.Option("--item", help="external item id")],
    k: Annotated[int, typer.Option("-k", "--k", help="how many items")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    store: StoreOpt = None,
) -> None:
    """The K nearest items to an item (never the item itself)."""
    service = _query_service(store)
    _answer(lambda: service.similar(item, k), as_json,
            lambda r: _render_items(f"{k} items similar to {r['item_id']}", r))


@app.command()
def embedding(
    user: Annotated[str | None, typer.Option("--user", help="external user id")] = None,
    item: Annotated[str | None, typer.Option("--item", help="external item id")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    store: StoreOpt = None,
) -> None:
    """The merged embedding of a user or an item (overlay if fresher, else base)."""
    if (user is None) == (item is None):
        console.print("[red]error:[/red] give exactly one of --user U or --item I")
        raise typer.Exit(2)
    service = _query_service(store)
    kind, node = ("user", user) if user is not None else ("item", item)
    assert node is not None

    def render(r: dict) -> None:
        vec = ", ".join(f"{x:.4f}" for x in r["vector"][:8])
        print(f"{r['kind']} {r['id']} ({r['version']}, {r['source']}, updated_at "
              f"{r['updated_at']:.0f}): [{vec}{', ...' if len(r['vector']) > 8 else ''}] "
              f"dim={len(r['vector'])}")

    _answer(lambda: service.embedding(kind, node), as_json, render)


@app.command()
def evaluate(
    out: Annotated[Path, typer.Option("--out", help="directory for the report")],
    data: Annotated[Path | None, typer.Option("--data", help="interaction file")] = None,
    fmt: Annotated[str, typer.Option("--format", help="movielens, csv or jsonl")] = "movielens",
    from_store: Annotated[bool, typer.Option("--from-store", help="evaluate on the store")] = False,
    item_file: Annotated[Path | None, typer.Option(
        "--items", help="items' metadata for the trend ranker's content terms (as `streamrec "
        "items` reads; default: the movies file beside --data, e.g. movies.dat beside "
        "ratings.dat, if there is one; with --from-store the store's metadata; 'none': "
        "without)")] = None,
    models: Annotated[
        str | None, typer.Option("--models", help="comma-separated: lightgcn, pinsage, mf, "
                                 "popularity, popularity-recent (default: what retrain serves "
                                 f"plus the base embedding models: {','.join(EVALUATE_MODELS)});"
                                 " the trending baselines are always added")
    ] = None,
    k: Annotated[str, typer.Option("--k", help="comma-separated cut-offs")] = "10,20,50",
    fit_on: Annotated[
        str, typer.Option("--fit-on", help="train+valid: epochs chosen on validation, then "
                          "refitted on everything before the test start, as retrain does; "
                          "train: the model fitted on train")
    ] = "train+valid",
    epochs: Annotated[int | None, typer.Option(help="epoch budget of trained models")] = None,
    recent_days: Annotated[float, typer.Option(help="window of popularity-recent")] = 7.0,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    streaming: Annotated[bool, typer.Option(help="also run the window-by-window report")] = True,
    streaming_retrain: Annotated[
        bool, typer.Option(help="refit every model before each window in the streaming report "
                           "(the costly reference; off by default)")
    ] = False,
    window_days: Annotated[
        float | None, typer.Option(help="streaming window length in days (default: whole days "
                                   "so that at most 30 windows span the test period)")
    ] = None,
    max_windows: Annotated[
        int | None, typer.Option(help="at most this many streaming windows")
    ] = None,
    store: StoreOpt = None,
) -> None:
    """Temporal-split evaluation report: report.md, report.html, metrics.json, PNG plots.

    Headline: each model's recall@20 over the best trending baseline (all-time, last-W-days
    or decayed popularity, W and the half-life chosen on validation).
    """
    from evaluation.data import load_file, load_item_content, sibling_item_file
    from evaluation.runner import run_evaluation
    from models import make_model, model_arguments

    if (data is None) == (not from_store):
        console.print("[red]error:[/red] give exactly one of --data PATH or --from-store")
        raise typer.Exit(2)
    if fit_on not in ("train", "train+valid"):
        console.print(f"[red]error:[/red] --fit-on must be train or train+valid, got {fit_on!r}")
        raise typer.Exit(2)
    try:
        ks = tuple(int(x) for x in k.split(","))
    except ValueError:
        console.print(f"[red]error:[/red] --k must be comma-separated integers, got {k!r}")
        raise typer.Exit(2) from None
    names = ([m.strip() for m in models.split(",") if m.strip()] if models is not None
             else list(EVALUATE_MODELS))
    aliases = {"popularity-recent": ("popularity", {"window_seconds": recent_days * 86_400.0})}
    for name in names:
        base = aliases.get(name, (name, {}))[0]
        try:
            model_arguments(base)
        except ValueError as exc:
            console.print(f"[red]error:[/red] {exc} (or popularity-recent)")
            raise typer.Exit(2) from None

    def factory(name: str, **kwargs: object):  # type: ignore[no-untyped-def]
        base, extra = aliases.get(name, (name, {}))
        accepted = set(model_arguments(base))
        # the protocol sets the chosen epochs
        wanted = {"epochs": epochs, "content": content, **extra, **kwargs}
        return make_model(base, **{a: v for a, v in wanted.items()
                                   if v is not None and a in accepted})

    settings = _settings(store=store)
    content = None
    try:
        if data is not None:
            loaded = load_file(data, fmt)
            graph, dataset = loaded.graph, loaded.name
            if item_file is None:
                item_file = sibling_item_file(data)
                if item_file is not None:
                    console.print(f"items' metadata from {item_file} (--items none: without)")
            if item_file is not None and str(item_file) != "none":
                content = load_item_content(item_file, loaded.item_ids)
        else:
            from store.graph import GraphStore
            from store.item_metadata import ItemMetadata

            graph_store = GraphStore(settings.store)
            graph, dataset = graph_store.snapshot(), "graph store"
            if item_file is None:
                content = ItemMetadata(graph_store).content()
            elif str(item_file) != "none":
                content = load_item_content(item_file, graph_store.node_ids("item"))
        result = run_evaluation(
            graph, names, model_factory=factory, ks=ks, seed=seed, fit_on=fit_on,  # type: ignore[arg-type]
            streaming=streaming, streaming_retrain=streaming_retrain,
            window_seconds=None if window_days is None else window_days * 86_400.0,
            max_windows=max_windows, out_dir=str(out), dataset_name=dataset)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    top = result.get("headline") or {}
    for name, m in result["models"].items():
        entry = top.get("entries", {}).get(name, {})
        ratio = entry.get("ratio")
        lo, hi = entry.get("difference_ci") or (None, None)
        vs = "" if ratio is None else (f"  {ratio:.2f}x {top['best_baseline']} "
                                       f"(difference CI [{lo:+.4f}, {hi:+.4f}])")
        print(f"{name}: recall@20={m.get('recall@20', float('nan')):.4f} "
              f"ndcg@20={m.get('ndcg@20', float('nan')):.4f}{vs}")
    print(f"report written to {out}/report.md, report.html, metrics.json")


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    workers: Annotated[int | None, typer.Option(
        min=1, help="server processes; each loads the active version, and they share its "
        "ANN index through --index-cache (env STREAMREC_API_WORKERS; default 1)")] = None,
    index_cache: Annotated[str | None, typer.Option(
        help="directory of the built ANN indexes: the first worker builds a version's, the "
        "others and later restarts map it from there; '' to build in every worker (env "
        "STREAMREC_INDEX_CACHE; default: index-cache beside a SQLite file store, else "
        "./var/index-cache)")] = None,
    store: StoreOpt = None,
) -> None:
    """HTTP API over the same queries (FastAPI; OpenAPI at /docs), plus /versions, /metrics,
    /healthz and POST /retrain (bearer token from STREAMREC_RETRAIN_TOKEN; one retrain at a
    time across all worker processes, jobs visible from any of them)."""
    from streamrec.api import default_index_cache
    from streamrec.api import serve as run_server

    settings = _settings(store=store, api_workers=workers, index_cache=index_cache)
    cache = settings.index_cache
    try:
        run_server(settings.store, host=host, port=port, retrain_token=settings.retrain_token,
                   workers=settings.api_workers,
                   index_cache=default_index_cache(settings.store) if cache is None
                   else cache or None)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def run(
    port: Annotated[int, typer.Option(help="HTTP API port")] = 8000,
    host: Annotated[str, typer.Option(help="HTTP API address")] = "127.0.0.1",
    cron: Annotated[str, typer.Option(help="retrain cron (UTC)")] = "0 3 * * *",
    model: Annotated[str, typer.Option(help="model of the scheduled retrain")] = DEFAULT_MODEL,
    topic: TopicOpt = None,
    group: Annotated[str | None, typer.Option(help="consumer group")] = None,
    store: StoreOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Consumer, incremental updater, retrain scheduler and HTTP API in one process.

    For small deployments on one machine; Ctrl-C finishes the current batch and stops.
    """
    from streamrec.run_all import RunOptions, run_all

    settings = _settings(topic=topic, group=group, store=store, bootstrap=bootstrap)
    _require_bootstrap(settings)
    try:
        stats = run_all(settings, RunOptions(host=host, port=port, cron=cron, model=model))
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    print(f"run done: {stats.summary()}")


@app.command()
def schedule(
    cron: Annotated[
        str, typer.Option(help="when to retrain: 5-field crontab (6 with seconds first), UTC")
    ] = "0 3 * * *",
    model: Annotated[str, typer.Option(
        help="trend (the trend-aware ranker over LightGCN embeddings), lightgcn, pinsage, mf "
             "or popularity")] = DEFAULT_MODEL,
    epochs: Annotated[int | None, typer.Option(help="training epochs (model default)")] = None,
    dim: Annotated[int | None, typer.Option(help="embedding dimension")] = None,
    store: StoreOpt = None,
) -> None:
    """Run the retrain scheduler: a daily full retrain by cron, one at a time, in its own process.

    The schedule is kept in the store (table scheduler_jobs), so a restart keeps it; each run
    is recorded in scheduler_runs. A failed retrain leaves the previous version serving.
    """
    from streamrec.scheduler import RetrainScheduler

    settings = _settings(store=store)
    try:
        scheduler = RetrainScheduler(settings.store, model=model, cron=cron, epochs=epochs,
                                     dim=dim)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"retrain scheduler: {model} at cron {cron!r} (UTC); Ctrl-C to stop")
    raise typer.Exit(scheduler.run_forever())


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="synthetic events to stream")] = 20_000,
    model: Annotated[str, typer.Option(help="model of the full retrain")] = DEFAULT_MODEL,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 5,
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
    out: Annotated[Path, typer.Option(help="where the evaluation report goes")] = Path(
        "var/demo-report"
    ),
    store: Annotated[
        str, typer.Option(help="store URL (recreated on each run)")
    ] = "sqlite:///./var/demo.db",
    bootstrap: Annotated[
        str | None, typer.Option(help="use this Kafka instead of the bundled broker")
    ] = None,
) -> None:
    """The whole loop on embedded defaults: local broker, SQLite, synthetic stream.

    Produces a stream, ingests it, retrains, shows a user's top-10 before and after a burst of
    new events, and writes an evaluation report. Ctrl-C stops it and cleans up.
    """
    from streamrec.demo import DemoConfig, run_demo

    _settings()
    cfg = DemoConfig(events=events, model=model, epochs=epochs, seed=seed, out=out, store=store,
                     bootstrap=bootstrap)
    try:
        run_demo(cfg, Console())
    except KeyboardInterrupt:
        console.print("interrupted; the broker was stopped")
        raise typer.Exit(130) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
