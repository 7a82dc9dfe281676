"""Container health check: exit 0 when the local server's `GET /health` says healthy, 1 otherwise.

    python -m seqshard.serve.healthcheck [--port 8000]

The images' HEALTHCHECK runs this; it uses only the standard library so each check starts in a blink.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqshard.serve.healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--timeout", type=float, default=4.0)
    args = parser.parse_args(argv)
    url = f"http://{args.host}:{args.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = json.load(response)["data"]["status"]
    except urllib.error.HTTPError as error:  # 503: loading or unhealthy, still an envelope
        status = json.load(error).get("data", {}).get("status", f"HTTP {error.code}")
    except (OSError, ValueError, KeyError) as error:
        status = f"unreachable ({error})"
    print(f"{url}: {status}")
    return 0 if status == "healthy" else 1


if __name__ == "__main__":
    sys.exit(main())
