"""Exact per-token entropy and the sampled token's logprob, computed where vLLM samples.

Runs inside the vLLM server's processes (engine core and workers), never in tepo-agent.

A request opts in with ``"vllm_xargs": {"tepo_entropy": 1}`` (``SamplingParams.extra_args``).
For such requests the server returns, in the non-streaming completion response,
``"kv_transfer_params": {"tepo_entropy": [H_1, ..., H_T], "tepo_logprob": [l_1, ..., l_T]}``:
the exact entropy of the raw distribution (temperature 1, before penalties and logits
processors, like ``raw_logprobs``) at each of the T generated tokens, in nats, and the sampled
token's log-probability under the same distribution (what ``logprobs=0`` returns), so the
runtime gets its behaviour logprobs from the same two floats per token.

Data path (four small patches, each a wrapper around one vLLM method):

1. ``Sampler.forward``: when the batch has an opted-in request, reductions over the logits the
   sampler already holds: H = log Σ e^z' − Σ e^z'·z' / Σ e^z' with z' = z − max z, and after
   sampling log p(x) = z_x − logsumexp z (fp32, no [B, V] log-softmax kept, no top-k).  (B, 2)
2. ``GPUModelRunner.sample_tokens``: flags the sampler, then moves the (B, 2) floats to the host
   beside the sampled token ids (in the same async copy stream under async scheduling) and hangs
   them on the ``ModelRunnerOutput`` as a float32 numpy array (pickled with it to the engine).
3. ``Scheduler.update_from_output``: appends each opted-in request's two floats to plain
   lists on the request (two floats per token; no Logprob objects, nothing sent per step).
4. ``Scheduler._connector_finished``: when the request finishes, returns the lists as
   ``kv_transfer_params``, which vLLM already carries to the OpenAI response.

Limits: the values arrive with the final output only (not per streamed chunk: see README.md);
no speculative decoding (the rejection sampler is not wrapped); one prompt and n=1 per request
(the completion response carries the first choice's ``kv_transfer_params`` only); a KV
connector's own ``kv_transfer_params`` are kept and the entropy is added beside them.
"""

from __future__ import annotations

from typing import Any

OPT_IN_KEY = "tepo_entropy"
LOGPROB_KEY = "tepo_logprob"


def entropy_and_logsumexp(logits: Any) -> tuple[Any, Any]:
    """Exact entropy (nats) of softmax(logits) per row and log Σ e^z: (B, V) -> (B,), (B,) fp32.

    Reductions only: nothing of shape (B, V) outlives the call (vLLM's logprobs path keeps a
    full fp32 log-softmax, then runs top-k and gathers over it).
    """
    z = logits.float()
    m = z.amax(dim=-1, keepdim=True)  # (B, 1)
    zs = z - m  # (B, V), max 0: exp cannot overflow
    e = zs.exp()
    s = e.sum(dim=-1)  # (B,)
    # clamp: a -inf logit has e = 0 and must add 0, not 0 * -inf = nan
    entropy = s.log() - (e * zs.clamp_min(-1e30)).sum(dim=-1) / s
    return entropy, s.log() + m.squeeze(-1)


def _wants(sampling_params: Any) -> bool:
    extra = getattr(sampling_params, "extra_args", None)
    return bool(extra) and bool(extra.get(OPT_IN_KEY))


def _patch_sampler() -> None:
    import torch
    from vllm.v1.sample.sampler import Sampler

    original = Sampler.forward

    def forward(self: Any, logits: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "_tepo_want", False):
            return original(self, logits, *args, **kwargs)
        entropy, lse = entropy_and_logsumexp(logits)
        # The sampler edits fp32 logits in place (penalties, temperature): hand it a copy so the
        # sampled token's raw logit can still be read. For bf16/fp16 logits this is the same
        # fp32 conversion the sampler would make itself.
        out = original(self, logits.to(torch.float32, copy=True), *args, **kwargs)
        sampled = out.sampled_token_ids[:, :1].long()  # (B, 1)
        logprob = logits.gather(1, sampled).squeeze(1).float() - lse  # (B,)
        self._tepo_entropy = torch.stack([entropy, logprob], dim=1)  # (B, 2)
        return out

    Sampler.forward = forward


def _patch_model_runner() -> None:
    import torch
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.worker import gpu_model_runner as gmr

    runner_cls = gmr.GPUModelRunner
    async_cls = gmr.AsyncGPUModelRunnerOutput
    original_sample = runner_cls.sample_tokens
    original_get_output = async_cls.get_output

    def sample_tokens(self: Any, grammar_output: Any) -> Any:
        sampler = self.sampler
        requests = self.requests
        state = self.execute_model_state
        sampler._tepo_want = state is not None and any(
            _wants(requests[r].sampling_params) for r in self.input_batch.req_ids if r in requests
        )
        try:
            out = original_sample(self, grammar_output)
        finally:
            sampler._tepo_want = False
        entropy = sampler.__dict__.pop("_tepo_entropy", None)
        if entropy is None:
            return out
        if isinstance(out, async_cls) and entropy.device.type == "cuda":
            # Same pattern as the sampled ids: copy on the output stream, sync in get_output().
            stream = self._get_or_create_async_output_copy_stream()
            host = torch.empty(entropy.shape, dtype=torch.float32, pin_memory=True)
            with torch.cuda.stream(stream):
                stream.wait_stream(torch.cuda.current_stream())
                host.copy_(entropy, non_blocking=True)
                event = torch.cuda.Event(blocking=True)
                event.record()
            out._tepo_entropy = (host, event, entropy)
        elif isinstance(out, async_cls):
            out._tepo_entropy = (entropy.cpu(), None, None)
        elif isinstance(out, ModelRunnerOutput):
            out.tepo_entropy = entropy.cpu().numpy()  # sync mode: the step already synced
        return out

    def get_output(self: Any) -> Any:
        output = original_get_output(self)
        pending = self.__dict__.pop("_tepo_entropy", None)
        if pending is not None:
            host, event, _device = pending
            if event is not None:
                event.synchronize()
            output.tepo_entropy = host.numpy()
        return output

    runner_cls.sample_tokens = sample_tokens
    async_cls.get_output = get_output


def _patch_scheduler() -> None:
    from vllm.v1.core.sched.scheduler import Scheduler

    original_update = Scheduler.update_from_output
    original_finished = Scheduler._connector_finished

    def update_from_output(self: Any, scheduler_output: Any, model_runner_output: Any) -> Any:
        entropy = getattr(model_runner_output, "tepo_entropy", None)
        if entropy is not None:
            sampled = model_runner_output.sampled_token_ids
            requests = self.requests
            for req_id, index in model_runner_output.req_id_to_index.items():
                request = requests.get(req_id)
                if request is None or request.is_finished() or not sampled[index]:
                    continue  # aborted, or a partial-prefill row whose token is discarded
                values = request.__dict__.get("_tepo_entropy")
                if values is None:
                    if not _wants(request.sampling_params):
                        continue
                    values = request._tepo_entropy = ([], [])
                values[0].append(float(entropy[index, 0]))
                values[1].append(float(entropy[index, 1]))
        return original_update(self, scheduler_output, model_runner_output)

    def _connector_finished(self: Any, request: Any) -> tuple[bool, dict[str, Any] | None]:
        delay, params = original_finished(self, request)
        values = request.__dict__.pop("_tepo_entropy", None)
        if values is not None:
            params = dict(params or {})
            params[OPT_IN_KEY], params[LOGPROB_KEY] = values
        return delay, params

    Scheduler.update_from_output = update_from_output
    Scheduler._connector_finished = _connector_finished


# The vLLM attributes the patches wrap ("module:Class.attribute"); a release without one of them
# gets no patch at all (a log line says which), so clients fall back to their estimators.
REQUIRED = (
    "vllm.v1.sample.sampler:Sampler.forward",
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner.sample_tokens",
    "vllm.v1.worker.gpu_model_runner:AsyncGPUModelRunnerOutput.get_output",
    "vllm.v1.outputs:ModelRunnerOutput",
    "vllm.v1.core.sched.scheduler:Scheduler.update_from_output",
    "vllm.v1.core.sched.scheduler:Scheduler._connector_finished",
)


def patch() -> None:
    """Install the four wrappers (once per process; the caller checks :data:`REQUIRED`)."""
    _patch_sampler()
    _patch_model_runner()
    _patch_scheduler()


__all__ = ["LOGPROB_KEY", "OPT_IN_KEY", "REQUIRED", "entropy_and_logsumexp", "patch"]
