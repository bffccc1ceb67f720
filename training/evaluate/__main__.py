"""``python -m training.evaluate`` = ``msde-eval``."""

from training.evaluate.cli import main

raise SystemExit(main())
