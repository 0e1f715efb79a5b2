"""Rank rules: eq. 5/6 against hand computation, SVD rule, quantization, VBMF, energy."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from lrdnb import ranks as R


def test_eq5_paper_example():
    # Sec. 2.1: [512, 512, 3, 3] at 2x -> 309 (the paper's number)
    assert R.tucker2_rank(512, 512, 3, alpha=2) == (309, 309)


def test_eq5_by_hand():
    # r^2 k^2 + r (C + S) - C S k^2 / alpha = 0 with C=S=512, k=3, alpha=2:
    # r = (-(1024/9) + sqrt((1024/9)^2 + 4*512*512/2)) / 2 = 309.59...
    b = 1024 / 9
    r = (-b + math.sqrt(b * b + 2 * 512 * 512)) / 2
    assert 309 < r < 310
    # eq. 6: same at alpha + 1 = 3 -> 244.1
    r3 = (-b + math.sqrt(b * b + 4 * 512 * 512 / 3)) / 2
    assert R.tucker2_rank_min(512, 512, 3, alpha=2) == (math.floor(r3),) * 2 == (244, 244)


def test_eq5_beta():
    r1, r2 = R.tucker2_rank(256, 512, 3, alpha=2, beta=2.0)
    assert r2 == math.floor(2.0 * r1)
    # achieved compression close to 2 from above
    ratio = 256 * 512 * 9 / R.tucker2_params(256, 512, 3, r1, r2)
    assert 2.0 <= ratio < 2.05


@given(c=st.integers(8, 1024), s=st.integers(8, 1024), k=st.sampled_from([1, 3, 5, 7]),
       alpha=st.floats(1.2, 8.0))
@settings(max_examples=200, deadline=None)
def test_eq5_achieves_ratio(c, s, k, alpha):
    """Flooring eq. 5's root always compresses at least alpha, and r+1 would not."""
    assume(R._tucker2_r1_real(c, s, k, alpha, 1.0) >= 1)  # below: rank clamps to 1 (plan keeps such layers)
    r1, r2 = R.tucker2_rank(c, s, k, alpha)
    full = c * s * k * k
    assert full / R.tucker2_params(c, s, k, r1, r2) >= alpha - 1e-9
    assert full / R.tucker2_params(c, s, k, r1 + 1, r1 + 1) < alpha + 1e-9


def test_svd_rank():
    assert R.svd_rank(2048, 1000, 2) == 335  # 2048*1000 / (2 * 3048) = 335.9
    assert R.svd_rank(512, 512, 2) == 128
    assert R.svd_params(512, 512, 128) * 2 == 512 * 512


@pytest.mark.parametrize("bad", [1.0, 0.5, -2, float("nan"), float("inf"), "2"])
def test_bad_alpha(bad):
    with pytest.raises(ValueError, match="alpha"):
        R.tucker2_rank(64, 64, 3, bad)
    with pytest.raises(ValueError, match="alpha"):
        R.svd_rank(64, 64, bad)


def test_bad_beta():
    with pytest.raises(ValueError, match="beta"):
        R.tucker2_rank(64, 64, 3, 2, beta=0)


@pytest.mark.parametrize(
    "rank,mult,maxr,mode,expected",
    [
        (309, 16, 512, "floor", 304),
        (309, 16, 512, "nearest", 304),
        (312, 16, 512, "nearest", 320),
        (309, 16, 512, "ceil", 320),
        (5, 16, 512, "floor", 16),  # never 0
        (5, 16, 10, "floor", 10),  # never above full rank, even when the quantum is
        (500, 32, 510, "ceil", 480),  # ceil above max -> largest fitting multiple
        (7, None, 64, "floor", 7),
        (7, 1, 64, "floor", 7),
    ],
)
def test_quantize(rank, mult, maxr, mode, expected):
    assert R.quantize_rank(rank, mult, maxr, mode) == expected


@given(r=st.integers(1, 2000), m=st.integers(1, 128), maxr=st.integers(1, 2000),
       mode=st.sampled_from(["floor", "nearest", "ceil"]))
def test_quantize_bounds(r, m, maxr, mode):
    q = R.quantize_rank(min(r, maxr), m, maxr, mode)
    assert 1 <= q <= maxr
    assert q % m == 0 or q == maxr or maxr < m


def test_quantize_errors():
    with pytest.raises(ValueError, match="mode"):
        R.quantize_rank(10, 8, 64, "round")
    with pytest.raises(ValueError, match="multiple"):
        R.quantize_rank(10, 0, 64)
    with pytest.raises(ValueError, match="multiple"):
        R.quantize_rank(10, 2.5, 64)


def test_energy_rank():
    m = np.diag([3.0, 1.0, 0.0])
    assert R.energy_rank(m, 0.9) == 1  # 9 / 10
    assert R.energy_rank(m, 0.95) == 2
    assert R.energy_rank(m, 1.0) == 2
    with pytest.raises(ValueError, match="energy"):
        R.energy_rank(m, 0)


def test_vbmf_recovers_planted_rank():
    rng = np.random.default_rng(0)
    low = rng.standard_normal((200, 8)) @ rng.standard_normal((8, 300)) * 3
    noisy = low + 0.1 * rng.standard_normal((200, 300))
    assert R.evbmf_rank(noisy) == 8
    assert R.vbmf_rank(noisy, weakening=1.0) == 8
    assert R.vbmf_rank(noisy, weakening=0.0) == 200
    assert R.vbmf_rank(noisy, weakening=0.5) == int(200 - 0.5 * 192)


def test_vbmf_never_zero():
    # an all-zero unfolding has VBMF rank 0: clamped to 1, with a warning
    assert R.evbmf_rank(np.zeros((32, 48))) == 0
    with pytest.warns(UserWarning, match="clamped"):
        assert R.vbmf_rank(np.zeros((32, 48))) == 1
    with pytest.raises(ValueError, match="weakening"):
        R.vbmf_rank(np.eye(8), weakening=1.5)


def test_vbmf_ranks_modes():
    rng = np.random.default_rng(2)
    core = rng.standard_normal((6, 4, 3, 3))
    u_out, u_in = rng.standard_normal((48, 6)), rng.standard_normal((40, 4))
    w = np.einsum("oikl,so,ci->sckl", core, u_out, u_in) + 0.01 * rng.standard_normal((48, 40, 3, 3))
    r1, r2 = R.vbmf_ranks(w)
    assert (r1, r2) == (4, 6)  # input mode rank, output mode rank
