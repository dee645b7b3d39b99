"""The type of JSON data that branchfs hands out (ctl answers, ``to_json`` results)."""

from __future__ import annotations

from typing import TypeAlias

#: Any JSON value: what :func:`json.loads` returns.
JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None
#: A JSON object.
JSONObject: TypeAlias = dict[str, JSON]
