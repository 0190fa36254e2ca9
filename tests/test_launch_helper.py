"""conftest's launcher: a run that hangs fails its test with the stacks of its processes, not with a bare timeout."""

import sys

import pytest

from conftest import REPO_ROOT, run_or_dump_stacks


def test_a_hanging_process_fails_with_its_stack():
    hanging = "import time\ndef wait_for_peer():\n    time.sleep(60)\nwait_for_peer()\n"
    with pytest.raises(pytest.fail.Exception) as failure:
        run_or_dump_stacks([sys.executable, "-c", hanging], REPO_ROOT, {}, timeout=3)
    message = str(failure.value)
    assert "ran past 3 s" in message and "wait_for_peer" in message and "Fatal Python error: Aborted" in message


def test_a_finished_process_returns_its_output():
    result = run_or_dump_stacks([sys.executable, "-c", "print('out'); import sys; sys.exit(3)"], REPO_ROOT, {}, timeout=30)
    assert result.returncode == 3 and result.stdout == "out\n"
