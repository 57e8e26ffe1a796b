"""Base learners of a streaming concept store: river classifiers or a small torch MLP, one interface.

Every learner follows river's one-observation interface (``learn_one(x, y, w)``, ``predict_proba_one(x)``
with ``x`` a ``{feature name: value}`` dict), so the store holds any of them. ``hoeffding_tree`` is the
paper's base learner with the authors' settings (ficsum.md §2: grace_period 200, delta 1e-7, tau 0.05,
leaf_prediction "nba"); any other river classifier is named by its dotted class path.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "HOEFFDING_TREE_DEFAULTS", "LEARNER_NAMES", "TorchOnlineMLP", "learn_rows", "make_learner", "predict_proba_rows",
    "structure_size",
]  # fmt: skip

#: The authors' Hoeffding-tree settings (ficsum.md §2).
HOEFFDING_TREE_DEFAULTS: dict[str, Any] = {"grace_period": 200, "delta": 1e-7, "tau": 0.05, "leaf_prediction": "nba"}

#: Short learner names; anything else must be a dotted path to a river-style classifier class.
LEARNER_NAMES = ("hoeffding_tree", "naive_bayes", "torch_mlp")


class TorchOnlineMLP:
    """A small torch MLP trained online, one SGD step per observation, behind river's interface.

    Args:
        n_features: input width.
        classes: the label set (ints ``0..C-1``).
        hidden: hidden width (0 = logistic regression); default 16.
        lr: SGD learning rate; default 0.05.
        seed: initialisation seed.
    """

    def __init__(self, n_features: int, classes: Sequence[int], hidden: int = 16, lr: float = 0.05, seed: int = 0):
        self.feature_names: tuple[str, ...] | None = None
        self.classes = tuple(int(c) for c in classes)
        self.n_features, self.hidden = int(n_features), int(hidden)
        gen = torch.Generator().manual_seed(int(seed))
        self.net = self._build(self.n_features, self.hidden, len(self.classes))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)
        self.n_seen = 0

    def __getstate__(self) -> dict[str, Any]:
        """Plain values: weights as numpy arrays (torch's own storage pickles carry memory addresses, so
        their bytes would differ between equal nets), the optimizer as its lr (plain SGD keeps no state)."""
        state = dict(self.__dict__)
        state["net"] = {k: v.detach().numpy().copy() for k, v in self.net.state_dict().items()}
        state["opt"] = float(self.opt.param_groups[0]["lr"])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():  # in order (the net comes before its optimizer), so pickles repeat
            if key == "net":
                value = self._build(state["n_features"], state["hidden"], len(state["classes"]))
                value.load_state_dict({k: torch.from_numpy(v) for k, v in state["net"].items()})
            elif key == "opt":
                value = torch.optim.SGD(self.net.parameters(), lr=value)
            setattr(self, key, value)

    @staticmethod
    def _build(n_features: int, hidden: int, n_classes: int) -> torch.nn.Sequential:
        layers: list[torch.nn.Module] = []
        width = n_features
        if hidden:
            layers += [torch.nn.Linear(n_features, hidden), torch.nn.Tanh()]
            width = hidden
        layers.append(torch.nn.Linear(width, n_classes))
        return torch.nn.Sequential(*layers)

    def _tensor(self, x: Mapping[str, float]) -> torch.Tensor:
        if self.feature_names is None:
            self.feature_names = tuple(x)
        return torch.tensor([[float(x[k]) for k in self.feature_names]], dtype=torch.float32)

    def predict_proba_one(self, x: Mapping[str, float]) -> dict[int, float]:
        """Softmax probabilities of every class (``{}`` before the first observation, like river)."""
        if not self.n_seen:
            return {}
        with torch.no_grad():
            p = torch.softmax(self.net(self._tensor(x)), dim=-1)[0].tolist()
        return dict(zip(self.classes, p))

    def learn_one(self, x: Mapping[str, float], y: int, w: float = 1.0) -> None:
        """One SGD step on the weighted cross-entropy of ``(x, y)``."""
        logits = self.net(self._tensor(x))
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([self.classes.index(int(y))])) * float(w)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.n_seen += 1


def make_learner(
    name: str, kwargs: Mapping[str, Any] | None, n_features: int, classes: Sequence[int], seed: int = 0
) -> Any:
    """A fresh learner: ``hoeffding_tree`` (paper defaults, overridden by ``kwargs``), ``naive_bayes``,
    ``torch_mlp`` or a dotted river class path such as ``river.linear_model.LogisticRegression``."""
    kwargs = dict(kwargs or {})
    if name == "hoeffding_tree":
        from river.tree import HoeffdingTreeClassifier

        return HoeffdingTreeClassifier(**{**HOEFFDING_TREE_DEFAULTS, **kwargs})
    if name == "naive_bayes":
        from river.naive_bayes import GaussianNB

        return GaussianNB(**kwargs)
    if name == "torch_mlp":
        return TorchOnlineMLP(n_features, classes, seed=seed, **kwargs)
    module_name, _, cls_name = name.rpartition(".")
    if not module_name:
        raise ValueError(f"unknown learner {name!r}: use one of {LEARNER_NAMES} or a dotted class path")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"learner {name!r} cannot be imported ({err}); use one of {LEARNER_NAMES}") from None
    model = cls(**kwargs)
    if not (hasattr(model, "learn_one") and hasattr(model, "predict_proba_one")):
        raise ValueError(f"learner {name!r} lacks learn_one/predict_proba_one (a river classifier is expected)")
    return model


def _rows(X: np.ndarray, feature_names: Sequence[str]) -> list[dict[str, float]]:
    return [dict(zip(feature_names, row)) for row in np.asarray(X, dtype=np.float64).tolist()]


_HALF_LOG_TAU = 0.5 * math.log(math.tau)


def _ht_batch_plan(model: Any) -> tuple[Any, set[str]] | None:
    """``(root, features its branches test)`` of a river ``HoeffdingTreeClassifier`` whose every node the batch
    predictor below reproduces (numeric binary branches; majority-class, naive-Bayes or adaptive leaves;
    Gaussian splitters), else None."""
    from river.tree.hoeffding_tree_classifier import HoeffdingTreeClassifier
    from river.tree.nodes.branch import NumericBinaryBranch
    from river.tree.nodes.htc_nodes import LeafMajorityClass, LeafNaiveBayes, LeafNaiveBayesAdaptive
    from river.tree.splitter.gaussian_splitter import GaussianSplitter

    if type(model) is not HoeffdingTreeClassifier or model._root is None:
        return None
    stack, features = [model._root], set()
    while stack:
        node = stack.pop()
        if type(node) is NumericBinaryBranch:
            features.add(node.feature)
            stack.extend(node.children)
        elif type(node) in (LeafMajorityClass, LeafNaiveBayes, LeafNaiveBayesAdaptive):
            if node.splitters and any(type(s) is not GaussianSplitter for s in node.splitters.values()):
                return None
        else:
            return None
    return model._root, features


def _leaf_proba(leaf: Any, tree: Any, X: np.ndarray, col: Mapping[str, int], classes: Sequence[int]) -> np.ndarray:
    """River's ``leaf.prediction`` for every row of ``X`` at once (the same terms; sums vectorised, so equal to
    rounding)."""
    from river.tree.nodes.htc_nodes import LeafNaiveBayes, LeafNaiveBayesAdaptive

    out = np.zeros((len(X), len(classes)))
    cidx = {c: j for j, c in enumerate(classes)}
    stats = leaf.stats
    use_nb = False
    if leaf.is_active():
        if type(leaf) is LeafNaiveBayesAdaptive:
            use_nb = leaf._nb_correct_weight >= leaf._mc_correct_weight
        elif type(leaf) is LeafNaiveBayes:
            use_nb = leaf.total_weight >= tree.nb_threshold
    total = sum(stats.values())
    if not use_nb:  # majority class: normalize_values_in_dict(stats)
        for c, v in stats.items():
            j = cidx.get(int(c))
            if j is not None:
                out[:, j] = v / total if total else v
        return out
    if not stats or total == 0:  # river's naive Bayes returns {}: every class keeps probability 0
        return out
    labels = list(stats)
    d = X.shape[1]
    prior = np.zeros(len(labels))
    mu, variance, valid = np.zeros((len(labels), d)), np.ones((len(labels), d)), np.zeros((len(labels), d), bool)
    for k, c in enumerate(labels):
        if stats[c] <= 0:  # river gives such a class the vote 0.0 and no likelihood terms
            continue
        prior[k] = math.log(stats[c] / total)
        for att, splitter in leaf.splitters.items():
            g = splitter._att_dist_per_class.get(c) if att in col else None
            if g is None:
                continue
            var = g._var
            if var.mean.n > var.ddof and var._S / (var.mean.n - var.ddof) > 0.0:  # else log_pdf = -inf: skipped
                m = col[att]
                mu[k, m], variance[k, m], valid[k, m] = var.mean._mean, var._S / (var.mean.n - var.ddof), True
    # Gaussian.log_pdf per (row, class, feature), summed over features: the naive-Bayes vote
    terms = (X[:, None, :] - mu) ** 2 / (-2.0 * variance) - _HALF_LOG_TAU - 0.5 * np.log(variance)
    votes = prior + np.where(valid, terms, 0.0).sum(axis=2)
    max_ll = votes.max(axis=1, keepdims=True)
    proba = np.exp(votes - (max_ll + np.log(np.exp(votes - max_ll).sum(axis=1, keepdims=True))))
    for k, c in enumerate(labels):
        j = cidx.get(int(c))
        if j is not None:
            out[:, j] = proba[:, k]
    return out


def _ht_predict_proba_batch(root: Any, tree: Any, X: np.ndarray, feature_names: Sequence[str], classes: Sequence[int]) -> np.ndarray:
    """All rows routed down the tree together (``x[f] <= threshold`` goes left), then each leaf's
    probabilities computed on its rows as arrays: the same numbers as ``predict_proba_one`` row by row
    (to rounding), about 20 times faster on a window."""
    col = {f: j for j, f in enumerate(feature_names)}
    out = np.zeros((len(X), len(classes)))
    stack = [(root, np.arange(len(X)))]
    while stack:
        node, idx = stack.pop()
        if idx.size == 0:
            continue
        if node.__class__.__name__ == "NumericBinaryBranch":
            left = X[idx, col[node.feature]] <= node.threshold
            stack.append((node.children[0], idx[left]))
            stack.append((node.children[1], idx[~left]))
        else:
            out[idx] = _leaf_proba(node, tree, X[idx], col, classes)
    return out


def predict_proba_rows(model: Any, X: np.ndarray, feature_names: Sequence[str], classes: Sequence[int]) -> np.ndarray:
    """``(n, C)`` probabilities of ``model`` on the rows of ``X`` (classes it has not seen get 0; a model
    that has seen nothing gives uniform probabilities). A river Hoeffding tree made of the node types it
    grows on numeric features is evaluated on the whole batch at once (``_ht_predict_proba_batch``)."""
    X = np.asarray(X, dtype=np.float64)
    plan = _ht_batch_plan(model)  # a row lacking a tested feature would take river's most-common path: per row
    if plan is not None and len(X) and set(feature_names) >= plan[1]:
        return _ht_predict_proba_batch(plan[0], model, X, feature_names, classes)
    out = np.zeros((len(X), len(classes)))
    col = {c: j for j, c in enumerate(classes)}
    for i, x in enumerate(_rows(X, feature_names)):
        p = model.predict_proba_one(x)
        if not p:
            out[i] = 1.0 / len(classes)
            continue
        for c, v in p.items():
            j = col.get(int(c))
            if j is not None:
                out[i, j] = v
    return out


def learn_rows(model: Any, X: np.ndarray, y: np.ndarray, feature_names: Sequence[str], w: float = 1.0) -> None:
    """``learn_one`` on every row of ``X`` in order, each with sample weight ``w``."""
    for x, label in zip(_rows(X, feature_names), np.asarray(y).tolist()):
        model.learn_one(x, int(label), w=w)


def structure_size(model: Any) -> int:
    """Node count of a tree learner (a change means the tree split: ficsum.md §3 "Evolution"), else 0."""
    return int(getattr(model, "n_nodes", 0) or 0)
