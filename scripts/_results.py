"""The last step of every benchmark script: print the results as JSON and write them to ``--json PATH``; the CPU name."""

import json
import os
import platform


def write_results(res: dict, path: str | None, hide: tuple[str, ...] = ()) -> None:
    """Print ``res`` (without the keys in ``hide``, e.g. long tables) and write all of it to ``path`` if given."""
    print(json.dumps({k: v for k, v in res.items() if k not in hide}, indent=1), flush=True)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(res, f, indent=1)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), to name with any latency figure."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
