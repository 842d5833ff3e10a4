"""Starts an emulated API server (apiserver.py) from its cached bytecode: Python compiles a script it runs at
every start (about 50 ms of CPU for apiserver.py), a module it imports only when the module changes. The
tests start emulators well over a thousand times. Arguments as apiserver.py's."""
import sys

import apiserver  # this file's folder is sys.path[0], as it is for apiserver.py run as a script

if __name__ == "__main__":
    sys.exit(apiserver.main())
