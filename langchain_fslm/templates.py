"""Stage prompt templates: f-strings over plain named fields only.

A template is code the stack runs on every call, so a manifest may use only ``{name}`` fields: no
positional ``{0}``, no attribute or index access (``{input.__class__}``, ``{input[0]}``), no conversions
(``{input!r}``) and no format specs (``{input:>50000000}`` would pad every prompt to 50 MB).
"""

from __future__ import annotations

import re
import string

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def template_fields(template: str) -> list[str]:
    """The field names of a stage prompt, in order of first use.

    Args:
        template: The f-string template (literal braces written ``{{`` and ``}}``).

    Returns:
        Each field name once.

    Raises:
        ValueError: If the template is malformed or uses anything but plain named fields.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"malformed template ({err}); write a literal brace as '{{{{' or '}}}}'") from None
    fields: list[str] = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not _NAME.match(name):
            raise ValueError(
                f"template field {{{name}}} is not a plain name: use {{input}} or an earlier stage's name "
                "(no positional fields, attribute or index access)"
            )
        if spec or conversion:
            raise ValueError(
                f"template field {{{name}}} has a format spec or conversion; only plain {{{name}}} is allowed"
            )
        fields.append(name)
    return list(dict.fromkeys(fields))
