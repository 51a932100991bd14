"""
Tagging jets with the mixture weights of a Dirichlet latent space
=================================================================

A :class:`~skfff.DirichletLatentClassifier` is a variational autoencoder whose latent
variables are mixture weights on the simplex and whose decoder mixes learnt *topics*.
Trained without labels on a mixture of one-prong (QCD-like) and three-prong (top-like) jet
images, one of its two topics becomes "one-prong core" and the other "three-prong spray":
the mixture weight classifies the jets.

An autoencoder's reconstruction error, the classic anomaly score, only works in one
direction: it flags the *more complex* jets. The mixture weight works whichever class we
call signal.
"""

# %%
# Synthetic jet images
# --------------------
# :func:`~skfff.datasets.make_jet_images` draws calorimeter-like images (a stand-in for the
# top-tagging data): energy deposits showered around one or three prongs, normalised per
# image. We train on 3000 jets with half of them top-like and evaluate on fresh jets.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from skfff import DirichletLatentClassifier
from skfff.datasets import make_jet_images

size = 20
X, y = make_jet_images(3000, signal_fraction=0.5, image_size=size, random_state=0)
X_test, y_test = make_jet_images(2000, signal_fraction=0.5, image_size=size, random_state=1)

fig, axes = plt.subplots(2, 4, figsize=(8, 4.2))
for row, label, name in ((0, 0, "QCD-like"), (1, 1, "top-like")):
    for col in range(3):
        img = X[y == label][col].reshape(size, size)
        axes[row, col].imshow(np.log10(img + 1e-4), cmap="magma", vmin=-4, vmax=0)
        axes[row, col].set_title(f"{name} jet", fontsize=9)
    axes[row, 3].imshow(X[y == label].mean(0).reshape(size, size) ** 0.5, cmap="magma")
    axes[row, 3].set_title(f"mean {name}", fontsize=9)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("jet images (log10 of the energy fraction per cell)")
fig.tight_layout()

# %%
# Fitting without labels
# ----------------------
# The labels passed to ``fit`` do not train the model: they only tell which latent component
# stands for which class (Hungarian matching on the training jets), so that ``predict_proba``
# has its columns in ``classes_`` order.
clf = DirichletLatentClassifier(n_components=2, alpha=0.9, random_state=0, max_epochs=60)
clf.fit(X, y)
print("component -> class:", clf.component_classes_)
print("test accuracy:", clf.score(X_test, y_test))

# %%
# The learnt topics
# -----------------
# ``components_`` holds the decoded pure topics ``softmax(W e_k)``: one is a narrow core, the
# other spreads energy over the three-prong region. They are learnt without any label.
fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
for k, ax in enumerate(axes):
    ax.imshow(clf.components_[k].reshape(size, size) ** 0.5, cmap="viridis")
    ax.set_title(f"topic {k} (class {clf.classes_[clf.component_classes_[k]]})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("learnt topics (square root of intensity)")
fig.tight_layout()

# %%
# ROC curves in both directions
# -----------------------------
# With top-like jets as signal, both the mixture weight and the reconstruction error work.
# Calling the *simpler* QCD-like jets the signal flips the reconstruction error below the
# diagonal, while the mixture weight of the other topic still tags them.
p_top = clf.predict_proba(X_test)[:, 1]
err = clf.reconstruction_error(X_test)
fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, signal, y_sig, weight in (
    (axes[0], "top-like", y_test, p_top),
    (axes[1], "QCD-like", 1 - y_test, 1 - p_top),
):
    for score, name in ((weight, "mixture weight"), (err, "reconstruction error")):
        fpr, tpr, _ = roc_curve(y_sig, score)
        auc = np.trapezoid(tpr, fpr)
        floor = 1.0 / np.sum(y_sig == 0)  # one background jet: the finite-sample cap
        ax.plot(tpr, 1.0 / np.maximum(fpr, floor), label=f"{name} (AUC {auc:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("signal efficiency")
    ax.set_ylabel("background rejection 1/eps_B")
    ax.set_title(f"signal = {signal} jets")
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
