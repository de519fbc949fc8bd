"""gtrxl (memory_models/gtrxl.py): equal to RLlib's old-stack GTrXLNet with its weights copied
in (float64), where the two define the same thing, and to a per-step loop written out here
(values and gradients) with resets, lengths and a carried window; the terms where ours and
RLlib's differ are stated by tests of their own. The interface laws cover it by registration.
"""

import math

import pytest
import torch

import memory_models
from memory_models.gtrxl import GTrXL

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = dict(atol=1e-10, rtol=1e-10)     # float64, ours vs RLlib's and vs the loop


# ---------------------------------------------------------------------- RLlib's GTrXLNet
def rllib_gtrxl(input_size, hidden, heads, head_size, mlp, memory, max_seq_len):
    """RLlib's GTrXLNet as its AttentionWrapper builds it (num_outputs None: the units' output,
    no logits), one unit, memory τ = `memory` for training and inference, float64, with
    its LayerNorms and gate biases randomised (so the copy covers every weight)."""
    gym = pytest.importorskip("gymnasium")
    attention_net = pytest.importorskip("ray.rllib.models.torch.attention_net")
    net = attention_net.GTrXLNet(
        gym.spaces.Box(-1.0, 1.0, (input_size,)), gym.spaces.Discrete(2), None,
        {"max_seq_len": max_seq_len}, "gtrxl", num_transformer_units=1, attention_dim=hidden,
        num_heads=heads, head_dim=head_size, memory_inference=memory, memory_training=memory,
        position_wise_mlp_dim=mlp, init_gru_gate_bias=2.0).double()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "layernorm" in name.lower() or "_layer.0." in name or "_bias_z" in name \
                    or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.3)
        # RLlib computes the sinusoid's frequencies in float32 at construction (.double()
        # casts the buffer); in float64 here, so the comparison holds at float64 precision
        # (with the float32 frequencies the outputs differ by ~2e-10)
        embedding = net.attention_layers[0]._layer._rel_pos_embedding
        embedding.inverse_freq.copy_(1 / 10000 ** (torch.arange(
            0, hidden, 2.0, dtype=torch.float64) / hidden))
    return net


def paired(net, cell: GTrXL, get=lambda p: p) -> list:
    """(our parameter, get(RLlib's parameter)) for each pair (module doc of gtrxl.py); the
    gates' three matrices side by side."""
    mha, mlp = net.attention_layers[0], net.attention_layers[1]
    attention = mha._layer
    pairs = [(cell.input.weight, get(net.linear_layer._model[0].weight)),
             (cell.input.bias, get(net.linear_layer._model[0].bias)),
             (cell.attention_norm.weight, get(attention._input_layernorm.weight)),
             (cell.attention_norm.bias, get(attention._input_layernorm.bias)),
             (cell.qkv.weight, get(attention._qkv_layer._model[0].weight)),
             (cell.position.weight, get(attention._pos_proj._model[0].weight)),
             (cell.content_bias, get(attention._uvar)), (cell.position_bias, get(attention._vvar)),
             (cell.attention_out.weight, get(attention._linear_layer._model[0].weight)),
             (cell.mlp_norm.weight, get(mlp._layer[0].weight)),
             (cell.mlp_norm.bias, get(mlp._layer[0].bias)),
             (cell.mlp[0].weight, get(mlp._layer[1]._model[0].weight)),
             (cell.mlp[2].weight, get(mlp._layer[2]._model[0].weight))]
    for ours, gate in ((cell.attention_gate, mha._fan_in_layer),
                       (cell.mlp_gate, mlp._fan_in_layer)):
        pairs += [(ours.input_weights, torch.cat([get(gate._w_r), get(gate._w_z),
                                                  get(gate._w_h)], dim=1)),
                  (ours.state_weights, torch.cat([get(gate._u_r), get(gate._u_z),
                                                  get(gate._u_h)], dim=1)),
                  (ours.gate_bias, get(gate._bias_z))]
    return pairs


def copy_rllib_weights(net, cell: GTrXL) -> None:
    """Our cell's parameters := RLlib's."""
    with torch.no_grad():
        for ours, theirs in paired(net, cell):
            ours.copy_(theirs)


def rllib_forward(net, x, memory):
    """GTrXLNet.forward on x (B, T, I) with memory (B, τ, H) -> (y (B, T, H), the linear
    layer's outputs (B, T, H): its memory for later steps)."""
    batch, steps = x.shape[:2]
    out, memory_outs = net({"obs": x.reshape(batch * steps, -1)}, [memory],
                           torch.full((batch,), steps))
    return out.view(batch, steps, -1), memory_outs[0].view(batch, steps, -1)


def ours_and_rllib(window, tau, steps, heads=2, head_size=3, hidden=8, mlp=5, input_size=3):
    torch.manual_seed(0)
    net = rllib_gtrxl(input_size, hidden, heads, head_size, mlp, tau, steps)
    cell = GTrXL(input_size, hidden, window=window, heads=heads, head_dim=head_size,
                 mlp_size=mlp).double()
    copy_rllib_weights(net, cell)
    return cell, net


def test_parameters_are_rllibs_one_to_one():
    cell, net = ours_and_rllib(window=7, tau=6, steps=1)
    assert sum(p.numel() for p in cell.parameters()) == sum(p.numel() for p in net.parameters())


def test_rollout_steps_equal_rllib():
    """Rollout (T = 1) with memory τ = W − 1, as RLlib's memory_inference: four steps, each
    from the memory RLlib's view requirements would assemble (its last τ memory outputs);
    outputs, and our window = RLlib's memory, equal."""
    window, tau = 7, 6
    cell, net = ours_and_rllib(window, tau, steps=1)
    generator = torch.Generator().manual_seed(1)
    memory = torch.randn(3, tau, 8, generator=generator, dtype=torch.float64)
    state = {"memory": memory.clone(), "valid": torch.ones(3, tau, dtype=torch.float64)}
    for _ in range(4):
        x_t = torch.randn(3, 3, generator=generator, dtype=torch.float64)
        y_rllib, memory_out = rllib_forward(net, x_t[:, None], memory)
        y, state = cell.step(x_t, state)
        torch.testing.assert_close(y, y_rllib[:, 0], **TOL)
        memory = torch.cat([memory, memory_out], 1)[:, 1:]
        torch.testing.assert_close(state["memory"], memory, **TOL)


def test_training_chunk_equals_rllib_with_the_window_of_its_segment():
    """A training chunk of T steps after a memory of τ steps: RLlib's query i sees the τ
    memory steps and the chunk's steps up to i (τ + i + 1 keys). Ours with W = τ + T and a
    window whose last τ slots hold RLlib's memory (ω = 1) and the first W − 1 − τ are empty
    sees the same keys at the same offsets: outputs, the state's new entries and the
    gradients of the parameters and of the input equal. (RLlib detaches its memory: the
    memory's gradient is ours alone, see test_differences_from_rllib.)"""
    tau, steps = 6, 5
    window = tau + steps
    cell, net = ours_and_rllib(window, tau, steps)
    generator = torch.Generator().manual_seed(2)
    memory = torch.randn(2, tau, 8, generator=generator, dtype=torch.float64)
    x = torch.randn(2, steps, 3, generator=generator, dtype=torch.float64)
    state = cell.initial_state(2)
    state["memory"][:, -tau:] = memory
    state["valid"][:, -tau:] = 1.0
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, final = cell.scan(x_ours, state)
    y_rllib, memory_out = rllib_forward(net, x_theirs, memory)
    torch.testing.assert_close(y, y_rllib, **TOL)
    torch.testing.assert_close(final["memory"][:, -steps:], memory_out, **TOL)
    y.square().sum().backward()
    y_rllib.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOL)
    pairs = paired(net, cell, get=lambda p: p.grad)
    assert len(pairs) == len(list(cell.parameters()))
    for ours, theirs in pairs:
        torch.testing.assert_close(ours.grad, theirs, **TOL)


def test_differences_from_rllib():
    """The stated terms: (1) in a training chunk RLlib's window grows (query i sees τ + i + 1
    steps), ours stays W: with W = τ + 1 the first step agrees, the later ones do not;
    (2) RLlib detaches its memory, ours passes gradients to it."""
    tau, steps = 4, 3
    cell, net = ours_and_rllib(tau + 1, tau, steps)
    generator = torch.Generator().manual_seed(3)
    memory = torch.randn(2, tau, 8, generator=generator, dtype=torch.float64)
    x = torch.randn(2, steps, 3, generator=generator, dtype=torch.float64)
    state = {"memory": memory.clone().requires_grad_(),
             "valid": torch.ones(2, tau, dtype=torch.float64)}
    y, _ = cell.scan(x, state)
    y_rllib, _ = rllib_forward(net, x, memory)
    torch.testing.assert_close(y[:, 0], y_rllib[:, 0], **TOL)
    assert (y[:, 1:] - y_rllib[:, 1:]).abs().max() > 1e-6
    assert torch.autograd.grad(y.sum(), state["memory"])[0].abs().sum() > 0
    theirs = memory.clone().requires_grad_()
    y_rllib, _ = rllib_forward(net, x, theirs)
    assert torch.autograd.grad(y_rllib.sum(), theirs, allow_unused=True)[0] is None


# ---------------------------------------------------------------------- per-step loop
def per_step_reference(cell: GTrXL, x, state, resets, lengths):
    """The module docstring's equations, one row and one step at a time: a list holds the
    window's (u, ω) entries, the oldest first; a reset empties it."""
    batch, steps = x.shape[:2]
    n, d, window, hidden = cell.heads, cell.head_size, cell.window, cell.hidden_size
    frequency = 1.0 / 10000 ** (torch.arange(0, hidden, 2, dtype=torch.float64) / hidden)

    def phi(offset: int):
        return torch.cat([torch.sin(offset * frequency), torch.cos(offset * frequency)])[:hidden]

    outputs, finals = [], {"memory": [], "valid": []}
    for b in range(batch):
        entries = [(state["memory"][b, j], state["valid"][b, j]) for j in range(window - 1)]
        row, final = [], list(entries)
        for t in range(steps):
            if resets[b, t]:
                entries = []
            u = cell.input(x[b, t])
            entries = (entries + [(u, torch.ones((), dtype=x.dtype))])[-window:]
            q = cell.qkv(cell.attention_norm(u)).view(3, n, d)[0]
            heads_out = []
            for h in range(n):
                scores, vals = [], []
                for age, (u_j, w_j) in enumerate(reversed(entries)):
                    if w_j <= 0:
                        continue
                    _, k_j, v_j = cell.qkv(cell.attention_norm(u_j)).view(3, n, d)[:, h]
                    r = cell.position(phi(age)).view(n, d)[h]
                    scores.append(((q[h] + cell.content_bias[h]) @ k_j
                                   + (q[h] + cell.position_bias[h]) @ r) / math.sqrt(d)
                                  + torch.log(w_j))
                    vals.append(v_j)
                weights = torch.softmax(torch.stack(scores), 0)
                heads_out.append((weights[:, None] * torch.stack(vals)).sum(0))
            a = cell.attention_gate(u, torch.relu(cell.attention_out(torch.cat(heads_out))))
            row.append(cell.mlp_gate(a, cell.mlp(cell.mlp_norm(a))))
            if t + 1 == lengths[b]:
                final = list(entries)
        outputs.append(torch.stack(row))
        final = final[-(window - 1):] if window > 1 else []
        empty = (torch.zeros(hidden, dtype=x.dtype), torch.zeros((), dtype=x.dtype))
        final = [empty] * (window - 1 - len(final)) + final
        for key, column in zip(("memory", "valid"), zip(*final) if final else ()):
            finals[key].append(torch.stack(column))
    return torch.stack(outputs), {k: torch.stack(v) for k, v in finals.items()}


@pytest.mark.parametrize("window, steps, reset_steps", [
    (4, 13, [(0, 0), (0, 3), (0, 4), (1, 8), (2, 5)]),     # W < T: window edges, blocks
    (20, 6, [(0, 2), (1, 5)]),                             # W > T: one block
])
def test_scan_equals_per_step_reference(window, steps, reset_steps):
    torch.manual_seed(0)
    cell = GTrXL(3, 8, window=window, heads=2, head_dim=3, mlp_size=5).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, steps, 3, generator=generator, dtype=torch.float64)
    resets = torch.zeros(3, steps, dtype=torch.bool)
    for b, t in reset_steps:
        resets[b, t] = True
    lengths = torch.tensor([steps, steps // 2 + 1, 0])
    state = cell.initial_state(3)
    for b, filled in enumerate([window - 1, (window - 1) // 2, 0]):
        if filled:
            state["memory"][b, -filled:] = torch.randn(filled, 8, generator=generator,
                                                       dtype=torch.float64)
            state["valid"][b, -filled:] = 1.0
    results = []
    for run in (lambda x, s: cell.scan(x, s, resets=resets, lengths=lengths),
                lambda x, s: per_step_reference(cell, x, s, resets, lengths)):
        x_leaf = x.clone().requires_grad_()
        leaves = {k: v.clone().requires_grad_() for k, v in state.items()}
        y, final = run(x_leaf, leaves)
        y = torch.cat([y[b, :int(n)] for b, n in enumerate(lengths)])
        loss = y.square().sum() + final["memory"].sum() + 2 * final["valid"].sum()
        grads = torch.autograd.grad(loss, [x_leaf, *leaves.values(), *cell.parameters()])
        results.append((y, final, grads))
    (y, final, grads), (y_ref, final_ref, grads_ref) = results
    torch.testing.assert_close(y, y_ref, **TOL)
    for key in final:
        torch.testing.assert_close(final[key], final_ref[key], **TOL, msg=key)
    names = ["x", *state, *(n for n, _ in cell.named_parameters())]
    for name, g, g_ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, **TOL, msg=name)


def test_gates_start_near_the_identity():
    """At initialisation (b_g = 2) each gate's output stays near its h (RLlib's point of
    init_gru_gate_bias); with b_g = −10 the gate passes its candidate."""
    torch.manual_seed(0)
    cell = memory_models.make("gtrxl", input_size=8, hidden_size=16)
    h, x = torch.randn(64, 16), torch.randn(64, 16)
    moved = (cell.attention_gate(h, x) - h).abs().mean() / h.abs().mean()
    assert moved < 0.25
    open_gate = GTrXL(8, 16, gate_bias=-10.0).attention_gate
    assert (open_gate(h, x) - h).abs().mean() / h.abs().mean() > 0.5


@pytest.mark.parametrize("hidden", [4, 12, 20, 64, 100, 256])
def test_defaults_follow_hidden_size(hidden):
    cell = memory_models.make("gtrxl", input_size=3, hidden_size=hidden)
    assert cell.window == 64 and cell.heads * cell.head_size == hidden
    assert cell.mlp_size == hidden
    y, state = cell.scan(torch.randn(2, 5, 3), cell.initial_state(2))
    assert y.shape == (2, 5, hidden) and state["memory"].shape == (2, 63, hidden)


@pytest.mark.parametrize("kwargs, message", [
    ({"window": 0}, r"window must be a positive int"),
    ({"heads": 5}, r"heads must divide hidden_size \(or give head_dim\) = 6 "
                   r"\(allowed: \[1, 2, 3, 6\]\), got 5"),
    ({"heads": 5, "head_dim": 0}, r"head_dim must be a positive int"),
    ({"mlp_size": -1}, r"mlp_size must be a positive int"),
    ({"gate_bias": float("nan")}, r"gate_bias must be a finite number"),
])
def test_bad_keywords_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        memory_models.make("gtrxl", input_size=4, hidden_size=6, **kwargs)


def test_heads_need_not_divide_hidden_with_a_head_dim():
    """As RLlib's num_heads x head_dim: any width of the heads."""
    cell = memory_models.make("gtrxl", input_size=4, hidden_size=6, heads=5, head_dim=2)
    y, _ = cell.scan(torch.randn(2, 3, 4), cell.initial_state(2))
    assert y.shape == (2, 3, 6)
