"""Registry and input validation: bad names, keywords, shapes and dtypes fail clearly; the rules
every registered cell shares (parametrised over memory_models.available(), so a cell registered
later is covered with no new code): unknown keywords refused, scan_impl, chunk_size and heads
checked, the elapsed-time claim held. A cell's own keywords are its test file's."""

import ast
import re
from pathlib import Path

import pytest
import torch

import memory_models
from memory_models import RecurrentMemory
from scan_cell_checks import random_state
from small_sizes import small_memory_kwargs


def test_registry_lists_reference_models():
    assert {"gru", "lstm", "mlp"} <= set(memory_models.available())
    assert memory_models.available() == sorted(memory_models.available())


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        memory_models.make("gruu", input_size=2, hidden_size=3)
    assert "'gru'" in str(err.value) and "lstm" in str(err.value)


def test_check_kwargs_names_unknown_and_valid_keywords():
    memory_models.check_kwargs("lmu", {"memory_size": 8, "theta": 4.0})
    with pytest.raises(ValueError) as err:
        memory_models.check_kwargs("lmu", {"memory_sise": 8, "theta": 4.0})
    assert isinstance(err.value, TypeError)        # as Python's own unexpected keyword
    assert "'memory_sise'" in str(err.value) and "'memory_size'" in str(err.value)
    assert err.value.unknown == ["memory_sise"] and "theta" in err.value.valid
    with pytest.raises(ValueError, match=r"valid keywords: \['layers'\]"):
        memory_models.check_kwargs("gru", {"theta": 1.0})


@pytest.mark.parametrize("name", memory_models.available())
def test_unknown_keywords_are_refused_naming_them_and_the_valid_ones(name):
    """make refuses, in one error (a TypeError as Python's own, and a ValueError), a made-up
    keyword, every other model's keyword this one does not take and its own implementation
    options; the error lists them and its valid keywords."""
    own = memory_models.keywords(name)
    others = {key for other in memory_models.available() for key in memory_models.keywords(other)}
    unknown = sorted({"bogus", *others - set(own), *memory_models.get(name).implementation_options})
    with pytest.raises(memory_models.UnknownKeywordError) as err:
        memory_models.make(name, input_size=3, hidden_size=8, **dict.fromkeys(unknown, 1))
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)
    assert err.value.unknown == unknown and err.value.valid == sorted(own)
    assert f"unknown keyword(s) {unknown}" in str(err.value)
    assert str(err.value).endswith(f"valid keywords: {sorted(own)}")


SCAN_IMPL_MODELS = [n for n in memory_models.available()
                    if "scan_impl" in memory_models.get(n).implementation_options]


@pytest.mark.parametrize("name", SCAN_IMPL_MODELS)
def test_scan_impl_lists_the_allowed_ones_and_each_builds(name):
    """scan_impl, an implementation option (how the cell computes, for tests and benchmarks,
    not what it is: make refuses it), is taken by the class itself: a bad one lists the
    allowed ones, and each of those builds."""
    cls, kwargs = memory_models.get(name), dict(input_size=3, hidden_size=8,
                                                **small_memory_kwargs(name))
    with pytest.raises(ValueError, match=r"scan_impl must be one of \(.+\), got 'bogus'$") as err:
        cls(**kwargs, scan_impl="bogus")
    allowed = ast.literal_eval(re.search(r"\(.+\)", str(err.value)).group())
    assert len(allowed) >= 2, allowed
    for scan_impl in allowed:
        assert cls(**kwargs, scan_impl=scan_impl).scan_impl == scan_impl


@pytest.mark.parametrize("name", [n for n in memory_models.available()
                                  if "chunk_size" in memory_models.get(n).implementation_options])
def test_chunk_size_must_be_a_positive_int(name):
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        memory_models.get(name)(input_size=3, hidden_size=8, chunk_size=0)


HEADS_MODELS = [n for n in memory_models.available() if "heads" in memory_models.keywords(n)]


@pytest.mark.parametrize("name", HEADS_MODELS)
def test_heads_must_be_a_positive_divisor_of_hidden_size(name):
    """heads = 0 fails as not a positive int; heads = 5 with hidden_size 12 names the hidden
    size, the heads given and the allowed ones, the divisors of 12."""
    def make(heads):
        return memory_models.make(name, input_size=3, hidden_size=12, heads=heads)
    with pytest.raises(ValueError, match="heads must be a positive int"):
        make(0)
    with pytest.raises(ValueError, match=r"heads must divide hidden_size\b.*12.*got (heads=)?5$") \
            as err:
        make(5)
    assert "[1, 2, 3, 4, 6, 12]" in str(err.value), str(err.value)


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


def readme_elapsed_time() -> dict[str, bool]:
    """The README models table's Δt column: name -> whether the cell integrates over time."""
    table = (Path(__file__).parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \|.*\| (yes|no)[^|]*\|$", table, flags=re.MULTILINE)
    return {name: dt == "yes" for name, dt in rows}


@pytest.mark.parametrize("name", memory_models.available())
def test_elapsed_time_claim_holds(name):
    """A cell that says it integrates over elapsed time (class attribute `elapsed_time`, as the
    README's models table says in its Δt column) changes its outputs or state with
    `integration_timesteps`, in scan and in step; the others return exactly the same outputs
    and state whatever the time steps. From a random non-zero state."""
    claim = memory_models.get(name).elapsed_time
    readme = readme_elapsed_time().get(name)
    assert readme == claim, f"{name}: elapsed_time={claim}, the README's Δt column: {readme}"
    torch.manual_seed(0)
    cell = memory_models.make(name, input_size=3, hidden_size=6,
                              **small_memory_kwargs(name)).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    state = random_state(cell, 2, torch.float64)
    gaps = torch.rand(2, 9, dtype=torch.float64) * 3
    runs = {"scan": lambda dt: cell.scan(x, state, integration_timesteps=dt),
            "step": lambda dt: cell.step(x[:, 0], state,
                                         integration_timestep=None if dt is None else dt[:, 0])}
    for what, run in runs.items():
        (y_one, s_one), (y_gaps, s_gaps) = run(None), run(gaps)
        same = torch.equal(y_one, y_gaps) and all(torch.equal(s_one[k], s_gaps[k]) for k in s_one)
        assert same != claim, (f"{name}'s {what}: elapsed_time={claim}, but time steps "
                               f"{'change nothing' if same else 'change its outputs or state'}")
