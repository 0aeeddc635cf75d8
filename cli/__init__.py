"""The `ssmpose` command line (click): argument parsing only; the work is done by library functions."""
