"""The interface laws (memory_models.laws; README.md, "The memory API") for every registered
memory, in every dtype it accepts; the dtypes it does not accept are refused with a clear error.

Parametrised over memory_models.available(): a model registered later is covered here with no
new code. Models are built with the small keywords of tests/small_sizes.py.
"""

import pytest
import torch

import memory_models
from memory_models import laws
from memory_models.interface import FLOAT_DTYPES
from small_sizes import small_memory_kwargs

MODELS = memory_models.available()
ACCEPTED = [(name, dtype) for name in MODELS for dtype in FLOAT_DTYPES
            if dtype in laws.accepted_dtypes(name)]
REFUSED = [(name, dtype) for name in MODELS for dtype in FLOAT_DTYPES
           if dtype not in laws.accepted_dtypes(name)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("law", list(laws.LAWS))
@pytest.mark.parametrize("name, dtype", ACCEPTED, ids=lambda v: str(v).replace("torch.", ""))
def test_law(name, dtype, law):
    laws.LAWS[law](name, dtype, **small_memory_kwargs(name))


@pytest.mark.parametrize("name, dtype", REFUSED, ids=lambda v: str(v).replace("torch.", ""))
def test_refused_dtype_fails_clearly(name, dtype):
    cell = memory_models.make(name, input_size=4, hidden_size=6, **small_memory_kwargs(name))
    cell = cell.to(dtype)
    accepted = ", ".join(str(d).replace("torch.", "") for d in laws.accepted_dtypes(name))
    with pytest.raises(TypeError, match=f"computes in {accepted} only"):
        cell.scan(torch.randn(3, 5, 4, dtype=dtype), cell.initial_state(3, dtype=dtype))
    with pytest.raises(TypeError, match=f"computes in {accepted} only"):
        cell.step(torch.randn(3, 4, dtype=dtype), cell.initial_state(3, dtype=dtype))


def test_float32_and_float64_accepted_by_every_model():
    for name in MODELS:
        assert {torch.float32, torch.float64} <= set(laws.accepted_dtypes(name)), name


def test_check_runs_every_law_on_a_built_cell_and_reports_failures():
    cell = memory_models.make("gru", input_size=2, hidden_size=3)
    laws.check(cell, dtypes=(torch.float64,))


    class Broken(memory_models.MLP):           # a step that disagrees with the scan
        def _step(self, x_t, state, reset, integration_timestep):
            return self.net(x_t) + 1, {}

    expected = r"(?s)step_loop_equals_scan: float64, step loop vs scan.*absolute difference: 1.0"
    with pytest.raises(AssertionError, match=expected):
        laws.check(Broken(2, 3), dtypes=(torch.float64,))
