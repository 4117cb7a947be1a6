"""Model files: loading (:mod:`~tepo_agent.model.io`), the embedded default model
(:mod:`~tepo_agent.model.default`) and LoRA adapter merging (:mod:`~tepo_agent.model.lora`).

Nothing is imported here: each module loads torch/transformers only when it is imported itself.
"""
