"""How a prompt is shown to a model (its chat template with the paper's system prompt, or a plain fallback),
and the training rows and TRL examples built the same way.

The seed paper's SGR (methods.md §1.5) applies the chat template with the system prompt "You are a helpful
assistant."; a model without a template gets "Question: …\\n\\nAnswer: ". `sgr` renders prompts with these
functions and `heal` builds its TRL examples with them, so the student is trained on exactly the text the
teacher was prompted with.
"""

from __future__ import annotations

SYSTEM_PROMPT = "You are a helpful assistant."
FALLBACK = "Question: {question}\n\nAnswer: "
# End-of-turn strings of common chat formats (ChatML, Llama-3, Gemma, Phi-3, Llama-2/Mistral). Generation
# stops on the ones a tokenizer knows, besides its EOS ids, as the paper's per-family stop lists.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")
FALLBACK_STOP = "\nQuestion:"  # a template-less model that starts a new question has finished its answer


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def with_system(messages: list[dict], system: str = SYSTEM_PROMPT) -> list[dict]:
    """Prepend `system` (default: the paper's system prompt) unless the conversation brings its own."""
    if messages and messages[0]["role"] == "system":
        return list(messages)
    return [{"role": "system", "content": system}, *messages]


def effective_messages(tokenizer, messages: list[dict]) -> list[dict]:
    """The messages as the template accepts them: templates that reject a system turn (Gemma) get the
    system text folded into the first user turn, separated by a blank line."""
    if not has_template(tokenizer) or not messages or messages[0]["role"] != "system":
        return list(messages)
    try:
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(messages)
    except Exception:  # jinja TemplateError raised by the template itself ("System role not supported")
        system, first, *rest = messages
        return [{"role": first["role"], "content": f"{system['content']}\n\n{first['content']}"}, *rest]


def last_user(messages: list[dict]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The exact prompt text the model continues: template + generation prompt, or the fallback."""
    if has_template(tokenizer):
        return tokenizer.apply_chat_template(effective_messages(tokenizer, messages), tokenize=False,
                                             add_generation_prompt=True)
    return FALLBACK.format(question=last_user(messages))


def stop_strings(tokenizer) -> tuple[str, ...]:
    """Stop strings for generation: known end-of-turn tokens of this tokenizer, or the fallback's."""
    if not has_template(tokenizer):
        return (FALLBACK_STOP,)
    vocab = tokenizer.get_vocab()
    return tuple(s for s in END_OF_TURN if s in vocab)


def sft_example(tokenizer, messages: list[dict], response: str) -> dict:
    """A TRL prompt-completion example. With a template it is conversational (TRL renders prompt and
    prompt+completion, so the completion carries the end-of-turn token); without, plain text to which TRL
    appends EOS."""
    if has_template(tokenizer):
        return {"prompt": effective_messages(tokenizer, messages),
                "completion": [{"role": "assistant", "content": response}]}
    return {"prompt": render_prompt(tokenizer, messages), "completion": response}


def lm_example(tokenizer, messages: list[dict], response: str) -> dict:
    """A TRL language-modelling example (loss on every token): the whole conversation."""
    if has_template(tokenizer):
        return {"messages": [*effective_messages(tokenizer, messages), {"role": "assistant", "content": response}]}
    return {"text": render_prompt(tokenizer, messages) + response}


def read_rows(path, field: str, lm: bool = False, keep_truncated: bool = False,
              stats: dict | None = None) -> list[dict]:
    """Training rows of a JSONL file as ``{"messages", "response"}`` (or ``{"text"}`` for LM healing).

    SGR rows (``messages`` + ``response``/``original``) are used as written; any prompt-pool row with an answer
    (Alpaca ``output``, a final assistant turn, ...) works with ``field="original"`` and gets the system prompt
    the teacher would have seen. A row without the asked field is a UsageError naming file and line.
    SGR responses cut at max_new_tokens (``finish_reason: length``) are not complete answers: training on them
    would teach the end-of-turn after a cut, so they are skipped unless `keep_truncated`; `stats` receives
    ``responses_cut`` (such rows seen) and ``responses_cut_dropped``."""
    from layerprune.errors import UsageError
    from layerprune.healing.prompts import parse_row, read_jsonl

    rows, truncated, dropped = [], 0, 0
    for where, row in read_jsonl(path):
        if lm and isinstance(row, dict) and isinstance(row.get("text"), str):
            rows.append({"text": row["text"]})
        elif isinstance(row, dict) and "messages" in row and ("response" in row or "original" in row):
            if not isinstance(row.get(field), str):
                raise UsageError(f"{where}: row has no string {field!r}; pick another --response-field or fix the row")
            if field == "response" and row.get("finish_reason") == "length":
                truncated += 1
                if not keep_truncated:
                    dropped += 1
                    continue
            rows.append({"messages": row["messages"], "response": row[field]})
        else:
            prompt = parse_row(row, where)
            if field == "response" or prompt.original is None:
                raise UsageError(f"{where}: row has no {field!r} answer; use an SGR file from `layerprune sgr` "
                                 "or --response-field original on rows that carry their answer")
            rows.append({"messages": with_system(list(prompt.messages)), "response": prompt.original})
    if stats is not None:
        stats.update(responses_cut=truncated, responses_cut_dropped=dropped)
    if not rows and dropped:
        raise UsageError(f"every one of the {dropped} responses in {path} was cut at max_new_tokens; "
                         "regenerate with a larger --max-new-tokens or pass --keep-truncated")
    if not rows:
        raise UsageError(f"data file {path} has no rows; pass a non-empty JSONL file")
    return rows


def build_dataset(tokenizer, rows: list[dict], lm: bool = False):
    """A `datasets.Dataset` in TRL's format: prompt-completion for SFT, text or messages for LM healing (its
    text rows are used only when every row has one, so the dataset has one format)."""
    from datasets import Dataset

    if lm and all("text" in r for r in rows):
        examples = [{"text": r["text"]} for r in rows]
    elif lm:
        examples = [lm_example(tokenizer, r["messages"], r["response"]) for r in rows if "messages" in r]
    else:
        examples = [sft_example(tokenizer, r["messages"], r["response"]) for r in rows]
    return Dataset.from_list(examples)


def fit_to_length(trainer, max_length: int, verbose: bool = True) -> dict:
    """Cut the trainer's tokenized rows to `max_length` tokens (keeping the start, as TRL does) and drop rows
    with no trained token left. Returns the counts; no row left is a UsageError."""
    from layerprune.errors import UsageError

    ds = trainer.train_dataset  # columns input_ids, labels (-100 = masked); one row per example
    total = len(ds)
    over = sum(len(ids) > max_length for ids in ds["input_ids"])
    if over:
        ds = ds.map(lambda ex: {"input_ids": ex["input_ids"][:max_length], "labels": ex["labels"][:max_length]})
        ds = ds.filter(lambda ex: any(t != -100 for t in ex["labels"]))
    dropped = total - len(ds)
    if not len(ds):
        raise UsageError(f"all {total} rows are longer than --max-length {max_length} with no response token left; "
                         "raise --max-length")
    if over and verbose:
        print(f"{over} of {total} rows exceed --max-length {max_length}: {over - dropped} truncated, {dropped} "
              "dropped (prompt alone fills the length)")
    trainer.train_dataset = ds
    return {"used": len(ds), "truncated": over - dropped, "dropped": dropped}
