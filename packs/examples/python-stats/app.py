"""vendor.wopbox.pystats: an example component node pack written in Python.

Built with componentize-py against ../../wit/node-pack.wit (see build.sh);
`--stub-wasi` replaces every WASI import with a trapping stub, so the
component imports only `openwop:node/host` and needs no grant at all.
"""

import json
import statistics

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

PACK = "vendor.wopbox.pystats"
SUMMARY = "vendor.wopbox.pystats.summary"
VERSION = "0.1.0"


def fail(code, message, details=None):
    """A typed node failure: the host reports `code` on `node.failed`."""
    return Err(
        types.NodeError(
            code=code,
            message=message,
            details_json=None if details is None else json.dumps(details),
        )
    )


def summary(inputs, config):
    numbers = inputs.get("numbers")
    if not isinstance(numbers, list) or not numbers:
        raise fail("validation_error", "`numbers` must be a non-empty list")
    bad = [i for i, n in enumerate(numbers) if isinstance(n, bool) or not isinstance(n, (int, float))]
    if bad:
        raise fail("validation_error", "`numbers` must hold only numbers", {"indexes": bad})
    places = config.get("places", 3)
    if not isinstance(places, int) or not 0 <= places <= 12:
        raise fail("validation_error", "config `places` must be an integer 0..12")
    host.log(host.LogLevel.INFO, f"summarising {len(numbers)} numbers")
    out = {
        "count": len(numbers),
        "mean": round(statistics.fmean(numbers), places),
        "median": round(statistics.median(numbers), places),
        "min": min(numbers),
        "max": max(numbers),
    }
    if len(numbers) > 1:
        out["stdev"] = round(statistics.stdev(numbers), places)
    return out


class Node(exports.Node):
    def pack_name(self) -> str:
        return PACK

    def nodes(self):
        return [types.NodeInfo(type_id=SUMMARY, version=VERSION)]

    def invoke(self, type_id, ctx, input_json):
        try:
            inputs = json.loads(input_json)
            config = json.loads(ctx.configurable_json or "{}")
        except ValueError as e:
            raise fail("validation_error", f"inputs are not JSON: {e}")
        if type_id != SUMMARY:
            raise fail("wasm_pack_unknown_type", f"no node {type_id}")
        return json.dumps(summary(inputs, config if isinstance(config, dict) else {}))
