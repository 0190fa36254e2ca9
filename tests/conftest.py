import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# Tests never reach the model hub; everything they load is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

# Tiny random models produce subnormal floats that slow CPU math 100x; the scripts flush them too.
from common.training import flush_denormals  # noqa: E402

flush_denormals()

# The bad-input matrix's one outcome check lives in a helper module: pytest shows its failed asserts' values too.
pytest.register_assert_rewrite("bad_inputs_support")
from bad_inputs_support import Env, build_env, unset_accelerate_state  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state that a second Accelerator with other options refuses to change: each test
    that builds one in this process (a script's main, the bench) starts from none, whichever test file ran before it."""
    unset_accelerate_state()
    yield


@pytest.fixture(scope="session")
def matrix_env(tmp_path_factory) -> Env:
    """What every file of the bad-input matrix starts from (tiny pipelines, GenEx frames, a prepared synthetic SSv2), built once."""
    return build_env(tmp_path_factory.mktemp("bad_inputs_env"))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: two OpenMP threads on a shared 2-core machine spin against each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_line_error(main, argv, capsys) -> str:
    """The one `error:` line that run_cli prints for a known error of `main(argv)`, last on stderr (after any progress bars); exit code 2."""
    from common.cli import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    return errors[0]


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerate_launch(target: list, num_processes: int = 1, launch_flags=None, env=None, cwd=REPO_ROOT, timeout=600, launcher_path=()):
    """Run `accelerate launch <launch_flags> <target>` (a script and its arguments, or `-m module ...`) as users do.

    Default launch flags: one CPU process, or with `num_processes` > 1, CPU processes over gloo (DESIGN.md, "Two
    processes on a CPU machine"). `launcher_path`: folders put on the launcher's own sys.path, not on the processes
    it starts. Returns the CompletedProcess, stdout and stderr as text.
    """
    if launch_flags is None:
        launch_flags = ["--multi_gpu", "--num_processes", str(num_processes)] if num_processes > 1 else ["--cpu", "--num_processes", "1"]
    launcher = ["-m", "accelerate.commands.launch"]
    if launcher_path:
        launcher = ["-c", f"import sys; sys.path[:0] = {[str(path) for path in launcher_path]!r}; sys.argv[0] = 'accelerate-launch'; "
                          "from accelerate.commands.launch import main; main()"]
    # A port of its own: test workers may launch two multi-process runs at the same time.
    command = [sys.executable, *launcher, *launch_flags, "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
               "--dynamo_backend", "no", *map(str, target)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT), **(env or {}))
    if num_processes > 1:
        env["ACCELERATE_USE_CPU"] = "true"
    return run_or_dump_stacks(command, cwd, env, timeout)


def run_or_dump_stacks(command: list, cwd, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run(command), but a run past `timeout` fails the test with where each of its processes was stuck: the whole
    process group gets SIGABRT, on which Python's faulthandler prints every thread's stack (a hang is otherwise only a timeout)."""
    process = subprocess.Popen(command, cwd=cwd, env=dict(env, PYTHONFAULTHANDLER="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGABRT)
        try:
            stdout, stderr = process.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"{command[:4]}... ran past {timeout} s; the stacks of its processes at SIGABRT:\n{(stdout + stderr)[-12000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
