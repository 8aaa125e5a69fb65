import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still importing the command line
    import os

    print("varicodec: interrupted", file=sys.stderr)
    sys.stderr.flush()
    os._exit(130)  # no teardown of half-imported modules (see cli.main)

sys.exit(main())
