"""PixPro pretraining: ``python train.py [--flags]``, ``python train.py export ...``.

With no ``--data`` it pretrains on the built-in procedurally generated scenes.
"""
import sys

from pixpro_fast.cli import main

if __name__ == "__main__":
    sys.exit(main())
