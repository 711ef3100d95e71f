from xdt.cli import main

raise SystemExit(main())
