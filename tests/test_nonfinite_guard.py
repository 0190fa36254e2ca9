"""NonFiniteLossGuard: which optimizer steps update nothing, and that fp16 loss scaling still does its own skipping."""

import pytest
import torch

from common.loop import NonFiniteLossGuard


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def test_a_nonfinite_micro_step_marks_its_optimizer_step_and_the_count_resets(accelerator):
    guard = NonFiniteLossGuard(accelerator, max_in_a_row=2)
    guard.observe(torch.tensor(1.0))
    guard.observe(torch.tensor(float("nan")))
    assert not guard.step_is_finite() and (guard.in_a_row, guard.total) == (1, 1) and not guard.should_stop
    guard.observe(torch.tensor(float("inf")))
    assert not guard.step_is_finite() and guard.should_stop
    guard.observe(torch.tensor(2.0))
    assert guard.step_is_finite() and (guard.in_a_row, guard.total) == (0, 2) and not guard.should_stop
    assert "checkpoint-9" in str(guard.stop_error(9, "checkpoint-9"))


def test_fp16_loss_scaling_keeps_working_around_skipped_steps(accelerator):
    """The scripts' order: the guard decides before gradients are unscaled, so a skipped step leaves the scaler untouched."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    guard = NonFiniteLossGuard(accelerator, max_in_a_row=3)

    def step(inputs, poison=False):
        before = [p.detach().clone() for p in model.parameters()]
        loss = model(inputs).pow(2).mean() * (float("nan") if poison else 1.0)
        scaler.scale(loss).backward()
        guard.observe(loss)
        if guard.step_is_finite():
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    # Gradients that overflow once scaled, from a finite loss: not the guard's business; the scaler skips and halves its scale.
    assert not step(torch.full((2, 4), 1e17)) and guard.total == 0 and scaler.get_scale() == 2.0**15
    # A NaN loss: the guard skips the step without touching the scaler ...
    assert not step(torch.ones(2, 4), poison=True) and guard.total == 1 and scaler.get_scale() == 2.0**15
    # ... which then works as before on the next step.
    assert step(torch.ones(2, 4)) and guard.in_a_row == 0
