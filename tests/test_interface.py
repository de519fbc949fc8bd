"""Registry and input validation: bad names, keywords, shapes and dtypes fail clearly."""

import pytest
import torch

import memory_models
from memory_models import RecurrentMemory


def test_registry_lists_reference_models():
    assert {"gru", "lstm", "mlp"} <= set(memory_models.available())
    assert memory_models.available() == sorted(memory_models.available())


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        memory_models.make("gruu", input_size=2, hidden_size=3)
    assert "'gru'" in str(err.value) and "lstm" in str(err.value)


def test_unknown_keyword_lists_valid_ones():
    with pytest.raises(TypeError, match="unknown keyword.*'bogus'"):
        memory_models.make("gru", input_size=2, hidden_size=3, bogus=1)


def test_check_kwargs_names_unknown_and_valid_keywords():
    memory_models.check_kwargs("lmu", {"memory_size": 8, "theta": 4.0})
    with pytest.raises(ValueError) as err:
        memory_models.check_kwargs("lmu", {"memory_sise": 8, "theta": 4.0})
    assert isinstance(err.value, TypeError)        # as Python's own unexpected keyword
    assert "'memory_sise'" in str(err.value) and "'memory_size'" in str(err.value)
    assert err.value.unknown == ["memory_sise"] and "theta" in err.value.valid
    with pytest.raises(ValueError, match=r"valid keywords: \['layers'\]"):
        memory_models.check_kwargs("gru", {"theta": 1.0})


def test_implementation_options_are_not_model_keywords():
    """event_ssm's scan_impl chooses how it computes (tests, benchmarks), not what it is."""
    assert "scan_impl" not in memory_models.keywords("event_ssm")
    with pytest.raises(ValueError, match="unknown keyword.*'scan_impl'"):
        memory_models.make("event_ssm", input_size=2, hidden_size=3, scan_impl="sequential")
    cell = memory_models.get("event_ssm")(input_size=2, hidden_size=3, scan_impl="sequential")
    assert cell.scan_impl == "sequential"


def test_register_rejects_non_memory_and_duplicates():
    with pytest.raises(TypeError):
        memory_models.register("x")(int)
    with pytest.raises(ValueError, match="already registered"):
        memory_models.register("gru")(memory_models.LSTM)


def test_interface_is_abstract():
    with pytest.raises(TypeError):
        RecurrentMemory(2, 3)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_bad_sizes(size):
    with pytest.raises(ValueError, match="positive int"):
        memory_models.make("gru", input_size=size, hidden_size=3)


@pytest.fixture
def cell():
    return memory_models.make("gru", input_size=2, hidden_size=3)


def test_bad_shapes(cell):
    state = cell.initial_state(4)
    with pytest.raises(ValueError, match=r"\(B, T, input_size\)"):
        cell.scan(torch.randn(4, 2), state)
    with pytest.raises(ValueError, match="input_size=2"):
        cell.scan(torch.randn(4, 5, 3), state)
    with pytest.raises(ValueError, match=r"state\['h'\] must have shape \(4, 3\)"):
        cell.scan(torch.randn(4, 5, 2), cell.initial_state(2))
    with pytest.raises(ValueError, match="state keys"):
        cell.scan(torch.randn(4, 5, 2), {"m": torch.zeros(4, 3)})
    with pytest.raises(ValueError, match=r"resets must have shape \(4, 5\)"):
        cell.scan(torch.randn(4, 5, 2), state, resets=torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=5\]"):
        cell.scan(torch.randn(4, 5, 2), state, lengths=torch.tensor([1, 2, 3, 6]))
    with pytest.raises(ValueError, match=">= 0"):
        cell.scan(torch.randn(4, 5, 2), state, integration_timesteps=-torch.ones(4, 5))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, input_size\)"):
        cell.step(torch.randn(4, 1, 2), state)


def test_bad_dtypes(cell):
    state = cell.initial_state(4)
    with pytest.raises(TypeError, match="floating tensor"):
        cell.scan(torch.ones(4, 5, 2, dtype=torch.long), state)
    with pytest.raises(TypeError, match="float64 but GRU's parameters are float32"):
        cell.scan(torch.randn(4, 5, 2, dtype=torch.float64), state)
    with pytest.raises(TypeError, match="resets must be a bool tensor"):
        cell.scan(torch.randn(4, 5, 2), state, resets=torch.zeros(4, 5))
    with pytest.raises(TypeError, match="lengths must be an int64"):
        cell.scan(torch.randn(4, 5, 2), state, lengths=torch.ones(4))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        cell.scan([[1.0, 2.0]], state)


def test_dtype_check_follows_module_conversion(cell):
    cell.scan(torch.randn(4, 5, 2), cell.initial_state(4))            # caches float32
    cell.double()
    y, _ = cell.scan(torch.randn(4, 5, 2, dtype=torch.float64),
                     cell.initial_state(4, dtype=torch.float64))
    assert y.dtype == torch.float64
    with pytest.raises(TypeError, match="float32 but GRU's parameters are float64"):
        cell.scan(torch.randn(4, 5, 2), cell.initial_state(4))


def test_memory_models_imports_neither_ray_nor_gymnasium():
    """DESIGN's import direction: memory_models is pure PyTorch (building every cell too)."""
    import subprocess
    import sys
    code = ("import sys, memory_models as m; "
            "[m.make(n, input_size=2, hidden_size=4) for n in m.available()]; "
            "bad = [x for x in ('ray', 'gymnasium', 'popgym') if x in sys.modules]; "
            "sys.exit(f'memory_models imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", memory_models.available())
def test_elapsed_time_claim_holds(name):
    """A cell that says it integrates over elapsed time (class attribute `elapsed_time`, the
    README's models table) changes its outputs with `integration_timesteps`; the others
    return exactly the same outputs and state."""
    from small_sizes import small_memory_kwargs
    torch.manual_seed(0)
    cell = memory_models.make(name, input_size=3, hidden_size=6,
                              **small_memory_kwargs(name)).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    state = cell.initial_state(2)
    gaps = torch.rand(2, 9, dtype=torch.float64) * 3
    y_one, s_one = cell.scan(x, state)
    y_gaps, s_gaps = cell.scan(x, state, integration_timesteps=gaps)
    same = torch.equal(y_one, y_gaps) and all(torch.equal(s_one[k], s_gaps[k]) for k in s_one)
    assert same != type(cell).elapsed_time, f"{name}: elapsed_time={type(cell).elapsed_time}"
