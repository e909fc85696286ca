"""The DDPM noise schedule of the teacher: sigmoid betas over T steps, forward noising and x0/eps conversions.

Conventions (shared/METHOD.md, "Diffusion basics"): timesteps are integers 0..T-1, ``alphas_cumprod[t]`` is
abar after t+1 noising steps, and images and masks live in [-1, 1] (``to_signed`` / ``from_signed``).
"""

from __future__ import annotations

import math

import torch


def sigmoid_alpha_bar(s: torch.Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """Closed-form abar(s) of the sigmoid schedule for s = t / T in [0, 1], normalised to abar(0) = 1."""
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    value = -torch.sigmoid((s.double() * (end - start) + start) / tau) + v_end
    return value / (v_end - v_start)


def sigmoid_betas(timesteps: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """beta_t = 1 - abar(t/T) / abar((t-1)/T) for t = 1..T, clipped to [0, 0.999] (float64)."""
    s = torch.linspace(0, 1, timesteps + 1, dtype=torch.float64)
    alpha_bar = sigmoid_alpha_bar(s, start, end, tau)
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(0.0, 0.999)


def to_signed(values01: torch.Tensor) -> torch.Tensor:
    """Map [0, 1] data to the [-1, 1] range the diffusion works in."""
    return values01 * 2 - 1


def from_signed(values: torch.Tensor) -> torch.Tensor:
    """Map [-1, 1] values back to [0, 1]."""
    return (values + 1) / 2


class DiffusionSchedule:
    """Precomputed sigmoid schedule with the forward process q(z_t | z_0) and its inversions."""

    def __init__(self, timesteps: int = 1000):
        if timesteps < 2:
            raise ValueError("a diffusion schedule needs at least 2 timesteps")
        self.timesteps = timesteps
        self.betas = sigmoid_betas(timesteps)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0).float()
        self._sqrt_ab = self.alphas_cumprod.sqrt()
        self._sqrt_one_minus_ab = (1 - self.alphas_cumprod).sqrt()

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1,) + (1,) * (like.dim() - 1)
        sqrt_ab = self._sqrt_ab.to(like.device)[t].view(shape).to(like.dtype)
        sqrt_1mab = self._sqrt_one_minus_ab.to(like.device)[t].view(shape).to(like.dtype)
        return sqrt_ab, sqrt_1mab

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None, device=None,
                         fraction: float = 1.0) -> torch.Tensor:
        """Uniform integer timesteps in [0, T), one per sample; ``fraction`` < 1: in [0, fraction * T) only."""
        high = max(1, min(self.timesteps, int(round(fraction * self.timesteps))))
        return torch.randint(0, high, (batch,), generator=generator, device="cpu").to(device or "cpu")

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) noise."""
        sqrt_ab, sqrt_1mab = self._coefficients(t, z0)
        return sqrt_ab * z0 + sqrt_1mab * noise

    def predict_x0_from_eps(self, z_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0_hat = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        sqrt_ab, sqrt_1mab = self._coefficients(t, z_t)
        return (z_t - sqrt_1mab * eps) / sqrt_ab

    def predict_eps_from_x0(self, z_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps_hat = (z_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
        sqrt_ab, sqrt_1mab = self._coefficients(t, z_t)
        return (z_t - sqrt_ab * x0) / sqrt_1mab.clamp_min(1e-8)

    def sampling_timesteps(self, steps: int) -> list[int]:
        """Evenly spaced descending timesteps for DDIM-style sampling, ending at 0."""
        if steps < 1:
            raise ValueError("sampling needs at least one step")
        if steps == 1:
            return [0]
        return [int(round(v)) for v in torch.linspace(self.timesteps - 1, 0, steps).tolist()]


def timestep_embedding(t: torch.Tensor, dim: int = 64, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding
