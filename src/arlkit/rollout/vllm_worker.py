"""Runs inside the vLLM server process (its own virtualenv): a worker extension that reloads the policy's
weights from a safetensors folder the trainer wrote. It imports only torch and vllm, never the rest of arlkit.

The server is started with `--worker-extension-cls arlkit.rollout.vllm_worker.WeightSync` and arlkit's source
folder on PYTHONPATH; arlkit then calls `/collective_rpc` with method `arlkit_load_weights` (vLLM's dev-mode
endpoint, VLLM_SERVER_DEV_MODE=1).

Why not vLLM's own `reload_weights` alone: on the CPU worker a module that keeps its weight next to a packed
copy for the GEMM kernel (the output head, tied to the embedding) is not re-packed by the in-place reload, so
the engine kept serving the old logits (max logprob difference 0.75 after a 0.02-noise update, measured).
Re-running the CPU GEMM dispatch on those modules after the reload makes the served logprobs exact again.
"""

from __future__ import annotations


class WeightSync:
    """Mixed into vLLM's worker class by `--worker-extension-cls`; `self` is the worker."""

    def arlkit_load_weights(self, path: str) -> dict:
        """Load every tensor in the safetensors files under `path` (checkpoint names), then re-pack the CPU
        modules whose packed copy the reload leaves stale. Returns what was re-packed, for the caller's log."""
        self.reload_weights(weights_path=path)  # type: ignore[attr-defined]
        return {"repacked": self._repack_cpu_modules()}

    def _repack_cpu_modules(self) -> list[str]:
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        repacked = []
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            # `cpu_linear` marks a module dispatched by the CPU platform; a non-empty weight means the module
            # kept it (remove_weight=False), so its packed copy was built from the weights before the reload
            if hasattr(module, "cpu_linear") and weight is not None and weight.numel() > 0:
                from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

                dispatch_cpu_unquantized_gemm(module, remove_weight=False)
                repacked.append(name)
        return repacked
