"""Feature statistics and the Fréchet distance between two Gaussians fitted to them.

    FID = |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2))

The hard term is Tr((S_a S_b)^(1/2)). pytorch-fid takes ``scipy.linalg.sqrtm`` of the 2048x2048
product (``method="sqrtm"``, kept to reproduce its numerics). We compute the same number exactly
from symmetric eigenvalues (``method="eigh"``, the default): for any factor S_a = F F^T,
S_a S_b = F (F^T S_b) has the same non-zero eigenvalues as the symmetric PSD matrix F^T S_b F, so

    Tr((S_a S_b)^(1/2)) = sum_i sqrt(lambda_i(F^T S_b F)).

With n <= 2048 samples the centred features are such a factor (F = X_c^T / sqrt(n - 1), rank n - 1)
and everything is an n x n problem; otherwise F is the Cholesky factor of S_a (eigh if singular). No
complex square roots, no ill-conditioned product, and faster than sqrtm (docs/decisions.md).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

__all__ = ["FeatureStats", "frechet_distance"]


@dataclass(eq=False)
class FeatureStats:
    """Running mean and covariance of feature rows, merged batch by batch (Chan et al.'s parallel
    update, float64), so memory is O(dim^2) however many images or blocks stream through.

    While ``count <= keep_rows_up_to`` (default: the feature dimension) the rows themselves are kept
    too: they are an exact low-rank factor of the covariance, which makes the Fréchet distance of
    small sets both exact and cheap."""

    dim: int
    keep_rows_up_to: Optional[int] = None
    count: int = 0
    mean: np.ndarray = field(default=None, repr=False)
    _m2: np.ndarray = field(default=None, repr=False)  # sum of outer products of centred rows
    _rows: Optional[list] = field(default_factory=list, repr=False)
    count_known: bool = True  # False for pytorch-fid statistics files, which store no count

    def __post_init__(self):
        if self.mean is None:
            self.mean = np.zeros(self.dim)
        if self._m2 is None:
            self._m2 = np.zeros((self.dim, self.dim))
        if self.keep_rows_up_to is None:
            self.keep_rows_up_to = self.dim

    def update(self, features) -> None:
        """Add rows ``[n, dim]`` (numpy or torch, any float dtype)."""
        x = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features [n, {self.dim}], got {list(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        delta = batch_mean - self.mean
        total = self.count + n
        self._m2 += centred.T @ centred + np.outer(delta, delta) * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total
        if self._rows is not None:
            self._rows.append(x)
            if self.count > self.keep_rows_up_to:
                self._rows = None  # a full-rank covariance from here on: the rows no longer help

    @property
    def cov(self) -> np.ndarray:
        """Unbiased sample covariance (as ``np.cov(rows, rowvar=False)``)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature rows, got {self.count}")
        return self._m2 / (self.count - 1)

    def factor(self) -> np.ndarray:
        """F with F F^T = cov: ``[dim, count]`` from the kept rows, else ``[dim, dim]``: Cholesky
        (cheap), or from eigh when the covariance is singular (e.g. duplicated images)."""
        if self._rows is not None:
            rows = np.concatenate(self._rows)
            return (rows - self.mean).T / np.sqrt(self.count - 1)
        try:
            return np.linalg.cholesky(self.cov)
        except np.linalg.LinAlgError:
            eigvals, eigvecs = np.linalg.eigh(self.cov)
            return eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))

    @property
    def rank_bound(self) -> int:
        return min(self.dim, self.count - 1) if self._rows is not None else self.dim

    # Files: pytorch-fid's statistics files hold ``mu`` and ``sigma``; we add ``count`` and, while
    # they are kept, the ``rows`` (so a reloaded small set keeps its exact low-rank factor).
    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        out = {f"{prefix}mu": self.mean, f"{prefix}sigma": self.cov, f"{prefix}count": np.int64(self.count)}
        if self._rows is not None:
            out[f"{prefix}rows"] = np.concatenate(self._rows)
        return out

    @classmethod
    def from_arrays(cls, data, prefix: str = "", source: str = "statistics") -> "FeatureStats":
        """Inverse of ``arrays`` (``data``: an opened .npz or a dict); pytorch-fid files work too."""
        if f"{prefix}rows" in data:
            rows = np.asarray(data[f"{prefix}rows"], dtype=np.float64)
            stats = cls(dim=rows.shape[1])
            stats.update(rows)
            return stats
        if f"{prefix}mu" not in data or f"{prefix}sigma" not in data:
            raise ValueError(f"{source}: needs arrays '{prefix}mu' and '{prefix}sigma' (pytorch-fid format)")
        mean = np.asarray(data[f"{prefix}mu"], dtype=np.float64)
        sigma = np.asarray(data[f"{prefix}sigma"], dtype=np.float64)
        if mean.ndim != 1 or sigma.shape != (mean.size, mean.size):
            raise ValueError(f"{source}: {prefix}mu {list(mean.shape)} and {prefix}sigma {list(sigma.shape)} "
                             f"do not match")
        # the count is unknown in pytorch-fid files; any count >= 2 reproduces sigma exactly
        known = f"{prefix}count" in data
        count = max(int(data[f"{prefix}count"]) if known else 0, 2)
        return cls(dim=mean.size, count=count, mean=mean, _m2=sigma * (count - 1), _rows=None, count_known=known)

    def save(self, path: Union[str, Path]) -> None:
        np.savez(path, **self.arrays())

    @classmethod
    def load(cls, path: Union[str, Path], prefix: str = "") -> "FeatureStats":
        with np.load(path) as data:
            return cls.from_arrays(data, prefix, source=str(path))


def _trace_sqrt_product_eigh(a: FeatureStats, b: FeatureStats) -> float:
    # factor the lower-rank side: the eigenproblem is (rank x rank)
    if b.rank_bound < a.rank_bound:
        a, b = b, a
    f = a.factor()  # [dim, r]
    if b._rows is not None:
        g = b.factor()  # [dim, r_b]: F^T S_b F = (F^T G)(F^T G)^T, eigenvalues = singular values^2
        return float(np.linalg.svd(f.T @ g, compute_uv=False).sum())
    eigvals = np.linalg.eigvalsh(f.T @ b.cov @ f)  # [r]
    return float(np.sqrt(np.clip(eigvals, 0.0, None)).sum())


def _trace_sqrt_product_sqrtm(sigma_a: np.ndarray, sigma_b: np.ndarray, eps: float) -> float:
    """pytorch-fid's way: scipy sqrtm of the product, with its usual stabilisation."""
    from scipy import linalg

    covmean = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        # singular product (fewer samples than dimensions): add eps to the diagonals and retry
        warnings.warn(f"FID: sqrtm of the covariance product is singular; adding {eps} to the diagonals")
        offset = np.eye(sigma_a.shape[0]) * eps
        covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        # round-off gives tiny imaginary parts; a large one means the result is meaningless
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > 1e-3:
            raise ValueError(f"FID: sqrtm returned a significant imaginary component ({imag:.3g})")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(a: FeatureStats, b: FeatureStats, method: str = "eigh", eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (see the module docstring)."""
    if a.dim != b.dim:
        raise ValueError(f"feature dimensions differ: {a.dim} vs {b.dim}")
    for name, stats in (("first", a), ("second", b)):
        if stats.count < 2:
            raise ValueError(f"the {name} set has {stats.count} feature rows; FID needs at least 2")
    if method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(a, b)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(a.cov, b.cov, eps)
    else:
        raise ValueError(f"unknown FID method {method!r}; choose 'eigh' or 'sqrtm'")
    diff = a.mean - b.mean
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * tr_covmean)
