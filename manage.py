#!/usr/bin/env python
"""Django's command-line utility for Tunery."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# Source folders, not packages: `platform` would shadow the standard library module.
for folder in ("platform", "workers", "contract/src"):
    path = str(ROOT / folder)
    if path not in sys.path:
        sys.path.insert(0, path)


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tunery.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
