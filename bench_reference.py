"""The plain reference of bench.py: the project's architecture written the textbook way (one convolution over
cat(x_t, h) per time step, fp32, contiguous, no compile), loadable with the project's weights."""

import torch
import torch.nn as nn

from frames_io import PHASES
from model import ModelConfig


class PlainConvLSTM(nn.Module):
    """Textbook ConvLSTM stack: each step convolves cat(x_t, h) once, fp32, zero initial state."""

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: int, num_layers: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.cells = nn.ModuleList(
            nn.Conv2d((input_dim if layer == 0 else hidden_dim) + hidden_dim, 4 * hidden_dim, kernel_size,
                      padding=kernel_size // 2)
            for layer in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _, height, width = x.shape  # (B, T, C, H, W)
        layer_input = x
        for conv in self.cells:
            h = x.new_zeros(b, self.hidden_dim, height, width)
            c = x.new_zeros(b, self.hidden_dim, height, width)
            outputs = []
            for step in range(t):
                gates = conv(torch.cat([layer_input[:, step], h], dim=1))  # (B, 4*hid, H, W)
                i, f, o, g = gates.chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            layer_input = torch.stack(outputs, dim=1)  # (B, T, hid, H, W)
        return layer_input


class PlainAutoencoder(nn.Module):
    """The project's architecture written the plain way (no peepholes), for the reference timing."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.peephole or config.upsample != "transposed" or config.init_state != "zero":
            raise ValueError("the plain reference has no peepholes, transposed upsampling only and a zero initial "
                             "state; benchmark a config with peephole=False, upsample='transposed', init_state='zero'")
        c1, c2, c3 = config.cnn_channels
        hid, dec = config.encoder_hidden_dim, config.decoder_hidden_dim
        half, quarter = max(dec // 2, 1), max(dec // 4, 1)

        def stage(conv):
            return nn.Sequential(conv, nn.GroupNorm(min(8, conv.out_channels), conv.out_channels), nn.ReLU())

        self.frame_encoder = nn.Sequential(*(stage(nn.Conv2d(i, o, 3, stride=2, padding=1, bias=False))
                                             for i, o in ((config.in_channels, c1), (c1, c2), (c2, c3))))
        self.encoder = PlainConvLSTM(c3, hid, config.kernel_size, config.encoder_layers)
        self.decoder = PlainConvLSTM(hid, dec, config.kernel_size, config.decoder_layers)
        self.frame_decoder = nn.Sequential(
            stage(nn.ConvTranspose2d(dec, half, 4, stride=2, padding=1, bias=False)),
            stage(nn.ConvTranspose2d(half, quarter, 4, stride=2, padding=1, bias=False)),
            nn.ConvTranspose2d(quarter, config.in_channels, 4, stride=2, padding=1),
        )
        h1, h2 = config.classifier_hidden
        self.classifier = nn.Sequential(nn.Linear(hid, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
                                        nn.Linear(h2, config.num_classes)) if config.use_classifier else None
        self.predictor = (nn.Conv2d(hid, hid, config.kernel_size, padding=config.kernel_size // 2)
                          if config.predict_next else None)
        self.clock = nn.Linear(hid, 1, bias=False) if config.time_head else None
        self.phase_head = nn.Linear(hid, len(PHASES)) if config.phase_head else None

    def decode(self, z_seq: torch.Tensor) -> torch.Tensor:
        b, t = z_seq.shape[:2]  # (B, T, hid, H/8, W/8)
        hidden_seq = self.decoder(z_seq)  # (B, T, dec, H/8, W/8)
        frames = torch.sigmoid(self.frame_decoder(hidden_seq.flatten(0, 1)))  # (B*T, C, H, W)
        return frames.unflatten(0, (b, t))  # (B, T, C, H, W)

    def forward(self, x: torch.Tensor, view: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b, t = x.shape[:2]  # (B, T, C, H, W)
        clips = x if view is None else torch.cat([x, view])  # (B or 2B, T, C, H, W)
        features = self.frame_encoder(clips.flatten(0, 1)).unflatten(0, (len(clips), t))  # (., T, c3, H/8, W/8)
        z_all = self.encoder(features)  # (B or 2B, T, hid, H/8, W/8)
        z_seq = z_all[:b]
        output = {"reconstruction": self.decode(z_seq), "z_seq": z_seq, "z_last": z_seq[:, -1]}
        if view is not None:
            output["z_view"] = z_all[b:]
        pooled = z_seq.mean(dim=(3, 4))  # (B, T, hid)
        if self.clock is not None:
            output["clock"] = self.clock(pooled).squeeze(-1)  # (B, T)
        if self.phase_head is not None:
            output["phase_logits"] = self.phase_head(pooled)  # (B, T, len(PHASES))
        if self.predictor is not None and t > 1:  # frames 2..T from the guessed next latents
            output["prediction"] = self.decode(self.predictor(z_seq[:, :-1].flatten(0, 1)).unflatten(0, (b, t - 1)))
        if self.classifier is not None:
            output["logits"] = self.classifier(output["z_last"].mean(dim=(2, 3)))  # (B, num_classes)
        return output


def reference_state_dict(project_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the project's weights onto PlainAutoencoder: conv over cat(x, h) = [conv_x | conv_h]."""
    state = {}
    for key, value in project_state.items():
        key = key.replace("frame_encoder.layers.", "frame_encoder.").replace("frame_decoder.layers.", "frame_decoder.")
        key = key.replace("classifier.mlp.", "classifier.")
        if ".conv_x." in key:
            cell = key.split(".conv_x.")[0]
            if key.endswith("weight"):
                value = torch.cat([value, project_state[cell + ".conv_h.weight"]], dim=1)
            key = key.replace(".conv_x.", ".")
        elif ".conv_h." in key:
            continue
        state[key] = value.contiguous()
    return state
