import os
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
from bad_inputs_support import Env, build_env  # noqa: E402


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
