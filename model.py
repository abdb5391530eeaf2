"""ConvLSTM autoencoder for embryo time-lapse clips: config, encoder, decoder, classifier, loading."""

import argparse
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from checkpoint import load_checkpoint
from cli import InputError
from conv_lstm import ConvLSTM, State, compile_gate_updates
from frames_io import PHASES

UPSAMPLINGS = ("transposed", "resize")
# The encoder's state before a recording's first frame: zero (the seed's); learned (a trained (h, c) per layer and
# channel); prime (the first frame shown PRIME_STEPS times first), so the first latents are no warm-up transient.
INIT_STATES = ("zero", "learned", "prime")
PRIME_STEPS = 4


@dataclass
class ModelConfig:
    """Model hyper-parameters; the defaults are the high-quality configuration of DESIGN.md."""

    image_size: int = 128
    in_channels: int = 1
    cnn_channels: tuple[int, int, int] = (64, 128, 256)  # three stride-2 stages: H -> H/8
    encoder_hidden_dim: int = 256
    encoder_layers: int = 2
    decoder_hidden_dim: int = 128
    decoder_layers: int = 2
    kernel_size: int = 3
    use_classifier: bool = True
    num_classes: int = 2
    classifier_hidden: tuple[int, int] = (512, 256)
    peephole: bool = False
    upsample: str = "transposed"  # decoder stages: "transposed" (the seed's) or "resize" (nearest x2, then 3x3 conv)
    predict_next: bool = False  # a kernel_size convolution guesses z_(t+1) from z_t; the decoder draws frame t+1
    init_state: str = "zero"  # INIT_STATES: the encoder's state before the first frame of a recording
    time_head: bool = False  # a linear clock read from each frame's pooled latent (the time-gap objective)
    phase_head: bool = False  # a per-frame phase classifier on the pooled latent (supervised: --phase_weight)

    def __post_init__(self):
        self.cnn_channels = tuple(self.cnn_channels)
        self.classifier_hidden = tuple(self.classifier_hidden)
        for name in ("in_channels", "encoder_hidden_dim", "encoder_layers", "decoder_hidden_dim", "decoder_layers",
                     "kernel_size", "num_classes"):
            if not getattr(self, name) >= 1:
                raise InputError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.image_size <= 0 or self.image_size % 8 != 0:
            raise InputError(f"image_size must be a positive multiple of 8 (three stride-2 stages), "
                             f"got {self.image_size}")
        if len(self.cnn_channels) != 3:
            raise InputError(f"cnn_channels needs three stages, got {self.cnn_channels}")
        if self.upsample not in UPSAMPLINGS:
            raise InputError(f"--upsample must be one of {UPSAMPLINGS}, got {self.upsample!r}")
        if self.init_state not in INIT_STATES:
            raise InputError(f"--init_state must be one of {INIT_STATES}, got {self.init_state!r}")
        if self.kernel_size % 2 == 0:
            raise InputError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.use_classifier and self.num_classes < 2:
            raise InputError(f"--num_classes must be at least 2 for the classifier, got {self.num_classes}")


def _conv_stage(in_ch: int, out_ch: int) -> nn.Sequential:
    """Stride-2 convolution halving the frame: conv, GroupNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=False),
        nn.GroupNorm(min(8, out_ch), out_ch),
        nn.ReLU(inplace=True),
    )


def _upsample(in_ch: int, out_ch: int, mode: str, bias: bool) -> nn.Sequential:
    """Double the frame: a stride-2 transposed convolution, or nearest resize then a 3x3 convolution (no
    checkerboard: every output pixel sees the same number of inputs)."""
    if mode == "transposed":
        return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=bias))
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias))


def _deconv_stage(in_ch: int, out_ch: int, mode: str) -> nn.Sequential:
    """Upsampling stage doubling the frame: upsample, GroupNorm, ReLU."""
    return nn.Sequential(
        *_upsample(in_ch, out_ch, mode, bias=False),
        nn.GroupNorm(min(8, out_ch), out_ch),
        nn.ReLU(inplace=True),
    )


class FrameEncoder(nn.Module):
    """2-D CNN applied to every frame: (N, C, H, W) -> (N, cnn_channels[-1], H/8, W/8)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c1, c2, c3 = config.cnn_channels
        self.layers = nn.Sequential(_conv_stage(config.in_channels, c1), _conv_stage(c1, c2), _conv_stage(c2, c3))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.layers(frames)  # (N, C, H, W) -> (N, c3, H/8, W/8)


class FrameDecoder(nn.Module):
    """Transposed CNN: (N, decoder_hidden_dim, H/8, W/8) -> (N, in_channels, H, W) in [0, 1]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.decoder_hidden_dim
        half, quarter = max(hidden // 2, 1), max(hidden // 4, 1)  # 128 -> 64 -> 32 -> in_channels
        self.layers = nn.Sequential(
            _deconv_stage(hidden, half, config.upsample),
            _deconv_stage(half, quarter, config.upsample),
            *_upsample(quarter, config.in_channels, config.upsample, bias=True),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(features))  # (N, hid, h, w) -> (N, C, 8h, 8w)


class Classifier(nn.Module):
    """Empty well vs embryo from z_last: global average pool, then an MLP (no BatchNorm: works at B=1)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        h1, h2 = config.classifier_hidden
        self.mlp = nn.Sequential(
            nn.Linear(config.encoder_hidden_dim, h1), nn.ReLU(inplace=True),
            nn.Linear(h1, h2), nn.ReLU(inplace=True),
            nn.Linear(h2, config.num_classes),
        )

    def forward(self, z_last: torch.Tensor) -> torch.Tensor:
        pooled = z_last.float().mean(dim=(2, 3))  # (B, hid)
        return self.mlp(pooled)  # (B, num_classes)


class ConvLSTMAutoencoder(nn.Module):
    """Frames -> CNN -> ConvLSTM encoder (z_seq, z_last) -> ConvLSTM decoder -> frames."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.frame_encoder = FrameEncoder(config)
        self.encoder = ConvLSTM(config.cnn_channels[-1], config.encoder_hidden_dim, config.kernel_size,
                                config.encoder_layers, config.peephole)
        self.decoder = ConvLSTM(config.encoder_hidden_dim, config.decoder_hidden_dim, config.kernel_size,
                                config.decoder_layers, config.peephole)
        self.frame_decoder = FrameDecoder(config)
        self.classifier = Classifier(config) if config.use_classifier else None
        # made last, so that the other parts start from the same weights with or without them (the untrained control
        # of every objective is the same model)
        hidden = config.encoder_hidden_dim
        self.predictor = (nn.Conv2d(hidden, hidden, config.kernel_size, padding=config.kernel_size // 2)
                          if config.predict_next else None)
        self.start = (nn.Parameter(torch.zeros(config.encoder_layers, 2, hidden, 1, 1))  # (layers, h|c, hid, 1, 1)
                      if config.init_state == "learned" else None)
        self.clock = nn.Linear(hidden, 1, bias=False) if config.time_head else None
        self.phase_head = nn.Linear(hidden, len(PHASES)) if config.phase_head else None

    def encode(self, x: torch.Tensor, state: list[State] | None = None) -> tuple[torch.Tensor, list[State]]:
        """Latent sequence of a clip; pass the returned state back in to continue a long video."""
        if x.ndim != 5 or x.shape[2] != self.config.in_channels:
            raise ValueError(f"expected input (B, T, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        b, t = x.shape[:2]
        features = self.frame_encoder(x.flatten(0, 1))  # (B*T, c3, H/8, W/8)
        features = features.unflatten(0, (b, t))  # (B, T, c3, H/8, W/8)
        if state is None:  # a recording's first frame
            state = self.initial_state(features)
        return self.encoder(features, state)  # z_seq (B, T, enc_hid, H/8, W/8), state

    def initial_state(self, features: torch.Tensor) -> list[State] | None:
        """The encoder's state before the first frame of features (B, T, c3, h, w), as config.init_state says: None
        (zero), the learned (h, c) of each layer spread over the frame, or the state after the first frame shown
        PRIME_STEPS times."""
        if self.config.init_state == "prime":
            first = features[:, :1].expand(-1, PRIME_STEPS, -1, -1, -1)  # (B, PRIME_STEPS, c3, h, w)
            return self.encoder(first)[1]
        if self.start is None:
            return None
        shape = (features.shape[0], -1, *features.shape[-2:])  # (B, hid, h, w)
        return [(h.to(features.dtype).expand(shape), c.float().expand(shape)) for h, c in self.start]

    def decode(self, z_seq: torch.Tensor) -> torch.Tensor:
        """Reconstruct the frames of z_seq (B, T, enc_hid, h, w) -> (B, T, C, 8h, 8w)."""
        b, t = z_seq.shape[:2]
        hidden_seq, _ = self.decoder(z_seq)  # (B, T, dec_hid, h, w)
        frames = self.frame_decoder(hidden_seq.flatten(0, 1))  # (B*T, C, H, W)
        return frames.unflatten(0, (b, t)).float()  # (B, T, C, H, W)

    def classify(self, z_last: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) from z_last (B, enc_hid, h, w)."""
        if self.classifier is None:
            raise RuntimeError("this model was built with use_classifier=False")
        return self.classifier(z_last)

    def predict(self, z_seq: torch.Tensor) -> torch.Tensor:
        """Frames 2..T guessed from the latents of frames 1..T-1: (B, T, enc_hid, h, w) -> (B, T-1, C, H, W)."""
        b, t = z_seq.shape[:2]
        guessed = self.predictor(z_seq[:, :-1].flatten(0, 1))  # (B*(T-1), enc_hid, h, w): z_(t+1) from z_t
        return self.decode(guessed.unflatten(0, (b, t - 1)))  # (B, T-1, C, H, W)

    def forward(self, x: torch.Tensor, view: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The output dict of DESIGN.md's tensor contract for clips x (B, T, C, H, W); with view (another
        augmentation of the same clips) also its latents z_view, from the same encoder pass."""
        b = x.shape[0]
        z_all, _ = self.encode(x if view is None else torch.cat([x, view]))  # (B or 2B, T, enc_hid, H/8, W/8)
        z_seq = z_all[:b]  # (B, T, enc_hid, H/8, W/8)
        output = {"reconstruction": self.decode(z_seq), "z_seq": z_seq, "z_last": z_seq[:, -1]}
        if view is not None:
            output["z_view"] = z_all[b:]  # (B, T, enc_hid, H/8, W/8)
        if self.clock is not None or self.phase_head is not None:
            pooled = z_seq.float().mean(dim=(3, 4))  # (B, T, enc_hid)
            if self.clock is not None:
                output["clock"] = self.clock(pooled).squeeze(-1)  # (B, T)
            if self.phase_head is not None:
                output["phase_logits"] = self.phase_head(pooled)  # (B, T, len(PHASES))
        if self.predictor is not None and z_seq.shape[1] > 1:
            output["prediction"] = self.predict(z_seq)  # (B, T-1, C, H, W)
        if self.classifier is not None:
            output["logits"] = self.classifier(output["z_last"])  # (B, num_classes)
        return output


@torch.no_grad()
def reconstruct(model: ConvLSTMAutoencoder, clip: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """The model's reconstruction of one clip (T, C, H, W) in eval mode, under autocast: (T, C, H, W) fp32."""
    model.eval()
    with torch.autocast(clip.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        return model(clip[None])["reconstruction"][0].float()  # (T, C, H, W)


def mask_frames(video: torch.Tensor, ratio: float) -> torch.Tensor:
    """Training input with a random `ratio` of each clip's frames blanked (set to 0), never the first frame:
    the loss still asks for every frame, so the latent of a blanked frame must come from the recurrent state."""
    b, t = video.shape[:2]  # (B, T, C, H, W)
    hidden = torch.rand(b, t, device=video.device) < ratio  # (B, T)
    hidden[:, 0] = False
    return video.masked_fill(hidden[:, :, None, None, None], 0.0)  # (B, T, C, H, W)


def forward_loss(model: nn.Module, loss_fn: nn.Module, batch: dict[str, torch.Tensor],
                 amp_dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The one path from a batch to the loss parts (training, validation, verify, bench, the GPU check):
    model(batch["input"], or batch["video"] when no frames were masked) under autocast (amp_dtype None = fp32),
    then loss_fn(output, batch) in fp32 against the clip. batch holds tensors only (on the model's device).
    What `--compile step` compiles as one graph."""
    video = batch["video"]  # (B, T, C, H, W)
    with torch.autocast(video.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        output = model(batch.get("input", video), batch.get("view"))  # reconstruction (B, T, 1, H, W), z_seq, ...
    return loss_fn(output, batch)


def to_device(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of a loader's batch on the device (names, phase strings and other fields stay behind)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}


def training_forward(model: nn.Module, how: str, device: torch.device) -> Callable[..., dict[str, torch.Tensor]]:
    """forward_loss as `--compile` asks. off: eager. gates: eager, with the gate arithmetic of model's cells
    compiled (model is changed in place). step: forward_loss compiled whole, the unrolled time loop included,
    for static shapes (full batches); on CUDA as CUDA graphs ("reduce-overhead"), so that one replay replaces
    thousands of kernel launches; on the CPU in the default mode (max-autotune would spend minutes tuning
    GEMM templates on a small CPU for little gain). Compiled and eager give equal results up to rounding."""
    if how == "gates":
        compile_gate_updates(model)
    if how != "step":
        return forward_loss
    if device.type != "cuda":
        return torch.compile(forward_loss, dynamic=False)
    compiled = torch.compile(forward_loss, dynamic=False, mode="reduce-overhead")

    def replay(*args):
        torch.compiler.cudagraph_mark_step_begin()  # a new step: the previous step's graph outputs may be reused
        return compiled(*args)

    return replay


def add_model_args(parser: argparse.ArgumentParser, sizes: bool = True) -> argparse.ArgumentParser:
    """Model flags shared by train.py, verify_data_connection.py and bench.py; sizes=False (bench.py, whose presets
    give the sizes) leaves out the size flags and keeps the switches of parts and objectives."""
    default = ModelConfig()
    group = parser.add_argument_group("model")
    if sizes:
        group.add_argument("--image_size", type=int, default=default.image_size,
                           help=f"frame size in pixels, a multiple of 8 (default: {default.image_size})")
        group.add_argument("--encoder_hidden_dim", type=int, default=default.encoder_hidden_dim,
                           help=f"channels of the encoder ConvLSTM, i.e. of z_seq (default: "
                                f"{default.encoder_hidden_dim})")
        group.add_argument("--encoder_layers", type=int, default=default.encoder_layers,
                           help=f"encoder ConvLSTM layers (default: {default.encoder_layers})")
        group.add_argument("--decoder_hidden_dim", type=int, default=default.decoder_hidden_dim,
                           help=f"channels of the decoder ConvLSTM (default: {default.decoder_hidden_dim})")
        group.add_argument("--decoder_layers", type=int, default=default.decoder_layers,
                           help=f"decoder ConvLSTM layers (default: {default.decoder_layers})")
        group.add_argument("--kernel_size", type=int, default=default.kernel_size,
                           help=f"odd ConvLSTM kernel size (default: {default.kernel_size})")
    group.add_argument("--peephole", action="store_true",
                       help="add peephole connections to the ConvLSTM cells (default: off)")
    group.add_argument("--upsample", type=str, default=default.upsample, choices=UPSAMPLINGS,
                       help="decoder upsampling: transposed convolutions (the seed's) or nearest resize + 3x3 "
                            f"convolution, which avoids checkerboard artefacts (default: {default.upsample})")
    group.add_argument("--predict_next", action="store_true",
                       help="also guess each next frame from the latent (a --kernel_size convolution, then the "
                            "shared decoder), trained with the loss's --predict_weight (default: off)")
    group.add_argument("--init_state", type=str, default=default.init_state, choices=INIT_STATES,
                       help="the encoder's state before a recording's first frame: zero (the seed's), learned, or "
                            f"prime (the first frame shown {PRIME_STEPS} times first) (default: {default.init_state})")
    group.add_argument("--use_classifier", action="store_true",
                       help="add the empty-well/embryo classifier head on z_last (default: off)")
    group.add_argument("--num_classes", type=int, default=default.num_classes,
                       help=f"classifier classes (default: {default.num_classes})")
    return parser


def config_from_args(args: argparse.Namespace, sizes: dict | None = None) -> ModelConfig:
    """ModelConfig from the flags of add_model_args; the CNN widths scale with the encoder width. With sizes
    (ModelConfig fields: bench.py's presets) the sizes come from there and only the switches from the flags. The
    heads of the time-gap and phase objectives exist when their loss weights (cli.add_loss_args) are above 0."""
    switches = dict(use_classifier=args.use_classifier, num_classes=args.num_classes, peephole=args.peephole,
                    upsample=args.upsample, predict_next=args.predict_next, init_state=args.init_state,
                    time_head=getattr(args, "time_gap_weight", 0) > 0, phase_head=getattr(args, "phase_weight", 0) > 0)
    if sizes is not None:
        return ModelConfig(**{**sizes, **switches})
    width = args.encoder_hidden_dim
    return ModelConfig(
        image_size=args.image_size,
        cnn_channels=(max(width // 4, 1), max(width // 2, 1), width),
        encoder_hidden_dim=width,
        encoder_layers=args.encoder_layers,
        decoder_hidden_dim=args.decoder_hidden_dim,
        decoder_layers=args.decoder_layers,
        kernel_size=args.kernel_size,
        **switches,
    )


def config_from_checkpoint(checkpoint: dict) -> ModelConfig:
    """The ModelConfig stored in a checkpoint dict."""
    known = {f.name for f in fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in checkpoint["model_config"].items() if k in known})


def model_from_checkpoint(checkpoint: dict) -> "ConvLSTMAutoencoder":
    """Rebuild a model from a checkpoint dict's stored config and weights."""
    model = ConvLSTMAutoencoder(config_from_checkpoint(checkpoint))
    model.load_state_dict(checkpoint["model_state_dict"])
    return model


def load_model(path: str, map_location: str | torch.device = "cpu") -> tuple[ConvLSTMAutoencoder, dict]:
    """Load and check a checkpoint file (checkpoint.load_checkpoint); return (model in eval mode, checkpoint)."""
    checkpoint = load_checkpoint(path)
    try:
        model = model_from_checkpoint(checkpoint)
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:  # weights that do not fit the config
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise InputError(f"{path}: not a checkpoint of this model ({reason}); use best.pt or last.pt written by "
                         f"train.py") from None
    return model.to(map_location).eval(), checkpoint
