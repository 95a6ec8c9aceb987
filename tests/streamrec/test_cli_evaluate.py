"""`streamrec evaluate` end to end on a generated file: the report files exist and parse."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from stream.synthetic import generate
from streamrec.cli import DEFAULT_MODEL, EVALUATE_MODELS, app


def test_evaluate_writes_a_report(tmp_path: Path) -> None:
    data = tmp_path / "events.jsonl"
    data.write_text("\n".join(e.to_json().decode() for e in generate(n_events=4000,
                                                                      seed=4).events()))
    out = tmp_path / "report"
    res = CliRunner().invoke(app, [
        "evaluate", "--data", str(data), "--format", "jsonl", "--models",
        "popularity,popularity-recent,mf", "--epochs", "2", "--k", "10,20", "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    baselines = {"pop-alltime", "pop-recent", "pop-decayed"}
    assert set(metrics["models"]) == {"popularity", "popularity-recent", "mf"} | baselines
    assert 0.0 <= metrics["models"]["mf"]["recall@20"] <= 1.0
    assert metrics["protocol"]["fit_on"].startswith("train+valid")
    assert metrics["model_info"]["mf"]["epochs"] in (1, 2)  # chosen on validation
    assert metrics["headline"]["entries"]["mf"]["baseline"] is False
    assert "mf: recall@20=" in res.output and "x pop-" in res.output
    assert "streaming" in metrics and (out / "report.html").read_text().count("<img") >= 2
    assert (out / "report.md").exists()


def test_evaluate_defaults_to_the_served_and_base_models(tmp_path: Path) -> None:
    data = tmp_path / "events.jsonl"
    data.write_text("\n".join(e.to_json().decode() for e in generate(n_events=2000,
                                                                      seed=5).events()))
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--format", "jsonl",
                                   "--epochs", "1", "--no-streaming", "--fit-on", "train",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "metrics.json").read_text())["model_info"]
    assert [n for n, i in info.items() if not i["baseline"]] == list(EVALUATE_MODELS)
    assert EVALUATE_MODELS[0] == DEFAULT_MODEL and {"lightgcn", "pinsage"} <= set(info)
    assert info["lightgcn"]["fit_on"] == "train"


def test_evaluate_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--out", str(tmp_path), "--models", "mf"])
    assert res.exit_code == 2 and "--data PATH or --from-store" in res.output
    data = tmp_path / "e.jsonl"
    data.write_text('{"user_id": "u", "item_id": "i", "ts": 1}\n')
    res = runner.invoke(app, ["evaluate", "--data", str(data), "--format", "jsonl",
                              "--models", "transformer", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown model" in res.output
    res = runner.invoke(app, ["evaluate", "--data", str(data), "--format", "jsonl",
                              "--models", "popularity", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "error" in res.output
    res = runner.invoke(app, ["evaluate", "--data", str(data), "--format", "jsonl",
                              "--fit-on", "test", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--fit-on must be train or train+valid" in res.output
