"""Deep memories: `make(name, layers=N)` for every registered name (memory_models.deep).

The interface laws hold for every name with layers=2 in float32 and float64, and layers=3 in
float64 (the laws' own code, parametrised over memory_models.available(), so a cell
registered later is covered); layers=1 is the plain cell; the stack's output is the literal
composition of its blocks.
"""

import pytest
import torch
import torch.nn.functional as F

import memory_models
from memory_models import laws
from memory_models.deep import DeepMemory
from small_sizes import small_memory_kwargs
pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = memory_models.available()


@pytest.mark.parametrize("law", list(laws.LAWS))
@pytest.mark.parametrize("layers, dtype", [(2, torch.float32), (2, torch.float64),
                                           (3, torch.float64)],
                         ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("name", MODELS)
def test_deep_stacks_pass_every_law(name, layers, dtype, law):
    laws.LAWS[law](name, dtype, layers=layers, **small_memory_kwargs(name))


@pytest.mark.parametrize("name", MODELS)
def test_every_name_takes_layers_default_one_and_one_is_the_plain_cell(name):
    assert memory_models.keywords(name)["layers"] == 1
    memory_models.check_kwargs(name, {"layers": 3})
    kwargs = small_memory_kwargs(name)
    torch.manual_seed(0)
    plain = memory_models.make(name, input_size=4, hidden_size=6, **kwargs)
    torch.manual_seed(0)
    one = memory_models.make(name, input_size=4, hidden_size=6, layers=1, **kwargs)
    assert type(one) is type(plain) is memory_models.get(name)
    assert one.state_dict().keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(one.state_dict()[key], value), key


@pytest.mark.parametrize("name", MODELS)
def test_state_is_every_block_state_under_its_index(name):
    kwargs = small_memory_kwargs(name)
    deep = memory_models.make(name, input_size=4, hidden_size=6, layers=3, **kwargs)
    assert isinstance(deep, DeepMemory) and deep.layers == 3
    assert (deep.input_size, deep.hidden_size) == (4, 6)
    assert deep.dtypes == memory_models.get(name).dtypes
    first = memory_models.make(name, input_size=4, hidden_size=6, **kwargs).initial_state(2)
    later = memory_models.make(name, input_size=6, hidden_size=6, **kwargs).initial_state(2)
    expected = {f"{i}.{k}": tuple(v.shape)
                for i, block in enumerate((first, later, later)) for k, v in block.items()}
    state = deep.initial_state(2)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    _, final = deep.scan(torch.randn(2, 5, 4), state)
    assert {k: tuple(v.shape) for k, v in final.items()} == expected


def _by_hand(deep: DeepMemory, x, state, resets, dt):
    """The stack written out from its sub-cells: per block, the cell's own scan from its
    share of the state, then GELU, Linear(H, 2H), a ⊙ σ(g), the residual, LayerNorm."""
    h, final = x, {}
    for i, block in enumerate(deep.blocks):
        own = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{i}.")}
        u, own = block.cell.scan(h, own, resets=resets, integration_timesteps=dt)
        a, g = F.linear(F.gelu(u), block.mix.weight, block.mix.bias).chunk(2, dim=-1)
        skip = h if i or deep.input_size == deep.hidden_size else h @ block.residual.weight.T
        h = F.layer_norm(a * torch.sigmoid(g) + skip, (deep.hidden_size,),
                         block.norm.weight, block.norm.bias, block.norm.eps)
        final.update({f"{i}.{k}": v for k, v in own.items()})
    return h, final


@pytest.mark.parametrize("input_size", [4, 6])         # 6: the first residual is the identity
@pytest.mark.parametrize("name", ["gru", "event_ssm", "mlp"])
def test_output_is_the_composition_of_its_blocks(name, input_size):
    torch.manual_seed(0)
    deep = memory_models.make(name, input_size=input_size, hidden_size=6, layers=3,
                              **small_memory_kwargs(name)).double()
    for block in deep.blocks:                           # away from LayerNorm's identity init
        torch.nn.init.normal_(block.norm.weight)
        torch.nn.init.normal_(block.norm.bias)
    x = torch.randn(2, 7, input_size, dtype=torch.float64)
    state = {k: torch.randn_like(v) for k, v in deep.initial_state(2, dtype=x.dtype).items()}
    resets = torch.zeros(2, 7, dtype=torch.bool)
    resets[0, 3] = True
    dt = torch.rand(2, 7, dtype=torch.float64) * 2
    y, final = deep.scan(x, state, resets=resets, integration_timesteps=dt)
    y_hand, final_hand = _by_hand(deep, x, state, resets, dt)
    torch.testing.assert_close(y, y_hand, atol=1e-12, rtol=1e-12)
    assert final.keys() == final_hand.keys()
    for key in final:
        torch.testing.assert_close(final[key], final_hand[key], atol=1e-12, rtol=1e-12)
    assert (isinstance(deep.blocks[0].residual, torch.nn.Identity)) == (input_size == 6)


@pytest.mark.parametrize("layers", [0, -1, 2.0, "2", True, None])
def test_bad_layers_fail_clearly(layers):
    with pytest.raises(ValueError, match=r"layers must be a positive int .*got " +
                       repr(layers).replace(".", r"\.")):
        memory_models.make("gru", input_size=2, hidden_size=3, layers=layers)


def test_a_cell_may_not_take_layers_itself():
    class Layered(memory_models.MLP):
        def __init__(self, input_size, hidden_size, layers=2):
            super().__init__(input_size, hidden_size)

    with pytest.raises(TypeError, match=r"must not take the keyword\(s\) \['layers'\]"):
        memory_models.register("layered_test_only")(Layered)
    assert "layered_test_only" not in memory_models.available()


def test_stack_checks_sizes_and_is_not_a_registered_name():
    gru = memory_models.get("gru")
    with pytest.raises(ValueError, match="cell 1 takes input_size 4, but cell 0 gives "
                                         "hidden_size 6"):
        DeepMemory([gru(4, 6), gru(4, 6)])
    assert DeepMemory not in {memory_models.get(n) for n in MODELS}


def test_a_built_stack_lists_its_cells_dtypes_to_the_laws():
    deep = memory_models.make("s4d", input_size=2, hidden_size=4, layers=2, state_size=4)
    assert laws.accepted_dtypes(deep) == memory_models.get("s4d").dtypes
    laws.check(deep, dtypes=(torch.float64,))
