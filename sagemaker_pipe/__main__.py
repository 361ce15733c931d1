"""`python -m sagemaker_pipe` runs the same main as the console script."""

import sys

from sagemaker_pipe.cli import main

sys.exit(main())
