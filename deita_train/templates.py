"""The one chat template: vicuna_v1.1, used by SFT, DPO, embedding, scoring data and evaluation.

FastChat's ``vicuna_v1.1`` conversation template is the single source of truth. Everything here
is derived from it:

* ``render_conversation`` renders with FastChat itself:
  ``"{system} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>"``.
* ``VICUNA_CHAT_TEMPLATE`` is a Jinja chat template built from FastChat's fields (system message,
  roles, separators) that renders the same string, with ``{% generation %}`` markers around each
  assistant reply and its ``</s>``. It is saved into every tokenizer the project writes, so
  ``apply_chat_template`` on a published model gives exactly the training format.
* ``tokenize_conversation`` is where the loss mask lives: it renders the text once, records the
  character span of every assistant reply (the reply and the ``</s>`` that closes it), tokenizes
  once with offsets, and labels exactly the tokens inside those spans. Unlike FastChat's
  ``preprocess`` there is no per-tokenizer offset arithmetic (its hard-coded ``-2``), so it is
  right for any fast tokenizer, and it never silently zero-masks a sample.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastchat.conversation import Conversation, get_conv_template


IGNORE_INDEX = -100
TEMPLATE_NAME = "vicuna_v1.1"
HUMAN, GPT, SYSTEM = "human", "gpt", "system"
_ROLE_FROM_MESSAGES = {"user": HUMAN, "assistant": GPT, "system": SYSTEM}


def vicuna_conversation() -> Conversation:
    """A fresh copy of FastChat's vicuna_v1.1 template (the single source of truth)."""
    return get_conv_template(TEMPLATE_NAME)


def as_turns(conversation: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Accept ShareGPT turns (`from`/`value`) or messages (`role`/`content`); return ShareGPT turns."""
    turns = []
    for t in conversation:
        if "from" in t:
            turns.append({"from": t["from"], "value": t["value"]})
        else:
            turns.append({"from": _ROLE_FROM_MESSAGES.get(t["role"], t["role"]), "value": t["content"]})
    return turns


def _fill(conversation: Sequence[dict[str, Any]]) -> Conversation:
    conv = vicuna_conversation()
    turns = as_turns(conversation)
    if turns and turns[0]["from"] == SYSTEM:
        conv.set_system_message(turns[0]["value"])
        turns = turns[1:]
    roles = {HUMAN: conv.roles[0], GPT: conv.roles[1]}
    for t in turns:
        conv.append_message(roles[t["from"]], t["value"])
    return conv


def render_conversation(conversation: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """Render turns with FastChat's vicuna_v1.1; with `add_generation_prompt`, end with 'ASSISTANT:'."""
    conv = _fill(conversation)
    if add_generation_prompt:
        conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def assistant_spans(conversation: Sequence[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character span of every assistant reply plus its closing `</s>`.

    Each span starts right after ``ASSISTANT:`` (so it includes the separator space, which the
    SentencePiece tokenizer folds into the reply's first token) and ends after ``</s>``. Spans are
    found by rendering prefixes with FastChat itself, not by searching the text, so a reply that
    contains "ASSISTANT:" cannot confuse them.
    """
    conv = _fill(conversation)
    messages = list(conv.messages)
    spans = []
    for i, (role, _msg) in enumerate(messages):
        if role != conv.roles[1]:
            continue
        conv.messages = messages[:i] + [[role, None]]
        start = len(conv.get_prompt())
        conv.messages = messages[: i + 1]
        spans.append((start, len(conv.get_prompt())))
    conv.messages = messages
    return conv.get_prompt(), spans


def _jinja_str(s: str) -> str:
    return json.dumps(s)


def build_chat_template() -> str:
    """Jinja chat template rendering the same string as FastChat's vicuna_v1.1, with generation markers.

    Built from the FastChat template's own fields so the two cannot drift apart. A leading system
    message replaces the default system prompt. The BOS token is emitted by the template because
    `apply_chat_template` tokenizes without adding special tokens.
    """
    conv = vicuna_conversation()
    user, assistant = conv.roles
    return (
        "{{ bos_token }}"
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
        f"{{% else %}}{{% set system_message = {_jinja_str(conv.system_message)} %}}"
        "{% set loop_messages = messages %}{% endif %}"
        f"{{{{ system_message + {_jinja_str(conv.sep)} }}}}"
        "{% for message in loop_messages %}"
        "{% if message['role'] == 'user' %}"
        f"{{{{ {_jinja_str(user + ': ')} + message['content'] + {_jinja_str(conv.sep)} }}}}"
        "{% elif message['role'] == 'assistant' %}"
        f"{{{{ {_jinja_str(assistant + ':')} }}}}"
        f"{{% generation %}}{{{{ {_jinja_str(' ')} + message['content'] + {_jinja_str(conv.sep2)} }}}}{{% endgeneration %}}"
        "{% else %}{{ raise_exception('vicuna_v1.1 supports system, user and assistant roles only') }}"
        "{% endif %}{% endfor %}"
        f"{{% if add_generation_prompt %}}{{{{ {_jinja_str(assistant + ':')} }}}}{{% endif %}}"
    )


VICUNA_CHAT_TEMPLATE = build_chat_template()


def install_chat_template(tokenizer: Any) -> Any:
    """Put the vicuna_v1.1 template, `</s>` as EOS and a right-padding pad token into `tokenizer`.

    Padding is right-sided: the original trainer padded Mistral on the left while its mask assumed
    the right, so short samples lost their supervision.
    """
    tokenizer.chat_template = VICUNA_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


@dataclass
class EncodedConversation:
    """`input_ids`/`labels` plus what the trainer reports: was it truncated, is anything supervised."""

    input_ids: list[int]
    labels: list[int]
    full_length: int

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def num_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    @property
    def fully_masked(self) -> bool:
        return self.num_supervised == 0


def encode_conversation(
    conversation: Sequence[dict[str, Any]], tokenizer: Any, max_length: int | None
) -> EncodedConversation:
    """Tokenize one conversation with vicuna_v1.1 and label each assistant reply and its `</s>`.

    A trailing user turn with no reply carries no supervision and is dropped. Truncation keeps the
    start (as FastChat and TRL's `keep_start`); a reply cut by truncation keeps its labelled head.
    """
    turns = as_turns(conversation)
    while turns and turns[-1]["from"] != GPT:
        turns = turns[:-1]
    if not turns:
        return EncodedConversation([], [], 0)
    text, spans = assistant_spans(turns)
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("tokenize_conversation needs a fast tokenizer (offset mapping); got a slow one")
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for i, (tok_start, tok_end) in enumerate(offsets):
        if tok_end <= tok_start:  # special tokens added by the tokenizer (BOS) have empty spans
            continue
        while k < len(spans) and spans[k][1] <= tok_start:
            k += 1
        if k < len(spans) and tok_end > spans[k][0]:
            labels[i] = ids[i]
    full_length = len(ids)
    if max_length is not None and full_length > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return EncodedConversation(list(ids), labels, full_length)


def tokenize_conversation(
    conversations: Sequence[dict[str, Any]], tokenizer: Any, max_length: int | None
) -> dict[str, list[int]]:
    """vicuna_v1.1 `input_ids` and `labels` (no padding): labels are -100 except assistant replies and their `</s>`."""
    enc = encode_conversation(conversations, tokenizer, max_length)
    return {"input_ids": enc.input_ids, "labels": enc.labels}


def pad_batch(features: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, list[list[int]]]:
    """Right-pad a batch: pads get label -100 and attention 0, so the mask never shifts."""
    width = max(len(f["input_ids"]) for f in features)
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "attention_mask": []}
    for f in features:
        n = len(f["input_ids"])
        out["input_ids"].append(list(f["input_ids"]) + [pad_token_id] * (width - n))
        out["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * (width - n))
        out["attention_mask"].append([1] * n + [0] * (width - n))
    return out


def format_masked(input_ids: Sequence[int], labels: Sequence[int], tokenizer: Any) -> str:
    """Decode a tokenized sample with the supervised spans in [[...]]: what the loss sees, made visible.

    Each span's text is taken as the growth of the decoded prefix, so the spaces SentencePiece folds
    into a span's first token stay where they were in the rendered text.
    """
    pieces, prev_text, start = [], "", 0
    flags = [lab != IGNORE_INDEX for lab in labels]
    n = len(input_ids)
    for i in range(1, n + 1):
        if i == n or flags[i] != flags[start]:
            text = tokenizer.decode(list(input_ids[:i]), skip_special_tokens=False)
            seg = text[len(prev_text) :] if text.startswith(prev_text) else tokenizer.decode(list(input_ids[start:i]))
            pieces.append(f"[[{seg}]]" if flags[start] else seg)
            prev_text, start = text, i
    return "".join(pieces)
