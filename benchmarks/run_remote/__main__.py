import sys

from benchmarks.run_remote import main

sys.exit(main())
