"""Container healthcheck: exit 0 when the server's /readyz answers 2xx, else 1 (Docker's HEALTHCHECK contract).

Standard library only, so it runs with any Python in the image. The port comes from `DDGAN_PORT` (the server's
own setting); `DDGAN_HEALTHCHECK_URL` overrides the whole URL.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def readiness_url() -> str:
    return os.environ.get("DDGAN_HEALTHCHECK_URL") or f"http://127.0.0.1:{os.environ.get('DDGAN_PORT', '8000')}/readyz"


def check(url: str, timeout_s: float = 4.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300, f"{url}: {response.status}"
    except urllib.error.HTTPError as exc:  # 503 while models load or warm up
        return False, f"{url}: {exc.code} {exc.read(500).decode(errors='replace')}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {exc}"


def main() -> int:
    healthy, detail = check(readiness_url())
    sys.stdout.write(detail + "\n")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
