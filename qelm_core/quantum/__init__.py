"""The quantum parts: the ansatz as one gate list (circuits), the fused statevector engine, device names, the hardware cost report."""
