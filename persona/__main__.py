"""`python -m persona ...`: the same as the `persona` command."""

from persona.cli.main import main

raise SystemExit(main())
