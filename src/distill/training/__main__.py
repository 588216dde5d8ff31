"""`python -m distill.training RUN_DIR`: one process of a launched training job."""

from .launcher import main

main()
