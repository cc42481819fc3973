"""The fused torch engine against PennyLane default.qubit: probabilities, gradients, read-outs."""
import math

import pennylane as qml
import pytest
import torch

from qelm_core.quantum.circuits import CircuitSpec, ansatz, build_qnode
from qelm_core.quantum.fused import compile_fused

SHAPES = [(n, k, L) for n in (1, 2, 3, 4, 8) for k in (1, 2) for L in (1, 3)]
# every entangler on every shape it supports (cphase: a ring phase per qubit needs n >= 3)
CASES = [(n, k, L, e) for n, k, L in SHAPES for e in ("cz", "cnot", "cphase") if e != "cphase" or n >= 3]
B = 16


def _qnode(spec):
    return build_qnode(spec, qml.device("default.qubit", wires=spec.n_qubits), diff_method="backprop")


def _inputs(spec, seed, batch=B):
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(batch, *spec.angle_shape, generator=g, dtype=torch.float64) * 2 * math.pi
    weights = torch.randn(spec.weight_shape, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 2**spec.n_qubits, (batch,), generator=g)
    return angles, weights, targets


def _nll_grads(f, angles, weights, targets):
    a, w = angles.clone().requires_grad_(), weights.clone().requires_grad_()
    probs = f(a, w)
    loss = -torch.log(probs[torch.arange(len(targets)), targets]).mean()
    ga, gw = torch.autograd.grad(loss, (a, w))
    return loss.detach().double(), ga, gw


@pytest.mark.parametrize("n,k,L,entangler", CASES)
def test_probs_match_default_qubit(n, k, L, entangler):
    spec = ansatz(n, k, L, entangler)
    angles, weights, _ = _inputs(spec, seed=100 * n + 10 * k + L)
    ref = _qnode(spec)(angles, weights)
    p64 = compile_fused(spec)(angles, weights)
    p128 = compile_fused(spec, dtype=torch.complex128)(angles, weights)
    assert p64.shape == p128.shape == (B, 2**n)
    assert p64.dtype == torch.float32 and p128.dtype == torch.float64
    torch.testing.assert_close(p64.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(p128, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(p64.sum(-1).double(), torch.ones(B, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(p128.sum(-1), torch.ones(B, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("n,k,L,entangler", CASES)
def test_gradients_match_default_qubit(n, k, L, entangler):
    spec = ansatz(n, k, L, entangler)
    inputs = _inputs(spec, seed=7 + 100 * n + 10 * k + L)
    ref = _nll_grads(_qnode(spec), *inputs)
    got64 = _nll_grads(compile_fused(spec), *inputs)
    got128 = _nll_grads(compile_fused(spec, dtype=torch.complex128), *inputs)
    assert (ref[2].abs() > 1e-8).any() and (ref[1].abs() > 1e-8).any()
    for got, tol in ((got64, 5e-5), (got128, 1e-10)):  # complex64: float32 rounding
        for x, y in zip(got, ref):  # loss, d/d angles, d/d weights
            assert x.dtype == torch.float64 and x.shape == y.shape  # grads come back in the inputs' dtype
            torch.testing.assert_close(x, y, atol=tol, rtol=tol)


@pytest.mark.parametrize("n", [9, 10])
@pytest.mark.parametrize("entangler", ["cz", "cnot", "cphase"])
def test_three_wire_groups_match_default_qubit(n, entangler):
    """From n = 9 a layer is three Kronecker factors (each on the leading axis of a transposed view), shared
    (Rot layers) and per sample (data uploads): probabilities and gradients as default.qubit's."""
    from qelm_core.quantum.fused import wire_groups

    assert len(wire_groups(n)) == 3 and wire_groups(8) == [4, 4]
    spec = ansatz(n, 2, 3, entangler, 2)
    angles, weights, targets = _inputs(spec, seed=n, batch=4)
    ref = _nll_grads(_qnode(spec), angles, weights, targets)
    got = _nll_grads(compile_fused(spec, dtype=torch.complex128), angles, weights, targets)
    for x, y in zip(got, ref):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(compile_fused(spec)(angles, weights).double(), _qnode(spec)(angles, weights),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("groups", [[1, 2], [2, 1, 2], [1, 2, 1, 2], [2, 1, 1, 1, 1]])
@pytest.mark.parametrize("shared", [True, False])
def test_wire_group_factors_act_as_their_kronecker_product(groups, shared):
    """Any number of groups (n >= 13 has four; the ansatz tests above reach three): the state after `_apply`
    is the full Kronecker product of the factors times psi, for shared and per-sample factors."""
    from qelm_core.quantum.fused import _apply

    g, B, n = torch.Generator().manual_seed(len(groups)), 3, sum(groups)
    lead = () if shared else (B,)
    factors = [torch.randn(*lead, 2**k, 2**k, dtype=torch.complex128, generator=g) for k in groups]
    psi = torch.randn(B, 2**n, dtype=torch.complex128, generator=g)
    full = factors[0]
    for f in factors[1:]:
        full = torch.kron(full, f) if shared else torch.stack([torch.kron(a, b) for a, b in zip(full, f)])
    right = [*factors[:-1], factors[-1].transpose(-1, -2)]  # `_factors` hands the last one over transposed
    torch.testing.assert_close(_apply(psi, right, groups), (full @ psi[..., None]).squeeze(-1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("entangler", ["cz", "cnot", "cphase"])
def test_reuploading_circuit_matches_default_qubit(entangler):
    spec = ansatz(3, 2, 4, entangler, reupload_every=2)
    angles, weights, _ = inputs = _inputs(spec, seed=11)
    torch.testing.assert_close(compile_fused(spec, dtype=torch.complex128)(angles, weights), _qnode(spec)(angles, weights),
                               atol=1e-10, rtol=0)
    ref, got = _nll_grads(_qnode(spec), *inputs), _nll_grads(compile_fused(spec, dtype=torch.complex128), *inputs)
    for x, y in zip(got, ref):  # loss, d/d angles (each angle now enters twice), d/d weights
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("entangler", ["cz", "cphase"])
def test_ancilla_wires_match_default_qubit(entangler):
    spec = ansatz(3, 2, 2, entangler, reupload_every=1, ancillas=1)
    assert spec.n_qubits == 4 and spec.angle_shape == (2, 3) and spec.data_wires == 3
    angles, weights, _ = inputs = _inputs(spec, seed=12)
    torch.testing.assert_close(compile_fused(spec, dtype=torch.complex128)(angles, weights), _qnode(spec)(angles, weights),
                               atol=1e-10, rtol=0)
    ref, got = _nll_grads(_qnode(spec), *inputs), _nll_grads(compile_fused(spec, dtype=torch.complex128), *inputs)
    for x, y in zip(got, ref):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("n", [1, 3, 4])
def test_unbatched_and_extra_leading_dims(n):
    spec = ansatz(n, context=2, layers=2)
    angles, weights, _ = _inputs(spec, seed=n, batch=6)
    f = compile_fused(spec, dtype=torch.complex128)
    batched = f(angles, weights)
    single = f(angles[3], weights)
    assert single.shape == (2**n,)
    torch.testing.assert_close(single, batched[3], atol=1e-12, rtol=0)
    torch.testing.assert_close(single, _qnode(spec)(angles[3], weights), atol=1e-10, rtol=0)
    assert f(angles.reshape(2, 3, *spec.angle_shape), weights).shape == (2, 3, 2**n)
    torch.testing.assert_close(f(angles.reshape(2, 3, *spec.angle_shape), weights).reshape(6, -1), batched)


def _expval_qnode(spec):
    """Reference for readout="z": the same ops as explicit gates, measuring qml.expval(PauliZ(q))."""
    n = spec.n_qubits

    @qml.qnode(qml.device("default.qubit", wires=n), interface="torch", diff_method="backprop")
    def circuit(angles, weights):
        for op in spec.ops:
            if op[0] == "data_ry":
                qml.RY(angles[..., op[2], op[1]], wires=op[1])
            elif op[0] == "rot":
                _, q, s, l = op
                for i, gate in enumerate((qml.RY, qml.RZ, qml.RY)):
                    gate(weights[s, l, q, i], wires=q)
            else:
                (qml.CNOT if op[0] == "cnot" else qml.CZ)(wires=[op[1], op[2]])
        return [qml.expval(qml.PauliZ(q)) for q in range(n)]

    return lambda a, w: torch.stack(circuit(a, w), -1)


@pytest.mark.parametrize("n,k,L", [(1, 1, 1), (2, 2, 1), (3, 2, 3), (4, 1, 3), (8, 2, 1)])
def test_z_readout(n, k, L):
    spec = ansatz(n, k, L)
    angles, weights, _ = _inputs(spec, seed=n + k + L)
    probs = _qnode(spec)(angles, weights)  # (B, 2^n)
    bits = (torch.arange(2**n)[:, None] >> torch.arange(n - 1, -1, -1)) & 1  # (2^n, n), wire 0 = MSB
    from_probs = 1 - 2 * (probs @ bits.double())  # 1 - 2 P(bit_q = 1)
    z64 = compile_fused(spec, readout="z")(angles, weights)
    z128 = compile_fused(spec, dtype=torch.complex128, readout="z")(angles, weights)
    assert z64.shape == (B, n) and z64.dtype == torch.float32
    torch.testing.assert_close(z64.double(), from_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(z128, from_probs, atol=1e-10, rtol=0)
    if n <= 4:  # PennyLane's own <Z_q>, explicit gates: pins the wire order and the sign convention
        a, w = angles.clone().requires_grad_(), weights.clone().requires_grad_()
        ref = _expval_qnode(spec)(a, w)
        torch.testing.assert_close(z128, ref.detach(), atol=1e-10, rtol=0)
        coef = torch.linspace(-1, 1, n, dtype=torch.float64)
        g_ref = torch.autograd.grad((ref * coef).sum(), (a, w))
        a2, w2 = angles.clone().requires_grad_(), weights.clone().requires_grad_()
        g_got = torch.autograd.grad((compile_fused(spec, readout="z")(a2, w2) * coef).sum(), (a2, w2))
        for x, y in zip(g_got, g_ref):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n,k,L,entangler", [(3, 2, 2, "cz"), (4, 1, 3, "cphase"), (8, 2, 1, "cphase"), (9, 1, 1, "cnot")])
def test_state_readout_is_default_qubits_statevector(n, k, L, entangler):
    """readout="state" keeps the final diagonal blocks (signs, phases) that probabilities may skip."""
    spec = ansatz(n, k, L, entangler)
    angles, weights, _ = _inputs(spec, seed=7 * n + L)

    @qml.qnode(qml.device("default.qubit", wires=n), interface="torch")
    def state(a, w):
        from qelm_core.quantum.circuits import apply_ops
        apply_ops(spec, a, w)
        return qml.state()

    ref = state(angles, weights)  # (B, 2^n) complex128
    got = compile_fused(spec, dtype=torch.complex128, readout="state")(angles, weights)
    assert got.shape == (B, 2**n) and got.dtype == torch.complex128
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(compile_fused(spec, readout="state")(angles, weights).to(torch.complex128), ref,
                               atol=1e-5, rtol=0)


def test_general_op_list_not_just_the_ansatz():
    """Walks any op list: partial layers, repeated wires, a data RY after a rot, CNOTs and CZs far apart,
    a CZ run in the middle and a mixed two-qubit run at the end."""
    ops = (("rot", 1, 0, 0), ("data_ry", 0, 1), ("data_ry", 2, 0), ("rot", 2, 1, 1), ("rot", 2, 0, 1),
           ("cnot", 2, 0), ("data_ry", 1, 0), ("data_ry", 1, 1), ("rot", 0, 1, 0), ("cnot", 0, 3),
           ("cz", 3, 1), ("cz", 0, 2), ("rot", 3, 0, 0), ("data_ry", 3, 1), ("cnot", 1, 2), ("cz", 1, 3))
    spec = CircuitSpec(n_qubits=4, context=2, layers=2, ops=ops)
    angles, weights, targets = _inputs(spec, seed=5)
    ref = _qnode(spec)(angles, weights)
    torch.testing.assert_close(compile_fused(spec, dtype=torch.complex128)(angles, weights), ref, atol=1e-10, rtol=0)
    for x, y in zip(_nll_grads(compile_fused(spec), angles, weights, targets),
                    _nll_grads(_qnode(spec), angles, weights, targets)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    empty = CircuitSpec(n_qubits=2, context=1, layers=1, ops=(("cnot", 0, 1),))  # |00> stays |00>
    torch.testing.assert_close(compile_fused(empty)(torch.zeros(3, 1, 2), torch.zeros(1, 1, 2, 3)),
                               torch.tensor([[1.0, 0, 0, 0]] * 3))


def test_float32_inputs_and_parameters():
    """The student keeps float32 parameters: gradients come back in float32."""
    spec = ansatz(4, 2, 2)
    angles, weights, targets = _inputs(spec, seed=11)
    _, ga, gw = _nll_grads(compile_fused(spec), angles.float(), weights.float(), targets)
    _, ra, rw = _nll_grads(_qnode(spec), angles, weights, targets)
    assert ga.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(gw.double(), rw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ga.double(), ra, atol=1e-5, rtol=1e-5)


def test_errors():
    spec = ansatz(3, 2, 1)
    f = compile_fused(spec)
    with pytest.raises(ValueError, match="expected angles"):
        f(torch.zeros(4, 3, 3), torch.zeros(spec.weight_shape))
    with pytest.raises(ValueError, match="expected angles"):
        f(torch.zeros(4, 2, 3), torch.zeros(2, 2, 3, 3))
    with pytest.raises(ValueError, match="readout"):
        compile_fused(spec, readout="x")
    with pytest.raises(ValueError, match="dtype"):
        compile_fused(spec, dtype=torch.float32)
    with pytest.raises(ValueError, match="unknown op"):
        compile_fused(CircuitSpec(2, 1, 1, (("swap", 0, 1),)))
    with pytest.raises(ValueError, match="out of range"):
        compile_fused(CircuitSpec(2, 1, 1, (("rot", 2, 0, 0),)))
    with pytest.raises(ValueError, match="bad two-qubit wires"):
        compile_fused(CircuitSpec(2, 1, 1, (("cnot", 1, 1),)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    spec = ansatz(6, 2, 2)
    angles, weights, targets = _inputs(spec, seed=3)
    f = compile_fused(spec, dtype=torch.complex128)
    cpu = _nll_grads(f, angles, weights, targets)
    gpu = _nll_grads(f, angles.cuda(), weights.cuda(), targets.cuda())
    for x, y in zip(gpu, cpu):
        assert x.is_cuda
        torch.testing.assert_close(x.cpu(), y, atol=1e-10, rtol=1e-10)
