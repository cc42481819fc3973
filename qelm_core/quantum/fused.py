"""A fused torch statevector engine for the ansatz, compiled from the same `CircuitSpec.ops` as the QNode.

`compile_fused(spec)` walks `spec.ops` once (nothing about the ansatz structure is hard-coded) and
returns a plain function `f(angles, weights) -> probs` with the QNode's signature and semantics
(`circuits.build_qnode`): angles (..., k, n), weights (k, L, n, 3), probabilities over the 2^n basis
states with wire 0 the most significant bit. It is ordinary torch code, so autograd differentiates
it w.r.t. angles and weights, and it runs on the device of the inputs (all constants are moved
there, cached per device; CUDA is covered by a test that is skipped on CPU-only machines). It is
deliberately NOT a PennyLane device: it simulates exactly this gate set, as fast as torch allows,
and tests/quantum/test_fused.py pins it to PennyLane's default.qubit.

Design (chosen by measurement against default.qubit backprop, which applies gate by gate):
  * The state is one (B, 2^n) complex tensor for the whole batch. Data angles differ per sample, so
    the batch is a real tensor dimension, not a loop or PennyLane parameter broadcasting.
  * A run of consecutive single-qubit ops (the data RYs of slot s followed by the first Rot layer,
    or a Rot layer alone) is merged per qubit into ONE 2x2 matrix: (B, n, 2, 2) when it contains a
    data RY (per sample), (n, 2, 2) when it holds only Rots (shared by the batch).
  * Those n 2x2s are combined into two half-register factors, the Kronecker products over the first
    h = n//2 wires, A (.., 2^h, 2^h), and over the other n-h wires, C (.., 2^(n-h), 2^(n-h)). With
    the state viewed as psi (B, 2^h, 2^(n-h)) the whole layer is psi -> A @ psi @ C^T: two batched
    matmuls instead of n strided passes over the state. (One 2^n x 2^n unitary per layer only wins
    for n <= 6; at n = 12 the two factors need 2 x 64^2 entries instead of 4096^2.)
    From n = 9 on the wires form groups of at most 4 (`wire_groups`: n = 12 -> 4, 4, 4), one factor each,
    applied in turn to the leading axis of a transposed view, which rotates the group order (`_apply`; no
    copies of the state), 1.37x faster than two halves at n = 12 and 1.39x at n = 10 when first measured
    (batch 256, side by side); n <= 8 runs the two-half operations (bitwise the same probabilities). A Rot-only
    block's factors are shared by the batch (with two halves C^T is then one GEMM over the whole batch; groups
    read a shared factor through an expanded view, no copies). The first block acts on |0...0>, so its
    result is just the product state of the merged matrices' first columns (no matmul at all).
    torch.compile did not help on CPU, so the function is plain eager torch.
  * CNOTs map basis states to basis states, so a run of them (the ring) is a permutation of the
    basis axis: composed at compile time into one index vector and applied as one gather, whose
    backward is the gather with the inverse permutation (no scatter-add). A run of CZs is diagonal:
    one +-1 vector multiplied in (skipped when it is the last op, where |psi|^2 cannot see it).
  * Default dtype complex64 (float32 output): probabilities agree with default.qubit (complex128)
    to ~1e-7, gradients to ~1e-6 relative, at half the memory traffic. complex128 is available
    (float64 output) for exact comparisons.
Measured (2-core CPU, complex64, loss + backward, batch 1024, median of interleaved repeats):
n = 8, context 2, 2 layers: 37 ms vs 291 ms for default.qubit backprop; 6 layers: 59 ms vs 789 ms;
n = 12, context 2, 2 layers: 0.99 s vs 26.7 s, peak memory ~0.5 GiB vs ~4.9 GiB. Regression tests
against default.qubit (probabilities, gradients, <Z>): tests/quantum/test_fused.py.

readout="z" returns <Z_q> = P(bit_q = 0) - P(bit_q = 1) per wire, (..., n), computed from the
probabilities with a precomputed +-1 sign matrix (for classification heads). readout="state" returns
the statevector (for the LM's tied read-out, qelm_core/lm/student.py: overlaps with product states).
"""
from __future__ import annotations

import torch

from qelm_core.quantum.circuits import CircuitSpec

READOUTS = ("probs", "z", "state")


class _Permute(torch.autograd.Function):
    """x[..., idx] for a permutation idx, as a gather (much faster than index_select on CPU); backward
    gathers with the inverse permutation instead of scatter-adding."""

    @staticmethod
    def forward(ctx, x, idx, inv):
        ctx.save_for_backward(inv)
        return x.gather(-1, idx.expand(x.shape))

    @staticmethod
    def backward(ctx, grad):
        (inv,) = ctx.saved_tensors
        return grad.gather(-1, inv.expand(grad.shape)), None, None


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype == torch.complex64:
        return torch.float32
    if dtype == torch.complex128:
        return torch.float64
    raise ValueError(f"dtype must be torch.complex64 or torch.complex128, got {dtype}")


def _ry(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(...,) real -> (..., 2, 2) complex RY(t)."""
    c, s = torch.cos(t / 2), torch.sin(t / 2)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2).to(dtype)


def _rot(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(..., 3+) real (a, b, c, ...) -> (..., 2, 2) complex RY(c) @ RZ(b) @ RY(a) (as circuits.rot_matrices)."""
    a, b, c = w[..., 0], w[..., 1], w[..., 2]
    phase = torch.polar(torch.ones_like(b), -b / 2)  # RZ(b) = diag(phase, conj(phase))
    rz = torch.stack([phase, phase.conj()], -1)  # (..., 2) diagonal
    return _ry(c, dtype) @ (rz[..., :, None] * _ry(a, dtype))


def _kron(mats: torch.Tensor) -> torch.Tensor:
    """(..., m, 2, 2) -> (..., 2^m, 2^m) Kronecker product, wire 0 most significant; m = 0 gives [[1]]."""
    out = torch.ones(*mats.shape[:-3], 1, 1, dtype=mats.dtype, device=mats.device)
    for q in range(mats.shape[-3]):
        d = out.shape[-1]
        out = (out[..., :, None, :, None] * mats[..., q, None, :, None, :]).reshape(*out.shape[:-2], 2 * d, 2 * d)
    return out


def wire_groups(n: int) -> list[int]:
    """Sizes of the wire groups whose Kronecker factors make up a layer: two halves up to n = 8, then
    groups of at most 4 wires (factors of 16 x 16: at n = 12 three of them cost 3 x 16 multiply-adds per
    amplitude instead of 2 x 64 for two halves)."""
    m = max(2, -(-n // 4))  # n = 1: [0, 1], an empty first group (its factor is [[1]])
    return [n // m + (i >= m - n % m) for i in range(m)]  # the smaller groups first (n = 10: 3, 3, 4)


def _factors(mats: torch.Tensor, groups: list[int]) -> list[torch.Tensor]:
    """(..., n, 2, 2) -> one (..., 2^g, 2^g) Kronecker factor per wire group; the last one transposed
    (it multiplies the state from the right)."""
    out, start = [], 0
    for j, g in enumerate(groups):
        part = mats[..., start:start + g, :, :]
        out.append(_kron(part.transpose(-1, -2) if j == len(groups) - 1 else part))
        start += g
    return out


def _apply(psi: torch.Tensor, factors: list[torch.Tensor], groups: list[int]) -> torch.Tensor:
    """psi (B, 2^n) -> the state after the product of the groups' factors (shared (d, d) or per
    sample (B, d, d)). Two groups: A @ psi @ C^T. Three or more: each factor multiplies the group on the
    leading axis from the right of the transposed view, which moves that axis last ((g0, g1, g2) ->
    (g1, g2, g0')), so after the last group the order is the original again: one bmm per group and no
    copy (BLAS reads the transposed operand in place; a tied n = 12 training step 1.07x faster than moving
    the middle axis at batch 256, 1.87x at batch 1024, README)."""
    B, n = psi.shape[0], sum(groups)
    if len(groups) == 2:
        x = factors[0] @ psi.reshape(B, 2 ** groups[0], -1)  # (B, d0, d1)
        return (x @ factors[1]).reshape(B, 2**n)
    x = psi
    for j, (f, g) in enumerate(zip(factors, groups)):  # the last factor comes transposed already
        f = (f if j == len(groups) - 1 else f.transpose(-1, -2)).expand(B, 2**g, 2**g)  # a shared one too:
        x = torch.bmm(x.reshape(B, 2**g, -1).transpose(1, 2), f)  # bmm reads it in place, matmul would copy x
    return x.reshape(B, 2**n)


def _compile_blocks(spec: CircuitSpec) -> list[tuple]:
    """Group ops into ("single", [stage, ...]), ("perm", index list), ("sign", +-1 vector) and
    ("phase", [(mask of both bits set (2^n,), s, l, a), ...]) blocks.

    A stage is (kind, qubits, slots, layers) with one op of a single kind per qubit at most; the
    stages of a block are applied in order (later stages multiply from the left)."""
    n, k, L = spec.n_qubits, spec.context, spec.layers
    blocks: list[tuple] = []
    for op in spec.ops:
        kind = op[0]
        if kind in ("data_ry", "rot", "h"):
            q, s = op[1], op[2] if kind != "h" else 0
            l = op[3] if kind == "rot" else 0
            if not (0 <= q < (spec.data_wires if kind == "data_ry" else n) and 0 <= s < k and 0 <= l < L) or \
                    len(op) != {"rot": 4, "data_ry": 3, "h": 2}[kind]:
                raise ValueError(f"op {op!r} out of range for n={n}, context={k}, layers={L}")
            if not blocks or blocks[-1][0] != "single":
                blocks.append(("single", []))
            stages = blocks[-1][1]
            if not stages or stages[-1][0] != kind or q in stages[-1][1]:
                stages.append((kind, [], [], []))
            for lst, v in zip(stages[-1][1:], (q, s, l)):
                lst.append(v)
        elif kind == "cphase":  # diagonal with trainable angles: a run of them is one phase vector per call
            _, c, t, s, l = op
            if not (0 <= c < n and 0 <= t < n and c != t and 0 <= s < k and 0 <= l < L):
                raise ValueError(f"op {op!r} out of range for n={n}, context={k}, layers={L}")
            x = torch.arange(2**n)
            both = ((x >> (n - 1 - c)) & 1) * ((x >> (n - 1 - t)) & 1)
            if not blocks or blocks[-1][0] != "phase":
                blocks.append(("phase", []))
            blocks[-1][1].append((both, s, l, c))
        elif kind in ("cnot", "cz"):
            _, c, t = op
            if not (0 <= c < n and 0 <= t < n and c != t):
                raise ValueError(f"op {op!r}: bad two-qubit wires for n={n}")
            x = torch.arange(2**n)
            cbit, tbit = 1 << (n - 1 - c), 1 << (n - 1 - t)
            if kind == "cz":  # diagonal: -1 where both bits are set; a run of CZs is one sign vector
                if not blocks or blocks[-1][0] != "sign":
                    blocks.append(("sign", torch.ones(2**n)))
                both = (x & cbit != 0) & (x & tbit != 0)
                blocks[-1] = ("sign", torch.where(both, -blocks[-1][1], blocks[-1][1]))
                continue
            if not blocks or blocks[-1][0] != "perm":
                blocks.append(("perm", torch.arange(2**n)))
            gate = torch.where(x & cbit != 0, x ^ tbit, x)  # self-inverse: new[x] = old[gate[x]]
            blocks[-1] = ("perm", blocks[-1][1][gate])
        else:
            raise ValueError(f"unknown op {op!r}")
    return blocks


def compile_fused(spec: CircuitSpec, dtype: torch.dtype = torch.complex64, readout: str = "probs"):
    """Compile `spec` to `f(angles (..., k, n), weights (k, L, n, 3)) -> (..., 2^n) probs` or
    `(..., n)` <Z_q> (readout="z"), real dtype matching `dtype` (float32 for complex64), or the
    statevector itself (readout="state", (..., 2^n) of `dtype`)."""
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    real = _real_dtype(dtype)
    n, k = spec.n_qubits, spec.context
    state = readout == "state"  # the final diagonal blocks matter for overlaps, not for |psi|^2
    groups = wire_groups(n)
    blocks = _compile_blocks(spec)
    # Fast path: a stage covering every wire in order needs no identity padding.
    full = [[tuple(st[1]) == tuple(range(n)) for st in b[1]] if b[0] == "single" else None for b in blocks]
    # A block that is exactly one whole Rot layer (every wire, one (slot, layer)) takes its factors from
    # one batched Kronecker product of all layers, computed once per call (fewer, larger torch ops).
    layer_of = [(b[1][0][2][0], b[1][0][3][0]) if b[0] == "single" and len(b[1]) == 1 and b[1][0][0] == "rot"
                and full[i][0] and len(set(b[1][0][2])) == 1 and len(set(b[1][0][3])) == 1 else None
                for i, b in enumerate(blocks)]
    batch_layers = sum(x is not None for x in layer_of) > 1
    x = torch.arange(2**n)
    signs = (1 - 2 * ((x[:, None] >> torch.arange(n - 1, -1, -1)) & 1)).to(real)  # (2^n, n) <Z_q> signs
    cache: dict[torch.device, list] = {}

    def consts(device: torch.device) -> list:
        if device not in cache:
            items = []
            for b in blocks:
                if b[0] == "perm":
                    idx = b[1]
                    items.append((None if torch.equal(idx, x) else idx.to(device),
                                  torch.argsort(idx).to(device)))
                elif b[0] == "sign":
                    items.append(b[1].to(device=device, dtype=real))
                elif b[0] == "phase":  # mask (2^n, P) and the (s, l, a) index of each pair's angle
                    mask = torch.stack([m for m, *_ in b[1]], 1).to(device=device, dtype=real)
                    items.append((mask, *(torch.tensor(v, device=device) for v in zip(*(i[1:] for i in b[1])))))
                else:
                    items.append([tuple(torch.tensor(v, device=device) for v in st[1:]) for st in b[1]])
            hadamard = torch.tensor([[1, 1], [1, -1]], dtype=dtype, device=device) / 2**0.5
            cache[device] = [items, torch.eye(2, dtype=dtype, device=device), signs.to(device), hadamard]
        return cache[device]

    def f(angles: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if tuple(angles.shape[-2:]) != spec.angle_shape or tuple(weights.shape) != spec.weight_shape:
            raise ValueError(f"expected angles (..., {k}, {spec.data_wires}) and weights {spec.weight_shape}, "
                             f"got {tuple(angles.shape)} and {tuple(weights.shape)}")
        lead = angles.shape[:-2]
        ang = angles.reshape(-1, *spec.angle_shape).to(real)  # (B, k, data wires)
        B, device = ang.shape[0], ang.device
        items, eye, sgn, hadamard = consts(device)
        rots = _rot(weights.to(device=device, dtype=real), dtype)  # (k, L, n, 2, 2) shared
        if batch_layers:  # per group (k, L, 2^g, 2^g) of every layer, the last one transposed
            layer_factors = _factors(rots, groups)
        psi = None  # None = still |0...0>
        for i, (b, item, is_full, sl) in enumerate(zip(blocks, items, full, layer_of)):
            if b[0] == "perm":
                idx, inv = item
                if idx is not None and psi is not None:
                    psi = _Permute.apply(psi, idx, inv)
                continue
            if b[0] == "sign":
                if psi is not None and (i < len(blocks) - 1 or state):  # before |psi|^2 they change nothing
                    psi = psi * item
                continue
            if b[0] == "phase":  # |0...0> has no pair with both bits set: nothing to do before any rotation
                mask, ss, ls, qs = item
                if psi is not None and (i < len(blocks) - 1 or state):
                    theta = mask @ weights[ss, ls, qs, 3].to(device=device, dtype=real)  # (2^n,)
                    psi = psi * torch.polar(torch.ones_like(theta), theta)
                continue
            if sl is not None and batch_layers and psi is not None:
                psi = _apply(psi, [f[sl] for f in layer_factors], groups)
                continue
            m = None  # merged per-wire matrices (.., n, 2, 2)
            for (kind, *_), (qs, ss, ls), all_wires in zip(b[1], item, is_full):
                if kind == "h":  # fixed Hadamards (ancilla preparation)
                    g = hadamard.expand(len(qs), 2, 2)
                else:
                    g = _ry(ang[:, ss, qs], dtype) if kind == "data_ry" else rots[ss, ls, qs]  # (.., m, 2, 2)
                if not all_wires:
                    g = eye.expand(*g.shape[:-3], n, 2, 2).index_copy(-3, qs, g)
                m = g if m is None else g @ m
            if psi is None:  # product state: first columns of the merged matrices
                psi = m[..., 0, 0].new_ones(m.shape[:-3] + (1,))
                for q in range(n):
                    psi = (psi[..., :, None] * m[..., q, None, :, 0]).flatten(-2)
                psi = psi.expand(B, 2**n) if psi.ndim == 1 else psi
            else:  # psi -> A @ psi @ C^T (two groups), one factor per wire group
                psi = _apply(psi, _factors(m, groups), groups)
        if psi is None:
            psi = torch.zeros(B, 2**n, dtype=dtype, device=device)
            psi[:, 0] = 1
        if state:
            return psi.reshape(*lead, 2**n)
        probs = psi.real.square() + psi.imag.square()  # (B, 2^n)
        out = probs @ sgn if readout == "z" else probs
        return out.reshape(*lead, out.shape[-1])

    f.spec, f.dtype, f.readout = spec, dtype, readout
    return f
