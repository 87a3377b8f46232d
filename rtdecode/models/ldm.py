"""Takagi & Nishimoto (2023)'s reconstruction: img2img with a latent diffusion model, from decoded z and c.

The decoded image latent ``z`` (``[4, H/8, W/8]``) is decoded by the model's VAE into an initial
image; img2img encodes it again, noises it to ``strength`` (of ``steps`` denoising steps only the
last ``int(steps * strength)`` run) and denoises it with the decoded text conditioning ``c``
(``[77, d]``) as the prompt embeddings, under classifier-free guidance against the empty
prompt's embeddings. The model is a Stable Diffusion v1.x folder in diffusers' layout that the
user points at (no download: ``local_files_only``); weights are read from safetensors only,
never unpickled. Runs on a GPU when there is one, on the CPU otherwise (slowly).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from rtdecode.errors import ConfigError, ModelFileError


class LdmReconstructor:
    """img2img from decoded ``z`` and ``c`` with a Stable Diffusion v1.x pipeline.

    Parameters
    ----------
    folder : str or Path
        A diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``scheduler/``; ``text_encoder/``
        and ``tokenizer/`` are used once, for the empty prompt, when present).
    strength : float
        Share of the denoising schedule run from the initial image, in (0, 1] (T&N: 0.8).
    steps : int
        Denoising steps of the full schedule (T&N: 50).
    guidance : float
        Classifier-free guidance scale (T&N: 5); 1 or less runs without guidance.
    device : str
        ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    def __init__(
        self,
        folder: str | Path,
        strength: float = 0.8,
        steps: int = 50,
        guidance: float = 5.0,
        device: str = "auto",
    ) -> None:
        from diffusers import StableDiffusionImg2ImgPipeline

        if not 0 < strength <= 1 or steps < 1:
            raise ConfigError(f"ldm: strength must be in (0, 1] and steps >= 1, got {strength}, {steps}")
        self.strength, self.steps, self.guidance = strength, steps, guidance
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        folder = Path(folder)
        if not (folder / "model_index.json").is_file():
            raise ModelFileError(f"{folder}: not a diffusers model folder (no model_index.json)")
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        half = {"dtype": dtype} if self.device == "cuda" else {}  # float32 needs no cast
        try:
            self.pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
                folder, use_safetensors=True, local_files_only=True, safety_checker=None, **half,
                feature_extractor=None, image_encoder=None, text_encoder=None, tokenizer=None,
            )  # fmt: skip
        except (OSError, ValueError) as err:
            raise ModelFileError(f"{folder}: cannot load a Stable Diffusion pipeline: {err}") from err
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.latent_shape = (self.pipe.unet.config.in_channels,)
        self.text_dim = self.pipe.unet.config.cross_attention_dim
        self.empty = self._empty_prompt(folder, dtype)

    def _empty_prompt(self, folder: Path, dtype: torch.dtype) -> torch.Tensor | None:
        """The text encoder's embedding of the empty prompt, or None (zeros) without an encoder."""
        if not ((folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir()):
            return None
        from transformers import CLIPTextModel, CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        enc = CLIPTextModel.from_pretrained(
            folder / "text_encoder", use_safetensors=True, local_files_only=True
        )
        ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            return enc(ids)[0].to(self.device, dtype)

    def initial_image(self, z: torch.Tensor) -> torch.Tensor:
        """The VAE's decoding of ``z`` (1, 4, h, w) as an image in [0, 1] (8h x 8w for Stable Diffusion)."""
        vae = self.pipe.vae
        with torch.no_grad():
            x = vae.decode(z.to(self.device, vae.dtype) / vae.config.scaling_factor).sample
        return ((x.float().clamp(-1, 1) + 1) / 2).cpu()

    def reconstruct(self, z: np.ndarray, c: np.ndarray, seed: int = 0) -> tuple[np.ndarray, dict]:
        """An image from decoded ``z`` (4, h, w) and ``c`` (n_tokens, d).

        Returns
        -------
        image : numpy.ndarray
            RGB uint8, the VAE's scale times ``z``'s (8h, 8w, 3 for Stable Diffusion).
        info : dict
            ``iterations`` (denoising steps run), ``seconds``.

        Raises
        ------
        ValueError
            ``z`` or ``c`` of a shape the model cannot take, or not finite.
        """
        z, c = np.asarray(z, dtype=np.float32), np.asarray(c, dtype=np.float32)
        if z.ndim != 3 or z.shape[0] != self.latent_shape[0]:
            raise ValueError(
                f"image latent of shape {z.shape}; the model takes ({self.latent_shape[0]}, h, w)"
            )
        if c.ndim != 2 or c.shape[1] != self.text_dim:
            raise ValueError(
                f"text conditioning of shape {c.shape}; the model takes (n_tokens, {self.text_dim})"
            )
        if not (np.isfinite(z).all() and np.isfinite(c).all()):
            raise ValueError("latent targets with non-finite values")
        t0 = time.perf_counter()
        dtype = self.pipe.unet.dtype
        cond = torch.from_numpy(c)[None].to(self.device, dtype)
        if self.empty is not None and self.empty.shape[1:] == cond.shape[1:]:
            uncond = self.empty
        else:
            uncond = torch.zeros_like(cond)
        out = self.pipe(
            image=self.initial_image(torch.from_numpy(z)[None]),
            prompt_embeds=cond,
            negative_prompt_embeds=uncond,
            strength=self.strength,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            generator=torch.Generator(self.device).manual_seed(seed),
            output_type="np",
        )
        image = np.clip(np.rint(out.images[0] * 255), 0, 255).astype(np.uint8)
        run = min(int(self.steps * self.strength), self.steps)
        return image, {"iterations": run, "seconds": time.perf_counter() - t0}
