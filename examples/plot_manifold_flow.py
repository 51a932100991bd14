"""
=================================================
Manifold free-form flow: densities on S^2 and T^2
=================================================

:class:`skfff.ManifoldFreeFormFlow` learns a density on a known manifold. Its networks act
in the embedding space and end with a projection onto the manifold, the log-determinant is
estimated with probes in the tangent space, and sampling is a single network pass. Here it
learns a von Mises-Fisher mixture on the sphere (drawn as a world map) and a mixture of
wrapped normals on the torus of two dihedral angles (drawn as a Ramachandran plot); both
true densities are known, so we can compare.
"""

# %%
# The sphere
# ----------
# Points on S^2 are unit vectors; :func:`skfff.manifolds.latlon_to_unit` converts latitude
# and longitude in degrees. Densities are per unit area (the sphere has area 4 pi).
import matplotlib.pyplot as plt
import numpy as np

from skfff import ManifoldFreeFormFlow
from skfff.datasets import make_torus_wrapped_normal_mixture, make_vmf_mixture
from skfff.manifolds import latlon_to_unit, unit_to_latlon

X, _, dist = make_vmf_mixture(2000, n_components=4, concentration=15.0, random_state=8,
                              return_distribution=True)
X_test, _ = dist.sample(2000, random_state=1)
sphere_flow = ManifoldFreeFormFlow("sphere", max_epochs=100, lr=3e-3, hidden_features=64,
                                   n_blocks=2, random_state=0).fit(X)
print(f"S^2 held-out log-likelihood: model {sphere_flow.score(X_test):.3f}, "
      f"truth {dist.log_density(X_test).mean():.3f}, uniform {-np.log(4 * np.pi):.3f}")

lon = np.linspace(-180, 180, 181)
lat = np.linspace(-90, 90, 91)
LON, LAT = np.meshgrid(lon, lat)
grid = latlon_to_unit(LAT.ravel(), LON.ravel())
S = unit_to_latlon(sphere_flow.sample(1500, random_state=0))

fig, axes = plt.subplots(1, 3, figsize=(16, 3.8), subplot_kw={"projection": "mollweide"})
panels = [("true density", np.exp(dist.log_density(grid))),
          ("ManifoldFreeFormFlow density", np.exp(sphere_flow.score_samples(grid)))]
vmax = max(p.max() for _, p in panels)
for ax, (title, dens) in zip(axes[:2], panels, strict=True):
    ax.pcolormesh(np.deg2rad(LON), np.deg2rad(LAT), dens.reshape(LAT.shape), cmap="magma",
                  vmin=0, vmax=vmax, shading="auto")
    ax.set_title(title)
axes[2].scatter(np.deg2rad(S[:, 1]), np.deg2rad(S[:, 0]), s=1, alpha=0.5)
axes[2].set_title("samples (one network pass each)")
for ax in axes:
    ax.set_xticklabels([])
    ax.grid(alpha=0.3)

# %%
# The torus: a Ramachandran-style plot
# ------------------------------------
# A protein backbone's dihedral angles (phi, psi) live on the torus T^2. Inputs are angles
# in radians; the flow embeds them as (cos, sin) pairs and its densities are per
# radian^2 (total volume (2 pi)^2). The mixture below has modes at positions reminiscent
# of alpha helices and beta sheets, and it wraps around the edges of the square.
A, _, tdist = make_torus_wrapped_normal_mixture(2000, n_components=3, scale=0.45,
                                                random_state=4, return_distribution=True)
A_test, _ = tdist.sample(2000, random_state=1)
torus_flow = ManifoldFreeFormFlow("torus", max_epochs=100, lr=3e-3, hidden_features=64,
                                  n_blocks=2, random_state=0).fit(A)
print(f"T^2 held-out log-likelihood: model {torus_flow.score(A_test):.3f}, "
      f"truth {tdist.log_density(A_test).mean():.3f}, uniform {-2 * np.log(2 * np.pi):.3f}")

g = np.linspace(-np.pi, np.pi, 121)
PHI, PSI = np.meshgrid(g, g)
angles = np.stack([PHI.ravel(), PSI.ravel()], 1)
fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
panels = [("true density", np.exp(tdist.log_density(angles))),
          ("ManifoldFreeFormFlow density", np.exp(torus_flow.score_samples(angles)))]
vmax = max(p.max() for _, p in panels)
for ax, (title, dens) in zip(axes[:2], panels, strict=True):
    ax.imshow(dens.reshape(PHI.shape), origin="lower", extent=(-180, 180, -180, 180),
              cmap="magma", vmin=0, vmax=vmax)
    ax.set_title(title)
T = np.rad2deg(torus_flow.sample(2000, random_state=0))
axes[2].scatter(T[:, 0], T[:, 1], s=2, alpha=0.5)
axes[2].set(xlim=(-180, 180), ylim=(-180, 180), aspect="equal", title="samples")
for ax in axes:
    ax.set(xlabel="phi (degrees)", ylabel="psi (degrees)", xticks=[-180, 0, 180],
           yticks=[-180, 0, 180])
plt.show()
