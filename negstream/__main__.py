"""``python -m negstream`` runs the negstream command line."""

from negstream.cli import main

raise SystemExit(main())
