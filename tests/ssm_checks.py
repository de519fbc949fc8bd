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
