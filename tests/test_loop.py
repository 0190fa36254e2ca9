"""common.loop: what the optimizer-step tail logs."""

import torch

from common.loop import step_means


class TwoProcesses:
    """An accelerator whose gather returns this process's tensor and another process's (its values plus `offset`)."""

    device = torch.device("cpu")

    def __init__(self, offset: float):
        self.offset = offset

    def gather(self, tensor):
        return torch.cat([tensor, tensor + self.offset])


def test_the_logged_values_are_means_over_micro_steps_and_processes():
    micro_steps = [{"loss": torch.tensor(1.0), "loss_edm": torch.tensor(0.5), "scl_beta": 0.1},
                   {"loss": torch.tensor(3.0), "loss_edm": torch.tensor(1.5), "scl_beta": 0.1}]
    means = step_means(TwoProcesses(offset=2.0), micro_steps)
    # This process: loss 2, loss_edm 1, beta 0.1; the other: each plus 2.
    assert sorted(means) == ["loss", "loss_edm", "scl_beta"]
    assert means["loss"] == 3.0 and means["loss_edm"] == 2.0 and abs(means["scl_beta"] - 1.1) < 1e-6
