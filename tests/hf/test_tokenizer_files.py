"""Exports carry what HF tools need: AutoTokenizer's eos / pad / chat template (rendering the chat
encoder's tokens, tools included), generate's stop ids; INT4 exports too; imports read them back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from kimi_lab.chat_format import CALL_END, IM_END, ChatEncoder, ToolSpec, render_tools, with_tools
from kimi_lab.openai_format import declared_tools, from_openai, tool_schema
from tests.conftest import PARROT_SCRIPT
from tests.hf import synthetic as S

pytest.importorskip("transformers")

SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "find pages",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}, "k": {"type": "integer"}}},
    },
}
PYTHON = {"type": "function", "function": {"name": "python", "description": "run code"}}
NOTE = {  # one string parameter without a description: its name says what the input is
    "type": "function",
    "function": {
        "name": "note",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
}
# Tools as the swarm lists them in its system prompts and declares them to a server
SWARM_TOOLS = [
    ToolSpec("search", "search the corpus", "a search query"),
    ToolSpec("assign_task", "give a sub-agent a task", '{"agent": NAME, "prompt": TEXT}'),
]

CONVERSATIONS: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = [
    ([{"role": "user", "content": "hello"}], None),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2**10? Use the tool."},
            {
                "role": "assistant",
                "content": "Let me run it.",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "python", "arguments": {"input": "print(2**10)"}},
                    }
                ],
            },
            {"role": "tool", "content": "1024\n"},
            {"role": "assistant", "content": "It is 1024."},
            {"role": "user", "content": "Now search for ünïcode pages."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "search", "arguments": {"q": "ünïcode", "k": 3}},
                    },
                    {"type": "function", "function": {"name": "python", "arguments": {"input": "1/0"}}},
                ],
            },
            {"role": "tool", "content": "no pages"},
            {"role": "tool", "content": "ZeroDivisionError: division by zero"},
        ],
        [PYTHON, SEARCH],
    ),
    (  # no system message: the tools get one; list content; a developer message later
        [
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "python"}}]},
            {"role": "tool", "content": ""},
            {"role": "developer", "content": "Answer in French."},
        ],
        [PYTHON, NOTE],
    ),
    (  # the system message already lists the declared tools: no second list
        [
            {"role": "system", "content": "You lead a swarm.\n\n" + render_tools(SWARM_TOOLS)},
            {"role": "user", "content": "Who founded Acme?"},
        ],
        [tool_schema(t) for t in SWARM_TOOLS],
    ),
]


def _encoder_tokens(tok: Any, messages: list[dict], tools: list[dict] | None) -> list[int]:
    """What ``kimi-lab serve`` encodes for this request (from_openai, the tools block, the encoder)."""
    ours = from_openai(messages)
    return ChatEncoder(tok).encode(with_tools(ours, declared_tools(tools)), add_generation_prompt=True).tokens


def _export(ckpt: Path, out: Path, **kw: Any) -> Path:
    from kimi_lab.hf.exporter import export_hf

    return export_hf(ckpt, out, **kw)


@pytest.fixture(scope="module")
def exported(parrot_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(parrot_ckpt, tmp_path_factory.mktemp("export") / "hf")


def test_autotokenizer_gets_eos_pad_and_a_chat_template_equal_to_the_encoder(
    exported: Path, tiny_tokenizer: Path
) -> None:
    from transformers import AutoTokenizer

    from kimi_lab.data.tokenizer import Tokenizer

    ours = Tokenizer(tiny_tokenizer)
    hf = AutoTokenizer.from_pretrained(exported)
    assert (hf.eos_token, hf.pad_token) == ("<|endoftext|>", "<|pad|>")
    assert (hf.eos_token_id, hf.pad_token_id) == (ours.eos_id, ours.pad_id)
    assert hf.encode("def f(x): return x") == ours.encode("def f(x): return x")  # no BOS added
    for messages, tools in CONVERSATIONS:
        rendered = hf.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert rendered == _encoder_tokens(ours, messages, tools)
    gen = json.loads((exported / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [ours.token_id("<|im_end|>"), ours.eos_id]
    assert gen["pad_token_id"] == ours.pad_id


# Tool-call ``arguments`` as strings (the OpenAI wire form): the input shape decoded (escapes,
# with or without the space), anything else verbatim, blank as {}.
STRING_ARGUMENTS = [
    '{"input": "x=1"}',
    '{"input":"print(\\"hi\\")\\nx = \'\\\\n\'\\t/\\/"}',
    '{"input": "ends in a backslash \\\\"}',
    '{"q": "ünïcode", "k": 3}',
    '{"q":"compact"}',
    '{"input": "a", "b": "c"}',
    '{"input": "not a JSON \\x escape"}',
    "free text",
    "  ",
]


def test_string_tool_call_arguments_render_as_serve_reads_them(exported: Path, tiny_tokenizer: Path) -> None:
    from jinja2.exceptions import TemplateError
    from transformers import AutoTokenizer

    from kimi_lab.data.tokenizer import Tokenizer
    from kimi_lab.openai_format import arguments_text

    ours = Tokenizer(tiny_tokenizer)
    hf = AutoTokenizer.from_pretrained(exported)

    def convo(args: str) -> list[dict[str, Any]]:
        call = {"type": "function", "function": {"name": "python", "arguments": args}}
        return [{"role": "user", "content": "go"}, {"role": "assistant", "content": "", "tool_calls": [call]}]

    seen = set()
    for args in STRING_ARGUMENTS:
        rendered = hf.apply_chat_template(convo(args), tokenize=True, return_dict=False)
        assert rendered == ChatEncoder(ours).encode(from_openai(convo(args))).tokens, args
        seen.add(arguments_text(args) == args)
    assert seen == {True, False}  # some strings are decoded, some pass verbatim
    assert arguments_text(STRING_ARGUMENTS[1]) == "print(\"hi\")\nx = '\\n'\t//"
    assert ours.decode(rendered).endswith(f"python\n{{}}{CALL_END}{IM_END}")  # blank: {}
    with pytest.raises(TemplateError, match="escape"):  # Jinja cannot make ü from \u00fc: it says so
        hf.apply_chat_template(convo('{"input": "\\u00fc"}'), tokenize=False)


def test_transformers_generate_stops_at_the_chat_formats_end(exported: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(exported)
    model = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    ids = hf_tok.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=False,
    )
    out = model.generate(ids, max_new_tokens=40, do_sample=False)[0, ids.shape[1] :].tolist()
    # the parrot's one tool call, then <|im_end|>, where generation_config.json says to stop
    text = hf_tok.decode(out)
    assert text == f"<|tool_call_begin|>{PARROT_SCRIPT}<|tool_call_end|><|im_end|>"


def test_int4_export_carries_the_same_tokenizer_files(
    exported: Path, parrot_ckpt: Path, tmp_path: Path
) -> None:
    pytest.importorskip("compressed_tensors")
    int4 = _export(parrot_ckpt, tmp_path / "int4", quantize="int4")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (int4 / name).read_bytes() == (exported / name).read_bytes(), name


def test_import_reads_them_back_and_reexports_them_unchanged(exported: Path, tmp_path: Path) -> None:
    from kimi_lab.decode.loading import _meta
    from kimi_lab.hf.importer import import_hf

    back, _ = import_hf(exported, tmp_path / "back")
    record = _meta(back)["kimi_lab"]["tokenizer"]
    assert record["chat_template"] == "kimi_lab" and record["eos_token"] == "<|endoftext|>"
    assert record["stop_ids"] == json.loads((exported / "generation_config.json").read_text())["eos_token_id"]
    again = _export(back, tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (again / name).read_bytes() == (exported / name).read_bytes(), name


def test_import_says_where_a_folder_disagrees_and_refuses_a_broken_config(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    from kimi_lab.errors import ConfigError
    from kimi_lab.hf.importer import import_hf

    other = tmp_path / "other"
    shutil.copytree(exported, other)
    (other / "generation_config.json").write_text(json.dumps({"eos_token_id": 0}))
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ messages }}"}))
    import_hf(other, tmp_path / "imported")
    err = capsys.readouterr().err
    assert "generation_config stops at [0]" in err and "not kimi_lab's chat format" in err
    (other / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"tokenizer_config\.json: not readable JSON"):
        import_hf(other, tmp_path / "broken")
    assert not (tmp_path / "broken").exists()


def test_a_tiktoken_export_spells_the_template_in_k2s_tokens(tmp_path: Path) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    from kimi_lab.config import compose, to_run_config
    from kimi_lab.data.tiktoken_tokenizer import TiktokenTokenizer
    from kimi_lab.hf.tokenizer_files import write_tokenizer_files

    S.write_tiktoken(tmp_path / "k2")
    run = to_run_config(compose(["model=tiny"]))
    run = replace(run, data=replace(run.data, tokenizer=str(tmp_path / "k2" / "tiktoken.model")))
    out = tmp_path / "out"
    out.mkdir()
    assert write_tokenizer_files(run, tmp_path / "none.ckpt", out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    original = json.loads((tmp_path / "k2" / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"] == original["added_tokens_decoder"]  # K2's own table is kept
    assert (config["eos_token"], config["bos_token"]) == ("[EOS]", "[BOS]")
    tok = TiktokenTokenizer(out / "tiktoken.model")
    assert "<|im_user|>" in config["chat_template"]
    for messages, tools in CONVERSATIONS:
        text = render_jinja_template(
            [messages], tools=tools, chat_template=config["chat_template"], add_generation_prompt=True
        )[0][0]
        assert tok.encode(text) == _encoder_tokens(tok, messages, tools)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == list(ChatEncoder(tok).stop_ids) and gen["bos_token_id"] == tok.token_id(
        "[BOS]"
    )
