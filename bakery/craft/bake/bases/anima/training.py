"""Training Anima: rectified flow, text encoding, the DiT's prediction (owner: anima-train).

As sd-scripts' anima_train_network.py trains it (library/strategy_anima.py, library/anima_models.py), with
diffusers' parts:
- rectified flow (bases/flow.py) with sd-scripts' timestep sampling; the target is noise - latents; no
  v-prediction or zero terminal SNR (refused), no min-SNR (training.py refuses it for flow);
- latents: the Qwen-Image VAE on (N, C, 1, H, W), the posterior's mode normalised with the VAE config's
  latents_mean/latents_std (sd-scripts' encode_pixels_to_latents, diffusers' Anima encode_vae_image);
- text: diffusers' AnimaTextEncoderStep.encode_prompt (Qwen3's last hidden state, zero where masked, and the
  T5 token ids the LLM adapter queries with; 512 tokens at most, sd-scripts' --qwen3/t5_max_token_length).
  Cached, each caption keeps its own length and a batch is padded to its longest caption: the LLM adapter
  masks the padding and pads its output to 512 with zeros, so this equals sd-scripts' padding every caption
  to 512. Given every caption ahead (no caption augmentation), all are encoded at once and Qwen3 leaves the
  GPU (sd-scripts' --cache_text_encoder_outputs); otherwise Qwen3 stays and each new caption is encoded once;
- the prediction: the LLM adapter (`text_conditioner`, a network may train it) maps the cached Qwen3 states
  and T5 ids to the cross-attention context every step, then CosmosTransformer3DModel on (N, C, 1, H, W) with
  a zero padding mask at sigma = timestep / 1000 (sd-scripts divides by 1000; so does diffusers' denoise step);
- precision: bf16 or fp32; fp16 is refused (`fp16 = False`: not shown safe for Anima; sd-scripts' guide
  trains bf16).
Hand-written: the per-caption cache and batch padding (diffusers encodes whole prompts only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bakery.craft.bake import BakeError
from bakery.craft.bake.bases import flow
from bakery.craft.bake.bases import prediction as P
from bakery.craft.bake.precision import Precision

if TYPE_CHECKING:
    from bakery.craft.bake.bases.family import Base, TimestepSampling

# Captions per Qwen3 call while caching: one. A caption's states must not depend on the captions beside it in a call
# (padding and batched kernels change their last bits), or a resumed bake, which meets its captions in other groups
# than the first run did, trains on other numbers and its file is not byte-identical.
CACHE_BATCH = 1
MAX_TOKENS = 512  # sd-scripts' --qwen3_max_token_length and --t5_max_token_length; diffusers' max_sequence_length


def pad_rows(rows: Sequence[Any], value: int | float) -> Any:
    """Rows of different lengths (L, ...) stacked to (N, max L, ...), padded with `value` (at least length 1)."""
    import torch

    n = max(1, *(r.shape[0] for r in rows))
    return torch.stack([torch.cat([r, r.new_full((n - r.shape[0], *r.shape[1:]), value)]) for r in rows])


class AnimaText:
    """Captions -> (Qwen3 states (N, L, D), their mask (N, L), T5 ids (N, T), their mask (N, T)) on `device`."""

    def __init__(self, pipe: Any, device: str, cache: bool, captions: Sequence[str] = ()):
        self.pipe, self.device = pipe, device
        self.cache: dict[str, tuple[Any, Any]] | None = {} if cache else None
        self.unloaded = False
        if self.cache is not None and captions:
            self.fill(list(dict.fromkeys(captions)))
            self.unload()

    def encode(self, captions: list[str]) -> tuple[Any, Any, Any, Any]:
        """The batch encoded as diffusers' Anima pipeline encodes prompts (padded to the longest)."""
        import torch
        from diffusers.modular_pipelines.anima.encoders import AnimaTextEncoderStep

        te = self.pipe.text_encoder
        out = AnimaTextEncoderStep.encode_prompt(self.pipe, captions, prepare_unconditional_embeds=False,
                                                 max_sequence_length=MAX_TOKENS, device=self.device, dtype=te.dtype)
        mask = out["qwen_attention_mask"]
        # where: a caption with no token attends to nothing, and NaN * 0 would stay NaN (sd-scripts assigns 0)
        states = torch.where(mask.bool()[..., None], out["qwen_prompt_embeds"], 0)
        return states, mask, out["t5_input_ids"], out["t5_attention_mask"]

    def fill(self, captions: list[str]) -> None:
        """The cache gains `captions`, each trimmed to its own tokens (Qwen3 must be loaded), one at a time."""
        import torch

        for start in range(0, len(captions), CACHE_BATCH):
            chunk = captions[start: start + CACHE_BATCH]
            with torch.no_grad():
                states, mask, ids, t5_mask = self.encode(chunk)
            for i, c in enumerate(chunk):  # the tokens the masks keep, whichever side the tokenizers pad
                self.cache[c] = (states[i][mask[i].bool()], ids[i][t5_mask[i].bool()])  # type: ignore[index]

    def unload(self) -> None:
        """Qwen3 off the GPU: every caption the bake asks for is cached."""
        import torch

        self.pipe.text_encoder.to("cpu")
        self.unloaded = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __call__(self, captions: list[str]) -> tuple[Any, Any, Any, Any]:
        import torch

        if self.cache is None:
            return self.encode(captions)
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:  # after unloading only for a caption not announced: Qwen3 comes back for it
            if self.unloaded:
                self.pipe.text_encoder.to(self.device)
            self.fill(missing)
            if self.unloaded:
                self.unload()
        states = pad_rows([self.cache[c][0] for c in captions], 0)
        ids = pad_rows([self.cache[c][1] for c in captions], self.pipe.t5_tokenizer.pad_token_id)
        lengths = [(self.cache[c][0].shape[0], self.cache[c][1].shape[0]) for c in captions]
        mask = torch.tensor([[1] * q + [0] * (states.shape[1] - q) for q, _t in lengths], device=states.device)
        t5_mask = torch.tensor([[1] * t + [0] * (ids.shape[1] - t) for _q, t in lengths], device=ids.device)
        return states, mask, ids, t5_mask


class AnimaTraining:
    """bases/family.py's `use_prediction`, `noise_schedule`, `timesteps`, `target`, `encode`, `text_encoder`,
    `predict`, `conditioners`, `fp16`."""

    fp16 = False  # not shown safe for Anima: refused; sd-scripts' guide trains bf16

    def conditioners(self, pipe: Any) -> list[Any]:
        return [pipe.text_conditioner]  # the LLM adapter runs every step, between Qwen3's cache and the DiT

    # -- the noisy input and its target --
    def use_prediction(self, base: Base, v_parameterization: bool | None,
                       zero_terminal_snr: bool | None) -> P.Prediction:
        """Rectified flow: the velocity noise - latents (sd-scripts' metadata: epsilon, no v, no zero SNR)."""
        if v_parameterization or zero_terminal_snr:
            raise BakeError("train.v_parameterization and train.zero_terminal_snr are for DDPM bases: anima trains "
                            "with rectified flow; leave them unset")
        base.prediction = P.Prediction(False, False, "rectified flow")
        return base.prediction

    def noise_schedule(self, base: Base, sampling: TimestepSampling) -> flow.FlowSchedule:
        return flow.FlowSchedule(sampling)

    def timesteps(self, schedule: flow.FlowSchedule, n: int, gen: Any, size: tuple[int, int]) -> Any:
        return flow.timesteps(schedule, n, gen, size)

    def target(self, base: Base, schedule: Any, latents: Any, noise: Any, timesteps: Any) -> Any:
        return flow.target(latents, noise)

    def encode(self, vae: Any, pixels: Any, device: str) -> Any:
        """Pixels (N, 3, H, W) in [-1, 1] -> normalised latents (N, 16, H/8, W/8), fp32."""
        import torch

        with torch.no_grad():
            latents = vae.encode(pixels.to(device, vae.dtype)[:, :, None]).latent_dist.mode()
        shape = (1, latents.shape[1], 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean, device=latents.device).view(shape)
        std = torch.tensor(vae.config.latents_std, device=latents.device).view(shape)
        return ((latents.float() - mean) / std)[:, :, 0]

    # -- text and predicting --
    def text_encoder(self, base: Base, clip_skip: int, device: str, cache: bool,
                     captions: Sequence[str] = ()) -> AnimaText:
        return AnimaText(base.pipe, device, cache, captions)  # clip skip: CLIP's; Qwen3's last state is Anima's

    def predict(self, base: Base, prec: Precision, noisy: Any, timesteps: Any, cond: Any,
                sizes: Sequence[tuple[int, int]]) -> Any:
        states, mask, ids, t5_mask = cond
        dtype = prec.weight_dtype
        context = base.pipe.text_conditioner(source_hidden_states=states.to(dtype), target_input_ids=ids,
                                             target_attention_mask=t5_mask, source_attention_mask=mask)
        h, w = noisy.shape[-2:]
        out = base.pipe.transformer(hidden_states=noisy.to(dtype)[:, :, None],
                                    timestep=timesteps.to(dtype) / flow.NUM_TRAIN_TIMESTEPS,
                                    encoder_hidden_states=context.to(dtype),
                                    padding_mask=noisy.new_zeros((1, 1, h, w), dtype=dtype), return_dict=False)[0]
        return out[:, :, 0]
