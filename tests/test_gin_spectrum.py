"""GIN: the count of informative variables on every seed, and convolutional couplings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skfff import GINTransformer
from skfff._torch.gin import ConvGINCoupling, ConvGINFlow, Squeeze
from skfff.datasets import make_nonlinear_ica


# ---------------------------------------------------------------- the count, seed after seed
@pytest.fixture(scope="module")
def one_mixing():
    return make_nonlinear_ica(2500, random_state=11)


@pytest.mark.parametrize("seed", [0, 1])
def test_count_is_right_on_two_seeds_of_one_mixing(one_mixing, seed):
    X, y, latents = one_mixing
    gin = GINTransformer(max_epochs=60, random_state=seed, device="cpu").fit(X, y)
    assert gin.n_informative_ == 2
    assert gin.spectrum_gap_ > np.log(10.0)  # the knee is more than a decade deep
    # the training length came from the data: the spectrum settled before the cap
    assert gin.n_iter_ < 60
    assert gin.history_[-1, "spectrum_settled"]
    counts = gin.history_[:, "n_informative"]
    assert len(counts) == gin.n_iter_
    assert counts[-gin.spectrum_patience - 1 :] == [2] * (gin.spectrum_patience + 1)
    # the two leading latents are the informative ones (up to element-wise maps)
    Z = gin.transform(X)[:, :2]
    corr = np.abs(np.corrcoef(Z.T, latents[:, :2].T)[:2, 2:])
    assert max(corr[0, 0] + corr[1, 1], corr[0, 1] + corr[1, 0]) / 2 > 0.9


def test_spectrum_patience_none_trains_for_max_epochs(one_mixing):
    X, y, _ = one_mixing
    gin = GINTransformer(
        max_epochs=3, spectrum_patience=None, hidden_features=8, n_blocks=2, random_state=0
    ).fit(X[:500], y[:500])
    assert gin.n_iter_ == 3
    assert len(gin.history_[:, "spectrum_gap"]) == 3


def test_spectrum_is_monitored_on_training_rows_without_validation(one_mixing):
    X, y, _ = one_mixing
    gin = GINTransformer(
        max_epochs=2, validation_fraction=0.0, hidden_features=8, n_blocks=2, random_state=0
    ).fit(X[:300], y[:300])
    counts = gin.history_[:, "n_informative"]
    assert len(counts) == 2 and all(1 <= k < 10 for k in counts)


def test_no_early_stop_without_a_deep_knee():
    """Isotropic data has no knee: the spectrum never counts as settled, the cap applies."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 4))
    y = np.arange(300) % 2
    gin = GINTransformer(
        max_epochs=12, spectrum_patience=2, hidden_features=8, n_blocks=2, random_state=0
    ).fit(X, y)
    assert gin.n_iter_ == 12
    assert max(gin.history_[:, "spectrum_gap"]) < np.log(10.0)


# ---------------------------------------------------------------- convolutional couplings
def _conv_flow(shape: tuple[int, ...], seed: int = 0, gain: float = 1.5) -> ConvGINFlow:
    torch.manual_seed(seed)
    flow = ConvGINFlow(
        shape, n_blocks=1, n_conv_blocks=2, conv_channels=4, zero_init=False,
        generator=torch.Generator().manual_seed(seed),
    ).double()
    with torch.no_grad():  # couplings far from the identity
        for p in flow.parameters():
            p.mul_(gain)
    return flow


@pytest.mark.parametrize("shape", [(4, 4), (2, 4, 6), (3, 2, 2)])
def test_conv_flow_is_volume_preserving_against_slogdet(shape, assert_volume_preserving):
    flow = _conv_flow(shape)
    assert_volume_preserving(flow, torch.randn(5, int(np.prod(shape)), dtype=torch.float64))


def test_conv_flow_is_invertible():
    flow = _conv_flow((28, 28))
    x = torch.rand(8, 784, dtype=torch.float64)
    z = flow.encode(x)
    assert z.shape == x.shape
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-10, rtol=0)


def test_conv_coupling_without_zero_sum_is_glow():
    torch.manual_seed(0)
    block = ConvGINCoupling(4, hidden_channels=4, zero_init=False, volume_preserving=False)
    x = torch.randn(3, 4, 3, 3)
    jac = torch.func.vmap(torch.func.jacrev(lambda v: block(v)[0]))(x)
    _, logabsdet = torch.linalg.slogdet(jac.reshape(3, 36, 36))
    torch.testing.assert_close(block(x)[1], logabsdet, atol=1e-4, rtol=1e-4)
    assert logabsdet.abs().max() > 1e-3


def test_squeeze_is_a_permutation():
    x = torch.arange(32.0).reshape(1, 2, 4, 4)
    y, log_det = Squeeze()(x)
    assert y.shape == (1, 8, 2, 2)
    assert sorted(y.flatten().tolist()) == sorted(x.flatten().tolist())
    torch.testing.assert_close(Squeeze().inverse(y), x)
    assert log_det.shape == (1,) and float(log_det) == 0.0


def test_gin_transformer_with_conv_couplings():
    rng = np.random.default_rng(0)
    X = rng.random((120, 64))
    y = rng.integers(3, size=120)
    gin = GINTransformer(
        coupling="conv", image_shape=(8, 8), n_conv_blocks=1, conv_channels=4, n_blocks=1,
        hidden_features=16, max_epochs=2, random_state=0,
    ).fit(X, y)
    Z = gin.transform(X)
    assert Z.shape == (120, 64)
    np.testing.assert_allclose(gin.inverse_transform(Z), X, atol=1e-4)
    assert 1 <= gin.n_informative_ < 64
    assert isinstance(gin.module_.flow, ConvGINFlow)


@pytest.mark.parametrize("image_shape", [None, (7, 7), (2, 2, 2, 8)])
def test_conv_needs_a_matching_image_shape(image_shape):
    X = np.random.default_rng(0).random((20, 64))
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match="image_shape"):
        GINTransformer(coupling="conv", image_shape=image_shape, max_epochs=1).fit(X, y)
