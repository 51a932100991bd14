"""
==========================================
Free-form flow: densities, samples, p(x|y)
==========================================

:class:`skfff.FreeFormFlow` turns a pair of ordinary residual networks into a normalizing
flow. Here it learns the density of a ring of eight Gaussians (whose true density we know),
and then, with ``conditional=True``, the conditional density of the two-moons data given the
moon label.
"""

# %%
# Unconditional density
# ---------------------
# Fit with default settings; the log-density is exact, so we can compare it with the truth.
# The colour scale is the true density's: where the decoder is not quite the encoder's
# inverse, far from the data, a flow can show thin spurious ridges of high density
# (they carry almost no probability mass). The latent distribution is a Gaussian mixture
# fitted to the data by EM before training (``latent="auto"``, ``n_latent_components_``):
# on this data set, itself a mixture of Gaussians, that start is nearly the answer, so the
# validation NLL of the learning curve hardly moves and early stopping keeps an early epoch.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import make_moons

from skfff import FreeFormFlow
from skfff.datasets import make_gaussian_mixture_2d

X, log_density = make_gaussian_mixture_2d(3000, random_state=0)
X_test, _ = make_gaussian_mixture_2d(3000, random_state=1)
flow = FreeFormFlow(random_state=0).fit(X)  # the defaults, no tuning
print(f"held-out log-likelihood: model {flow.score(X_test):.3f}, "
      f"truth {log_density(X_test).mean():.3f}")

grid = np.linspace(-6.5, 6.5, 150)
pts = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
fig, axes = plt.subplots(1, 4, figsize=(16, 4))
true = np.exp(log_density(pts)).reshape(150, 150)
model = np.exp(flow.score_samples(pts)).reshape(150, 150)
style = {"origin": "lower", "extent": (-6.5, 6.5, -6.5, 6.5), "cmap": "magma",
         "vmin": 0, "vmax": 1.2 * true.max()}
axes[0].imshow(true, **style)
axes[0].set_title("true density")
axes[1].imshow(model, **style)
axes[1].set_title("FreeFormFlow density")
S = flow.sample(2000, random_state=0)
axes[2].scatter(S[:, 0], S[:, 1], s=2, alpha=0.5)
axes[2].set(xlim=(-6.5, 6.5), ylim=(-6.5, 6.5), aspect="equal", title="samples")
axes[3].plot(flow.history_[:, "valid_nll"], label="validation NLL (exact)")
axes[3].set(xlabel="epoch", title="learning curve")
axes[3].legend()

# %%
# Conditional density p(x | y)
# ----------------------------
# With ``conditional=True`` the label is an extra input to both networks; sampling with a
# given label draws from that moon only.
Xm, ym = make_moons(2000, noise=0.08, random_state=0)
cflow = FreeFormFlow(conditional=True, max_epochs=150, random_state=0).fit(Xm, ym)
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
axes[0].scatter(Xm[:, 0], Xm[:, 1], c=ym, s=2, cmap="coolwarm")
axes[0].set_title("training data")
for label, ax in zip([0, 1], axes[1:], strict=True):
    s = cflow.sample(1500, y=[label], random_state=0)
    ax.scatter(s[:, 0], s[:, 1], s=2, color="C3" if label else "C0")
    ax.set_title(f"samples given y = {label}")
for ax in axes:
    ax.set(xlim=(-1.5, 2.5), ylim=(-1, 1.5), aspect="equal")
plt.show()
