"""The ``python`` tool: the model's code runs in a :class:`~tepo_agent.tools.sandbox.PythonSandbox`.

The tool returns what the code printed (stdout, and stderr when there is any; the value of a
final bare expression is printed as in a REPL). A failing run, an exception, a timeout, a memory
or CPU limit, raises :class:`~tepo_agent.errors.ToolError` (:class:`SandboxError` for the limits,
:class:`SandboxTimeoutError` for the wall-time limit, so the agent records ``error_kind="timeout"``)
whose message carries the traceback tail and the partial output, so the agent can show the
model what went wrong. Truncation and degraded-containment notes are appended to the text.

Run it directly: ``tepo-agent tool python '{"code": "print(sum(range(10)))"}'``.
"""

from __future__ import annotations

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from tepo_agent.errors import TIMED_OUT, SandboxError, SandboxTimeoutError, ToolError
from tepo_agent.tools.sandbox import PythonSandbox, SandboxConfig, SandboxResult

_TAIL_CHARS = 2_000


class PythonArgs(BaseModel):
    code: str = Field(
        description="Python 3 source to run. Use print() for results; the value of a final "
        "bare expression is printed too. Standard library only, no network, no input()."
    )


def _tail(text: str, limit: int = _TAIL_CHARS) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]


def format_result(result: SandboxResult) -> str:
    """The tool's text for a successful run (stdout, stderr, notes)."""
    parts = [result.stdout.rstrip("\n") if result.stdout.strip() else "(no output)"]
    if result.stderr.strip():
        parts.append("stderr:\n" + _tail(result.stderr.rstrip("\n")))
    parts += [f"[note: {note}]" for note in result.notes]
    return "\n".join(parts)


def raise_for_failure(result: SandboxResult, config: SandboxConfig) -> None:
    """Raise a ToolError the model can read when the run did not finish cleanly."""
    if result.ok:
        return
    if result.timed_out:
        problem: ToolError = SandboxTimeoutError(
            f"{TIMED_OUT} after {config.timeout_s:g} s of wall time; the process was killed. "
            "Make the code faster or print partial results."
        )
    elif result.memory_exceeded:
        problem = SandboxError(
            f"memory limit of {config.memory_bytes // 1024**2} MiB exceeded. Use less memory."
        )
    elif result.cpu_exceeded:
        problem = SandboxError(f"CPU time limit of {config.cpu_time_s} s exceeded.")
    elif result.exit_code is not None and result.exit_code < 0:
        problem = SandboxError(f"the process was killed by signal {-result.exit_code}.")
    else:
        error = _tail(result.stderr.strip()) or f"exit status {result.exit_code}"
        problem = ToolError(f"the code failed:\n{error}")
    details = [str(problem)]
    if result.stdout.strip():
        details.append("stdout before the failure:\n" + _tail(result.stdout.rstrip("\n")))
    if result.timed_out and result.stderr.strip():
        details.append("stderr:\n" + _tail(result.stderr.rstrip("\n")))
    details += [f"[note: {note}]" for note in result.notes]
    raise type(problem)("\n".join(details))


def make_python_tool(
    config: SandboxConfig | None = None, sandbox: PythonSandbox | None = None
) -> BaseTool:
    """The LangChain ``python`` tool over one sandbox (built from ``config`` if not given)."""
    runner = sandbox or PythonSandbox(config)

    def run_python(code: str) -> str:
        result = runner.run(code)
        raise_for_failure(result, runner.config)
        return format_result(result)

    return StructuredTool.from_function(
        func=run_python,
        name="python",
        description=(
            "Run a short Python 3 program in a sandbox and return what it prints. Use it for "
            f"computation, data manipulation or checking an idea. Limits: "
            f"{runner.config.timeout_s:g} s, {runner.config.memory_bytes // 1024**2} MiB, "
            "no network, no files kept between calls."
        ),
        args_schema=PythonArgs,
        handle_tool_error=True,  # ToolError reaches the model as an error ToolMessage
    )


__all__ = ["PythonArgs", "format_result", "make_python_tool", "raise_for_failure"]
