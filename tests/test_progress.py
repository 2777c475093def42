"""Progress where users look (issue 23, item 5): on a stream that is not a terminal (a SLURM log, `make demo >
log`) a line every N % or every minute with counts, rate and ETA, never one per unit; on a terminal a tqdm bar
that log lines print above, not through; dated log timestamps; the simulate pretraining reports progress."""
import io
import logging
import re

import pytest

from brainalign import log as L


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def records(caplog):
    caplog.set_level("INFO", logger="brainalign")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "brainalign.progress"]


def test_log_progress_every_ten_percent_with_count_rate_and_eta(records):
    clock = Clock()
    bar = L.LogProgress(total=1000, desc="fit units", unit="unit", every_pct=10, every_s=60, clock=clock)
    for _ in range(1000):
        clock.t += 0.05                      # 20 units/s: 50 s in all, never a minute between lines
        bar.update(1)
    bar.close()
    lines = records()
    assert len(lines) == 10, lines            # 10 %, 20 %, ... 90 %, and the final line
    assert lines[0] == "fit units: 100/1000 units (10 %) in 5s, 20 unit/s, ETA 45s"
    assert lines[4] == "fit units: 500/1000 units (50 %) in 25s, 20 unit/s, ETA 25s"
    assert lines[-1] == "fit units: 1000/1000 units (100 %) in 50s, 20 unit/s"


def test_log_progress_every_minute_when_units_are_slow(records):
    clock = Clock()
    with L.LogProgress(total=10, desc="extract", unit="episode", clock=clock) as bar:   # defaults: 10 %, 60 s
        for _ in range(3):
            clock.t += 25
            bar.update(1)
    assert records() == ["extract: 1/10 episodes (10 %) in 25s, 0.04 episode/s, ETA 3m45s",    # each one is 10 %
                         "extract: 2/10 episodes (20 %) in 50s, 0.04 episode/s, ETA 3m20s",
                         "extract: 3/10 episodes (30 %) in 1m15s, 0.04 episode/s, ETA 2m55s"]
    clock = Clock()
    bar = L.LogProgress(total=10_000, desc="slow", unit="unit", clock=clock)
    for _ in range(13):                      # 13 units x 20 s = 260 s, far below 10 %: a line each minute
        clock.t += 20
        bar.update(1)
    got = [m for m in records() if m.startswith("slow")]
    assert [re.search(r"(\d+)/10000", m).group(1) for m in got] == ["3", "6", "9", "12"]
    assert got[0] == "slow: 3/10000 units (0 %) in 1m00s, 0.05 unit/s, ETA 55h32m20s"    # 9,997 units / 0.05 per s


def test_progress_on_a_non_terminal_stream_logs_lines_not_a_bar(monkeypatch, records):
    monkeypatch.delenv("BRAINALIGN_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())           # not a terminal
    items = list(L.progress(range(40), desc="read BOLD", unit="run"))
    assert items == list(range(40))
    lines = records()
    assert len(lines) == 10 and lines[-1].startswith("read BOLD: 40/40 runs (100 %) in ")
    monkeypatch.setenv("BRAINALIGN_PROGRESS", "0")
    assert list(L.progress(range(5), desc="quiet")) == list(range(5))
    assert not [m for m in records() if m.startswith("quiet")]


class TTY(io.StringIO):
    def isatty(self):
        return True


def test_log_lines_print_above_a_terminal_bar_not_through_it(monkeypatch):
    """With a tqdm bar live on the terminal, a log line is printed on a line of its own (tqdm.write)."""
    from tqdm import tqdm

    term = TTY()
    logger = logging.getLogger("brainalign.test_progress")
    logger.propagate = False
    handler = L.BarAwareHandler(term)
    handler.setFormatter(logging.Formatter(L.LOG_FORMAT.replace(" %(host)s rank %(rank)s%(task)s", ""),
                                           L.DATE_FORMAT))
    logger.addHandler(handler)
    try:
        bar = tqdm(total=10, desc="fit units", file=term, ncols=60, mininterval=0)
        bar.update(3)
        logger.warning("a message while the bar runs")
        bar.update(2)
        bar.close()
    finally:
        logger.removeHandler(handler)
    screen = re.split(r"[\r\n]", term.getvalue())
    (line,) = [s for s in screen if "a message while the bar runs" in s]
    assert "fit units" not in line and "%|" not in line, repr(term.getvalue())
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING brainalign.test_progress: a message", line), line


def test_log_timestamps_carry_the_date():
    stream = io.StringIO()
    root = L.setup_logging("INFO")
    (h,) = [h for h in root.handlers if getattr(h, "brainalign", False)]
    old = h.stream
    h.stream = stream
    try:
        L.get_logger("t").info("hello")
    finally:
        h.stream = old
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ rank 0/1 INFO brainalign.t: hello", stream.getvalue())


def test_fit_progress_is_lines_not_one_per_unit(tmp_path, monkeypatch, caplog):
    """The fit stage on a non-terminal stream: progress lines with counts and ETA; no INFO line per unit."""
    from test_fit import fit_config, make_fit_fixture

    from brainalign.fit import run_fit

    monkeypatch.delenv("BRAINALIGN_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    make_fit_fixture(tmp_path / "out")
    caplog.set_level("INFO", logger="brainalign")
    run_fit(fit_config(tmp_path / "out", chunk_voxels=4))
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    prog = [m for m in info if m.startswith("fit units: ")]
    n_units = int(re.search(r"/(\d+) units", prog[-1]).group(1))
    assert n_units >= 20 and 2 <= len(prog) <= 11, prog               # at most every 10 % (+ the last)
    assert re.fullmatch(rf"fit units: {n_units}/{n_units} units \(100 %\) in \S+, \S+ unit/s", prog[-1]), prog[-1]
    assert "ETA" in prog[0]
    assert not [m for m in info if m.startswith("unit ")], info          # per unit: DEBUG only


def test_pretraining_reports_progress(tmp_path, monkeypatch, records):
    """The ~80 s pretraining step of simulate is not silent on a non-terminal stream."""
    from brainalign.config import parse_config
    from brainalign.simulate import pretrain_model

    monkeypatch.delenv("BRAINALIGN_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    cfg = parse_config({"name": "p", "simulate": {"trs_per_run": 20, "pretrain_steps": 20}})
    pretrain_model(cfg, tmp_path / "m.pt")
    lines = [m for m in records() if m.startswith("simulate: pretraining the tiny model")]
    assert len(lines) == 10 and lines[-1].startswith("simulate: pretraining the tiny model: 20/20 steps (100 %)")
