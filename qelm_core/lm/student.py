"""Student next-token models: the quantum Born machine and its parameter-matched classical baseline.

Common interface: `forward(context_ids (B, k) long) -> log_probs (B, V)`, V = 2^n_qubits, each row
the log of a distribution that sums to 1. Vocabulary ids are sorted by descending train frequency and
id 0 is the OTHER bucket (the most frequent).

Vocabulary -> basis states: id i is read out from basis state `basis[i]`, a fixed permutation computed
from train data by `qelm assign` (qelm_core/lm/basis.py; default: balanced bisection on left contexts,
so tokens that share a bit prefix follow similar contexts). It is a buffer saved with the weights.

Weights are saved as safetensors + config.json (never pickle); see save_student / load_student.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn as nn

from qelm_core.lm.basis import hamming_order
from qelm_core.quantum.circuits import ansatz, build_qnode
from qelm_core.config import ConfigError, DeviceParams, Params, QelmError, StudentParams
from qelm_core.quantum.devices import diff_method_for, is_exact_simulator, make_device
from qelm_core.quantum.fused import compile_fused
from qelm_core.weights import CONFIG_FILE, WEIGHTS_FILE, load_matching, read_folder, save_folder

STUDENT_KEYS = ("n_qubits", "context", "layers", "reupload_every", "ancillas", "encoding", "embedded_tokens", "log_bias",
                "assignment", "entangler", "engine", "classical_dim", "readout")  # what config.json records to rebuild it
ADDED_KEYS = {"reupload_every": 0, "ancillas": 0, "embedded_tokens": 0, "readout": "basis"}  # older models behave so
PROB_FLOOR = 1e-12  # probabilities are floored before the log so the NLL stays finite
OVERLAP_MODES = ("auto", "float32", "bfloat16")  # QuantumStudent.train_overlaps
FORMAT = "qelm-student/2"  # /2: the basis map is saved with the weights


def basis_bits(basis: torch.Tensor, n_qubits: int) -> torch.Tensor:
    """(V,) basis states -> (V, n) float: bit of wire q (wire 0 = most significant) of each id's state."""
    shifts = torch.arange(n_qubits - 1, -1, -1, device=basis.device)
    return ((basis[:, None] >> shifts) & 1).to(torch.float32)


def product_states(theta: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(V, n) angles -> (V, 2^n) real amplitudes of ⊗_q RY(theta_q)|0> (wire 0 most significant), as the
    Kronecker product of the two halves' states (recursively): one pass over the (V, 2^n) output, not n.
    `dtype`: of that last product (default theta's); bfloat16 halves the output's memory traffic forward
    and backward instead of rounding a float32 one (n = 12, batch 256: the tied overlaps' step 1.4x faster)."""
    n = theta.shape[1]
    if n <= 1:
        half = theta / 2
        return torch.cat([torch.cos(half), torch.sin(half)], -1) if n else theta.new_ones(len(theta), 1)
    head, tail = product_states(theta[:, : n // 2]), product_states(theta[:, n // 2:])
    dtype = dtype or head.dtype
    return (head.to(dtype)[:, :, None] * tail.to(dtype)[:, None, :]).flatten(1)


def overlaps_squared(psi: torch.Tensor, phi: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """psi (B, 2^n) complex, phi (V, 2^n) real -> (B, V) |<phi_x|psi>|^2, as one real matmul of the
    real and imaginary parts stacked ((2B, 2^n) @ (2^n, V): half the work of a complex matmul), its inputs
    in `dtype` (default: psi's real type; the result always in it). bfloat16 runs ~2x faster on CPUs with
    AVX512-BF16, ~5x slower without (`native_bfloat16`); n = 12: test perplexity of a trained student
    100.2174 vs 100.2186, gradients 0.5 % apart."""
    parts = torch.view_as_real(psi).transpose(-1, -2).reshape(2 * len(psi), -1)  # (2B, 2^n): re, im rows
    dtype = dtype or parts.dtype
    amp = (parts.to(dtype) @ phi.to(dtype).T).to(parts.dtype).reshape(len(psi), 2, -1)  # (B, 2, V)
    return amp.square().sum(1)


@functools.lru_cache
def native_bfloat16(device: torch.device | str) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (torch's own checks). Elsewhere torch emulates bfloat16, much slower than float32 (an
    AVX2 CPU, AMD EPYC Zen 3, 2 threads: a (512, 4096) x (4096, 4096) product 1.39 s vs 0.26 s)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def quantum_param_count(sp: StudentParams) -> int:
    V, n = 2**sp.n_qubits, sp.n_qubits
    embedding = (sp.embedded_tokens or V) * n if sp.encoding == "embedding" else 0
    per_qubit = 4 if sp.entangler == "cphase" else 3  # Y-Z-Y angles (+ the ring phase of pair (q, q+1))
    return embedding + sp.context * sp.layers * (n + sp.ancillas) * per_qubit + (V if sp.log_bias else 0)


def post_select(probs: torch.Tensor, ancillas: int) -> torch.Tensor:
    """(..., 2^(n+a)) -> (..., 2^n): the outcomes (probabilities, or amplitudes of a state) whose a ancilla
    wires (the last, least significant bits) read 0. Not renormalised: the student's log_softmax (or
    predict_probs) does that, which is what discarding the other shots does on hardware."""
    return probs if not ancillas else probs.unflatten(-1, (-1, 2**ancillas))[..., 0]


def _check_ids(context_ids: torch.Tensor, context: int, vocab: int) -> None:
    if context_ids.ndim != 2 or context_ids.shape[1] != context:
        raise QelmError(f"student: expected context ids of shape (batch, {context}), got {tuple(context_ids.shape)}")
    if context_ids.numel() and (int(context_ids.min()) < 0 or int(context_ids.max()) >= vocab):
        raise QelmError(
            f"student: token ids must be in [0, {vocab}); the data was prepared for another vocabulary size"
        )


class QuantumStudent(nn.Module):
    """Born machine p(next | context) = |<basis[next]|U(context)|0>|^2 (times exp(log_bias), renormalised).

    Encoding: "embedding" = a trainable (K, n) table of RY angles for ids 0..K-1 (K = embedded_tokens,
    default all V; ids are frequency-sorted, so these are the K most frequent); the rarer ids enter as
    "bits" do. Init: N(0, s_i) with s_i from 0.05 (most frequent id) to 0.5 (rarest), rank taken from
    `unigram_counts` if given, else from the id. Frequent contexts therefore start near |0...0>, so with
    the near-identity layers the init distribution favours id 0 and the low-Hamming-weight (frequent)
    ids; rarer ids get larger angles so that different contexts are distinguishable from step 0.
    "bits" = fixed angles pi * bit_q of the token's basis state (the same map as the output; with the
    meaning assignment, tokens that follow similar contexts share a prefix: a code without parameters).
    `ancillas` = a > 0: a more wires without data; the distribution is the outcomes with every ancilla
    at 0, renormalised (post-selection: on hardware, the other shots are discarded).
    Read-out "tied" (instead of "basis"): p(x | c) ∝ |<phi_x|psi_c>|^2 exp(log_bias_x) with
    phi_x = ⊗ RY(theta_x)|0> built from x's own angle row, the one that encodes x as context: the
    quantum counterpart of the log-bilinear twin's tied embedding (one vector per token to read the context
    and to score the next token), with no new parameters. The phi_x are not orthogonal, so the overlaps are
    renormalised like the bias; a training step (train mode, gradients on) takes the overlaps in bfloat16
    where the device multiplies it natively (`native_bfloat16`; `train_overlaps` = "auto", or "float32" /
    "bfloat16" to force one), evaluation always in float32. Cost O(V 2^n) per example (a (B, 2^n) x
    (2^n, V) product); on hardware one compute-uncompute circuit per candidate (`predict_probs`), V
    circuits per position instead of one.
    Circuit weights (context, layers, n + a, 3) ~ N(0, 0.02): near identity (entangler cphase: a 4th entry
    per qubit, the ring phase, ~ pi + N(0, 0.02): starts as the CZ ring). `basis` (V,): the read-out map
    (default: Hamming order, basis.hamming_order). `log_bias` (V,) is added to the log-probs before
    renormalising (a classical correction, counted as such); zeros at init, with the tied read-out and
    `unigram_counts` the centred log(count + 1) (Adam moves an entry ~lr a step, so from zeros the
    unigram's spread of ~8 nats takes hundreds of steps; README: Results).
    """

    def __init__(self, params: StudentParams, device_params: DeviceParams | None = None,
                 unigram_counts: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 basis: torch.Tensor | None = None):
        super().__init__()
        self.params = params
        self.device_params = device_params or DeviceParams()
        if params.engine == "fused" and not is_exact_simulator(self.device_params):
            raise ConfigError(f"student.engine: fused simulates the circuit itself and cannot run on "
                              f"{self.device_params.name} (shots={self.device_params.shots}); set student.engine: pennylane")
        n, V = params.n_qubits, 2**params.n_qubits
        self.spec = ansatz(n, params.context, params.layers, params.entangler, params.reupload_every, params.ancillas)
        basis = torch.as_tensor(hamming_order(n) if basis is None else basis, dtype=torch.long)
        if sorted(basis.tolist()) != list(range(V)):
            raise QelmError(f"student: basis must be a permutation of the {V} basis states")
        self.register_buffer("basis", basis.clone())  # (V,) saved with the weights
        counts = None if unigram_counts is None else torch.as_tensor(unigram_counts, dtype=torch.float64).flatten()
        if counts is not None and counts.numel() != V:
            raise QelmError(f"student: unigram_counts has {counts.numel()} entries, expected {V}")
        if params.encoding == "embedding":
            if counts is not None:
                rank = torch.argsort(torch.argsort(-counts, stable=True)).to(torch.float32)
            else:
                rank = torch.arange(V, dtype=torch.float32)
            std = 0.05 + 0.45 * rank / max(V - 1, 1)  # (V,)
            rows = params.embedded_tokens or V
            self.embedding = nn.Parameter((torch.randn(V, n, generator=generator) * std[:, None])[:rows])  # (K, n)
        else:
            self.embedding = None
        self.register_buffer("bit_angles", math.pi * basis_bits(self.basis, n), persistent=False)  # (V, n)
        weights = 0.02 * torch.randn(self.spec.weight_shape, generator=generator)
        if params.entangler == "cphase":
            weights[..., 3] += math.pi  # start as the CZ ring
        self.circuit_weights = nn.Parameter(weights)
        self.train_overlaps = "auto"  # dtype of the tied overlaps in a training step (circuit_probs)
        self.log_bias = nn.Parameter(torch.zeros(V)) if params.log_bias else None
        if self.log_bias is not None and params.readout == "tied" and counts is not None:
            with torch.no_grad():  # counted: the model starts near the unigram instead of spending steps learning it
                counted = torch.log(counts + 1)
                self.log_bias.copy_(counted - counted.mean())

        if params.engine == "fused":  # same spec, own statevector code: ~10x faster than default.qubit
            readout = "state" if params.readout == "tied" else "probs"
            self._qnode = compile_fused(self.spec, dtype=torch.complex64, readout=readout)
        else:
            dev = make_device(self.device_params, self.spec.n_qubits, shots=self.device_params.shots)
            diff = diff_method_for(self.device_params, training=True)
            self._qnode = build_qnode(self.spec, dev, diff, shots=self.device_params.shots)

    @property
    def vocab_size(self) -> int:
        return 2**self.params.n_qubits

    def angle_table(self) -> torch.Tensor:
        """(V, n) RY angles of every id: the embedding's row, or the id's bits past its K rows."""
        if self.embedding is None:
            return self.bit_angles
        if len(self.embedding) == self.vocab_size:
            return self.embedding
        return torch.cat([self.embedding, self.bit_angles[len(self.embedding):]])

    def angles(self, context_ids: torch.Tensor) -> torch.Tensor:
        """(B, k) ids -> (B, k, n) RY angles."""
        return self.angle_table()[context_ids]

    def _born(self, angles: torch.Tensor) -> torch.Tensor:
        """(B, k, n) -> (B, 2^(n+a)) basis-state probabilities of the circuit."""
        out = self._qnode(angles, self.circuit_weights)
        return out.real.square() + out.imag.square() if out.is_complex() else out

    def circuit_probs(self, context_ids: torch.Tensor) -> torch.Tensor:
        """(B, k) -> (B, V) circuit scores in vocabulary order (no log_bias): the basis-state probabilities,
        or with the tied read-out the overlaps |<phi_x|psi>|^2 (which do not sum to 1)."""
        _check_ids(context_ids, self.params.context, self.vocab_size)
        table = self.angle_table()  # (V, n)
        out = post_select(self._qnode(table[context_ids].to(torch.float64), self.circuit_weights), self.params.ancillas)
        if self.params.readout == "tied":  # out: the (B, V) complex state with every ancilla at 0
            # training steps in bfloat16 where it is native (~2x faster overlaps); evaluation in float32
            if self.train_overlaps not in OVERLAP_MODES:
                raise ValueError(f"train_overlaps must be one of {OVERLAP_MODES}, got {self.train_overlaps!r}")
            mode = self.train_overlaps if self.training and torch.is_grad_enabled() else "float32"
            low = mode == "bfloat16" or (mode == "auto" and native_bfloat16(out.device))
            dtype = torch.bfloat16 if low else None
            return overlaps_squared(out, product_states(table, dtype), dtype)  # (B, V) vocab order
        return out[..., self.basis]  # (B, V) probabilities in basis order -> vocab order

    @torch.no_grad()
    def postselect_rate(self, context_ids: torch.Tensor, batch: int = 2048) -> torch.Tensor:
        """(B, k) -> (B,) probability that every ancilla reads 0: the share of hardware shots kept (1 without)."""
        _check_ids(context_ids, self.params.context, self.vocab_size)
        rates = [post_select(self._born(self.angles(c).to(torch.float64)), self.params.ancillas).sum(-1)
                 for c in context_ids.split(batch)]
        return torch.cat(rates).to(torch.float64) if rates else torch.zeros(0, dtype=torch.float64)

    def forward(self, context_ids: torch.Tensor) -> torch.Tensor:
        logp = torch.log(self.circuit_probs(context_ids).clamp_min(PROB_FLOOR))  # (B, V)
        if self.log_bias is not None:
            logp = logp + self.log_bias
        return torch.log_softmax(logp, dim=-1).to(self.circuit_weights.dtype)  # renormalise (floor, bias)


def classical_count(d: int, vocab: int, context: int) -> int:
    """Trainable parameters of the log-bilinear student: E (V, d) + C (k, d, d) + c (d) + b (V)."""
    return vocab * d + context * d * d + d + vocab


def classical_dim_for(n_params_target: int, vocab: int, context: int) -> int:
    """Largest d >= 1 whose log-bilinear parameter count is <= target."""
    d = 1
    while classical_count(d + 1, vocab, context) <= n_params_target:
        d += 1
    return d


class ClassicalStudent(nn.Module):
    """Log-bilinear baseline (Mnih & Hinton): h = sum_j C_j e(w_j) + c, logits = E h + b.

    One embedding table E (V, d) serves as input and output embedding (tied), so a small d still
    gets a full-rank-V output; it is the strongest small classical model we know at this size,
    which is what an honest baseline should be. d = params.classical_dim, or if 0 the largest d
    whose trainable count is <= `n_params_target` (the quantum student's count); both counts are
    kept (`param_budget`, `param_counts(model)`).
    """

    def __init__(self, params: StudentParams, n_params_target: int | None = None, generator: torch.Generator | None = None):
        super().__init__()
        V, k = 2**params.n_qubits, params.context
        target = n_params_target if n_params_target is not None else quantum_param_count(params)
        d = params.classical_dim or classical_dim_for(target, V, k)
        self.params = params.model_copy(update={"classical_dim": d})
        self.param_budget = target
        self.embedding = nn.Parameter(0.1 * torch.randn(V, d, generator=generator))  # (V, d) in and out
        self.context_maps = nn.Parameter(torch.randn(k, d, d, generator=generator) / math.sqrt(d))  # (k, d, d)
        self.hidden_bias = nn.Parameter(torch.zeros(d))  # (d,)
        self.output_bias = nn.Parameter(torch.zeros(V))  # (V,)

    @property
    def vocab_size(self) -> int:
        return 2**self.params.n_qubits

    def forward(self, context_ids: torch.Tensor) -> torch.Tensor:
        _check_ids(context_ids, self.params.context, self.vocab_size)
        e = self.embedding[context_ids]  # (B, k, d)
        h = torch.einsum("bkd,kde->be", e, self.context_maps) + self.hidden_bias  # (B, d)
        return torch.log_softmax(h @ self.embedding.T + self.output_bias, dim=-1)  # (B, V)


def param_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters by role: embedding tables, circuit angles, classical rest (bias, head)."""
    out = {"embedding": 0, "circuit": 0, "classical": 0}
    for name, p in model.named_parameters():
        if p.requires_grad:
            role = next((r for r in ("embedding", "circuit") if name.startswith(r)), "classical")
            out[role] += p.numel()
    out["total"] = sum(out.values())
    return out


def build_student(params: Params, unigram_counts: torch.Tensor | None = None,
                  basis: torch.Tensor | None = None) -> nn.Module:
    """The student named by params.student, deterministically initialised from params.seed."""
    g = torch.Generator().manual_seed(params.seed)
    sp = params.student
    if sp.kind == "quantum":
        model = QuantumStudent(sp, params.device, unigram_counts, generator=g, basis=basis)
    else:
        model = ClassicalStudent(sp, quantum_param_count(sp), generator=g)
    return model.to(params.device.torch_device)


@torch.no_grad()
def predict_probs(model: nn.Module, context_ids: torch.Tensor, device_params: DeviceParams,
                  shots: int | None = None, seed: int | None = None) -> torch.Tensor:
    """(B, k) -> (B, V) float64 probabilities of the SAME trained weights evaluated on any device.

    Quantum: the circuit is rebuilt on `device_params` (e.g. qiskit.aer, or qiskit.remote with a fake
    noisy backend and shots); PennyLane splits the batch into per-sample circuits where the device
    cannot broadcast. Sampled zeros stay zero (smoothing is the evaluator's business).
    Classical: the device is irrelevant; exp of the forward pass.
    Tied read-out: V compute-uncompute circuits per context (`build_qnode(uncompute=True)`, broadcast over
    the candidates); each candidate's score is its circuit's all-zeros probability, sampled with `shots`.
    """
    if not isinstance(model, QuantumStudent):
        return model(context_ids).exp().to(torch.float64)
    _check_ids(context_ids, model.params.context, model.vocab_size)
    diff_method_for(device_params, training=False)  # validates the device name and an explicit diff_method
    dev = make_device(device_params, model.spec.n_qubits, shots=shots, seed=seed)
    tied = model.params.readout == "tied"
    qnode = build_qnode(model.spec, dev, diff_method=None, shots=shots, uncompute=tied)
    angles = model.angles(context_ids).to(torch.float64).cpu()  # (B, k, n)
    weights = model.circuit_weights.to(torch.float64).cpu()
    if tied:  # (B, V) vocab order: all-zeros probability of the circuit uncomputing each candidate's row
        table = model.angle_table().to(torch.float64).cpu()  # (V, n)
        probs = torch.stack([qnode(a.expand(len(table), *a.shape), weights, table)[:, 0] for a in angles]) \
            if len(angles) else torch.zeros(0, len(table), dtype=torch.float64)
    else:
        probs = qnode(angles, weights).reshape(len(context_ids), -1)
        probs = post_select(probs, model.params.ancillas)[:, model.basis.cpu()]  # (B, V) vocab order
    if model.log_bias is not None:
        bias = model.log_bias.to(torch.float64).cpu()
        probs = probs * (bias - bias.max()).exp()  # same as adding it to the log-probs; no overflow
    return probs / probs.sum(-1, keepdim=True).clamp_min(1e-300)  # every shot discarded: a zero row


# ---------------------------------------------------------------- save / load (safetensors, no pickle)

def _core_config(model: nn.Module) -> dict:
    sp = model.params
    kind = "quantum" if isinstance(model, QuantumStudent) else "classical"
    cfg = {"format": FORMAT, "kind": kind, **{k: getattr(sp, k) for k in STUDENT_KEYS},
           "param_counts": param_counts(model)}
    if kind == "classical":
        cfg["param_budget"] = model.param_budget  # the quantum count it was matched to
    return cfg


def save_student(model: nn.Module, folder: str | Path, extra_config: dict | None = None) -> Path:
    """Write folder/model.safetensors (+ the basis buffer) + folder/config.json (weights.py), atomically."""
    cfg = _core_config(model)
    clash = set(cfg) & set(extra_config or {})
    if clash:
        raise ValueError(f"extra_config may not override {sorted(clash)}")
    return save_folder(folder, model, {**cfg, **(extra_config or {})}, FORMAT)


def load_student(folder: str | Path, device_params: DeviceParams | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the student from config.json and load its safetensors weights -> (model, config).
    Every failure is a QelmError with one line (weights.py)."""
    fix = "re-run `qelm train`"
    cfg, state = read_folder(folder, FORMAT, fix)
    cfg_path = Path(folder) / CONFIG_FILE
    try:
        sp = StudentParams(**{k: cfg[k] if k in cfg or k not in ADDED_KEYS else ADDED_KEYS[k]
                              for k in ("kind", *STUDENT_KEYS)})
    except KeyError as err:
        raise QelmError(f"{cfg_path}: missing key {err}; {fix}") from None
    except ValueError as err:  # pydantic ValidationError
        raise QelmError(f"{cfg_path}: invalid student config ({str(err).splitlines()[0]}); {fix}") from None
    if sp.kind == "quantum":
        basis = state.get("basis")
        if basis is not None and (basis.shape != (2**sp.n_qubits,) or
                                  sorted(basis.tolist()) != list(range(2**sp.n_qubits))):
            raise QelmError(f"{Path(folder) / WEIGHTS_FILE}: basis is not a permutation of the "
                            f"{2**sp.n_qubits} basis states; {fix}")
        model = QuantumStudent(sp, device_params or DeviceParams(), basis=basis)  # basis first: bits encoding
    else:
        model = ClassicalStudent(sp, cfg.get("param_budget", 0))
    return load_matching(model, state, folder, fix), cfg


def noisy_subset(model, contexts, targets, positions: int, device_params, shots: int, eps: float, seed: int):
    """Evaluate the same weights on sampled, noisy hardware (a fake IBM backend) on `positions` test
    positions drawn with `seed`; returns (smoothed noisy probs, exact probs, targets, zero-prob count, positions)."""
    import numpy as np

    from qelm_core.lm.evaluate import model_probs, smooth, target_probs

    pick = torch.from_numpy(np.random.default_rng(seed).choice(len(targets), size=positions, replace=False))
    noisy = predict_probs(model, contexts[pick], device_params, shots=shots, seed=seed).numpy()
    exact = model_probs(model, contexts[pick])
    tgt = np.asarray(targets)[pick.numpy()]
    zeros = int((target_probs(noisy, tgt) == 0).sum())
    return smooth(noisy, eps), exact, tgt, zeros, pick.numpy()
