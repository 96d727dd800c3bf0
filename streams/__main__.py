"""``python -m streams`` runs the negstream command line."""

from streams.cli import main

raise SystemExit(main())
