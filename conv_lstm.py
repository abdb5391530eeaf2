"""Convolutional LSTM (Shi et al. 2015): a cell and a multi-layer, batch-first stack.

The input-to-hidden convolution of a layer runs once over all B*T frames; only the
hidden-to-hidden convolution stays inside the time loop. The cell state is kept in fp32 under
autocast so that long recordings do not drift in bf16.
"""

import torch
import torch.nn as nn

State = tuple[torch.Tensor, torch.Tensor]


def gate_update(gates_x: torch.Tensor, gates_h: torch.Tensor, c: torch.Tensor, w_ci: torch.Tensor | None = None,
                w_cf: torch.Tensor | None = None, w_co: torch.Tensor | None = None) -> State:
    """The pointwise part of one step: gates (B, 4*hid, H, W) and c (B, hid, H, W) -> (h, c), c in fp32."""
    i, f, o, g = (gates_x + gates_h).float().chunk(4, dim=1)  # (B, hid, H, W) each
    if w_ci is not None:
        i = i + w_ci * c
        f = f + w_cf * c
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    if w_co is not None:
        o = o + w_co * c
    h = torch.sigmoid(o) * torch.tanh(c)
    return h.to(gates_x.dtype), c


class ConvLSTMCell(nn.Module):
    """One ConvLSTM cell with gates i, f, o, g and optional per-channel peepholes."""

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: int = 3, peephole: bool = False):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"ConvLSTM kernel_size must be odd so frames keep their size, got {kernel_size}")
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        padding = kernel_size // 2
        self.conv_x = nn.Conv2d(input_dim, 4 * hidden_dim, kernel_size, padding=padding, bias=True)
        self.conv_h = nn.Conv2d(hidden_dim, 4 * hidden_dim, kernel_size, padding=padding, bias=False)
        with torch.no_grad():  # forget-gate bias 1: remember by default early in training
            self.conv_x.bias.zero_()
            self.conv_x.bias[hidden_dim:2 * hidden_dim].fill_(1.0)
        # Peepholes W_ci, W_cf, W_co act on the cell state per channel (Shi et al. use a full
        # H x W map; per channel keeps the cell independent of the image size).
        self.peephole = peephole
        if peephole:
            self.w_ci = nn.Parameter(torch.zeros(1, hidden_dim, 1, 1))
            self.w_cf = nn.Parameter(torch.zeros(1, hidden_dim, 1, 1))
            self.w_co = nn.Parameter(torch.zeros(1, hidden_dim, 1, 1))
        self.update = gate_update  # compile_gate_updates() swaps in a fused (compiled) version

    def init_state(self, like: torch.Tensor) -> State:
        """Zero (h, c) matching the batch, size, device and dtype of like (B, *, H, W); c is fp32."""
        shape = (like.shape[0], self.hidden_dim, *like.shape[-2:])
        h = torch.zeros(shape, device=like.device, dtype=like.dtype)
        c = torch.zeros(shape, device=like.device, dtype=torch.float32)
        return h, c

    def step(self, gates_x: torch.Tensor, state: State) -> State:
        """Advance one step given the precomputed input gates conv_x(x_t)."""
        h, c = state  # (B, hid, H, W) each
        peepholes = (self.w_ci, self.w_cf, self.w_co) if self.peephole else (None, None, None)
        return self.update(gates_x, self.conv_h(h), c, *peepholes)

    def forward(self, x: torch.Tensor, state: State | None = None) -> State:
        """One time step on a frame batch x (B, C, H, W); returns the new (h, c)."""
        gates_x = self.conv_x(x)  # (B, 4*hid, H, W)
        return self.step(gates_x, state if state is not None else self.init_state(gates_x))


class ConvLSTM(nn.Module):
    """Stacked ConvLSTM over (B, T, C, H, W) input; state in and out."""

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: int = 3, num_layers: int = 1,
                 peephole: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"ConvLSTM needs at least one layer, got num_layers={num_layers}")
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.cells = nn.ModuleList(
            ConvLSTMCell(input_dim if layer == 0 else hidden_dim, hidden_dim, kernel_size, peephole)
            for layer in range(num_layers)
        )

    def forward(self, x: torch.Tensor, state: list[State] | None = None) -> tuple[torch.Tensor, list[State]]:
        """Run every layer over the sequence.

        Returns the last layer's hidden state at every step (B, T, hid, H, W) and each layer's
        final (h, c). Passing that state back in continues the sequence exactly.
        """
        if state is not None and len(state) != self.num_layers:
            raise ValueError(f"expected a state for each of {self.num_layers} layers, got {len(state)}")
        b, t = x.shape[:2]
        final_state = []
        layer_input = x  # (B, T, C, H, W)
        for layer, cell in enumerate(self.cells):
            frames = layer_input.reshape(b * t, *layer_input.shape[2:])  # (B*T, C, H, W)
            gates_x = cell.conv_x(frames)  # (B*T, 4*hid, H, W): one convolution for all steps
            gates_x = gates_x.reshape(b, t, *gates_x.shape[1:])  # (B, T, 4*hid, H, W)
            layer_state = state[layer] if state is not None else cell.init_state(gates_x[:, 0])
            outputs = []
            # unbind, not gates_x[:, t]: each slice's backward would allocate a full-size gradient
            for gates_x_t in gates_x.unbind(1):  # (B, 4*hid, H, W)
                layer_state = cell.step(gates_x_t, layer_state)
                outputs.append(layer_state[0])
            layer_input = torch.stack(outputs, dim=1)  # (B, T, hid, H, W)
            final_state.append(layer_state)
        return layer_input, final_state


def compile_gate_updates(module: nn.Module) -> nn.Module:
    """Fuse the gate arithmetic of every ConvLSTMCell in module with torch.compile (not the unrolled loop).

    The convolutions stay eager; one compiled forward and backward kernel replace about a dozen pointwise
    ops per step. Costs a one-off compilation (about 20 s on a 2-core CPU); same arithmetic, equal up to
    rounding. Compiled for any batch and width (dynamic): static shapes made one variant per batch size, layer
    width and grad mode (a run's full and last batches, validation's, the B=1 reconstruction: more than the 8
    torch allows a function), after which torch gave up with a warning and ran the rest eager.
    """
    fused = torch.compile(gate_update, dynamic=True)
    for cell in module.modules():
        if isinstance(cell, ConvLSTMCell):
            cell.update = fused
    return module
