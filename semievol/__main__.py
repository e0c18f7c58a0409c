from semievol.cli import main

raise SystemExit(main())
