"""The quantum classifier: read-out shapes, every parameter trained, fused engine == PennyLane, save/load."""
import math

import pennylane as qml
import pytest
import torch
import torch.nn.functional as F

from qelm_core.classify.config import StudentParams
from qelm_core.quantum.circuits import CircuitSpec, ansatz
from qelm_core.classify.models import (ENTANGLERS, LinearClassifier, MLPClassifier, QuantumClassifier, build_model,
                                       classifier_spec, load_model, mlp_hidden_for, param_counts, quantum_param_count,
                                       save_model, z_qnode)
from qelm_core.config import QelmError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(d, n_classes, b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randint(0, n_classes, (b,), generator=g)


def test_readout_shapes_and_ranges():
    model = QuantumClassifier(d=16, n_classes=3, n_qubits=5, layers=2)
    x, _ = _batch(16, 3, b=7)
    angles, z, logits = model.angles(x), model.expvals(x), model(x)
    assert angles.shape == (7, 5) and 0 < angles.min() and angles.max() < math.pi
    assert z.shape == (7, 5) and z.dtype == torch.float32 and z.abs().max() <= 1 + 1e-6
    assert logits.shape == (7, 3)
    with pytest.raises(QelmError, match="expected features of shape"):
        model(torch.zeros(7, 15))


@pytest.mark.parametrize("entangler", ENTANGLERS)
@pytest.mark.parametrize("n,layers,classes", [(11, 3, 2), (11, 3, 5), (4, 1, 3), (3, 4, 2), (2, 2, 2)])
def test_every_parameter_has_a_nonzero_gradient(n, layers, classes, entangler):
    """Every single entry of every parameter tensor gets gradient (no dead gate in the block order)."""
    model = QuantumClassifier(d=12, n_classes=classes, n_qubits=n, layers=layers, entangler=entangler,
                              generator=torch.Generator().manual_seed(1))
    x, y = _batch(12, classes, b=16, seed=2)
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        dead = (p.grad.abs() < 1e-9).sum().item()
        assert dead == 0, f"{name}: {dead} of {p.numel()} entries have zero gradient"


def test_a_commuting_last_block_would_be_caught():
    """Why the block order matters: RY, RZZ ring, RZ, CNOT ring read out with <Z>: the last block's RZ
    (and RZZ) commute with the measurement, so their gradient is exactly zero."""
    n = 3
    dev = qml.device("default.qubit", wires=n)

    @qml.qnode(dev, interface="torch", diff_method="backprop")
    def bad(x, w):  # w (2 blocks, 3 kinds, n)
        for q in range(n):
            qml.RY(x[q], wires=q)
        for blk in range(2):
            for q in range(n):
                qml.RY(w[blk, 0, q], wires=q)
            for q in range(n):
                qml.IsingZZ(w[blk, 1, q], wires=[q, (q + 1) % n])
            for q in range(n):
                qml.RZ(w[blk, 2, q], wires=q)
            for q in range(n):
                qml.CNOT(wires=[q, (q + 1) % n])
        return [qml.expval(qml.PauliZ(q)) for q in range(n)]

    w = (0.5 * torch.randn(2, 3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).requires_grad_()
    x = torch.tensor([0.3, 1.1, -0.7], dtype=torch.float64)
    (torch.stack(bad(x, w)) * torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)).sum().backward()
    assert torch.all(w.grad[1, 1:].abs() < 1e-12)  # last block: RZZ and RZ dead
    assert torch.all(w.grad[0].abs() > 1e-9)  # earlier block: alive


@pytest.mark.parametrize("n,layers,entangler", [(4, 2, "brick"), (5, 3, "ring"), (11, 3, "brick"), (4, 2, "cz_brick"),
                                                (5, 3, "cz_ring"), (11, 3, "cz_brick")])
def test_fused_matches_pennylane_default_qubit(n, layers, entangler):
    model = QuantumClassifier(d=10, n_classes=3, n_qubits=n, layers=layers, entangler=entangler,
                              generator=torch.Generator().manual_seed(3))
    x, y = _batch(10, 3, b=5, seed=4)
    fused = model.expvals(x)  # complex64 engine, as in training
    ref_circuit = z_qnode(model.spec, qml.device("default.qubit", wires=n), diff_method="backprop")
    ref = model.expvals(x, circuit=ref_circuit)
    torch.testing.assert_close(fused.double(), ref.double(), atol=1e-5, rtol=0)
    # gradients of the same loss w.r.t. every parameter, through either engine
    grads = []
    for circuit in (None, ref_circuit):
        model.zero_grad()
        F.cross_entropy(model.head(model.expvals(x, circuit=circuit).float()), y).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-5, rtol=1e-4)


def test_brick_entangler_pairs():
    cnots = [op[1:] for op in classifier_spec(5, 3, "brick").ops if op[0] == "cnot"]
    assert cnots == [(0, 1), (2, 3), (1, 2), (3, 4), (0, 1), (2, 3)]
    cnots = [op[1:] for op in classifier_spec(4, 2, "brick").ops if op[0] == "cnot"]
    assert cnots == [(0, 1), (2, 3), (1, 2), (3, 0)]  # even n closes the ring in odd layers
    assert classifier_spec(5, 2, "ring").ops == ansatz(5, 1, 2, entangler="cnot").ops
    with pytest.raises(ValueError, match="entangler must be one of"):
        classifier_spec(5, 2, "cz")
    assert classifier_spec(5, 3) == classifier_spec(5, 3, "cz_brick") == build_model(
        "quantum", 4, 2, StudentParams(n_qubits=5, layers=3)).spec  # the default, picked on validation accuracy


def test_cz_entangler_pairs_skip_the_last_block():
    """The CZ variants use the same pairs as CZs, between the rotation blocks only."""
    spec = classifier_spec(5, 3, "cz_brick")
    assert [op[0] for op in spec.ops if op[0] in ("cnot", "cz")] == ["cz"] * 4
    assert [op[1:] for op in spec.ops if op[0] == "cz"] == [(0, 1), (2, 3), (1, 2), (3, 4)]
    assert spec.ops[-5:] == tuple(("rot", q, 0, 2) for q in range(5))  # the read-out follows the last block
    czs = [op[1:] for op in classifier_spec(4, 3, "cz_ring").ops if op[0] == "cz"]
    assert czs == [(0, 1), (1, 2), (2, 3), (3, 0)] * 2
    assert not any(op[0] == "cz" for op in classifier_spec(4, 1, "cz_brick").ops)  # one block: a product circuit
    assert classifier_spec(4, 2, "cz_brick").entangler == "cz" and classifier_spec(4, 2, "brick").entangler == "cnot"


@pytest.mark.parametrize("entangler", ["cz_brick", "cz_ring"])
def test_a_final_cz_layer_would_change_nothing(entangler):
    """Why the CZ variants stop after the last block: CZ is diagonal, so it commutes with every Z_q and
    <Z_q> (and every gradient) is the same with or without a CZ layer in front of the read-out."""
    model = QuantumClassifier(d=8, n_classes=2, n_qubits=5, layers=3, entangler=entangler,
                              generator=torch.Generator().manual_seed(5))
    pairs = [op[1:] for op in model.spec.ops if op[0] == "cz"][:5 if entangler == "cz_ring" else 2]
    longer = CircuitSpec(5, 1, 3, model.spec.ops + tuple(("cz", a, b) for a, b in pairs), "cz")
    x, _ = _batch(8, 2, b=6, seed=6)
    angles = model.angles(x)[:, None, :].detach().double()
    w = model.circuit_weights.detach().double()
    outs = []
    for spec in (model.spec, longer):
        w_ = w.clone().requires_grad_()
        z = z_qnode(spec, qml.device("default.qubit", wires=5), diff_method="backprop")(angles, w_)
        (z * torch.arange(1.0, 6.0, dtype=torch.float64)).sum().backward()
        outs.append((z.detach(), w_.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-12, rtol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-12, rtol=0)


def test_parameter_budget_and_counts():
    d, c, n, L = 384, 5, 11, 3
    total = quantum_param_count(d, c, n, L)
    q = build_model("quantum", d, c, StudentParams(n_qubits=n, layers=L))
    assert param_counts(q) == {"circuit": L * n * 3, "classical": total - L * n * 3, "total": total}
    h = mlp_hidden_for(total, d, c)
    mlp = build_model("mlp", d, c, StudentParams(n_qubits=n, layers=L))
    assert isinstance(mlp, MLPClassifier) and mlp.hidden == h
    assert param_counts(mlp)["total"] <= total < (h + 1) * (d + 1) + (h + 2) * c
    assert param_counts(build_model("logreg", d, c, StudentParams()))["total"] == (d + 1) * c


def test_save_load_roundtrip_and_no_pickle(tmp_path):
    x, _ = _batch(6, 2)
    for model in (QuantumClassifier(6, 2, n_qubits=3, layers=1), MLPClassifier(6, 2, hidden=4), LinearClassifier(6, 2)):
        folder = save_model(model, tmp_path / model.kind, {"labels": ["a", "b"]})
        loaded, cfg = load_model(folder)
        assert cfg["labels"] == ["a", "b"] and cfg["param_counts"] == param_counts(model)
        torch.testing.assert_close(loaded(x), model.eval()(x))
    torch.save({"evil": 1}, tmp_path / "quantum" / "model.safetensors")  # a pickle payload
    with pytest.raises(QelmError, match="corrupt or truncated safetensors file"):
        load_model(tmp_path / "quantum")
