from mproxy.cli import main

raise SystemExit(main())
