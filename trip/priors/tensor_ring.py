"""Log-space algebra of tensor rings with non-negative cores.

A ring of L positions has cores Q_k of shape (N, m, m). Position k carries a
discrete state s_k and an *emission* log-weight vector e_k (length N):

    log  sum_s  Tr( prod_k  Q_k[s_k] ) * prod_k exp(e_k[s_k])
  = log  Tr( prod_k  A_k ),       A_k = sum_s exp(e_k[s]) Q_k[s].

Latent dimensions use Gaussian log-densities as emissions; a marginalised
position uses zeros (A_k = sum_s Q_k[s]); a discrete attribute uses 0 on its
observed value and -inf elsewhere. Everything else in the package builds on
the functions here: :func:`log_ring_value` / :func:`log_ring_ratio` (densities)
and :func:`sampling_plan` / :func:`draw_states` (exact sampling).

Why this is exact in float32: cores are stored as logs. Each slice Q_k[s] is
divided by its own max entry and that log-max joins the emission log-weight;
the largest log-weight per position is pulled out as an offset, so every
weighted core has a max entry >= 1 and no term underflows to zero because a
code is far from the components (weights below 1e-37 of the largest are
flushed to exact zeros: exp is 15x slower on subnormal results). Products of
non-negative matrices have no cancellation; a level of pairwise products is
rescaled by entry sums, or left as it is when every sum is in [1, 2^40] (then
the next products can neither overflow nor underflow more than rescaled ones
would), with the logs accumulated. All offsets are detached: the identity holds
for any constant, so gradients are exact and cheaper.

Speed (issue 13; the README's benchmark section has the profiles): the chain
is bound by batched m x m matmuls (80-88% of a forward), so the rest is kept
off it:

* the chain of products is one autograd node (:class:`_TraceChain`) with a
  hand-written backward -- the same two matmuls per product autograd would run,
  written straight into one gradient buffer per tree level instead of through
  split/cat/scale nodes;
* the first level's entry sums are known in closed form from the weights
  (:func:`_balance_first_level`), so it needs no sum or rescaling pass, and
  later levels are rescaled only when their sums leave the safe range;
* without autograd on CPU, the weighted cores are formed a few pairs at a time
  and multiplied at once (:func:`_fused_first_level`) so they never leave the
  cache, and every level writes into workspaces reused across batch chunks;
* emissions are built position-major in tree order from small per-position
  tensors (:func:`log_ring_value_tree`), and the normaliser is one more row of
  the same chain.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor


def split_log_cores(log_cores: Tensor) -> tuple[Tensor, Tensor]:
    """Split log-cores (L, N, m, m) into max-normalised cores and log slice maxima.

    Returns ``(cores, log_max)`` with ``cores`` in [0, 1] (max entry 1 per
    slice) and ``log_max`` of shape (L, N), so that
    ``exp(log_cores) == cores * exp(log_max)[..., None, None]``.
    """
    log_max = torch.nan_to_num(log_cores.detach().amax(dim=(-2, -1)), nan=0.0, posinf=0.0, neginf=0.0)
    return torch.exp(log_cores - log_max[..., None, None]), log_max


def _emission_weights(log_max: Tensor, log_emission_t: Tensor) -> tuple[Tensor, Tensor]:
    """exp(e + log_max - offset) and the detached offsets, position-major.

    Args:
        log_max: (L, N).
        log_emission_t: (L, B, N) emission log-weights, position-major.

    Returns:
        ``(w, offset)``: (L, B, N) contiguous weights with max 1 per (k, b), and
        (L, B) offsets.
    """
    return _exp_with_offset(log_emission_t + log_max[:, None, :])


def _exp_with_offset(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """exp(log_w - offset) with offset = the detached max over the last dim: weights (..., N) and offsets (...)."""
    offset = log_w.detach().amax(dim=-1)
    # Weights below e times the smallest normal number are flushed to exactly 0 (what
    # they are, relative to the max weight 1, to 1e-37): exp with denormal results is
    # ~15x slower, and exp(log(tiny)) itself rounds below tiny.
    shifted = torch.sub(log_w, offset[..., None])
    floor = math.log(torch.finfo(shifted.dtype).tiny) + 1.0
    flush = shifted.detach() < floor
    if shifted.requires_grad:
        return torch.exp(shifted.clamp_min(floor)).masked_fill(flush, 0.0), offset
    return shifted.clamp_min_(floor).exp_().masked_fill_(flush, 0.0), offset


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
    w, offset = _emission_weights(log_max, log_emission.transpose(0, 1))
    mats = torch.bmm(w, cores.reshape(length, n_states, m * m))
    return mats.view(length, -1, m, m), offset


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


_INDEX_CACHE: dict = {}


def cached_index(values: tuple[int, ...], device: torch.device) -> Tensor:
    """A constant long tensor, built once per (values, device) instead of from a list per call."""
    key = (values, str(device))
    index = _INDEX_CACHE.get(key)
    if index is None:
        index = _INDEX_CACHE[key] = torch.tensor(values, dtype=torch.long, device=device)
    return index


def tree_index(length: int, device: torch.device) -> Tensor:
    """The ring positions in :func:`tree_plan` memory order, as a cached long tensor."""
    return cached_index(tree_plan(length)[0], device)


_tree_index = tree_index


# -- the chain of products --------------------------------------------------------------
class _Workspace:
    """Buffers reused by the forward-only tree across the batch chunks of one call."""

    def __init__(self):
        self.buffers: dict[int, Tensor] = {}

    def get(self, slot: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
        numel = 1
        for size in shape:
            numel *= size
        buf = self.buffers.get(slot)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.buffers[slot] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf[:numel].view(shape)


# A level's products are left as they are when every one has an entry sum in [1, 2^40]:
# the next products then have entries <= m 2^80 (no overflow) and at least the magnitude
# they would have from inputs normalised to sum 1 (no new underflow). Otherwise (and on
# GPUs, where the check would wait for the device, and on small levels, where the check
# costs more than it saves) each product is multiplied by m^2 / (its entry sum).
_KEEP_RANGE = (1.0, 2.0**40)
_CHECK_ELEMENTS = 1 << 18
_WIDE = (torch.float32, torch.float64)  # dtypes with room for entries up to 2^80 and 2^-119 rescaling


def _normalise(prod: Tensor, rows: int, m: int) -> Tensor | None:
    """Rescale the level ``prod`` (L_r, rows, m, m) in place; the factors (L_r, rows), or None if kept."""
    sums = prod.view(-1, rows, m * m).sum(dim=-1)
    if prod.device.type == "cpu" and prod.numel() >= _CHECK_ELEMENTS and prod.dtype in _WIDE:
        low, high = torch.aminmax(sums)
        if _KEEP_RANGE[0] <= low.item() and high.item() <= _KEEP_RANGE[1]:
            return None
    target = float(m * m)
    # A zero product (impossible evidence) stays zero with a finite factor: its log-trace is -inf.
    factor = torch.div(target, sums.clamp_min_(target * torch.finfo(sums.dtype).tiny))
    prod.mul_(factor[..., None, None])
    return factor


def _tree_forward(
    mats: Tensor,
    keep: bool,
    workspace: _Workspace | None = None,
    balanced: bool = False,
    carries: tuple[int | None, ...] | None = None,
):
    """Pairwise products of ``mats`` (L, b, m, m), stored in tree order, kept in range.

    Returns ``(levels, scales, trace)``: ``levels[0] is mats`` and ``levels[r]``
    the (rescaled) products of level r (kept only if ``keep``), ``scales[r]``
    (L_r, b) the factors they were multiplied by (None: left as they were), and
    ``trace`` (b,) the trace of the last, single product. ``carries``: the
    levels' odd-carry slots when ``mats`` are a later level of a longer ring.
    """
    length, rows, m, _ = mats.shape
    levels, scales = [mats], []
    x = mats
    for r, carry in enumerate(tree_plan(length)[1] if carries is None else carries):
        half = x.shape[0] // 2
        if workspace is None:
            prod = torch.matmul(x[:half], x[half : 2 * half])
        else:  # two ping-pong buffers: a level only reads the one before it
            prod = torch.matmul(x[:half], x[half : 2 * half], out=workspace.get(r % 2, (half, rows, m, m), x))
        if carry is not None:
            prod[carry] = torch.matmul(prod[carry], x[2 * half])
        scales.append(None if balanced and r == 0 else _normalise(prod, rows, m))
        if keep:
            levels.append(prod)
        x = prod
    trace = torch.diagonal(x[0], dim1=-2, dim2=-1).sum(-1)
    return levels, scales, trace


def _chain_total(trace: Tensor, scales: list[Tensor | None], log_scale: Tensor) -> Tensor:
    factors = [f for f in scales if f is not None]
    if not factors:
        return torch.log(trace) + log_scale.sum(0)
    return (torch.log(trace) - torch.log(torch.cat(factors)).sum(0)) + log_scale.sum(0)


class _TraceChain(torch.autograd.Function):
    """log Tr(prod_k mats[k]) + sum log_scale, with the products' backward written by hand.

    Per product P = (L R) c (c a detached constant, or 1): dL = (G c) R^T and
    dR = L^T (G c), written straight into one gradient buffer per level;
    autograd would add a split backward (a full copy) and a scaling node per
    level. The offsets are constants (detached) as in the forward-only path.
    """

    @staticmethod
    def forward(ctx, mats: Tensor, log_scale: Tensor, balanced: bool = False) -> Tensor:
        levels, scales, trace = _tree_forward(mats, keep=True, balanced=balanced)
        kept = [f for f in scales if f is not None]
        ctx.save_for_backward(*levels, *kept, trace)
        ctx.scaled = [f is not None for f in scales]
        return _chain_total(trace, scales, log_scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        saved = ctx.saved_tensors
        depth, scaled = len(ctx.scaled), ctx.scaled
        levels, factors, trace = saved[: depth + 1], iter(saved[depth + 1 : -1]), saved[-1]
        scales = [next(factors) if s else None for s in scaled]
        grad_mats = None
        if ctx.needs_input_grad[0]:
            m = levels[0].shape[-1]
            eye = torch.eye(m, dtype=trace.dtype, device=trace.device)
            g = eye * (grad / trace)[None, :, None, None]  # d log Tr(X) / dX = I / Tr(X)
            carries = tree_plan(levels[0].shape[0])[1]
            for r in reversed(range(depth)):
                x, carry = levels[r], carries[r]
                half = x.shape[0] // 2
                left, right = x[:half], x[half : 2 * half]
                h = g if scales[r] is None else g.mul_(scales[r][..., None, None])
                gx = torch.empty_like(x)
                if carry is not None:  # P[carry] = (left[c] right[c]) x[2 half] c
                    rest = x[2 * half]
                    torch.matmul(torch.matmul(left[carry], right[carry]).mT, h[carry], out=gx[2 * half])
                    h[carry] = torch.matmul(h[carry], rest.mT)
                torch.matmul(h, right.mT, out=gx[:half])
                torch.matmul(left.mT, h, out=gx[half : 2 * half])
                g = gx
            grad_mats = g
        grad_scale = grad[None].expand(levels[0].shape[0], -1) if ctx.needs_input_grad[1] else None
        return grad_mats, grad_scale, None


def _chain_value(
    mats: Tensor, log_scale: Tensor, workspace: _Workspace | None = None, balanced: bool = False
) -> Tensor:
    """log Tr of the tree-ordered chain ``mats`` (L, b, m, m) plus the summed log-scales: (b,).

    ``balanced``: the first-level products are known to have entry sums in range
    (:func:`_balance_first_level`) and are not rescaled.
    """
    if torch.is_grad_enabled() and (mats.requires_grad or log_scale.requires_grad):
        return _TraceChain.apply(mats, log_scale, balanced)
    _, scales, trace = _tree_forward(mats, keep=False, workspace=workspace, balanced=balanced)
    return _chain_total(trace, scales, log_scale)


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
    if not in_tree_order:
        index = _tree_index(mats.shape[0], mats.device)
        mats, log_scale = mats.index_select(0, index), log_scale.index_select(0, index)
    return _chain_value(mats, log_scale)


CPU_CHUNK_ELEMENTS = 8 << 20  # ~32 MiB of float32 weighted cores per chunk (measured best, 1-2 threads)


def _chunk_rows(length: int, m: int, device: torch.device, total: int) -> int:
    if device.type != "cpu":
        return max(1, total)
    return max(1, CPU_CHUNK_ELEMENTS // (length * m * m))


def _ring_inputs(cores: Tensor, log_max: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cores as (L, N, m*m), log-maxima and the permutation, all in tree order."""
    length, n_states, m, _ = cores.shape
    index = _tree_index(length, cores.device)
    return cores.index_select(0, index).reshape(length, n_states, m * m), log_max.index_select(0, index), index


def _balance_first_level(cores: Tensor, w: Tensor, log_scale: Tensor, m: int):
    """Scale the weights so that every first-level product has an entry sum within sqrt(2) of m^2.

    The entry sum of A_l A_r (l, r a first-level pair) is colsum(A_l) . rowsum(A_r)
    = w_l^T G w_r with G[s, t] = colsum(Q_l[s]) . rowsum(Q_r[t]), an N x N matrix:
    O(B N^2) per pair instead of a pass over the (B, m, m) products. The left
    weights are multiplied by a power of two (exact) and the offsets take its log,
    so the first level needs neither a sum nor a rescaling pass. Returns
    ``(w, log_scale, balanced)``; rings whose first level has an odd carry, small
    problems and narrow dtypes are returned unchanged (``balanced`` False).
    """
    length, n_states, _ = cores.shape
    half = length // 2
    if length < 2 or length % 2 or half * w.shape[1] * m * m < _CHECK_ELEMENTS or w.dtype not in _WIDE:
        return w, log_scale, False  # odd carry, or too small for the pass it saves to matter
    q = cores.detach().view(length, n_states, m, m)
    gram = torch.bmm(q[:half].sum(-2), q[half:].sum(-1).mT)  # (half, N, N)
    wd = w.detach()
    sums = (torch.bmm(wd[:half], gram) * wd[half:]).sum(-1)  # (half, B)
    info = torch.finfo(w.dtype)
    cap = math.floor(math.log2(info.max)) - 8  # w 2^k stays finite; a zero product stays zero
    exponent = torch.log2(float(m * m) / sums.clamp_min(info.tiny)).round_().clamp_(-cap, cap)
    factor = torch.exp2(exponent)
    shift = torch.cat([exponent * math.log(2.0), exponent.new_zeros(length - half, exponent.shape[1])])
    if w.requires_grad:
        w = torch.cat([w[:half] * factor[..., None], w[half:]])
    else:
        w[:half].mul_(factor[..., None])
    return w, log_scale - shift, True


CPU_FUSE_FIRST_LEVEL = True  # forward-only CPU path: first level fused with the weighted cores
CPU_GROUP_ELEMENTS = 1 << 20  # weighted cores formed at a time by the fused first level (4 MiB float32)


def _fused_first_level(cores: Tensor, w: Tensor, m: int, workspace: _Workspace) -> Tensor:
    """First-level products (L // 2, b, m, m) of the chain of ``w`` (L, b, N), without all weighted cores at once.

    Weighted cores are formed for a group of first-level pairs at a time and
    multiplied at once, so they stay in cache instead of being written out for
    the whole ring and read back (the forward-only CPU path). Odd carries are
    multiplied in as in :func:`_tree_forward`; nothing is rescaled here.
    """
    length, rows, _ = w.shape
    half = length // 2
    carry = tree_plan(length)[1][0]
    prod = workspace.get(3, (half, rows, m, m), w)
    group = max(1, min(half, CPU_GROUP_ELEMENTS // (2 * rows * m * m)))
    for j in range(0, half, group):
        k = min(j + group, half)
        shape = (k - j, rows, m * m)
        left = torch.bmm(w[j:k], cores[j:k], out=workspace.get(4, shape, w))
        right = torch.bmm(w[half + j : half + k], cores[half + j : half + k], out=workspace.get(5, shape, w))
        torch.matmul(left.view(k - j, rows, m, m), right.view(k - j, rows, m, m), out=prod[j:k])
    if carry is not None:
        rest = torch.bmm(w[2 * half :], cores[2 * half :]).view(rows, m, m)
        prod[carry] = torch.matmul(prod[carry], rest)
    return prod


def _values(cores: Tensor, w: Tensor, log_scale: Tensor, m: int, rows: int) -> Tensor:
    """Chain values of the batch columns of ``w`` (L, B, N) with ``cores`` (L, N, m*m), ``rows`` at a time."""
    length, batch, _ = w.shape
    grad = torch.is_grad_enabled() and (w.requires_grad or cores.requires_grad)
    workspace = None if grad else _Workspace()
    w, log_scale, balanced = _balance_first_level(cores, w, log_scale, m)
    fuse = CPU_FUSE_FIRST_LEVEL and workspace is not None and w.device.type == "cpu" and length >= 2
    out = []
    for start in range(0, batch, rows):
        stop = min(start + rows, batch)
        wc, scale = w[:, start:stop], log_scale[:, start:stop]
        if fuse:
            first = _fused_first_level(cores, wc, m, workspace)
            factor = None if balanced else _normalise(first, stop - start, m)
            later = tree_plan(length)[1][1:]
            _, scales, trace = _tree_forward(first, keep=False, workspace=workspace, carries=later)
            out.append(_chain_total(trace, [factor, *scales], scale))
            continue
        if workspace is None:
            mats = torch.bmm(wc, cores)
        else:
            mats = torch.bmm(wc, cores, out=workspace.get(2, (length, stop - start, m * m), w))
        mats = mats.view(length, stop - start, m, m)
        out.append(_chain_value(mats, scale, workspace, balanced))
    return out[0] if len(out) == 1 else torch.cat(out)


def log_ring_value(cores: Tensor, log_max: Tensor, log_emission: Tensor) -> Tensor:
    """log sum_s Tr(prod_k Q_k[s_k]) prod_k exp(e_k[s_k]) for each batch row: (B,).

    The small inputs are permuted into tree order so the big weighted cores are
    born in it. On CPU the batch goes in chunks of a few MiB: the chain then
    stays in cache and (without autograd) its buffers are reused.
    """
    length, _, m, _ = cores.shape
    cores, log_max, index = _ring_inputs(cores, log_max)
    w, offset = _emission_weights(log_max, log_emission.transpose(0, 1).index_select(0, index))
    return _values(cores, w, offset, m, _chunk_rows(length, m, cores.device, w.shape[1]))


def log_ring_value_tree(cores: Tensor, log_weights_t: Tensor) -> Tensor:
    """:func:`log_ring_value` from log-weights already laid out as the chain wants them: (R,).

    ``log_weights_t`` (L, R, N) holds e_k[s] + log_max[k, s] (``log_max`` from
    :func:`split_log_cores`) position-major, positions in :func:`tree_index` order;
    a caller that builds its emissions from small per-position tensors (the TRIP
    prior's Gaussians) saves the permutation, transposition and addition passes
    over the big (R, L, N) tensor.
    """
    length, _, m, _ = cores.shape
    cores = cores.index_select(0, tree_index(length, cores.device)).reshape(length, cores.shape[1], m * m)
    w, offset = _exp_with_offset(log_weights_t)
    return _values(cores, w, offset, m, _chunk_rows(length, m, cores.device, w.shape[1]))


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
    length, _, m, _ = cores.shape
    cores, log_max, index = _ring_inputs(cores, log_max)
    rows = max(1, _chunk_rows(length, m, cores.device, log_emission_ref.shape[0]) // (group + 1))
    out = []
    for num, ref in zip(log_emission.split(rows * group), log_emission_ref.split(rows)):
        both = torch.cat([num, ref]).transpose(0, 1).index_select(0, index)
        w, offset = _emission_weights(log_max, both)
        shift = offset[:, num.shape[0] :]  # detached, like every offset
        shift = torch.cat([shift.repeat_interleave(group, dim=1), shift], dim=1)
        value = _values(cores, w, offset - shift, m, w.shape[1])
        out.append(value[: num.shape[0]] - value[num.shape[0] :].repeat_interleave(group))
    return torch.cat(out)


# -- exact sampling ------------------------------------------------------------------------
#
# Expanding the trace over the bond indices b_0..b_{L-1} (b_L = b_0) between the
# cores turns the ring into a chain with a joint weight
#     prod_k  Q_k[s_k][b_k, b_{k+1}] exp(e_k[s_k]),
# whose marginal over the bonds is the ring's p(s | e). So an exact sample of
# (b, s) is drawn as: b_0 from the diagonal of the whole product; each next bond
# given the last from its row of the weighted core A_k times the backward message
# (the suffix product's column b_0); then every state s_k, independently, given
# its two bonds. The suffix products do not depend on the draws (nor, for shared
# evidence, on the batch: the plan is then computed once and can be cached), all
# the noise is drawn in one call and every choice is a Gumbel-max argmax, so a
# call makes no host synchronisation. The bond chain is sequential in k, but with
# the noise fixed each step is a map a -> b_{k+1} of the previous bond: GPUs compose
# those maps by a doubling scan (log2 L launches, O(L m^2) work per draw), CPUs
# walk the chain (three small ops per position, O(L m) work per draw). Both give
# the same draws for the same noise.
class SamplingPlan(NamedTuple):
    """What :func:`draw_states` needs from the ring and its evidence, independent of the draws.

    ``rows`` is 1 when the evidence is shared by the whole batch, else the batch size.
    """

    log_first: Tensor  # (rows, m): log p(b_0) up to a constant
    log_rows: Tensor  # (L - 1, rows, m, m): log A_k (up to a constant per matrix)
    log_suffix: Tensor  # (L - 1, rows, m, m): log S_{k+1}, each column up to a constant
    log_slices: Tensor  # (L * m * m, N): log Q_k[s][a, c] + log_max[k, s] at (k * m + a) * m + c
    log_emission: Tensor  # (rows, L, N)


def _suffixes_loop(mats: Tensor) -> tuple[Tensor, Tensor]:
    """S_k = mats[k] @ ... @ mats[L-1] for k = 0..L (S_L = I), every column scaled to max 1.

    Column j of S_k is the backward message of b_0 = j, all the bond draws need;
    column scaling commutes with multiplying on the left. Returns the suffixes
    (L+1, rows, m, m) and the log column scales of S_0 (rows, m).
    """
    length, rows, m, _ = mats.shape
    suffix = mats.new_empty(length + 1, rows, m, m)
    suffix[length] = torch.eye(m, dtype=mats.dtype, device=mats.device)
    tiny = torch.finfo(mats.dtype).tiny
    log_col = mats.new_zeros(rows, 1, m)
    for k in range(length - 1, -1, -1):
        prod = torch.matmul(mats[k], suffix[k + 1], out=suffix[k])
        scale = prod.amax(dim=-2, keepdim=True).clamp_min_(tiny)
        prod.div_(scale)
        log_col += scale.log()
    return suffix, log_col[:, 0]


def _suffixes_scan(mats: Tensor) -> Tensor:
    """S_k = mats[k] @ ... @ mats[L-1] for k = 0..L-1, each scaled to entry sum 1, by a doubling scan.

    log2 L batched products instead of L sequential ones (L log L matrix
    products in all): for shared evidence, where the matrices are few and the
    loop's cost is its length.
    """
    length, rows, m, _ = mats.shape
    tiny = torch.finfo(mats.dtype).tiny
    x = mats / mats.sum(dim=(-2, -1), keepdim=True).clamp_min_(tiny)
    step = 1
    while step < length:
        prod = torch.matmul(x[: length - step], x[step:])
        prod.div_(prod.sum(dim=(-2, -1), keepdim=True).clamp_min_(tiny))
        x = torch.cat([prod, x[length - step :]])
        step *= 2
    return x


@torch.no_grad()
def sampling_plan(cores: Tensor, log_max: Tensor, log_emission: Tensor) -> SamplingPlan:
    """Precompute exact sampling from p(s | evidence) for the ring ``cores`` (L, N, m, m).

    ``log_emission`` (rows, L, N): the evidence, one row shared by every draw or
    one per draw. Cost: L products of (rows, m, m) matrices (L log2 L for shared
    evidence, in log2 L batched steps).
    """
    length, n_states, m, _ = cores.shape
    rows = log_emission.shape[0]
    mats, _ = weighted_cores(cores, log_max, log_emission)  # (L, rows, m, m)
    if rows == 1:
        suffix = _suffixes_scan(mats)
        first = torch.diagonal(suffix[0], dim1=-2, dim2=-1).log()
        tail = suffix[1:]
        tail = tail / tail.amax(dim=-2, keepdim=True).clamp_min_(torch.finfo(mats.dtype).tiny)
    else:
        suffix, log_col = _suffixes_loop(mats)
        first = torch.diagonal(suffix[0], dim1=-2, dim2=-1).log() + log_col
        tail = suffix[1:length]
    slices = (cores.log() + log_max[..., None, None]).permute(0, 2, 3, 1).reshape(length * m * m, n_states)
    return SamplingPlan(first, mats[: length - 1].log(), tail.log(), slices, log_emission)


def _gumbel(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    u = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
    return u.log_().neg_().log_().neg_()  # -log(-log u); u = 0 gives -inf, never chosen


SCAN_ELEMENTS = 1 << 28  # GPUs compose the bond maps (L, B, m, m) by a scan up to this size


def _bond_chain(log_rows: Tensor, tail: Tensor, first: Tensor, scan: bool | None = None) -> Tensor:
    """Bonds b_1..b_{L-1} (L - 1, B): b_{k+1} = argmax_j log_rows[k, b_k, j] + tail[k, :, j].

    ``log_rows`` (L - 1, rows, m, m), rows 1 or B; ``tail`` (L - 1, B, m); ``first`` = b_0 (B,).
    ``scan``: compose the per-step maps (default: on GPUs, up to :data:`SCAN_ELEMENTS`)
    or walk the chain (default on CPU: argmax over m^2 candidates per (k, b) costs
    more there than the 3 small ops per position it saves).
    """
    steps, rows, m, _ = log_rows.shape
    batch = tail.shape[1]
    if scan is None:
        scan = tail.device.type != "cpu" and steps * batch * m * m <= SCAN_ELEMENTS
    if scan:
        # maps[k, b, a]: the next bond from a; composed by doubling so that maps[k] = b_0 -> b_{k+1}
        maps = (log_rows + tail[:, :, None, :]).argmax(dim=-1)  # (L - 1, B, m)
        step = 1
        while step < steps:
            maps = torch.cat([maps[:step], torch.gather(maps[step:], 2, maps[: steps - step])])
            step *= 2
        return torch.gather(maps, 2, first[None, :, None].expand(steps, batch, 1))[..., 0]
    flat = log_rows.reshape(steps, rows * m, m)
    offset = torch.arange(batch, device=first.device) * m if rows > 1 else None
    bond, bonds = first, []
    for k in range(steps):
        index = bond if offset is None else offset + bond
        bond = (flat[k].index_select(0, index) + tail[k]).argmax(-1)
        bonds.append(bond)
    return torch.stack(bonds)


@torch.no_grad()
def draw_states(
    plan: SamplingPlan, batch: int, resample: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Draw ``batch`` state vectors of the resampled positions from the plan's p(s | evidence).

    Args:
        plan: from :func:`sampling_plan`, with one evidence row or ``batch`` rows.
        resample: (batch, L) bool, the positions to report; ``None``: all of them.
        generator: optional torch generator for reproducible draws.

    Returns:
        (batch, L) long states; 0 at positions not resampled (those are summed
        out under their evidence).
    """
    rows, length, n_states = plan.log_emission.shape
    m = plan.log_first.shape[-1]
    if rows not in (1, batch):
        raise ValueError(f"the plan has {rows} evidence rows, cannot draw a batch of {batch}")
    noise = _gumbel((batch, m * length + n_states * length), plan.log_first, generator)
    g_first, g_bonds, g_states = noise.split([m, m * (length - 1), n_states * length], dim=1)
    first = (plan.log_first + g_first).argmax(-1)  # b_0: (batch,)
    if length > 1:
        # tail[k, b, :] = log S_{k+1}[:, b_0] + noise: what a step adds to a row of log A_k
        if rows == 1:
            tail = plan.log_suffix[:, 0].index_select(2, first).transpose(1, 2)  # (L - 1, batch, m)
        else:
            tail = plan.log_suffix[:, torch.arange(batch, device=first.device), :, first]  # (batch, L - 1, m)
            tail = tail.transpose(0, 1)
        tail = tail + g_bonds.view(batch, length - 1, m).transpose(0, 1)
        bonds = torch.cat([first[None], _bond_chain(plan.log_rows, tail, first), first[None]])  # (L + 1, batch)
        edge = bonds[:-1] * m + bonds[1:]  # (L, batch)
    else:
        edge = (first * (m + 1))[None]
    edge = edge + (torch.arange(length, device=edge.device) * (m * m))[:, None]
    logits = plan.log_slices.index_select(0, edge.T.reshape(-1)).view(batch, length, n_states)
    states = (logits.add_(plan.log_emission) + g_states.view(batch, length, n_states)).argmax(-1)
    return states if resample is None else torch.where(resample, states, 0)


def sample_states(
    cores: Tensor,
    log_max: Tensor,
    log_emission: Tensor,
    resample: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw the states of the ``resample`` positions from p(s_R | evidence), exactly.

    Args:
        cores, log_max: from :func:`split_log_cores`, (L, N, m, m) and (L, N).
        log_emission: (B, L, N) evidence on every position; resampled positions
            should carry zeros (no evidence) or only -inf exclusions. A batch of 1
            is shared by all rows.
        resample: (B, L) bool, the positions to sample.
        generator: optional torch generator for reproducible draws.

    Returns:
        (B, L) long states; entries at positions not resampled are 0.

    Cost: L (m x m) matrix products per evidence row (once for shared evidence),
    then O(L m) per draw; no host synchronisation.
    """
    return draw_states(sampling_plan(cores, log_max, log_emission), resample.shape[0], resample, generator)
