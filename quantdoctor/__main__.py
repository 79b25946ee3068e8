import sys

from quantdoctor.cli.main import main

sys.exit(main())
