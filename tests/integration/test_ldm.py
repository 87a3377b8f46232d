"""Takagi & Nishimoto's img2img on a tiny Stable Diffusion of random weights built here (no download)."""

import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import collect, stop, wait_for_file

pytest.importorskip("torch", reason="the ldm method needs the torch extra")
pytest.importorskip("diffusers", reason="the ldm method needs diffusers (the torch extra)")

import torch  # noqa: E402

from rtdecode.apps.demo import free_tcp_address  # noqa: E402
from rtdecode.errors import ModelFileError  # noqa: E402
from rtdecode.models.ldm import LdmReconstructor  # noqa: E402
from rtdecode.transport.zmq import Publisher, Subscriber  # noqa: E402
from rtdecode.wire import messages as m  # noqa: E402

EXE = [sys.executable, "-m", "rtdecode"]
TEXT_DIM = 32


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A Stable Diffusion v1.x pipeline in miniature: same classes and layout, random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=16,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,  # as Stable Diffusion v1.x ships it
    )
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae,
        unet=unet,
        scheduler=scheduler,
        text_encoder=None,
        tokenizer=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = tmp_path_factory.mktemp("tiny-sd")
    pipe.save_pretrained(folder, safe_serialization=True)
    assert not list(folder.rglob("*.bin")) and list(folder.rglob("*.safetensors"))
    return folder


def targets(seed, h=8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((4, h, h)).astype(np.float32), rng.standard_normal((77, TEXT_DIM)).astype(
        np.float32
    )


def test_z_and_c_reach_the_model_with_the_strength_schedule(tiny_sd):
    ldm = LdmReconstructor(tiny_sd, strength=0.5, steps=10, guidance=5.0, device="cpu")
    z, c = targets(0)
    calls, decoded = [], []
    h1 = ldm.pipe.unet.register_forward_pre_hook(
        lambda _m, args, kwargs: calls.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True
    )
    orig_decode = ldm.pipe.vae.decode
    ldm.pipe.vae.decode = lambda latents, *a, **k: (
        decoded.append(latents.clone()),
        orig_decode(latents, *a, **k),
    )[1]
    try:
        image, info = ldm.reconstruct(z, c, seed=3)
    finally:
        h1.remove()
        ldm.pipe.vae.decode = orig_decode
    assert ldm.pipe.vae_scale_factor == 2  # two VAE blocks here; Stable Diffusion's four give 8
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    # strength 0.5 of 10 steps: the last 5 run, each on [unconditional, conditional] (guidance).
    assert info["iterations"] == 5 and len(calls) == 5
    for ehs in calls:
        assert ehs.shape == (2, 77, TEXT_DIM) and ehs.dtype == torch.float32
        np.testing.assert_array_equal(ehs[1].numpy(), c)  # c is the prompt embedding
        assert not ehs[0].any()  # no text encoder in the folder: the empty prompt is zeros
    # z is what the VAE decodes into the initial image (scaled as the model's latents are).
    np.testing.assert_allclose(decoded[0][0].numpy(), z / ldm.pipe.vae.config.scaling_factor, rtol=1e-6)


def test_seeds_and_inputs_decide_the_image(tiny_sd):
    ldm = LdmReconstructor(tiny_sd, strength=0.6, steps=5, guidance=3.0, device="cpu")
    z, c = targets(1)
    z2, c2 = targets(2)
    a = ldm.reconstruct(z, c, seed=0)[0]
    np.testing.assert_array_equal(a, ldm.reconstruct(z, c, seed=0)[0])
    for other in (
        ldm.reconstruct(z, c, seed=1)[0],
        ldm.reconstruct(z2, c, seed=0)[0],
        ldm.reconstruct(z, c2, 0)[0],
    ):
        assert not np.array_equal(a, other)
    # Without guidance the unconditional pass is skipped: one call per step.
    plain = LdmReconstructor(tiny_sd, strength=1.0, steps=3, guidance=1.0, device="cpu")
    calls = []
    h = plain.pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    plain.reconstruct(z, c)
    h.remove()
    assert len(calls) == 3


def test_bad_latents_and_folders_are_refused(tiny_sd, tmp_path):
    ldm = LdmReconstructor(tiny_sd, strength=0.5, steps=2, device="cpu")
    z, c = targets(0)
    with pytest.raises(ValueError, match="image latent"):
        ldm.reconstruct(z[:3], c)
    with pytest.raises(ValueError, match="text conditioning"):
        ldm.reconstruct(z, c[:, :16])
    with pytest.raises(ValueError, match="finite"):
        ldm.reconstruct(np.full_like(z, np.nan), c)
    with pytest.raises(ModelFileError, match="model_index.json"):
        LdmReconstructor(tmp_path)
    with pytest.raises(Exception, match="strength"):
        LdmReconstructor(tiny_sd, strength=1.5)


def test_the_subscriber_reconstructs_blocks_from_latent_messages(tiny_sd, tmp_path):
    decoder_addr, publish, ready = free_tcp_address(), free_tcp_address(), tmp_path / "ready"
    cmd = [
        *EXE,
        "reconstruct",
        "--method",
        "ldm",
        "--ldm",
        str(tiny_sd),
        "--ldm-steps",
        "4",
        "--strength",
        "0.5",
        "--device",
        "cpu",
        "--address",
        decoder_addr,
        "--publish",
        publish,
        "--out",
        str(tmp_path / "out"),
        "--until-end",
        "--ready-file",
        str(ready),
    ]
    proc = subprocess.Popen(cmd)
    try:
        wait_for_file(ready, 120, proc)
        with Subscriber(publish) as sub, Publisher(decoder_addr) as pub:
            time.sleep(1.0)
            ref = dict(session="s", series="r1", acq_time_s=time.time())
            for seq in range(4):
                z, c = targets(seq)
                pub.publish(m.Latent(**ref, seq=seq, shapes={}, ms=1.0, targets={"image": z, "text": c}))
            common = dict(**ref, onset_s=0.0, offset_s=9.0, status="ok", rois=[], layers=[], feedback={})
            pub.publish(m.Block(**common, seq=2, block=0, label="a", seqs=[0, 1, 2]))
            pub.publish(m.Block(**common, seq=9, block=1, label="b", seqs=[7, 8, 9]))  # no latents: skipped
            pub.publish(m.Status(event="end", session="s", series="r1"))
            got = collect(sub, until=lambda x: x.header.get("event") == "skipped", timeout_s=120)
        assert proc.wait(60) == 0
    finally:
        stop(proc)
    kinds = [x.header["kind"] for x in got]
    assert kinds == ["reconstruction", "status"]
    rec = m.parse(got[0])
    assert rec.method == "ldm" and rec.iterations == 2 and rec.label == "a"
    assert rec.png[:4].tobytes() == b"\x89PNG"
    assert "no latent targets" in got[1].header["reason"]
