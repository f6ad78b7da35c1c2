"""The chat format: targets are exactly the assistant's turns, parsing never crashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from kimi_lab.chat_format import (
    ChatEncoder,
    ChatFormatError,
    Message,
    ToolCall,
    ToolSpec,
    conversation_from_list,
    extract_answer,
    parse_assistant,
    render_tools,
    with_tools,
)
from kimi_lab.data.tokenizer import Tokenizer

CODE = "g = [1, 2]\nprint(sum(g))"


def _conversation() -> list[Message]:
    return [
        Message("system", "You can run python."),
        Message("user", "What is 1 + 2?", images=["image_0"]),
        Message("assistant", "Let me compute.", [ToolCall("python", CODE)]),
        Message("tool", "3"),
        Message("assistant", "Answer: 3"),
    ]


def test_targets_are_the_assistant_turns_and_their_end(tiny_tokenizer: Path) -> None:
    tok = Tokenizer(tiny_tokenizer)
    enc = ChatEncoder(tok)
    out = enc.encode(_conversation(), image_tokens=lambda name: 4)
    trained = tok.decode([t for t, f in zip(out.tokens, out.train, strict=True) if f])
    assert trained == (
        f"Let me compute.<|tool_call_begin|>python\n{CODE}<|tool_call_end|><|im_end|>Answer: 3<|im_end|>"
    )
    context = tok.decode([t for t, f in zip(out.tokens, out.train, strict=True) if not f])
    assert "You can run python." in context and "<|tool_result_begin|>3<|tool_result_end|>" in context
    assert context.count("<|image_pad|>") == 4 and out.media == [
        (out.tokens.index(enc.media_start), "image_0")
    ]


def test_generated_turn_parses_back_to_the_message(tiny_tokenizer: Path) -> None:
    tok = Tokenizer(tiny_tokenizer)
    enc = ChatEncoder(tok)
    turn = enc.encode([_conversation()[2]])
    generated = turn.tokens[2:]  # after <|im_start|><|assistant|>, as a model would sample it
    parsed = parse_assistant(tok.decode(generated))
    assert parsed.message == _conversation()[2] and not parsed.errors


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<|tool_call_begin|>python\nprint(1)", "cut off"),
        ("<|tool_call_begin|>rm -rf /\nx<|tool_call_end|>", "not a tool name"),
        ("<|tool_call_begin|><|tool_call_end|>", "not a tool name"),
    ],
)
def test_malformed_calls_become_errors_not_exceptions(text: str, error: str) -> None:
    parsed = parse_assistant(text)
    assert not parsed.message.tool_calls and len(parsed.errors) == 1 and error in parsed.errors[0]


CUT_OFF, NO_BEGIN = "no <|tool_call_end|>", "without a <|tool_call_begin|>"


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        ("", []),
        ("<|im_end|>", []),
        ("\x00" * 50, []),  # odd, but plain content: nothing to report
        ("<|tool_call_end|>" * 3, [NO_BEGIN]),
        ("<|tool_call_begin|>" * 5, [CUT_OFF] * 5),
        ("<|tool_call_begin|>\n\x00<|tool_call_end|>", ["'' is not a tool name"]),
        ("a<|tool_call_begin|>python\nprint(1)<|tool_call_end|><|tool_call_begin|>py", [CUT_OFF]),
    ],
)
def test_garbage_never_raises_and_reports_every_malformed_call(text: str, errors: list[str]) -> None:
    parsed = parse_assistant(text)
    assert len(parsed.errors) == len(errors), parsed.errors
    assert all(want in got for want, got in zip(errors, parsed.errors))
    assert "<|tool_call" not in parsed.message.content  # markers never leak into the content
    good = [c for c in parsed.message.tool_calls if c.name == "python"]
    assert parsed.message.tool_calls == good  # nothing malformed became a call


def test_conversation_structure_is_checked() -> None:
    good = [m.to_dict() for m in _conversation()]
    assert conversation_from_list(good) == _conversation()
    with pytest.raises(ChatFormatError, match="without a pending tool call"):
        conversation_from_list([good[0], good[1], good[3], good[4]])
    with pytest.raises(ChatFormatError, match="only the assistant"):
        conversation_from_list(
            [{"role": "user", "content": "x", "tool_calls": [{"name": "python", "input": ""}]}]
        )
    with pytest.raises(ChatFormatError):
        conversation_from_list([{"role": "robot", "content": "x"}])


def test_extract_answer_takes_the_last_answer_line() -> None:
    assert extract_answer("thinking\nAnswer: 4\nanswer:  7 ") == "7"
    assert extract_answer("no answer here") is None


def test_one_rendering_of_tools_for_training_prompts_and_served_requests() -> None:
    """The swarm lists its tools in the system prompt and also declares them to a server; the
    server reads the declarations back into the same list and adds nothing (with any number of
    tools), and tools a system message does not list yet are added once, at its end."""
    from kimi_lab.openai_format import declared_tools, tool_schema
    from kimi_lab.swarm.prompts import SWARM_TOOLS, orchestrator_system

    env = [
        ToolSpec("search", "search the corpus", "a search query"),
        ToolSpec("open", "open a page", "a URL"),
    ]
    tools = [*env, *SWARM_TOOLS]
    assert declared_tools([tool_schema(t) for t in tools]) == tools
    prompt = [Message("system", orchestrator_system(env)), Message("user", "Who founded Acme?")]
    assert render_tools(tools) in prompt[0].content
    assert with_tools(prompt, declared_tools([tool_schema(t) for t in tools])) == prompt
    added = with_tools([Message("system", "Be brief."), Message("user", "hi")], env)
    assert added[0].content == "Be brief.\n\n" + render_tools(env)
    assert added[0].content.count("- search:") == 1 and with_tools(added, env) == added
    assert with_tools([Message("user", "hi")], env)[0] == Message("system", render_tools(env))
    assert render_tools(env).splitlines() == [
        "Call a tool as <|tool_call_begin|>NAME\\nINPUT<|tool_call_end|>. Tools:",
        "- search: search the corpus. Input: a search query",
        "- open: open a page. Input: a URL",
    ]


def test_declared_functions_say_what_their_input_is() -> None:
    from kimi_lab.openai_format import declared_tools

    def fn(name: str, properties: dict | None = None) -> dict:
        params = {"type": "object", "properties": properties} if properties is not None else None
        return {"type": "function", "function": {"name": name, "description": "d", "parameters": params}}

    got = declared_tools(
        [
            fn("python", {"code": {"type": "string", "description": "Python source"}}),
            fn("note", {"text": {"type": "string"}}),
            fn("search", {"q": {"type": "string"}, "k": {"type": "integer"}, "x": {}}),
            fn("now"),
        ]
    )
    assert [t.input_format for t in got] == [
        "Python source",
        "text",
        '{"q": STRING, "k": INTEGER, "x": VALUE}',
        "",
    ]
    with pytest.raises(ChatFormatError, match="bad tool"):
        declared_tools([{"type": "function"}])
