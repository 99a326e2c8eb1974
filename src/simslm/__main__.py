from simslm.cli import main

raise SystemExit(main())
