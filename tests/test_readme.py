"""The README's code blocks, run as written, so that every command in it is tested.

Each fenced block with a language carries a marker on the line right before its fence (an
HTML comment, invisible on GitHub):

* ``<!-- readme-test: run -->``: run here, in document order, in one temporary directory
  (later blocks use the store and files that earlier ones made); bash blocks under
  ``set -euo pipefail``, python blocks with this interpreter;
* ``<!-- readme-test: ci (why) -->``: the fresh-checkout block, run verbatim by ``.ci/run``;
* ``<!-- readme-test: skip (why) -->``: cannot run here (e.g. needs a Docker engine).

A block without a marker fails ``test_every_code_block_is_marked``, so a new command cannot
go untested silently. Fences without a language (the pipeline diagram) are text.

The run blocks get a clean environment: no inherited ``STREAMREC_*`` (so the store is the
README's default, ``./var/streamrec.db`` under the temporary directory), a small
``STREAMREC_KAFKA_MAX_POLL_INTERVAL_MS`` (the bundled broker's first group join waits about
that long), one OpenMP thread, free ports in place of 9092 and 8000, and a generated
``ratings.dat`` for the commands that read one. Everything a block starts in the background
is stopped when it ends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stream.broker import free_port
from stream.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"

MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<kind>\w+)\s*(?P<note>.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
KINDS = ("run", "ci", "skip")
RUNNABLE = ("bash", "python")
# the README's example ports; a test run uses free ones instead
PORTS = ("9092", "8000")
BLOCK_TIMEOUT_S = 300

# bash runs every block strictly and stops what the block started in the background
BASH_PREAMBLE = (
    "set -euo pipefail\n"
    "trap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT\n"
)


@dataclass(frozen=True)
class Block:
    """A fenced code block of the README: ``line`` is its opening fence (1-based)."""

    line: int
    lang: str
    kind: str | None  # run, ci, skip or None (no marker)
    note: str
    text: str

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def parse_blocks(markdown: str) -> list[Block]:
    """Every fenced block with its marker; a marker not followed by a fence is an error.

    >>> doc = "<!-- readme-test: run -->\\n```bash\\necho hi\\n```\\n```\\ndiagram\\n```\\n"
    >>> [(b.line, b.lang, b.kind, b.text) for b in parse_blocks(doc)]
    [(2, 'bash', 'run', 'echo hi\\n'), (5, '', None, 'diagram\\n')]
    """
    lines = markdown.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        if marker and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
            raise ValueError(f"README.md:{i + 1}: a readme-test marker must precede a fence")
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if i == len(lines):
            raise ValueError(f"README.md:{start + 1}: unclosed code fence")
        above = MARKER.match(lines[start - 1]) if start > 0 else None
        blocks.append(Block(
            line=start + 1,
            lang=fence.group("lang"),
            kind=above.group("kind") if above else None,
            note=above.group("note") if above else "",
            text="".join(line + "\n" for line in lines[start + 1:i]),
        ))
        i += 1
    return blocks


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))
RUN_BLOCKS = [b for b in BLOCKS if b.kind == "run"]


def test_every_code_block_is_marked() -> None:
    problems = []
    for block in BLOCKS:
        if not block.lang:
            continue
        if block.kind not in KINDS:
            problems.append(f"{block}: no readme-test marker (run, ci or skip) on the line "
                            f"before the fence")
        elif block.kind == "run" and block.lang not in RUNNABLE:
            problems.append(f"{block}: only {RUNNABLE} blocks can be run")
        elif block.kind in ("ci", "skip") and not re.fullmatch(r"\(.+\)", block.note):
            problems.append(f"{block}: '{block.kind}' needs the reason in parentheses")
    assert not problems, "\n".join(problems)
    assert RUN_BLOCKS, "no README block is marked <!-- readme-test: run -->"


def test_ci_runs_the_fresh_checkout_block() -> None:
    """``.ci/run`` holds every command of the ci block verbatim."""
    ci_blocks = [b for b in BLOCKS if b.kind == "ci"]
    assert len(ci_blocks) == 1, f"expected one ci block, found {[str(b) for b in ci_blocks]}"
    script = CI_SCRIPT.read_text(encoding="utf-8").splitlines()
    commands = [c for c in ci_blocks[0].text.splitlines() if c.strip() and not c.startswith("#")]
    assert commands
    missing = [c for c in commands if c not in script]
    assert not missing, f".ci/run does not run these README commands verbatim: {missing}"


# ------------------------------------------------------------------ running the blocks
@dataclass
class Workdir:
    path: Path
    env: dict[str, str]
    ports: dict[str, str]
    failed: list[str]


def _write_ratings_dat(path: Path, n_events: int = 2000, n_items: int = 150) -> None:
    """A MovieLens-style ``ratings.dat`` (``user::item::rating::ts``) from the synthetic stream.

    Small, but with more items than the README's largest cut-off (``--k ...,50``).
    """
    with path.open("w", encoding="utf-8") as fh:
        for event in generate(n_events=n_events, n_items=n_items, seed=7).events():
            fh.write(f"{event.user_id[1:]}::{event.item_id[1:]}::4::{int(event.ts)}\n")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Workdir:
    path = tmp_path_factory.mktemp("readme")
    _write_ratings_dat(path / "ratings.dat")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update({
        # this interpreter's `streamrec` and `python` first
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "STREAMREC_KAFKA_MAX_POLL_INTERVAL_MS": "2000",
        # one OpenMP thread: on a busy 2-core machine torch's spinning second thread made a
        # retrain three times slower (19 s vs 6 s)
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    return Workdir(path, env, {port: str(free_port()) for port in PORTS}, [])


def _stop_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM what is left of a block's process group, SIGKILL after ``grace_s``."""
    sig = signal.SIGTERM
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline + 5.0:  # unreaped zombies would answer forever
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(0.2)


def _run(args: list[str], wd: Workdir) -> tuple[int, str]:
    """Run ``args`` in its own process group; returns (exit code, output)."""
    proc = subprocess.Popen(args, cwd=wd.path, env=wd.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop_group(proc.pid, grace_s=2.0)
        out, _ = proc.communicate()
        return 124, f"{out}\n[timed out after {BLOCK_TIMEOUT_S}s]"
    finally:
        _stop_group(proc.pid)
    return proc.returncode, out


def _with_ports(text: str, ports: dict[str, str]) -> str:
    for example, free in ports.items():
        text = re.sub(rf"\b{example}\b", free, text)
    return text


@pytest.fixture
def readme_block(workdir: Workdir) -> Iterator[Workdir]:
    if workdir.failed:
        pytest.skip(f"an earlier README block failed: {workdir.failed[0]}")
    yield workdir


@pytest.mark.integration
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: f"line{b.line}")
def test_readme_block_runs(block: Block, readme_block: Workdir) -> None:
    wd = readme_block
    if block.lang == "bash":
        args = ["bash", "-c", BASH_PREAMBLE + _with_ports(block.text, wd.ports)]
    else:
        args = [sys.executable, "-c", block.text]
    started = time.monotonic()
    code, out = _run(args, wd)
    if code != 0:
        wd.failed.append(str(block))
        tail = "\n".join(out.splitlines()[-60:])
        pytest.fail(f"{block} exited {code} after {time.monotonic() - started:.1f}s "
                    f"(ports {wd.ports}, cwd {wd.path}):\n{block.text}\n--- output ---\n{tail}",
                    pytrace=False)
