import sys

from tunery_worker.cli import main

sys.exit(main())
