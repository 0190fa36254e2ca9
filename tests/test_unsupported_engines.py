"""Both training scripts refuse DeepSpeed and FSDP in one line before any model loads, through a real `accelerate launch`.

DeepSpeed is not installed here, and accelerate's DeepSpeed launcher only checks that the package can be found
before it starts the processes with ACCELERATE_USE_DEEPSPEED=true: a stand-in package on the launcher's own
sys.path (never on the scripts') lets the real launcher run.
"""

import pytest
from accelerate.utils import DistributedType

from common.cli import SetupError
from common.training import refuse_unsupported_engines
from conftest import REPO_ROOT, accelerate_launch

SUPPORTED = "Supported: DDP on any number of GPUs and machines"


def write_deepspeed_stand_in(folder):
    """The two things accelerate's DeepSpeed launcher reads of the package: its metadata and DEEPSPEED_ENVIRONMENT_NAME."""
    (folder / "deepspeed" / "launcher").mkdir(parents=True)
    (folder / "deepspeed" / "__init__.py").write_text("")
    (folder / "deepspeed" / "launcher" / "__init__.py").write_text("")
    (folder / "deepspeed" / "launcher" / "runner.py").write_text('DEEPSPEED_ENVIRONMENT_NAME = ".deepspeed_env"\n')
    (folder / "deepspeed-0.0.0.dist-info").mkdir()
    (folder / "deepspeed-0.0.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: deepspeed\nVersion: 0.0.0\n")
    return folder


def script_args(script, tmp_path):
    """The script's required flags, with a model folder that does not exist: loading it would be another error."""
    args = [f"--pretrained_model_name_or_path={tmp_path / 'no_model'}", f"--output_dir={tmp_path / 'out'}"]
    if script == "train_world_explorer.py":
        return args + [f"--base_folder={tmp_path / 'no_frames'}", "--scl_loss"]
    return args + [f"--data_root={tmp_path / 'no_data'}"]


# Each script meets each engine; each engine comes once from accelerate launch's flag (two processes: each that gets there says it)
# and once from a config file (one process).
CASES = [
    ("train_world_explorer.py", "FSDP", ["--use_fsdp", "--num_processes", "2"]),
    ("train_instruct_pix2pix.py", "DEEPSPEED", ["--use_deepspeed", "--num_processes", "2"]),
    ("train_world_explorer.py", "DEEPSPEED", "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 2\n"),
    ("train_instruct_pix2pix.py", "FSDP", "distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n"),
]


@pytest.mark.parametrize("script, engine, launch", CASES, ids=[f"{s.split('_')[1]}-{e}-{'flag' if isinstance(l, list) else 'config'}" for s, e, l in CASES])
def test_accelerate_launch_with_deepspeed_or_fsdp_is_refused_in_one_line(script, engine, launch, tmp_path):
    num_processes = 2
    if isinstance(launch, str):
        config, num_processes = tmp_path / "accelerate_config.yaml", 1
        config.write_text(f"compute_environment: LOCAL_MACHINE\n{launch}num_processes: 1\n")
        launch = ["--config_file", str(config)]
    result = accelerate_launch([REPO_ROOT / script, *script_args(script, tmp_path)], num_processes=num_processes, launch_flags=launch,
                               env={"ACCELERATE_USE_CPU": "true"},
                               launcher_path=[write_deepspeed_stand_in(tmp_path / "stand_in")] if engine == "DEEPSPEED" else ())
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    # One line per process that reaches the check, the same on each, and nothing loaded or traced back in the script: the
    # launcher stops the other process as soon as one exits, so a slower one may be stopped before it says it (CI, 2026-12-07).
    assert result.returncode != 0 and 1 <= len(errors) <= num_processes and len(set(errors)) == 1, output[-4000:]
    flag = "--use_deepspeed" if engine == "DEEPSPEED" else "--use_fsdp"
    assert errors[0].startswith(f"error: accelerate launch {flag} (distributed_type {engine}): not supported by this script")
    assert SUPPORTED in errors[0] and "--gradient_checkpointing" in errors[0] and "--use_8bit_adam" in errors[0]
    genex_only = ("cached latents (--latents_cache_dir)", "--scl_num_frames")
    assert all((option in errors[0]) == (script == "train_world_explorer.py") for option in genex_only)
    assert "no_model" not in output and f'File "{REPO_ROOT}' not in output


def test_the_check_reads_the_launch_variables_and_the_accelerator_type(monkeypatch):
    args = type("Args", (), {"gradient_checkpointing": False, "use_8bit_adam": False})()
    for variable in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(variable, raising=False)
    refuse_unsupported_engines(args)
    refuse_unsupported_engines(args, DistributedType.MULTI_GPU)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")  # what a plain multi-GPU launch may carry
    refuse_unsupported_engines(args)
    with pytest.raises(SetupError, match=r"--use_deepspeed \(distributed_type DEEPSPEED\).*to save memory use --gradient_checkpointing, --use_8bit_adam$"):
        refuse_unsupported_engines(args, DistributedType.DEEPSPEED)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(SetupError, match=r"--use_fsdp \(distributed_type FSDP\): not supported"):
        refuse_unsupported_engines(args)
