import sys

from tunery_engine.process import main

sys.exit(main())
