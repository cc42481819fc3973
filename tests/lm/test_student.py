import json
import math
import pickle

import pytest
import torch

from qelm_core.quantum.circuits import ansatz
from qelm_core.config import DeviceParams, QelmError, StudentParams, parse_params
from qelm_core.lm.student import (ClassicalStudent, QuantumStudent, basis_bits, build_student, load_student,
                               param_counts, predict_probs, quantum_param_count, save_student)


def student_params(**kw) -> StudentParams:
    base = dict(n_qubits=3, context=2, layers=2, engine="pennylane")  # the device-facing path; fused: below
    return StudentParams(**{**base, **kw})


def all_ids(V: int, k: int, extra: int = 8, seed: int = 0) -> torch.Tensor:
    """(B, k) contexts in which every id 0..V-1 appears in every slot, plus random rows."""
    g = torch.Generator().manual_seed(seed)
    cover = torch.stack([torch.roll(torch.arange(V), s) for s in range(k)], dim=1)  # (V, k)
    return torch.cat([cover, torch.randint(0, V, (extra, k), generator=g)])


@pytest.mark.parametrize("engine", ["pennylane", "fused"])
@pytest.mark.parametrize("encoding, log_bias, entangler, ancillas", [
    ("embedding", True, "cz", 0), ("embedding", False, "cz", 0), ("bits", True, "cz", 0), ("embedding", True, "cphase", 0),
    ("embedding", True, "cphase", 1), ("bits", False, "cz", 1)])
def test_quantum_valid_distribution_and_every_gradient(encoding, log_bias, entangler, ancillas, engine):
    sp = student_params(encoding=encoding, log_bias=log_bias, engine=engine, entangler=entangler, ancillas=ancillas)
    model = QuantumStudent(sp, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # move away from the near-identity init so no gradient is accidentally tiny
        model.circuit_weights.normal_(0, 0.5)
        if model.log_bias is not None:
            model.log_bias.normal_(0, 0.5)
    ids = all_ids(8, 2)
    logp = model(ids)  # (B, V)
    assert logp.shape == (len(ids), 8)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(len(ids)), atol=1e-5)
    targets = torch.randint(0, 8, (len(ids),), generator=torch.Generator().manual_seed(1))
    torch.nn.functional.nll_loss(logp, targets).backward()
    params = dict(model.named_parameters())
    assert set(params) == {"circuit_weights"} | ({"embedding"} if encoding == "embedding" else set()) | (
        {"log_bias"} if log_bias else set())
    for name, p in params.items():
        assert (p.grad.abs() > 1e-9).all(), f"{name} has dead entries: {p.grad}"


@pytest.mark.parametrize("engine", ["pennylane", "fused"])
def test_embedded_tokens_train_their_rows_and_rarer_ids_enter_as_bits(engine):
    sp = student_params(entangler="cphase", engine=engine, embedded_tokens=3)
    model = QuantumStudent(sp, generator=torch.Generator().manual_seed(0))
    every_row = QuantumStudent(sp.model_copy(update={"embedded_tokens": 0}), generator=torch.Generator().manual_seed(0))
    assert model.embedding.shape == (3, 3) and torch.equal(model.embedding, every_row.embedding[:3])  # same init
    assert torch.equal(model.circuit_weights, every_row.circuit_weights)
    assert sum(p.numel() for p in model.parameters()) == quantum_param_count(sp) == quantum_param_count(every_row.params) - 15
    ids = torch.tensor([[0, 2], [5, 7]])
    angles = model.angles(ids)  # (2, 2, 3)
    assert torch.equal(angles[0], model.embedding[[0, 2]])
    assert torch.equal(angles[1], math.pi * basis_bits(model.basis, 3)[[5, 7]])
    logp = model(all_ids(8, 2))
    torch.nn.functional.nll_loss(logp, torch.arange(len(logp)) % 8).backward()
    assert (model.embedding.grad.abs() > 1e-9).all() and (model.circuit_weights.grad.abs() > 1e-9).any()


def test_quantum_init_favours_frequent_ids():
    model = QuantumStudent(StudentParams(n_qubits=4, context=2, layers=3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs = model(torch.tensor([[0, 1], [1, 2]])).exp()
    assert (probs.argmax(-1) == 0).all()  # id 0 (OTHER) on |0000>
    counts = torch.arange(16, 0, -1.0)  # rank from unigram counts gives the same init as the id order
    other = QuantumStudent(StudentParams(n_qubits=4, context=2, layers=3), unigram_counts=counts,
                           generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.embedding, other.embedding)


def test_broadcast_equals_per_sample():
    model = QuantumStudent(student_params(log_bias=True), generator=torch.Generator().manual_seed(2))
    ids = all_ids(8, 2, extra=0)
    with torch.no_grad():
        batch, rows = model.circuit_probs(ids), torch.cat([model.circuit_probs(i[None]) for i in ids])
        assert torch.allclose(batch, rows, atol=1e-6)
        assert torch.allclose(model(ids), torch.cat([model(i[None]) for i in ids]), atol=1e-6)


@pytest.mark.parametrize("device", [dict(name="lightning.qubit"), dict(name="default.qubit", diff_method="adjoint"),
                                    dict(name="default.qubit", diff_method="parameter-shift")])
def test_other_gradient_methods_match_backprop(device):
    # adjoint reads probs as projector expvals; parameter-shift evaluates the batch sample by sample
    sp = student_params(n_qubits=2, context=2, layers=1, log_bias=True)
    ids = all_ids(4, 2, extra=0)
    results = []
    for dev in (DeviceParams(), DeviceParams(**device)):
        model = QuantumStudent(sp, dev, generator=torch.Generator().manual_seed(3))
        logp = model(ids)
        torch.nn.functional.nll_loss(logp, ids[:, 0]).backward()
        results.append([logp.detach()] + [p.grad for p in model.parameters()])
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bad_ids_are_refused():
    model = QuantumStudent(student_params())
    with pytest.raises(QelmError, match=r"token ids must be in \[0, 8\)"):
        model(torch.tensor([[0, 8]]))
    with pytest.raises(QelmError, match=r"shape \(batch, 2\)"):
        model(torch.tensor([[0, 1, 2]]))


@pytest.mark.parametrize("encoding", ["embedding", "bits"])
def test_unigram_counts_of_another_vocabulary_are_refused(encoding):
    with pytest.raises(QelmError, match="unigram_counts has 4 entries, expected 8"):
        QuantumStudent(student_params(encoding=encoding), unigram_counts=torch.ones(4))


def test_classical_student_is_parameter_matched():
    sp = student_params(n_qubits=4, context=2, layers=3, log_bias=True)
    q, c = QuantumStudent(sp), ClassicalStudent(sp, quantum_param_count(sp))
    nq, nc = param_counts(q), param_counts(c)
    assert nq == {"embedding": 16 * 4, "circuit": 2 * 3 * 4 * 3, "classical": 16, "total": 64 + 72 + 16}
    assert nq["total"] == quantum_param_count(sp)
    assert nc["total"] <= nq["total"] and c.param_budget == nq["total"]
    phases = sp.model_copy(update={"entangler": "cphase"})  # + one trainable ring phase per qubit and layer
    assert param_counts(QuantumStudent(phases))["circuit"] == quantum_param_count(phases) - 64 - 16 == 2 * 3 * 4 * 4
    ancilla = phases.model_copy(update={"ancillas": 1})  # its wire has rotations and phases, no data
    assert param_counts(QuantumStudent(ancilla))["circuit"] == quantum_param_count(ancilla) - 64 - 16 == 2 * 3 * 5 * 4
    bigger = ClassicalStudent(sp.model_copy(update={"classical_dim": c.params.classical_dim + 1}))
    assert param_counts(bigger)["total"] > nq["total"]  # d is the largest that fits
    logp = c(all_ids(16, 2))
    assert torch.allclose(logp.exp().sum(-1), torch.ones(len(logp)), atol=1e-5)
    torch.nn.functional.nll_loss(logp, torch.zeros(len(logp), dtype=torch.long)).backward()
    assert all(p.grad is not None for p in c.parameters())


def test_post_selection_keeps_the_outcomes_with_every_ancilla_at_zero():
    from qelm_core.lm.student import post_select

    probs = torch.arange(16.0).reshape(2, 8)  # (B, 2^(n+a)), n = 2, a = 1: index = 2 * data + ancilla
    assert torch.equal(post_select(probs, 1), torch.tensor([[0.0, 2, 4, 6], [8, 10, 12, 14]]))
    assert torch.equal(post_select(probs, 2), torch.tensor([[0.0, 4], [8, 12]]))
    assert post_select(probs, 0) is probs
    sp = student_params(n_qubits=3, ancillas=1, engine="fused", log_bias=False)
    model = QuantumStudent(sp, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.circuit_weights.normal_(0, 0.7)
        ids = all_ids(8, 2)
        full = model._qnode(model.angles(ids).double(), model.circuit_weights).reshape(len(ids), 8, 2)
        kept = full[..., 0] / full[..., 0].sum(-1, keepdim=True)  # the distribution given ancilla = 0
        torch.testing.assert_close(model(ids).exp().double(), kept[:, model.basis].double(), atol=1e-6, rtol=0)
        assert (full[..., 1].sum(-1) > 0.01).all()  # the discarded outcomes do carry probability
        torch.testing.assert_close(model.postselect_rate(ids, batch=5), full[..., 0].sum(-1).double(), atol=1e-6, rtol=0)


def test_build_student_is_deterministic():
    params = parse_params({"seed": 7, "student": {"n_qubits": 3, "context": 2, "layers": 2}})
    a, b = build_student(params), build_student(params)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    c = build_student(params.model_copy(update={"seed": 8}))
    assert not torch.equal(a.embedding, c.embedding)
    classical = build_student(parse_params({"student": {"kind": "classical", "n_qubits": 3, "context": 2,
                                                         "layers": 2}}))
    assert isinstance(classical, ClassicalStudent)
    assert param_counts(classical)["total"] <= param_counts(a)["total"]


@pytest.mark.parametrize("kind", ["quantum", "classical"])
def test_default_students_compute_the_same_bits_on_1_and_2_threads(kind):
    """Reproducibility: the default-size students' forward pass and every gradient do not depend on the
    torch thread count a process gets (pool worker, Dask worker, plain run), so neither do the metrics."""
    import hashlib

    from qelm_core.config import Params

    base = Params()
    params = base.model_copy(update={"student": base.student.model_copy(update={"kind": kind})})
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2 ** params.student.n_qubits, (256, params.student.context), generator=g)
    y = torch.randint(0, 2 ** params.student.n_qubits, (256,), generator=g)

    def digest(threads: int) -> str:
        torch.set_num_threads(threads)
        model = build_student(params, torch.arange(1, 2 ** params.student.n_qubits + 1, dtype=torch.float64))
        logp = model(x)
        torch.nn.functional.nll_loss(logp, y).backward()
        h = hashlib.sha256(logp.detach().numpy().tobytes())
        for p in model.parameters():
            h.update(p.grad.numpy().tobytes())
        return h.hexdigest()

    before = torch.get_num_threads()
    try:
        assert digest(1) == digest(2)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kind, entangler, ancillas, embedded", [("quantum", "cz", 0, 0), ("quantum", "cphase", 1, 0),
                                                            ("quantum", "cphase", 0, 5), ("classical", "cz", 0, 0)])
def test_save_load_round_trip(tmp_path, kind, entangler, ancillas, embedded):
    student = {"kind": kind, "n_qubits": 3, "context": 2, "layers": 2, "log_bias": True, "entangler": entangler,
               "ancillas": ancillas, "embedded_tokens": embedded}
    params = parse_params({"seed": 3, "student": student})
    model = build_student(params)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = save_student(model, tmp_path / "student", {"vocab_hash": "abc123"})
    loaded, cfg = load_student(folder)
    assert cfg["vocab_hash"] == "abc123" and cfg["kind"] == kind and cfg["param_counts"] == param_counts(model)
    ids = all_ids(8, 2)
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    save_student(model, folder, {"vocab_hash": "def"})  # overwrite in place
    assert load_student(folder)[1]["vocab_hash"] == "def"


def test_reuploading_student_round_trips_and_older_configs_load_as_encoded_once(tmp_path):
    params = parse_params({"student": {"n_qubits": 3, "context": 2, "layers": 2, "reupload_every": 1}})
    model = build_student(params)
    ids = all_ids(8, 2)
    folder = save_student(model, tmp_path / "student", {})
    loaded, cfg = load_student(folder)
    assert cfg["reupload_every"] == 1 and loaded.spec == model.spec
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    cfg.pop("reupload_every")  # a model saved before the key existed was encoded once per slot
    cfg.pop("ancillas")  # ... and had no ancilla wires
    cfg.pop("embedded_tokens")  # ... and an angle row for every id
    (folder / "config.json").write_text(json.dumps(cfg))
    assert load_student(folder)[0].spec.ops == ansatz(3, 2, 2, "cz").ops


@pytest.fixture
def saved(tmp_path):
    model = QuantumStudent(student_params(log_bias=True))
    return save_student(model, tmp_path / "student", {})


def test_corrupt_or_truncated_file(saved):
    w = saved / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    msg = r"model.safetensors: corrupt or truncated safetensors file \(.*\); re-run `qelm train`"
    with pytest.raises(QelmError, match=msg):
        load_student(saved)
    w.write_bytes(b"\x00garbage")
    with pytest.raises(QelmError, match="corrupt or truncated"):
        load_student(saved)


def test_config_not_matching_weights(saved):
    cfg_path = saved / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "layers": 3}))
    msg = r"weights do not match config.json \(shape circuit_weights \(2, 2, 3, 3\) vs \(2, 3, 3, 3\)\)"
    with pytest.raises(QelmError, match=msg):
        load_student(saved)
    cfg_path.write_text(json.dumps({**cfg, "encoding": "bits", "log_bias": False}))
    with pytest.raises(QelmError, match=r"unexpected \['embedding', 'log_bias'\]"):
        load_student(saved)
    cfg_path.write_text(json.dumps({**cfg, "n_qubits": "three"}))
    with pytest.raises(QelmError, match="invalid student config"):
        load_student(saved)


def test_missing_files(saved, tmp_path):
    (saved / "model.safetensors").unlink()
    with pytest.raises(QelmError, match="model.safetensors: missing"):
        load_student(saved)
    with pytest.raises(QelmError, match="config.json: missing"):
        load_student(tmp_path / "nowhere")


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_never_executed(saved, tmp_path):
    live = tmp_path / "live-marker"
    pickle.loads(pickle.dumps(_Payload(live)))
    assert live.exists()  # the payload is real

    marker = tmp_path / "marker"
    (saved / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(QelmError, match="corrupt or truncated"):
        load_student(saved)
    torch.save({"x": _Payload(marker)}, saved / "model.safetensors")  # a torch.save zip is pickle too
    with pytest.raises(QelmError, match="corrupt or truncated"):
        load_student(saved)
    assert not marker.exists()


@pytest.mark.parametrize("ancillas", [0, 1])
def test_same_weights_on_aer_statevector(ancillas):
    model = QuantumStudent(student_params(log_bias=True, ancillas=ancillas), generator=torch.Generator().manual_seed(4))
    ids = all_ids(8, 2, extra=0)[:4]
    exact = predict_probs(model, ids, DeviceParams())
    with torch.no_grad():
        assert torch.allclose(exact, model(ids).exp().double(), atol=1e-6)
    aer = predict_probs(model, ids, DeviceParams(name="qiskit.aer"))
    assert torch.allclose(exact, aer, atol=1e-6)


@pytest.mark.parametrize("ancillas", [0, 1])
def test_same_weights_on_noisy_fake_backend(ancillas):
    sp = StudentParams(n_qubits=2, context=1, layers=1, ancillas=ancillas)  # ancilla: shots with it at 1 are discarded
    model = QuantumStudent(sp, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model.circuit_weights.normal_(0, 0.8, generator=torch.Generator().manual_seed(6))
    ids = torch.tensor([[0], [1], [3]])
    exact = predict_probs(model, ids, DeviceParams())
    noisy = predict_probs(model, ids, DeviceParams(name="qiskit.remote", backend="FakeManilaV2"), shots=4000, seed=11)
    assert noisy.shape == (3, 4) and torch.allclose(noisy.sum(-1), torch.ones(3, dtype=torch.float64))
    total_variation = 0.5 * (exact - noisy).abs().sum(-1)
    assert (total_variation < 0.15).all(), total_variation


def test_predict_probs_classical():
    model = ClassicalStudent(student_params())
    ids = all_ids(8, 2)
    probs = predict_probs(model, ids, DeviceParams(name="qiskit.aer"))
    assert probs.dtype == torch.float64 and torch.allclose(probs.sum(-1), torch.ones(len(ids), dtype=torch.float64))


@pytest.mark.parametrize("encoding, entangler, ancillas", [("embedding", "cz", 0), ("bits", "cz", 0),
                                                          ("embedding", "cphase", 0), ("embedding", "cphase", 1)])
@pytest.mark.parametrize("n_qubits", [4, 8])
def test_fused_engine_matches_pennylane_student(n_qubits, encoding, entangler, ancillas):
    sp = student_params(n_qubits=n_qubits, encoding=encoding, log_bias=True, entangler=entangler, ancillas=ancillas)
    slow = QuantumStudent(sp, generator=torch.Generator().manual_seed(7))
    fast = QuantumStudent(sp.model_copy(update={"engine": "fused"}))
    g = torch.Generator().manual_seed(10)  # not the global generator: the values must not depend on test order
    with torch.no_grad():
        slow.circuit_weights.normal_(0, 0.5, generator=g)
        slow.log_bias.normal_(0, 0.3, generator=g)
    fast.load_state_dict(slow.state_dict())
    ids = torch.randint(0, 2**n_qubits, (32, 2), generator=torch.Generator().manual_seed(8))
    targets = torch.randint(0, 2**n_qubits, (32,), generator=torch.Generator().manual_seed(9))
    losses = []
    for model in (slow, fast):
        logp = model(ids)
        loss = torch.nn.functional.nll_loss(logp, targets)
        loss.backward()
        losses.append((logp.detach(), loss.item()))
    assert torch.allclose(losses[0][0].exp(), losses[1][0].exp(), atol=1e-5)
    assert losses[0][1] == pytest.approx(losses[1][1], abs=1e-5)
    for (name, a), (_, b) in zip(slow.named_parameters(), fast.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5), name  # complex64 vs complex128


def test_fused_engine_refuses_a_sampling_device():
    with pytest.raises(QelmError, match="student.engine: fused"):
        QuantumStudent(student_params(engine="fused"), DeviceParams(name="qiskit.aer", shots=100))
