"""Prompts as lm-eval 0.4.13 builds them, plain or through a chat template (`--apply_chat_template`).

A prompt is a list of `Turn(role, content, delimiter)`: an optional system turn (`--system-prompt` joined
with the task's description by lm-eval's `maybe_delimit(…, "\\n\\n")`), one user/assistant pair per shot
and the evaluated question, optionally followed by an assistant turn holding the task's `gen_prefix`
(lm-eval's `build_qa_turn`). `render` then produces, as lm-eval's `fewshot_context` does:

* plain text: every turn's content followed by its delimiter (the user turn's delimiter is the target
  delimiter " ", an answer's is the few-shot delimiter "\\n\\n"; a system turn has none);
* chat, multi-turn (`--fewshot-as-multiturn`, lm-eval's CLI default under a chat template): the turns as
  chat messages;
* chat, single-turn: the system message, then every other turn's plain text joined into ONE user message
  (the last user turn without its delimiter), then the gen_prefix assistant turn if any.

The chat template is applied with `add_generation_prompt=not gen_prefix, continue_final_message=bool(
gen_prefix)`, so a gen_prefix opens the assistant's answer. Under a chat template the target delimiter of
log-likelihood continuations is "" unless the task's gen_prefix ends without whitespace (`target_delimiter`).

    turns = qa_turns("Question: 2+2?\\nAnswer:", "4") + qa_turns("Question: 3+3?\\nAnswer:")
    text = render(turns, opts)                      # plain, or opts.chat_renderer's template
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from layerprune.errors import UsageError


@dataclass
class Turn:
    role: str  # "system" | "user" | "assistant"
    content: str
    delimiter: str = ""  # appended in plain text only


def maybe_delimit(prefix: str | None, suffix: str | None, delimiter: str) -> str:
    """Join with `delimiter` unless either side already has whitespace at the join (lm-eval)."""
    if not prefix or not suffix:
        return prefix or suffix or ""
    return prefix + suffix if prefix[-1].isspace() or suffix[0].isspace() else prefix + delimiter + suffix


def system_turns(system_prompt: str | None, description: str = "") -> list[Turn]:
    text = maybe_delimit(system_prompt, description, "\n\n")
    return [Turn("system", text)] if text else []


def qa_turns(question: str, answer: str | None = None, gen_prefix: str | None = None,
             target_delimiter: str = " ", fewshot_delimiter: str = "\n\n") -> list[Turn]:
    """lm-eval's build_qa_turn: the user turn, then the answer (after gen_prefix) or the bare gen_prefix."""
    if answer:
        delim = target_delimiter if not gen_prefix else (target_delimiter if _needs_delimiter(question, gen_prefix) else "")
        return [Turn("user", question, delim),
                Turn("assistant", maybe_delimit(gen_prefix, answer, " "), fewshot_delimiter)]
    if gen_prefix:
        delim = target_delimiter if _needs_delimiter(question, gen_prefix) else ""
        return [Turn("user", question, delim), Turn("assistant", gen_prefix)]
    return [Turn("user", question, "")]


def _needs_delimiter(prefix: str, suffix: str) -> bool:
    return prefix != "" and not (prefix[-1].isspace() or suffix[0].isspace())


def target_delimiter(opts, gen_prefix: str | None = None, plain: str = " ") -> str:
    """The delimiter before a log-likelihood continuation: `plain`, or under a chat template "" unless a
    gen_prefix ends without whitespace (lm-eval's construct_requests)."""
    if not opts.chat_template:
        return plain
    return plain if gen_prefix and not gen_prefix[-1].isspace() else ""


def multiturn(opts) -> bool:
    """lm-eval's CLI: few-shot as multi-turn defaults to on under a chat template."""
    return opts.chat_template and opts.fewshot_as_multiturn is not False


def render(turns: list[Turn], opts, gen_prefix: str | None = None) -> str:
    """The prompt text of `turns` (see module doc); the last turn is the gen_prefix when one is given."""
    if not opts.chat_template:
        return "".join(t.content + t.delimiter for t in turns)
    if opts.chat_renderer is None:
        raise UsageError("--chat-template needs a tokenizer with a chat template")
    if multiturn(opts):
        messages = [{"role": t.role, "content": t.content} for t in turns]
    else:
        messages = _single_turn(turns)
    return opts.chat_renderer(messages, add_generation_prompt=not gen_prefix)


def _single_turn(turns: list[Turn]) -> list[dict[str, str]]:
    """lm-eval's multiturn_to_singleturn."""
    system, rest = (turns[0], turns[1:]) if turns and turns[0].role == "system" else (None, turns)
    tail = [rest[-1]] if rest[-1].role == "assistant" else []
    body = rest[:-1] if tail else rest
    text = "".join(t.content + t.delimiter for t in body[:-1]) + body[-1].content
    out = [{"role": "user", "content": text}] + [{"role": t.role, "content": t.content} for t in tail]
    return ([{"role": "system", "content": system.content}] if system else []) + out


def chat_renderer(tokenizer, model_name: str | None = None,
                  system_prompt: str | None = None) -> Callable[..., str]:
    """`render(messages, add_generation_prompt=True)` through the tokenizer's chat template, as lm-eval's
    HFLM.apply_chat_template: a template that rejects the system turn is retried without it. When the
    system turn is the user's own `--system-prompt`, that is refused instead, with the template's message."""
    name = model_name or getattr(tokenizer, "name_or_path", None) or "the model"
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(f"--chat-template: the tokenizer of {name} has no chat template; drop --chat-template "
                         "to evaluate it as a base model")
    import jinja2

    def apply(messages, add_generation_prompt: bool):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             continue_final_message=not add_generation_prompt)

    def render(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        try:
            return apply(messages, add_generation_prompt)
        except jinja2.exceptions.TemplateError as err:
            if not any(m["role"] == "system" for m in messages):
                raise UsageError(f"the chat template of {name} rejects the prompt: {_one_line(err)}") from None
            if system_prompt:
                raise UsageError(f"--system-prompt: the chat template of {name} rejects a system turn "
                                 f"({_one_line(err)}); drop --system-prompt") from None
            return apply([m for m in messages if m["role"] != "system"], add_generation_prompt)
    return render


def check_chat_options(opts) -> None:
    """Flags that only mean something together."""
    if opts.fewshot_as_multiturn and not opts.chat_template:
        raise UsageError("--fewshot-as-multiturn needs --chat-template (few-shot turns exist only in a chat); "
                         "add --chat-template or drop --fewshot-as-multiturn")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__
