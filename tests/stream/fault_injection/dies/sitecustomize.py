"""Fault injection for the demo test, loaded by Python at start-up when this directory is on PYTHONPATH:
a worker process dies at once (as one whose port, model or broker fails would), with a last log line."""

import os
import sys

if "worker" in sys.argv:
    print("injected: this worker dies at start", flush=True)
    os._exit(3)
