"""POPGym's lineup as native cells (memory_models.rnns: elman, indrnn; memory_models.windows:
pos_mlp, frame_stack, frame_conv): fast paths against the step loop, equality with POPGym's
own layers, keyword errors. The interface laws run for all five in tests/test_laws.py.
"""

import gymnasium as gym
import pytest
import torch
from popgym.baselines.models.embeddings import positional_encoding
from popgym.baselines.ray_models.ray_elman import Elman as PopgymElman
from popgym.baselines.ray_models.ray_frameconv import Frameconv as PopgymFrameconv
from popgym.baselines.ray_models.ray_framestack import Framestack as PopgymFramestack
from popgym.baselines.ray_models.ray_indrnn import IndRNN as PopgymIndRNN
from popgym.baselines.ray_models.ray_mlp import MLP as PopgymMLP

import memory_models
from memory_models import Elman, FrameConv, FrameStack, IndRNN, PosMLP
from memory_models.windows import SinePositionEmbedding
pytestmark = pytest.mark.usefixtures("one_thread")

TIGHT = dict(atol=1e-10, rtol=1e-10)       # float64, the same maths in another order
NAMES = ["elman", "indrnn", "pos_mlp", "frame_stack", "frame_conv"]
VARIANTS = [("elman", {}), ("indrnn", {}), ("indrnn", {"max_len": 4}), ("pos_mlp", {"max_len": 16}),
            ("frame_stack", {}), ("frame_stack", {"stack_size": 1}),
            ("frame_stack", {"stack_size": 2, "position_embedding": False}),
            ("frame_conv", {}), ("frame_conv", {"stack_size": 5}),
            ("frame_conv", {"position_embedding": False})]


def build(name, input_size=6, hidden_size=8, seed=0, **kwargs):
    torch.manual_seed(seed)
    return memory_models.make(name, input_size=input_size, hidden_size=hidden_size,
                              **kwargs).double()


def random_state(cell, batch):
    return {k: torch.randn_like(v) for k, v in cell.initial_state(batch).items()}


def step_loop(cell, x, state, resets, lengths):
    """The slow reference: one `step` per t; a row's state stops at its length."""
    outputs = []
    for t in range(x.shape[1]):
        y_t, stepped = cell.step(x[:, t], state, reset=resets[:, t])
        running = (t < lengths)
        state = {k: torch.where(running.view(-1, *[1] * (v.ndim - 1)), stepped[k], v)
                 for k, v in state.items()}
        outputs.append(y_t)
    return torch.stack(outputs, 1), state


@pytest.mark.parametrize("name, kwargs", VARIANTS, ids=lambda v: str(v))
def test_fast_path_equals_step_loop_values_and_gradients(name, kwargs):
    """float64, resets mid-sequence (and at t = 0), a carried random state, lengths; tolerance
    1e-10 (the same maths, computed in another order)."""
    cell = build(name, **kwargs)
    batch, steps = 4, 11
    x = torch.randn(batch, steps, 6, dtype=torch.float64, requires_grad=True)
    state = {k: v.requires_grad_() for k, v in random_state(cell, batch).items()}
    resets = torch.zeros(batch, steps, dtype=torch.bool)
    resets[0, [3, 4, 9]] = resets[1, 0] = resets[1, 6] = resets[3, 2] = True
    lengths = torch.tensor([11, 8, 0, 5])
    valid = (torch.arange(steps) < lengths[:, None]).to(torch.float64)[..., None]
    weights = torch.randn(batch, steps, 8, dtype=torch.float64)
    leaves = [x, *state.values(), *cell.parameters()]

    def loss_and_grads(y, final):
        loss = (y * weights * valid).sum() + sum((v * v).sum() for v in final.values())
        return torch.autograd.grad(loss, leaves)

    y, final = cell.scan(x, state, resets=resets, lengths=lengths)
    y_ref, final_ref = step_loop(cell, x, state, resets, lengths)
    torch.testing.assert_close(y * valid, y_ref * valid, **TIGHT)
    assert final.keys() == final_ref.keys()
    for k in final:
        torch.testing.assert_close(final[k], final_ref[k], **TIGHT)
    for got, want in zip(loss_and_grads(y, final), loss_and_grads(y_ref, final_ref)):
        torch.testing.assert_close(got, want, **TIGHT)


@pytest.mark.parametrize("name", NAMES)
def test_integration_timesteps_are_ignored(name):
    cell = build(name)
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    state = random_state(cell, 2)
    dt = torch.rand(2, 7, dtype=torch.float64) * 5
    y, final = cell.scan(x, state, integration_timesteps=dt)
    y_ref, final_ref = cell.scan(x, state)
    torch.testing.assert_close(y, y_ref, atol=0, rtol=0)
    for k in final:
        torch.testing.assert_close(final[k], final_ref[k], atol=0, rtol=0)


# ---------------------------------------------------------------------- POPGym's own layers
# POPGym's layers know no resets (an RLlib row never crosses an episode) and return the state
# after all T steps whatever seq_lens says, so they are compared on one episode chunk per row,
# from a non-zero state (for the windows: a non-zero window and non-zero start positions),
# all T steps valid. float64 both sides; tolerance 1e-12 (the same operations).
EXACT = dict(atol=1e-12, rtol=1e-12)


def popgym_model(cls, input_size, hidden_size, max_seq_len, **config):
    """POPGym's RLlib model `cls` with memory input input_size and output hidden_size."""
    config = {"preprocessor_input_size": input_size, "preprocessor_output_size": input_size,
              "hidden_size": hidden_size, **config}
    model = cls(gym.spaces.Box(-1.0, 1.0, (3,)), gym.spaces.Discrete(2), 2,
                {"max_seq_len": max_seq_len, "custom_model_config": config}, "popgym")
    return model.double()


def give_our_embedding(theirs, ours):
    """POPGym's sine table is computed in float32 (test_sine_table_equals_popgyms compares it
    with ours at that precision); for the float64 comparison both use our float64 table, and
    POPGym's model our strength."""
    table = ours.embedding.encode(torch.arange(ours.max_len, dtype=torch.float64))
    with torch.no_grad():
        theirs.embedding.weight.copy_(table)
        theirs.embedding_strength.copy_(ours.embedding.strength)


def popgym_memory(theirs, z, state, t_starts):
    """POPGym's BaseModel.forward between the preprocessing and the postprocessor (its
    preprocessor is the default Identity): embedding, then forward_memory."""
    if theirs.cfg["embedding"] is not None:
        z = theirs.apply_embedding(z, t_starts)
    seq_lens = torch.full((z.shape[0],), z.shape[1])
    return theirs.forward_memory(z, state, t_starts, seq_lens)


@pytest.mark.parametrize("max_len", [64, 1024])
def test_sine_table_equals_popgyms(max_len):
    """POPGym computes p·ω in float32: an angle of up to max_len radians carries up to
    ~max_len · 6e-8 of rounding, hence the tolerance 2e-7 · max_len."""
    ours = SinePositionEmbedding(8, max_len).double()
    table = ours.encode(torch.arange(max_len, dtype=torch.float64))
    torch.testing.assert_close(table, positional_encoding(max_len, 8).double(),
                               atol=2e-7 * max_len, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sine_table_lookup_equals_the_formula(dtype):
    """The table path (integer positions in [0, max_len)) equals the formula in float64 (the table
    is the formula's float64 values, 1e-12) and its float64 values cast to float32; positions at
    and past max_len, negative and non-integer ones take the formula in their dtype; the table
    follows .to() / .double() from float64, the strength keeps its gradient."""
    max_len = 32
    embedding = SinePositionEmbedding(5, max_len).float().double().to(dtype)
    assert embedding.table.dtype == dtype and "table" not in embedding.state_dict()
    positions = torch.tensor([[0.0, 1.0, 7.0, 31.0], [30.0, 31.0, 32.0, 100.0],
                              [-1.0, 2.5, 0.0, 1e6]], dtype=dtype)
    on_table = (positions >= 0) & (positions < max_len) & (positions == positions.round())
    exact = embedding.encode(positions.double())
    formula = embedding.encode(positions)
    expected = torch.where(on_table[..., None], exact.to(dtype), formula)
    tolerance = dict(atol=1e-12, rtol=0) if dtype == torch.float64 else dict(atol=0, rtol=0)
    torch.testing.assert_close(embedding.lookup(positions), expected, **tolerance)
    torch.testing.assert_close(embedding.lookup(positions[:1]), exact[:1].to(dtype), **tolerance)
    if dtype == torch.float64:
        torch.testing.assert_close(embedding.lookup(positions), formula, **tolerance)
    else:       # float32's formula rounds p·ω: up to ~max_len · 6e-8 off the table
        torch.testing.assert_close(embedding.lookup(positions[:1]), formula[:1], atol=1e-5, rtol=0)
    x = torch.randn(3, 4, 5, dtype=dtype)
    embedding(x, positions).sum().backward()
    assert embedding.strength.grad is not None and embedding.strength.grad.abs().item() > 0


def test_sine_embedding_of_an_odd_size_drops_the_last_cosine():
    """POPGym's table fails for an odd size; ours is the even table's first `size` columns."""
    odd = SinePositionEmbedding(5, 32).encode(torch.arange(40.0))
    even = SinePositionEmbedding(6, 32).encode(torch.arange(40.0))
    assert odd.shape == (40, 5)
    frequencies = torch.exp(torch.arange(0, 5, 2) * (-torch.log(torch.tensor(32.0)) / 5))
    torch.testing.assert_close(odd[:, 0::2], torch.sin(torch.arange(40.0)[:, None] * frequencies))
    torch.testing.assert_close(even[:, :2], odd[:, :2])


def test_elman_equals_popgyms():
    torch.manual_seed(0)
    theirs = popgym_model(PopgymElman, 6, 8, 32)
    ours = Elman(6, 8).double()
    ours.rnn.load_state_dict(theirs.core.state_dict())
    x, h0 = torch.randn(3, 9, 6, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    y_ref, [h_ref] = popgym_memory(theirs, x, [h0[:, None]], torch.zeros(3, dtype=torch.long))
    y, final = ours.scan(x, {"h": h0})
    torch.testing.assert_close(y, y_ref, **EXACT)
    torch.testing.assert_close(final["h"], h_ref[:, 0], **EXACT)


def test_indrnn_equals_popgyms_including_the_weight_projection():
    torch.manual_seed(0)
    theirs = popgym_model(PopgymIndRNN, 6, 8, 16)
    ours = IndRNN(6, 8, max_len=16).double()
    assert ours.weight_bound == theirs.core.clamp_val
    core = theirs.core
    with torch.no_grad():
        core.weight0[:3] = torch.tensor([1.5, -2.0, -0.3])        # two outside [-r, r]
        core.weight1[:2] = torch.tensor([-1.2, 3.0])
        for layer, ours_linear in enumerate(ours.inputs):
            ours_linear.load_state_dict(getattr(core, f"input{layer}").state_dict())
            ours.recurrent_weights[layer].copy_(getattr(core, f"weight{layer}"))
            ours.biases[layer].copy_(getattr(core, f"bias{layer}"))
    x, h0 = torch.randn(3, 9, 6, dtype=torch.float64), torch.randn(3, 2, 8, dtype=torch.float64)
    y_ref, [h_ref] = popgym_memory(theirs, x, [h0], torch.zeros(3, dtype=torch.long))
    y, final = ours.scan(x, {"h": h0})
    torch.testing.assert_close(y, y_ref, **EXACT)
    torch.testing.assert_close(final["h"], h_ref, **EXACT)
    for layer in range(2):                                   # both projected in place alike
        torch.testing.assert_close(ours.recurrent_weights[layer], getattr(core, f"weight{layer}"))
    assert float(ours.recurrent_weights[1].detach().abs().max()) == 2 ** (1 / 16)


@pytest.mark.parametrize("strength", [0.5, 1.7])      # 1.7: both project it onto [0, 1]
def test_pos_mlp_equals_popgyms_mlp(strength):
    torch.manual_seed(0)
    theirs = popgym_model(PopgymMLP, 6, 8, 40)
    ours = PosMLP(6, 8, max_len=40).double()
    ours.net.load_state_dict(theirs.core.state_dict())
    with torch.no_grad():
        ours.embedding.strength.fill_(strength)
    give_our_embedding(theirs, ours)
    x, t_starts = torch.randn(3, 9, 6, dtype=torch.float64), torch.tensor([0, 5, 30])
    y_ref, state_ref = popgym_memory(theirs, x, [], t_starts)
    y, final = ours.scan(x, {"t": t_starts[:, None].double()})
    assert state_ref == []
    torch.testing.assert_close(y, y_ref, **EXACT)
    torch.testing.assert_close(final["t"], (t_starts[:, None] + 9).double())   # POPGym's t_ends
    assert float(ours.embedding.strength.detach()) == float(theirs.embedding_strength.detach()) \
        == min(strength, 1)


@pytest.mark.parametrize("position_embedding", [True, False])
@pytest.mark.parametrize("cls, popgym_cls, stack_size", [
    (FrameStack, PopgymFramestack, 4), (FrameStack, PopgymFramestack, 2),
    (FrameConv, PopgymFrameconv, 4), (FrameConv, PopgymFrameconv, 2)])
def test_windows_equal_popgyms(cls, popgym_cls, stack_size, position_embedding):
    """(stack_size 1 is left out: POPGym's window state is then the whole padded sequence,
    `time_padded[:, -0:]`, a bug; ours is empty, checked against the step loop above.)"""
    torch.manual_seed(0)
    embedding = "sine" if position_embedding else None
    theirs = popgym_model(popgym_cls, 6, 8, 40, stack_size=stack_size, embedding=embedding)
    ours = cls(6, 8, stack_size=stack_size, position_embedding=position_embedding,
               max_len=40).double()
    if cls is FrameStack:
        ours.compress.load_state_dict(theirs.compress.state_dict())
        ours.net.load_state_dict(theirs.core.state_dict())
    else:
        ours.conv.load_state_dict(theirs.core.state_dict())
    if position_embedding:
        give_our_embedding(theirs, ours)
    x, t_starts = torch.randn(3, 9, 6, dtype=torch.float64), torch.tensor([0, 5, 30])
    window = torch.randn(3, stack_size - 1, 6, dtype=torch.float64)
    y_ref, [window_ref] = popgym_memory(theirs, x, [window], t_starts)
    y, final = ours.scan(x, {"window": window, "t": t_starts[:, None].double()})
    torch.testing.assert_close(y, y_ref, **EXACT)
    torch.testing.assert_close(final["window"], window_ref, **EXACT)


def test_windows_start_an_episode_with_zero_frames_as_popgym():
    """A reset empties the window to POPGym's initial state: k - 1 zero frames, position 0."""
    cell = build("frame_stack")
    x = torch.randn(2, 6, 6, dtype=torch.float64)
    state = random_state(cell, 2)
    resets = torch.zeros(2, 6, dtype=torch.bool)
    resets[:, 2] = True
    y, _ = cell.scan(x, state, resets=resets)
    y_fresh, _ = cell.scan(x[:, 2:], {"window": torch.zeros_like(state["window"]),
                                      "t": torch.zeros_like(state["t"])})
    torch.testing.assert_close(y[:, 2:], y_fresh, **TIGHT)


def test_positions_continue_past_max_len():
    """POPGym's table ends at max_len (its lookup would fail past it); ours is the formula."""
    cell = build("pos_mlp", max_len=8)
    x = torch.randn(1, 20, 6, dtype=torch.float64)
    y, final = cell.scan(x, cell.initial_state(1))
    assert torch.isfinite(y).all() and float(final["t"]) == 20


# ---------------------------------------------------------------------- keywords
@pytest.mark.parametrize("name, kwargs, match", [
    ("indrnn", dict(max_len=1.5), "max_len must be a positive int"),
    ("indrnn", dict(max_len=0), "max_len must be a positive int"),
    ("pos_mlp", dict(max_len=-3), "max_len must be a positive int"),
    ("frame_stack", dict(stack_size=0), "stack_size must be a positive int"),
    ("frame_stack", dict(stack_size=True), "stack_size must be a positive int"),
    ("frame_stack", dict(stack_size=3), r"hidden_size must be a multiple of stack_size.*"
                                        r"hidden_size=8, stack_size=3"),
    ("frame_stack", dict(max_len=0), "max_len must be a positive int"),
    ("frame_conv", dict(stack_size=-1), "stack_size must be a positive int"),
    ("frame_conv", dict(position_embedding="sine"), "position_embedding must be a bool"),
    ("frame_stack", dict(position_embedding=1), "position_embedding must be a bool")])
def test_bad_keywords_name_the_problem(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        memory_models.make(name, input_size=6, hidden_size=8, **kwargs)


def test_popgyms_unused_options_are_not_keywords():
    """POPGym's IndRNN config has an `activation` its layer never reads (always ReLU)."""
    with pytest.raises(memory_models.UnknownKeywordError, match="activation"):
        memory_models.make("indrnn", input_size=6, hidden_size=8, activation="tanh")
    assert memory_models.keywords("indrnn") == {"max_len": 1024, "layers": 1}
    assert memory_models.keywords("frame_conv") == {"stack_size": 4, "position_embedding": True,
                                                    "max_len": 1024, "layers": 1}


def test_frame_conv_needs_no_multiple_of_stack_size():
    cell = memory_models.make("frame_conv", input_size=6, hidden_size=7, stack_size=4)
    y, state = cell.scan(torch.randn(2, 5, 6), cell.initial_state(2))
    assert y.shape == (2, 5, 7) and state["window"].shape == (2, 3, 6)
