"""Log-space algebra of tensor rings with non-negative cores.

A ring of L positions has cores Q_k of shape (N, m, m). Position k carries a
discrete state s_k and an *emission* log-weight vector e_k (length N):

    log  sum_s  Tr( prod_k  Q_k[s_k] ) * prod_k exp(e_k[s_k])
  = log  Tr( prod_k  A_k ),       A_k = sum_s exp(e_k[s]) Q_k[s].

Latent dimensions use Gaussian log-densities as emissions; a marginalised
position uses zeros (A_k = sum_s Q_k[s]); a discrete attribute uses 0 on its
observed value and -inf elsewhere. Everything else in the package builds on
the three functions here.

Why this is exact in float32: cores are stored as logs. Each slice Q_k[s] is
divided by its own max entry and that log-max joins the emission log-weight;
the largest log-weight per position is pulled out as an offset, so every
weighted core has a max entry >= 1 and no term underflows to zero because a
code is far from the components. Products of non-negative matrices have no
cancellation, and each pairwise product is rescaled by its max with the log
accumulated. All offsets are detached: the identity holds for any constant,
so gradients are exact and cheaper.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def split_log_cores(log_cores: Tensor) -> tuple[Tensor, Tensor]:
    """Split log-cores (L, N, m, m) into max-normalised cores and log slice maxima.

    Returns ``(cores, log_max)`` with ``cores`` in [0, 1] (max entry 1 per
    slice) and ``log_max`` of shape (L, N), so that
    ``exp(log_cores) == cores * exp(log_max)[..., None, None]``.
    """
    log_max = log_cores.detach().amax(dim=(-2, -1))
    log_max = torch.where(torch.isfinite(log_max), log_max, torch.zeros_like(log_max))
    return torch.exp(log_cores - log_max[..., None, None]), log_max


def weighted_cores(cores: Tensor, log_max: Tensor, log_emission: Tensor) -> tuple[Tensor, Tensor]:
    """Form A_k = sum_s exp(e_k[s]) Q_k[s] for a batch, as one batched matmul.

    Args:
        cores: (L, N, m, m) max-normalised cores from :func:`split_log_cores`.
        log_max: (L, N) their log slice maxima.
        log_emission: (B, L, N) emission log-weights (``-inf`` allowed, but not
            for every state of a position).

    Returns:
        ``(mats, log_scale)``: (L, B, m, m) matrices and (L, B) log-scales with
        ``A_k[b] = mats[k, b] * exp(log_scale[k, b])``.
    """
    length, n_states, m, _ = cores.shape
    log_w = log_emission + log_max  # (B, L, N)
    offset = log_w.detach().amax(dim=-1)  # (B, L)
    w = torch.exp(log_w - offset[..., None])
    mats = torch.bmm(w.transpose(0, 1), cores.reshape(length, n_states, m * m))
    return mats.view(length, -1, m, m), offset.transpose(0, 1)


def _rescale(mats: Tensor, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """Divide each matrix by its max entry; return the matrices and the log maxima.

    ``inplace`` is for fresh matmul outputs, which autograd does not keep.
    """
    scale = mats.detach().amax(dim=(-2, -1))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))[..., None, None]
    mats = mats.div_(scale) if inplace else mats / scale
    return mats, torch.log(scale[..., 0, 0])


@functools.lru_cache(maxsize=None)
def tree_plan(length: int) -> tuple[tuple[int, ...], tuple[int | None, ...]]:
    """Memory order of the ring positions for the pairwise tree, and each level's odd-carry slot.

    Stored in this order (bit reversal when ``length`` is a power of two), every
    level multiplies the first half by the second half -- contiguous slices, no
    copies -- and its products come out in the order the next level needs. On
    an odd level the leftover matrix is multiplied into the last pair, whose
    product sits at the returned slot.
    """
    if length == 1:
        return (0,), ()
    half = length // 2
    order, carries = tree_plan(half)
    memory = [2 * i for i in order] + [2 * i + 1 for i in order] + ([length - 1] if length % 2 else [])
    carry = order.index(half - 1) if length % 2 else None
    return tuple(memory), (carry, *carries)


def log_trace_chain(mats: Tensor, log_scale: Tensor, in_tree_order: bool = False) -> Tensor:
    """log Tr(mats[0] @ mats[1] @ ... @ mats[L-1]) + sum of log-scales, per batch.

    A pairwise tree reduction: depth log2 L of batched matmuls instead of L
    sequential ones, each level rescaled so nothing over- or underflows.

    Args:
        mats: (L, B, m, m) non-negative matrices with entries of order one
            (as :func:`weighted_cores` makes them), so that one pairwise
            product cannot overflow before it is rescaled.
        log_scale: (L, B) log of the factor each matrix stands for.
        in_tree_order: the positions are already stored in :func:`tree_plan`
            order (cheapest: permute the small inputs, not the matrices).

    Returns:
        (B,) log-traces. ``-inf`` only where the product is exactly zero.
    """
    order, carries = tree_plan(mats.shape[0])
    if not in_tree_order:
        index = torch.tensor(order, device=mats.device)
        mats = mats.index_select(0, index)
    total = log_scale.sum(0)
    for carry in carries:
        half = mats.shape[0] // 2
        # split, not slicing: its backward is one cat instead of zero-filled copies
        left, right, rest = mats.split([half, half, mats.shape[0] - 2 * half])
        prod = torch.matmul(left, right)
        if carry is not None:
            last = torch.matmul(prod[carry], rest[0])[None]
            prod = torch.cat([prod[:carry], last, prod[carry + 1 :]])
        mats, log_s = _rescale(prod, inplace=True)
        total = total + log_s.sum(0)
    trace = torch.diagonal(mats[0], dim1=-2, dim2=-1).sum(-1)
    return torch.log(trace) + total


def log_ring_value(cores: Tensor, log_max: Tensor, log_emission: Tensor) -> Tensor:
    """log sum_s Tr(prod_k Q_k[s_k]) prod_k exp(e_k[s_k]) for each batch row: (B,).

    The small inputs are permuted into tree order so the big weighted cores are
    born in it. On CPU the batch goes in chunks of a few MiB: the chain then
    stays in cache and allocations are reused instead of page-faulted afresh.
    """
    index = torch.tensor(tree_plan(cores.shape[0])[0], device=cores.device)
    cores, log_max = cores.index_select(0, index), log_max.index_select(0, index)
    log_emission = log_emission.index_select(1, index)
    rows = _chunk_rows(cores) if cores.device.type == "cpu" else log_emission.shape[0]
    return torch.cat(
        [
            log_trace_chain(*weighted_cores(cores, log_max, chunk), in_tree_order=True)
            for chunk in log_emission.split(rows)
        ]
    )


def log_ring_ratio(cores: Tensor, log_max: Tensor, log_emission: Tensor, log_emission_ref: Tensor) -> Tensor:
    """log_ring_value(log_emission) - log_ring_value(reference row), per row: (B * G,).

    For rings whose emissions share most positions (p(z, y) over p(z)), each
    row is scaled by its reference's per-position offsets before the chain, so
    their large common part (about -1e7 for codes far from every component)
    cancels exactly instead of in float32 arithmetic.

    Args:
        cores, log_max: from :func:`split_log_cores`.
        log_emission: (B * G, L, N), G consecutive rows per reference row.
        log_emission_ref: (B, L, N); each reference chain is computed once.
    """
    group, rest = divmod(log_emission.shape[0], log_emission_ref.shape[0])
    if rest or group == 0:
        raise ValueError(
            f"log_emission rows ({log_emission.shape[0]}) must be a multiple of the "
            f"reference rows ({log_emission_ref.shape[0]})"
        )
    index = torch.tensor(tree_plan(cores.shape[0])[0], device=cores.device)
    cores, log_max = cores.index_select(0, index), log_max.index_select(0, index)
    num, ref = (e.index_select(1, index) for e in (log_emission, log_emission_ref))
    rows = max(1, _chunk_rows(cores) // (group + 1)) if cores.device.type == "cpu" else ref.shape[0]
    chunks = zip(num.split(rows * group), ref.split(rows))
    return torch.cat([_log_ratio_chunk(cores, log_max, a, b, group) for a, b in chunks])


def _log_ratio_chunk(cores: Tensor, log_max: Tensor, num: Tensor, ref: Tensor, group: int) -> Tensor:
    mats, log_scale = weighted_cores(cores, log_max, torch.cat([num, ref]))
    shift = log_scale[:, num.shape[0] :]  # detached, like every offset
    shift = torch.cat([shift.repeat_interleave(group, dim=1), shift], dim=1)
    value = log_trace_chain(mats, log_scale - shift, in_tree_order=True)
    return value[: num.shape[0]] - value[num.shape[0] :].repeat_interleave(group)


CPU_CHUNK_ELEMENTS = 3 << 20  # ~12 MiB of float32 weighted cores per chunk (measured best)


def _chunk_rows(cores: Tensor) -> int:
    length, _, m, _ = cores.shape
    return max(1, CPU_CHUNK_ELEMENTS // (length * m * m))


def _suffix_products(mats: Tensor) -> Tensor:
    """S[k] = mats[k] @ ... @ mats[L-1] (rescaled), with S[L] = I: (L+1, B, m, m)."""
    length, batch, m, _ = mats.shape
    eye = torch.eye(m, dtype=mats.dtype, device=mats.device).expand(batch, m, m)
    suffix = [eye]
    for k in range(length - 1, -1, -1):
        suffix.append(_rescale(torch.matmul(mats[k], suffix[-1]))[0])
    return torch.stack(suffix[::-1])


def _state_logits(prefix: Tensor, suffix: Tensor, core: Tensor, log_max: Tensor) -> Tensor:
    """log Tr(prefix @ Q[s] @ suffix) for every state s, up to a per-row constant: (B, N).

    ``suffix`` is (B, m, m) or, when it does not depend on the batch, (1, m, m);
    in that case Q[s] @ suffix is formed once instead of once per row.
    """
    n_states, m, _ = core.shape
    if suffix.shape[0] == 1:
        right = torch.matmul(core, suffix[0])  # (N, m, m): Tr(P R) = <P, R^T>
        inner = prefix.reshape(-1, m * m) @ right.transpose(-1, -2).reshape(n_states, m * m).T
    else:
        u = torch.matmul(suffix, prefix)  # Tr(P Q S) = <Q, (S P)^T>
        inner = u.transpose(-1, -2).reshape(-1, m * m) @ core.reshape(n_states, m * m).T
    return torch.log(inner) + log_max


def sample_states(
    cores: Tensor,
    log_max: Tensor,
    log_emission: Tensor,
    resample: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw the states of the ``resample`` positions from p(s_R | evidence) by the chain rule.

    Args:
        cores, log_max: from :func:`split_log_cores`, (L, N, m, m) and (L, N).
        log_emission: (B, L, N) evidence on every position; resampled positions
            should carry zeros (no evidence). A batch of 1 is shared by all rows.
        resample: (B, L) bool, the positions to sample, visited in ring order.
        generator: optional torch generator for reproducible draws.

    Returns:
        (B, L) long states; entries at positions not resampled are 0.

    Cost: O(L) (m x m) matrix products per row; the suffix products are
    computed once per call, for the whole batch when the evidence is shared.
    """
    batch, length = resample.shape
    mats, _ = weighted_cores(cores, log_max, log_emission)  # (L, B or 1, m, m)
    suffix = _suffix_products(mats)
    m = cores.shape[-1]
    prefix = torch.eye(m, dtype=cores.dtype, device=cores.device).expand(batch, m, m)
    states = torch.zeros(batch, length, dtype=torch.long, device=cores.device)
    for k in range(length):
        pick = resample[:, k]
        step = mats[k].expand(batch, m, m)
        if pick.any():
            logits = _state_logits(prefix, suffix[k + 1], cores[k], log_max[k])
            probs = torch.softmax(logits, dim=-1)
            drawn = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            states[:, k] = torch.where(pick, drawn, states[:, k])
            step = torch.where(pick[:, None, None], cores[k][drawn], step)
        prefix = _rescale(torch.matmul(prefix, step))[0]
    return states
