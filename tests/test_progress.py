"""Long runs: progress (plain lines off a terminal, paced by a fake clock; a bar on one; nothing when off) and the
partial results file a run resumes from."""

import io
import json
import math

import pytest
import torch

from steerlab._progress import is_terminal, plain_line, track
from steerlab.errors import SteeringError
from steerlab.evaluate._partial import PartialResults, digest


class FakeClock:
    """Returns the given times one per call (the first is the start)."""

    def __init__(self, *times: float):
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_are_paced_and_the_last_always_comes():
    stream = io.StringIO()
    # start at 0; items finish at 3, 11, 14, 25, 26 s: lines after 11 (>= 10 s since the start), 25 (>= 10 s since
    # 11) and the last item, whatever the gap.
    clock = FakeClock(0.0, 3.0, 11.0, 14.0, 25.0, 26.0)
    seen = list(track(list("abcde"), "sweeping", show=True, stream=stream, every=10.0, clock=clock))
    assert seen == list("abcde")
    assert stream.getvalue().splitlines() == [
        "sweeping: 2/5 (40%), 11 s elapsed, ~16 s left",
        "sweeping: 4/5 (80%), 25 s elapsed, ~6 s left",
        "sweeping: 5/5 (100%), 26 s elapsed",
    ]
    assert plain_line("sweeping", 12, 40, 95.2) == "sweeping: 12/40 (30%), 95 s elapsed, ~222 s left"


def test_nothing_is_written_when_off_or_for_no_items():
    stream = io.StringIO()
    assert list(track([1, 2, 3], "recording", show=False, stream=stream, every=0.0)) == [1, 2, 3]
    assert list(track([], "recording", show=True, stream=stream, every=0.0)) == []
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_bar_and_anything_else_lines():
    assert is_terminal(Terminal()) and not is_terminal(io.StringIO())

    class Closed(io.StringIO):
        def isatty(self) -> bool:
            raise ValueError("I/O operation on closed file")

    assert not is_terminal(Closed()) and not is_terminal(object())  # type: ignore[arg-type]
    terminal = Terminal()
    assert list(track([1, 2], "recording", show=True, stream=terminal, every=0.0)) == [1, 2]
    # rich drew (and, being transient, erased) a bar with control codes, not a plain line.
    assert "\x1b[" in terminal.getvalue() and "recording: 2/2" not in terminal.getvalue()


def test_lines_go_to_stderr_by_default(capsys):
    list(track([1], "probing", show=True, every=0.0))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("probing: 1/1 (100%), ")


def test_a_partial_file_reads_back_its_cells_and_drops_a_cut_off_one(tmp_path):
    path = tmp_path / "run.jsonl"
    path.touch()  # an empty file is a new one: the header goes in
    identity = {"layers": [1, 2], "vector": digest(torch.ones(3, dtype=torch.bfloat16))}
    store = PartialResults(path, "sweep", identity)
    assert store.done == {} and json.loads(path.read_text())["identity"] == identity
    cells = {("add", 1, None): [{"alpha": -0.0, "x": 0.1 + 0.2, "q": [1e-300, None]}], ("add", 2, 0): [{"x": math.nan}]}
    for cell, records in cells.items():
        store.add(cell, records)
    again = PartialResults(path, "sweep", identity)
    assert list(again.done) == list(cells)  # keys are tuples again, in order
    assert again.done[("add", 1, None)] == cells[("add", 1, None)]  # floats exactly (repr), -0.0 and None kept
    assert math.copysign(1, again.done[("add", 1, None)][0]["alpha"]) == -1
    assert math.isnan(again.done[("add", 2, 0)][0]["x"])

    whole = path.read_text()
    path.write_text(whole + '{"cell": ["add", 3')  # killed while appending
    cut = PartialResults(path, "sweep", identity)
    assert list(cut.done) == list(cells) and path.read_text() == whole
    cut.add(("add", 3, None), [])
    assert path.read_text().splitlines()[-1] == '{"cell": ["add", 3, null], "records": []}'

    lines = whole.splitlines()
    path.write_text("\n".join([lines[0], "garbage", lines[2]]) + "\n")
    with pytest.raises(SteeringError, match=r"line 2 of the partial results file .* damaged line\)\. Delete the file"):
        PartialResults(path, "sweep", identity)
    differs = r"not from this sweep.*differs in layers \(file: \[1, 2\], this run: \[1\]\)"
    with pytest.raises(SteeringError, match=differs):
        PartialResults(path, "sweep", {**identity, "layers": [1]})
    with pytest.raises(SteeringError, match="not from this breakdown.*a header for a 'sweep' run"):
        PartialResults(path, "breakdown", identity)
    path.write_bytes(b"\xff\xfe binary\n")  # e.g. a .safetensors given by mistake: refused, left as it is
    with pytest.raises(SteeringError, match="not a steerlab partial results file"):
        PartialResults(path, "sweep", identity)
    assert path.read_bytes() == b"\xff\xfe binary\n"
    assert digest(torch.ones(3)) != digest(torch.ones(3, dtype=torch.float64)) != digest(torch.ones(1, 3))
