"""`streamrec items FILE`: metadata lands in the store, errors say what to fix, and
`streamrec evaluate --items` fits the trend ranker with the content terms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from store.graph import GraphStore
from store.item_metadata import ItemMetadata
from stream.events import Event
from streamrec.cli import app


def test_items_imports_metadata_and_reports_what_matched(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    graph = GraphStore(url)
    graph.write_batch([Event.create("u", "7", 1.0), Event.create("u", "9", 2.0)])
    movies = tmp_path / "movies.dat"
    movies.write_text("0000007::A (2001)::Drama\n0000008::B (1999)::Comedy|Drama\nbad\n",
                      encoding="utf-8")
    res = CliRunner().invoke(app, ["items", str(movies), "--store", url])
    assert res.exit_code == 0, res.output
    assert "imported 2 items (1 lines rejected); 1 of them have events" in res.output
    content = ItemMetadata(graph).content()
    assert content is not None and content.years[0] == 2001 and np.isnan(content.years[1])
    empty = tmp_path / "empty.dat"
    empty.write_text("item_id,year,tags\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["items", str(empty), "--store", url])
    assert res.exit_code == 2 and "holds no item record" in res.output
    empty.write_text("nonsense\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["items", str(empty), "--store", url])
    assert res.exit_code == 2 and "needs an item_id" in res.output
    res = CliRunner().invoke(app, ["items", str(tmp_path / "missing.csv"), "--store", url])
    assert res.exit_code == 2 and "error" in res.output
    graph.engine.dispose()


def test_evaluate_with_items_fits_the_content_terms(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, users = 3000, 80
    taste = rng.integers(0, 2, users)
    user = rng.integers(0, users, n)
    genre = np.where(rng.random(n) < 0.9, taste[user], 1 - taste[user])
    item = 2 * (rng.zipf(1.6, n) % 15) + genre
    ts = np.sort(rng.uniform(1.7e9, 1.7e9 + 40 * 86_400, n)).astype(int)
    data = tmp_path / "ratings.dat"
    data.write_text("".join(f"{u}::{i}::5::{t}\n" for u, i, t in zip(user, item, ts,
                                                                       strict=True)))
    movies = tmp_path / "movies.dat"
    movies.write_text("".join(f"{i:07d}::Movie {i} ({2000 + i % 7})::{'AB'[i % 2]}\n"
                              for i in range(30)))
    for items, expected in (([], {"items": 30, "tags": 2}),       # movies.dat found beside
                            (["--items", "none"], None)):
        out = tmp_path / f"report{len(items)}"
        res = CliRunner().invoke(app, [
            "evaluate", "--data", str(data), *items, "--models", "trend", "--no-streaming",
            "--k", "10,20", "--out", str(out)])
        assert res.exit_code == 0, res.output
        info = json.loads((out / "metrics.json").read_text())["model_info"]["trend"]
        assert info["hyper_parameters"]["content"] == expected
        assert ("items' metadata from" in res.output) is (not items)
