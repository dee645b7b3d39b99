# A narrow stub of msgpack (which ships no types): only what branchfs calls.
from typing import Any

def packb(o: object, *, use_bin_type: bool = ...) -> bytes: ...
def unpackb(
    packed: bytes | bytearray | memoryview,
    *,
    raw: bool = ...,
    use_list: bool = ...,
    strict_map_key: bool = ...,
) -> Any: ...

class Packer:
    def __init__(self, *, use_bin_type: bool = ...) -> None: ...
    def pack(self, obj: object) -> bytes: ...
