"""The Born-machine ansatz, written once as a plain list of gates, and its PennyLane compilation.

The circuit description (`CircuitSpec.ops`) is the single source of truth. `build_qnode` turns it
into a PennyLane QNode; a fused torch statevector engine can compile the very same list. Nothing
else in the package hard-codes the gate structure.

Inputs
    angles  (..., context, n)          float; encoded tokens, slot 0 = oldest. Leading dims broadcast.
    weights (context, layers, n, 3)    float; trainable rotation angles (a, b, c) per qubit;
            (context, layers, n, 4)    with entangler "cphase": [..., 3] is the phase of the ring pair (q, q+1).

State: n wires, starts in |0...0>. Ops are applied in list order; each op is a tuple:

    ("data_ry", q, s)       RY(angles[..., s, q]) on wire q                      (data re-uploading)
    ("rot", q, s, l)        U(a, b, c) = RY(c) @ RZ(b) @ RY(a) on wire q,        (a applied first)
                            with (a, b, c) = weights[s, l, q, :]
    ("cnot", c, t)          CNOT, control c, target t
    ("h", q)                Hadamard on wire q (fixed: prepares an ancilla in |+>)
    ("cz", a, b)            CZ on wires a, b (diagonal: flips the sign of |..1..1..>; symmetric)
    ("cphase", a, b, s, l)  ControlledPhaseShift(weights[s, l, a, 3]) on wires a, b: diag(1, 1, 1, e^{i phi});
                            phi = pi is CZ (diagonal too, so it also keeps the assignment's order)

    RY(t) = [[cos t/2, -sin t/2], [sin t/2, cos t/2]]      RZ(t) = diag(e^{-it/2}, e^{+it/2})

Structure: for each context slot s (oldest first): one "data_ry" per qubit, then `layers` times
{ one "rot" per qubit, then the entangler ring }; with `reupload_every` = k > 0 the slot's "data_ry"
also comes again before layers k, 2k, ... (data re-uploading: the same angles, no new parameters;
issue 16: k = 2 with 4 layers, 17.0 vs 17.5 test ppl at 6 layers without, 1.25x the training time).
The ring is over the pairs (q, q+1 mod n) for
q = 0..n-1; for n = 2 it is the single pair (0, 1); for n = 1 there is none. Entangler "cz" (default)
or "cnot": CNOT rings permute basis states, so six of them after the last token scramble whatever
order the vocabulary -> basis-state assignment gave the outputs; a CZ ring is diagonal (a sign per
basis state), entangles as much, and leaves that order in place (issue 16: 23.7 vs 27.2 test ppl).

Output: probabilities of all 2^n basis states (`qml.probs(wires=range(n))`), where basis index
i = sum_q bit_q * 2^(n-1-q), i.e. wire 0 is the most significant bit (PennyLane's convention).

Entangler "cphase": the ring's phases are trainable (n per layer, initialised at pi, i.e. CZ), and the
ring comes BEFORE the layer's rotations: a diagonal ring right before the measurement cannot change
|psi|^2, so in the "rot, ring" order the last ring's phases would never get a gradient.

Why Y-Z-Y rather than qml.Rot (= RZ RY RZ): the ring after the last rotation only permutes basis
states (CNOT) or changes their signs (CZ), so a final RZ there changes phases only and `probs` cannot see it: with qml.Rot the last
layer's third angle has zero gradient forever (and with `bits` encoding so does the first RZ, which
acts on a basis state). Y-Z-Y is an equally general single-qubit rotation (proper Euler angles) with
no dead parameter; tests/quantum/test_circuits.py checks every gradient entry is non-zero.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from qelm_core.io import atomic_write_bytes


@dataclass(frozen=True)
class CircuitSpec:
    n_qubits: int
    context: int
    layers: int
    ops: tuple  # tuple of op tuples, see the module docstring
    entangler: str = "cz"
    ancillas: int = 0  # the last wires: no data, measured and post-selected on |0> by the student

    @property
    def data_wires(self) -> int:
        return self.n_qubits - self.ancillas

    @property
    def angle_shape(self) -> tuple[int, int]:
        return (self.context, self.data_wires)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.context, self.layers, self.n_qubits, 4 if self.entangler == "cphase" else 3)

    @property
    def n_weights(self) -> int:
        return math.prod(self.weight_shape)


ENTANGLERS = ("cz", "cnot", "cphase")


def ring(n: int) -> list[tuple[int, int]]:
    """The wire pairs of one entangler ring (control, target for CNOT)."""
    if n == 1:
        return []
    if n == 2:
        return [(0, 1)]  # a 2-ring would be CNOT(0,1) CNOT(1,0): redundant with the next layer
    return [(q, (q + 1) % n) for q in range(n)]


def ansatz(n_qubits: int, context: int, layers: int, entangler: str = "cz", reupload_every: int = 0,
           ancillas: int = 0) -> CircuitSpec:
    """reupload_every = k > 0: the slot's token is encoded again before layers k, 2k, ... (0: once).
    ancillas = a: a more wires after the n data wires (rotations and ring, no data); spec.n_qubits = n + a."""
    if entangler not in ENTANGLERS:
        raise ValueError(f"entangler must be one of {ENTANGLERS}, got {entangler!r}")
    if reupload_every < 0:
        raise ValueError(f"reupload_every must be >= 0, got {reupload_every}")
    if ancillas < 0:
        raise ValueError(f"ancillas must be >= 0, got {ancillas}")
    data, n_qubits = n_qubits, n_qubits + ancillas
    if entangler == "cphase" and n_qubits < 3:  # below 3 wires the ring has fewer pairs than phases
        raise ValueError(f"entangler cphase needs n_qubits >= 3, got {n_qubits}")
    ops: list[tuple] = [("h", q) for q in range(data, n_qubits)]  # ancillas start in |+>: every phase acts
    for s in range(context):
        for l in range(layers):
            if l == 0 or (reupload_every and l % reupload_every == 0):
                ops += [("data_ry", q, s) for q in range(data)]
            if entangler == "cphase":  # ring first: every phase is followed by a rotation
                ops += [("cphase", a, b, s, l) for a, b in ring(n_qubits)]
            ops += [("rot", q, s, l) for q in range(n_qubits)]
            if entangler != "cphase":
                ops += [(entangler, a, b) for a, b in ring(n_qubits)]
    return CircuitSpec(n_qubits, context, layers, tuple(ops), entangler, ancillas)


def rot_matrices(weights: torch.Tensor) -> torch.Tensor:
    """(..., 3+) angles (a, b, c, ...) -> (..., 2, 2) complex128 matrices RY(c) @ RZ(b) @ RY(a)."""
    w = weights.to(torch.float64)
    a, b, c = w[..., 0], w[..., 1], w[..., 2]

    def ry(t):  # (...,) -> (..., 2, 2)
        cos, sin = torch.cos(t / 2), torch.sin(t / 2)
        return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2).to(torch.complex128)

    phase = torch.exp(-0.5j * b.to(torch.complex128))  # RZ(b) = diag(phase, conj(phase))
    zero = torch.zeros_like(phase)
    rz = torch.stack([torch.stack([phase, zero], -1), torch.stack([zero, phase.conj()], -1)], -2)
    return ry(c) @ rz @ ry(a)


def apply_ops(spec: CircuitSpec, angles, weights, mats=None) -> None:
    """Queue `spec.ops` as PennyLane operations (call inside a QNode): data RY(angles[..., s, q]), each
    rot as RY/RZ/RY of weights[s, l, q] (or one QubitUnitary of `mats[s, l, q]` when given), CNOTs."""
    import pennylane as qml

    for op in spec.ops:
        kind = op[0]
        if kind == "data_ry":
            _, q, s = op
            qml.RY(angles[..., s, q], wires=q)
        elif kind == "rot":
            _, q, s, l = op
            if mats is not None:
                qml.QubitUnitary(mats[s, l, q], wires=q)
            else:
                qml.RY(weights[s, l, q, 0], wires=q)
                qml.RZ(weights[s, l, q, 1], wires=q)
                qml.RY(weights[s, l, q, 2], wires=q)
        elif kind == "cnot":
            qml.CNOT(wires=[op[1], op[2]])
        elif kind == "cz":
            qml.CZ(wires=[op[1], op[2]])
        elif kind == "h":
            qml.Hadamard(wires=op[1])
        elif kind == "cphase":
            _, a, b, s, l = op
            qml.ControlledPhaseShift(weights[s, l, a, 3], wires=[a, b])
        else:
            raise ValueError(f"unknown op {op!r}")


def build_qnode(spec: CircuitSpec, device, diff_method: str | None, shots: int | None = None,
                rot_impl: str | None = None, uncompute: bool = False):
    """Compile `spec` for `device`: a callable `f(angles, weights) -> probs (..., 2^n)` (float64).

    uncompute=True: `f(angles, weights, theta (..., data wires))` appends RY(-theta_q) on each data wire
    before measuring, so its all-zeros probability `f(...)[..., 0]` is |<phi|psi>|^2 for the product
    state phi = ⊗ RY(theta_q)|0> (with every ancilla at 0): the LM's tied read-out, one circuit per
    candidate token (a compute-uncompute test, as on hardware). For evaluation only (no gradient wrapper).

    In the common case (backprop, or no gradient) `f` IS the torch-interface QNode measuring
    `qml.probs(wires=range(n))`. Two gradient methods need a thin wrapper (with `f.qnode` set):
      adjoint          handles expectation values only, so the same probabilities are read out as
                       2^n expvals of basis-state projectors, device_vjp=True. 2^n observables: fine
                       to n ~ 10, impractical beyond.
      parameter-shift  cannot differentiate broadcast (batched) parameters, so a batch of angles
      / finite-diff    is evaluated one sample at a time.

    rot_impl: "matrix" applies each rotation as one qml.QubitUnitary (fewer ops: fastest for
    backprop on default.qubit); "gates" uses RY/RZ/RY, which every device and every gradient
    method understands. Default: "matrix" iff diff_method == "backprop".
    """
    import pennylane as qml

    rot_impl = rot_impl or ("matrix" if diff_method == "backprop" else "gates")
    if uncompute and diff_method not in (None, "backprop"):
        raise ValueError(f"uncompute=True is for evaluation (diff_method None or backprop), got {diff_method!r}")
    if rot_impl not in ("matrix", "gates"):
        raise ValueError(f"rot_impl must be 'matrix' or 'gates', got {rot_impl!r}")
    n = spec.n_qubits
    projectors = diff_method == "adjoint"
    basis_bits = [[(i >> (n - 1 - q)) & 1 for q in range(n)] for i in range(2**n)] if projectors else []

    def circuit(angles, weights, theta=None):
        apply_ops(spec, angles, weights, rot_matrices(weights) if rot_impl == "matrix" else None)
        for q in range(spec.data_wires if uncompute else 0):
            qml.RY(-theta[..., q], wires=q)
        if projectors:
            return [qml.expval(qml.Projector(bits, wires=range(n))) for bits in basis_bits]
        return qml.probs(wires=range(n))

    qnode = qml.QNode(circuit, device, interface="torch", diff_method=diff_method,
                      **({"device_vjp": True} if projectors else {}))
    qnode = qml.set_shots(qnode, shots=shots) if shots else qnode
    if projectors:
        def probs(angles, weights):
            return torch.stack(qnode(angles, weights), dim=-1)  # 2^n tensors (...,) -> (..., 2^n)
    elif diff_method in ("parameter-shift", "finite-diff"):
        def probs(angles, weights):
            if angles.ndim == 2:  # one sample (k, n)
                return qnode(angles, weights)
            return torch.stack([qnode(a, weights) for a in angles.reshape(-1, *spec.angle_shape)]).reshape(
                *angles.shape[:-2], 2**n)
    else:
        return qnode
    probs.qnode = qnode
    return probs


def example_inputs(spec: CircuitSpec, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed small input: angles (k, n) in [0, pi), weights (k, L, n, 3) ~ N(0, 0.3)."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(spec.angle_shape, generator=g, dtype=torch.float64) * torch.pi
    weights = 0.3 * torch.randn(spec.weight_shape, generator=g, dtype=torch.float64)
    return angles, weights


def draw_circuit_png(spec: CircuitSpec, path: str | Path) -> Path:
    """Render the ansatz (explicit RY/RZ/RY gates) for an example input to a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pennylane as qml

    dev = qml.device("default.qubit", wires=spec.n_qubits)
    qnode = build_qnode(spec, dev, diff_method=None, rot_impl="gates")
    fig, _ = qml.draw_mpl(qnode, decimals=2, style="pennylane")(*example_inputs(spec))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
