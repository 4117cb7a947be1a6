"""The embedded default model: a byte-level BPE tokenizer with a Qwen-style chat template and a tiny
random-weight Qwen2 causal LM, built locally (no download ever).

A newcomer must see the whole loop run on a laptop, and no weights can be fetched, so the project
builds its own starting point::

    from tepo_agent.model.default import ensure_default_model, init_model
    path = ensure_default_model()          # ~/.cache/tepo-agent/models/default-init, built once
    init_model("/tmp/my-model", seed=1)     # or build one anywhere (also `tepo-agent init-model`)

The result is an ordinary Hugging Face model directory: ``model.io.load_causal_lm`` and
``ChatFormat.from_pretrained`` load it exactly like a downloaded Qwen2.5.

The tokenizer:
- byte-level BPE (all 256 byte symbols in the alphabet, so any text round-trips exactly), 512 ids
  in total, merges trained deterministically on a built-in synthetic chat / tool-use corpus;
- special tokens (Qwen style) ``<|endoftext|>`` (pad and eos), ``<|im_start|>``, ``<|im_end|>``
  (end of turn); atomic, non-special added tokens ``<tool_call>``, ``</tool_call>``,
  ``<tool_response>``, ``</tool_response>``;
- a ChatML chat template with Qwen2.5's tool-call markup (``DEFAULT_CHAT_TEMPLATE``).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tepo_agent.atomic import publish_directory
from tepo_agent.errors import ConfigError
from tepo_agent.paths import default_home

if TYPE_CHECKING:  # imported where used: the agent reads DEFAULT_SYSTEM_PROMPT without them
    from transformers import PreTrainedTokenizerFast, Qwen2Config

VOCAB_SIZE = 512
"""Total ids of the default tokenizer (256 bytes + merges + 7 added tokens)."""

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)
TOOL_MARKUP_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# ChatML with Qwen2.5's tool-call markup, shortened: the model is tiny and its tools are fixed, so
# the system turn names the tools and their arguments on one line ("Tools: calculator(expression)
# search(query)", ~15 tokens instead of ~330 for JSON schemas: the system turn is in every SFT
# sequence and carries no loss). Structure (roles, <tool_call> JSON, tool results as a user turn
# of <tool_response> blocks that consecutive tool messages share) follows Qwen2.5-Instruct.
DEFAULT_CHAT_TEMPLATE = """\
{%- if messages and messages[0].role == 'system' %}
    {%- set system_message = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = '@SYSTEM@' %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '<|im_start|>system\\n' + system_message }}
{%- if tools %}
    {{- '\\nTools:' }}
    {%- for tool in tools %}
        {%- set fn = tool.function if tool.function is defined else tool %}
        {{- ' ' + fn.name + '(' + (fn.parameters.properties | list | join(', ')) + ')' }}
    {%- endfor %}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- for message in loop_messages %}
    {%- if message.role == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if tool_call.function is defined %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
                {{- tool_call.arguments | tojson }}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- elif not message.content %}
            {{- '\\n' }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or loop_messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
        {%- if loop.last or loop_messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
""".replace("@SYSTEM@", DEFAULT_SYSTEM_PROMPT)

_CORPUS_SEED = 1234


def synthetic_corpus(n_dialogues: int = 1500, seed: int = _CORPUS_SEED) -> list[str]:
    """Deterministic chat / tool-use text the default tokenizer's merges are trained on.

    The task world's text (``tepo_agent.tasks``: the corpus of a few training worlds, questions
    of every suite, calculator and search calls, final answers) and the chat template's fixed
    phrases. Markup tokens (``<tool_call>``...) are added tokens, so they are left out of the
    text. Digits are single tokens whatever the corpus (the pre-tokenizer splits them).
    """
    from tepo_agent.tasks.knowledge import KnowledgeBase, deep_search_suite, knowledge_suite
    from tepo_agent.tasks.math_tasks import math_suite
    from tepo_agent.tasks.world import tool_schemas

    rng = random.Random(seed)
    fixed = [
        "system",
        "user",
        "assistant",
        DEFAULT_SYSTEM_PROMPT,
        "# Tools",
        "calculator(expression): Evaluate arithmetic.",
        "search(query): Search the knowledge base.",
        'Call one with {"name": ..., "arguments": {...}}',
    ]
    # the template's phrases occur in every conversation: weigh them as such
    lines = [*(json.dumps(schema) for schema in tool_schemas()), *(fixed * n_dialogues)]
    per_world = max(1, n_dialogues // 4)
    for world in range(4):  # training worlds only (seeds below EVAL_SEED)
        kb = KnowledgeBase(seed=world)
        lines += [doc["text"] for doc in kb.corpus()]
        for task in knowledge_suite(kb, per_world, seed=world) + deep_search_suite(
            kb, per_world // 2, seed=world
        ):
            query = rng.choice([task.metadata["entity"], task.answer])
            lines += [
                task.question,
                f'{{"name": "search", "arguments": {{"query": "{query}"}}}}',
                f"The answer is {task.answer}.",
            ]
    for task in math_suite(per_world, seed=seed):
        expr = task.metadata["expression"]
        lines += [
            task.question,
            f'{{"name": "calculator", "arguments": {{"expression": "{expr}"}}}}',
            f"The answer is {task.answer}.",
        ]
    return lines


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train the default byte-level BPE tokenizer (deterministic) and wrap it for transformers."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Spaces are tokens of their own, so a word is the same tokens wherever it stands: a name
    # in a question (" Brundouscorp") and in a tool call ('"Brundouscorp') would otherwise start
    # with different pieces, and copying it would be a transformation, not a copy. Digits are one
    # token each (as in Qwen2): numbers are copied and computed digit by digit.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(" ", behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    n_added = len(SPECIAL_TOKENS) + len(TOOL_MARKUP_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - n_added,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(synthetic_corpus(), trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens(
        [AddedToken(t, normalized=False, special=False) for t in TOOL_MARKUP_TOKENS]
    )
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise ConfigError(
            f"the default tokenizer came out with {tokenizer.get_vocab_size()} ids instead of "
            f"{VOCAB_SIZE}: the synthetic corpus is too small for the requested merges"
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=DEFAULT_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The id of one token of the default tokenizer."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise ConfigError(f"{token!r} is not a single token of this tokenizer")
    return found


@dataclass(frozen=True)
class DefaultModelConfig:
    """Shape of the default Qwen2-architecture causal LM (1.12 M parameters by default).

    About 1 M parameters: measured on 2 CPU cores, such a model samples ~560 tokens/s at batch 1
    and trains at ~11,000 tokens/s, so the bootstrap SFT and the demo's training steps take
    minutes, not hours. Head size 64 (128 / 2 heads) is one vLLM's CPU attention supports.

    The vocabulary is the default tokenizer's (``VOCAB_SIZE`` = 512), never configured here: a
    larger output layer would put probability mass on ids no text maps to and bias the entropy.

    Attributes:
        hidden_size: Width of the residual stream; must divide by ``num_attention_heads``.
        intermediate_size: Width of the SwiGLU MLP.
        num_hidden_layers: Transformer blocks.
        num_attention_heads: Query heads.
        num_key_value_heads: Key/value heads (grouped-query attention); must divide the query heads.
        max_position_embeddings: Longest sequence (prompt + generation) the model is built for.
        rope_theta: RoPE base frequency.
        rms_norm_eps: RMSNorm epsilon.
        initializer_range: Standard deviation of the random initial weights.
        tie_word_embeddings: Share the input embedding with the output layer. Off: digits are
            predicted almost uniformly wherever a number goes, so a shared matrix pulls the ten
            digit embeddings together (mean cosine 0.73 after the bootstrap's first phase, against
            0.13 for name pieces) and the model can no longer tell which digit to copy; untied
            (65 k parameters more) the model learned to copy operands into calculator calls.
    """

    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if not (self.rope_theta > 0 and self.rms_norm_eps > 0 and self.initializer_range > 0):
            raise ConfigError("rope_theta, rms_norm_eps and initializer_range must be > 0")

    def to_qwen2_config(self, tokenizer: PreTrainedTokenizerFast) -> Qwen2Config:
        """The transformers config of this shape, with the tokenizer's special token ids."""
        from transformers import Qwen2Config

        endoftext = token_id(tokenizer, ENDOFTEXT)
        return Qwen2Config(
            vocab_size=VOCAB_SIZE,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=self.max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            rms_norm_eps=self.rms_norm_eps,
            initializer_range=self.initializer_range,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=endoftext,
            eos_token_id=token_id(tokenizer, IM_END),
            pad_token_id=endoftext,
            use_cache=True,
        )


def init_model(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    config: DefaultModelConfig = DefaultModelConfig(),
) -> Path:
    """Write the default tokenizer and a random-weight ``Qwen2ForCausalLM`` into ``out_dir``.

    Weights are drawn from ``seed`` (the global torch RNG is left untouched), so two calls with the
    same seed and config write identical weights. ``out_dir`` must not exist or be empty. Returns
    the directory, loadable with ``model.io.load_causal_lm`` / ``ChatFormat.from_pretrained``.
    """
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty directory; choose a new one")
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config.to_qwen2_config(tokenizer))
    model.generation_config = GenerationConfig(
        eos_token_id=[token_id(tokenizer, t) for t in (IM_END, ENDOFTEXT)],
        pad_token_id=token_id(tokenizer, ENDOFTEXT),
        bos_token_id=token_id(tokenizer, ENDOFTEXT),
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def parameter_count(config: DefaultModelConfig = DefaultModelConfig()) -> int:
    """Number of parameters of the model ``config`` describes (tied weights counted once)."""
    h, m, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = h // config.num_attention_heads * config.num_key_value_heads
    attention = h * h + h + 2 * (h * kv + kv) + h * h  # q (+bias), k and v (+bias), o
    block = attention + 3 * h * m + 2 * h  # SwiGLU gate/up/down, two RMSNorm weights
    embeddings = VOCAB_SIZE * h * (1 if config.tie_word_embeddings else 2)
    return embeddings + layers * block + h  # final RMSNorm


def ensure_default_model() -> Path:
    """``default_home()/models/default-init``, built with ``init_model`` on first use.

    The model is written into a temporary sibling directory and moved into place
    (:func:`~tepo_agent.atomic.publish_directory`), so concurrent first calls (several
    processes) are safe: one wins, the others discard their copy, and no reader ever sees a
    half-written directory.
    """
    target = default_home() / "models" / "default-init"
    if (target / "config.json").is_file():
        return target
    return publish_directory(
        target, init_model, is_complete=lambda done: (done / "config.json").is_file()
    )
