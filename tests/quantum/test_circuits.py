import math

import pennylane as qml
import pytest
import torch

from qelm_core.quantum.circuits import ansatz, build_qnode, ring, draw_circuit_png, example_inputs, rot_matrices


def _qnode(spec, diff_method="backprop", rot_impl=None):
    return build_qnode(spec, qml.device("default.qubit", wires=spec.n_qubits), diff_method, rot_impl=rot_impl)


@pytest.mark.parametrize("entangler", ["cz", "cnot"])
def test_ansatz_structure(entangler):
    spec = ansatz(3, context=2, layers=2, entangler=entangler)
    kinds = [op[0] for op in spec.ops]
    assert kinds.count("data_ry") == 2 * 3
    assert kinds.count("rot") == 2 * 2 * 3
    assert kinds.count(entangler) == 2 * 2 * 3 and spec.entangler == entangler
    assert spec.ops[:3] == (("data_ry", 0, 0), ("data_ry", 1, 0), ("data_ry", 2, 0))  # slot 0 (oldest) first
    assert spec.weight_shape == (2, 2, 3, 3) and spec.n_weights == 36 and spec.angle_shape == (2, 3)
    assert ring(1) == [] and ring(2) == [(0, 1)] and ring(3) == [(0, 1), (1, 2), (2, 0)]


def test_cphase_ring_has_a_trainable_phase_per_pair_before_each_layers_rotations():
    spec = ansatz(3, context=2, layers=2, entangler="cphase")
    assert spec.weight_shape == (2, 2, 3, 4) and spec.n_weights == 48
    kinds = [op[0] for op in spec.ops]
    assert kinds[:7] == ["data_ry"] * 3 + ["cphase"] * 3 + ["rot"]  # ring first: the circuit ends on rotations
    assert kinds[-1] == "rot"
    phases = [(op[3], op[4], op[1]) for op in spec.ops if op[0] == "cphase"]  # (slot, layer, first wire)
    assert sorted(phases) == [(s, l, q) for s in range(2) for l in range(2) for q in range(3)]
    with pytest.raises(ValueError, match="n_qubits >= 3"):
        ansatz(2, 1, 1, entangler="cphase")


def test_cphase_at_pi_is_the_cz_ring():
    """At phase pi every CPhase is a CZ: the first layer's ring acts on the encoded product state either way,
    so a one-layer circuit with the ring before the rotations equals CZ-ring-then-rotations on that state."""
    from qelm_core.quantum.circuits import CircuitSpec

    cp = ansatz(3, context=1, layers=1, entangler="cphase")
    cz_first = CircuitSpec(3, 1, 1, tuple(("cz", *op[1:3]) if op[0] == "cphase" else op for op in cp.ops), "cz")
    angles, weights = example_inputs(cp, seed=5)
    weights[..., 3] = math.pi
    torch.testing.assert_close(_qnode(cp)(angles, weights), _qnode(cz_first)(angles, weights[..., :3]), atol=1e-12, rtol=0)


def test_reupload_every_encodes_each_token_again_before_every_kth_layer():
    spec = ansatz(2, context=2, layers=4, reupload_every=2)
    data = [(i, op[2]) for i, op in enumerate(spec.ops) if op[0] == "data_ry" and op[1] == 0]
    # wire 0's uploads come right before layers 0 and 2 of their own slot, and nowhere else
    layers_after_upload = []
    for i, s in data:
        nxt = next(op for op in spec.ops[i:] if op[0] == "rot")
        layers_after_upload.append((s, nxt[3]))
    assert layers_after_upload == [(0, 0), (0, 2), (1, 0), (1, 2)]
    assert spec.weight_shape == (2, 4, 2, 3)  # re-uploading adds gates, no parameters
    assert ansatz(2, 2, 4, reupload_every=0).ops == ansatz(2, 2, 4).ops
    assert [op[0] for op in ansatz(2, 1, 3, reupload_every=1).ops].count("data_ry") == 3 * 2
    with pytest.raises(ValueError, match="reupload_every"):
        ansatz(2, 1, 1, reupload_every=-1)


def test_rot_matrix_is_ry_rz_ry():
    w = torch.tensor([0.3, -1.1, 2.0], dtype=torch.float64)
    expected = qml.RY(2.0, wires=0).matrix() @ qml.RZ(-1.1, wires=0).matrix() @ qml.RY(0.3, wires=0).matrix()
    got = rot_matrices(w)
    assert torch.allclose(got, torch.as_tensor(expected, dtype=torch.complex128), atol=1e-12)
    eye = got @ got.conj().T
    assert torch.allclose(eye, torch.eye(2, dtype=torch.complex128), atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_probs_shape_broadcast_and_both_compilations_agree(n):
    spec = ansatz(n, context=2, layers=2)
    g = torch.Generator().manual_seed(n)
    angles = torch.rand(5, *spec.angle_shape, generator=g, dtype=torch.float64) * math.pi  # (B, k, n)
    weights = torch.randn(spec.weight_shape, generator=g, dtype=torch.float64)
    p_matrix = _qnode(spec, "backprop")(angles, weights)
    p_gates = _qnode(spec, None, rot_impl="gates")(angles, weights)
    assert p_matrix.shape == (5, 2**n)
    assert torch.allclose(p_matrix.sum(-1), torch.ones(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(p_matrix, p_gates, atol=1e-12)
    single = torch.stack([_qnode(spec)(a, weights) for a in angles])
    assert torch.allclose(p_matrix, single, atol=1e-12)


# cphase with bits encoding is refused by the config: its first ring would act on a basis state (a global phase)
@pytest.mark.parametrize("n,entangler,first_slot", [(n, e, f) for n in (1, 2, 3) for e in ("cz", "cnot") for f in ("random", "bits")]
                         + [(3, "cphase", "random"), (4, "cphase", "random")])
def test_every_weight_has_a_gradient(n, first_slot, entangler):
    # With qml.Rot (RZ RY RZ) the last layer's third angle would be dead: RZ then a ring then probs.
    spec = ansatz(n, context=2, layers=2, entangler=entangler)
    g = torch.Generator().manual_seed(10 + n)
    angles = torch.rand(6, *spec.angle_shape, generator=g, dtype=torch.float64) * math.pi
    if first_slot == "bits":  # bits encoding: slot 0 prepares an exact basis state
        angles[:, 0, :] = math.pi * torch.randint(0, 2, (6, n), generator=g)
    weights = (0.5 * torch.randn(spec.weight_shape, generator=g, dtype=torch.float64)).requires_grad_()
    probs = _qnode(spec)(angles, weights)
    targets = torch.randint(0, 2**n, (6,), generator=g)
    (-torch.log(probs[torch.arange(6), targets]).mean()).backward()
    assert (weights.grad.abs() > 1e-8).all(), weights.grad


def test_backprop_gradient_matches_parameter_shift():
    spec = ansatz(2, context=1, layers=2)
    angles, weights = example_inputs(spec, seed=3)
    target = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    grads = []
    for diff in ("backprop", "parameter-shift"):
        w = weights.clone().requires_grad_()
        (_qnode(spec, diff)(angles, w) * target).sum().backward()
        grads.append(w.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-8)


def test_draw_circuit_png(tmp_path):
    path = draw_circuit_png(ansatz(2, context=1, layers=1), tmp_path / "plots" / "circuit.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
