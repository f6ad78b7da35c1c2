"""kimi_lab's chat format as a Jinja chat template, for the tools that render prompts themselves.

transformers' ``apply_chat_template``, vLLM, SGLang and llama.cpp render a conversation from
the ``chat_template`` of ``tokenizer_config.json``. An export carries this one, generated
from ``kimi_lab.chat_format``'s own markers and tools description (``render_tools`` as ``with_tools``
places it, each declared function's input as ``openai_format.input_format`` words it,
``openai_format.arguments_text``'s reading of tool-call arguments), so it renders the
tokens ``ChatEncoder`` encodes: roles, content, tool calls, tool results, the declared tools
in the system message, and the generation prompt (a test holds them equal, tools included).

Where a renderer sees what kimi_lab never does, the template picks:
- a tool call's ``arguments``, an object (how transformers and vLLM hand them over) or a string
  (the OpenAI wire form), render by ``openai_format.arguments_text``'s rule, which serve reads
  them with: ``{"input": text}`` renders the text, as an object or as a JSON string (decoded
  here in Jinja, which has no JSON parser: a ``\\uXXXX`` escape is refused with an error);
  any other object its JSON, any other string verbatim;
- an image part renders ``<|media_start|><|image_pad|><|media_end|>``: one placeholder a
  multimodal processor expands to the image's tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from kimi_lab.chat_format import (
    CALL_BEGIN,
    CALL_END,
    IM_END,
    IM_START,
    IMAGE_PAD,
    MEDIA_END,
    MEDIA_START,
    RESULT_BEGIN,
    RESULT_END,
    ROLES,
    render_tools,
)

# Jinja, with @NAME@ standing for a special token's text (a tokenizer may spell them its own way).
_TEMPLATE = """\
{%- macro text(content) -%}
{%- if content is none -%}
{%- elif content is string -%}{{ content }}
{%- else -%}{%- for part in content -%}
{%- if part.type == 'text' -%}{{ part.text }}
{%- elif part.type in ['image', 'image_url'] -%}@MEDIA_START@@IMAGE_PAD@@MEDIA_END@
{%- endif -%}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- set role_token = @ROLE_TOKENS@ -%}
{%- set ns = namespace(block='', described=false, fmt='', input=none, ok=true) -%}
{%- if tools -%}
{%- for t in tools -%}
{%- set fn = t.function if t.function is defined else t -%}
{%- set params = fn.parameters if fn.parameters is defined and fn.parameters is mapping else {} -%}
{%- set props = params.properties if params.properties is defined and params.properties is mapping else {} -%}
{%- set ns.fmt = '' -%}
{%- if props | length == 1 and (props.values() | first) is mapping and (props.values() | first).type == 'string' -%}
{%- for k, v in props.items() -%}{%- set ns.fmt = (v.description or k) | string -%}{%- endfor -%}
{%- elif props -%}
{%- for k, v in props.items() -%}
{%- set ns.fmt = ns.fmt ~ (', ' if not loop.first else '') ~ '"' ~ k ~ '": ' ~ ((v.type | upper) if v is mapping and v.type is string else 'VALUE') -%}
{%- endfor -%}
{%- set ns.fmt = '{' ~ ns.fmt ~ '}' -%}
{%- endif -%}
{%- set ns.block = ns.block ~ '\\n- ' ~ fn.name ~ ': ' ~ (fn.description or '') ~ (('. Input: ' ~ ns.fmt) if ns.fmt else '') -%}
{%- endfor -%}
{%- set ns.block = @TOOLS_INTRO@ ~ ns.block -%}
{%- for m in messages -%}
{%- if m.role in ['system', 'developer'] and ns.block in text(m.content) -%}{%- set ns.described = true -%}{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- for m in messages -%}
{%- set role = 'system' if m.role == 'developer' else m.role -%}
{%- if role not in role_token -%}{{ raise_exception('unsupported role ' ~ m.role) }}{%- endif -%}
{%- set body = text(m.content) -%}
{%- if loop.first and ns.block and not ns.described -%}
{%- if role == 'system' -%}{%- set body = body ~ '\\n\\n' ~ ns.block -%}
{%- else -%}@IM_START@{{ role_token['system'] }}{{ ns.block }}@IM_END@
{%- endif -%}
{%- endif -%}
@IM_START@{{ role_token[role] }}
{%- if role == 'tool' -%}@RESULT_BEGIN@{{ body }}@RESULT_END@
{%- else -%}{{ body }}
{%- if role == 'assistant' and m.tool_calls -%}
{%- for call in m.tool_calls -%}
{%- set fn = call.function if call.function is defined else call -%}
{%- set args = fn.arguments -%}
{%- if args is not defined or (args is string and not args.strip()) -%}{%- set args_text = '{}' -%}
{%- elif args is string -%}@INPUT_OF@{%- set args_text = ns.input if ns.input is not none else args -%}
{%- elif args is mapping and args | length == 1 and args.input is defined and args.input is string -%}{%- set args_text = args.input -%}
{%- else -%}{%- set args_text = args | tojson -%}
{%- endif -%}
@CALL_BEGIN@{{ fn.name ~ '\\n' ~ args_text }}@CALL_END@
{%- endfor -%}
{%- endif -%}
{%- endif -%}
@IM_END@
{%- endfor -%}
{%- if add_generation_prompt -%}@IM_START@{{ role_token['assistant'] }}{%- endif -%}
"""


# JSON's short escapes (``\\uXXXX`` aside: Jinja cannot make a character from its code).
_ESCAPES = {'"': '"', "/": "/", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


def _input_of_string() -> str:
    """Jinja setting ``ns.input`` to the decoded value of a string ``args`` shaped
    ``{"input": "..."}`` (else none): ``openai_format.arguments_text``'s rule for strings. The
    value splits at escaped backslashes; in each piece every backslash must start a short
    escape and no quote may stand bare (else the string is not that shape: none)."""
    q = json.dumps
    bare = "p" + "".join(f".replace({q(chr(92) + e)}, '')" for e in _ESCAPES)
    decoded = "p" + "".join(f".replace({q(chr(92) + e)}, {q(c)})" for e, c in _ESCAPES.items())
    return (
        "{%- set ns.input = none -%}{%- set s = args.strip() -%}"
        # the value starts after the prefix: 11 characters with the space, 10 without
        '{%- set head = 11 if s.startswith(\'{"input": "\') else 10 if s.startswith(\'{"input":"\') else 0 -%}'
        "{%- if head and s | length >= head + 2 and s.endswith('\"}') -%}"
        "{%- set ns.input = '' -%}{%- set ns.ok = true -%}"
        f"{{%- for p in s[head:-2].split({q(chr(92) * 2)}) -%}}"
        f"{{%- set b = {bare} -%}}"
        f"{{%- if {q(chr(92) + 'u')} in b -%}}"
        "{{ raise_exception('tool-call arguments: a \\\\u escape in a string; pass the arguments as an object') }}"
        f"{{%- elif {q(chr(92))} in b or '\"' in b -%}}{{%- set ns.ok = false -%}}{{%- endif -%}}"
        f"{{%- set ns.input = ns.input ~ ({q(chr(92))} if not loop.first else '') ~ {decoded} -%}}"
        "{%- endfor -%}"
        "{%- if not ns.ok -%}{%- set ns.input = none -%}{%- endif -%}"
        "{%- endif -%}"
    )


def chat_template(spell: Callable[[str], str] = str) -> str:
    """The Jinja chat template of kimi_lab's format; ``spell(token)`` is the text a tokenizer
    gives kimi_lab's special token (``<|user|>`` is ``<|im_user|>`` in K2's tokenizer)."""
    markers = {
        "IM_START": IM_START,
        "IM_END": IM_END,
        "CALL_BEGIN": CALL_BEGIN,
        "CALL_END": CALL_END,
        "RESULT_BEGIN": RESULT_BEGIN,
        "RESULT_END": RESULT_END,
        "MEDIA_START": MEDIA_START,
        "MEDIA_END": MEDIA_END,
        "IMAGE_PAD": IMAGE_PAD,
    }
    out = _TEMPLATE
    for name, token in markers.items():
        out = out.replace(f"@{name}@", _literal_text(spell(token)))
    roles = "{" + ", ".join(f"{json.dumps(r)}: {json.dumps(spell(f'<|{r}|>'))}" for r in ROLES) + "}"
    intro = render_tools([]).replace(CALL_BEGIN, spell(CALL_BEGIN)).replace(CALL_END, spell(CALL_END))
    out = out.replace("@INPUT_OF@", _input_of_string())
    return out.replace("@ROLE_TOKENS@", roles).replace("@TOOLS_INTRO@", json.dumps(intro))


def _literal_text(s: str) -> str:
    """``s`` as template text that renders as itself (Jinja's delimiters escaped)."""
    if any(d in s for d in ("{{", "{%", "{#", "}}", "%}", "#}")):
        return "{{ " + json.dumps(s) + " }}"
    return s
