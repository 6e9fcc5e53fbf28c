import sys

from provisioning.agent.cli import main

sys.exit(main())
