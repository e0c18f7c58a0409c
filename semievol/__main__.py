from semievol.cli.main import main

raise SystemExit(main())
