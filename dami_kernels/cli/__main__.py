import sys

from dami_kernels.cli import main

sys.exit(main())
