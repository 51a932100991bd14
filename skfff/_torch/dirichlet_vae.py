"""Variational autoencoder with a Dirichlet or Gaussian-mixture latent space.

Dillon, Plehn, Sauer and Sorrenson, "Better latent spaces for better autoencoders",
SciPost Phys. 11, 061 (2021).

- Encoder: a normalised histogram ``x`` (rows sum to one) -> ``(mean, log_var)`` in ``R^K``;
  ``z = mean + exp(log_var / 2) * eps`` and ``r = softmax(z)`` is a point of the simplex: the
  mixture weights.
- Decoder: ``x_hat = softmax(W r)`` with ``W`` of shape (D, K) and no bias, so the K columns of
  ``W`` are "topics" mixed in logit space; ``softmax(W e_k)`` is the pure topic ``k``.
- Reconstruction: the cross-entropy ``-sum_j x_j log x_hat_j`` (a multinomial likelihood of one
  unit of normalised intensity).
- Prior on ``z``: the Laplace approximation of Dirichlet(alpha) in the softmax basis
  (:class:`~skfff._torch.priors.DirichletLaplacePrior`), or a Gaussian mixture with one
  component per simplex corner (:class:`~skfff._torch.priors.GaussianMixturePrior`); KL in
  closed form (a closed-form variational bound for the mixture).
- Mixture weights that classify: ``softmax(mean(x))`` for the Dirichlet latent, the posterior
  responsibilities of the mixture components for the Gaussian mixture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .module import TrainingModule
from .networks import MLP, make_network
from .priors import DirichletLaplacePrior, GaussianMixturePrior

__all__ = ["DirichletVAE"]


class DirichletVAE(TrainingModule):
    """VAE whose latent mixture weights ``r = softmax(z)`` decode through linear topics.

    Parameters
    ----------
    n_features : int
        Width D of the (normalised) inputs.
    n_components : int, default=2
        Number of latent components K (topics).
    latent : {"dirichlet", "gaussian_mixture"}, default="dirichlet"
        Prior on ``z``.
    alpha : float or sequence of float, default=1.0
        Dirichlet concentrations (``latent="dirichlet"``).
    kl_weight : float, default=1.0
        Weight of the KL term in the training loss (the validation loss, the negative ELBO,
        always uses weight 1).
    hidden_layer_sizes : sequence of int, default=(128, 64)
        Hidden widths of the default encoder.
    encoder : torch.nn.Module or callable, optional
        A module (deep-copied) or a factory ``encoder(in_features, out_features,
        n_conditions)`` (see :func:`~skfff._torch.networks.make_network`) replacing the
        default :class:`~skfff._torch.networks.MLP` encoder; it receives the standardised
        ``sqrt(x)`` and must return ``2 K`` numbers per row (mean, log-variance).
    n_classes : int, default=0
        With ``n_classes > 0`` the training loss adds the cross-entropy of the class weights
        (component ``k`` for class ``k``) against one-hot labels passed as ``c``.
    mixture_scale : float, default=3.0
        Distance scale of the Gaussian-mixture components (``latent="gaussian_mixture"``).
    """

    def __init__(
        self,
        n_features: int,
        n_components: int = 2,
        *,
        latent: str = "dirichlet",
        alpha: float | Sequence[float] = 1.0,
        kl_weight: float = 1.0,
        hidden_layer_sizes: Sequence[int] = (128, 64),
        encoder: Callable[[int, int], nn.Module] | None = None,
        n_classes: int = 0,
        mixture_scale: float = 3.0,
    ) -> None:
        super().__init__()
        if latent not in ("dirichlet", "gaussian_mixture"):
            raise ValueError(f"latent must be 'dirichlet' or 'gaussian_mixture', got {latent!r}")
        if n_classes > n_components:
            raise ValueError("n_classes cannot exceed n_components")
        self.n_features = int(n_features)
        self.n_components = int(n_components)
        self.latent = latent
        self.kl_weight = float(kl_weight)
        # Multiplies kl_weight in the training loss; a callback may ramp it up (KL warm-up).
        self.kl_scale = 1.0
        self.n_classes = int(n_classes)
        k = self.n_components
        self.encoder = make_network(
            encoder, n_features, 2 * k, default=lambda: MLP(n_features, 2 * k, hidden_layer_sizes),
            wrap=False,
        )
        # Topics: logits of K pure components, mixed linearly in logit space (no bias).
        self.topics = nn.Parameter(0.1 * torch.randn(n_features, k))
        # Standardisation of the encoder input sqrt(x) (see set_input_scaling).
        self.register_buffer("input_mean", torch.zeros(n_features))
        self.register_buffer("input_scale", torch.ones(n_features))
        if latent == "dirichlet":
            self.prior: nn.Module = DirichletLaplacePrior(alpha, n_components=k)
        else:
            self.prior = GaussianMixturePrior.at_simplex_corners(k, scale=mixture_scale)

    # ----------------------------------------------------------------- parts
    @torch.no_grad()
    def set_input_scaling(self, x: torch.Tensor) -> None:
        """Standardise the encoder input ``sqrt(x)`` with the statistics of the rows ``x``.

        Also starts every topic at the log mean row (plus its random init), so the encoder only
        has to learn departures from the average.
        """
        h = torch.sqrt(x.clamp_min(0.0))
        self.input_mean.copy_(h.mean(0))
        self.input_scale.copy_(h.std(0).clamp_min(1e-3))
        self.topics.add_(torch.log(x.mean(0) + 1e-4)[:, None])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``q(z | x) = N(mean, diag exp(log_var))``, each of shape (B, K).

        The encoder sees ``sqrt(x)`` (which tames the dynamic range of histogram cells),
        standardised per feature.
        """
        h = (torch.sqrt(x.clamp_min(0.0)) - self.input_mean) / self.input_scale
        out = self.encoder(h)
        mean, log_var = out[..., : self.n_components], out[..., self.n_components :]
        return mean, log_var.clamp(-12.0, 8.0)

    def decode_log(self, r: torch.Tensor) -> torch.Tensor:
        """``log softmax(W r)`` for mixture weights ``r`` of shape (B, K): shape (B, D)."""
        return torch.log_softmax(r @ self.topics.T, dim=-1)

    def decode(self, r: torch.Tensor) -> torch.Tensor:
        """Decoded histogram ``softmax(W r)``, shape (B, D)."""
        return self.decode_log(r).exp()

    def components(self) -> torch.Tensor:
        """Pure topics ``softmax(W e_k)``, shape (K, D)."""
        eye = torch.eye(self.n_components, device=self.topics.device, dtype=self.topics.dtype)
        return self.decode(eye)

    def kl(self, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """KL term per sample (closed form, or the closed-form bound for the mixture)."""
        return self.prior.kl(mean, log_var)

    def log_mixture_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Log mixture weights of ``x``: ``log softmax(mean)`` or log-responsibilities, (B, K)."""
        mean, log_var = self.encode(x)
        if self.latent == "dirichlet":
            return torch.log_softmax(mean, dim=-1)
        return torch.log_softmax(
            self.prior.log_weights - self.prior.component_kl(mean, log_var), dim=-1
        )

    def mixture_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Mixture weights of ``x`` (rows on the simplex), shape (B, K)."""
        return self.log_mixture_weights(x).exp()

    @staticmethod
    def cross_entropy(x: torch.Tensor, log_x_hat: torch.Tensor) -> torch.Tensor:
        """``-sum_j x_j log x_hat_j`` per row."""
        return -(x * log_x_hat).sum(-1)

    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the reconstruction at the posterior mean, shape (B,)."""
        mean, _ = self.encode(x)
        return self.cross_entropy(x, self.decode_log(torch.softmax(mean, dim=-1)))

    def elbo_terms(
        self, x: torch.Tensor, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction cross-entropy and KL per sample (one reparametrised draw each).

        Parameters
        ----------
        x : Tensor of shape (B, D)
            Normalised histograms.
        eps : Tensor of shape (S, B, K) or (B, K), optional
            Standard normal noise; drawn from torch's generator when omitted. With S draws
            the reconstruction term is averaged over them.

        Returns
        -------
        recon, kl : Tensors of shape (B,)
        """
        mean, log_var = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mean)
        z = mean + torch.exp(0.5 * log_var) * eps
        log_x_hat = self.decode_log(torch.softmax(z, dim=-1))
        recon = self.cross_entropy(x, log_x_hat)
        if recon.ndim > 1:
            recon = recon.mean(0)
        return recon, self.kl(mean, log_var)

    def elbo(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Evidence lower bound per sample, shape (B,)."""
        recon, kl = self.elbo_terms(x, eps)
        return -(recon + kl)

    # ---------------------------------------------------------------- losses
    def training_loss(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``recon + kl_scale * kl_weight * KL`` (batch mean), plus the label cross-entropy.

        The label term (only with ``n_classes > 0`` and one-hot ``c``) is
        ``-sum_k c_k log w_k`` over the first ``n_classes`` mixture weights.
        """
        recon, kl = self.elbo_terms(x)
        loss = (recon + self.kl_scale * self.kl_weight * kl).mean()
        if self.n_classes and c is not None:
            log_w = self.log_mixture_weights(x)[:, : self.n_classes]
            loss = loss - (c * log_w).sum(-1).mean()
        return loss

    def validation_loss(
        self, x: torch.Tensor, c: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Negative ELBO (batch mean), with its reconstruction and KL parts."""
        recon, kl = self.elbo_terms(x)
        return {"loss": (recon + kl).mean(), "recon": recon.mean(), "kl": kl.mean()}
