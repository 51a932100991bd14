"""
Maximum likelihood autoencoder: a learnt manifold and its density
=================================================================

:class:`~skfff.MLAutoencoder` learns a ``n_components``-dimensional manifold near the data
(the decoder's image) together with a standard normal distribution of the codes on it, by
maximum likelihood. Unlike a plain autoencoder, its codes are distributed as the model
says, so decoding random normal draws gives samples that follow the data.

We look at a curve in the plane and at handwritten digits.
"""

# %%
# A noisy curve in 2-D
# --------------------
# Points along ``(t, sin 1.5t)`` with ``t ~ N(0, 1)``, plus a little isotropic noise. A
# one-dimensional MLAE finds the curve (coloured by the latent code ``z``), projects each
# point onto it, and samples new points on it.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from skfff import MLAutoencoder

rng = np.random.default_rng(0)
t = rng.standard_normal(1000)
X = np.c_[t, np.sin(1.5 * t)] + 0.05 * rng.standard_normal((1000, 2))

ae = MLAutoencoder(n_components=1, hidden_features=64, lr=3e-3, max_epochs=100, random_state=0)
ae.fit(X)

z_grid = np.linspace(-3, 3, 400)[:, None]
curve = ae.inverse_transform(z_grid)
X_proj = ae.inverse_transform(ae.transform(X))
samples = ae.sample(500, random_state=1)

fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharex=True, sharey=True)
axes[0].scatter(*X.T, s=3, c="0.6", label="data")
sc = axes[0].scatter(*curve.T, s=4, c=z_grid[:, 0], cmap="viridis", label="g(z)")
fig.colorbar(sc, ax=axes[0], label="latent code z")
axes[0].set_title("data and learnt manifold g(z), z in [-3, 3]")
for i in range(0, 1000, 10):
    axes[1].plot([X[i, 0], X_proj[i, 0]], [X[i, 1], X_proj[i, 1]], c="C3", lw=0.8)
axes[1].scatter(*X[::10].T, s=6, c="k")
axes[1].plot(*curve.T, c="C0", lw=1)
axes[1].set_title("projections x -> g(f(x))")
axes[2].scatter(*samples.T, s=4, c="C1")
axes[2].set_title("samples g(z), z ~ N(0, 1)")
for ax in axes:
    ax.set_aspect("equal")
fig.tight_layout()

# %%
# The codes of the data are standard normal, as the model assumes. The density on the
# curve (``score_samples``) is per unit of arc length: it is highest where the data are
# densest, and dips where the curve is steep (the same probability spread over a longer
# stretch of curve).
Z = ae.transform(X)[:, 0]
print(f"codes: mean {Z.mean():.3f}, std {Z.std():.3f}")
print(f"mean squared distance to the curve: {ae.reconstruction_error(X).mean():.4f} "
      f"(noise variance: {0.05**2:.4f} per direction)")

fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
ax[0].hist(Z, bins=50, density=True, color="0.7", label="codes f(x)")
ax[0].plot(z_grid, np.exp(-0.5 * z_grid**2) / np.sqrt(2 * np.pi), c="C0", label="N(0, 1)")
ax[0].legend()
ax[0].set_title("latent codes")
log_p = ae.score_samples(curve)
ax[1].plot(curve[:, 0], np.exp(log_p), c="C0")
ax[1].set_xlabel("first coordinate of g(z)")
ax[1].set_title("density on the curve (per unit length)")
fig.tight_layout()

# %%
# Digits
# ------
# The 8x8 digits shipped with scikit-learn, 64 pixels, encoded into 8 dimensions.
# ``scaling="global"`` centres the pixels and divides them by one common scale, which
# keeps the image geometry (per-pixel standardisation would blow up rare border pixels).
digits = load_digits().data / 16.0
ae_digits = MLAutoencoder(
    n_components=8, scaling="global", max_epochs=80, random_state=0
).fit(digits[:1500])

test = digits[1500:1510]
recon = ae_digits.inverse_transform(ae_digits.transform(test))
fake = ae_digits.sample(20, random_state=0)

fig, axes = plt.subplots(4, 10, figsize=(10, 4.3))
rows = [test, recon, fake[:10], fake[10:]]
titles = ["test digits", "reconstructions", "samples", "samples"]
for r, (images, title) in enumerate(zip(rows, titles, strict=True)):
    for c in range(10):
        axes[r, c].imshow(images[c].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
        axes[r, c].axis("off")
    axes[r, 0].set_title(title, loc="left", fontsize=9)
fig.tight_layout()
plt.show()
