"""ConvLSTM cell and stack: the fast batched form equals the textbook equations."""

import pytest
import torch
import torch.nn.functional as F

from conv_lstm import ConvLSTM, ConvLSTMCell


def plain_convlstm(cells, x):
    """Textbook ConvLSTM: per step, one convolution over cat(x_t, h) with the cells' weights."""
    b, t, _, height, width = x.shape
    layer_input = x
    for cell in cells:
        h = torch.zeros(b, cell.hidden_dim, height, width)
        c = torch.zeros(b, cell.hidden_dim, height, width)
        weight = torch.cat([cell.conv_x.weight, cell.conv_h.weight], dim=1)
        outputs = []
        for step in range(t):
            gates = F.conv2d(torch.cat([layer_input[:, step], h], dim=1), weight, cell.conv_x.bias,
                             padding=cell.conv_x.padding)
            i, f, o, g = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        layer_input = torch.stack(outputs, dim=1)
    return layer_input, (h, c)


def test_batched_input_convolution_equals_plain_form():
    torch.manual_seed(0)
    stack = ConvLSTM(3, 6, kernel_size=3, num_layers=2)
    x = torch.randn(2, 5, 3, 8, 8)
    fast, state = stack(x)
    plain, (h_last, c_last) = plain_convlstm(stack.cells, x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state[-1][0], h_last, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state[-1][1], c_last, rtol=1e-5, atol=1e-6)


def test_single_step_cell_matches_stack():
    torch.manual_seed(1)
    stack = ConvLSTM(2, 4, num_layers=1)
    x = torch.randn(1, 3, 2, 6, 6)
    expected, _ = stack(x)
    state = None
    for step in range(3):
        state = stack.cells[0](x[:, step], state)
        torch.testing.assert_close(state[0], expected[:, step])


def test_state_passed_in_continues_the_sequence():
    torch.manual_seed(2)
    stack = ConvLSTM(2, 4, num_layers=2, peephole=True)
    with torch.no_grad():
        for cell in stack.cells:
            for p in (cell.w_ci, cell.w_cf, cell.w_co):
                p.normal_()
    x = torch.randn(2, 7, 2, 6, 6)
    whole, whole_state = stack(x)
    first, state = stack(x[:, :3])
    second, chunk_state = stack(x[:, 3:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    for (h1, c1), (h2, c2) in zip(whole_state, chunk_state, strict=True):
        torch.testing.assert_close(h1, h2)
        torch.testing.assert_close(c1, c2)


def test_forget_gate_bias_starts_at_one():
    cell = ConvLSTMCell(3, 5)
    bias = cell.conv_x.bias.detach()
    assert torch.equal(bias[5:10], torch.ones(5))
    assert torch.equal(torch.cat([bias[:5], bias[10:]]), torch.zeros(15))
    assert cell.conv_h.bias is None


def test_peephole_changes_output_and_gets_gradients():
    torch.manual_seed(3)
    stack = ConvLSTM(2, 4, peephole=True)
    x = torch.randn(1, 4, 2, 6, 6)
    out_zero, _ = stack(x)
    with torch.no_grad():
        stack.cells[0].w_cf.fill_(2.0)
    out_peep, _ = stack(x)
    assert not torch.allclose(out_zero, out_peep)
    out_peep.square().sum().backward()
    for name in ("w_ci", "w_cf", "w_co"):
        grad = getattr(stack.cells[0], name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_even_kernel_is_refused():
    with pytest.raises(ValueError, match="odd"):
        ConvLSTMCell(1, 4, kernel_size=4)


def test_wrong_number_of_layer_states_is_refused():
    stack = ConvLSTM(1, 4, num_layers=2)
    _, state = stack(torch.randn(1, 2, 1, 4, 4))
    with pytest.raises(ValueError, match="2 layers"):
        stack(torch.randn(1, 2, 1, 4, 4), state[:1])


def test_cell_state_stays_fp32_under_bf16_autocast():
    stack = ConvLSTM(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = stack(torch.randn(1, 3, 2, 6, 6))
    assert out.dtype == torch.bfloat16
    assert state[0][1].dtype == torch.float32
