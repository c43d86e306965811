from moevit.cli import main

raise SystemExit(main())
