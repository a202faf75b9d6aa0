import sys

from benchmarks.control_plane import main

sys.exit(main())
