"""``python -m sb3_pg_ext.benchmark <run|status|report> ...``"""

from sb3_pg_ext.benchmark.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
