"""The tied read-out (student.readout: tied): overlaps with the tokens' own product states, on the fused
engine and as compute-uncompute circuits on PennyLane devices."""
import json
import math

import pytest
import torch

from qelm_core.config import DeviceParams, StudentParams
import qelm_core.lm.student as student_module
from qelm_core.lm.student import (QuantumStudent, load_student, native_bfloat16, overlaps_squared, predict_probs,
                                  product_states, quantum_param_count, save_student)
from tests.lm.test_student import all_ids, student_params


def tied_student(ancillas=0, seed=0, **kw):
    sp = student_params(engine="fused", entangler="cphase", readout="tied", ancillas=ancillas, **kw)
    model = QuantumStudent(sp, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # away from the near-identity init, so every entry matters
        model.circuit_weights.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed + 1))
        model.embedding.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed + 2))
        model.log_bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed + 3))
    return model


def test_product_states_are_the_kronecker_products_of_single_qubit_states():
    theta = torch.tensor([[0.3, -1.2, 2.0], [math.pi, 0.0, math.pi]], dtype=torch.float64)
    phi = product_states(theta)  # (2, 8)
    for row, t in zip(phi, theta):
        ref = torch.ones(1, dtype=torch.float64)
        for q in t:
            ref = torch.kron(ref, torch.stack([torch.cos(q / 2), torch.sin(q / 2)]))
        torch.testing.assert_close(row, ref)
    assert phi[1].argmax() == 0b101 and phi[1].abs().max() == pytest.approx(1)  # pi * bits -> that basis state


def test_tied_log_bias_starts_at_the_counted_unigram_and_the_basis_one_at_zero():
    counts = torch.tensor([500.0, 120, 40, 40, 9, 3, 0, 1])
    tied = QuantumStudent(student_params(engine="fused", entangler="cphase", readout="tied"), unigram_counts=counts)
    expected = torch.log(counts.double() + 1)
    torch.testing.assert_close(tied.log_bias.detach().double(), expected - expected.mean(), atol=1e-6, rtol=0)
    with torch.no_grad():  # so the init prefers the frequent ids whatever the context
        assert (tied(all_ids(8, 2)).exp().mean(0).argsort(descending=True)[:2] == torch.tensor([0, 1])).all()
    basis = QuantumStudent(student_params(engine="fused", entangler="cphase"), unigram_counts=counts)
    assert torch.equal(basis.log_bias.detach(), torch.zeros(8))
    assert torch.equal(QuantumStudent(student_params(engine="fused", entangler="cphase", readout="tied")).log_bias.detach(),
                       torch.zeros(8))  # no counts: zeros (what a loaded model is overwritten from anyway)


def test_training_steps_take_the_overlaps_in_bfloat16_and_evaluation_in_float32():
    model = tied_student(seed=7, n_qubits=6, layers=2)
    model.train_overlaps = "bfloat16"  # forced: "auto" takes it only where the CPU has it natively (below)
    ids, targets = torch.randint(0, 64, (32, 2), generator=torch.Generator().manual_seed(0)), torch.arange(32)
    model.eval()
    with torch.no_grad():
        exact = model(ids)
    torch.testing.assert_close(model(ids), exact)  # eval mode: float32, with or without gradients
    grads = {}
    for mode in ("eval", "train"):
        getattr(model, mode)()
        model.zero_grad()
        logp = model(ids)
        torch.nn.functional.nll_loss(logp, targets).backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert not torch.equal(logp, exact)  # train mode rounds the overlaps' inputs to bfloat16 ...
    torch.testing.assert_close(logp.exp(), exact.exp(), atol=2e-3, rtol=0)  # ... and stays close
    assert torch.nn.functional.cosine_similarity(grads["train"], grads["eval"], 0) > 0.999
    psi = torch.randn(4, 64, dtype=torch.complex64)
    theta = torch.randn(64, 6)
    phi, low = product_states(theta), product_states(theta, torch.bfloat16)
    assert low.dtype == torch.bfloat16 and not torch.equal(low.float(), phi)
    torch.testing.assert_close(low.float(), phi, rtol=0.01, atol=0.004)
    torch.testing.assert_close(overlaps_squared(psi, low, torch.bfloat16), overlaps_squared(psi, phi), rtol=0.05, atol=0.02)


@pytest.mark.parametrize("native", [True, False])
def test_training_steps_take_bfloat16_only_where_the_device_has_it(monkeypatch, native):
    # emulated bfloat16 (an AVX2 CPU) multiplies ~5x slower than float32: there a step stays in float32
    monkeypatch.setattr(student_module, "native_bfloat16", lambda device: native)
    model = tied_student(seed=7, n_qubits=6, layers=2)
    ids = torch.randint(0, 64, (32, 2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = model.eval()(ids)
    assert model.train().train_overlaps == "auto"
    assert torch.equal(model(ids), exact) is not native
    assert native_bfloat16("cpu") in (True, False) and native_bfloat16("meta") is False


def test_training_overlap_mode_is_checked():
    model = tied_student(seed=7, n_qubits=6, layers=2)
    model.train_overlaps = "fp16"
    with pytest.raises(ValueError, match="train_overlaps must be one of"):
        model(torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("ancillas", [0, 1])
def test_tied_readout_is_a_distribution_with_every_gradient(ancillas):
    model = tied_student(ancillas)
    ids = all_ids(8, 2)
    logp = model(ids)
    assert logp.shape == (len(ids), 8) and torch.allclose(logp.exp().sum(-1), torch.ones(len(ids)), atol=1e-5)
    only_read = torch.tensor([[0, 1]] * 4)  # ids 2..7 never appear as context: their rows learn from the read-out
    targets = torch.tensor([2, 5, 7, 3])
    torch.nn.functional.nll_loss(model(only_read), targets).backward()
    assert set(dict(model.named_parameters())) == {"circuit_weights", "embedding", "log_bias"}
    for name, p in model.named_parameters():
        assert (p.grad.abs() > 1e-9).all(), f"{name} has dead entries: {p.grad}"
    assert sum(p.numel() for p in model.parameters()) == quantum_param_count(model.params)  # no new parameters


@pytest.mark.parametrize("ancillas", [0, 1])
def test_tied_readout_equals_compute_uncompute_circuits(ancillas):
    """The fused overlaps |<phi_x|psi>|^2 are the all-zeros probabilities of PennyLane circuits that append
    RY(-theta_x) (what hardware runs), on default.qubit and sampled on Aer."""
    model = tied_student(ancillas, seed=3)
    ids = all_ids(8, 2, extra=0)[:3]
    exact = predict_probs(model, ids, DeviceParams())
    with torch.no_grad():
        torch.testing.assert_close(model(ids).exp().double(), exact, atol=1e-6, rtol=0)
    sampled = predict_probs(model, ids, DeviceParams(name="qiskit.aer"), shots=20000, seed=2)
    assert sampled.shape == (3, 8) and (0.5 * (sampled - exact).abs().sum(-1) < 0.1).all()


def test_tied_readout_on_a_noisy_fake_backend():
    sp = StudentParams(n_qubits=3, context=1, layers=1, entangler="cphase", readout="tied")
    model = QuantumStudent(sp, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model.embedding.normal_(0, 1.0, generator=torch.Generator().manual_seed(6))
    ids = torch.tensor([[0], [5]])
    exact = predict_probs(model, ids, DeviceParams())
    noisy = predict_probs(model, ids, DeviceParams(name="qiskit.remote", backend="FakeManilaV2"), shots=4000, seed=11)
    assert noisy.shape == (2, 8) and torch.allclose(noisy.sum(-1), torch.ones(2, dtype=torch.float64))
    assert (0.5 * (exact - noisy).abs().sum(-1) < 0.2).all()


def test_tied_readout_needs_embedding_rows_and_the_fused_engine():
    for bad in ({"encoding": "bits", "entangler": "cz"}, {"engine": "pennylane"}):
        with pytest.raises(ValueError, match="readout: tied needs encoding: embedding"):
            StudentParams(readout="tied", **bad)


def test_tied_student_round_trips_and_older_configs_load_as_basis_readout(tmp_path):
    model = tied_student(1, seed=4, embedded_tokens=5)
    folder = save_student(model, tmp_path / "tied", {})
    loaded, cfg = load_student(folder)
    ids = all_ids(8, 2)
    assert cfg["readout"] == "tied"
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    cfg.pop("readout")  # a model saved before the key existed read out basis states
    (folder / "config.json").write_text(json.dumps(cfg))
    assert load_student(folder)[0].params.readout == "basis"
