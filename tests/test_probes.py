"""Batched probes: agreement with scikit-learn, on synthetic data and on real SmolLM2 activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import lensiar
from lensiar.probes import accuracy, constant_groups, fit_logistic, standardize


def _sklearn(x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """ITI's procedure: one scikit-learn fit per group, scored on the held-out rows."""
    coefs, accs = [], []
    for g in range(x.shape[0]):
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(x[g].double().numpy(), y.numpy())
        coefs.append(clf.coef_[0])
        accs.append(clf.score(xv[g].double().numpy(), yv.numpy()))
    return np.array(coefs), np.array(accs)


def test_same_solution_as_sklearn_on_synthetic_data() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (300,), generator=g)
    signal = torch.randn(12, 1, 16, generator=g) * torch.linspace(0, 1, 12).view(12, 1, 1)
    x = torch.randn(12, 300, 16, generator=g) * 3 + y.view(1, -1, 1) * signal + 2
    w, b = fit_logistic(x[:, :200], y[:200], scaled=False)
    coef, acc = _sklearn(x[:, :200], y[:200], x[:, 200:], y[200:])
    assert np.abs(w.numpy() - coef).max() < 1e-3
    assert np.abs(accuracy(x[:, 200:], y[200:], w, b).numpy() - acc).max() <= 0.01


def test_scaled_probes_match_sklearn_on_scaled_features() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (200,), generator=g)
    x = (torch.randn(4, 200, 8, generator=g) + y.view(1, -1, 1) * 0.5) * torch.tensor([1e-3, 1.0, 10.0, 1e3]).view(4, 1, 1)
    w, _b = fit_logistic(x, y)
    mu, scale = standardize(x)
    coef, _ = _sklearn((x - mu) / scale, y, x, y)
    assert np.abs(w.numpy() * scale.view(4, 1).numpy() - coef).max() < 1e-3


def test_bad_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="both labels"):
        fit_logistic(torch.randn(2, 5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="groups, n, d"):
        fit_logistic(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))


@pytest.fixture(scope="session")
def smollm2_query(smollm2: lensiar.Lens) -> lensiar.SampleActivations:
    """Real activations: 160 AdvBench harmful vs 160 Alpaca harmless prompts, last prompt token (80 held out)."""
    return lensiar.sample_activations(smollm2, lensiar.build_samples("query", n=160, seed=0), progress=False)


def test_head_probes_agree_with_sklearn_on_smollm2(smollm2_query: lensiar.SampleActivations) -> None:
    result = lensiar.probe_heads(None, smollm2_query, seed=0)
    train, val = smollm2_query.split(0.25, seed=0)
    n_layers, n_heads, d_head = train.z.shape[1:]
    flat = lambda a: a.z.permute(1, 2, 0, 3).reshape(n_layers * n_heads, len(a), d_head)  # noqa: E731
    # the probes fit each head's features centred and divided by one scalar (training statistics)
    mu, scale = standardize(flat(train))
    _, sk_acc = _sklearn((flat(train) - mu) / scale, train.labels, (flat(val) - mu) / scale, val.labels)
    sk = torch.tensor(sk_acc, dtype=torch.float32).reshape(n_layers, n_heads)
    # a head whose z is constant to float32 precision has no signal; a fit there only reads rounding noise
    flat_heads = constant_groups(flat(train)).reshape(n_layers, n_heads)
    assert int(flat_heads.sum()) <= 3
    assert (result.accuracy - sk).abs()[~flat_heads].max() <= 0.02
    sk[flat_heads] = 0.0
    ours, theirs = set(result.top(10)), set(lensiar.probes.top_heads(sk, 10))
    assert len(ours & theirs) >= 8
    assert result.accuracy.max() > 0.9  # harmfulness is linearly readable in SmolLM2's heads


def test_held_out_split_and_determinism(smollm2_query: lensiar.SampleActivations) -> None:
    a = lensiar.probe_heads(None, smollm2_query, seed=0)
    b = lensiar.probe_heads(None, smollm2_query, seed=0)
    assert torch.equal(a.accuracy, b.accuracy) and a.top(10) == b.top(10)
    assert not set(a.train_ids) & set(a.val_ids)
    c = lensiar.probe_heads(None, smollm2_query, seed=1)
    assert set(c.val_ids) != set(a.val_ids)
    assert a.layer_accuracy.shape == (30,) and a.top_layers(3)[0] in range(30)


def test_split_averaged_layer_accuracy_is_the_mean_over_seeded_splits(
        smollm2_query: lensiar.SampleActivations) -> None:
    """The demo's gate layer: the mean of each seed's own held-out layer accuracies, exactly."""
    runs = [lensiar.probe_heads(None, smollm2_query, seed=s).layer_accuracy for s in (0, 1, 2)]
    mean = lensiar.split_averaged_layer_accuracy(smollm2_query, (0, 1, 2))
    assert torch.equal(mean, torch.stack(runs).mean(0))
    assert not torch.equal(runs[0], runs[1])  # the splits differ, so the mean is not one split's figure
    with pytest.raises(ValueError, match="at least one seed"):
        lensiar.split_averaged_layer_accuracy(smollm2_query, ())


def test_nearly_separable_groups_finish_with_newton_and_match_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strong signal makes the fixed-bound CG slow; groups it leaves unconverged hand over to Newton
    (observed, not assumed) and end at least as low on scikit-learn's objective as scikit-learn itself."""
    import lensiar.probes as probes

    handed = []
    newton = probes._newton
    monkeypatch.setattr(probes, "_newton", lambda xs, *a: handed.append(xs.shape[0]) or newton(xs, *a))
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 2, (240,), generator=g)
    x = torch.randn(6, 240, 48, generator=g) + y.view(1, -1, 1) * torch.linspace(0.5, 8.0, 6).view(6, 1, 1)
    xt, yt = x[:, :160].double(), y[:160].double()
    monkeypatch.setattr(probes, "DIAGONAL_ITERATIONS", 2)  # CG budgets short enough that some groups are
    monkeypatch.setattr(probes, "PCG_ITERATIONS", 2)  # left unconverged
    w, b = fit_logistic(x[:, :160], y[:160], scaled=False, tol=1e-7)  # converged as tightly as sklearn below
    assert sum(handed) >= 1

    def objective(w_: torch.Tensor, b_: torch.Tensor) -> torch.Tensor:  # C = 1: sum of log-losses + |w|^2 / 2
        z = torch.einsum("gnd,gd->gn", xt, w_) + b_.view(-1, 1)
        return (torch.nn.functional.softplus(z) - yt * z).sum(1) + 0.5 * (w_ * w_).sum(1)

    fits = [LogisticRegression(C=1.0, max_iter=5000, tol=1e-8).fit(xt[k].numpy(), yt.numpy()) for k in range(6)]
    theirs = objective(torch.tensor(np.stack([f.coef_[0] for f in fits])), torch.tensor([f.intercept_[0] for f in fits]))
    ours = objective(w.double(), b.double())
    assert (ours <= theirs + 1e-4 * theirs.abs()).all(), (ours, theirs)
    acc = [f.score(x[k, 160:].double().numpy(), y[160:].numpy()) for k, f in enumerate(fits)]
    assert np.abs(accuracy(x[:, 160:], y[160:], w, b).numpy() - np.array(acc)).max() <= 0.0125
