"""Checks shared by the diagonal state-space cells' tests (S4D, EventSSM)."""

import pytest


def assert_rejects_bad_ssm_arguments(cell_class, foreign_discretization: str) -> None:
    """The constructor names the problem and the allowed values: a discretization the cell
    does not support, an unknown one, an odd state size, an empty step range."""
    name = cell_class.__name__
    with pytest.raises(ValueError, match=f"{name} discretization must be one of"):
        cell_class(3, 5, discretization=foreign_discretization)
    with pytest.raises(ValueError, match="unknown discretization 'foh'.*'zoh'.*'async'"):
        cell_class(3, 5, discretization="foh")
    with pytest.raises(ValueError, match="even int"):
        cell_class(3, 5, state_size=5)
    with pytest.raises(ValueError, match="dt_min"):
        cell_class(3, 5, dt_min=0.5, dt_max=0.1)


def assert_cache_step_validates_like_state_step(cell, batch: int = 2) -> None:
    """step(x_t, inference_cache) checks its arguments as step(x_t, state) does."""
    import torch

    cache = cell.allocate_inference_cache(batch)
    x_t = torch.randn(batch, cell.input_size)
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, input_size\)"):
        cell.step(torch.randn(batch, cell.input_size + 1), cache)
    with pytest.raises(TypeError, match="reset must be a bool tensor"):
        cell.step(x_t, cache, reset=torch.zeros(batch))
    with pytest.raises(ValueError, match=">= 0"):
        cell.step(x_t, cache, integration_timestep=-torch.ones(batch))
    reset = torch.tensor([True] + [False] * (batch - 1))
    y, cache = cell.step(x_t, cache, reset=reset, integration_timestep=torch.ones(batch))
    assert y.shape == (batch, cell.hidden_size) and torch.isfinite(y).all()
