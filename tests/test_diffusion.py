"""Tests for napari_diffseg.core.method.diffusion: the sigmoid schedule against the closed form of shared/METHOD.md,
forward-process statistics, the exact x0 / eps inversions, the time embedding and the sampling timesteps."""

from __future__ import annotations

import math

import pytest
import torch

from napari_diffseg.core.method.diffusion import (DiffusionSchedule, from_signed, sigmoid_alpha_bar, sigmoid_betas,
                                           timestep_embedding, to_signed)

T = 1000


def closed_form_alpha_bar(s: float, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> float:
    """METHOD.md, written out independently of the engine: abar(s) proportional to
    -sigmoid((s (end - start) + start) / tau) + sigmoid(end / tau), normalised to abar(0) = 1."""
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))
    value = lambda u: -sig((u * (end - start) + start) / tau) + sig(end / tau)
    return value(s) / value(0.0)


@pytest.fixture(scope="module")
def schedule() -> DiffusionSchedule:
    return DiffusionSchedule(T)


def test_sigmoid_alpha_bar_matches_closed_form():
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    engine = sigmoid_alpha_bar(s)
    expected = torch.tensor([closed_form_alpha_bar(v) for v in s.tolist()], dtype=torch.float64)
    torch.testing.assert_close(engine, expected, rtol=1e-12, atol=1e-12)
    assert engine[0].item() == pytest.approx(1.0, abs=1e-12)
    assert engine[-1].item() == pytest.approx(0.0, abs=1e-12)


def test_alphas_cumprod_follow_closed_form_where_betas_are_not_clipped(schedule):
    betas = schedule.betas
    assert betas.shape == (T,)
    assert float(betas.min()) >= 0.0 and float(betas.max()) <= 0.999
    unclipped = betas < 0.999
    # only the very last step hits the clip (abar(1) = 0 would make beta = 1)
    assert bool(unclipped[:-1].all()) and not bool(unclipped[-1])
    expected = torch.tensor([closed_form_alpha_bar((t + 1) / T) for t in range(T - 1)], dtype=torch.float64)
    actual = schedule.alphas_cumprod[: T - 1].double()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-7)
    # the clipped last step: abar_{T-1} = abar_{T-2} * (1 - 0.999)
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(expected[-1].item() * 1e-3, rel=1e-4)


def test_alphas_cumprod_start_near_one_and_decrease_monotonically(schedule):
    abar = schedule.alphas_cumprod.double()
    # abar(0) = 1 by construction: the first noising step removes only a tiny amount of signal
    assert 0.999 < abar[0].item() < 1.0
    assert bool((abar[1:] < abar[:-1]).all())
    assert abar[-1].item() < 1e-5
    # with abar(0) = 1 prepended the betas reproduce the whole product
    torch.testing.assert_close(torch.cumprod(1 - sigmoid_betas(T), 0), abar, rtol=1e-5, atol=1e-9)


def test_schedule_needs_two_timesteps():
    with pytest.raises(ValueError):
        DiffusionSchedule(1)


def test_signed_mapping_round_trip():
    values = torch.tensor([0.0, 0.25, 1.0])
    torch.testing.assert_close(to_signed(values), torch.tensor([-1.0, -0.5, 1.0]))
    torch.testing.assert_close(from_signed(to_signed(values)), values)


def test_q_sample_mean_and_variance(schedule):
    timesteps = torch.tensor([0, 100, 400, 700, 999])
    n = 40000
    z0 = torch.full((len(timesteps), n), 0.6)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    z_t = schedule.q_sample(z0, timesteps, noise)
    for row, t in enumerate(timesteps.tolist()):
        abar = closed_form_alpha_bar((t + 1) / T) * (1e-3 if t == T - 1 else 1.0)
        mean, var = z_t[row].mean().item(), z_t[row].var().item()
        assert mean == pytest.approx(math.sqrt(abar) * 0.6, abs=5 / math.sqrt(n)), t
        assert var == pytest.approx(1 - abar, rel=0.05, abs=1e-4), t


def test_q_sample_broadcasts_one_timestep_per_sample(schedule):
    generator = torch.Generator().manual_seed(1)
    z0 = torch.rand((3, 2, 8, 8), generator=generator) * 2 - 1
    noise = torch.randn(z0.shape, generator=generator)
    t = torch.tensor([5, 500, 990])
    z_t = schedule.q_sample(z0, t, noise)
    for i in range(3):
        abar = schedule.alphas_cumprod[t[i]]
        torch.testing.assert_close(z_t[i], abar.sqrt() * z0[i] + (1 - abar).sqrt() * noise[i])


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_predict_x0_from_eps_inverts_q_sample(schedule, dtype, tolerance):
    generator = torch.Generator().manual_seed(2)
    t = torch.arange(0, T, 37) if dtype == torch.float64 else torch.arange(0, 900, 37)  # float32: avoid abar ~ 0
    x0 = (torch.rand((len(t), 1, 6, 6), generator=generator) * 2 - 1).to(dtype)
    eps = torch.randn(x0.shape, generator=generator).to(dtype)
    z_t = schedule.q_sample(x0, t, eps)
    torch.testing.assert_close(schedule.predict_x0_from_eps(z_t, t, eps), x0, rtol=0, atol=tolerance)


def test_predict_eps_from_x0_inverts_q_sample(schedule):
    generator = torch.Generator().manual_seed(3)
    t = torch.arange(0, T, 37)
    x0 = (torch.rand((len(t), 2, 5, 5), generator=generator) * 2 - 1).double()
    eps = torch.randn(x0.shape, generator=generator).double()
    z_t = schedule.q_sample(x0, t, eps)
    torch.testing.assert_close(schedule.predict_eps_from_x0(z_t, t, x0), eps, rtol=0, atol=1e-9)


def test_sample_timesteps_uniform_in_range(schedule):
    t = schedule.sample_timesteps(20000, torch.Generator().manual_seed(4))
    assert t.shape == (20000,) and t.dtype == torch.long
    assert int(t.min()) >= 0 and int(t.max()) <= T - 1
    assert t.float().mean().item() == pytest.approx((T - 1) / 2, rel=0.03)
    again = schedule.sample_timesteps(20000, torch.Generator().manual_seed(4))
    assert torch.equal(t, again)


def test_sample_timesteps_within_a_fraction_of_the_schedule(schedule):
    t = schedule.sample_timesteps(20000, torch.Generator().manual_seed(4), fraction=0.1)
    high = round(0.1 * T)
    assert int(t.min()) >= 0 and int(t.max()) == high - 1  # the whole first tenth, nothing beyond
    assert t.float().mean().item() == pytest.approx((high - 1) / 2, rel=0.05)
    assert int(schedule.sample_timesteps(100, torch.Generator().manual_seed(4), fraction=1e-9).max()) == 0


def test_timestep_embedding_shape_and_distinct_rows():
    t = torch.arange(T)
    embedding = timestep_embedding(t, 64)
    assert embedding.shape == (T, 64)
    assert float(embedding.abs().max()) <= 1.0
    torch.testing.assert_close(embedding[0], torch.cat([torch.ones(32), torch.zeros(32)]))
    distances = torch.cdist(embedding, embedding)
    distances.fill_diagonal_(float("inf"))
    assert float(distances.min()) > 0.1  # every timestep gets its own embedding
    odd = timestep_embedding(torch.tensor([3, 7]), 65)
    assert odd.shape == (2, 65)
    torch.testing.assert_close(odd[:, :64], timestep_embedding(torch.tensor([3, 7]), 64))
    assert float(odd[:, 64].abs().max()) == 0.0


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 50, T])
def test_sampling_timesteps_descending_to_zero(schedule, steps):
    timesteps = schedule.sampling_timesteps(steps)
    assert len(timesteps) == steps
    assert all(isinstance(v, int) for v in timesteps)
    assert timesteps[-1] == 0
    if steps > 1:
        assert timesteps[0] == T - 1
        assert all(a > b for a, b in zip(timesteps, timesteps[1:]))


def test_sampling_needs_a_step(schedule):
    with pytest.raises(ValueError):
        schedule.sampling_timesteps(0)
