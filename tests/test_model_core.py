"""The autoencoder: shapes, ranges, gradients, chunked encoding, checkpoint round trip."""

import argparse

import pytest
import torch

import cli
from cli import InputError, resolve_amp_dtype
from losses import AutoencoderLoss
from model import ConvLSTMAutoencoder, ModelConfig, add_model_args, config_from_args, load_model, mask_frames

TINY = dict(cnn_channels=(4, 8, 8), encoder_hidden_dim=8, encoder_layers=2, decoder_hidden_dim=8,
            decoder_layers=1, classifier_hidden=(16, 8))


def tiny_model(image_size=32, **overrides):
    torch.manual_seed(0)
    return ConvLSTMAutoencoder(ModelConfig(image_size=image_size, **{**TINY, **overrides}))


@pytest.mark.parametrize("image_size", [16, 32, 48])
def test_output_shapes_and_ranges(image_size):
    model = tiny_model(image_size)
    x = torch.rand(2, 3, 1, image_size, image_size)
    out = model(x)
    latent = image_size // 8
    assert out["reconstruction"].shape == x.shape
    assert out["z_seq"].shape == (2, 3, 8, latent, latent)
    assert out["z_last"].shape == (2, 8, latent, latent)
    assert out["logits"].shape == (2, 2)
    assert torch.equal(out["z_last"], out["z_seq"][:, -1])
    assert out["reconstruction"].min() >= 0 and out["reconstruction"].max() <= 1


def test_no_classifier_means_no_logits():
    out = tiny_model(use_classifier=False)(torch.rand(1, 2, 1, 32, 32))
    assert "logits" not in out


def test_image_size_must_be_multiple_of_8():
    with pytest.raises(ValueError, match="multiple of 8"):
        ModelConfig(image_size=30)


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(B, T, 1, H, W\)"):
        tiny_model()(torch.rand(2, 1, 32, 32))


OBJECTIVES = dict(predict_next=True, init_state="learned", time_head=True, phase_head=True)  # every head at once


@pytest.mark.parametrize("options", [{"peephole": False}, {"peephole": True}, {"upsample": "resize"},
                                     {"predict_next": True}, {"init_state": "prime"}, OBJECTIVES])
def test_every_parameter_gets_a_finite_gradient_and_training_lowers_the_loss(options):
    model = tiny_model(**options)
    loss_fn = AutoencoderLoss(cls_weight=1.0, predict_weight=0.5, contrast_weight=0.5, time_gap_weight=0.5,
                              phase_weight=0.5)
    torch.manual_seed(1)
    x = torch.rand(2, 4, 1, 32, 32)
    batch = {"video": x, "label": torch.tensor([0, 1]), "view": torch.rand_like(x),
             "frame_indices": torch.tensor([[0, 3, 5, 9], [1, 2, 6, 7]]), "recording_frames": torch.tensor([10, 8]),
             "phase_index": torch.tensor([[0, 0, 3, -1], [2, 4, 4, 15]])}
    losses = loss_fn(model(x, batch["view"]), batch)
    if options is OBJECTIVES:
        assert all(losses[k] > 0 for k in ("prediction", "contrast", "time_gap", "phase"))
    losses["total"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = losses["total"].item()
    for _ in range(15):
        optimizer.zero_grad()
        loss = loss_fn(model(x, batch["view"]), batch)["total"]
        loss.backward()
        optimizer.step()
    assert loss.item() < first


def test_classifier_trains_at_batch_size_one():
    model = tiny_model()
    model.train()
    x = torch.rand(1, 2, 1, 32, 32)
    losses = AutoencoderLoss(cls_weight=1.0)(model(x), {"video": x, "label": torch.tensor([1])})
    losses["classification"].backward()
    assert model.classifier.mlp[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("init_state", ["zero", "learned", "prime"])
def test_chunked_encoding_equals_one_pass(init_state):
    """Whatever the state before the first frame, passing the returned state back in continues the recording."""
    model = tiny_model(init_state=init_state).eval()
    if model.start is not None:
        torch.nn.init.normal_(model.start)  # a learned state that is not zero
    x = torch.rand(1, 11, 1, 32, 32)
    with torch.no_grad():
        whole, _ = model.encode(x)
        chunks, state = [], None
        for start in range(0, 11, 4):
            z, state = model.encode(x[:, start:start + 4], state)
            chunks.append(z)
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, rtol=1e-5, atol=1e-6)


def test_same_seed_same_numbers():
    x = torch.rand(1, 3, 1, 32, 32)
    first = tiny_model()(x)["reconstruction"]
    second = tiny_model()(x)["reconstruction"]
    assert torch.equal(first, second)


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    from dataclasses import asdict
    model = tiny_model(peephole=True)
    path = tmp_path / "model.pt"
    torch.save({"model_config": asdict(model.config), "model_state_dict": model.state_dict()}, path)
    loaded, checkpoint = load_model(str(path))
    assert loaded.config == model.config
    assert not loaded.training
    x = torch.rand(1, 2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x)["reconstruction"], model.eval()(x)["reconstruction"])


def test_flags_build_the_default_config():
    args = add_model_args(argparse.ArgumentParser()).parse_args(["--use_classifier"])
    assert config_from_args(args) == ModelConfig()
    small = add_model_args(argparse.ArgumentParser()).parse_args(
        ["--image_size", "64", "--encoder_hidden_dim", "32", "--decoder_hidden_dim", "16"])
    config = config_from_args(small)
    assert config.cnn_channels == (8, 16, 32) and not config.use_classifier


def test_amp_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_amp_dtype("off", cpu) is None
    assert resolve_amp_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_amp_dtype("auto", cpu) == (torch.bfloat16 if cli.cpu_supports_bf16() else None)
    monkeypatch.setattr(cli, "cpu_supports_bf16", lambda: True)
    assert resolve_amp_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(cli, "cpu_supports_bf16", lambda: False)
    assert resolve_amp_dtype("auto", cpu) is None
    with pytest.raises(ValueError, match="fp16"):
        resolve_amp_dtype("fp16", cpu)


def test_resize_decoder_keeps_shapes_and_the_seed_decoder_keeps_its_weight_names():
    resize = tiny_model(upsample="resize")
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in resize.modules())
    x = torch.rand(2, 3, 1, 32, 32)
    out = resize(x)["reconstruction"]
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    names = [k for k in tiny_model().state_dict() if k.startswith("frame_decoder")]
    assert names[:3] == ["frame_decoder.layers.0.0.weight", "frame_decoder.layers.0.1.weight",
                         "frame_decoder.layers.0.1.bias"]  # checkpoints of earlier versions still load
    assert names[-2:] == ["frame_decoder.layers.2.weight", "frame_decoder.layers.2.bias"]
    with pytest.raises(InputError, match="--upsample"):
        ModelConfig(upsample="bilinear")


def test_mask_frames_blanks_a_share_of_frames_but_never_the_first():
    torch.manual_seed(0)
    video = torch.rand(64, 10, 1, 4, 4) + 0.1  # (B, T, C, H, W), no zero pixels
    masked = mask_frames(video, 0.3)
    blank = (masked == 0).flatten(2).all(-1)  # (B, T)
    assert not blank[:, 0].any() and 0.2 < blank[:, 1:].float().mean() < 0.4
    assert torch.equal(masked[~blank], video[~blank])


def test_next_frame_guess_comes_from_the_latent_through_the_shared_decoder():
    """--predict_next adds one convolution, made after every other part: those start from the same weights as
    without it (so the untrained control of such a run is the plain model's), and frames 2..T are the decoder's
    drawing of that convolution applied to z_1..z_(T-1)."""
    plain, predicting = tiny_model(), tiny_model(predict_next=True)
    extra = set(predicting.state_dict()) - set(plain.state_dict())
    assert extra == {"predictor.weight", "predictor.bias"}
    assert all(torch.equal(v, predicting.state_dict()[k]) for k, v in plain.state_dict().items())
    x = torch.rand(2, 5, 1, 32, 32)  # (B, T, C, H, W)
    with torch.no_grad():
        output = predicting(x)
        z_seq = output["z_seq"]  # (B, T, C, h, w)
        guessed = predicting.predictor(z_seq[:, :-1].flatten(0, 1)).unflatten(0, (2, 4))
        expected = predicting.decode(guessed)
    assert output["prediction"].shape == (2, 4, 1, 32, 32)
    torch.testing.assert_close(output["prediction"], expected)
    torch.testing.assert_close(output["reconstruction"], plain(x)["reconstruction"])  # same weights, same frames
    assert "prediction" not in plain(x) and "prediction" not in predicting(x[:, :1])  # nothing to guess at T=1


def test_a_learned_or_primed_start_changes_the_first_latents_only_through_the_state():
    x = torch.rand(1, 5, 1, 32, 32)
    zero = tiny_model().eval()
    learned, primed = tiny_model(init_state="learned").eval(), tiny_model(init_state="prime").eval()
    with torch.no_grad():
        z_zero = zero.encode(x)[0]
        torch.testing.assert_close(learned.encode(x)[0], z_zero)  # zero-initialised: the seed's model at the start
        torch.nn.init.normal_(learned.start)
        assert not torch.allclose(learned.encode(x)[0][:, 0], z_zero[:, 0])
        assert not torch.allclose(primed.encode(x)[0][:, 0], z_zero[:, 0])
        state = zero.encode(x[:, :1].expand(-1, 4, -1, -1, -1))[1]  # the first frame shown PRIME_STEPS times
        torch.testing.assert_close(primed.encode(x)[0], zero.encode(x, state)[0])


def test_objective_heads_are_made_last_so_the_untrained_control_is_shared():
    """The heads of every objective are made after the seed's parts: with the same seed, the parts both models
    have start from the same weights, so one untrained control serves every candidate."""
    base, extended = tiny_model(), tiny_model(**OBJECTIVES)
    shared = base.state_dict()
    assert set(shared) < set(extended.state_dict())
    for name, value in extended.state_dict().items():
        if name in shared:
            assert torch.equal(value, shared[name]), name


def test_view_shares_the_encoder_pass_and_returns_its_latents():
    model = tiny_model().eval()
    x, view = torch.rand(2, 3, 1, 32, 32), torch.rand(2, 3, 1, 32, 32)
    with torch.no_grad():
        both = model(x, view)
        torch.testing.assert_close(both["z_view"], model(view)["z_seq"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(both["reconstruction"], model(x)["reconstruction"], rtol=1e-5, atol=1e-6)
