"""Chat templates: rendering conversations into prompts, and the templates nbllm ships.

Rendering is transformers' (`apply_chat_template`, Jinja); this module picks the
template, validates the conversation and tokenizes the result without adding
special tokens a second time (the template already wrote BOS where it wants one).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence, Union

Conversation = list[dict]
SHIPPED_TEMPLATES = ("chatml", "plain", "llama2")


def load_chat_template(path_or_string: Union[str, Path]) -> str:
    """A template by shipped name ("chatml", "plain", "llama2"), from a file, or given inline."""
    name = str(path_or_string)
    if name in SHIPPED_TEMPLATES:
        return resources.files("nbllm.chat_templates").joinpath(f"{name}.jinja").read_text()
    path = Path(name).expanduser()
    if "{" not in name and path.is_file():
        return path.read_text()
    if "{{" in name or "{%" in name:
        return name
    raise ValueError(f"chat template {name!r} is neither a shipped template {SHIPPED_TEMPLATES}, "
                     f"a readable file, nor a Jinja template string")


def validate_conversation(conversation: Sequence[Any]) -> None:
    if not conversation:
        raise ValueError("the conversation is empty: it needs at least one message")
    for i, message in enumerate(conversation):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {message!r}")
        if not isinstance(message["role"], str):
            raise TypeError(f"message {i}: role must be a str, got {message['role']!r}")


def render_chat(tokenizer: Any, conversation: Conversation, chat_template: Optional[str] = None,
                add_generation_prompt: bool = True, continue_final_message: bool = False,
                chat_template_kwargs: Optional[dict] = None,
                tools: Optional[list[dict]] = None) -> tuple[str, list[int]]:
    """The prompt text and its token ids for one conversation (`tools`: JSON schemas the template may show)."""
    text = render_chat_text(tokenizer, conversation, chat_template, add_generation_prompt, continue_final_message,
                            chat_template_kwargs, tools)
    return text, tokenizer.encode(text, add_special_tokens=False)


def render_chat_text(tokenizer: Any, conversation: Conversation, chat_template: Optional[str] = None,
                     add_generation_prompt: bool = True, continue_final_message: bool = False,
                     chat_template_kwargs: Optional[dict] = None, tools: Optional[list[dict]] = None) -> str:
    """The prompt text of one conversation, untokenized (the server renders it apart, under a time limit)."""
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message=True and add_generation_prompt=True cannot be combined: "
                         "continuing the last message means no new assistant turn is opened")
    validate_conversation(conversation)
    template = load_chat_template(chat_template) if chat_template is not None else None
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model's tokenizer has no chat template; pass one, e.g. "
                         "chat_template=nbllm.load_chat_template('chatml') (shipped: "
                         f"{', '.join(SHIPPED_TEMPLATES)}), a path to a .jinja file, or a template string")
    return tokenizer.apply_chat_template(
        list(conversation), chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message, tools=tools, **(chat_template_kwargs or {}))
