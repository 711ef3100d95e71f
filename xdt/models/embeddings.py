"""Compressing the teacher's word-embedding matrix to the student's embedding size by SVD (or PCA).

The student keeps the teacher's vocabulary (119,547 mBERT pieces), so its word embeddings dominate its size; the
paper starts them from the top-E singular directions of the teacher's matrix W [V, D]: ``W @ V_E = U_E * S_E``, the
best rank-E approximation of W expressed in E coordinates. With ``center=True`` the column means are removed
first (PCA, what the released code does with scikit-learn); the mean is then not part of the compressed rows.

The right singular vectors come from the D x D Gram matrix ``W^T W`` accumulated in float64 over row chunks: for a
[119547, 768] matrix this needs a few MB instead of a full SVD's [V, D] float64 copy, and float64 keeps the
squared condition number harmless.
"""

from __future__ import annotations

import torch

from xdt.errors import ConfigError

_CHUNK_ROWS = 16384


def svd_components(weight: torch.Tensor, k: int, *, center: bool = False,
                   key: str = "student.embedding_size") -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean [D], V_k [D, k])``: the column mean (zeros unless `center`) and the top-k right singular vectors.

    Columns of V_k are orthonormal, ordered by decreasing singular value, each with its largest-magnitude entry
    positive so the result does not depend on the eigensolver's sign choice.
    """
    mean, basis = _components64(weight, k, center, key)
    return mean.to(weight.dtype), basis.to(weight.dtype)


def _components64(weight: torch.Tensor, k: int, center: bool, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D embedding matrix, got shape {tuple(weight.shape)}")
    rows, dim = weight.shape
    if not 0 < k <= min(rows, dim):
        raise ConfigError(f"{key}: expected 1..{min(rows, dim)} (the teacher's embedding width {dim}), got {k}")
    mean = torch.zeros(dim, dtype=torch.float64, device=weight.device)
    if center:
        for start in range(0, rows, _CHUNK_ROWS):
            mean += weight[start:start + _CHUNK_ROWS].double().sum(0)
        mean /= rows
    gram = torch.zeros(dim, dim, dtype=torch.float64, device=weight.device)
    for start in range(0, rows, _CHUNK_ROWS):
        block = weight[start:start + _CHUNK_ROWS].double() - mean
        gram += block.T @ block
    _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues = squared singular values
    top = vectors[:, -k:].flip(-1)
    pivot = top.abs().argmax(0)
    signs = torch.sign(top[pivot, torch.arange(k, device=top.device)])
    return mean, top * signs


def svd_compress(weight: torch.Tensor, k: int, *, center: bool = False,
                 key: str = "student.embedding_size") -> torch.Tensor:
    """``[V, k]`` rows of W in the top-k singular basis: ``(W - mean) @ V_k`` (= ``U_k * S_k`` when not centred).

    ``svd_compress(W, k) @ V_k.T (+ mean)`` is the best rank-k approximation of W; the residual is orthogonal to
    every kept direction.
    """
    mean, basis = _components64(weight, k, center, key)
    out = torch.empty(weight.shape[0], k, dtype=weight.dtype, device=weight.device)
    for start in range(0, weight.shape[0], _CHUNK_ROWS):
        block = weight[start:start + _CHUNK_ROWS].double() - mean
        out[start:start + _CHUNK_ROWS] = (block @ basis).to(weight.dtype)
    return out
