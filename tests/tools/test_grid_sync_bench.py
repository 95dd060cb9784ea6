"""tools/grid_sync_bench.py's kernels under Triton's interpreter (programs run one after another there, so a
barrier can only complete with one program): the stages' values against the host's, the counter, and a wait that
cannot complete reported by its flag instead of hanging."""

from __future__ import annotations

import pytest
import torch

from conftest import load_tool

pytest.importorskip("triton")


def _tool():
    return load_tool("grid_sync_bench")


@pytest.mark.parametrize("poll_load", [False, True], ids=["atomic-poll", "load-poll"])
def test_barrier_kernel_one_program(monkeypatch, poll_load):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    g = _tool()
    buf, counter, flag = g.run_barrier(1, 5, poll_load, torch.device("cpu"))
    assert torch.equal(buf, g.expected(1, 5)), (buf, g.expected(1, 5))
    assert int(counter) == 5 and int(flag) == 0


def test_a_barrier_that_cannot_complete_sets_its_flag(monkeypatch):
    """Two programs under the interpreter: the first waits for the second, which has not run; after max_spin polls
    the wait gives up and says so (on a GPU: a grid larger than what is resident at once)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    g = _tool()
    _, counter, flag = g.run_barrier(2, 1, True, torch.device("cpu"), max_spin=8)
    assert int(flag) == 1 and int(counter) == 2


def test_launches_match_the_host(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    g = _tool()
    assert torch.equal(g.run_launches(3, 4, False, torch.device("cpu")), g.expected(3, 4))


def test_expected_reads_the_next_programs_value():
    g = _tool()
    want = torch.tensor([[0, 0, 0], [0, 1, 2]])  # stage 0 from zeros: s + pid
    assert torch.equal(g.expected(3, 1).reshape(2, 3).long(), want)
    two = g.expected(3, 2).reshape(2, 3)
    assert two[0].tolist() == [1 + 0 + (1 & 1), 1 + 1 + (2 & 1), 1 + 2 + (0 & 1)]


def test_no_cuda_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert _tool().main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().out
