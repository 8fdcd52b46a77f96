"""``python -m crossentropy`` is the ``crossentropy`` command."""

from crossentropy.cli import main

raise SystemExit(main())
