"""What the stand-in records: every call a Gaudi run would make into the runtime, in order.

Records go to a list in this process and, when ``HABANA_STANDIN_LOG`` names a file, to that file as JSON lines
(scripts run in a fresh interpreter; the test reads the file afterwards).
"""

import json
import os

RECORDS: list[dict] = []


def record(event: str, **data) -> None:
    entry = {"event": event, **data}
    RECORDS.append(entry)
    path = os.environ.get("HABANA_STANDIN_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


def read(path) -> list[dict]:
    """The records a script wrote to ``path`` (for tests)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def record_shapes(module, label: str):
    """Make ``module.forward`` record the shape of each call's token ids (what a captured HPU graph is keyed on:
    one graph per distinct shape), then run it unchanged on the CPU."""
    forward = module.forward

    def recorded(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        shape = list(ids.shape) if hasattr(ids, "shape") else None
        record("graph_call", module=label, shape=shape)
        return forward(*args, **kwargs)

    module.forward = recorded
    return module
