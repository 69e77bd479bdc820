from bertvision.cli import main

raise SystemExit(main())
