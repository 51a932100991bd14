"""DirichletLatentClassifier on a rare and simple signal: 10 % one-prong jets among three-prong.

With two components the ELBO spends the single free latent direction on the varied three-prong
background (the strict xfail in ``test_dirichlet.py``). More components (the background can take
several) and a sparse Dirichlet prior (``alpha=0.1``, whose wide Laplace approximation hardly
pulls rows toward the uniform mixture) give the rare jets a component of their own. Which
initialisation finds it varies; ``n_init`` keeps the one with the most decisive weights.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from skfff import DirichletLatentClassifier
from skfff.datasets import make_jet_images

IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def rare_simple():
    X, y = make_jet_images(2000, 0.1, IMAGE_SIZE, random_state=1, signal="qcd")
    Xt, yt = make_jet_images(1000, 0.5, IMAGE_SIZE, random_state=2, signal="qcd")
    return X, y, Xt, yt


@pytest.fixture(scope="module")
def sparse_four(rare_simple):
    X, y, _, _ = rare_simple
    clf = DirichletLatentClassifier(
        n_components=4, alpha=0.1, max_epochs=50, random_state=0, device="cpu"
    )
    return clf.fit(X, y)  # y only names the components; training is unsupervised


def test_rare_simple_signal_found_with_sparse_prior_and_more_components(rare_simple, sparse_four):
    _, _, Xt, yt = rare_simple
    auc = roc_auc_score(yt, sparse_four.predict_proba(Xt)[:, 1])
    # two components: about 0.5; sklearn's LDA on pseudo-counts: 0.82 on the benchmark
    assert auc >= 0.85


def test_rare_class_gets_a_component_of_its_own(rare_simple, sparse_four):
    X, y, _, _ = rare_simple
    mapping = sparse_four.component_classes_
    assert sorted(set(mapping)) == [0, 1]
    W = sparse_four.transform(X)
    signal_weight = W[:, mapping == 1].sum(1)
    # most one-prong jets sit in their component(s), few three-prong jets do
    assert np.median(signal_weight[y == 1]) > 0.5
    assert np.median(signal_weight[y == 0]) < 0.2
    # the varied three-prong background spreads over several components
    assert np.sum(mapping == 0) >= 2
    np.testing.assert_allclose(sparse_four.predict_proba(X).sum(1), 1.0, rtol=1e-9)


def test_n_init_keeps_a_decisive_training_that_finds_the_rare_class():
    # The benchmark's setting, on a data set where single trainings gave AUC 0.69 and 0.73
    # besides 0.94: five initialisations, the lowest-entropy one kept (no labels used).
    X, y = make_jet_images(3000, 0.1, 20, random_state=3, signal="qcd")
    Xt, yt = make_jet_images(2000, 0.5, 20, random_state=1003, signal="qcd")
    clf = DirichletLatentClassifier(
        n_components=4, alpha=0.1, max_epochs=60, n_init=5, random_state=0, device="cpu"
    ).fit(X, y)
    assert clf.init_entropies_.shape == (5,)
    assert clf.best_init_ == int(np.argmin(clf.init_entropies_))
    assert np.isclose(clf._weight_entropy(X), clf.init_entropies_.min())
    assert roc_auc_score(yt, clf.predict_proba(Xt)[:, 1]) >= 0.93
